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
//! The key count is exact without a lookup on the write path: live keys =
//! `tables_live` (the count as of the last flush) + for each memtable, its
//! puts less its keys that were live below it. The second term is looked
//! up later (`crate::memtable`, "The key count"): [`Layers::count_work`]
//! hands out the keys not looked up yet with the layers below them, and
//! [`Lookups::run`] does the lookups without any lock.

use crate::checkpoint::{Bytes, Key};
use crate::lsm::{MergeIter, Source, Version};
use crate::memtable::{Entries, MemIter, Memtable};
use crate::metadata::Metadata;
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
    /// Keys live in the tables (as of the last flush; 0 after a clear).
    pub tables_live: u64,
    /// Every record up to this LSN is applied.
    pub applied_lsn: u64,
    /// Application metadata as of `applied_lsn`.
    pub metadata: Metadata,
}

/// The layers below one memtable, for looking its keys up.
#[derive(Clone)]
pub(crate) struct Below {
    frozen: Vec<Arc<Memtable>>,
    version: Arc<Version>,
    floor: u64,
}

impl Below {
    /// Whether `key` is live in these layers.
    fn is_live(&self, key: &[u8]) -> Result<bool, TableError> {
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
}

/// Keys of one memtable still to look up below it.
pub(crate) struct Lookups {
    /// The memtable (the active one is found again by its id).
    target: Target,
    from: usize,
    keys: Vec<Key>,
    below: Below,
}

enum Target {
    Frozen(Arc<Memtable>),
    Active(u64),
}

impl Lookups {
    /// The memtable's id.
    pub(crate) fn target_id(&self) -> u64 {
        match &self.target {
            Target::Frozen(m) => m.id(),
            Target::Active(id) => *id,
        }
    }

    /// Looks the keys up (no lock held): how many were live below.
    pub(crate) fn run(&self) -> Result<u64, TableError> {
        let mut live = 0;
        for k in &self.keys {
            live += u64::from(self.below.is_live(k)?);
        }
        Ok(live)
    }

    /// Records the result in the memtable, if it is still there.
    pub(crate) fn record(&self, layers: &Layers, live: u64) {
        match &self.target {
            Target::Frozen(m) => m.record_resolution(self.from, self.keys.len(), live),
            Target::Active(id) if layers.mem.id() == *id => {
                layers
                    .mem
                    .record_resolution(self.from, self.keys.len(), live)
            }
            // Frozen since: the same memtable, now in the frozen list.
            Target::Active(id) => {
                if let Some(m) = layers.frozen.iter().find(|m| m.id() == *id) {
                    m.record_resolution(self.from, self.keys.len(), live);
                }
            }
        }
    }
}

impl Layers {
    /// A pinned copy for reading, O(1) in the data (clones of persistent
    /// maps and `Arc`s).
    pub(crate) fn view(&self) -> View {
        View {
            mem: self.mem.entries(),
            frozen: self.frozen.clone(),
            version: Arc::clone(&self.version),
            floor: self.floor,
        }
    }

    fn below(&self, frozen_from: usize) -> Below {
        Below {
            frozen: self.frozen[frozen_from..].to_vec(),
            version: Arc::clone(&self.version),
            floor: self.floor,
        }
    }

    /// The key count as far as it is known now, and the next lookups (at
    /// most `max` keys per memtable): live keys = the count - the live ones
    /// all the lookups find. Small batches keep the layers they pin (a
    /// flushed memtable, an old version) from living long.
    pub(crate) fn count_work(&self, max: usize) -> (i64, Vec<Lookups>) {
        // Signed: a memtable of deletes takes away more than it adds.
        let mut count = self.tables_live as i64;
        let mut work = Vec::new();
        let mems = std::iter::once((&self.mem, None)).chain(
            self.frozen
                .iter()
                .enumerate()
                .map(|(i, m)| (&**m, Some((i, m)))),
        );
        for (m, frozen) in mems {
            let r = m.resolution();
            count += m.puts() as i64 - r.live_below as i64;
            let keys = m.unresolved(r.upto, max);
            if keys.is_empty() {
                continue;
            }
            let (target, below) = match frozen {
                None => (Target::Active(m.id()), self.below(0)),
                Some((i, arc)) => (Target::Frozen(Arc::clone(arc)), self.below(i + 1)),
            };
            work.push(Lookups {
                target,
                from: r.upto,
                keys,
                below,
            });
        }
        (count, work)
    }

    /// The key count estimated as RocksDB's `estimate-num-keys` is, for a
    /// store that keeps no exact count (`Options::exact_key_count` off):
    /// every memtable's and live table's puts less its tombstones (a
    /// tombstone assumed to delete a key live below). A key overwritten in
    /// layers not yet compacted together counts once per layer.
    pub(crate) fn estimated_len(&self) -> usize {
        let mems = std::iter::once(&self.mem).chain(self.frozen.iter().map(|m| &**m));
        let mut count: i64 = mems.map(|m| m.puts() as i64 - m.tombstones() as i64).sum();
        for t in self.version.levels.iter().flatten() {
            // Wholly older than the last clear: no longer read.
            if t.meta.max_lsn >= self.floor {
                let p = t.table.properties();
                count += p.entries as i64 - 2 * p.tombstones as i64;
            }
        }
        count.max(0) as usize
    }

    /// Applies the record at `lsn`.
    pub(crate) fn apply(&mut self, lsn: u64, op: Op) {
        let op = match op {
            Op::WithMetadata { metadata, op } => {
                let set = || crate::metadata::pairs(&metadata);
                crate::metadata::set_all(&mut self.metadata, set());
                crate::metadata::set_all(&mut self.mem.metadata, set());
                op.map(|op| *op)
            }
            op => Some(op),
        };
        match op {
            None => {}
            Some(op) => self.apply_change(lsn, op),
        }
        if self.mem.min_lsn == 0 {
            self.mem.min_lsn = lsn;
        }
        self.mem.max_lsn = lsn;
        self.applied_lsn = lsn;
    }

    fn apply_change(&mut self, lsn: u64, op: Op) {
        match op {
            Op::Put(k, v) => self.mem.insert(&k, Some(Bytes::from(v))),
            // A tombstone even for a key that may not be live: finding out
            // would be a lookup on the write path.
            Op::Delete(k) => self.mem.insert(&k, None),
            Op::Clear => {
                // Metadata outlives a clear: the memtables dropped here will
                // never be flushed, so the new one carries all of it (setting
                // a name to its latest value again changes nothing).
                self.mem = Memtable::default();
                self.mem.metadata = self.metadata.clone();
                self.frozen.clear();
                self.floor = lsn;
                self.tables_live = 0;
            }
            Op::Batch(ops) => {
                for o in ops {
                    match o {
                        BatchOp::Put(k, v) => self.mem.insert(&k, Some(Bytes::from(v))),
                        BatchOp::Delete(k) => self.mem.insert(&k, None),
                    }
                }
            }
            // Layers::apply took the metadata off; records never nest it.
            Op::WithMetadata { op, .. } => {
                if let Some(op) = op {
                    self.apply_change(lsn, *op);
                }
            }
        }
    }

    /// Freezes the memtable (O(1)) if it holds at least `limit` bytes and
    /// fewer than `max_frozen` memtables are frozen; whether it did.
    pub(crate) fn freeze_if_full(&mut self, limit: u64, max_frozen: usize) -> bool {
        if self.mem.bytes() < limit || self.frozen.len() >= max_frozen {
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
        let frozen = std::mem::take(&mut self.mem);
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
    mem: Entries,
    frozen: Vec<Arc<Memtable>>,
    version: Arc<Version>,
    floor: u64,
}

impl View {
    /// The value of `key`, if live.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TableError> {
        if let Some(e) = self.mem.get(key) {
            return Ok(e.as_ref().map(|v| v.to_vec()));
        }
        for m in &self.frozen {
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
            vec![Box::new(MemIter::new(self.mem.clone(), from))];
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
