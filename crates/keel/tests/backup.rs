//! Online backup and restore of a backup: a backup taken while a writer
//! runs holds exactly the state at its LSN, on tables and in memory; a
//! crash at any storage operation of a backup loses nothing in the source
//! and leaves a backup that restores exactly or is refused by name; a
//! restore replays segments compressed with zstd dictionaries.

use keel::backup::{backup_state, BackupState};
use keel::restore::copy_backup;
use keel::storage::{CrashMode, Fault, FaultKind, FaultOp, SimStorage};
use keel::{Db, Options, WriteBatch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn options(on_tables: bool) -> Options {
    let mut o = Options::default();
    o.memtable_size = on_tables.then_some(16 << 10);
    o.segment_size = 4096;
    o.checkpoint_log_bytes = Some(8192);
    o.checkpoint_bytes_per_sec = None;
    o
}

fn open_at(s: &SimStorage, dir: &str, opts: &Options) -> keel::Result<Db> {
    Ok(Db::builder(dir)
        .options(opts.clone())
        .storage(Arc::new(s.clone()))
        .open()?
        .0)
}

fn key(i: u64) -> Vec<u8> {
    format!("key{:03}", i % 300).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("{i}:{}", "v".repeat((i % 50) as usize)).into_bytes()
}

/// Write `i` of the sequence: a put, or every 7th a batch of two puts and
/// a delete, every 13th a delete.
fn write(db: &Db, i: u64) -> keel::Result<()> {
    if i.is_multiple_of(7) {
        let mut b = WriteBatch::new();
        b.put(key(i), value(i))
            .put(key(i + 1), value(i))
            .delete(key(i + 2));
        db.write(b).map(drop)
    } else if i.is_multiple_of(13) {
        db.delete(key(i)).map(drop)
    } else {
        db.put(key(i), value(i)).map(drop)
    }
}

/// Write `i` applied to a model.
fn apply(m: &mut Model, i: u64) {
    if i.is_multiple_of(7) {
        m.insert(key(i), value(i));
        m.insert(key(i + 1), value(i));
        m.remove(&key(i + 2));
    } else if i.is_multiple_of(13) {
        m.remove(&key(i));
    } else {
        m.insert(key(i), value(i));
    }
}

/// The state after writes `0..n`.
fn model(n: u64) -> Model {
    let mut m = Model::new();
    (0..n).for_each(|i| apply(&mut m, i));
    m
}

/// The number of writes whose state `got` is, searched from `lo` to `hi`.
fn which_prefix(got: &Model, lo: u64, hi: u64) -> Option<u64> {
    let mut m = model(lo);
    for n in lo..=hi {
        if &m == got {
            return Some(n);
        }
        apply(&mut m, n);
    }
    None
}

fn contents(db: &Db) -> Model {
    db.iter().collect()
}

/// The segments of `root/archive`, then those of `root/db/wal`: the whole
/// log of a store whose archive is beside it.
fn archived_then_live_segments(s: &keel::storage::FsStorage, root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = keel_wal::archive::archived_segments(s, &root.join("archive"))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.extend(keel_wal::inspect::segment_files(s, &root.join("db/wal")).unwrap());
    files
}

#[test]
fn a_backup_taken_while_a_writer_runs_holds_exactly_the_state_at_its_lsn() {
    for on_tables in [true, false] {
        let s = SimStorage::new(1);
        let opts = options(on_tables);
        let db = Arc::new(open_at(&s, "/db", &opts).unwrap());
        for i in 0..500 {
            write(&db, i).unwrap();
        }
        let done = Arc::new(AtomicU64::new(500));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, done, stop) = (Arc::clone(&db), Arc::clone(&done), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 500;
                while !stop.load(Ordering::SeqCst) && i < 20_000 {
                    write(&db, i).unwrap();
                    i += 1;
                    done.store(i, Ordering::SeqCst);
                }
            })
        };
        let mut backups = Vec::new();
        for b in 0..4 {
            let before = done.load(Ordering::SeqCst);
            let dest = PathBuf::from(format!("/backup-{b}"));
            let report = db.backup(&dest).unwrap();
            let after = done.load(Ordering::SeqCst) + 1;
            backups.push((dest, report, before, after));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let stats = db.stats();
        if on_tables {
            assert!(
                stats.tables.unwrap().flushes >= 2,
                "flushes ran during the test"
            );
        }
        for (i, (dest, report, before, after)) in backups.into_iter().enumerate() {
            assert!(
                matches!(backup_state(&s, &dest).unwrap(), BackupState::Complete(m) if m == report.marker)
            );
            let into = format!("/restored-{i}");
            copy_backup(&s, &dest, Path::new(&into)).unwrap();
            let restored = open_at(&s, &into, &opts).unwrap();
            let got = contents(&restored);
            let n = which_prefix(&got, before, after).unwrap_or_else(|| {
                panic!("backup {i} (on tables: {on_tables}) is no prefix of the writes between {before} and {after}: {report}")
            });
            assert_eq!(
                restored.stats().applied_lsn,
                report.marker.lsn,
                "backup {i}: {n} writes"
            );
            if on_tables {
                assert!(report.files_linked > 0, "tables are linked: {report}");
            }
        }
        // The source is untouched and whole.
        let n = done.load(Ordering::SeqCst);
        assert!(contents(&db) == model(n));
    }
}

#[test]
fn a_backup_goes_into_a_new_directory_and_is_not_a_store() {
    let s = SimStorage::new(2);
    let opts = options(true);
    let db = open_at(&s, "/db", &opts).unwrap();
    for i in 0..100 {
        write(&db, i).unwrap();
    }
    let r = db.backup("/b").unwrap();
    let again = db.backup("/b").unwrap_err().to_string();
    assert!(again.contains("exists"), "{again}");
    let e = open_at(&s, "/b", &opts).err().unwrap().to_string();
    assert!(
        e.contains("is a keel backup")
            && e.contains(&format!("LSN {}", r.marker.lsn))
            && e.contains("keel restore"),
        "{e}"
    );
    let e = copy_backup(&s, Path::new("/db"), Path::new("/x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no BACKUP file"), "{e}");
    let e = copy_backup(&s, Path::new("/b"), Path::new("/db"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
}

/// Power loss at each storage operation of a backup (taken after 1,500
/// writes, with flushes behind it), in three crash modes: the source
/// reopens with every write; the backup is complete and restores to
/// exactly the 1,500 writes, or it is refused by name and never restores.
#[test]
fn a_crash_at_any_step_of_a_backup_loses_nothing_and_never_leaves_a_silent_partial_one() {
    for on_tables in [true, false] {
        let opts = options(on_tables);
        let (mut complete, mut refused) = (0, 0);
        for nth in 1..2000u64 {
            let s = SimStorage::new(3);
            let db = open_at(&s, "/db", &opts).unwrap();
            for i in 0..1500 {
                write(&db, i).unwrap();
            }
            s.inject(Fault {
                op: FaultOp::Any,
                nth,
                persistent: false,
                kind: FaultKind::Crash,
            });
            let outcome = db.backup("/b");
            let finished = !s.is_frozen();
            drop(db);
            for mode in [
                CrashMode::DropUnsynced,
                CrashMode::KeepAll,
                CrashMode::Random,
            ] {
                let after = s.crash_with(mode);
                let db = open_at(&after, "/db", &opts).unwrap_or_else(|e| {
                    panic!("op {nth} ({mode:?}): the source does not open: {e}")
                });
                assert!(
                    contents(&db) == model(1500),
                    "op {nth} ({mode:?}): the source lost writes"
                );
                drop(db);
                match copy_backup(&after, Path::new("/b"), Path::new("/r")) {
                    Ok(marker) => {
                        let restored = open_at(&after, "/r", &opts).unwrap();
                        assert!(
                            contents(&restored) == model(1500),
                            "op {nth} ({mode:?}): a complete backup restores wrong"
                        );
                        assert_eq!(restored.stats().applied_lsn, marker.lsn);
                        complete += 1;
                    }
                    Err(e) => {
                        let e = e.to_string();
                        assert!(e.contains("BACKUP"), "op {nth} ({mode:?}): {e}");
                        assert!(
                            !finished || mode != CrashMode::KeepAll,
                            "op {nth}: a finished backup refused: {e}"
                        );
                        refused += 1;
                    }
                }
            }
            if finished {
                outcome.unwrap();
                break;
            }
        }
        assert!(
            refused >= 30,
            "on tables {on_tables}: {refused} refused, {complete} complete"
        );
        println!(
            "backup crash points (on tables: {on_tables}): {refused} refused, {complete} complete"
        );
    }
}

/// The model test of point-in-time restore: a random history of puts,
/// deletes, batches, clears and flushes on tables, with the log archived;
/// a backup early on; then restores (backup + archive + the stopped
/// source's log) to 500 random LSNs and 200 random times, each holding
/// exactly the model's state at that point.
#[test]
fn restore_to_random_lsns_and_times_equals_the_model_at_that_point() {
    use keel::restore::{restore, RestoreRequest, RestoreStop, RestoreTarget};
    use keel::storage::rng::SplitMix64;
    // On real files (a scratch directory): 700 restores, each copying a
    // backup and opening it, are too slow on the simulator's one lock.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = keel::storage::FsStorage::new();
    let p = |name: &str| root.join(name);
    let mut opts = options(true);
    opts.archive_dir = Some(p("archive"));
    let db = Db::open(p("db"), opts.clone()).unwrap().0;
    let mut rng = SplitMix64::new(4);
    let mut m = Model::new();
    // (LSN, the state after it)
    let mut states: Vec<(u64, Model)> = vec![(0, Model::new())];
    let mut backup_at = None;
    for i in 0..3000u64 {
        let k = |rng: &mut SplitMix64| format!("k{:03}", rng.below(150)).into_bytes();
        match rng.below(100) {
            0..=59 => {
                let (key, v) = (k(&mut rng), format!("v{i}").into_bytes());
                db.put(&key, &v).unwrap();
                m.insert(key, v);
            }
            60..=79 => {
                let key = k(&mut rng);
                db.delete(&key).unwrap();
                m.remove(&key);
            }
            80..=97 => {
                let mut b = WriteBatch::new();
                for j in 0..3 {
                    let key = k(&mut rng);
                    if j == 2 {
                        b.delete(key.clone());
                        m.remove(&key);
                    } else {
                        let v = format!("b{i}-{j}").into_bytes();
                        b.put(key.clone(), v.clone());
                        m.insert(key, v);
                    }
                }
                db.write(b).unwrap();
            }
            _ => {
                db.clear().unwrap();
                m.clear();
            }
        }
        states.push((db.stats().applied_lsn, m.clone()));
        if i % 400 == 399 {
            db.checkpoint().unwrap();
        }
        if i == 300 {
            backup_at = Some(db.backup(p("backup")).unwrap().marker);
        }
    }
    assert!(
        db.stats().wal.segments_archived > 20,
        "{:?}",
        db.stats().wal
    );
    db.close().unwrap();
    let marker = backup_at.unwrap();
    // Every record's time, from the archive and the log.
    let mut times: BTreeMap<u64, u64> = BTreeMap::new();
    for f in archived_then_live_segments(&s, root) {
        keel_wal::inspect::inspect_segment(&s, &f, 1 << 30, false, |r, _| {
            times.insert(r.lsn, r.time_us);
        })
        .unwrap();
    }
    let last = states.last().unwrap().0;
    assert!(
        (marker.lsn..=last).all(|l| times.contains_key(&l) || l == 0),
        "archive and log cover every record after the backup"
    );
    let storage: Arc<dyn keel::storage::Storage> = Arc::new(s);
    let state_at = |lsn: u64| -> &Model {
        let i = states.partition_point(|(l, _)| *l <= lsn) - 1;
        &states[i].1
    };
    let mut n = 0;
    let mut check = |target: RestoreTarget, want: &Model, want_lsn: u64| {
        n += 1;
        let into = p(&format!("restored-{n}"));
        let req = RestoreRequest {
            backup: &p("backup"),
            into: &into,
            archive_dir: Some(&p("archive")),
            source: Some(&p("db")),
            target,
        };
        let report =
            restore(Arc::clone(&storage), &req).unwrap_or_else(|e| panic!("{target:?}: {e}"));
        assert_eq!(report.reached_lsn, want_lsn, "{target:?}");
        let db = Db::open(&into, options(true)).unwrap().0;
        assert!(
            &contents(&db) == want,
            "{target:?}: the restored state differs from the model's"
        );
        assert_eq!(db.stats().applied_lsn, want_lsn);
        drop(db);
        std::fs::remove_dir_all(&into).unwrap();
        report
    };
    for _ in 0..500 {
        let lsn = marker.lsn + rng.below(last - marker.lsn + 1);
        let r = check(RestoreTarget::Lsn(lsn), state_at(lsn), lsn);
        assert_eq!(r.stop, RestoreStop::TargetReached);
    }
    let first_time = times[&marker.lsn.max(1)];
    let last_time = times[&last];
    for _ in 0..200 {
        let t = first_time + rng.below(last_time - first_time);
        // The last record committed at or before t.
        let lsn = times
            .range(..)
            .filter(|(_, tt)| **tt <= t)
            .map(|(l, _)| *l)
            .max()
            .unwrap();
        let lsn = lsn.max(marker.lsn);
        check(RestoreTarget::Time(t), state_at(lsn), lsn);
    }
    let r = check(RestoreTarget::Latest, state_at(last), last);
    assert_eq!(r.stop, RestoreStop::LogRanOut { next_lsn: last + 1 });
    // Past the end: refused, and nothing written.
    let (backup, never, archive, source) = (p("backup"), p("never"), p("archive"), p("db"));
    let req = RestoreRequest {
        backup: &backup,
        into: &never,
        archive_dir: Some(&archive),
        source: Some(&source),
        target: RestoreTarget::Lsn(last + 5),
    };
    let e = restore(Arc::clone(&storage), &req).unwrap_err().to_string();
    assert!(
        e.contains("ran out") && e.contains(&format!("LSN {last}")),
        "{e}"
    );
    assert!(!never.exists(), "nothing written");
    // Without the archive, the log the source still holds does not reach
    // back to the backup: the log runs out at once.
    let req = RestoreRequest {
        archive_dir: None,
        target: RestoreTarget::Latest,
        into: &p("no-archive"),
        ..req
    };
    let r = restore(Arc::clone(&storage), &req).unwrap();
    assert_eq!(r.reached_lsn, marker.lsn);
}

/// Under `sync = never` writes are acknowledged before they are durable; a
/// backup still holds every write acknowledged before it began.
#[test]
fn a_backup_holds_every_acknowledged_write_whatever_the_sync_policy() {
    for on_tables in [true, false] {
        let s = SimStorage::new(5);
        let mut opts = options(on_tables);
        opts.sync = keel::SyncPolicy::Never;
        let db = open_at(&s, "/db", &opts).unwrap();
        for i in 0..700 {
            write(&db, i).unwrap();
        }
        let r = db.backup("/b").unwrap();
        copy_backup(&s, Path::new("/b"), Path::new("/r")).unwrap();
        let restored = open_at(&s, "/r", &options(on_tables)).unwrap();
        assert!(
            contents(&restored) == model(700),
            "on tables: {on_tables}: {r}"
        );
    }
}

/// With zstd, the log's records use dictionaries its segments carry; a
/// restore replays such segments from the archive and from the source's
/// log, and stops exactly at any target.
#[test]
fn a_restore_replays_segments_compressed_with_their_dictionaries() {
    use keel::restore::{restore, RestoreRequest, RestoreTarget};
    use keel::storage::rng::SplitMix64;
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    let mut opts = options(true);
    // Room for the default 8 KiB dictionary (a sixteenth of a segment).
    opts.segment_size = 256 << 10;
    opts.wal_compression = keel::wal::Compression::Zstd;
    opts.archive_dir = Some(p("archive"));
    let db = Db::open(p("db"), opts.clone()).unwrap().0;
    let order = |i: u64| {
        let mut rng = SplitMix64::new(i);
        format!(
            "{{\"order\":{i},\"customer\":\"c{}\",\"status\":\"paid\",\"items\":[{{\"sku\":\"SKU-{:06}\",\"qty\":{},\"currency\":\"EUR\"}},{{\"sku\":\"SKU-{:06}\",\"qty\":{},\"currency\":\"EUR\"}}]}}",
            rng.below(5000),
            rng.below(1_000_000),
            1 + rng.below(9),
            rng.below(1_000_000),
            1 + rng.below(9)
        )
        .into_bytes()
    };
    let mut m = Model::new();
    let mut states: Vec<(u64, Model)> = Vec::new();
    let marker = db.backup(p("backup")).unwrap().marker;
    for i in 0..4000u64 {
        let k = format!("o{:04}", i % 700).into_bytes();
        let v = order(i);
        db.put(&k, &v).unwrap();
        m.insert(k, v);
        states.push((db.stats().applied_lsn, m.clone()));
        if i % 1000 == 999 {
            db.checkpoint().unwrap();
        }
    }
    assert!(db.stats().wal.segments_archived > 0, "{:?}", db.stats().wal);
    db.close().unwrap();
    let s = keel::storage::FsStorage::new();
    let segments = archived_then_live_segments(&s, tmp.path());
    let mut with_dictionary = 0;
    for seg in &segments {
        let summary =
            keel_wal::inspect::inspect_segment(&s, seg, 1 << 30, false, |_, _| {}).unwrap();
        if summary.header.unwrap().dictionary.is_some() {
            with_dictionary += 1;
        }
    }
    assert!(
        with_dictionary >= 2,
        "{with_dictionary} of {} segments",
        segments.len()
    );
    let storage: Arc<dyn keel::storage::Storage> = Arc::new(s);
    let mut rng = SplitMix64::new(9);
    let last = states.last().unwrap().0;
    // A restored store continues the source's log: never its archive.
    let mut restored_opts = opts.clone();
    restored_opts.archive_dir = None;
    for n in 0..25 {
        let (lsn, want) = if n == 0 {
            states.last().unwrap().clone()
        } else {
            states[rng.below(states.len() as u64) as usize].clone()
        };
        assert!(lsn > marker.lsn && lsn <= last);
        let into = p(&format!("restored-{n}"));
        let req = RestoreRequest {
            backup: &p("backup"),
            into: &into,
            archive_dir: Some(&p("archive")),
            source: Some(&p("db")),
            target: RestoreTarget::Lsn(lsn),
        };
        let report = restore(Arc::clone(&storage), &req).unwrap();
        assert_eq!(report.reached_lsn, lsn);
        let db = Db::open(&into, restored_opts.clone()).unwrap().0;
        assert!(
            contents(&db) == want,
            "LSN {lsn}: the restored state differs"
        );
        drop(db);
        std::fs::remove_dir_all(&into).unwrap();
    }
}
