//! Data directories written by earlier releases open with today's code.
//!
//! `fixtures/tables-store-wal-v1` is a store on tables (tables, manifest
//! and log) written before records carried a commit time (log format
//! version 1): it must open with the same contents, take new writes, and
//! reopen. (`fixtures/in-memory-store`, a store of the in-memory engine,
//! is checked by `on_tables.rs`.)

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
