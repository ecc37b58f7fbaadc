//! zstd dictionaries trained from the log's own records, end to end: the
//! first one begins a segment, records use it and read back (across
//! reopens, and with compression turned off later), it makes small records
//! smaller, a damaged dictionary is damage, and a crash at any storage
//! operation around the segment it begins loses nothing acknowledged.

mod common;

use common::*;
use keel_storage::{Fault, FaultKind, FaultOp, OpenMode, SimStorage, Storage};
use keel_wal::format::SegmentHeader;
use keel_wal::{Compression, Wal, WalError, WalOptions};

/// A JSON order of about 300 bytes: the field names repeat from record to
/// record, the values vary.
fn order(i: u64) -> Vec<u8> {
    let mut rng = keel_storage::rng::SplitMix64::new(i);
    let mut s = format!(
        "{{\"id\":{i},\"customer\":\"c{}\",\"status\":\"{}\",\"items\":[",
        rng.below(5000),
        ["paid", "shipped", "returned"][rng.below(3) as usize]
    );
    for k in 0..3 {
        if k > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"sku\":\"SKU-{:06}\",\"qty\":{},\"price\":{}.{:02},\"currency\":\"EUR\"}}",
            rng.below(1_000_000),
            1 + rng.below(9),
            rng.below(500),
            rng.below(100)
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

/// zstd with a 1 KiB dictionary (trained on 16 KiB of samples, about 60
/// orders) and segments big enough to hold one.
fn zstd_opts() -> WalOptions {
    WalOptions {
        compression: Compression::Zstd,
        zstd_dictionary_size: 1024,
        segment_size: 64 << 10,
        ..WalOptions::default()
    }
}

/// The header of a segment file, read whole.
fn header_of(s: &SimStorage, path: &std::path::Path) -> Result<SegmentHeader, String> {
    let f = s.open(path, OpenMode::Read).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    f.read_exact_at(&mut b, 0).unwrap();
    SegmentHeader::decode(&b).map_err(|e| e.to_string())
}

/// Every record as (LSN, payload, compressed with the dictionary).
fn read_all(wal: &Wal) -> Vec<(u64, Vec<u8>, bool)> {
    let mut out = Vec::new();
    wal.read_from(1, |r| out.push((r.lsn, r.payload.to_vec(), r.dictionary)))
        .unwrap();
    out
}

#[test]
fn the_first_dictionary_begins_a_segment_and_its_records_read_back_across_reopens() {
    let s = sim(1);
    let opts = zstd_opts();
    let (wal, _, _) = open(&s, &opts).unwrap();
    let mut want = Vec::new();
    for i in 0..150 {
        want.push(order(i));
        wal.append(&want[i as usize]).unwrap();
    }
    let segs = segment_files(&s);
    assert_eq!(segs.len(), 2, "the first dictionary begins one segment");
    assert_eq!(header_of(&s, &segs[0]).unwrap().dictionary, None);
    let second = header_of(&s, &segs[1]).unwrap();
    let dict = second.dictionary.expect("the new segment carries it");
    assert!(dict.len <= 1024, "{dict:?}");
    let got = read_all(&wal);
    assert_eq!(got.len(), 150);
    let first_of_second = second.first_lsn;
    for (lsn, payload, with_dict) in &got {
        assert_eq!(payload, &want[*lsn as usize - 1], "LSN {lsn}");
        // Records before the segment could not use it; every one in it
        // does (orders always compress with it).
        assert_eq!(*with_dict, *lsn >= first_of_second, "LSN {lsn}");
    }
    wal.close().unwrap();

    // Reopened, the log goes on with the tail's dictionary: no new segment.
    let (wal, _, replayed) = open(&s, &opts).unwrap();
    assert_eq!(replayed.len(), 150);
    for i in 150..170 {
        want.push(order(i));
        wal.append(&want[i as usize]).unwrap();
    }
    assert_eq!(segment_files(&s).len(), 2);
    assert!(read_all(&wal)[150..].iter().all(|r| r.2));
    wal.close().unwrap();

    // With compression off, new records are stored as is; old ones read.
    let plain = WalOptions {
        compression: Compression::None,
        ..opts.clone()
    };
    let (wal, _, _) = open(&s, &plain).unwrap();
    want.push(order(170));
    wal.append(&want[170]).unwrap();
    let got = read_all(&wal);
    assert!(!got[170].2);
    assert_eq!(
        got.into_iter().map(|r| r.1).collect::<Vec<_>>(),
        want,
        "every payload reads back as appended"
    );
    wal.close().unwrap();
}

#[test]
fn a_dictionary_makes_small_records_smaller() {
    let written = |dictionary_size| {
        let s = sim(2);
        let opts = WalOptions {
            zstd_dictionary_size: dictionary_size,
            ..zstd_opts()
        };
        let (wal, _, _) = open(&s, &opts).unwrap();
        for i in 0..1000 {
            wal.append(&order(i)).unwrap();
        }
        let stats = wal.stats();
        wal.close().unwrap();
        stats.bytes_written
    };
    let (without, with) = (written(0), written(1024));
    assert!(
        with * 10 < without * 7,
        "with a dictionary {with} bytes, without {without}"
    );
}

#[test]
fn segments_too_small_for_a_dictionary_go_without() {
    let s = sim(3);
    let opts = WalOptions {
        segment_size: 8192,
        ..zstd_opts()
    };
    let (wal, _, _) = open(&s, &opts).unwrap();
    for i in 0..200 {
        wal.append(&order(i)).unwrap();
    }
    wal.close().unwrap();
    for seg in segment_files(&s) {
        assert_eq!(header_of(&s, &seg).unwrap().dictionary, None);
    }
}

/// Writes orders until a segment with a dictionary exists and another
/// after it; returns the path of the one with the dictionary.
fn log_with_a_dictionary_mid_log(s: &SimStorage, opts: &WalOptions) -> std::path::PathBuf {
    let (wal, _, _) = open(s, opts).unwrap();
    let mut i = 0;
    while segment_files(s).len() < 3 {
        wal.append(&order(i)).unwrap();
        i += 1;
    }
    wal.close().unwrap();
    segment_files(s)[1].clone()
}

#[test]
fn a_damaged_dictionary_is_damage_never_a_tear() {
    let opts = zstd_opts();
    for last in [false, true] {
        let s = sim(4);
        let path = log_with_a_dictionary_mid_log(&s, &opts);
        if last {
            s.remove(&segment_files(&s)[2]).unwrap();
        }
        let f = s.open(&path, OpenMode::ReadWrite).unwrap();
        // A byte inside the dictionary itself (after header and block
        // header).
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 200).unwrap();
        f.write_at(&[b[0] ^ 0x10], 200).unwrap();
        f.sync_data().unwrap();
        match open(&s, &opts) {
            Err(WalError::Corrupt(d)) => {
                assert!(d.to_string().contains("dictionary"), "{d}");
                assert_eq!(d.segment, path);
            }
            Err(e) => panic!("last {last}: {e}"),
            Ok(_) => panic!("last {last}: a damaged dictionary was accepted"),
        }
    }
}

/// Power loss at every storage operation of a run whose first dictionary
/// begins a segment: every acknowledged record is there after the crash,
/// as appended, and the log opens and takes appends again.
#[test]
fn a_crash_at_any_storage_operation_around_the_dictionarys_segment_loses_nothing_acknowledged() {
    let opts = zstd_opts();
    let mut crashed = 0;
    for nth in 1..2000u64 {
        let s = sim(5);
        let (wal, _, _) = open(&s, &opts).unwrap();
        s.inject(Fault {
            op: FaultOp::Any,
            nth,
            persistent: false,
            kind: FaultKind::Crash,
        });
        let mut acked = 0u64;
        for i in 0..90 {
            match wal.append(&order(i)) {
                Ok(lsn) => acked = lsn,
                Err(_) => break,
            }
        }
        let done = !s.is_frozen();
        drop(wal);
        for mode in CRASH_MODES {
            let after = s.crash_with(mode);
            let (wal, _, records) =
                open(&after, &opts).unwrap_or_else(|e| panic!("crash at op {nth} ({mode:?}): {e}"));
            assert!(
                records.len() as u64 >= acked,
                "op {nth} ({mode:?}): {} records, {acked} acknowledged",
                records.len()
            );
            for (lsn, p) in &records {
                assert_eq!(p, &order(lsn - 1), "op {nth} ({mode:?}): LSN {lsn}");
            }
            let next = wal.append(&order(1000)).unwrap();
            assert_eq!(next, records.len() as u64 + 1);
            wal.close().unwrap();
        }
        if done {
            break;
        }
        crashed += 1;
    }
    assert!(crashed >= 20, "only {crashed} crash points");
}

/// A record that says it uses a dictionary, in a segment that has none,
/// is damage (its checksum is right: only the reader can tell).
#[test]
fn a_record_naming_a_dictionary_its_segment_lacks_is_damage() {
    let s = sim(6);
    let opts = WalOptions {
        zstd_dictionary_size: 0,
        ..zstd_opts()
    };
    let (wal, _, _) = open(&s, &opts).unwrap();
    wal.append(&order(1)).unwrap();
    wal.append(&order(2)).unwrap();
    wal.close().unwrap();
    let path = segment_files(&s)[0].clone();
    let f = s.open(&path, OpenMode::ReadWrite).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    f.read_exact_at(&mut b, 0).unwrap();
    let header = SegmentHeader::decode(&b).unwrap();
    let at = header.records_start();
    assert_eq!(b[at + 32], 2, "stored with zstd");
    b[at + 32] = keel_wal::format::ZSTD_WITH_DICTIONARY;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(
            crc32c::crc32c(&header.salt.to_le_bytes()),
            &b[at + 4..at + 40],
        ),
        &b[at + 40..at + 40 + u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize],
    );
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    f.write_at(&b, 0).unwrap();
    f.sync_data().unwrap();
    let opts = WalOptions {
        recovery: keel_wal::RecoveryMode::AbsoluteConsistency,
        ..opts
    };
    match open(&s, &opts) {
        Err(e) => assert!(e.to_string().contains("dictionary"), "{e}"),
        Ok(_) => panic!("a record naming a missing dictionary was read"),
    }
}

/// Turning dictionaries off (`zstd_dictionary_size` 0) stops them at the
/// next open: the tail's dictionary is not carried into new records.
#[test]
fn a_dictionary_size_of_zero_stops_dictionaries_at_the_next_open() {
    let s = sim(7);
    let (wal, _, _) = open(&s, &zstd_opts()).unwrap();
    for i in 0..150 {
        wal.append(&order(i)).unwrap();
    }
    wal.close().unwrap();
    let off = WalOptions {
        zstd_dictionary_size: 0,
        ..zstd_opts()
    };
    let (wal, _, _) = open(&s, &off).unwrap();
    for i in 150..800 {
        wal.append(&order(i)).unwrap();
    }
    let got = read_all(&wal);
    assert!(got[150..].iter().all(|r| !r.2), "a dictionary carried on");
    assert!(got[..150].iter().any(|r| r.2));
    let segs = segment_files(&s);
    assert!(segs.len() > 2, "the test must cross a segment");
    assert_eq!(
        header_of(&s, segs.last().unwrap()).unwrap().dictionary,
        None
    );
    wal.close().unwrap();
}
