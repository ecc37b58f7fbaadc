//! Model-based simulated-crash tests of the engine: random puts, deletes,
//! batches, clears, writes with application metadata and checkpoints from
//! several threads on `SimStorage`,
//! crashes at random storage operations (during checkpoints, segment
//! deletions and recovery itself), each crash state checked against a model.
//! Half the seeds keep every key in memory (checkpoints), half keep the
//! data in tables with the smallest memtable (flushes, compactions and
//! manifest edits, a checkpoint being a flush). Prints how many crash
//! states were checked.

use keel::op::{BatchOp, Op};
use keel::{Db, Options, WriteBatch};
use keel_storage::rng::SplitMix64;
use keel_storage::{CrashMode, Fault, FaultKind, FaultOp, SimStorage, Storage};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const KEYS: u64 = 8;

fn dir() -> PathBuf {
    PathBuf::from("/data")
}

fn key(i: u64) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

#[derive(Clone, Debug)]
enum Outcome {
    Acked(u64),
    Unknown,
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Put(k, v) => {
            state.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            state.remove(k);
        }
        Op::Clear => state.clear(),
        Op::Batch(ops) => {
            for o in ops {
                match o {
                    BatchOp::Put(k, v) => {
                        state.insert(k.clone(), v.clone());
                    }
                    BatchOp::Delete(k) => {
                        state.remove(k);
                    }
                }
            }
        }
        Op::WithMetadata { op, .. } => {
            if let Some(op) = op {
                apply(state, op);
            }
        }
    }
}

/// The metadata name the workload sets, and the value `op` sets it to.
const APPLIED: &[u8] = b"applied";

fn applied_mark(op: &Op) -> Option<&[u8]> {
    match op {
        Op::WithMetadata { metadata, .. } => metadata
            .iter()
            .find(|(n, _)| n == APPLIED)
            .map(|(_, v)| v.as_slice()),
        _ => None,
    }
}

/// What `op` leaves in `key`, if it touches it: Some(Some(v)) / Some(None).
fn effect(op: &Op, key: &[u8]) -> Option<Option<Vec<u8>>> {
    match op {
        Op::Put(k, v) if k == key => Some(Some(v.clone())),
        Op::Delete(k) if k == key => Some(None),
        Op::Clear => Some(None),
        Op::Batch(ops) => {
            let mut e = None;
            for o in ops {
                match o {
                    BatchOp::Put(k, v) if k == key => e = Some(Some(v.clone())),
                    BatchOp::Delete(k) if k == key => e = Some(None),
                    _ => {}
                }
            }
            e
        }
        Op::WithMetadata { op: Some(op), .. } => effect(op, key),
        _ => None,
    }
}

fn options(rng: &mut SplitMix64) -> Options {
    {
        let mut o = Options::default();
        o.memtable_size = rng.chance(1, 2).then_some(keel::options::MIN_MEMTABLE_SIZE);
        o.segment_size = 4096;
        o.checkpoint_log_bytes = Some(1024 + rng.below(4096));
        o.preallocate = rng.chance(1, 2);
        o
    }
}

fn random_op(rng: &mut SplitMix64, t: u64, i: u64) -> Option<Op> {
    let v = |j: u64| format!("t{t}-{i}-{j}").into_bytes();
    Some(match rng.below(100) {
        0..=59 => Op::Put(key(rng.below(KEYS)), v(0)),
        60..=74 => Op::Delete(key(rng.below(KEYS))),
        75..=89 => {
            let n = 2 + rng.below(3);
            Op::Batch(
                (0..n)
                    .map(|j| {
                        if rng.chance(3, 4) {
                            BatchOp::Put(key(rng.below(KEYS)), v(j))
                        } else {
                            BatchOp::Delete(key(rng.below(KEYS)))
                        }
                    })
                    .collect(),
            )
        }
        90..=91 => Op::Clear,
        92..=93 => Op::WithMetadata {
            metadata: vec![(APPLIED.to_vec(), v(9))],
            op: None,
        },
        _ => return None, // a checkpoint
    })
    .map(|op| {
        // A quarter of the changes carry metadata naming them.
        if !matches!(op, Op::WithMetadata { .. }) && rng.chance(1, 4) {
            Op::WithMetadata {
                metadata: vec![(APPLIED.to_vec(), v(8))],
                op: Some(Box::new(op)),
            }
        } else {
            op
        }
    })
}

fn submit(db: &Db, op: &Op) -> keel::Result<u64> {
    match op {
        Op::Put(k, v) => db.put(k, v),
        Op::Delete(k) => db.delete(k),
        Op::Clear => db.clear(),
        Op::Batch(ops) => {
            let mut b = WriteBatch::new();
            for o in ops {
                match o {
                    BatchOp::Put(k, v) => b.put(k.clone(), v.clone()),
                    BatchOp::Delete(k) => b.delete(k.clone()),
                };
            }
            db.write(b)
        }
        Op::WithMetadata { metadata, op } => {
            db.write_with_metadata(op.as_deref().cloned(), metadata.clone())
        }
    }
}

fn workload(s: &SimStorage, opts: &Options, rng: &mut SplitMix64) -> Vec<(Op, Outcome)> {
    let (db, _) = Db::builder(dir())
        .options(opts.clone())
        .storage(Arc::new(s.clone()))
        .open()
        .expect("open before the crash");
    let db = Arc::new(db);
    s.inject(Fault {
        op: FaultOp::Any,
        nth: 1 + rng.below(500),
        persistent: false,
        kind: FaultKind::Crash,
    });
    let history = Arc::new(Mutex::new(Vec::new()));
    let threads = 1 + rng.below(4);
    let per = 10 + rng.below(50);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (db, history) = (Arc::clone(&db), Arc::clone(&history));
            let mut rng = SplitMix64::new(rng.next_u64());
            std::thread::spawn(move || {
                for i in 0..per {
                    match random_op(&mut rng, t, i) {
                        Some(op) => {
                            let outcome = match submit(&db, &op) {
                                Ok(lsn) => Outcome::Acked(lsn),
                                Err(_) => Outcome::Unknown,
                            };
                            let failed = matches!(outcome, Outcome::Unknown);
                            history.lock().unwrap().push((op, outcome));
                            if failed {
                                return;
                            }
                        }
                        None => {
                            let _ = db.checkpoint();
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    drop(db);
    let h = std::mem::take(&mut *history.lock().unwrap());
    h
}

fn recovered_state(db: &Db) -> State {
    db.iter().collect()
}

fn check(state: &State, metadata: &keel::Metadata, history: &[(Op, Outcome)], seed: u64) {
    let mut acked: Vec<(u64, &Op)> = history
        .iter()
        .filter_map(|(op, o)| match o {
            Outcome::Acked(l) => Some((*l, op)),
            Outcome::Unknown => None,
        })
        .collect();
    acked.sort_by_key(|a| a.0);
    let mut model = State::new();
    let mut model_mark: Option<&[u8]> = None;
    for (_, op) in &acked {
        apply(&mut model, op);
        model_mark = applied_mark(op).or(model_mark);
    }
    let unknown: Vec<&Op> = history
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Unknown))
        .map(|(op, _)| op)
        .collect();
    check_metadata(state, metadata, model_mark, &unknown, seed);
    for k in (0..KEYS).map(key) {
        let got = state.get(&k).cloned();
        let ok = got == model.get(&k).cloned()
            || unknown.iter().any(|u| effect(u, &k) == Some(got.clone()));
        assert!(
            ok,
            "seed {seed}: key {:?} = {:?}; acknowledged model says {:?}; no in-flight write explains it",
            String::from_utf8_lossy(&k),
            got.map(|v| String::from_utf8_lossy(&v).into_owned()),
            model.get(&k).map(|v| String::from_utf8_lossy(v).into_owned())
        );
    }
    assert!(
        state.keys().all(|k| (0..KEYS).map(key).any(|x| &x == k)),
        "seed {seed}: a key nobody wrote"
    );
    // An in-flight batch seen in one key must be whole (unless a later
    // in-flight write covers the other keys).
    for u in &unknown {
        if let Op::Batch(ops) = u {
            let seen = ops.iter().any(|o| match o {
                BatchOp::Put(k, v) => state.get(k) == Some(v),
                BatchOp::Delete(_) => false,
            });
            if seen {
                for o in ops {
                    let k = match o {
                        BatchOp::Put(k, _) | BatchOp::Delete(k) => k,
                    };
                    let got = state.get(k).cloned();
                    let explained = unknown.iter().any(|u2| effect(u2, k) == Some(got.clone()));
                    assert!(explained, "seed {seed}: batch applied in part");
                }
            }
        }
    }
}

/// The metadata is the acknowledged model's or an in-flight write's, and
/// atomic with its change: an in-flight write whose value is seen set its
/// metadata too (or a later in-flight write replaced it), and one whose
/// metadata is seen shows its change (or a later in-flight write covers it).
fn check_metadata(
    state: &State,
    metadata: &keel::Metadata,
    model_mark: Option<&[u8]>,
    unknown: &[&Op],
    seed: u64,
) {
    let got = metadata.get(APPLIED).map(Vec::as_slice);
    let from_unknown =
        |m: Option<&[u8]>| m.is_some() && unknown.iter().any(|u| applied_mark(u) == m);
    assert!(
        got == model_mark || from_unknown(got),
        "seed {seed}: metadata {:?}; the acknowledged writes say {:?} and no in-flight write set it",
        got.map(String::from_utf8_lossy),
        model_mark.map(String::from_utf8_lossy)
    );
    let puts = |op: &Op| -> Vec<(Vec<u8>, Vec<u8>)> {
        match op.change() {
            Some(Op::Put(k, v)) => vec![(k.clone(), v.clone())],
            Some(Op::Batch(ops)) => ops
                .iter()
                .filter_map(|o| match o {
                    BatchOp::Put(k, v) => Some((k.clone(), v.clone())),
                    BatchOp::Delete(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    for u in unknown.iter().filter(|u| applied_mark(u).is_some()) {
        let seen = puts(u).iter().any(|(k, v)| state.get(k) == Some(v));
        if seen {
            assert!(
                applied_mark(u) == got || from_unknown(got),
                "seed {seed}: an in-flight write's change is there but not its metadata"
            );
        }
        if applied_mark(u) == got {
            for (k, _) in puts(u) {
                let now = state.get(&k).cloned();
                let explained = unknown.iter().any(|u2| effect(u2, &k) == Some(now.clone()));
                assert!(
                    explained,
                    "seed {seed}: an in-flight write's metadata is there but not its change"
                );
            }
        }
    }
}

#[test]
fn every_crash_state_matches_the_model() {
    let seeds: u64 = std::env::var("KEEL_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let mut states = 0u64;
    let mut during_recovery = 0u64;
    let mut with_checkpoint = 0u64;
    let mut with_tables = 0u64;
    let mut torn = 0u64;
    let mut acked_total = 0usize;
    for seed in 0..seeds {
        let mut rng = SplitMix64::new(seed.wrapping_mul(0x9E37_79B9));
        let opts = options(&mut rng);
        // No directory made beforehand: the engine creates its own, and a
        // crash must not take it away (rule 2).
        let s = SimStorage::new(seed);
        let history = workload(&s, &opts, &mut rng);
        acked_total += history
            .iter()
            .filter(|h| matches!(h.1, Outcome::Acked(_)))
            .count();
        let mut s = s.crash();
        states += 1;
        if rng.chance(1, 3) {
            s.inject(Fault {
                op: FaultOp::Any,
                nth: 1 + rng.below(12),
                persistent: false,
                kind: FaultKind::Crash,
            });
            let _ = Db::builder(dir())
                .options(opts.clone())
                .storage(Arc::new(s.clone()))
                .open();
            if s.is_frozen() {
                during_recovery += 1;
            }
            s = s.crash();
            states += 1;
        }
        let (db, report) = Db::builder(dir())
            .options(opts.clone())
            .storage(Arc::new(s.clone()))
            .open()
            .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
        with_checkpoint += u64::from(report.checkpoint.is_some());
        with_tables += u64::from(
            db.stats()
                .tables
                .is_some_and(|t| t.levels.iter().any(|l| l.0 > 0)),
        );
        torn += u64::from(report.wal.torn_tail.is_some());
        let state = recovered_state(&db);
        check(&state, &db.metadata(), &history, seed);
        // The recovered store takes writes again.
        let after_lsn = db.put("after", "recovery").unwrap();
        if std::env::var("KEEL_DEBUG_SEED").is_ok_and(|v| v == seed.to_string()) {
            println!(
                "seed {seed}: first report {report}\nafter at {after_lsn}; stats {:?}",
                db.stats().checkpoint_lsn
            );
        }
        drop(db);
        if std::env::var("KEEL_DEBUG_SEED").is_ok_and(|v| v == seed.to_string()) {
            println!(
                "files {:?} wal {:?}",
                s.list(&dir()).unwrap(),
                s.list(&dir().join("wal")).unwrap()
            );
        }
        // Recovering again gives the same state.
        let s = s.crash_with(CrashMode::KeepAll);
        let (db, r2) = Db::builder(dir())
            .options(opts)
            .storage(Arc::new(s))
            .open()
            .unwrap();
        if std::env::var("KEEL_DEBUG_SEED").is_ok_and(|v| v == seed.to_string()) {
            println!("second report {r2}");
        }
        let mut again = recovered_state(&db);
        assert_eq!(
            again.remove(b"after".as_slice()),
            Some(b"recovery".to_vec()),
            "seed {seed}: the write after recovery was lost"
        );
        assert_eq!(again, state, "seed {seed}: second recovery differs");
    }
    println!(
        "engine crash model: {seeds} seeds, {states} crash states ({during_recovery} during recovery), {with_checkpoint} recovered from a checkpoint, {with_tables} from tables, {torn} torn tails cut, {acked_total} acknowledged operations checked"
    );
    assert!(
        with_checkpoint > seeds / 8,
        "checkpoints were rarely exercised"
    );
    assert!(with_tables > seeds / 8, "tables were rarely exercised");
}

#[test]
fn per_seed_history_is_reproducible() {
    // Same seed, single thread: the same crash state and the same outcome.
    let run = || {
        let mut rng = SplitMix64::new(77);
        let opts = {
            let mut o = Options::default();
            o.segment_size = 4096;
            o.checkpoint_log_bytes = Some(2048);
            o
        };
        let s = SimStorage::new(77);
        keel_storage::create_dir_durable(&s, &dir()).unwrap();
        let (db, _) = Db::builder(dir())
            .options(opts.clone())
            .storage(Arc::new(s.clone()))
            .open()
            .unwrap();
        for i in 0..200 {
            if let Some(op) = random_op(&mut rng, 0, i) {
                submit(&db, &op).unwrap();
            }
        }
        drop(db);
        let s = s.crash();
        let (db, _) = Db::builder(dir())
            .options(opts)
            .storage(Arc::new(s))
            .open()
            .unwrap();
        let st = recovered_state(&db);
        let h: HashMap<Vec<u8>, Vec<u8>> = st.into_iter().collect();
        let mut v: Vec<_> = h.into_iter().collect();
        v.sort();
        v
    };
    assert_eq!(run(), run());
}
