//! zstd dictionaries trained from the log's own records.
//!
//! Small records (a JSON document of 1 KiB) compress poorly on their own:
//! each must spell out its field names and entropy tables again. A
//! dictionary trained on a sample of the log's recent records holds both,
//! so a record compressed with it stores mostly what is new in it (on the
//! JSON-like values of the `wal-compression` bench, 2.2x smaller than zstd
//! alone, and twice as fast to compute).
//!
//! Invariants:
//! - A dictionary lives in the header of every segment whose records use
//!   it (docs/FORMAT.md, "Dictionary block"): a segment is read with the
//!   dictionary it carries, never one from elsewhere, so archived, backed
//!   up and restored segments need nothing else to be read.
//! - Training never happens under the log's lock: the appender whose
//!   sample fills the budget trains (about 10 ms for 128 KiB of samples)
//!   after compressing its own record, and the result waits for the next
//!   segment. Only the log's first dictionary begins a segment early.
//! - A dictionary is adopted only if it compresses its own samples at least
//!   an eighth better than zstd alone; after a failed or useless training
//!   nothing is sampled again until the next segment begins, so
//!   incompressible data costs one training per segment at most.
//! - Trained dictionaries carry dictionary ID 0, so frames made with them
//!   spend no bytes naming it: the segment says which dictionary applies.

use crate::compression::ZSTD_LEVEL;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use zstd::zstd_safe::{CCtx, CDict, DCtx, DDict};

/// Samples longer than this are cut to it: a dictionary is for what many
/// records share, mostly near their start, and a few large records must
/// not fill the whole sample budget.
const MAX_SAMPLE_LEN: usize = 4096;
/// Compression contexts a dictionary keeps warm for its writers.
const CONTEXT_POOL: usize = 8;

/// A dictionary ready to compress records with: its bytes (as the segment
/// header stores them) and zstd's prepared form of them.
pub struct ZstdDictionary {
    bytes: Vec<u8>,
    cdict: CDict<'static>,
    contexts: Mutex<Vec<CCtx<'static>>>,
}

impl std::fmt::Debug for ZstdDictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdDictionary")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl ZstdDictionary {
    /// Prepares `bytes` (a zstd dictionary) for compression; `None` if zstd
    /// cannot load it.
    pub fn new(bytes: Vec<u8>) -> Option<ZstdDictionary> {
        let cdict = CDict::try_create(&bytes, ZSTD_LEVEL)?;
        Some(ZstdDictionary {
            bytes,
            cdict,
            contexts: Mutex::new(Vec::new()),
        })
    }

    /// The dictionary's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Compresses `raw` into `out` (cleared first) with this dictionary;
    /// `false` if zstd failed (the caller stores `raw` as is).
    pub fn compress(&self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        let pool = || {
            self.contexts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        let taken = pool().pop();
        let Some(mut cctx) = taken.or_else(CCtx::try_create) else {
            return false;
        };
        let ok = cctx.compress_using_cdict(out, raw, &self.cdict).is_ok();
        let mut p = pool();
        if p.len() < CONTEXT_POOL {
            p.push(cctx);
        }
        ok
    }
}

/// Trains a dictionary of at most `max_len` bytes on samples laid end to
/// end in `samples` (`sizes` says where each ends). `None` when zstd cannot
/// train on them (too few, too alike) or the result does not load.
pub fn train(samples: &[u8], sizes: &[usize], max_len: usize) -> Option<ZstdDictionary> {
    let mut bytes = zstd::dict::from_continuous(samples, sizes, max_len).ok()?;
    // Bytes 4..8 of a zstd dictionary are its ID, which every frame made
    // with it would repeat; 0 means "not named". The segment names it.
    if bytes.len() < 8 || bytes[0..4] != [0x37, 0xA4, 0x30, 0xEC] {
        return None;
    }
    bytes[4..8].copy_from_slice(&[0; 4]);
    ZstdDictionary::new(bytes)
}

/// Whether `dict` is worth a place in every segment: it compresses the
/// samples it was trained on at least an eighth smaller than zstd alone.
fn pays(dict: &ZstdDictionary, samples: &[u8], sizes: &[usize]) -> bool {
    let (mut plain, mut with) = (0usize, 0usize);
    let mut out = Vec::new();
    let mut start = 0;
    for &n in sizes {
        let s = &samples[start..start + n];
        start += n;
        if !crate::compression::compress_zstd(s, &mut out) {
            plain += n;
        } else {
            plain += out.len();
        }
        with += if dict.compress(s, &mut out) {
            out.len()
        } else {
            n
        };
    }
    with + plain / 8 <= plain
}

/// Where the log's next dictionary is in its making.
enum Phase {
    /// Payloads are being sampled.
    Sampling,
    /// One appender is training on the samples.
    Training,
    /// Trained (or found not worth it): waits for the next segment.
    Done(Option<Arc<ZstdDictionary>>),
}

struct Samples {
    bytes: Vec<u8>,
    sizes: Vec<usize>,
    phase: Phase,
}

/// Samples a log's payloads and trains its next dictionary from them.
pub(crate) struct Trainer {
    /// Largest dictionary to train; 0: never sample.
    max_len: usize,
    /// Samples to gather before training.
    budget: usize,
    /// Cleared while not sampling: appenders then skip the lock.
    sampling: AtomicBool,
    /// Set while a trained dictionary waits for the next segment.
    ready: AtomicBool,
    samples: Mutex<Samples>,
}

impl Trainer {
    /// A trainer of dictionaries up to `max_len` bytes, trained on 16 times
    /// that in samples; with `max_len` 0 it never samples.
    pub(crate) fn new(max_len: usize) -> Trainer {
        Trainer {
            max_len,
            budget: max_len * 16,
            sampling: AtomicBool::new(max_len > 0),
            ready: AtomicBool::new(false),
            samples: Mutex::new(Samples {
                bytes: Vec::new(),
                sizes: Vec::new(),
                phase: Phase::Sampling,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Samples> {
        // The samples are a cache of payloads: whatever state a panicking
        // thread left them in is still samples.
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `payload` as a sample if sampling; the call that fills the
    /// budget trains the dictionary before it returns.
    pub(crate) fn offer(&self, payload: &[u8]) {
        if !self.sampling.load(Ordering::Relaxed) {
            return;
        }
        let (bytes, sizes) = {
            let mut s = self.lock();
            if !matches!(s.phase, Phase::Sampling) {
                return;
            }
            let sample = &payload[..payload.len().min(MAX_SAMPLE_LEN)];
            s.bytes.extend_from_slice(sample);
            s.sizes.push(sample.len());
            if s.bytes.len() < self.budget {
                return;
            }
            s.phase = Phase::Training;
            self.sampling.store(false, Ordering::Relaxed);
            (std::mem::take(&mut s.bytes), std::mem::take(&mut s.sizes))
        };
        let trained = train(&bytes, &sizes, self.max_len).filter(|d| pays(d, &bytes, &sizes));
        tracing::debug!(
            samples = sizes.len(),
            adopted = trained.is_some(),
            "trained a zstd dictionary for the log"
        );
        let mut s = self.lock();
        self.ready.store(trained.is_some(), Ordering::Release);
        s.phase = Phase::Done(trained.map(Arc::new));
    }

    /// Whether a trained dictionary waits for the next segment.
    pub(crate) fn has_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Called as a segment begins: the dictionary trained for it, if one
    /// is done; sampling then starts over for the segment after.
    pub(crate) fn next_segment(&self) -> Option<Arc<ZstdDictionary>> {
        if self.max_len == 0 {
            return None;
        }
        let mut s = self.lock();
        if !matches!(s.phase, Phase::Done(_)) {
            return None;
        }
        let Phase::Done(dict) = std::mem::replace(&mut s.phase, Phase::Sampling) else {
            return None;
        };
        self.ready.store(false, Ordering::Release);
        self.sampling.store(true, Ordering::Relaxed);
        dict
    }
}

/// A segment's dictionary as a reader finds it: the bytes, and what names
/// them (the segment's salt and the dictionary's checksum), so a reader
/// reuses its prepared form for every record of the segment.
#[derive(Clone, Copy, Debug)]
pub struct SegmentDictionary<'a> {
    /// The segment's salt.
    pub salt: u64,
    /// The dictionary's checksum (from the segment header).
    pub crc: u32,
    /// The dictionary's bytes.
    pub bytes: &'a [u8],
}

thread_local! {
    /// The dictionary last read with on this thread, prepared, and a
    /// context: readers go through a segment's records in order.
    static READER: RefCell<Option<(u64, u32, DDict<'static>)>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// Decompresses `stored` with `dict` into `out`, which holds exactly its
/// capacity's worth of room; returns the bytes written.
pub(crate) fn decompress(
    dict: SegmentDictionary<'_>,
    stored: &[u8],
    out: &mut [u8],
) -> Result<usize, String> {
    READER.with(|r| {
        let mut r = r.borrow_mut();
        if !r
            .as_ref()
            .is_some_and(|(salt, crc, _)| *salt == dict.salt && *crc == dict.crc)
        {
            let ddict = DDict::try_create(dict.bytes)
                .ok_or_else(|| "zstd cannot load the segment's dictionary".to_string())?;
            *r = Some((dict.salt, dict.crc, ddict));
        }
        let Some((_, _, ddict)) = r.as_ref() else {
            return Err("no dictionary".to_string());
        };
        DCTX.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = DCtx::try_create();
            }
            let Some(dctx) = c.as_mut() else {
                return Err("zstd cannot make a decompression context".to_string());
            };
            dctx.decompress_using_ddict(out, stored, ddict)
                .map_err(|code| zstd::zstd_safe::get_error_name(code).to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records that share their field names, as JSON documents do.
    fn documents(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"id\":{i},\"user\":\"user{}\",\"status\":\"confirmed\",\"items\":[{{\"sku\":\"SKU-{:06}\",\"qty\":{}}}],\"currency\":\"EUR\",\"note\":\"{}\"}}",
                    i * 7 % 13,
                    i * 7919 % 1_000_000,
                    i % 9,
                    "x".repeat(i % 40)
                )
                .into_bytes()
            })
            .collect()
    }

    fn trainer_fed(t: &Trainer, docs: &[Vec<u8>]) {
        for d in docs {
            t.offer(d);
        }
    }

    #[test]
    fn a_dictionary_is_trained_once_the_budget_is_full_and_waits_for_a_segment() {
        let t = Trainer::new(1024);
        let docs = documents(400);
        let mut fed = 0;
        while !t.has_ready() {
            assert!(fed < docs.len(), "never trained");
            t.offer(&docs[fed]);
            fed += 1;
        }
        let sampled: usize = docs[..fed].iter().map(|d| d.len()).sum();
        let before: usize = sampled - docs[fed - 1].len();
        assert!(
            before < 16 * 1024 && sampled >= 16 * 1024,
            "trained at {sampled} bytes of samples"
        );
        // Sampling stopped: more offers change nothing.
        trainer_fed(&t, &docs[fed..]);
        let dict = t.next_segment().expect("a dictionary");
        assert!(!t.has_ready());
        assert!(dict.bytes().len() <= 1024);
        assert_eq!(&dict.bytes()[4..8], &[0, 0, 0, 0], "dictionary ID kept");
        // Sampling started over for the next one; nothing is ready yet.
        assert!(t.next_segment().is_none());
        trainer_fed(&t, &docs);
        assert!(t.has_ready());
    }

    #[test]
    fn records_compressed_with_a_dictionary_read_back_and_are_smaller() {
        let docs = documents(300);
        let (mut bytes, mut sizes) = (Vec::new(), Vec::new());
        for d in &docs[..200] {
            bytes.extend_from_slice(d);
            sizes.push(d.len());
        }
        let dict = train(&bytes, &sizes, 2048).expect("trained");
        assert!(pays(&dict, &bytes, &sizes));
        let seg = SegmentDictionary {
            salt: 9,
            crc: 1,
            bytes: dict.bytes(),
        };
        let (mut with, mut plain) = (0, 0);
        let mut out = Vec::new();
        for d in &docs[200..] {
            assert!(dict.compress(d, &mut out));
            with += out.len();
            let mut back = vec![0u8; d.len()];
            assert_eq!(decompress(seg, &out, &mut back), Ok(d.len()));
            assert_eq!(&back, d);
            assert!(crate::compression::compress_zstd(d, &mut out));
            plain += out.len();
        }
        assert!(with * 3 < plain * 2, "with {with} plain {plain}");
    }

    #[test]
    fn random_samples_give_no_dictionary_and_sampling_waits_for_the_next_segment() {
        let t = Trainer::new(1024);
        let mut rng = keel_storage::rng::SplitMix64::new(3);
        for _ in 0..200 {
            let mut v = vec![0u8; 200];
            rng.fill(&mut v);
            t.offer(&v);
        }
        assert!(!t.has_ready());
        assert!(
            !t.sampling.load(Ordering::Relaxed),
            "sampling again at once"
        );
        assert!(t.next_segment().is_none());
        assert!(
            t.sampling.load(Ordering::Relaxed),
            "a new segment samples again"
        );
    }

    #[test]
    fn a_dictionary_size_of_zero_samples_nothing() {
        let t = Trainer::new(0);
        trainer_fed(&t, &documents(500));
        assert!(!t.has_ready());
        assert!(t.lock().bytes.is_empty());
        assert!(t.next_segment().is_none());
    }
}
