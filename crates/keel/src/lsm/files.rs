//! [`TableFiles`]: writing the tables of a flush or a compaction, without
//! the tree's lock. A flush and a compaction write at the same time, on
//! their own threads; each reserves its table numbers from one counter, so
//! no two files ever share a number, and the tree's lock is taken only to
//! record the result (`Tree::install_flush`, `Tree::install_compaction`).
//!
//! A file written here is not live until a manifest edit names it: a crash
//! (or an error, or a cancelled compaction) before that leaves an orphan,
//! removed here when known and at the next open otherwise.

use super::merge::{MergeIter, Source};
use super::version::LevelIter;
use super::{Compaction, CompactionStats, LsmError, TreeOptions};
use crate::layout::table_file_name;
use crate::manifest::TableMeta;
use crate::table::{write_table_spanning, Entry, Stored, TableBuilder, TableError};
use keel_storage::{IoError, Storage};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a compaction wrote, to be recorded by `Tree::install_compaction`.
#[derive(Debug)]
pub struct CompactionOutput {
    /// The new tables, at the compaction's output level, in key order.
    pub tables: Vec<TableMeta>,
    /// Its counters.
    pub stats: CompactionStats,
}

/// Writes a tree's table files; cheap to clone, shared by the threads that
/// flush and compact.
#[derive(Clone)]
pub struct TableFiles {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    options: TreeOptions,
    /// The next table number not yet handed out. At least the manifest's
    /// `next_table`; every edit records it, so no number is reused after
    /// a restart either.
    next_number: Arc<AtomicU64>,
}

impl TableFiles {
    pub(super) fn new(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        options: TreeOptions,
        next: u64,
    ) -> TableFiles {
        TableFiles {
            storage,
            dir,
            options,
            next_number: Arc::new(AtomicU64::new(next)),
        }
    }

    /// The table numbers handed out so far are all below this.
    pub(super) fn next_number(&self) -> u64 {
        self.next_number.load(Ordering::SeqCst)
    }

    fn reserve(&self) -> u64 {
        self.next_number.fetch_add(1, Ordering::SeqCst)
    }

    /// Where table `number` lives.
    pub fn path(&self, number: u64) -> PathBuf {
        self.dir.join(table_file_name(number))
    }

    /// The tables directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes sorted `entries` as a new level-0 table, durable under its
    /// final name, its LSN range widened to `lsns` if given (a memtable's
    /// first and last); `None` if there are none (no file).
    pub fn write_l0<'e>(
        &self,
        entries: impl IntoIterator<Item = (&'e [u8], Stored<'e>, u64)>,
        lsns: Option<(u64, u64)>,
    ) -> Result<Option<TableMeta>, LsmError> {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return Ok(None);
        }
        let number = self.reserve();
        let (props, size) =
            write_table_spanning(&*self.storage, &self.path(number), lsns, entries)?;
        Ok(Some(TableMeta::new(0, number, size, &props)))
    }

    /// Merges `c`'s tables into new tables of about `table_bytes` at the
    /// next level (dropping tombstones at the bottom), paced. `None` if
    /// `cancelled()` turned true between two output tables (the outputs
    /// written so far are removed).
    pub fn write_compaction(
        &self,
        c: &Compaction,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<CompactionOutput>, LsmError> {
        let mut sources: Vec<Source<'static>> = Vec::new();
        if c.level == 0 {
            for t in &c.inputs {
                sources.push(Box::new(t.table.iter_arc(&[])));
            }
        } else {
            sources.push(Box::new(LevelIter::new(c.inputs.clone(), &[])));
        }
        sources.push(Box::new(LevelIter::new(c.next.clone(), &[])));
        let all_inputs = || c.inputs.iter().chain(&c.next);
        let mut stats = CompactionStats {
            level: c.level,
            inputs: all_inputs().count(),
            bytes_read: all_inputs().map(|t| t.meta.size).sum(),
            ..CompactionStats::default()
        };
        let entries_in: u64 = all_inputs().map(|t| t.meta.entries).sum();
        let lsns = (
            all_inputs().map(|t| t.meta.min_lsn).min().unwrap_or(0),
            all_inputs().map(|t| t.meta.max_lsn).max().unwrap_or(0),
        );
        let mut tables = Vec::new();
        let written = self.write_outputs(
            MergeIter::new(sources),
            c.level + 1,
            c.bottom,
            lsns,
            cancelled,
            &mut tables,
        );
        let kept = match written {
            Ok(Some(kept)) => kept,
            Ok(None) => {
                self.remove_unrecorded(&tables);
                return Ok(None);
            }
            Err(e) => {
                self.remove_unrecorded(&tables);
                return Err(e);
            }
        };
        stats.outputs = tables.len();
        stats.bytes_written = tables.iter().map(|m| m.size).sum();
        stats.dropped = entries_in - kept;
        Ok(Some(CompactionOutput { tables, stats }))
    }

    /// Writes the merged entries as tables into `outputs`; the number of
    /// entries kept, or `None` if cancelled.
    fn write_outputs(
        &self,
        merged: MergeIter<'static>,
        level: u8,
        bottom: bool,
        (lsn_lo, lsn_hi): (u64, u64),
        cancelled: &dyn Fn() -> bool,
        outputs: &mut Vec<TableMeta>,
    ) -> Result<Option<u64>, LsmError> {
        let mut kept = 0u64;
        let mut merged = merged.peekable();
        while merged.peek().is_some() {
            if cancelled() {
                return Ok(None);
            }
            let number = self.reserve();
            let path = self.path(number);
            let mut failed: Option<TableError> = None;
            let mut props_size = None;
            let mut wrote = 0u64;
            keel_storage::write_atomic(&*self.storage, &path, |file, _| {
                let mut b = TableBuilder::new(file).paced(self.options.compaction_bytes_per_sec);
                b.extend_lsn_range(lsn_lo, lsn_hi);
                while b.size_estimate() < self.options.table_bytes {
                    let Some(item) = merged.next() else { break };
                    let (k, e) = match item {
                        Ok(x) => x,
                        Err(e) => {
                            failed = Some(e);
                            return Err(std::io::Error::other("an input table is damaged"));
                        }
                    };
                    match e {
                        Entry::Put(v) => b.add(&k, Stored::Put(&v), lsn_lo)?,
                        Entry::Tombstone if !bottom => b.add(&k, Stored::Tombstone, lsn_lo)?,
                        Entry::Tombstone => continue,
                    }
                    wrote += 1;
                }
                props_size = Some(b.finish()?);
                Ok(())
            })
            .map_err(|e| match failed.take() {
                Some(t) => LsmError::Table(t),
                None => LsmError::Io(e),
            })?;
            let (props, size) = props_size.expect("set when the write succeeded");
            if props.entries == 0 {
                // Only tombstones, all dropped: no table.
                let _ = self.storage.remove(&path);
                continue;
            }
            kept += wrote;
            outputs.push(TableMeta::new(level, number, size, &props));
        }
        Ok(Some(kept))
    }

    /// Removes tables no manifest edit names (a cancelled or abandoned
    /// compaction's). Best effort: what is left is an orphan, removed at
    /// the next open.
    pub fn remove_unrecorded(&self, tables: &[TableMeta]) {
        for t in tables {
            let path = self.path(t.number);
            if let Err(e) = self.storage.remove(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an unrecorded table; the next open will");
            }
        }
        if !tables.is_empty() {
            // Not needed for safety (an orphan is harmless and removed at
            // open), only so the directory does not bring them back.
            if let Err(e) = self.storage.sync_dir(&self.dir) {
                let e = IoError::new("syncing the tables directory", &self.dir, e);
                tracing::warn!(error = %e, "could not sync the tables directory");
            }
        }
    }
}
