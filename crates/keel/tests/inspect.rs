//! keel::inspect against real stores: verify passes exactly the stores that
//! open, dump sees every record, repair cuts only what it must.

use keel::inspect::{self, DumpEvent, Problem, Repair, Target};
use keel::storage::{FsStorage, Storage};
use keel::{Db, Error, Options};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn opts() -> Options {
    {
        let mut o = Options::default();
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
    let last = files(&dir.path().join("wal"), "wal").pop().unwrap();
    let data = std::fs::read(&last).unwrap();
    let end = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = (end as u64).div_ceil(8) * 8;
    // Garbage after the last record, nothing vouching for it: a torn tail.
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &[0xAB; 24], at).unwrap();
    drop(f);

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
