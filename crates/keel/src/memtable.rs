//! [`Memtable`]: the newest writes of a store kept on tables (issue 12), in
//! memory, in key order, with tombstones.
//!
//! The log is its only durable copy until a flush writes it as a table.
//! It is a persistent map, so freezing it and pinning it for a reader are
//! O(1) clones; a frozen memtable is never changed again. A tombstone
//! (`None`) hides the key's entries in older memtables and tables.
//!
//! Its size counts keys, values and a fixed per-entry overhead (the map's
//! node and pointers), so that `memtable_size` bounds memory, not only
//! payload bytes.
//!
//! The key count, off the write path: a memtable adds to the store's live
//! keys the puts it holds, less the keys it holds that were already live
//! in the layers below it (older memtables and tables). Whether a key was
//! live below never changes while the memtable lives (flushes and
//! compactions move entries, they do not change what is live; a clear
//! starts a new memtable), so it is looked up later, off the write path:
//! each key's first write here appends it to `pending`, and
//! [`Resolution`] records how many of them were looked up and how many of
//! those were live below.

use crate::checkpoint::{Bytes, Key};
use crate::lsm::Item;
use crate::metadata::Metadata;
use crate::table::{Entry, Stored};
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What an entry costs in memory beyond its key and value bytes: the two
/// `Arc` allocations' headers and malloc's rounding, the map's slot and
/// node share, the key's place in `pending`. Measured: 372,828 entries of
/// a 16-byte key and a 100-byte value took 104,572 KiB of RSS, 287 bytes
/// each, 171 beyond the 116 of payload. So `memtable_size` bounds memory, as
/// RocksDB's arena accounting does, not only payload bytes.
const ENTRY_OVERHEAD: u64 = 171;
/// Entries fetched by [`MemIter`]'s first refill (a short scan copies
/// few), doubling up to [`BATCH`].
const FIRST_BATCH: usize = 8;
/// Most entries fetched per refill by [`MemIter`].
const BATCH: usize = 128;

/// Sorted entries: a value, or `None` for a tombstone.
pub(crate) type Entries = imbl::OrdMap<Key, Option<Bytes>>;

/// How much of a memtable's `pending` keys were looked up below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resolution {
    /// `pending[..upto]` were looked up...
    pub upto: usize,
    /// ...and this many of them were live below.
    pub live_below: u64,
}

/// Memtable identities, so one can be found again after a freeze.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The writes of one stretch of the log, in key order.
pub(crate) struct Memtable {
    id: u64,
    entries: Entries,
    bytes: u64,
    /// Entries that are values (not tombstones).
    puts: u64,
    /// Keys in the order of their first write here.
    pending: Vec<Key>,
    resolution: Mutex<Resolution>,
    /// The LSN of the first record applied to it (0: none).
    pub min_lsn: u64,
    /// The LSN of the newest record applied to it (0: none).
    pub max_lsn: u64,
    /// Application metadata its records set (`crate::metadata`): its
    /// flush's manifest edit records them with the log start after it.
    pub metadata: Metadata,
}

impl Default for Memtable {
    fn default() -> Self {
        Memtable {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entries: Entries::default(),
            bytes: 0,
            puts: 0,
            pending: Vec::new(),
            resolution: Mutex::new(Resolution::default()),
            min_lsn: 0,
            max_lsn: 0,
            metadata: Metadata::new(),
        }
    }
}

fn cost(key: &[u8], value: Option<&Bytes>) -> u64 {
    key.len() as u64 + value.map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD
}

impl Memtable {
    /// The newest entry for `key` here: `Some(None)` is a tombstone.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&Bytes>> {
        self.entries.get(key).map(Option::as_ref)
    }

    /// Sets `key` (a value, or `None` for a tombstone).
    pub(crate) fn insert(&mut self, key: &[u8], value: Option<Bytes>) {
        self.bytes += cost(key, value.as_ref());
        let is_put = value.is_some();
        let k = Key::from(key);
        match self.entries.insert(k.clone(), value) {
            Some(old) => {
                self.bytes -= cost(key, old.as_ref());
                self.puts -= u64::from(old.is_some());
            }
            None => self.pending.push(k),
        }
        self.puts += u64::from(is_put);
    }

    /// Which memtable this is (kept across a freeze).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Values it holds (keys it makes live, before subtracting those
    /// already live below it).
    pub(crate) fn puts(&self) -> u64 {
        self.puts
    }

    /// Tombstones it holds.
    pub(crate) fn tombstones(&self) -> u64 {
        self.entries.len() as u64 - self.puts
    }

    /// How far its keys were looked up below it.
    pub(crate) fn resolution(&self) -> Resolution {
        *self.resolution.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its keys not yet looked up below it, from `from` on, at most `max`.
    pub(crate) fn unresolved(&self, from: usize, max: usize) -> Vec<Key> {
        let rest = self.pending.get(from..).unwrap_or(&[]);
        rest[..rest.len().min(max)].to_vec()
    }

    /// Records that `pending[from..from + n]` were looked up and `live` of
    /// them were live below; ignored unless `from` is where the lookups
    /// stood (another thread got there first).
    pub(crate) fn record_resolution(&self, from: usize, n: usize, live: u64) {
        let mut r = self.resolution.lock().unwrap_or_else(|p| p.into_inner());
        if r.upto == from {
            r.upto += n;
            r.live_below += live;
        }
    }

    /// Keys whose first write here was not looked up below yet.
    pub(crate) fn unresolved_len(&self) -> usize {
        self.pending.len() - self.resolution().upto
    }

    /// Approximate memory held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether it holds no entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An O(1) snapshot of the entries.
    pub(crate) fn entries(&self) -> Entries {
        self.entries.clone()
    }

    /// The LSNs of the records applied to it, first and last: its table's
    /// LSN range.
    pub(crate) fn lsn_range(&self) -> (u64, u64) {
        let first = if self.min_lsn == 0 {
            self.max_lsn
        } else {
            self.min_lsn
        };
        (first, self.max_lsn)
    }

    /// Every entry in key order, as a table builder takes them (each with
    /// the memtable's newest LSN, which decides which clear its table comes
    /// after; the table's range is widened to [`lsn_range`](Self::lsn_range)
    /// by the flush).
    pub(crate) fn sorted(&self) -> impl Iterator<Item = (&[u8], Stored<'_>, u64)> {
        self.entries.iter().map(|(k, v)| {
            let stored = match v {
                Some(v) => Stored::Put(v),
                None => Stored::Tombstone,
            };
            (&k[..], stored, self.max_lsn)
        })
    }
}

/// An iterator over a snapshot of a memtable's entries from a key on, as a
/// merge source. It owns its snapshot, so it outlives any lock.
pub(crate) struct MemIter {
    entries: Entries,
    next: Bound<Key>,
    buf: VecDeque<Item>,
    batch: usize,
    done: bool,
}

impl MemIter {
    pub(crate) fn new(entries: Entries, from: &[u8]) -> MemIter {
        MemIter {
            entries,
            next: Bound::Included(Key::from(from)),
            buf: VecDeque::new(),
            batch: FIRST_BATCH,
            done: false,
        }
    }

    fn refill(&mut self) {
        let mut last = None;
        for (k, v) in self
            .entries
            .range((self.next.clone(), Bound::Unbounded))
            .take(self.batch)
        {
            let e = v
                .as_ref()
                .map_or(Entry::Tombstone, |v| Entry::Put(v.to_vec()));
            self.buf.push_back(Ok((k.to_vec(), e)));
            last = Some(k.clone());
        }
        match last {
            Some(k) if self.buf.len() == self.batch => self.next = Bound::Excluded(k),
            _ => self.done = true,
        }
        self.batch = (self.batch * 2).min(BATCH);
    }
}

impl Iterator for MemIter {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.buf.is_empty() && !self.done {
            self.refill();
        }
        self.buf.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn size_follows_overwrites_and_iteration_resumes_across_batches() {
        let mut m = Memtable::default();
        for i in 0..300u32 {
            m.insert(format!("k{i:04}").as_bytes(), Some(Arc::from(&b"vv"[..])));
        }
        let full = m.bytes();
        assert_eq!(full, 300 * (5 + 2 + ENTRY_OVERHEAD));
        m.insert(b"k0000", None);
        assert_eq!(m.bytes(), full - 2);
        assert_eq!(m.get(b"k0000"), Some(None));
        assert_eq!(m.get(b"zz"), None);
        let keys: Vec<Vec<u8>> = MemIter::new(m.entries(), b"k0100")
            .map(|i| i.unwrap().0)
            .collect();
        assert_eq!(keys.len(), 200);
        assert_eq!(keys[0], b"k0100");
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
