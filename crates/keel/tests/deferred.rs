//! Deferred writes (`put_deferred` ... `commit_through`), as the RESP event
//! loop uses them: invisible until committed, durable once committed, on
//! simulated storage that loses unsynced bytes at a crash, and fail-stop
//! when the commit's fdatasync fails.

use keel::{Db, Deferred, Options, WriteBatch};
use keel_storage::{CrashMode, Fault, FaultKind, FaultOp, SimStorage};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn dir() -> PathBuf {
    PathBuf::from("/data")
}

fn opts() -> Options {
    {
        let mut o = Options::default();
        o.segment_size = 8192;
        o.checkpoint_log_bytes = Some(16 * 1024);
        o
    }
}

/// One operation, to apply to the model and to queue in the store.
#[derive(Clone, Debug)]
enum Op {
    Put(String, String),
    Delete(String),
    Batch(Vec<(String, Option<String>)>),
    Clear,
}

impl Op {
    fn random(rng: &mut u64) -> Op {
        let mut next = |n: u64| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng % n
        };
        match next(20) {
            0 => Op::Clear,
            1..=4 => Op::Delete(format!("k{}", next(16))),
            5..=7 => Op::Batch(
                (0..1 + next(4))
                    .map(|i| {
                        let k = format!("k{}", next(16));
                        (k, (i % 3 != 2).then(|| format!("b{}", next(1000))))
                    })
                    .collect(),
            ),
            _ => Op::Put(format!("k{}", next(16)), format!("v{}", next(100_000))),
        }
    }

    fn queue(&self, db: &Db) -> keel::Result<Deferred> {
        match self {
            Op::Put(k, v) => db.put_deferred(k, v),
            Op::Delete(k) => db.delete_deferred(k),
            Op::Clear => db.clear_deferred(),
            Op::Batch(entries) => {
                let mut b = WriteBatch::new();
                for (k, v) in entries {
                    match v {
                        Some(v) => b.put(k.as_bytes(), v.as_bytes()),
                        None => b.delete(k.as_bytes()),
                    };
                }
                db.write_deferred(b)
            }
        }
    }

    fn apply(&self, m: &mut Model) {
        match self {
            Op::Put(k, v) => {
                m.insert(k.clone().into_bytes(), v.clone().into_bytes());
            }
            Op::Delete(k) => {
                m.remove(k.as_bytes());
            }
            Op::Clear => m.clear(),
            Op::Batch(entries) => {
                for (k, v) in entries {
                    match v {
                        Some(v) => m.insert(k.clone().into_bytes(), v.clone().into_bytes()),
                        None => m.remove(k.as_bytes()),
                    };
                }
            }
        }
    }
}

fn contents(db: &Db) -> Model {
    db.iter().collect()
}

#[test]
fn deferred_writes_are_invisible_until_committed_and_survive_power_loss_once_committed() {
    let seeds = 300;
    let mut uncommitted_kept = 0;
    for seed in 1..=seeds {
        let s = SimStorage::new(seed);
        keel_storage::create_dir_durable(&s, &dir()).unwrap();
        let (db, _) = Db::builder(dir())
            .options(opts())
            .storage(Arc::new(s.clone()))
            .open()
            .unwrap();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut acked = Model::new();
        let turns = 1 + seed % 12;
        for _ in 0..turns {
            // One event-loop turn: queue a few writes, check nobody sees
            // them, commit, check everybody does.
            let ops: Vec<Op> = (0..1 + rng % 6).map(|_| Op::random(&mut rng)).collect();
            let mut last = 0;
            for op in &ops {
                last = op.queue(&db).unwrap().lsn();
            }
            assert_eq!(
                contents(&db),
                acked,
                "seed {seed}: a write visible before commit"
            );
            db.commit_through(last).unwrap();
            for op in &ops {
                op.apply(&mut acked);
            }
            assert_eq!(
                contents(&db),
                acked,
                "seed {seed}: committed writes not visible"
            );
        }
        // Writes queued but never committed when the power goes.
        let tail: Vec<Op> = (0..rng % 4).map(|_| Op::random(&mut rng)).collect();
        for op in &tail {
            let _ = op.queue(&db).unwrap();
        }
        let after = s.crash_with(CrashMode::Random);
        std::mem::forget(db); // a crash: no orderly close, no final sync
        let (db, report) = Db::builder(dir())
            .options(opts())
            .storage(Arc::new(after))
            .open()
            .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        // Every committed write is there; of the rest, a prefix at most.
        let got = contents(&db);
        let mut candidate = acked.clone();
        let mut matched = got == candidate;
        for op in &tail {
            if matched {
                break;
            }
            op.apply(&mut candidate);
            matched = got == candidate;
            uncommitted_kept += usize::from(matched);
        }
        assert!(
            matched,
            "seed {seed}: recovered state is not the committed state plus a prefix of the uncommitted writes\n{report}"
        );
    }
    println!("deferred writes: {seeds} seeds of committed turns and a power loss, {uncommitted_kept} kept some never-committed writes (allowed: their outcome was unknown)");
}

#[test]
fn a_failed_fdatasync_in_commit_fails_every_pending_write_and_stops_the_store() {
    let s = SimStorage::new(7);
    keel_storage::create_dir_durable(&s, &dir()).unwrap();
    let (db, _) = Db::builder(dir())
        .options(opts())
        .storage(Arc::new(s.clone()))
        .open()
        .unwrap();
    db.put("before", "1").unwrap();
    s.inject(Fault {
        op: FaultOp::Sync,
        nth: 1,
        persistent: false,
        kind: FaultKind::Eio,
    });
    let a = db.put_deferred("a", "1").unwrap();
    let b = db.put_deferred("b", "2").unwrap();
    assert!(b.lsn() > a.lsn());
    let err = db.commit_through(b.lsn()).unwrap_err();
    assert!(err.is_stopped(), "{err}");
    // Not acknowledged, so not visible; reads go on; writes are refused.
    assert_eq!(db.get("a").unwrap(), None);
    assert_eq!(db.get("before").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(db.put_deferred("c", "3").unwrap_err().is_stopped());
    assert!(db.commit_through(a.lsn()).unwrap_err().is_stopped());
    drop(db);
    let (db, _) = Db::builder(dir())
        .options(opts())
        .storage(Arc::new(s.crash()))
        .open()
        .unwrap();
    assert_eq!(db.get("before").unwrap().as_deref(), Some(&b"1"[..]));
    db.put("after", "ok").unwrap();
}

#[test]
fn committing_an_lsn_never_handed_out_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(t.path(), Options::default()).unwrap();
    let d = db.put_deferred("k", "v").unwrap();
    let err = db.commit_through(d.lsn() + 5).unwrap_err();
    assert!(err.to_string().contains("has not been appended"), "{err}");
    assert_eq!(db.get("k").unwrap(), None);
    db.commit_through(d.lsn()).unwrap();
    assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    // A synchronous write after a deferred one carries it (group commit).
    let d = db.put_deferred("early", "1").unwrap();
    db.put("late", "2").unwrap();
    assert_eq!(db.get("early").unwrap().as_deref(), Some(&b"1"[..]));
    db.commit_through(d.lsn()).unwrap();
}
