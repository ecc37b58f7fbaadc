//! [`Layers`]: the state of a store kept on tables (issue 12): the memtable
//! that takes writes, the frozen memtables waiting for their flush, and the
//! live tables ([`Version`]); and [`View`], a pinned copy of them for one
//! read or scan.
//!
//! Reads look newest first: the memtable, the frozen memtables (newest
//! first), then the tables (L0 newest first, then one table per level). The
//! first entry found wins; a tombstone means absent.
//!
//! A clear is O(1): the memtable and the frozen memtables are dropped and
//! `floor` becomes the clear's LSN, so tables wholly older than it (max LSN
//! below the floor) are no longer read. The next flush's manifest edit
//! removes them (`Tree::flush`).
//!
//! The key count is exact: each put and delete asks whether its key was
//! live before (memtables first, then the tables' filters and blocks).
//! Invariant: `live_keys` is the number of keys a full scan would return.

use crate::checkpoint::Bytes;
use crate::lsm::{MergeIter, Source, Version};
use crate::memtable::{MemIter, Memtable};
use crate::op::{BatchOp, Op};
use crate::table::{Entry, TableError};
use std::sync::Arc;

/// The live state of a store on tables.
#[derive(Default)]
pub(crate) struct Layers {
    /// Takes writes.
    pub mem: Memtable,
    /// Frozen, waiting to be flushed; newest first.
    pub frozen: Vec<Arc<Memtable>>,
    /// The live tables.
    pub version: Arc<Version>,
    /// LSN of the last clear: tables with a max LSN below it are dead.
    pub floor: u64,
    /// Keys live now.
    pub live_keys: u64,
    /// Every record up to this LSN is applied.
    pub applied_lsn: u64,
}

impl Layers {
    /// A pinned copy for reading, O(1) in the data (clones of persistent
    /// maps and `Arc`s).
    pub(crate) fn view(&self) -> View {
        View {
            mem: self.mem.clone(),
            frozen: self.frozen.clone(),
            version: Arc::clone(&self.version),
            floor: self.floor,
        }
    }

    /// Whether `key` is live now.
    fn is_live(&self, key: &[u8]) -> Result<bool, TableError> {
        if let Some(e) = self.mem.get(key) {
            return Ok(e.is_some());
        }
        for f in &self.frozen {
            if let Some(e) = f.get(key) {
                return Ok(e.is_some());
            }
        }
        Ok(matches!(
            tables_get(&self.version, self.floor, key)?,
            Some(Entry::Put(_))
        ))
    }

    /// Applies the record at `lsn`. An error (a table that cannot be read
    /// to count keys) leaves the state partly applied: the caller stops
    /// taking writes, and a restart replays the log.
    pub(crate) fn apply(&mut self, lsn: u64, op: Op) -> Result<(), TableError> {
        match op {
            Op::Put(k, v) => self.put(&k, v)?,
            Op::Delete(k) => self.delete(&k)?,
            Op::Clear => {
                self.mem = Memtable::default();
                self.frozen.clear();
                self.floor = lsn;
                self.live_keys = 0;
            }
            Op::Batch(ops) => {
                for o in ops {
                    match o {
                        BatchOp::Put(k, v) => self.put(&k, v)?,
                        BatchOp::Delete(k) => self.delete(&k)?,
                    }
                }
            }
        }
        self.mem.max_lsn = lsn;
        self.applied_lsn = lsn;
        Ok(())
    }

    fn put(&mut self, k: &[u8], v: Vec<u8>) -> Result<(), TableError> {
        if !self.is_live(k)? {
            self.live_keys += 1;
        }
        self.mem.insert(k, Some(Bytes::from(v)));
        Ok(())
    }

    fn delete(&mut self, k: &[u8]) -> Result<(), TableError> {
        // Not live: nothing to hide, no tombstone needed.
        if self.is_live(k)? {
            self.live_keys -= 1;
            self.mem.insert(k, None);
        }
        Ok(())
    }

    /// Freezes the memtable (O(1)) if it holds at least `limit` bytes;
    /// whether it did.
    pub(crate) fn freeze_if_full(&mut self, limit: u64) -> bool {
        if self.mem.bytes() < limit {
            return false;
        }
        self.freeze();
        true
    }

    /// Freezes the memtable, even a small one (a flush on demand); whether
    /// there was anything to freeze.
    pub(crate) fn freeze(&mut self) -> bool {
        if self.mem.is_empty() && self.mem.max_lsn == 0 {
            return false;
        }
        let mut frozen = std::mem::take(&mut self.mem);
        frozen.live_keys_after = self.live_keys;
        self.frozen.insert(0, Arc::new(frozen));
        true
    }
}

/// The newest table entry for `key`, skipping tables a clear made dead.
fn tables_get(version: &Version, floor: u64, key: &[u8]) -> Result<Option<Entry>, TableError> {
    if floor == 0 {
        return version.get(key);
    }
    version_above(version, floor).get(key)
}

/// `version` without the tables wholly older than `floor`.
fn version_above(version: &Version, floor: u64) -> Version {
    Version {
        levels: version
            .levels
            .iter()
            .map(|l| {
                l.iter()
                    .filter(|t| t.meta.max_lsn >= floor)
                    .cloned()
                    .collect()
            })
            .collect(),
    }
}

/// A pinned copy of the layers: reads and scans see one state while
/// writes, flushes and compactions go on (tables it holds are not deleted
/// while it lives).
pub(crate) struct View {
    mem: Memtable,
    frozen: Vec<Arc<Memtable>>,
    version: Arc<Version>,
    floor: u64,
}

impl View {
    /// The value of `key`, if live.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TableError> {
        let mems = std::iter::once(&self.mem).chain(self.frozen.iter().map(|f| &**f));
        for m in mems {
            if let Some(e) = m.get(key) {
                return Ok(e.map(|v| v.to_vec()));
            }
        }
        Ok(match tables_get(&self.version, self.floor, key)? {
            Some(Entry::Put(v)) => Some(v),
            _ => None,
        })
    }

    /// Every entry from `from` on, newest version of each key, tombstones
    /// included.
    pub(crate) fn iter_from(&self, from: &[u8]) -> MergeIter<'static> {
        let mut sources: Vec<Source<'static>> =
            vec![Box::new(MemIter::new(self.mem.entries(), from))];
        for f in &self.frozen {
            sources.push(Box::new(MemIter::new(f.entries(), from)));
        }
        let tables = if self.floor == 0 {
            self.version.iter_from(from)
        } else {
            version_above(&self.version, self.floor).iter_from(from)
        };
        sources.push(Box::new(tables));
        MergeIter::new(sources)
    }
}
