//! Injected I/O errors: a failed fdatasync or write stops the log (fail-stop),
//! wakes every waiting appender with the error, never acknowledges what it
//! did not sync, refuses later appends with a clear error, keeps reads
//! working, and a restart recovers every acknowledged record.

mod common;

use common::*;
use keel_storage::rng::SplitMix64;
use keel_storage::{CrashMode, Fault, FaultKind, FaultOp};
use keel_wal::{WalError, WalOptions};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

#[test]
fn failed_fdatasync_stops_the_log_and_wakes_every_waiter() {
    let mut tried = 0;
    for seed in 0..40u64 {
        let s = sim(seed);
        // Segments large enough that the background preparer, once idle,
        // stays idle: the fault must land on an appender's fdatasync.
        let opts = WalOptions {
            segment_size: 1 << 20,
            ..WalOptions::default()
        };
        let (wal, _, _) = open(&s, &opts).unwrap();
        for i in 1..=5 {
            wal.append(&payload(i)).unwrap();
        }
        wait_until_idle(&s);
        s.inject(Fault {
            op: FaultOp::Sync,
            nth: 1 + seed % 7,
            persistent: false,
            kind: FaultKind::Eio,
        });
        let wal = Arc::new(wal);
        let acked = Arc::new(Mutex::new(vec![]));
        let (tx, rx) = mpsc::channel();
        for t in 0..8u64 {
            let (wal, acked, tx) = (Arc::clone(&wal), Arc::clone(&acked), tx.clone());
            std::thread::spawn(move || {
                let mut errors = vec![];
                for i in 0..30u64 {
                    let p = format!("t{t}-{i}").into_bytes();
                    match wal.append(&p) {
                        Ok(lsn) => acked.lock().unwrap().push((lsn, p)),
                        Err(e) => errors.push(e),
                    }
                }
                tx.send(errors).unwrap();
            });
        }
        drop(tx);
        let mut failed = 0;
        for _ in 0..8 {
            // No appender may hang on a failed sync.
            let errors = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("an appender hung after a failed fdatasync");
            for e in &errors {
                assert!(e.is_stopped(), "{e}");
            }
            failed += errors.len();
        }
        assert!(failed > 0, "seed {seed}: the failure reached no appender");
        let err = wal.append(b"later").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("stopped") && msg.contains("fdatasync") && msg.contains("Restart"),
            "{msg}"
        );
        assert!(wal.stopped().is_some());
        assert!(
            wal.sync().is_err(),
            "sync after a failed sync must not succeed"
        );
        // Reads go on.
        let mut read = 0;
        wal.read_from(1, |_| read += 1).unwrap();
        assert!(read >= 5);
        // Even keeping every pending write, nothing acknowledged is lost, and
        // what the failed sync covered never became durable.
        let after = s.crash_with(CrashMode::KeepAll);
        let (_, _, records) = open(&after, &opts).unwrap();
        let got: HashMap<u64, Vec<u8>> = records.into_iter().collect();
        for (lsn, p) in acked.lock().unwrap().iter() {
            assert_eq!(got.get(lsn), Some(p), "seed {seed}: acked LSN {lsn} lost");
        }
        for i in 1..=5 {
            assert_eq!(got.get(&i), Some(&payload(i)));
        }
        tried += 1;
    }
    println!("failed fdatasync: {tried} runs of 8 appenders, none hung, none acknowledged past the failure");
}

/// Waits until no storage operation has happened for 50 ms (the background
/// preparer has finished the next segment).
fn wait_until_idle(s: &keel_storage::SimStorage) {
    let mut last = s.op_count();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = s.op_count();
        if now == last {
            return;
        }
        last = now;
    }
}

/// One short workload: appends, a rotation or two, a truncation, a sync.
fn workload(wal: &keel_wal::Wal, acked: &mut Vec<(u64, Vec<u8>)>) -> Result<(), WalError> {
    for i in 1..=40u64 {
        let p = payload(i);
        let lsn = wal.append(&p)?;
        acked.push((lsn, p));
        if i == 25 {
            wal.truncate_before(10)?;
        }
    }
    wal.sync()
}

#[test]
fn every_fault_at_every_operation_of_a_short_workload() {
    let opts = WalOptions {
        segment_size: 4096,
        ..WalOptions::default()
    };
    // Count the operations of the workload once.
    let total_ops = {
        let s = sim(0);
        let (wal, _, _) = open(&s, &opts).unwrap();
        let before = s.op_count();
        workload(&wal, &mut vec![]).unwrap();
        wal.close().unwrap();
        s.op_count() - before
    };
    let kinds = [FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite];
    let mut cases = 0;
    let mut stopped_cases = 0;
    for nth in 1..=total_ops {
        for kind in kinds {
            for persistent in [false, true] {
                let s = sim(nth);
                let (wal, _, _) = open(&s, &opts).unwrap();
                s.inject(Fault {
                    op: FaultOp::Any,
                    nth,
                    persistent,
                    kind,
                });
                let mut acked = vec![];
                let result = workload(&wal, &mut acked);
                if let Err(e) = &result {
                    // Whatever failed, the message says what to do.
                    assert!(!e.to_string().is_empty());
                    if e.is_stopped() || wal.stopped().is_some() {
                        stopped_cases += 1;
                        // Fail-stop: nothing is accepted afterwards.
                        assert!(wal.append(b"after").unwrap_err().is_stopped());
                    }
                }
                drop(wal);
                // Space and I/O come back; the machine restarts.
                let mut rng = SplitMix64::new(nth * 7 + persistent as u64);
                let after = if rng.chance(1, 2) {
                    s.crash()
                } else {
                    s.crash_with(CrashMode::KeepAll)
                };
                let (wal, _, records) = open(&after, &opts).unwrap_or_else(|e| {
                    panic!("op {nth} {kind:?} persistent={persistent}: reopen failed: {e}")
                });
                let got: HashMap<u64, Vec<u8>> = records.iter().cloned().collect();
                for (lsn, p) in &acked {
                    if *lsn >= 10 {
                        assert_eq!(got.get(lsn), Some(p), "op {nth} {kind:?}: acked {lsn} lost");
                    }
                }
                for (lsn, p) in &records {
                    assert_eq!(p, &payload(*lsn), "op {nth} {kind:?}: phantom at {lsn}");
                }
                // The reopened log accepts writes again.
                wal.append(b"resumed").unwrap();
                cases += 1;
            }
        }
    }
    println!(
        "fault injection: {total_ops} operations x 3 kinds x once/persistent = {cases} cases, {stopped_cases} stopped the log, every reopen recovered all acknowledged records"
    );
}
