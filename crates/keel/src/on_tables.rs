//! [`OnTables`]: a store whose data lives in tables (issue 12), the default
//! (`Options::memtable_size`): the memtable, its flushes into level 0,
//! compactions, write stalls, and recovery from the manifest plus the log.
//!
//! Write path (in [`Db`](crate::Db)): log, then [`Layers::apply`]; a full
//! memtable is frozen in O(1) and the background thread is woken. Flush:
//! the log is synced (a table must never get ahead of the log it replaces),
//! the oldest frozen memtable is written as a table and recorded with the
//! new log start in one manifest edit, the new version is installed, and
//! only then are the log segments it covers deleted (docs/DESIGN.md, rule 4).
//!
//! Compactions run on a thread of their own (`keel-compact`), paced, so a
//! flush never waits for one: both write their tables without the tree's
//! lock ([`crate::lsm::TableFiles`]) and take it only to record and install
//! the result. Lock order: the tree, then the layers (a version reaches the
//! layers in the order the tree made them).
//!
//! Stalls: a full memtable is frozen only while fewer than [`MAX_FROZEN`]
//! wait for a flush; otherwise it stays active and writers wait until the
//! flush is done (which then freezes it). Writers also wait while level 0
//! holds [`L0_STOP`] tables, and slow down from [`L0_SLOWDOWN`]. Memory
//! stays bounded by about `(1 + MAX_FROZEN) * memtable_size` plus the
//! cache. If the last flush failed, a write that would wait is refused
//! instead (nothing changed), so a full disk is an error, not a hang.
//!
//! Recovery: open the tree (manifest replay, orphan sweep), then replay the
//! log from the manifest's log start into a fresh memtable. A data
//! directory written by the in-memory engine (checkpoint + log) is
//! upgraded: recovered the old way, written as the first table, recorded,
//! and only then are its checkpoints deleted.

use crate::error::{Error, Result};
use crate::layers::{Layers, View};
use crate::layout::DataDir;
use crate::lsm::{TableFiles, Tree, TreeOptions};
use crate::manifest::KEYS_NOT_COUNTED;
use crate::op::Op;
use crate::options::Options;
use crate::poison::Poison;
use crate::recovery::{self, RecoveryReport, TablesUsed, RECORD_OVERHEAD};
use crate::CheckpointOutcome;
use keel_storage::Storage;
use keel_wal::Wal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Frozen memtables that may wait for a flush while the active one fills:
/// one, so two memtables at most, as RocksDB's default
/// `max_write_buffer_number = 2`. Measured with 64 MiB memtables, a 4
/// million key fill: three took peak RSS from 242 to 531 MB for the same
/// throughput (docs/BENCHMARKS.md).
pub const MAX_FROZEN: usize = 1;
/// Level-0 tables from which each write is delayed by [`SLOWDOWN`].
pub const L0_SLOWDOWN: usize = 8;
/// Level-0 tables at which writers wait for a compaction.
pub const L0_STOP: usize = 12;
/// Keys awaiting the key count's lookups that wake the background thread.
pub const LOOKUP_BATCH: usize = 4096;
/// The delay per write while level 0 is over [`L0_SLOWDOWN`].
const SLOWDOWN: Duration = Duration::from_millis(1);
/// After a failed compaction, the compaction thread waits this long, then
/// twice as long after each further failure up to [`COMPACT_RETRY_MAX`]: a
/// full disk must not turn into a busy loop.
const COMPACT_RETRY_MIN: Duration = Duration::from_secs(1);
/// See [`COMPACT_RETRY_MIN`].
const COMPACT_RETRY_MAX: Duration = Duration::from_secs(60);

/// Counters of a store on tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablesStats {
    /// Per level: tables and their bytes.
    pub levels: Vec<(usize, u64)>,
    /// Bytes in the memtable taking writes.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting for a flush, and their bytes.
    pub frozen: usize,
    /// See `frozen`.
    pub frozen_bytes: u64,
    /// Flushes since open, and the table bytes they wrote.
    pub flushes: u64,
    /// See `flushes`.
    pub flush_bytes: u64,
    /// Compactions since open, and the bytes they read and wrote.
    pub compactions: u64,
    /// See `compactions`.
    pub compaction_bytes_read: u64,
    /// See `compactions`.
    pub compaction_bytes_written: u64,
    /// Log bytes of the writes applied since open (the base of write
    /// amplification).
    pub user_bytes: u64,
    /// Time writers spent waiting or slowed down, and how many times they
    /// waited.
    pub stall_micros: u64,
    /// See `stall_micros`.
    pub stalls: u64,
    /// Block cache lookups answered from memory, and those that read the
    /// file.
    pub cache_hits: u64,
    /// See `cache_hits`.
    pub cache_misses: u64,
    /// The last flush or compaction failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// Whether a compaction is running now.
    pub compacting: bool,
}

impl TablesStats {
    /// Bytes written to tables per byte written to the log (0 before any).
    pub fn write_amplification(&self) -> f64 {
        if self.user_bytes == 0 {
            return 0.0;
        }
        (self.flush_bytes + self.compaction_bytes_written) as f64 / self.user_bytes as f64
    }

    /// Block cache lookups answered from memory, as a fraction (0 before
    /// any).
    pub fn cache_hit_ratio(&self) -> f64 {
        let all = self.cache_hits + self.cache_misses;
        if all == 0 {
            return 0.0;
        }
        self.cache_hits as f64 / all as f64
    }
}

#[derive(Default)]
struct Counters {
    /// A compaction is running.
    compacting: AtomicBool,
    flushes: AtomicU64,
    flush_bytes: AtomicU64,
    compactions: AtomicU64,
    compaction_read: AtomicU64,
    compaction_written: AtomicU64,
    user_bytes: AtomicU64,
    stall_micros: AtomicU64,
    stalls: AtomicU64,
}

/// The table side of a [`Db`](crate::Db) opened with a memtable size.
pub(crate) struct OnTables {
    layers: RwLock<Layers>,
    /// Held only to pick a compaction or record a flush or compaction
    /// (a manifest edit, with its fdatasync); the tables are written
    /// without it, through `files`.
    tree: Mutex<Tree>,
    files: TableFiles,
    /// One compaction at a time (the compaction thread's, or one asked for
    /// by [`Db::checkpoint`](crate::Db::checkpoint)).
    compacting: Mutex<()>,
    /// Wakes the compaction thread: (compaction maybe due, stop).
    compact_wake: (Mutex<(bool, bool)>, Condvar),
    /// The manifest's log start, as of the last flush.
    log_start: AtomicU64,
    cache: Option<Arc<crate::table::BlockCache>>,
    memtable_size: u64,
    /// Writers waiting for room wait here; the background thread notifies
    /// after each flush and compaction.
    room: (Mutex<()>, Condvar),
    /// The last flush's failure and the last compaction's, while the last
    /// attempt of each failed: a writer that would wait for one is refused.
    flush_error: Mutex<Option<String>>,
    compact_error: Mutex<Option<String>>,
    counters: Counters,
    /// Wakes the key count's thread: (lookups waiting, stop).
    count_wake: (Mutex<(bool, bool)>, Condvar),
    /// Whether the key count is exact (`Options::exact_key_count`); if
    /// not, no lookups are done and `len` is an estimate.
    exact: bool,
}

/// What opening a store on tables produced.
pub(crate) struct Opened {
    pub tables: OnTables,
    pub wal: Wal,
    pub report: RecoveryReport,
    /// Log bytes after the log start (towards the next forced flush).
    pub log_bytes: u64,
}

/// The tree's shape follows the memtable, as RocksDB's defaults do: L1
/// holds four memtables' worth (a flush of four L0 tables fills it), and
/// tables are an eighth of a memtable, at most 8 MiB (so a compaction
/// rewrites a small key range at a time). A tiny memtable (tests, torture)
/// so gets a deep tree quickly.
fn tree_options(opts: &Options, memtable_size: u64) -> TreeOptions {
    TreeOptions {
        level1_bytes: memtable_size.saturating_mul(4),
        table_bytes: (memtable_size / 8).clamp(4 << 10, 8 << 20),
        cache_bytes: opts.cache_size,
        compaction_bytes_per_sec: opts.checkpoint_bytes_per_sec,
        ..TreeOptions::default()
    }
}

impl OnTables {
    /// Opens the store in `dir` (whose lock the caller holds).
    pub(crate) fn open(
        storage: &Arc<dyn Storage>,
        dir: &DataDir,
        opts: &Options,
        memtable_size: u64,
        progress: &dyn Fn(u64),
    ) -> Result<Opened> {
        let started = Instant::now();
        let mut tree = Tree::open(
            Arc::clone(storage),
            dir.root(),
            tree_options(opts, memtable_size),
        )?;
        let (found, temps) = dir.list_checkpoints(&**storage)?;
        let fresh = tree.version().levels.iter().all(Vec::is_empty) && tree.log_start() == 1;
        if fresh && !found.is_empty() {
            return upgrade(storage, dir, opts, tree, memtable_size, progress);
        }
        // Checkpoints beside a manifest that already holds the data: an
        // upgrade interrupted after its edit. They are obsolete.
        remove_files(&**storage, dir, found.into_iter().map(|c| c.1).chain(temps))?;
        let log_start = tree.log_start();
        let tables_live = match tree.live_keys() {
            KEYS_NOT_COUNTED if opts.exact_key_count => count_live(&tree)?,
            n => n,
        };
        let mut layers = Layers {
            version: tree.version(),
            tables_live,
            applied_lsn: log_start - 1,
            metadata: tree.metadata().clone(),
            ..Layers::default()
        };
        let replayed = recovery::replay_ops(storage, dir, opts, log_start, progress, |lsn, op| {
            layers.apply(lsn, op);
            Ok(())
        })?;
        let wal = replayed.wal;
        let last = wal.next_lsn() - 1;
        recovery::check_continuity(&dir.log_dir(), log_start - 1, &[], wal.first_lsn(), last)?;
        layers.applied_lsn = last.max(log_start - 1);
        layers.freeze_if_full(memtable_size, MAX_FROZEN);
        let version = tree.version();
        let report = RecoveryReport {
            checkpoint: None,
            tables: Some(TablesUsed {
                tables: version.levels.iter().map(Vec::len).sum(),
                bytes: version.levels.iter().flatten().map(|t| t.meta.size).sum(),
                log_start,
            }),
            damaged_checkpoints: Vec::new(),
            checkpoint_temps_removed: 0,
            wal: replayed.report,
            records_replayed: replayed.records,
            // Before the replayed keys are looked up in the tables (the
            // background thread does that next): the count at the log
            // start plus the replayed puts, an upper bound.
            keys: if opts.exact_key_count {
                layers.count_work(0).0.max(0) as usize
            } else {
                layers.estimated_len()
            },
            lsn: layers.applied_lsn,
            duration: started.elapsed(),
        };
        tree.delete_obsolete()?;
        Ok(Opened {
            tables: OnTables::new(layers, tree, memtable_size, opts.exact_key_count),
            wal,
            report,
            log_bytes: replayed.bytes,
        })
    }

    fn new(layers: Layers, tree: Tree, memtable_size: u64, exact: bool) -> OnTables {
        OnTables {
            layers: RwLock::new(layers),
            log_start: AtomicU64::new(tree.log_start()),
            cache: tree.cache(),
            files: tree.files(),
            tree: Mutex::new(tree),
            compacting: Mutex::new(()),
            // The tree may need a compaction from the start.
            compact_wake: (Mutex::new((true, false)), Condvar::new()),
            memtable_size,
            room: (Mutex::new(()), Condvar::new()),
            flush_error: Mutex::new(None),
            compact_error: Mutex::new(None),
            counters: Counters::default(),
            // The replayed keys wait for their lookups from the start.
            count_wake: (Mutex::new((true, false)), Condvar::new()),
            exact,
        }
    }

    /// A pinned view for one read or scan.
    pub(crate) fn view(&self, poison: &Poison) -> View {
        poison.read(&self.layers, "layers").view()
    }

    /// Keys live now, exact: the lookups not yet done by the background
    /// thread are done here. A table that cannot be read makes it an
    /// upper bound, and is logged.
    pub(crate) fn len(&self, poison: &Poison) -> usize {
        if !self.exact {
            return poison.read(&self.layers, "layers").estimated_len();
        }
        match self.resolve(poison) {
            Ok(count) => count,
            Err(e) => {
                tracing::error!(error = %e, "counting keys needed a table that cannot be read; the count is an upper bound");
                poison.read(&self.layers, "layers").count_work(0).0.max(0) as usize
            }
        }
    }

    /// The key count's thread: does the lookups whenever woken, so that
    /// neither writers nor flushes wait for them (flushes and `len` do
    /// what is left). Returns once [`stop_counting`](Self::stop_counting).
    pub(crate) fn count_loop(&self, poison: &Poison) {
        if !self.exact {
            return;
        }
        let (m, cv) = &self.count_wake;
        loop {
            {
                let mut wake = poison.lock(m, "count");
                while !wake.0 && !wake.1 {
                    wake = poison.wait(cv, wake, None, "count").0;
                }
                if wake.1 {
                    return;
                }
                wake.0 = false;
            }
            if let Err(e) = self.resolve_batched(poison, None) {
                tracing::error!(error = %e, "the key count's lookups failed; len() will retry them");
            }
        }
    }

    /// Stops the key count's thread.
    pub(crate) fn stop_counting(&self, poison: &Poison) {
        poison.lock(&self.count_wake.0, "count").1 = true;
        self.count_wake.1.notify_all();
    }

    fn wake_counting(&self, poison: &Poison) {
        poison.lock(&self.count_wake.0, "count").0 = true;
        self.count_wake.1.notify_one();
    }

    /// Does the key count's pending lookups (no lock held while looking up)
    /// and records them; returns the count as of when it started. For
    /// `len()`: one batch of whatever is pending then, so writes going on
    /// cannot keep it from returning.
    fn resolve(&self, poison: &Poison) -> Result<usize> {
        let (count, work) = poison.read(&self.layers, "layers").count_work(usize::MAX);
        let mut live = 0;
        for w in &work {
            let found = w.run()?;
            live += found;
            w.record(&poison.read(&self.layers, "layers"), found);
        }
        Ok((count - live as i64).max(0) as usize)
    }

    /// Does the pending lookups of the memtable `only` (or of every one),
    /// in batches of [`LOOKUP_BATCH`] keys, until none is left or the
    /// count's thread is stopped. A batch pins the memtables and the
    /// version below its keys: a whole memtable's lookups at once kept a
    /// flushed memtable in memory for seconds (measured: a third memtable
    /// at the peak of a fill).
    fn resolve_batched(&self, poison: &Poison, only: Option<u64>) -> Result<()> {
        loop {
            if only.is_none() && poison.lock(&self.count_wake.0, "count").1 {
                return Ok(());
            }
            let (_, work) = poison.read(&self.layers, "layers").count_work(LOOKUP_BATCH);
            let Some(w) = work
                .into_iter()
                .find(|w| only.is_none_or(|id| w.target_id() == id))
            else {
                return Ok(());
            };
            let found = w.run()?;
            w.record(&poison.read(&self.layers, "layers"), found);
        }
    }

    /// The application metadata as of the last applied record.
    pub(crate) fn metadata(&self, poison: &Poison) -> crate::metadata::Metadata {
        poison.read(&self.layers, "layers").metadata.clone()
    }

    /// The LSN every applied record is at.
    pub(crate) fn applied_lsn(&self, poison: &Poison) -> u64 {
        poison.read(&self.layers, "layers").applied_lsn
    }

    /// Applies queued operations in LSN order (the caller holds the queue,
    /// so no one else applies). Returns whether the background thread has
    /// work (a memtable was frozen); wakes the key count's thread when
    /// another [`LOOKUP_BATCH`] keys wait for their lookups.
    pub(crate) fn apply(&self, poison: &Poison, ops: impl Iterator<Item = (u64, Op)>) -> bool {
        let mut layers = poison.write(&self.layers, "layers");
        let (mut wake, mut count) = (false, false);
        for (lsn, op) in ops {
            debug_assert_eq!(
                lsn,
                layers.applied_lsn + 1,
                "operations applied out of order"
            );
            let bytes = op.encoded_len() as u64 + RECORD_OVERHEAD;
            let waiting = layers.mem.unresolved_len();
            layers.apply(lsn, op);
            self.counters.user_bytes.fetch_add(bytes, Ordering::Relaxed);
            count |= layers.mem.unresolved_len() / LOOKUP_BATCH > waiting / LOOKUP_BATCH;
            wake |= layers.freeze_if_full(self.memtable_size, MAX_FROZEN);
        }
        drop(layers);
        if count || wake {
            self.wake_counting(poison);
        }
        wake
    }

    /// Waits (or refuses) before a write while flushes or level 0 are
    /// behind; see the module doc.
    /// While waiting, it wakes what it waits for (`wake_flush`, or the
    /// compaction thread) at every turn, so no lost wake-up can leave it
    /// waiting for a thread that sleeps.
    pub(crate) fn wait_for_room(&self, poison: &Poison, wake_flush: &dyn Fn()) -> Result<()> {
        let mut since: Option<Instant> = None;
        let result = loop {
            let (frozen, full, l0) = {
                let l = poison.read(&self.layers, "layers");
                let full = l.mem.bytes() >= self.memtable_size;
                (l.frozen.len(), full, l.version.level(0).len())
            };
            let flush_behind = full && frozen >= MAX_FROZEN;
            if !flush_behind && l0 < L0_STOP {
                if l0 >= L0_SLOWDOWN {
                    std::thread::sleep(SLOWDOWN);
                    since.get_or_insert_with(|| Instant::now() - SLOWDOWN);
                }
                break Ok(());
            }
            // Waiting for what failed last time: refuse instead.
            let failed = if flush_behind {
                &self.flush_error
            } else {
                &self.compact_error
            };
            if let Some(e) = poison.lock(failed, "tables error").clone() {
                let what = if flush_behind {
                    "the memtable cannot be flushed"
                } else {
                    "level 0 cannot be compacted"
                };
                break Err(Error::WriteStalled {
                    why: format!("{what} ({e})"),
                });
            }
            if since.is_none() {
                since = Some(Instant::now());
                tracing::warn!(
                    frozen,
                    l0,
                    "writes stalled: waiting for a flush or a compaction"
                );
            }
            if flush_behind {
                wake_flush();
            } else {
                self.wake_compaction(poison);
            }
            let (m, cv) = &self.room;
            let guard = poison.lock(m, "stall");
            let _ = poison.wait(cv, guard, Some(Duration::from_millis(50)), "stall");
        };
        if let Some(t) = since {
            self.counters.stalls.fetch_add(1, Ordering::Relaxed);
            self.counters
                .stall_micros
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        result
    }

    /// Flushes every frozen memtable (first freezing the live one if
    /// `force`), deleting the log up to the new log start after each, then
    /// wakes the compaction thread.
    pub(crate) fn flush(
        &self,
        wal: &Wal,
        poison: &Poison,
        force: bool,
    ) -> Result<CheckpointOutcome> {
        let result = self.flush_inner(wal, poison, force);
        *poison.lock(&self.flush_error, "tables error") =
            result.as_ref().err().map(|e| e.to_string());
        self.room.1.notify_all();
        self.wake_compaction(poison);
        result
    }

    fn flush_inner(&self, wal: &Wal, poison: &Poison, force: bool) -> Result<CheckpointOutcome> {
        if force {
            poison.write(&self.layers, "layers").freeze();
        }
        let mut outcome = CheckpointOutcome {
            lsn: self.log_start() - 1,
            written: false,
            segments_removed: 0,
            checkpoints_removed: 0,
        };
        loop {
            let (oldest, floor, tables_live) = {
                let l = poison.read(&self.layers, "layers");
                (l.frozen.last().cloned(), l.floor, l.tables_live)
            };
            let Some(mem) = oldest else { break };
            // The key count's lookups for it (the count thread's, or what
            // it has not done yet).
            if self.exact && mem.unresolved_len() > 0 {
                self.resolve_batched(poison, Some(mem.id()))?;
            }
            // What the memtable adds to the keys live in tables.
            let adds = mem.puts() as i64 - mem.resolution().live_below as i64;
            // Its records are applied, hence acknowledged, but under the
            // Interval or Never policy maybe not yet durable: the table and
            // the log start moving past them must not get ahead of the log.
            wal.sync()?;
            let log_start = mem.max_lsn + 1;
            // Wholly older than a clear since: nothing of it is live.
            let cleared = mem.max_lsn < floor;
            let added = if cleared {
                None
            } else {
                // Without the tree's lock: a compaction may be recording.
                self.files.write_l0(mem.sorted(), Some(mem.lsn_range()))?
            };
            let live_after = if !self.exact {
                KEYS_NOT_COUNTED
            } else if cleared {
                tables_live
            } else {
                (tables_live as i64 + adds).max(0) as u64
            };
            let table_bytes = added.as_ref().map_or(0, |m| m.size);
            {
                let mut tree = poison.lock(&self.tree, "tree");
                tree.install_flush(added, log_start, live_after, floor, &mem.metadata)?;
                {
                    let mut l = poison.write(&self.layers, "layers");
                    l.frozen.retain(|f| !Arc::ptr_eq(f, &mem));
                    l.version = tree.version();
                    // The active memtable may have filled meanwhile (then
                    // writers wait for it): freeze it, flushed next turn.
                    l.freeze_if_full(self.memtable_size, MAX_FROZEN);
                    // Unless a clear came since, which emptied the tables.
                    if mem.max_lsn >= l.floor {
                        l.tables_live = (l.tables_live as i64 + adds).max(0) as u64;
                    }
                }
                // The layers no longer pin the tables a clear removed.
                tree.delete_obsolete()?;
            }
            self.log_start.store(log_start, Ordering::Relaxed);
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.counters
                .flush_bytes
                .fetch_add(table_bytes, Ordering::Relaxed);
            self.room.1.notify_all();
            // The edit is durable (Manifest::apply): the log below it may go.
            outcome.segments_removed += wal.truncate_before(log_start)?;
            outcome.lsn = log_start - 1;
            outcome.written = true;
        }
        Ok(outcome)
    }

    fn wake_compaction(&self, poison: &Poison) {
        poison.lock(&self.compact_wake.0, "compact").0 = true;
        self.compact_wake.1.notify_one();
    }

    /// Stops the compaction thread (a compaction running stops before its
    /// next output table; its outputs are removed).
    pub(crate) fn stop_compacting(&self, poison: &Poison) {
        poison.lock(&self.compact_wake.0, "compact").1 = true;
        self.compact_wake.1.notify_all();
    }

    fn stopping(&self, poison: &Poison) -> bool {
        poison.lock(&self.compact_wake.0, "compact").1
    }

    /// The compaction thread: compacts while compactions are due whenever
    /// woken (after each flush). After a failure it waits (1 s, doubling to
    /// 60 s) before trying again. Returns once
    /// [`stop_compacting`](Self::stop_compacting).
    pub(crate) fn compact_loop(&self, poison: &Poison) {
        let (m, cv) = &self.compact_wake;
        let mut backoff: Option<Duration> = None;
        loop {
            {
                let mut wake = poison.lock(m, "compact");
                if let Some(wait) = backoff {
                    let until = Instant::now() + wait;
                    while !wake.1 && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        wake = poison.wait(cv, wake, Some(left), "compact").0;
                    }
                }
                while !wake.0 && !wake.1 {
                    wake = poison.wait(cv, wake, None, "compact").0;
                }
                if wake.1 {
                    return;
                }
                wake.0 = false;
            }
            if poison.check().is_err() {
                return;
            }
            let result = self.compact_while_due(poison);
            backoff = match &result {
                Ok(_) => None,
                Err(e) => {
                    let wait =
                        backoff.map_or(COMPACT_RETRY_MIN, |d| (d * 2).min(COMPACT_RETRY_MAX));
                    tracing::error!(error = %e, retry_in = ?wait, "compaction failed; writes go on until level 0 is full");
                    Some(wait)
                }
            };
            *poison.lock(&self.compact_error, "tables error") = result.err().map(|e| e.to_string());
            self.room.1.notify_all();
        }
    }

    /// Compacts while a compaction is due (one at a time); the number done.
    pub(crate) fn compact_while_due(&self, poison: &Poison) -> Result<usize> {
        let _one_at_a_time = poison.lock(&self.compacting, "compaction");
        let mut done = 0;
        while !self.stopping(poison) {
            let Some(c) = poison.lock(&self.tree, "tree").pick_compaction() else {
                break;
            };
            // Without the tree's lock: flushes go on meanwhile.
            self.counters.compacting.store(true, Ordering::Relaxed);
            let written = self.files.write_compaction(&c, &|| self.stopping(poison));
            self.counters.compacting.store(false, Ordering::Relaxed);
            let Some(out) = written? else {
                break; // stopping
            };
            let stats = {
                let mut tree = poison.lock(&self.tree, "tree");
                let Some(stats) = tree.install_compaction(&c, out)? else {
                    tracing::info!(
                        level = c.level,
                        "compaction abandoned: a clear removed its inputs meanwhile"
                    );
                    continue;
                };
                poison.write(&self.layers, "layers").version = tree.version();
                // Neither the layers nor the pick pin the inputs now.
                drop(c);
                tree.delete_obsolete()?;
                stats
            };
            done += 1;
            let c = &self.counters;
            c.compactions.fetch_add(1, Ordering::Relaxed);
            c.compaction_read
                .fetch_add(stats.bytes_read, Ordering::Relaxed);
            c.compaction_written
                .fetch_add(stats.bytes_written, Ordering::Relaxed);
            self.room.1.notify_all();
            tracing::info!(
                level = stats.level,
                inputs = stats.inputs,
                bytes_read = stats.bytes_read,
                outputs = stats.outputs,
                bytes_written = stats.bytes_written,
                "compaction done"
            );
        }
        Ok(done)
    }

    /// The current version (pinning its tables) and the manifest state
    /// that names them, taken together under the tree's lock.
    pub(crate) fn backup_snapshot(
        &self,
        poison: &Poison,
    ) -> (Arc<crate::lsm::Version>, crate::manifest::VersionEdit) {
        let tree = poison.lock(&self.tree, "tree");
        (tree.version(), tree.state_snapshot())
    }

    /// The log start the manifest records (records below are in tables).
    pub(crate) fn log_start(&self) -> u64 {
        self.log_start.load(Ordering::Relaxed)
    }

    /// Counters and shape.
    pub(crate) fn stats(&self, poison: &Poison) -> TablesStats {
        let (levels, memtable_bytes, frozen, frozen_bytes) = {
            let l = poison.read(&self.layers, "layers");
            let levels = l
                .version
                .levels
                .iter()
                .map(|t| (t.len(), t.iter().map(|t| t.meta.size).sum()))
                .collect();
            let frozen_bytes = l.frozen.iter().map(|f| f.bytes()).sum();
            (levels, l.mem.bytes(), l.frozen.len(), frozen_bytes)
        };
        let cache = self.cache.as_ref().map(|c| c.stats());
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TablesStats {
            levels,
            memtable_bytes,
            frozen,
            frozen_bytes,
            flushes: get(&c.flushes),
            flush_bytes: get(&c.flush_bytes),
            compactions: get(&c.compactions),
            compaction_bytes_read: get(&c.compaction_read),
            compaction_bytes_written: get(&c.compaction_written),
            user_bytes: get(&c.user_bytes),
            stall_micros: get(&c.stall_micros),
            stalls: get(&c.stalls),
            cache_hits: cache.as_ref().map_or(0, |c| c.hits),
            cache_misses: cache.as_ref().map_or(0, |c| c.misses),
            last_error: poison
                .lock(&self.flush_error, "tables error")
                .clone()
                .or_else(|| poison.lock(&self.compact_error, "tables error").clone()),
            compacting: c.compacting.load(Ordering::Relaxed),
        }
    }
}

/// Removes `files` from the data directory, then syncs it (removals are
/// durable only once the directory is).
fn remove_files(
    storage: &dyn Storage,
    dir: &DataDir,
    files: impl Iterator<Item = std::path::PathBuf>,
) -> Result<()> {
    let mut removed = 0;
    for f in files {
        storage
            .remove(&f)
            .map_err(|e| Error::io("removing an obsolete checkpoint", &f, e))?;
        removed += 1;
    }
    if removed > 0 {
        let root = dir.root();
        storage
            .sync_dir(root)
            .map_err(|e| Error::io("syncing the data directory", root, e))?;
    }
    Ok(())
}

/// Counts the keys live in `tree`'s tables by reading them all: for a
/// store last written without an exact count, opened with one.
fn count_live(tree: &Tree) -> Result<u64> {
    let started = Instant::now();
    let live = tree.version().count_live()?;
    tracing::info!(
        keys = live,
        seconds = started.elapsed().as_secs_f64(),
        "counted the keys of every table: the store was last written with exact_key_count off"
    );
    Ok(live)
}

/// Opens a data directory the in-memory engine wrote (checkpoint + log) on
/// tables: recovers it the old way, writes the state as the first table and
/// records it with the log start after it in one edit; only then deletes
/// the checkpoints (a crash before the edit leaves the old directory, which
/// upgrades again; after it, the manifest wins and the checkpoints are
/// removed at the next open).
fn upgrade(
    storage: &Arc<dyn Storage>,
    dir: &DataDir,
    opts: &Options,
    mut tree: Tree,
    memtable_size: u64,
    progress: &dyn Fn(u64),
) -> Result<Opened> {
    let r = recovery::recover(storage, dir, opts, progress)?;
    let lsn = r.report.lsn;
    let snapshot = r.keys.tree().clone();
    // The table must not get ahead of the log.
    r.wal.sync()?;
    let first = tree.flush(
        snapshot
            .iter()
            .map(|(k, v)| (&k[..], crate::table::Stored::Put(&v[..]), lsn)),
        lsn + 1,
        snapshot.len() as u64,
        0,
        &r.metadata,
    )?;
    let (found, temps) = dir.list_checkpoints(&**storage)?;
    remove_files(&**storage, dir, found.into_iter().map(|c| c.1).chain(temps))?;
    r.wal.truncate_before(lsn + 1)?;
    tracing::info!(
        lsn,
        keys = snapshot.len(),
        "upgraded a data directory to tables: its checkpoint is now the first table"
    );
    let layers = Layers {
        version: tree.version(),
        tables_live: snapshot.len() as u64,
        applied_lsn: lsn,
        metadata: r.metadata,
        ..Layers::default()
    };
    let mut report = r.report;
    report.tables = Some(TablesUsed {
        tables: usize::from(first.is_some()),
        bytes: first.map_or(0, |m| m.size),
        log_start: lsn + 1,
    });
    Ok(Opened {
        tables: OnTables::new(layers, tree, memtable_size, opts.exact_key_count),
        wal: r.wal,
        report,
        log_bytes: 0,
    })
}
