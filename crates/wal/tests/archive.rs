//! The log archive: segments copied durably before they are deleted, a
//! crash at any storage operation of archiving losing nothing, a failed
//! archive keeping segments in the log while writes go on, and retention by
//! bytes and by age.

mod common;

use common::*;
use keel_storage::{Fault, FaultKind, FaultOp, SimStorage, Storage};
use keel_wal::archive::archived_segments;
use keel_wal::{ArchiveOptions, Clock, Record, Wal, WalOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn archive_dir() -> PathBuf {
    PathBuf::from("/keel/archive")
}

fn archived_opts() -> WalOptions {
    WalOptions {
        archive: Some(ArchiveOptions::new(archive_dir())),
        ..small_opts()
    }
}

/// Every record of the archived segments, in order, read the way a restore
/// reads them: each file as a log of its own.
fn archived_records(s: &SimStorage) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for (_, path) in archived_segments(s, &archive_dir()).unwrap() {
        let summary =
            keel_wal::inspect::inspect_segment(s, &path, 1 << 20, false, |r: Record<'_>, _| {
                out.push((r.lsn, r.payload.to_vec()))
            })
            .unwrap();
        assert!(
            summary.damage.is_empty(),
            "{}: {:?}",
            path.display(),
            summary.damage
        );
    }
    out
}

fn fill(wal: &Wal, n: u64) -> Vec<(u64, Vec<u8>)> {
    (1..=n)
        .map(|i| {
            let p = payload(i);
            (wal.append(&p).unwrap(), p)
        })
        .collect()
}

#[test]
fn segments_are_archived_whole_before_they_are_deleted() {
    let s = sim(1);
    let (wal, _, _) = open(&s, &archived_opts()).unwrap();
    let written = fill(&wal, 200);
    let before = segment_files(&s).len();
    let removed = wal.truncate_before(150).unwrap();
    assert!(removed >= 3, "{removed} of {before}");
    let stats = wal.stats();
    assert_eq!(stats.segments_archived, removed as u64);
    assert_eq!(stats.archive_failures, 0);
    let first_in_log = wal.first_lsn();
    let archived = archived_records(&s);
    assert_eq!(archived.first().map(|r| r.0), Some(1));
    assert_eq!(
        archived.len() as u64,
        first_in_log - 1,
        "the archive ends where the log begins"
    );
    assert_eq!(&archived[..], &written[..archived.len()]);
    // Copies are cut after their last record: no preallocated zeros.
    for (_, p) in archived_segments(&s, &archive_dir()).unwrap() {
        let bytes = s.read_file(&p).unwrap();
        assert!(
            bytes.len() < 4096,
            "{} is {} bytes",
            p.display(),
            bytes.len()
        );
        assert_ne!(bytes.last(), None);
    }
}

#[test]
fn a_failed_archive_keeps_the_segments_and_writes_go_on() {
    let s = sim(2);
    let (wal, _, _) = open(&s, &archived_opts()).unwrap();
    fill(&wal, 120);
    // The disk is full: no archive copy fits (appends still do, into the
    // preallocated segment).
    s.set_capacity(Some(s.used_bytes()));
    let segments = segment_files(&s).len();
    assert_eq!(wal.truncate_before(100).unwrap(), 0);
    assert_eq!(
        segment_files(&s).len(),
        segments,
        "nothing deleted unarchived"
    );
    assert_eq!(wal.stats().archive_failures, 1);
    assert!(wal.append(b"writes go on").is_ok());
    assert!(
        s.list(&archive_dir()).unwrap().is_empty(),
        "no copy, not even a temp file, is left"
    );
    // Space again: the next truncation archives the backlog.
    s.set_capacity(None);
    assert!(wal.truncate_before(100).unwrap() >= 2);
    assert_eq!(archived_records(&s).first().map(|r| r.0), Some(1));
}

/// Power loss at each storage operation of a truncation that archives,
/// in three crash modes: every record is in the log or in the archive (no
/// LSN lost between them), every archived file verifies whole, and a
/// reopened log archives on.
#[test]
fn a_crash_at_any_step_of_archiving_loses_nothing() {
    let mut crashes = 0;
    for nth in 1..400u64 {
        let s = sim(3);
        let opts = archived_opts();
        let (wal, _, _) = open(&s, &opts).unwrap();
        let written = fill(&wal, 150);
        s.inject(Fault {
            op: FaultOp::Any,
            nth,
            persistent: false,
            kind: FaultKind::Crash,
        });
        let outcome = wal.truncate_before(140);
        let finished = !s.is_frozen();
        drop(wal);
        for mode in CRASH_MODES {
            let after = s.crash_with(mode);
            let (wal, _, in_log) =
                open(&after, &opts).unwrap_or_else(|e| panic!("crash at op {nth} ({mode:?}): {e}"));
            let archived = archived_records(&after);
            let first = in_log.first().map(|r| r.0).unwrap();
            let covered: Vec<_> = archived
                .iter()
                .filter(|r| r.0 < first)
                .chain(in_log.iter())
                .cloned()
                .collect();
            assert_eq!(
                covered.first().map(|r| r.0),
                Some(1),
                "op {nth} ({mode:?}): records before {first} are in neither the log nor the archive"
            );
            assert_eq!(covered, written, "op {nth} ({mode:?})");
            // The reopened log archives on, over whatever the crash left.
            assert!(wal.truncate_before(140).is_ok(), "op {nth}");
            assert_eq!(archived_records(&after).first().map(|r| r.0), Some(1));
        }
        if finished {
            assert!(outcome.unwrap() > 0);
            break;
        }
        crashes += 1;
    }
    assert!(crashes >= 15, "only {crashes} crash points");
    println!("archiving: {crashes} crash points, each in 3 crash modes");
}

#[test]
fn retention_by_bytes_keeps_the_newest_and_a_contiguous_run() {
    let s = sim(4);
    let mut opts = archived_opts();
    opts.archive.as_mut().unwrap().max_bytes = Some(10_000);
    let (wal, _, _) = open(&s, &opts).unwrap();
    fill(&wal, 300);
    wal.truncate_before(290).unwrap();
    let segs = archived_segments(&s, &archive_dir()).unwrap();
    let bytes: u64 = segs
        .iter()
        .map(|(_, p)| s.read_file(p).unwrap().len() as u64)
        .sum();
    assert!(bytes <= 10_000, "{bytes} bytes in {} segments", segs.len());
    assert!(segs.len() >= 2, "{segs:?}");
    let archived = archived_records(&s);
    assert!(
        archived.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "contiguous"
    );
    assert_eq!(
        archived.last().unwrap().0 + 1,
        wal.first_lsn(),
        "ends where the log begins"
    );
}

#[test]
fn retention_by_age_judges_a_segment_by_the_one_after_it() {
    let s = sim(5);
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let reader = Arc::clone(&now);
    let mut opts = archived_opts();
    opts.clock = Clock::from_fn(move || reader.load(Ordering::SeqCst));
    opts.archive.as_mut().unwrap().max_age = Some(Duration::from_secs(60));
    let (wal, _, _) = open(&s, &opts).unwrap();
    // Ten records a second of log time, 40 records a segment or so.
    for i in 1..=400u64 {
        now.fetch_add(100_000, Ordering::SeqCst);
        wal.append(&payload(i)).unwrap();
    }
    // Log time is now 40 s after the first record: nothing is old enough.
    wal.truncate_before(390).unwrap();
    let all = archived_segments(&s, &archive_dir()).unwrap().len();
    assert!(all >= 5);
    // 100 s later, every archived record but the newest segment's is old;
    // retention runs when something is archived.
    now.fetch_add(100_000_000, Ordering::SeqCst);
    for i in 401..=500u64 {
        wal.append(&payload(i)).unwrap();
    }
    wal.truncate_before(495).unwrap();
    let left = archived_segments(&s, &archive_dir()).unwrap();
    let archived = archived_records(&s);
    assert!(left.len() < all, "{} of {all} left", left.len());
    assert!(
        archived.first().unwrap().0 > 300,
        "first left: {}",
        archived[0].0
    );
    assert!(
        archived.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "contiguous"
    );
}

#[test]
fn a_segment_of_another_log_in_the_archive_is_never_replaced() {
    let s = sim(6);
    let (wal, _, _) = open(&s, &archived_opts()).unwrap();
    fill(&wal, 100);
    wal.truncate_before(50).unwrap();
    let first = archived_segments(&s, &archive_dir()).unwrap()[0].1.clone();
    let theirs = s.read_file(&first).unwrap();
    drop(wal);
    // Another log (a second store) archiving into the same directory.
    let other = PathBuf::from("/keel/other");
    let (wal2, _) = Wal::open(Arc::new(s.clone()), &other, archived_opts()).unwrap();
    for i in 1..=100u64 {
        wal2.append(&payload(i)).unwrap();
    }
    wal2.truncate_before(50).unwrap();
    assert_eq!(
        s.read_file(&first).unwrap(),
        theirs,
        "another log's segment replaced"
    );
    assert_eq!(wal2.stats().archive_failures, 1);
}
