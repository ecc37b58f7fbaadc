//! [`Version`]: the live tables at one moment, pinned. A read takes the
//! current version (an `Arc`) and keeps reading the same tables while
//! flushes and compactions replace them: a table's file is deleted only
//! once no version holds it (`Tree::delete_obsolete`).
//!
//! Read order: L0 newest first (its tables may overlap), then one table per
//! level (levels above 0 are sorted and do not overlap); the first entry
//! found wins, and a tombstone means the key is absent.

use super::merge::{Item, MergeIter, Source};
use crate::manifest::TableMeta;
use crate::table::{Entry, Table, TableError, TableIter};
use std::sync::Arc;

/// A live table: what the manifest says of it, and the open file.
#[derive(Debug)]
pub struct LiveTable {
    /// Its manifest record.
    pub meta: TableMeta,
    /// The open table.
    pub table: Arc<Table>,
}

/// The live tables at one moment.
#[derive(Debug, Default, Clone)]
pub struct Version {
    /// Per level: L0 newest first, L1.. in key order.
    pub levels: Vec<Vec<Arc<LiveTable>>>,
}

impl Version {
    /// The newest entry the tables hold for `key` (a tombstone included);
    /// `None` if no table holds it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>, TableError> {
        for (level, tables) in self.levels.iter().enumerate() {
            let candidates: Box<dyn Iterator<Item = &Arc<LiveTable>>> = if level == 0 {
                Box::new(tables.iter())
            } else {
                let i = tables.partition_point(|t| t.meta.largest.as_slice() < key);
                Box::new(tables.get(i).into_iter())
            };
            for t in candidates {
                if t.meta.smallest.as_slice() <= key && key <= t.meta.largest.as_slice() {
                    if let Some(e) = t.table.get(key)? {
                        return Ok(Some(e));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Keys live in these tables (their newest entry a value), by reading
    /// every table.
    pub fn count_live(&self) -> Result<u64, TableError> {
        let mut live = 0;
        for item in self.iter_from(&[]) {
            let (_, entry) = item?;
            live += u64::from(matches!(entry, Entry::Put(_)));
        }
        Ok(live)
    }

    /// Every entry with key `>= from`, merged across tables (newest wins,
    /// tombstones included), holding the tables it reads.
    pub fn iter_from(&self, from: &[u8]) -> MergeIter<'static> {
        let mut sources: Vec<Source<'static>> = Vec::new();
        for (level, tables) in self.levels.iter().enumerate() {
            if level == 0 {
                for t in tables {
                    sources.push(Box::new(t.table.iter_arc(from)));
                }
            } else if !tables.is_empty() {
                sources.push(Box::new(LevelIter::new(tables.clone(), from)));
            }
        }
        MergeIter::new(sources)
    }

    /// Tables at `level`.
    pub fn level(&self, level: usize) -> &[Arc<LiveTable>] {
        self.levels.get(level).map_or(&[], Vec::as_slice)
    }
}

/// The entries of one level above 0 (sorted, non-overlapping tables), one
/// table at a time.
pub struct LevelIter {
    tables: Vec<Arc<LiveTable>>,
    next: usize,
    from: Vec<u8>,
    current: Option<TableIter<Arc<Table>>>,
}

impl LevelIter {
    /// From the first table whose last key is `>= from`.
    pub fn new(tables: Vec<Arc<LiveTable>>, from: &[u8]) -> LevelIter {
        let next = tables.partition_point(|t| t.meta.largest.as_slice() < from);
        LevelIter {
            tables,
            next,
            from: from.to_vec(),
            current: None,
        }
    }
}

impl Iterator for LevelIter {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(it) = &mut self.current {
                if let Some(item) = it.next() {
                    return Some(item);
                }
                self.current = None;
            }
            let t = self.tables.get(self.next)?;
            self.next += 1;
            self.current = Some(t.table.iter_arc(&self.from));
        }
    }
}
