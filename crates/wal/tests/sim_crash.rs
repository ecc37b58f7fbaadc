//! Simulated power loss under concurrent appenders: for many seeds, appenders
//! run on [`SimStorage`] until a crash at a random storage operation (or an
//! explicit crash while they run), then the log is recovered — sometimes with
//! a second crash during recovery itself — and checked: every acknowledged
//! record is there with its payload, nothing that was never appended appears,
//! LSNs are contiguous, and recovering twice gives the same records.

mod common;

use common::*;
use keel_storage::rng::SplitMix64;
use keel_storage::{Fault, FaultKind, FaultOp, SimStorage};
use keel_wal::{Compression, WalOptions};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

struct Outcome {
    acked: Vec<(u64, Vec<u8>)>,
    submitted: HashSet<Vec<u8>>,
    truncated_below: u64,
}

fn workload(s: &SimStorage, opts: &WalOptions, rng: &mut SplitMix64, threads: u64) -> Outcome {
    let (wal, _, _) = open(s, opts).expect("open before the crash");
    let wal = Arc::new(wal);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let submitted = Arc::new(Mutex::new(HashSet::new()));
    let truncated = Arc::new(Mutex::new(0u64));
    let explicit_crash = rng.chance(1, 3);
    if !explicit_crash {
        s.inject(Fault {
            op: FaultOp::Any,
            nth: 1 + rng.below(400),
            persistent: false,
            kind: FaultKind::Crash,
        });
    }
    let per_thread = 20 + rng.below(60);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (wal, acked, submitted, truncated) = (
                Arc::clone(&wal),
                Arc::clone(&acked),
                Arc::clone(&submitted),
                Arc::clone(&truncated),
            );
            let size = 1 + (t as usize * 97) % 700;
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let p = format!("t{t}-{i}-{}", "x".repeat(size)).into_bytes();
                    submitted.lock().unwrap().insert(p.clone());
                    match wal.append(&p) {
                        Ok(lsn) => acked.lock().unwrap().push((lsn, p)),
                        Err(_) => return,
                    }
                    if t == 0 && i % 15 == 14 {
                        // An attempt that fails still has an unknown outcome:
                        // its removals may be durable.
                        let below = wal.durable_lsn().saturating_sub(20);
                        {
                            let mut tr = truncated.lock().unwrap();
                            *tr = (*tr).max(below);
                        }
                        let _ = wal.truncate_before(below);
                    }
                }
            })
        })
        .collect();
    if explicit_crash {
        std::thread::sleep(std::time::Duration::from_micros(rng.below(3000)));
    }
    // The crash: the old storage freezes, so the threads end with errors.
    let frozen_now = !s.is_frozen();
    if explicit_crash && frozen_now {
        s.inject(Fault {
            op: FaultOp::Any,
            nth: 1,
            persistent: true,
            kind: FaultKind::Crash,
        });
    }
    for h in handles {
        h.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let submitted = std::mem::take(&mut *submitted.lock().unwrap());
    let truncated_below = *truncated.lock().unwrap();
    drop(wal);
    Outcome {
        acked,
        submitted,
        truncated_below,
    }
}

fn check(records: &Records, out: &Outcome, seed: u64) {
    let by_lsn: HashMap<u64, &Vec<u8>> = records.iter().map(|(l, p)| (*l, p)).collect();
    for w in records.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "seed {seed}: LSN gap after {}", w[0].0);
    }
    let mut seen = HashSet::new();
    for (lsn, p) in records {
        assert!(
            out.submitted.contains(p),
            "seed {seed}: LSN {lsn} holds a payload never appended"
        );
        assert!(seen.insert(p), "seed {seed}: payload recovered twice");
    }
    if let Some((first, _)) = records.first() {
        assert!(
            *first <= out.truncated_below.max(1),
            "seed {seed}: log starts at {first}, after truncation point {}",
            out.truncated_below
        );
    }
    for (lsn, p) in &out.acked {
        if *lsn < out.truncated_below {
            continue;
        }
        assert_eq!(
            by_lsn.get(lsn),
            Some(&p),
            "seed {seed}: acknowledged LSN {lsn} lost or changed"
        );
    }
}

#[test]
fn acknowledged_records_survive_power_loss_under_concurrent_appenders() {
    let seeds = 400u64;
    let (mut crash_states, mut torn, mut during_recovery, mut acked_total) = (0, 0, 0, 0);
    for seed in 0..seeds {
        let mut rng = SplitMix64::new(seed ^ 0x5eed);
        let opts = WalOptions {
            segment_size: 4096 + rng.below(8) * 2048,
            preallocate: rng.chance(3, 4),
            // A third of the seeds store their (compressible) records
            // compressed, a third with each codec.
            compression: [Compression::None, Compression::Snappy, Compression::Zstd]
                [seed as usize % 3],
            ..WalOptions::default()
        };
        let s = sim(seed);
        let threads = 1 + rng.below(4);
        let out = workload(&s, &opts, &mut rng, threads);
        acked_total += out.acked.len();
        let mut s = s.crash();
        crash_states += 1;
        if rng.chance(1, 2) {
            // Crash again in the middle of recovery (or of what follows it).
            s.inject(Fault {
                op: FaultOp::Any,
                nth: 1 + rng.below(6),
                persistent: false,
                kind: FaultKind::Crash,
            });
            let _ = open(&s, &opts);
            if s.is_frozen() {
                during_recovery += 1;
            }
            s = s.crash();
            crash_states += 1;
        }
        let (wal, report, records) =
            open(&s, &opts).unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
        if report.torn_tail.is_some() {
            torn += 1;
        }
        check(&records, &out, seed);
        // The recovered log takes appends, which survive the next recovery.
        let after = wal.append(b"after recovery").unwrap();
        drop(wal);
        let s = s.crash_with(keel_storage::CrashMode::KeepAll);
        let (_, again, mut records2) = open(&s, &opts).unwrap();
        assert_eq!(
            records2.pop(),
            Some((after, b"after recovery".to_vec())),
            "seed {seed}: the append after recovery was lost"
        );
        assert_eq!(records, records2, "seed {seed}: second recovery differs");
        assert!(
            again.torn_tail.is_none(),
            "seed {seed}: second recovery cut again"
        );
    }
    println!(
        "simulated power loss: {seeds} seeds, {crash_states} crash states ({during_recovery} during recovery), {torn} torn tails cut, {acked_total} acknowledged records checked"
    );
}

#[test]
fn unsynced_tails_torn_or_reordered_recover_to_an_exact_prefix() {
    use keel_storage::CrashMode;
    use keel_wal::SyncPolicy;
    let modes = [
        CrashMode::Torn,
        CrashMode::Reorder,
        CrashMode::Prefix,
        CrashMode::Random,
    ];
    let (mut states, mut torn, mut kept_unsynced) = (0, 0, 0u64);
    for seed in 0..300u64 {
        let mut rng = SplitMix64::new(seed);
        let opts = WalOptions {
            segment_size: 4096 + rng.below(4) * 4096,
            sync: if rng.chance(1, 2) {
                SyncPolicy::Never
            } else {
                SyncPolicy::Interval(std::time::Duration::from_secs(3600))
            },
            ..WalOptions::default()
        };
        let s = sim(seed);
        let (wal, _, _) = open(&s, &opts).unwrap();
        let n = 5 + rng.below(60);
        let synced_upto = rng.below(n);
        for i in 1..=n {
            assert_eq!(wal.append(&payload(i)).unwrap(), i);
            if i == synced_upto {
                wal.sync().unwrap();
            }
        }
        let s2 = s.crash_with(modes[(seed % 4) as usize]);
        drop(wal);
        states += 1;
        let (_, report, records) = open(&s2, &opts).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        torn += u64::from(report.torn_tail.is_some());
        assert!(
            records.len() as u64 >= synced_upto,
            "seed {seed}: synced records lost ({} < {synced_upto})",
            records.len()
        );
        kept_unsynced += records.len() as u64 - synced_upto;
        for (i, (lsn, p)) in records.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1, "seed {seed}");
            assert_eq!(p, &payload(*lsn), "seed {seed}: wrong payload at {lsn}");
        }
    }
    println!(
        "unsynced tails: {states} crash states, {torn} torn tails cut, {kept_unsynced} unsynced records survived intact"
    );
    assert!(
        torn > states / 4,
        "too few torn tails ({torn}) for the test to mean much"
    );
}
