//! The table half of the LSM tree (issue 12): the live tables under a
//! manifest, flushes of sorted data into level 0, and leveled compaction.
//! `Db` uses it through `crate::on_tables` when opened with a memtable size.
//!
//! Crash safety, step by step (docs/DESIGN.md, rule 4):
//! - **flush**: the table is written whole and durable under its final name
//!   (durable-replace helper), then one manifest edit adds it and moves the
//!   log start past what it holds. A crash before the edit leaves an orphan
//!   table, removed at the next open; after it, the table is live.
//! - **compaction**: outputs are written durable, then one edit adds them
//!   and removes the inputs; the inputs' files are deleted only after that
//!   edit is durable and no pinned [`Version`] reads them. A crash at any
//!   point leaves the old tables or the new ones live, never a mix; files
//!   no manifest record names are removed at open, after the manifest is
//!   replayed, never before.
//!
//! Flushes and compactions write their tables through [`TableFiles`],
//! without the tree (in `Db`, without its lock, each on its own thread),
//! and record them with [`Tree::install_flush`] and
//! [`Tree::install_compaction`].
//!
//! Compaction policy: leveled, as LevelDB and RocksDB do. L0 is compacted
//! into L1 once it holds [`TreeOptions::l0_trigger`] tables; level `n >= 1`
//! is compacted into `n + 1` once it holds more than
//! `level1_bytes * ratio^(n-1)`, one table (round-robin by key) and the
//! tables of the next level it overlaps at a time; the level with the
//! highest score (tables or bytes over the trigger) goes first. Outputs are split at
//! [`TreeOptions::table_bytes`]. Tombstones are dropped only when no deeper
//! level holds tables.

mod files;
mod merge;
mod version;

pub use files::{CompactionOutput, TableFiles};
pub use merge::{Item, MergeIter, Source};
pub use version::{LevelIter, LiveTable, Version};

use crate::layout::{parse_table_name, table_file_name, MANIFEST_DIR, TABLES_DIR};
use crate::manifest::{Manifest, ManifestError, TableMeta, VersionEdit, LEVELS};
use crate::metadata::Metadata;
use crate::table::{BlockCache, CacheStats, Entry, Stored, Table, TableError};
use keel_storage::{IoError, OpenMode, Storage, TEMP_SUFFIX};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shape of the tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeOptions {
    /// L0 tables that trigger a compaction into L1 (each L0 table is a
    /// lookup's extra probe, so few: LevelDB uses 4).
    pub l0_trigger: usize,
    /// Bytes L1 may hold before it is compacted into L2.
    pub level1_bytes: u64,
    /// Each level may hold this many times the one above it.
    pub ratio: u64,
    /// Compaction outputs are split at about this size.
    pub table_bytes: u64,
    /// Bytes of data blocks cached across tables (0: no cache).
    pub cache_bytes: u64,
    /// Pace compaction writes to this rate (and sync them every 64 KiB)
    /// so the log's fdatasyncs keep their latency; `None`: unpaced.
    pub compaction_bytes_per_sec: Option<u64>,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            l0_trigger: 4,
            level1_bytes: 64 << 20,
            ratio: 10,
            table_bytes: 8 << 20,
            cache_bytes: 64 << 20,
            compaction_bytes_per_sec: Some(32 << 20),
        }
    }
}

/// Why a tree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LsmError {
    /// The manifest failed or is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A table could not be read.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The manifest names a table whose file is missing.
    #[error("the manifest names table {number} but {} is missing; the store cannot be opened without it", path.display())]
    MissingTable {
        /// Its number.
        number: u64,
        /// Where it should be.
        path: PathBuf,
    },
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Level compacted from.
    pub level: u8,
    /// Input tables and their bytes.
    pub inputs: usize,
    /// See `inputs`.
    pub bytes_read: u64,
    /// Output tables and their bytes.
    pub outputs: usize,
    /// See `outputs`.
    pub bytes_written: u64,
    /// Entries dropped (shadowed by newer ones, or tombstones at the bottom).
    pub dropped: u64,
}

/// A chosen compaction: tables of `level` and the tables of `level + 1`
/// they overlap.
#[derive(Debug, Clone)]
pub struct Compaction {
    /// The level compacted from.
    pub level: u8,
    /// Its tables compacted.
    pub inputs: Vec<Arc<LiveTable>>,
    /// The overlapping tables of the next level.
    pub next: Vec<Arc<LiveTable>>,
    /// Whether no deeper level holds tables (then tombstones are dropped).
    /// Only compactions fill deeper levels, one at a time, so this holds
    /// until the compaction is installed.
    pub bottom: bool,
}

/// The live tables of a store, under its manifest.
pub struct Tree {
    storage: Arc<dyn Storage>,
    tables_dir: PathBuf,
    /// Writes table files, also without this tree (see [`TableFiles`]).
    files: TableFiles,
    manifest: Manifest,
    options: TreeOptions,
    current: Arc<Version>,
    /// Tables no longer live, deleted once no version holds them.
    obsolete: Vec<Arc<LiveTable>>,
    /// Per level, the key after which the next round-robin compaction
    /// starts.
    compact_after: Vec<Vec<u8>>,
    /// Data blocks shared by every table.
    cache: Option<Arc<BlockCache>>,
}

impl Tree {
    /// Opens the tree under `root` (`root/manifest`, `root/tables`): replays
    /// the manifest, opens every live table, then removes files no manifest
    /// record names (orphans of interrupted flushes and compactions).
    pub fn open(
        storage: Arc<dyn Storage>,
        root: &Path,
        options: TreeOptions,
    ) -> Result<Tree, LsmError> {
        let manifest = Manifest::open(Arc::clone(&storage), &root.join(MANIFEST_DIR))?;
        let tables_dir = root.join(TABLES_DIR);
        keel_storage::create_dir_durable(&*storage, &tables_dir)?;
        let cache = (options.cache_bytes > 0).then(|| BlockCache::new(options.cache_bytes));
        let mut levels = vec![Vec::new(); LEVELS];
        for (level, tables) in manifest.state().levels.iter().enumerate() {
            for meta in tables {
                let path = tables_dir.join(table_file_name(meta.number));
                let file = match storage.open(&path, OpenMode::Read) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(LsmError::MissingTable {
                            number: meta.number,
                            path,
                        })
                    }
                    Err(e) => return Err(IoError::new("opening a table", &path, e).into()),
                };
                let table = Arc::new(Table::open_cached(file, &path, cache.clone())?);
                levels[level].push(Arc::new(LiveTable {
                    meta: meta.clone(),
                    table,
                }));
            }
        }
        let files = TableFiles::new(
            Arc::clone(&storage),
            tables_dir.clone(),
            options,
            manifest.state().next_table,
        );
        let tree = Tree {
            storage,
            tables_dir,
            files,
            manifest,
            options,
            current: Arc::new(Version { levels }),
            obsolete: Vec::new(),
            compact_after: vec![Vec::new(); LEVELS],
            cache,
        };
        tree.remove_orphans()?;
        Ok(tree)
    }

    /// Removes table files (and temp files) no live table owns. Only after
    /// the manifest is replayed: before, a live table could look orphaned.
    fn remove_orphans(&self) -> Result<(), LsmError> {
        let dir = &self.tables_dir;
        let names = self
            .storage
            .list(dir)
            .map_err(|e| IoError::new("listing the tables directory", dir, e))?;
        let live: std::collections::HashSet<u64> =
            self.manifest.state().live().map(|t| t.number).collect();
        let mut removed = 0;
        for name in names {
            let orphan = match parse_table_name(&name) {
                Some(n) => !live.contains(&n),
                None => name.ends_with(TEMP_SUFFIX),
            };
            if orphan {
                let path = dir.join(&name);
                self.storage
                    .remove(&path)
                    .map_err(|e| IoError::new("removing an orphaned table", &path, e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            // The removals are durable only once the directory is.
            self.storage
                .sync_dir(dir)
                .map_err(|e| IoError::new("syncing the tables directory", dir, e))?;
            tracing::info!("removed {removed} table files no manifest record names (interrupted flush or compaction)");
        }
        Ok(())
    }

    /// The current version (pin it to read a consistent set of tables).
    pub fn version(&self) -> Arc<Version> {
        Arc::clone(&self.current)
    }

    /// The edit that recreates the manifest's current state from nothing
    /// (for a backup's manifest).
    pub fn state_snapshot(&self) -> crate::manifest::VersionEdit {
        self.manifest.state().snapshot()
    }

    /// Where the log must start: records below are in tables.
    pub fn log_start(&self) -> u64 {
        self.manifest.state().log_start
    }

    /// Keys live as of the log start (the last flush's count).
    pub fn live_keys(&self) -> u64 {
        self.manifest.state().live_keys
    }

    /// Application metadata as of the log start.
    pub fn metadata(&self) -> &Metadata {
        &self.manifest.state().metadata
    }

    fn table_path(&self, number: u64) -> PathBuf {
        self.tables_dir.join(table_file_name(number))
    }

    /// Writes this tree's table files; use it without the tree (and its
    /// lock) to write a flush's table or a compaction's outputs.
    pub fn files(&self) -> TableFiles {
        self.files.clone()
    }

    fn open_table(&self, meta: TableMeta) -> Result<Arc<LiveTable>, LsmError> {
        let path = self.table_path(meta.number);
        let file = self
            .storage
            .open(&path, OpenMode::Read)
            .map_err(|e| IoError::new("opening a table", &path, e))?;
        Ok(Arc::new(LiveTable {
            table: Arc::new(Table::open_cached(file, &path, self.cache.clone())?),
            meta,
        }))
    }

    /// Writes sorted `entries` as a new L0 table and installs it: see
    /// [`TableFiles::write_l0`] and [`install_flush`](Self::install_flush).
    pub fn flush<'e>(
        &mut self,
        entries: impl IntoIterator<Item = (&'e [u8], Stored<'e>, u64)>,
        log_start: u64,
        live_keys: u64,
        floor: u64,
        metadata: &Metadata,
    ) -> Result<Option<TableMeta>, LsmError> {
        let added = self.files.write_l0(entries, None)?;
        self.install_flush(added.clone(), log_start, live_keys, floor, metadata)?;
        Ok(added)
    }

    /// Records a flush in one manifest edit: the table `added` (written by
    /// [`TableFiles::write_l0`]; `None` if the flush had no entries), the
    /// log start moved to `log_start`, the live key count as of there and
    /// the application metadata the flushed records set (`metadata`).
    /// Tables wholly older than `floor` (the LSN of the last clear; 0 if
    /// none) leave in the same edit: a clear must never come back once the
    /// log holding it is gone.
    pub fn install_flush(
        &mut self,
        added: Option<TableMeta>,
        log_start: u64,
        live_keys: u64,
        floor: u64,
        metadata: &Metadata,
    ) -> Result<(), LsmError> {
        let cleared: Vec<Arc<LiveTable>> = self
            .current
            .levels
            .iter()
            .flatten()
            .filter(|t| t.meta.max_lsn < floor)
            .cloned()
            .collect();
        let edit = VersionEdit {
            log_start: Some(log_start),
            live_keys: Some(live_keys),
            next_table: Some(self.files.next_number()),
            removed: cleared
                .iter()
                .map(|t| (t.meta.level, t.meta.number))
                .collect(),
            added: added.iter().cloned().collect(),
            metadata: metadata.clone(),
            ..VersionEdit::default()
        };
        // A crash before this edit leaves an orphan, removed at open.
        self.manifest.apply(&edit)?;
        let mut v = (*self.current).clone();
        for t in cleared {
            v.levels[t.meta.level as usize].retain(|x| x.meta.number != t.meta.number);
            self.obsolete.push(t);
        }
        if let Some(meta) = added {
            v.levels[0].insert(0, self.open_table(meta)?);
        }
        self.current = Arc::new(v);
        self.delete_obsolete()?;
        Ok(())
    }

    fn level_bytes(&self, level: usize) -> u64 {
        self.current.level(level).iter().map(|t| t.meta.size).sum()
    }

    fn level_target(&self, level: usize) -> u64 {
        let o = &self.options;
        o.level1_bytes
            .saturating_mul(o.ratio.saturating_pow(level.saturating_sub(1) as u32))
    }

    /// The compaction most needed now, if any: the level with the highest
    /// score, as RocksDB scores them: L0's tables over its trigger, a
    /// deeper level's bytes over its target; due from 1 (L0) or above 1.
    /// L0 does not simply come first: under a steady fill it is always at
    /// its trigger, L1 then never moves down, and every L0 compaction
    /// rewrites all of an ever larger L1 (measured: a 2 GiB fill grew L1 to
    /// 675 MB against a 256 MB target, 7.6 GB compacted, write
    /// amplification 2.88).
    pub fn pick_compaction(&self) -> Option<Compaction> {
        let v = &self.current;
        let l0 = v.level(0).len() as f64 / self.options.l0_trigger as f64;
        let deeper = (1..LEVELS - 1)
            .map(|l| (l, self.level_bytes(l) as f64 / self.level_target(l) as f64))
            .filter(|&(_, score)| score > 1.0)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let level = match deeper {
            Some((l, score)) if score > l0 || l0 < 1.0 => l,
            _ if l0 >= 1.0 => 0,
            _ => return None,
        };
        let inputs: Vec<Arc<LiveTable>> = if level == 0 {
            v.level(0).to_vec()
        } else {
            // Round robin: the first table after the last one compacted.
            let tables = v.level(level);
            let after = &self.compact_after[level];
            let t = tables
                .iter()
                .find(|t| t.meta.smallest > *after)
                .or(tables.first())?;
            vec![Arc::clone(t)]
        };
        let lo = inputs.iter().map(|t| &t.meta.smallest).min()?.clone();
        let hi = inputs.iter().map(|t| &t.meta.largest).max()?.clone();
        let next = v
            .level(level + 1)
            .iter()
            .filter(|t| t.meta.smallest <= hi && lo <= t.meta.largest)
            .cloned()
            .collect();
        Some(Compaction {
            level: level as u8,
            inputs,
            next,
            bottom: (level + 2..LEVELS).all(|l| v.level(l).is_empty()),
        })
    }

    /// Runs `c` to the end under this tree: see
    /// [`TableFiles::write_compaction`] and
    /// [`install_compaction`](Self::install_compaction).
    ///
    /// # Panics
    ///
    /// If a flush after a clear removed `c`'s inputs since it was picked
    /// (pick it again after a flush; `Db` installs with
    /// `install_compaction`, which abandons such a compaction instead).
    pub fn compact(&mut self, c: &Compaction) -> Result<CompactionStats, LsmError> {
        let out = self
            .files
            .write_compaction(c, &|| false)?
            .expect("never cancelled");
        let stats = self.install_compaction(c, out)?;
        Ok(stats.expect("no flush ran since the pick"))
    }

    /// Records a compaction's outputs and its inputs' removal in one edit,
    /// then deletes the inputs' files no version holds any more. If an
    /// input is no longer live (a flush after a clear removed it while the
    /// compaction ran), the outputs would bring cleared data back: they are
    /// removed instead, nothing is recorded, and `None` is returned.
    pub fn install_compaction(
        &mut self,
        c: &Compaction,
        out: CompactionOutput,
    ) -> Result<Option<CompactionStats>, LsmError> {
        let all_inputs = || c.inputs.iter().chain(&c.next);
        let live = |t: &LiveTable| {
            self.current
                .level(t.meta.level as usize)
                .iter()
                .any(|x| x.meta.number == t.meta.number)
        };
        if !all_inputs().all(|t| live(t)) {
            self.files.remove_unrecorded(&out.tables);
            return Ok(None);
        }
        let out_level = c.level as usize + 1;
        let edit = VersionEdit {
            next_table: Some(self.files.next_number()),
            removed: all_inputs()
                .map(|t| (t.meta.level, t.meta.number))
                .collect(),
            added: out.tables.clone(),
            ..VersionEdit::default()
        };
        // A crash before this edit leaves the outputs as orphans; after it,
        // the inputs.
        self.manifest.apply(&edit)?;
        let mut v = (*self.current).clone();
        for t in all_inputs() {
            v.levels[t.meta.level as usize].retain(|x| x.meta.number != t.meta.number);
            self.obsolete.push(Arc::clone(t));
        }
        for meta in out.tables {
            v.levels[out_level].push(self.open_table(meta)?);
        }
        v.levels[out_level].sort_by(|a, b| a.meta.smallest.cmp(&b.meta.smallest));
        self.current = Arc::new(v);
        if let Some(last) = c.inputs.iter().map(|t| &t.meta.largest).max() {
            self.compact_after[c.level as usize] = last.clone();
        }
        self.delete_obsolete()?;
        Ok(Some(out.stats))
    }

    /// Deletes the files of obsolete tables that no version holds any more
    /// (only the tree's own list refers to them).
    pub fn delete_obsolete(&mut self) -> Result<usize, LsmError> {
        let (free, pinned): (Vec<_>, Vec<_>) = std::mem::take(&mut self.obsolete)
            .into_iter()
            .partition(|t| Arc::strong_count(t) == 1);
        self.obsolete = pinned;
        for t in &free {
            let path = self.table_path(t.meta.number);
            self.storage
                .remove(&path)
                .map_err(|e| IoError::new("removing a compacted table", &path, e))?;
        }
        if !free.is_empty() {
            self.storage
                .sync_dir(&self.tables_dir)
                .map_err(|e| IoError::new("syncing the tables directory", &self.tables_dir, e))?;
        }
        Ok(free.len())
    }

    /// The block cache shared by the tables (`None` without one).
    pub fn cache(&self) -> Option<Arc<BlockCache>> {
        self.cache.clone()
    }

    /// The block cache's counters (`None` without a cache).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Every key's newest entry, for tests and tools: the whole tree as a
    /// map (tombstones included).
    pub fn contents(&self) -> Result<BTreeMap<Vec<u8>, Entry>, LsmError> {
        Ok(self.current.iter_from(&[]).collect::<Result<_, _>>()?)
    }

    /// Syncs and closes the manifest.
    pub fn close(self) -> Result<(), LsmError> {
        Ok(self.manifest.close()?)
    }
}
