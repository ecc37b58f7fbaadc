//! Entry points for fuzzing (`fuzz/`), also replayed on a committed seed
//! corpus by `cargo test`. Each panics only when an invariant breaks:
//! decoding never panics, never allocates more than its input, and whatever
//! decodes re-encodes to exactly the bytes it came from.

use crate::compression::{decompress, Compression};
use crate::format::{
    decode_record, encode_record, encode_record_v1, Decoded, SegmentHeader, SEGMENT_HEADER_LEN,
};
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

/// Record decoding: the first 8 bytes are the salt, the rest the record,
/// read as a record of each format version.
pub fn record_decoding(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let salt = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let buf = &data[8..];
    for version in [1, 2] {
        if let Decoded::Record(r) = decode_record(buf, version, salt, 1 << 20) {
            let mut again = Vec::new();
            if version == 1 {
                let m = r.meta;
                encode_record_v1(&mut again, salt, m.lsn, m.durable_lsn, r.stored);
            } else {
                encode_record(&mut again, salt, &r.meta, r.stored);
            }
            let n = again.len().min(buf.len());
            assert_eq!(
                &again[..n],
                &buf[..n],
                "a decoded version {version} record does not re-encode identically"
            );
            let mut out = Vec::new();
            if decompress(r.meta.compression, r.stored, r.meta.raw_len, &mut out).is_ok() {
                assert_eq!(out.len(), r.meta.raw_len as usize);
            }
        }
    }
    if let Ok(h) = SegmentHeader::decode(buf) {
        assert_eq!(&h.encode()[..], &buf[..SEGMENT_HEADER_LEN]);
        let preamble = h.encode_with_dictionary(h.dictionary_in(buf));
        assert_eq!(&preamble[..], &buf[..h.records_start()]);
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
        let mut stored = 0usize;
        let visit = |r: crate::Record<'_>| {
            assert!(r.payload.len() <= 1 << 20, "a payload over the maximum");
            stored += r.stored_len as usize;
        };
        if let Ok(report) = Wal::read_dir(&s, &dir, &opts, 1, visit) {
            assert!(stored <= data.len());
            assert!(report.records_read as usize <= data.len() / 24 + 1);
        }
    }
    let _ = inspect::inspect_segment(&s, &path, 1 << 20, true, |r, off| {
        assert!(off as usize + r.stored_len as usize <= data.len());
    });
}

/// A dictionary trained once per process on made-up JSON records, for
/// fuzzing the dictionary path.
fn fuzz_dictionary() -> &'static crate::dictionary::ZstdDictionary {
    static DICT: std::sync::OnceLock<crate::dictionary::ZstdDictionary> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| {
        let (mut bytes, mut sizes) = (Vec::new(), Vec::new());
        for i in 0..200u64 {
            let doc = format!(
                "{{\"id\":{i},\"name\":\"user{}\",\"tags\":[\"t{}\"],\"ok\":{}}}",
                i * 31 % 97,
                i % 7,
                i % 2 == 0
            );
            bytes.extend_from_slice(doc.as_bytes());
            sizes.push(doc.len());
        }
        crate::dictionary::train(&bytes, &sizes, 1024).expect("a dictionary trains")
    })
}

/// Decompression of a stored payload: byte 0 names the codec (mod 4: 0
/// none, 1 Snappy, 2 zstd, 3 zstd with a dictionary), bytes 1..4 the raw
/// length (at most 16 MiB), the rest is the stored payload. It must never
/// panic, never produce other than the raw length, and whatever a codec
/// compresses must decompress to the same bytes.
pub fn record_decompression(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let raw_len = u32::from_le_bytes([data[1], data[2], data[3], 0]);
    let stored = &data[4..];
    if data[0] % 4 == 3 {
        let dict = fuzz_dictionary();
        let seg = crate::dictionary::SegmentDictionary {
            salt: 1,
            crc: 2,
            bytes: dict.bytes(),
        };
        let mut out = Vec::new();
        if crate::compression::decompress_with_dictionary(seg, stored, raw_len, &mut out).is_ok() {
            assert_eq!(out.len(), raw_len as usize);
        }
        let mut packed = Vec::new();
        if crate::compression::compress_with_dictionary(dict, stored, &mut packed) {
            let mut back = Vec::new();
            crate::compression::decompress_with_dictionary(
                seg,
                &packed,
                stored.len() as u32,
                &mut back,
            )
            .expect("what was just compressed decompresses");
            assert_eq!(back, stored);
        }
        return;
    }
    let codec = Compression::from_byte(data[0] % 4).expect("0..3 are codecs");
    let mut out = Vec::new();
    if decompress(codec, stored, raw_len, &mut out).is_ok() {
        assert_eq!(out.len(), raw_len as usize);
    }
    let mut packed = Vec::new();
    if crate::compression::compress(codec, stored, &mut packed) {
        let mut back = Vec::new();
        decompress(codec, &packed, stored.len() as u32, &mut back)
            .expect("what was just compressed decompresses");
        assert_eq!(back, stored);
    }
}
