//! Record compression: the codecs a record's payload may be stored with,
//! and the rules for using them.
//!
//! Invariants:
//! - A record says how it is stored (its `compression` byte); a reader
//!   never guesses, and one log may mix stored forms freely.
//! - A payload is stored compressed only when it is at least
//!   [`WalOptions::compression_min_size`](crate::WalOptions) bytes and
//!   compression saves at least an eighth of it; otherwise it is stored as
//!   is, so incompressible data costs one failed attempt and no bytes.
//! - A zstd record may use its segment's dictionary
//!   ([`crate::dictionary`]); it says so, and is read with that one.
//! - Decompression trusts nothing: the record's raw length (checked against
//!   the maximum record size before anything is allocated) bounds the
//!   output, and anything but exactly that many bytes is damage.

use crate::dictionary::{SegmentDictionary, ZstdDictionary};
use std::cell::RefCell;
use std::sync::Mutex;

/// How record payloads are compressed (`wal_compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as given.
    #[default]
    None,
    /// Snappy (raw format, no framing): fast, modest ratio.
    Snappy,
    /// Zstandard at level 1 (a single frame): the best ratio, still fast.
    Zstd,
}

/// The zstd level records are written with: level 1 is the fastest of the
/// normal levels, and a log record is written on the acknowledgement path.
pub const ZSTD_LEVEL: i32 = 1;

impl Compression {
    /// The byte that marks a record stored this way (docs/FORMAT.md).
    pub fn to_byte(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Snappy => 1,
            Compression::Zstd => 2,
        }
    }

    /// The codec a record's byte names, if this code knows it.
    pub fn from_byte(b: u8) -> Option<Compression> {
        match b {
            0 => Some(Compression::None),
            1 => Some(Compression::Snappy),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Its name in options and tools: `none`, `snappy` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a name as [`name`](Self::name) prints it (any case).
    pub fn parse(s: &str) -> Option<Compression> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Compression::None),
            "snappy" => Some(Compression::Snappy),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::parse(s).ok_or_else(|| {
            format!("unknown compression {s:?}: use \"none\", \"snappy\" or \"zstd\"")
        })
    }
}

/// zstd compression contexts, shared by every appending thread: a context
/// costs an allocation of its tables, too much to pay per record, and one
/// per thread (64 writers on 2 cores) spreads them over more memory than
/// the caches hold. A few taken in turn stay warm.
static ZSTD_COMPRESSORS: Mutex<Vec<zstd::bulk::Compressor<'static>>> = Mutex::new(Vec::new());
/// Contexts kept for reuse; more are made while more threads compress at
/// once, and dropped after.
const ZSTD_POOL: usize = 8;

thread_local! {
    /// Decompression runs on one thread (recovery, inspection): one context
    /// each, reused.
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
    static SNAPPY_ENCODER: RefCell<snap::raw::Encoder> = RefCell::new(snap::raw::Encoder::new());
}

/// Compresses `raw` into `out` (cleared first) with `codec`, returning
/// whether the result is worth storing: at least an eighth smaller than
/// `raw`. `false` (or [`Compression::None`]) means: store `raw` as is.
pub fn compress(codec: Compression, raw: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let ok = match codec {
        Compression::None => return false,
        Compression::Snappy => {
            out.resize(snap::raw::max_compress_len(raw.len()), 0);
            SNAPPY_ENCODER
                .with(|e| e.borrow_mut().compress(raw, out))
                .map(|n| out.truncate(n))
                .is_ok()
        }
        Compression::Zstd => compress_zstd(raw, out),
    };
    ok && worth_storing(raw, out)
}

/// Compresses `raw` into `out` with zstd and its segment's dictionary,
/// returning whether the result is worth storing (as [`compress`]).
pub fn compress_with_dictionary(dict: &ZstdDictionary, raw: &[u8], out: &mut Vec<u8>) -> bool {
    dict.compress(raw, out) && worth_storing(raw, out)
}

/// A compressed form is stored only if it saves at least an eighth.
fn worth_storing(raw: &[u8], out: &[u8]) -> bool {
    out.len() + raw.len() / 8 <= raw.len() && !out.is_empty()
}

/// zstd without a dictionary into `out` (cleared first); `false` if zstd
/// failed.
pub(crate) fn compress_zstd(raw: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    let pool = || {
        ZSTD_COMPRESSORS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let taken = pool().pop();
    match taken.map_or_else(|| zstd::bulk::Compressor::new(ZSTD_LEVEL), Ok) {
        Ok(mut c) => {
            let ok = c.compress_to_buffer(raw, out).is_ok();
            let mut p = pool();
            if p.len() < ZSTD_POOL {
                p.push(c);
            }
            ok
        }
        Err(_) => false,
    }
}

/// Decompresses a record compressed with zstd and its segment's
/// dictionary `dict` into `out` (cleared first), which must come to
/// exactly `raw_len` bytes (checked against the maximum by the caller).
pub fn decompress_with_dictionary(
    dict: SegmentDictionary<'_>,
    stored: &[u8],
    raw_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    let fail = |why: String| DecompressError {
        codec: Compression::Zstd,
        raw_len,
        why: format!("with the segment's dictionary: {why}"),
    };
    out.clear();
    let want = raw_len as usize;
    // The slice is the bound: zstd fails rather than write past it.
    out.resize(want, 0);
    let got = crate::dictionary::decompress(dict, stored, &mut out[..]).map_err(fail)?;
    if got != want {
        return Err(fail(format!("{got} bytes came out")));
    }
    Ok(())
}

/// Why a stored payload did not decompress to its recorded length.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{codec} payload does not decompress to its recorded {raw_len} bytes: {why}")]
pub struct DecompressError {
    /// The record's codec.
    pub codec: Compression,
    /// The length the record says its payload has.
    pub raw_len: u32,
    /// What went wrong.
    pub why: String,
}

/// Decompresses `stored` into `out` (cleared first), which must come to
/// exactly `raw_len` bytes. The caller has checked `raw_len` against the
/// maximum record size: no more than that is ever allocated.
pub fn decompress(
    codec: Compression,
    stored: &[u8],
    raw_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    let fail = |why: String| DecompressError {
        codec,
        raw_len,
        why,
    };
    out.clear();
    let want = raw_len as usize;
    match codec {
        Compression::None => {
            if stored.len() != want {
                return Err(fail(format!("{} bytes stored", stored.len())));
            }
            out.extend_from_slice(stored);
        }
        Compression::Snappy => {
            // The raw format starts with the uncompressed length: check it
            // before allocating.
            let n = snap::raw::decompress_len(stored).map_err(|e| fail(e.to_string()))?;
            if n != want {
                return Err(fail(format!("the snappy header says {n} bytes")));
            }
            out.resize(want, 0);
            let got = snap::raw::Decoder::new()
                .decompress(stored, out)
                .map_err(|e| fail(e.to_string()))?;
            if got != want {
                return Err(fail(format!("{got} bytes came out")));
            }
        }
        Compression::Zstd => {
            // The slice is the bound: zstd fails rather than write past it.
            out.resize(want, 0);
            let got = ZSTD_DECOMPRESSOR.with(|d| {
                let mut slot = d.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| fail(e.to_string()))?);
                }
                // Invariant: set just above when it was empty.
                let d = slot.as_mut().expect("decompressor created");
                d.decompress_to_buffer(stored, &mut out[..])
                    .map_err(|e| fail(e.to_string()))
            })?;
            if got != want {
                return Err(fail(format!("{got} bytes came out")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_like(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0;
        while v.len() < n {
            v.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"name\":\"user-{i}\",\"active\":true,\"tags\":[\"a\",\"b\"]}},"
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn names_round_trip_and_bytes_are_stable() {
        for c in [Compression::None, Compression::Snappy, Compression::Zstd] {
            assert_eq!(Compression::parse(c.name()), Some(c));
            assert_eq!(Compression::from_byte(c.to_byte()), Some(c));
            assert_eq!(c.name().parse::<Compression>(), Ok(c));
        }
        assert_eq!(Compression::from_byte(3), None);
        assert!("lz4".parse::<Compression>().unwrap_err().contains("zstd"));
    }

    #[test]
    fn compressible_payloads_shrink_and_round_trip() {
        let raw = json_like(1024);
        for c in [Compression::Snappy, Compression::Zstd] {
            let mut out = Vec::new();
            assert!(compress(c, &raw, &mut out), "{c}");
            assert!(out.len() < raw.len() / 2, "{c}: {} bytes", out.len());
            let mut back = Vec::new();
            decompress(c, &out, raw.len() as u32, &mut back).unwrap();
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn incompressible_payloads_are_stored_as_is() {
        let mut rng = keel_storage::rng::SplitMix64::new(5);
        let raw: Vec<u8> = (0..1024).map(|_| rng.next_u64() as u8).collect();
        for c in [Compression::None, Compression::Snappy, Compression::Zstd] {
            assert!(!compress(c, &raw, &mut Vec::new()), "{c}");
        }
    }

    #[test]
    fn a_wrong_raw_length_is_refused() {
        let raw = json_like(500);
        for c in [Compression::Snappy, Compression::Zstd] {
            let mut out = Vec::new();
            assert!(compress(c, &raw, &mut out));
            let mut back = Vec::new();
            for wrong in [0u32, 499, 501, 1 << 20] {
                let e = decompress(c, &out, wrong, &mut back).unwrap_err();
                assert_eq!(e.raw_len, wrong);
                assert!(back.capacity() <= 1 << 21);
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_nor_overflows(codec in 0u8..3, raw_len in 0u32..4096,
                                              stored in proptest::collection::vec(any::<u8>(), 0..300)) {
            let c = Compression::from_byte(codec).unwrap();
            let mut out = Vec::new();
            if decompress(c, &stored, raw_len, &mut out).is_ok() {
                prop_assert_eq!(out.len(), raw_len as usize);
            }
        }

        #[test]
        fn whatever_compresses_decompresses(codec in 1u8..3, seed: u64, n in 0usize..3000) {
            let c = Compression::from_byte(codec).unwrap();
            let mut raw = json_like(n);
            let mut rng = keel_storage::rng::SplitMix64::new(seed);
            for b in raw.iter_mut() {
                if rng.chance(1, 10) {
                    *b = rng.next_u64() as u8;
                }
            }
            let mut out = Vec::new();
            if compress(c, &raw, &mut out) {
                let mut back = Vec::new();
                decompress(c, &out, raw.len() as u32, &mut back).unwrap();
                prop_assert_eq!(back, raw);
            }
        }
    }
}
