//! keel::inspect against real stores: verify passes exactly the stores that
//! open, dump sees every record, repair cuts only what it must.

use keel::inspect::{self, DumpEvent, Problem, Repair, Target};
use keel::storage::{FsStorage, Storage};
use keel::{Db, Error, Options};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every key in memory, saved by checkpoints (the tests of a store on
/// tables set `memtable_size`).
fn opts() -> Options {
    {
        let mut o = Options::default();
        o.memtable_size = None;
        o.segment_size = 4096;
        o.checkpoint_log_bytes = None;
        o.checkpoint_bytes_per_sec = None;
        o
    }
}

/// A store with two checkpoints (so the log before the older one is
/// trimmed) and records after the newest.
fn store(dir: &Path) {
    let (db, _) = Db::open(dir, opts()).unwrap();
    for round in 0..3 {
        for i in 0..100 {
            db.put(format!("k{i}"), format!("{round}-{}", "x".repeat(40)))
                .unwrap();
        }
        if round < 2 {
            db.checkpoint().unwrap();
        }
    }
    db.close().unwrap();
}

fn verify(dir: &Path) -> inspect::VerifyReport {
    let fs = FsStorage::new();
    inspect::verify(&fs, &Target::resolve(&fs, dir).unwrap()).unwrap()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Writes `bytes` at the first record boundary after the last record of
/// the log in `dir` (into its preallocated zeros).
fn write_after_the_last_record(dir: &Path, bytes: &[u8]) {
    let last = files(dir, "wal").pop().unwrap();
    let data = std::fs::read(&last).unwrap();
    let end = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = (end as u64).div_ceil(8) * 8;
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, bytes, at).unwrap();
}

#[test]
fn a_sound_store_verifies_and_dumps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path());
    let report = verify(dir.path());
    assert!(report.is_sound(), "{:?}", report.problems);
    assert_eq!(report.checkpoints.len(), 2);
    let fs = FsStorage::new();
    let target = Target::resolve(&fs, dir.path()).unwrap();
    let (mut records, mut checkpoints) = (0, 0);
    let damaged = inspect::dump(&fs, &target, 0, &mut |e| {
        match e {
            DumpEvent::Record { op, .. } => {
                assert!(op.is_ok());
                records += 1;
            }
            DumpEvent::Checkpoint { header, .. } => {
                assert!(header.is_ok());
                checkpoints += 1;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(!damaged);
    assert_eq!(checkpoints, 2);
    // The log after the older checkpoint: rounds 1 and 2.
    assert!(records >= 200, "{records}");
}

#[test]
fn a_store_without_its_checkpoints_fails_verify_as_it_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path());
    for c in files(dir.path(), "ckpt") {
        std::fs::remove_file(c).unwrap();
    }
    let err = Db::open(dir.path(), opts())
        .err()
        .expect("opened without its checkpoints");
    assert!(matches!(err, Error::LogGap { .. }), "{err}");
    let report = verify(dir.path());
    assert!(!report.is_sound());
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::WillNotOpen(Error::LogGap { .. }))),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_store_missing_its_oldest_segment_fails_verify_as_it_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), opts()).unwrap();
    for i in 0..300 {
        db.put(format!("k{i}"), "y".repeat(40)).unwrap();
    }
    db.close().unwrap();
    let segs = files(&dir.path().join("wal"), "wal");
    assert!(segs.len() > 2);
    std::fs::remove_file(&segs[0]).unwrap();
    assert!(Db::open(dir.path(), opts()).is_err());
    assert!(!verify(dir.path()).is_sound());
}

#[test]
fn a_directory_that_is_not_a_store_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let fs = FsStorage::new();
    let err = Target::resolve(&fs, dir.path()).unwrap_err();
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("not a keel store"));
    let err = Target::resolve(&fs, &dir.path().join("notes.txt")).unwrap_err();
    assert!(matches!(err, Error::NotAKeelFile { .. }), "{err}");
}

#[test]
fn repair_cuts_a_torn_tail_saves_it_and_refuses_while_the_store_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path());
    // Garbage after the last record, nothing vouching for it: a torn tail.
    write_after_the_last_record(&dir.path().join("wal"), &[0xAB; 24]);

    let fs: Arc<dyn Storage> = Arc::new(FsStorage::new());
    let target = Target::resolve(&*fs, dir.path()).unwrap();
    let held = keel::layout::DataDir::new(dir.path())
        .lock(&*fs, "a test standing in for a server")
        .unwrap();
    let err = Repair::prepare(Arc::clone(&fs), &target).err().unwrap();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(held);

    assert!(matches!(
        verify(dir.path()).problems.as_slice(),
        [Problem::TornTail { .. }]
    ));
    let repair = Repair::prepare(Arc::clone(&fs), &target).unwrap();
    assert!(repair.is_needed());
    assert!(
        repair.to_string().contains("never acknowledged"),
        "{repair}"
    );
    let report = repair.apply().unwrap();
    let saved = report.torn_tail.unwrap().saved_to.unwrap();
    assert_eq!(std::fs::read(saved).unwrap(), vec![0xAB; 24]);
    assert!(verify(dir.path()).is_sound());
    let (db, _) = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.len(), 100);
}

/// A store kept on tables (4 KiB segments, 16 KiB memtable): flushes,
/// compactions, then more writes in the log.
fn tables_store(dir: &Path) {
    let mut o = opts();
    o.memtable_size = Some(16 << 10);
    let (db, _) = Db::open(dir, o).unwrap();
    for round in 0..6 {
        for i in 0..200 {
            db.put(format!("k{i:03}"), format!("{round}-{}", "y".repeat(60)))
                .unwrap();
        }
    }
    db.close().unwrap();
}

fn tables(dir: &Path) -> Vec<PathBuf> {
    files(&dir.join("tables"), "sst")
}

#[test]
fn verify_checks_a_store_on_tables_whole() {
    let dir = tempfile::tempdir().unwrap();
    tables_store(dir.path());
    let report = verify(dir.path());
    assert!(report.is_sound(), "{:?}", report.problems);
    let (_, state) = report.manifest.as_ref().expect("the manifest was read");
    assert!(state.log_start > 1);
    assert_eq!(report.tables.len(), state.live().count());
    assert!(!report.tables.is_empty());
    let log = report.log.as_ref().expect("the log was read");
    assert!(log.report.first_lsn <= state.log_start);

    // A flipped byte in a live table: named, with its block.
    let victim = tables(dir.path())[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let report = verify(dir.path());
    let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("DAMAGED") && t.contains(&*victim.to_string_lossy())),
        "{text:?}"
    );

    // A live table missing: the store will not open, and verify says so.
    std::fs::remove_file(&victim).unwrap();
    let report = verify(dir.path());
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::WillNotOpen(_)) && p.to_string().contains("missing")),
        "{:?}",
        report.problems
    );
    let mut o = opts();
    o.memtable_size = Some(16 << 10);
    assert!(Db::open(dir.path(), o).is_err());
}

/// `dump` of a store on tables: the manifest's state, then each live
/// table's properties, then the log from where it starts; a live table
/// that is missing is damage.
#[test]
fn dump_of_a_store_on_tables_lists_its_tables_then_its_log() {
    let dir = tempfile::tempdir().unwrap();
    tables_store(dir.path());
    let fs = FsStorage::new();
    let dump = |dir: &Path| {
        let target = Target::resolve(&fs, dir).unwrap();
        let mut seen: Vec<String> = Vec::new();
        let (mut entries, mut first_lsn) = (0u64, None);
        let damaged = inspect::dump(&fs, &target, 0, &mut |e| {
            match e {
                DumpEvent::Manifest {
                    log_start, levels, ..
                } => {
                    assert!(log_start > 1);
                    seen.push(format!(
                        "manifest {}",
                        levels.iter().map(|l| l.0).sum::<usize>()
                    ));
                }
                DumpEvent::Table { props, .. } => {
                    entries += props.as_ref().map_or(0, |p| p.entries);
                    seen.push(format!("table {}", props.is_ok()));
                }
                DumpEvent::Record { lsn, .. } => {
                    first_lsn.get_or_insert(lsn);
                }
                DumpEvent::Checkpoint { .. } => seen.push("checkpoint".into()),
                _ => {}
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        (damaged, seen, entries, first_lsn)
    };
    let (damaged, seen, entries, first_lsn) = dump(dir.path());
    assert!(!damaged);
    let live = tables(dir.path()).len();
    assert_eq!(seen[0], format!("manifest {live}"), "{seen:?}");
    assert_eq!(seen.len(), 1 + live, "{seen:?}");
    assert!(seen[1..].iter().all(|s| s == "table true"), "{seen:?}");
    assert!(entries >= 200, "the tables hold every key: {entries}");
    assert!(first_lsn.is_some(), "the log after the tables is dumped");

    std::fs::remove_file(&tables(dir.path())[0]).unwrap();
    let (damaged, seen, _, _) = dump(dir.path());
    assert!(damaged);
    assert!(seen.iter().any(|s| s == "table false"), "{seen:?}");
}

/// A crash in the middle of a manifest append leaves a torn tail, which
/// the open cuts: verify judges as the open does (it called such a store
/// damaged, and repair refused to plan over its manifest).
#[test]
fn a_torn_tail_of_the_manifest_is_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    tables_store(dir.path());
    // The start of a record header, then nothing: an append cut short.
    write_after_the_last_record(&dir.path().join("manifest"), &[0xAB; 12]);
    let report = verify(dir.path());
    assert!(report.is_sound(), "{:?}", report.problems);
    let fs: Arc<dyn Storage> = Arc::new(FsStorage::new());
    let target = Target::resolve(&*fs, dir.path()).unwrap();
    assert!(!Repair::prepare(fs, &target).unwrap().is_needed());
    let mut o = opts();
    o.memtable_size = Some(16 << 10);
    let (db, _) = Db::open(dir.path(), o).unwrap();
    assert_eq!(db.len(), 200);
}

/// On tables, records below the manifest's log start are in tables: damage
/// among them needs no repair, and verify calls it covered, as for a
/// checkpoint (reading from LSN 1, repair would cut the log there and lose
/// every record after it).
#[test]
fn damage_below_the_log_start_of_a_store_on_tables_needs_no_repair() {
    let dir = tempfile::tempdir().unwrap();
    tables_store(dir.path());
    let state = verify(dir.path()).manifest.unwrap().1;
    let log = verify(dir.path()).log.unwrap().report;
    assert!(
        log.first_lsn < state.log_start,
        "the first segment holds records below the log start ({} < {})",
        log.first_lsn,
        state.log_start
    );
    let first = files(&dir.path().join("wal"), "wal")[0].clone();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&first, &bytes).unwrap();
    let report = verify(dir.path());
    assert!(
        report
            .problems
            .iter()
            .all(|p| matches!(p, Problem::CoveredDamage { .. })),
        "{:?}",
        report.problems
    );
    let fs: Arc<dyn Storage> = Arc::new(FsStorage::new());
    let target = Target::resolve(&*fs, dir.path()).unwrap();
    assert!(!Repair::prepare(fs, &target).unwrap().is_needed());
}
