//! Property and exhaustive tests of recovery: round trips, a log cut at every
//! byte of its last record, every single-bit flip of a small log, garbage and
//! zeros after the end. Each test prints how many cases it tried.

mod common;

use common::*;
use keel_storage::{FsStorage, SimStorage, Storage};
use keel_wal::{DamageKind, RecoveryMode, WalError, WalOptions};
use proptest::prelude::*;

/// Writes `n` records (one append at a time, so record k+1 proves k synced),
/// closes the log and returns the storage.
fn build(seed: u64, n: u64, opts: &WalOptions) -> SimStorage {
    let s = sim(seed);
    let (wal, _, _) = open(&s, opts).unwrap();
    for i in 1..=n {
        assert_eq!(wal.append(&payload(i)).unwrap(), i);
    }
    wal.close().unwrap();
    s
}

fn expect_prefix(records: &Records, n: u64) {
    assert_eq!(records.len() as u64, n, "record count");
    for (i, (lsn, p)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
        assert_eq!(p, &payload(*lsn), "payload of LSN {lsn}");
    }
}

#[test]
fn cut_at_every_byte_of_the_last_record() {
    let opts = WalOptions {
        segment_size: 1 << 16,
        ..WalOptions::default()
    };
    let n = 12;
    let base = build(1, n, &opts);
    let seg = segment_files(&base)[0].clone();
    let full = base.read_file(&seg).unwrap();
    // Find where the last record starts: recover n-1 records from a copy.
    let last_start = {
        let s = build(1, n - 1, &opts);
        let d = s.read_file(&segment_files(&s)[0]).unwrap();
        d.iter().rposition(|&b| b != 0).unwrap() + 1
    };
    let last_start = last_start.next_multiple_of(8);
    let last_end = full.iter().rposition(|&b| b != 0).unwrap() + 1;
    let mut tried = 0;
    for cut in last_start..=last_end {
        for zero_fill in [false, true] {
            let s = build(1, n, &opts);
            let mut d = full.clone();
            if zero_fill {
                d[cut..].fill(0); // preallocated space after a short write
            } else {
                d.truncate(cut); // a file that was never preallocated
            }
            s.write_file_durably(&seg, &d).unwrap();
            let (wal, report, records) = open(&s, &opts).unwrap();
            if cut == last_end {
                expect_prefix(&records, n);
            } else if cut == last_start {
                // The whole record is gone: a clean end, nothing to cut.
                expect_prefix(&records, n - 1);
                assert!(report.torn_tail.is_none());
            } else {
                expect_prefix(&records, n - 1);
                let torn = report.torn_tail.expect("a cut record is a torn tail");
                assert_eq!(torn.last_good_lsn, n - 1);
                assert_eq!(torn.damage.offset, last_start as u64);
            }
            // The log goes on after the cut with the next LSN, and what it
            // appends there survives the next recovery (a file that ends
            // inside a record's padding must not be appended to unaligned).
            let after = wal.append(b"after").unwrap();
            assert_eq!(after, records.len() as u64 + 1);
            drop(wal);
            let (_, again, records2) = open(&s, &opts).unwrap();
            assert_eq!(
                records2.last(),
                Some(&(after, b"after".to_vec())),
                "cut at {cut} (zero fill {zero_fill}): the append after recovery was lost"
            );
            assert!(again.torn_tail.is_none());
            tried += 1;
        }
    }
    println!("cut-at-every-byte: {tried} cut points tried");
    assert!(tried > 50);
}

#[test]
fn every_single_bit_flip_is_detected_and_classified() {
    let opts = WalOptions {
        segment_size: 1 << 12,
        preallocate: false,
        ..WalOptions::default()
    };
    let n = 6;
    let base = build(2, n, &opts);
    let seg = segment_files(&base)[0].clone();
    let full = base.read_file(&seg).unwrap();
    let last_start = {
        let s = build(2, n - 1, &opts);
        s.read_file(&segment_files(&s)[0]).unwrap().len()
    };
    let (mut corrupt, mut torn) = (0, 0);
    for bit in 0..full.len() * 8 {
        let s = build(2, n, &opts);
        let mut d = full.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        s.write_file_durably(&seg, &d).unwrap();
        let byte = bit / 8;
        match open(&s, &opts) {
            Ok((_, report, records)) => {
                // Only damage in the last record (nothing after it proves it
                // synced) may be cut; everything before must come back intact.
                assert!(
                    byte >= last_start,
                    "flip at byte {byte} (before the last record) was not refused"
                );
                expect_prefix(&records, n - 1);
                assert!(report.torn_tail.is_some());
                torn += 1;
            }
            Err(WalError::Corrupt(d)) => {
                assert!(byte < last_start, "flip in the last record refused: {d}");
                corrupt += 1;
            }
            Err(other) => panic!("flip at bit {bit}: unexpected error {other}"),
        }
    }
    println!(
        "bit flips: {} tried, {corrupt} refused as corruption, {torn} cut as torn tail",
        full.len() * 8
    );
    assert_eq!(corrupt + torn, full.len() * 8);
}

#[test]
fn garbage_or_zeros_after_the_last_record_are_cut() {
    let opts = small_opts();
    let mut tried = 0;
    for seed in 0..64u64 {
        let n = 5 + seed % 7;
        let s = build(seed, n, &opts);
        let segs = segment_files(&s);
        let last = segs.last().unwrap();
        let mut d = s.read_file(last).unwrap();
        let end = d
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1)
            .next_multiple_of(8);
        let mut rng = keel_storage::rng::SplitMix64::new(seed);
        let len = 1 + rng.below(200) as usize;
        if d.len() < end + len {
            d.resize(end + len, 0);
        }
        if seed % 2 == 0 {
            rng.fill(&mut d[end..end + len]);
        } else {
            // Zeros, then garbage: a hole before data.
            rng.fill(&mut d[end + len / 2..end + len]);
            d[end + len - 1] |= 1;
        }
        s.write_file_durably(last, &d).unwrap();
        let (_, report, records) = open(&s, &opts).unwrap();
        expect_prefix(&records, n);
        let torn = report
            .torn_tail
            .expect("garbage after the end is a torn tail");
        assert_eq!(torn.last_good_lsn, n);
        assert!(torn.bytes_cut > 0);
        // Recovering again finds a clean log.
        let (_, again, records) = open(&s, &opts).unwrap();
        expect_prefix(&records, n);
        assert!(again.torn_tail.is_none(), "second recovery cut again");
        tried += 1;
    }
    println!("garbage/zeros after the end: {tried} logs tried");
}

#[test]
fn absolute_consistency_refuses_a_torn_tail_and_changes_nothing() {
    let opts = small_opts();
    let s = build(3, 5, &opts);
    let last = segment_files(&s).last().unwrap().clone();
    let mut d = s.read_file(&last).unwrap();
    let end = d.iter().rposition(|&b| b != 0).unwrap() + 1;
    d[end - 3] ^= 0x40;
    s.write_file_durably(&last, &d).unwrap();
    let strict = WalOptions {
        recovery: RecoveryMode::AbsoluteConsistency,
        ..opts.clone()
    };
    let err = open(&s, &strict).err().expect("torn tail refused");
    assert!(matches!(err, WalError::TornTailRefused(_)), "{err}");
    assert!(err.to_string().contains("TolerateCorruptedTail"));
    assert_eq!(
        s.read_file(&last).unwrap(),
        d,
        "a refused open changed the log"
    );
    let (_, report, records) = open(&s, &opts).unwrap();
    expect_prefix(&records, 4);
    assert!(report.torn_tail.is_some());
}

#[test]
fn corruption_in_the_middle_is_refused_naming_segment_offset_and_lsn() {
    let opts = small_opts();
    let s = build(4, 200, &opts);
    let segs = segment_files(&s);
    assert!(segs.len() > 3, "rotation happened");
    let victim = segs[1].clone();
    let mut d = s.read_file(&victim).unwrap();
    d[48 + 30] ^= 1; // inside the first record's payload
    s.write_file_durably(&victim, &d).unwrap();
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let o = WalOptions {
            recovery: mode,
            ..opts.clone()
        };
        let err = open(&s, &o).err().expect("corruption refused");
        let damage = err.damage().expect("names the damage").clone();
        assert_eq!(damage.segment, victim);
        assert_eq!(damage.offset, 48);
        let first: u64 = victim.file_name().unwrap().to_str().unwrap()[..20]
            .parse()
            .unwrap();
        assert_eq!(damage.lsn, first);
        let msg = err.to_string();
        assert!(
            msg.contains(&victim.display().to_string()) && msg.contains("offset 48"),
            "{msg}"
        );
    }
    assert_eq!(
        s.read_file(&victim).unwrap(),
        d,
        "a refused open changed the log"
    );
}

#[test]
fn point_in_time_keeps_the_prefix_and_sets_the_rest_aside() {
    let opts = small_opts();
    let s = build(5, 200, &opts);
    let segs = segment_files(&s);
    let victim = segs[1].clone();
    let first: u64 = victim.file_name().unwrap().to_str().unwrap()[..20]
        .parse()
        .unwrap();
    let mut d = s.read_file(&victim).unwrap();
    d[48 + 30] ^= 1;
    s.write_file_durably(&victim, &d).unwrap();
    let pit = WalOptions {
        recovery: RecoveryMode::PointInTime,
        ..opts.clone()
    };
    let (wal, report, records) = open(&s, &pit).unwrap();
    expect_prefix(&records, first - 1);
    let aside = report.set_aside.expect("reports what it set aside");
    assert_eq!(aside.damage.lsn, first);
    assert_eq!(aside.saved_to.len(), segs.len() - 1);
    for p in &aside.saved_to {
        assert!(s.exists(p).unwrap(), "{} kept", p.display());
    }
    // Appending continues at the damage; a default open then finds a sound log.
    assert_eq!(wal.append(b"next").unwrap(), first);
    wal.close().unwrap();
    let (_, report, records) = open(&s, &opts).unwrap();
    assert_eq!(records.len() as u64, first);
    assert!(report.torn_tail.is_none() && report.set_aside.is_none());
}

#[test]
fn salvage_skips_damage_and_keeps_later_records() {
    let opts = small_opts();
    let s = build(6, 200, &opts);
    let victim = segment_files(&s)[1].clone();
    let first: u64 = victim.file_name().unwrap().to_str().unwrap()[..20]
        .parse()
        .unwrap();
    let mut d = s.read_file(&victim).unwrap();
    d[48 + 30] ^= 1;
    s.write_file_durably(&victim, &d).unwrap();
    let salvage = WalOptions {
        recovery: RecoveryMode::SkipAnyCorruptedRecords,
        ..opts
    };
    let (_, report, records) = open(&s, &salvage).unwrap();
    assert_eq!(records.len(), 199);
    assert!(records
        .iter()
        .all(|(l, p)| *l != first && p == &payload(*l)));
    assert_eq!(report.skipped.len(), 1);
}

#[test]
fn a_missing_segment_is_corruption() {
    let opts = small_opts();
    let s = build(7, 200, &opts);
    let segs = segment_files(&s);
    s.remove(&segs[2]).unwrap();
    let err = open(&s, &opts).err().expect("gap refused");
    let damage = err.damage().unwrap();
    assert!(
        matches!(damage.kind, DamageKind::MissingRecords { .. }),
        "{damage}"
    );
    assert_eq!(damage.segment, segs[3]);
}

#[test]
fn a_segment_of_another_log_is_corruption() {
    let opts = small_opts();
    let a = build(8, 100, &opts);
    let b = build(9, 100, &opts);
    let segs_a = segment_files(&a);
    let segs_b = segment_files(&b);
    assert_eq!(segs_a, segs_b, "same LSN layout");
    let foreign = b.read_file(&segs_b[1]).unwrap();
    a.write_file_durably(&segs_a[1], &foreign).unwrap();
    let err = open(&a, &opts).err().expect("foreign segment refused");
    assert_eq!(err.damage().unwrap().kind, DamageKind::ForeignSegment);
}

#[test]
fn real_files_round_trip_across_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_size: 8192,
        ..WalOptions::default()
    };
    let (wal, _, _) = open_at(&FsStorage::new(), dir.path(), &opts).unwrap();
    for i in 1..=500 {
        wal.append(&payload(i)).unwrap();
    }
    assert!(wal.stats().rotations > 5);
    let before = wal.segment_paths().len();
    let removed = wal.truncate_before(250).unwrap();
    assert!(removed > 0 && wal.first_lsn() <= 250);
    assert_eq!(wal.segment_paths().len(), before - removed);
    let mut read = Vec::new();
    wal.read_from(490, |r| read.push((r.lsn, r.payload.to_vec())))
        .unwrap();
    assert_eq!(read.len(), 11);
    wal.close().unwrap();
    let (_, report, records) = open_at(&FsStorage::new(), dir.path(), &opts).unwrap();
    assert_eq!(report.last_lsn, 500);
    assert!(records.first().unwrap().0 <= 250);
    for (l, p) in &records {
        assert_eq!(p, &payload(*l));
    }
    // No leftover prepared file beyond the one the preparer keeps.
    let tmp = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".tmp")
        })
        .count();
    assert!(tmp <= 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_records_round_trip(
        seed: u64,
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..60),
        segment_size in 4096u64..20000,
    ) {
        let opts = WalOptions { segment_size, ..WalOptions::default() };
        let s = sim(seed);
        let (wal, _, _) = open(&s, &opts).unwrap();
        for p in &payloads {
            wal.append(p).unwrap();
        }
        drop(wal);
        let s = s.crash();
        let (_, report, records) = open(&s, &opts).unwrap();
        prop_assert!(report.torn_tail.is_none());
        prop_assert_eq!(records.len(), payloads.len());
        for ((lsn, got), (i, want)) in records.iter().zip(payloads.iter().enumerate()) {
            prop_assert_eq!(*lsn, i as u64 + 1);
            prop_assert_eq!(got, want);
        }
    }
}
