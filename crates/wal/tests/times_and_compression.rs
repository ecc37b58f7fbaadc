//! Record times and record compression, end to end through the log:
//! times never go backwards (not with the clock, not across a restart),
//! every codec reads back and one log mixes them, and a log of format
//! version 1 is read and continued in a new segment, crash-safely.

mod common;

use common::*;
use keel_storage::{Fault, FaultKind, FaultOp, OpenMode, SimStorage, Storage};
use keel_wal::format::{encode_record_v1, SegmentHeader};
use keel_wal::segment::segment_file_name;
use keel_wal::{Clock, Compression, Wal, WalOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A clock the test sets by hand.
fn manual_clock() -> (Arc<AtomicU64>, Clock) {
    let now = Arc::new(AtomicU64::new(0));
    let reader = Arc::clone(&now);
    (now, Clock::from_fn(move || reader.load(Ordering::SeqCst)))
}

/// Every record as (LSN, time, payload, compression), read by an open.
fn read_all(s: &SimStorage, opts: &WalOptions) -> Vec<(u64, u64, Vec<u8>, Compression)> {
    let mut out = Vec::new();
    let (wal, _) = Wal::open_with_replay(Arc::new(s.clone()), dir(), opts.clone(), 1, |r| {
        out.push((r.lsn, r.time_us, r.payload.to_vec(), r.compression))
    })
    .unwrap();
    wal.close().unwrap();
    out
}

#[test]
fn times_never_go_backwards_with_the_clock_nor_across_a_restart() {
    let s = sim(1);
    let (now, clock) = manual_clock();
    let opts = WalOptions {
        clock,
        ..small_opts()
    };
    let (wal, _, _) = open(&s, &opts).unwrap();
    for t in [1_000, 2_000, 500, 1_999, 3_000] {
        now.store(t, Ordering::SeqCst);
        wal.append(format!("at {t}").as_bytes()).unwrap();
    }
    wal.close().unwrap();
    now.store(100, Ordering::SeqCst);
    let (wal, report, _) = open(&s, &opts).unwrap();
    assert_eq!(report.last_time_us, 3_000);
    wal.append(b"after a restart, the clock behind").unwrap();
    wal.close().unwrap();
    let times: Vec<u64> = read_all(&s, &opts).iter().map(|r| r.1).collect();
    assert_eq!(times, vec![1_000, 2_000, 2_000, 2_000, 3_000, 3_000]);
}

#[test]
fn the_system_clock_stamps_records_with_the_time_of_the_append() {
    let s = sim(2);
    let opts = small_opts();
    let before = Clock::system().now_us();
    let (wal, _, _) = open(&s, &opts).unwrap();
    wal.append(b"now").unwrap();
    wal.close().unwrap();
    let after = Clock::system().now_us();
    let t = read_all(&s, &opts)[0].1;
    assert!((before..=after).contains(&t), "{before} <= {t} <= {after}");
}

fn json_like(i: u64) -> Vec<u8> {
    format!(
        "{{\"id\":{i},\"user\":\"user-{i}\",\"email\":\"user{i}@example.com\",\"active\":true,\"roles\":[\"reader\",\"writer\"],\"bio\":\"{}\"}}",
        "lorem ipsum dolor sit amet ".repeat(8)
    )
    .into_bytes()
}

fn random_bytes(i: u64, n: usize) -> Vec<u8> {
    let mut rng = keel_storage::rng::SplitMix64::new(i);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Opens with each codec in turn, appending compressible, incompressible
/// and small payloads; every record reads back as appended, stored as the
/// codec of its open (or as is when compression would not pay).
#[test]
fn every_codec_reads_back_and_one_log_mixes_them() {
    let s = sim(3);
    let mut want = Vec::new();
    let codecs = [
        Compression::None,
        Compression::Snappy,
        Compression::Zstd,
        Compression::None,
    ];
    for (round, codec) in codecs.into_iter().enumerate() {
        let opts = WalOptions {
            compression: codec,
            ..small_opts()
        };
        let (wal, _, _) = open(&s, &opts).unwrap();
        for i in 0..20u64 {
            let i = round as u64 * 100 + i;
            let (p, stored_as) = match i % 3 {
                0 => (json_like(i), codec),
                1 => (random_bytes(i, 300), Compression::None),
                _ => (b"tiny".repeat(10), Compression::None),
            };
            let lsn = wal.append(&p).unwrap();
            want.push((lsn, p, stored_as));
        }
        wal.close().unwrap();
    }
    let got = read_all(&s, &small_opts());
    assert_eq!(got.len(), want.len());
    for ((lsn, _, payload, stored), (wlsn, wpayload, wstored)) in got.iter().zip(&want) {
        assert_eq!(lsn, wlsn);
        assert!(payload == wpayload, "LSN {lsn}: payload differs");
        assert_eq!(stored, wstored, "LSN {lsn}");
    }
}

/// The log's byte count is what reaches the files: compressed records
/// count their compressed size.
#[test]
fn bytes_written_count_what_reaches_the_log() {
    let written = |codec| {
        let s = sim(4);
        let opts = WalOptions {
            compression: codec,
            segment_size: 1 << 20,
            ..WalOptions::default()
        };
        let (wal, _, _) = open(&s, &opts).unwrap();
        for i in 0..200 {
            wal.append(&json_like(i)).unwrap();
        }
        let stats = wal.stats();
        wal.close().unwrap();
        stats.bytes_written
    };
    let none = written(Compression::None);
    let zstd = written(Compression::Zstd);
    let snappy = written(Compression::Snappy);
    assert!(zstd * 2 < none, "zstd {zstd} vs none {none}");
    assert!(snappy * 3 < none * 2, "snappy {snappy} vs none {none}");
}

/// A version 1 segment (as releases before record times wrote) holding
/// `records` payloads from `first_lsn`.
fn write_v1_segment(s: &SimStorage, first_lsn: u64, records: &[Vec<u8>]) {
    let header = SegmentHeader {
        version: 1,
        log_id: 77,
        first_lsn,
        salt: 0x5a17,
        dictionary: None,
    };
    let mut b = header.encode().to_vec();
    for (i, p) in records.iter().enumerate() {
        let lsn = first_lsn + i as u64;
        encode_record_v1(&mut b, header.salt, lsn, lsn - 1, p);
    }
    b.resize(4096, 0);
    let path = dir().join(segment_file_name(first_lsn));
    s.open(&path, OpenMode::CreateNew).unwrap();
    s.sync_dir(&dir()).unwrap();
    s.write_file_durably(&path, &b).unwrap();
}

#[test]
fn a_version_1_log_is_read_and_continued_in_a_new_segment() {
    let s = sim(5);
    let old: Vec<Vec<u8>> = (1..=5).map(payload).collect();
    write_v1_segment(&s, 1, &old);
    let opts = small_opts();
    let (wal, report, records) = open(&s, &opts).unwrap();
    assert_eq!(report.last_lsn, 5);
    assert_eq!(report.last_time_us, 0, "version 1 records carry no time");
    assert_eq!(
        records.iter().map(|r| &r.1).collect::<Vec<_>>(),
        old.iter().collect::<Vec<_>>()
    );
    assert_eq!(wal.append(b"new").unwrap(), 6);
    wal.close().unwrap();
    let segs = segment_files(&s);
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert!(segs[1].ends_with(segment_file_name(6)));
    let head = s.read_file(&segs[1]).unwrap();
    assert_eq!(SegmentHeader::decode(&head).unwrap().version, 2);
    let all = read_all(&s, &opts);
    assert_eq!(all.len(), 6);
    assert!(all[..5].iter().all(|r| r.1 == 0));
    assert!(all[5].1 > 0 && all[5].2 == b"new");
}

/// An empty version 1 segment at the end is replaced, by a rename, with a
/// version 2 one of the same name. A crash at any storage operation of
/// that leaves a log that opens, holding the new record if and only if
/// its append could have reached the disk, and never losing the old ones.
#[test]
fn an_empty_version_1_tail_is_replaced_crash_safely() {
    let old: Vec<Vec<u8>> = (1..=3).map(payload).collect();
    let mut crashed = 0;
    for nth in 1..200u64 {
        let s = sim(6);
        write_v1_segment(&s, 1, &old);
        write_v1_segment(&s, 4, &[]);
        let opts = small_opts();
        s.inject(Fault {
            op: FaultOp::Any,
            nth,
            persistent: false,
            kind: FaultKind::Crash,
        });
        let acked = open(&s, &opts)
            .ok()
            .and_then(|(wal, _, _)| wal.append(b"new").ok());
        let done = !s.is_frozen();
        for mode in CRASH_MODES {
            let after = s.crash_with(mode);
            let (_, _, records) =
                open(&after, &opts).unwrap_or_else(|e| panic!("crash at op {nth} ({mode:?}): {e}"));
            assert_eq!(
                &records[..3].iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
                &old
            );
            match records.len() {
                3 => assert!(
                    acked.is_none(),
                    "op {nth}: the acknowledged record was lost"
                ),
                4 => assert_eq!(records[3], (4, b"new".to_vec())),
                n => panic!("op {nth}: {n} records"),
            }
        }
        if done {
            assert_eq!(acked, Some(4));
            break;
        }
        crashed += 1;
    }
    assert!(crashed >= 5, "only {crashed} crash points");
}
