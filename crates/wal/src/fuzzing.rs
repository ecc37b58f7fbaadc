//! Entry points for fuzzing (`fuzz/`), also replayed on a committed seed
//! corpus by `cargo test`. Each panics only when an invariant breaks:
//! decoding never panics, never allocates more than its input, and whatever
//! decodes re-encodes to exactly the bytes it came from.

use crate::format::{decode_record, encode_record, Decoded, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::{inspect, RecoveryMode, Wal, WalOptions};
use keel_storage::{OpenMode, SimStorage, Storage};
use std::path::{Path, PathBuf};

/// Runs `run` on every file of `fuzz/corpus/<target>` under the repository
/// root `root` (the seed corpus replayed by `cargo test`); returns how many.
/// Panics if there are none, so a moved corpus cannot pass silently.
pub fn replay_corpus(root: &Path, target: &str, run: fn(&[u8])) -> usize {
    let dir = root.join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        run(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
    n
}

/// Record decoding: the first 8 bytes are the salt, the rest the record.
pub fn record_decoding(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let salt = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let buf = &data[8..];
    if let Decoded::Record(r) = decode_record(buf, salt, 1 << 20) {
        let mut again = Vec::new();
        encode_record(&mut again, salt, r.lsn, r.durable_lsn, r.payload);
        let n = again.len().min(buf.len());
        assert_eq!(
            &again[..n],
            &buf[..n],
            "a decoded record does not re-encode identically"
        );
    }
    if let Ok(h) = SegmentHeader::decode(buf) {
        assert_eq!(&h.encode()[..], &buf[..SEGMENT_HEADER_LEN]);
    }
}

/// Segment reading: the input is one segment file; recovery (every mode,
/// read-only) and inspection must classify it without panicking, and every
/// record they return must lie inside the file.
pub fn segment_reading(data: &[u8]) {
    let s = SimStorage::new(0);
    let dir = PathBuf::from("/fuzz");
    keel_storage::create_dir_durable(&s, &dir).expect("sim dir");
    let path = dir.join(crate::segment::segment_file_name(1));
    let f = s.open(&path, OpenMode::CreateNew).expect("sim create");
    f.write_at(data, 0).expect("sim write");
    for mode in [
        RecoveryMode::TolerateCorruptedTail,
        RecoveryMode::AbsoluteConsistency,
        RecoveryMode::PointInTime,
        RecoveryMode::SkipAnyCorruptedRecords,
    ] {
        let opts = WalOptions {
            recovery: mode,
            max_record_size: 1 << 20,
            ..WalOptions::default()
        };
        let mut total = 0usize;
        if let Ok(report) = Wal::read_dir(&s, &dir, &opts, 1, |_, p| total += p.len()) {
            assert!(total <= data.len());
            assert!(report.records_read as usize <= data.len() / 24 + 1);
        }
    }
    let _ = inspect::inspect_segment(&s, &path, 1 << 20, true, |_, off, p| {
        assert!(off as usize + p.len() <= data.len());
    });
}
