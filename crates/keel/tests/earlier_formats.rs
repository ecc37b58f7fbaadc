//! Data directories written by earlier releases open with today's code.
//!
//! `fixtures/tables-store-wal-v1` is a store on tables (tables, manifest
//! and log) written before records carried a commit time (log format
//! version 1): it must open with the same contents, take new writes, and
//! reopen. `fixtures/in-memory-store`, a store of the in-memory engine
//! (checkpoint and log), released before tables, must open on tables with
//! the same contents.

use keel::{Db, Options, WriteBatch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn tables_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tables-store-wal-v1")
}

fn fixture_options() -> Options {
    let mut o = Options::default();
    o.memtable_size = Some(16 << 10);
    o.segment_size = 64 << 10;
    o.preallocate = false;
    o
}

fn value(i: u32, round: u32) -> Vec<u8> {
    format!("{{\"id\":{i},\"round\":{round},\"name\":\"item-{i:05}\",\"tags\":[\"a\",\"b\"]}}")
        .into_bytes()
}

/// What the fixture holds: keys 0..600 written twice (rounds 0 and 1),
/// every 5th deleted, keys 0..20 replaced by one batch (round 2); the
/// writes from LSN 683 on are still only in the log.
fn tables_fixture_model() -> Model {
    let mut m = Model::new();
    for i in 0..600u32 {
        if i % 5 != 0 {
            m.insert(format!("k{i:05}").into_bytes(), value(i, 1));
        }
    }
    for i in 0..20u32 {
        m.insert(format!("k{i:05}").into_bytes(), value(i, 2));
    }
    m
}

/// Writes the fixture (run once, by hand, with the release whose format it
/// pins): `cargo test -p keel --test earlier_formats -- --ignored`.
#[test]
#[ignore]
fn write_the_tables_fixture() {
    let dir = tables_fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let (db, _) = Db::open(&dir, fixture_options()).unwrap();
    for round in 0..2 {
        for i in 0..600u32 {
            db.put(format!("k{i:05}"), value(i, round)).unwrap();
        }
    }
    for i in (0..600u32).step_by(5) {
        db.delete(format!("k{i:05}")).unwrap();
    }
    let mut batch = WriteBatch::new();
    for i in 0..20u32 {
        batch.put(format!("k{i:05}"), value(i, 2));
    }
    db.write(batch).unwrap();
    db.close().unwrap();
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    let all: Model = Db::open(&dir, fixture_options())
        .unwrap()
        .0
        .iter()
        .collect();
    assert!(all == tables_fixture_model());
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    // Keep the committed files small: spare preallocated segments go (an
    // open makes new ones), and the manifest's segment loses its zeroed,
    // preallocated end (a short last segment reads as one that ends there).
    for sub in ["wal", "manifest"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("prealloc-") {
                std::fs::remove_file(&path).unwrap();
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                std::fs::write(&path, &bytes[..end.next_multiple_of(8)]).unwrap();
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_tables_store_with_a_version_1_log_opens_and_takes_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("store");
    copy_dir(&tables_fixture_dir(), &copy);
    let (db, report) = Db::open(&copy, fixture_options()).unwrap();
    let tables = report.tables.expect("the fixture is on tables");
    assert!(tables.tables >= 2, "{report}");
    let mut model = tables_fixture_model();
    let all: Model = db.iter().collect();
    assert!(all == model, "the fixture's contents");
    assert_eq!(db.len(), model.len());
    for i in 0..300u32 {
        db.put(format!("k{i:05}"), value(i, 3)).unwrap();
        model.insert(format!("k{i:05}").into_bytes(), value(i, 3));
    }
    db.close().unwrap();
    let (db, _) = Db::open(&copy, fixture_options()).unwrap();
    let all: Model = db.iter().collect();
    assert!(all == model, "new writes after the old log, reopened");
}

/// The fixture's committed directory: a data directory written by the
/// in-memory engine (checkpoint + log), as released before tables.
fn memory_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/in-memory-store")
}

/// What the fixture holds: keys 0..300 (a checkpoint at the 200th write),
/// then every 7th deleted, then keys 100..150 written again.
fn memory_fixture_model() -> Model {
    let mut m = Model::new();
    for i in 0..300u32 {
        let v = if (100..150).contains(&i) {
            format!("second-{i}")
        } else {
            format!("first-{i}")
        };
        if i % 7 != 0 || (100..150).contains(&i) {
            m.insert(format!("fixture-{i:04}").into_bytes(), v.into_bytes());
        }
    }
    m
}

/// Writes the fixture (run once, by hand, with the engine of the release
/// whose format it pins): `cargo test -p keel --test earlier_formats -- --ignored`.
#[test]
#[ignore]
fn write_the_in_memory_fixture() {
    let dir = memory_fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = Options::default();
    o.memtable_size = None;
    o.segment_size = 64 << 10;
    o.preallocate = false;
    let (db, _) = Db::open(&dir, o).unwrap();
    for i in 0..300u32 {
        db.put(format!("fixture-{i:04}"), format!("first-{i}"))
            .unwrap();
        if i == 199 {
            db.checkpoint().unwrap();
        }
    }
    for i in (0..300u32).step_by(7) {
        db.delete(format!("fixture-{i:04}")).unwrap();
    }
    for i in 100..150u32 {
        db.put(format!("fixture-{i:04}"), format!("second-{i}"))
            .unwrap();
    }
    db.close().unwrap();
    std::fs::remove_file(dir.join("LOCK")).unwrap();
}

/// The committed fixture of the in-memory engine opens on tables with the
/// same contents; the copy's checkpoint becomes the first table.
#[test]
fn the_committed_in_memory_fixture_opens_on_tables() {
    let src = memory_fixture_dir();
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("store");
    copy_dir(&src, &copy);
    assert!(copy.join("wal").is_dir(), "the fixture has its log");
    let mut o = Options::default();
    o.memtable_size = Some(1 << 20);
    let (db, report) = Db::open(&copy, o.clone()).unwrap();
    assert!(
        report.checkpoint.is_some(),
        "recovered from the fixture's checkpoint"
    );
    let all: Model = db.iter().collect();
    assert!(all == memory_fixture_model(), "the fixture's contents");
    assert_eq!(db.len(), memory_fixture_model().len());
    assert_eq!(db.stats().tables.unwrap().levels[0].0, 1);
    drop(db);
    let leftover: Vec<_> = std::fs::read_dir(&copy)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".ckpt"))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    let (db, _) = Db::open(&copy, o).unwrap();
    let all: Model = db.iter().collect();
    assert!(all == memory_fixture_model(), "after the upgrade, reopened");
}
