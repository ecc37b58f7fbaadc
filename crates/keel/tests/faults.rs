//! Injected EIO, ENOSPC and short writes at every storage operation of a
//! short workload, once and from then on: no acknowledged write is lost, the
//! store fails stop (writes refused with a clear error, reads go on), and a
//! reopen recovers.

use keel::{Db, Options, WriteBatch};
use keel_storage::{CrashMode, Fault, FaultKind, FaultOp, SimStorage, Storage};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

fn dir() -> PathBuf {
    PathBuf::from("/data")
}

fn opts() -> Options {
    {
        let mut o = Options::default();
        o.segment_size = 4096;
        o.checkpoint_log_bytes = None;
        o
    }
}

/// Puts, a batch, a delete, a checkpoint (with segment deletion), more puts.
fn workload(db: &Db, acked: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> keel::Result<()> {
    for i in 0..40u32 {
        let (k, v) = (format!("k{}", i % 12), format!("v{i}-{}", "x".repeat(60)));
        db.put(&k, &v)?;
        acked.insert(k.into_bytes(), Some(v.into_bytes()));
        if i == 10 {
            let mut b = WriteBatch::new();
            b.put("b1", "one").put("b2", "two").delete("k0");
            db.write(b)?;
            acked.insert(b"b1".to_vec(), Some(b"one".to_vec()));
            acked.insert(b"b2".to_vec(), Some(b"two".to_vec()));
            acked.insert(b"k0".to_vec(), None);
        }
        if i == 20 || i == 30 {
            db.checkpoint()?;
        }
        if i == 25 {
            db.delete("k1")?;
            acked.insert(b"k1".to_vec(), None);
        }
    }
    Ok(())
}

#[test]
fn every_fault_at_every_operation_fails_stop_and_recovers() {
    let total_ops = {
        let s = SimStorage::new(0);
        keel_storage::create_dir_durable(&s, &dir()).unwrap();
        let (db, _) = Db::builder(dir())
            .options(opts())
            .storage(Arc::new(s.clone()))
            .open()
            .unwrap();
        let before = s.op_count();
        workload(&db, &mut BTreeMap::new()).unwrap();
        drop(db);
        s.op_count() - before
    };
    let mut cases = 0;
    let mut stopped = 0;
    for nth in 1..=total_ops {
        for kind in [FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite] {
            for persistent in [false, true] {
                let s = SimStorage::new(nth);
                keel_storage::create_dir_durable(&s, &dir()).unwrap();
                let (db, _) = Db::builder(dir())
                    .options(opts())
                    .storage(Arc::new(s.clone()))
                    .open()
                    .unwrap();
                s.inject(Fault {
                    op: FaultOp::Any,
                    nth,
                    persistent,
                    kind,
                });
                let mut acked = BTreeMap::new();
                let result = workload(&db, &mut acked);
                if let Err(e) = &result {
                    assert!(!e.to_string().is_empty());
                }
                if db.stopped().is_some() {
                    stopped += 1;
                    let err = db.put("later", "x").unwrap_err();
                    assert!(err.is_stopped(), "{err}");
                    assert!(err.to_string().contains("Restart"), "{err}");
                    // Reads go on, and see every acknowledged write.
                    for (k, v) in &acked {
                        assert_eq!(&db.get(k).unwrap(), v, "op {nth} {kind:?}: read after stop");
                    }
                }
                drop(db);
                let after = if nth % 2 == 0 {
                    s.crash()
                } else {
                    s.crash_with(CrashMode::KeepAll)
                };
                let (db, _) = Db::builder(dir())
                    .options(opts())
                    .storage(Arc::new(after))
                    .open()
                    .unwrap_or_else(|e| {
                        panic!("op {nth} {kind:?} persistent={persistent}: reopen failed: {e}")
                    });
                for (k, v) in &acked {
                    assert_eq!(
                        &db.get(k).unwrap(),
                        v,
                        "op {nth} {kind:?} persistent={persistent}: acknowledged write to {} lost",
                        String::from_utf8_lossy(k)
                    );
                }
                db.put("resumed", "yes").unwrap();
                cases += 1;
            }
        }
    }
    println!(
        "engine fault injection: {total_ops} operations x 3 kinds x once/persistent = {cases} cases, {stopped} stopped the store, every reopen recovered all acknowledged writes"
    );
}

#[test]
fn failed_automatic_checkpoints_back_off_instead_of_retrying_on_every_write() {
    let s = SimStorage::new(9);
    let o = {
        let mut o = Options::default();
        o.checkpoint_log_bytes = Some(1024);
        o.checkpoint_bytes_per_sec = None;
        o
    };
    let (db, _) = Db::builder(dir())
        .options(o)
        .storage(Arc::new(s.clone()))
        .open()
        .unwrap();
    // No new file can be made: every checkpoint fails. The writes stay
    // within the 64 MiB segment in use (at most 200,000 of about 130
    // bytes): a rotation would need a new file too, and stop the log. On a
    // fast machine 1.5 s of unbounded writes once filled the segment.
    s.inject(Fault {
        op: FaultOp::Create,
        nth: 1,
        persistent: true,
        kind: FaultKind::Enospc,
    });
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let mut n = 0u32;
    while std::time::Instant::now() < until {
        if n < 200_000 {
            db.put(format!("k{}", n % 100), "v".repeat(100)).unwrap();
            n += 1;
        } else {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let st = db.stats();
    assert!(
        (1..=3).contains(&st.checkpoints_failed),
        "{} failed checkpoints during {n} writes: no backoff",
        st.checkpoints_failed
    );
    assert!(st.last_checkpoint_error.is_some());
    let temps: Vec<String> = s
        .list(&dir())
        .unwrap()
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    // The disk is back: the next attempt (at the end of the backoff) works.
    s.clear_faults();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while db.stats().checkpoints_written == 0 && std::time::Instant::now() < until {
        db.put("tick", "v").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(db.stats().checkpoints_written >= 1, "never retried");
}
