//! Sync policies and async use: what each policy promises across a crash,
//! group commit sharing fdatasyncs, and `append_async` from a tokio runtime
//! whose only thread must never block.

mod common;

use common::*;
use keel_storage::CrashMode;
use keel_wal::{SyncPolicy, WalError, WalOptions};
use std::sync::Arc;
use std::time::Duration;

fn opts(sync: SyncPolicy) -> WalOptions {
    WalOptions {
        sync,
        segment_size: 1 << 20,
        ..WalOptions::default()
    }
}

#[test]
fn always_is_durable_at_return() {
    let s = sim(1);
    let o = opts(SyncPolicy::Always);
    let (wal, _, _) = open(&s, &o).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i)).unwrap();
        assert_eq!(wal.durable_lsn(), i);
    }
    let after = s.crash_with(CrashMode::DropUnsynced);
    let (_, _, records) = open(&after, &o).unwrap();
    assert_eq!(records.len(), 10);
}

#[test]
fn never_survives_a_process_crash_but_not_power_loss() {
    let o = opts(SyncPolicy::Never);
    let s = sim(2);
    let (wal, _, _) = open(&s, &o).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i)).unwrap();
    }
    assert_eq!(wal.durable_lsn(), 0, "Never must not sync on append");
    // kill -9: the page cache survives.
    let (_, _, records) = open(&s.crash_with(CrashMode::KeepAll), &o).unwrap();
    assert_eq!(records.len(), 10);

    let s = sim(3);
    let (wal, _, _) = open(&s, &o).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i)).unwrap();
    }
    let (_, _, records) = open(&s.crash_with(CrashMode::DropUnsynced), &o).unwrap();
    assert_eq!(records.len(), 0, "power loss takes unsynced records");
    // An explicit sync makes them durable.
    let s = sim(4);
    let (wal, _, _) = open(&s, &o).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i)).unwrap();
    }
    wal.sync().unwrap();
    let (_, _, records) = open(&s.crash_with(CrashMode::DropUnsynced), &o).unwrap();
    assert_eq!(records.len(), 10);
}

#[test]
fn interval_syncs_in_the_background() {
    let o = opts(SyncPolicy::Interval(Duration::from_millis(20)));
    let s = sim(5);
    let (wal, _, _) = open(&s, &o).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i)).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal.durable_lsn() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "interval sync never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_, _, records) = open(&s.crash_with(CrashMode::DropUnsynced), &o).unwrap();
    assert_eq!(records.len(), 10);
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(SyncPolicy::Always);
    let (wal, _, _) = open_at(&keel_storage::FsStorage::new(), dir.path(), &o).unwrap();
    let wal = Arc::new(wal);
    let threads = 16;
    let per = 50;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..per {
                    wal.append(format!("{t}-{i}").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let st = wal.stats();
    println!(
        "group commit: {} appends, {} fdatasyncs, {:.1} records per fdatasync",
        st.appends,
        st.syncs,
        st.appends as f64 / st.syncs as f64
    );
    assert_eq!(st.appends, threads * per);
    assert!(
        st.syncs < st.appends,
        "16 concurrent appenders never shared an fdatasync"
    );
}

#[test]
fn append_async_never_blocks_a_single_threaded_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(SyncPolicy::Always);
    let (wal, _, _) = open_at(&keel_storage::FsStorage::new(), dir.path(), &o).unwrap();
    let wal = Arc::new(wal);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 300u64;
    let lsns = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move { wal.append_async(&payload(i)).await })
            })
            .collect();
        let mut lsns = vec![];
        for t in tasks {
            lsns.push(t.await.unwrap().unwrap());
        }
        lsns
    });
    let mut sorted = lsns.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len() as u64, n, "every append got its own LSN");
    assert_eq!(wal.durable_lsn(), n);
    let st = wal.stats();
    println!(
        "async: {n} appends on one runtime thread, {} fdatasyncs",
        st.syncs
    );
    // Had an append blocked the only runtime thread, every record would have
    // needed its own fdatasync.
    assert!(st.syncs < n / 2, "{} fdatasyncs for {n} appends", st.syncs);
}

#[test]
fn append_async_reports_a_stopped_log() {
    let s = sim(6);
    let o = opts(SyncPolicy::Always);
    let (wal, _, _) = open(&s, &o).unwrap();
    s.inject(keel_storage::Fault {
        op: keel_storage::FaultOp::Write,
        nth: 1,
        persistent: true,
        kind: keel_storage::FaultKind::Eio,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(wal.append_async(b"x")).unwrap_err();
    assert!(err.is_stopped(), "{err}");
    let err = rt.block_on(wal.append_async(b"y")).unwrap_err();
    assert!(err.is_stopped(), "{err}");
}

#[test]
fn oversized_records_and_bad_options_are_refused_and_change_nothing() {
    let s = sim(7);
    let o = WalOptions {
        max_record_size: 100,
        ..opts(SyncPolicy::Always)
    };
    let (wal, _, _) = open(&s, &o).unwrap();
    let err = wal.append(&[0u8; 101]).unwrap_err();
    assert!(matches!(
        err,
        WalError::RecordTooLarge { len: 101, max: 100 }
    ));
    assert!(err.to_string().contains("max_record_size"));
    assert_eq!(wal.next_lsn(), 1, "a refused record took an LSN");
    assert_eq!(wal.append(&[0u8; 100]).unwrap(), 1);
    let bad = WalOptions {
        segment_size: 10,
        ..WalOptions::default()
    };
    assert!(matches!(
        open(&sim(8), &bad),
        Err(WalError::InvalidOptions(_))
    ));
    let bad = WalOptions {
        sync: SyncPolicy::Interval(Duration::ZERO),
        ..WalOptions::default()
    };
    assert!(matches!(
        open(&sim(8), &bad),
        Err(WalError::InvalidOptions(_))
    ));
}
