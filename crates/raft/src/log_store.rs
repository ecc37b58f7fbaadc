//! [`KeelLogStore`]: openraft's `RaftLogStorage` on keel's write-ahead log.
//!
//! Entry `i` is record `i - base + 1` of the log in `log-<generation>`
//! ([`RaftMeta`]): LSNs start at 1, Raft indexes at 0, and a log restarted
//! past a purge begins at its base.
//!
//! Invariants:
//! - An append is acknowledged to openraft (its `LogFlushed` callback) only
//!   after an fdatasync covered its last entry: the entries are queued in
//!   the log at once, in order, and one flusher thread per store waits for
//!   them in the order they came, so acknowledgements never run ahead of
//!   the disk nor arrive out of order. Concurrent appends share fdatasyncs
//!   (the log's group commit). The log must sync every append
//!   ([`SyncPolicy::Always`]); other policies are refused.
//! - A conflicting suffix is removed with [`Wal::truncate_after`], durable
//!   before the next append; a purge records the purged log id in the meta
//!   file first and then drops whole segments ([`Wal::truncate_before`]):
//!   entries at or below it that remain in the oldest segment are never
//!   returned.
//! - A purge past the last entry (a snapshot installed ahead of the log)
//!   starts a new, empty log generation whose first record is the next
//!   index; the meta file's replacement is the switch. So does a first
//!   append to an empty log at another index than the next (a follower's
//!   first entries).
//! - Entries appended at or below the purge point are already applied
//!   and compacted: they change nothing. Any other gap is refused.
//! - Recovery modes that can drop acknowledged records (`PointInTime`,
//!   `SkipAnyCorruptedRecords`) are refused: a node that forgot an entry it
//!   acknowledged could let a committed entry be lost.
//! - Every entry read back is checked to hold the index it was read for.
//! - A store opened again hands openraft its vote *uncommitted* (same term,
//!   same candidate: a weakening, never a second vote). openraft 0.9 lets a
//!   node whose stored vote says it led come back as that leader without
//!   an election; but a leader's own appends can be replicated and
//!   committed before its own fdatasync, so it may come back without
//!   entries its followers hold, and would then write other entries under
//!   the same term and indexes (two logs disagreeing at one log id), and
//!   its commit index is not stored, so it would also serve reads from a
//!   state machine not yet caught up. (openraft issue #1511; the
//!   in-process simulated cluster found both.) A node that must win a new
//!   election first commits a blank entry of its new term before it
//!   serves anything.

use crate::entry_cache::EntryCache;
use crate::entry_codec;
use crate::meta::{MetaError, RaftMeta};
use crate::{Entry, LogId, StorageError, TypeConfig, Vote};
use keel_storage::Storage;
use keel_wal::{RecoveryMode, SyncPolicy, Wal, WalError, WalOptions};
use openraft::storage::{LogFlushed, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogId, StorageIOError};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a log store does not open or work.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The log itself failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The meta file failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A file operation on the store's directory failed.
    #[error(transparent)]
    Io(#[from] keel_storage::IoError),
    /// Options a Raft log cannot run with.
    #[error("{0}")]
    Options(String),
    /// A record does not hold the entry it should.
    #[error("{0}")]
    Damaged(String),
}

/// The state appends, truncations and purges change.
struct State {
    wal: Arc<Wal>,
    meta: RaftMeta,
    /// The last entry in the log, if any is above the purge point.
    last: Option<LogId>,
    /// The newest entries, for reads.
    cache: EntryCache,
}

struct Shared {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    opts: WalOptions,
    state: Mutex<State>,
}

/// A Raft log on keel's write-ahead log, in one directory.
pub struct KeelLogStore {
    shared: Arc<Shared>,
    /// Appends waiting for their fdatasync: (log generation, last LSN,
    /// callback).
    flusher: mpsc::Sender<Flush>,
    in_flight: AppendsInFlight,
    committed: CommitIndex,
}

/// The newest log index openraft has told this store is committed, kept in
/// memory only: a restarted node learns it again from the leader (and a
/// restarted node never resumes as leader, module doc), and writing it
/// durably at every commit would cost an fsync each. For `GET /cluster`.
#[derive(Clone, Debug, Default)]
pub struct CommitIndex(Arc<AtomicU64>);

impl CommitIndex {
    /// The committed index, if one was reported since the store opened.
    pub fn get(&self) -> Option<u64> {
        self.0.load(Ordering::SeqCst).checked_sub(1)
    }
}

/// How many appends of one store wait for their fdatasync (queued, their
/// callback not yet called). An append leaves the count only after openraft
/// was told, so a simulation on tokio's paused clock can hold its clock
/// still while the count is above zero: the sync runs on a thread of the
/// store's own, which the runtime cannot see, and an idle runtime would
/// otherwise jump its clock to the next timer (every disk would look as
/// slow as the nearest timeout).
#[derive(Clone, Debug, Default)]
pub struct AppendsInFlight(Arc<AtomicU64>);

impl AppendsInFlight {
    /// Appends queued whose callback has not run yet.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn done(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads entries for openraft's replication tasks, beside the store.
#[derive(Clone)]
pub struct KeelLogReader {
    shared: Arc<Shared>,
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta")
}

fn log_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log-{generation}"))
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

impl State {
    /// The LSN of entry `index` in this generation's log (0 if the index
    /// lies before it).
    fn lsn_of(&self, index: u64) -> u64 {
        (index + 1).saturating_sub(self.meta.base)
    }

    /// The index the next appended entry must have.
    fn next_index(&self) -> u64 {
        self.meta.base + self.wal.next_lsn() - 1
    }

    /// The first index entries may be read from.
    fn first_readable(&self) -> u64 {
        let after_purge = self.meta.purged.map_or(0, |p| p.index + 1);
        after_purge.max(self.meta.base)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it left the state as it was between two
        // steps of one call; the log itself is consistent on disk.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries with indexes in `[start, end)` that the log holds.
    /// Entries `[start, end)` for replication: all of them from `start`
    /// on, or none. openraft sends what this returns as the entries after
    /// the one at `start - 1`; entries that begin later (those before were
    /// purged since it chose the range) would leave a hole in the
    /// follower's log (openraft's follower asserts against it in debug
    /// builds; seen in the simulated cluster). Given none, openraft treats
    /// the round as a heartbeat, and the next finds the purge and sends a
    /// snapshot.
    fn read_from_start(&self, start: u64, end: u64) -> Result<Vec<Entry>, LogStoreError> {
        let entries = self.read(start, end)?;
        if entries.first().is_some_and(|e| e.log_id.index != start) {
            return Ok(Vec::new());
        }
        Ok(entries)
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, LogStoreError> {
        let (wal, from, to, base) = {
            let st = self.lock();
            let from = start.max(st.first_readable());
            let to = end.min(st.next_index());
            if from >= to {
                return Ok(Vec::new());
            }
            if let Some(cached) = st.cache.get(from, to) {
                return Ok(cached);
            }
            (Arc::clone(&st.wal), from, to, st.meta.base)
        };
        let mut out = Vec::new();
        let mut bad = None;
        wal.read_from(from - base + 1, |r| {
            let index = base + r.lsn - 1;
            if index >= to || bad.is_some() {
                return;
            }
            match entry_codec::decode(r.payload) {
                Ok(e) if e.log_id.index == index => out.push(e),
                Ok(e) => {
                    bad = Some(format!(
                        "record {} holds entry {}, not {index}",
                        r.lsn, e.log_id.index
                    ))
                }
                Err(e) => bad = Some(format!("record {}: {e}", r.lsn)),
            }
        })?;
        if let Some(why) = bad {
            return Err(LogStoreError::Damaged(why));
        }
        Ok(out)
    }
}

/// An append waiting for its fdatasync: the log generation and LSN of its
/// last entry, and what to tell openraft.
/// (generation, last LSN, openraft's callback, when it was queued).
type Flush = (u64, u64, LogFlushed<TypeConfig>, std::time::Instant);

/// Waits for each append's fdatasync in arrival order, then tells
/// openraft.
fn flusher_loop(shared: Arc<Shared>, rx: mpsc::Receiver<Flush>, in_flight: AppendsInFlight) {
    for (generation, lsn, callback, queued) in rx {
        let wal = {
            let st = shared.lock();
            (st.meta.generation == generation).then(|| Arc::clone(&st.wal))
        };
        let result = match wal.map_or(Ok(()), |w| w.flush_through(lsn)) {
            Ok(()) => Ok(()),
            // Removed by a truncation since: a truncation makes everything
            // before it durable first, so these entries were flushed. (A
            // log replaced by a new generation, above, was synced whole
            // before the switch.)
            Err(WalError::NotAppended { .. }) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        // Queued to durable: what an append costs the leader before it
        // counts its own vote for the entries.
        metrics::histogram!("keel_raft_append_seconds").record(queued.elapsed().as_secs_f64());
        callback.log_io_completed(result);
        in_flight.done();
    }
}

/// Closes a log that was replaced, once no flush holds it any more (the
/// flusher holds a log only while it waits for an fdatasync).
fn close_when_unshared(mut old: Arc<Wal>) {
    for _ in 0..5000 {
        match Arc::try_unwrap(old) {
            Ok(wal) => {
                if let Err(e) = wal.close() {
                    tracing::warn!(error = %e, "closing a replaced Raft log generation");
                }
                return;
            }
            Err(still) => {
                old = still;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    tracing::warn!("a replaced Raft log generation is still in use; it closes when released");
}

impl KeelLogStore {
    /// Opens (or creates) the Raft log in `dir` on `storage`. The log's
    /// options must sync every append and may not use a recovery mode that
    /// drops acknowledged records.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: WalOptions,
    ) -> Result<KeelLogStore, LogStoreError> {
        let dir = dir.as_ref().to_path_buf();
        if opts.sync != SyncPolicy::Always {
            return Err(LogStoreError::Options(
                "a Raft log must fdatasync every append (sync = always): an entry acknowledged to the leader must survive a power loss".into(),
            ));
        }
        if matches!(
            opts.recovery,
            RecoveryMode::PointInTime | RecoveryMode::SkipAnyCorruptedRecords
        ) {
            return Err(LogStoreError::Options(format!(
                "recovery mode {:?} can drop acknowledged entries and is refused in cluster mode: use TolerateCorruptedTail or AbsoluteConsistency",
                opts.recovery
            )));
        }
        keel_storage::create_dir_durable(&*storage, &dir)?;
        let mut meta = RaftMeta::load(&*storage, &meta_path(&dir))?;
        // A restarted node never resumes as the leader it was (module doc).
        if let Some(vote) = meta.vote.as_mut() {
            vote.committed = false;
        }
        let wal_opts = WalOptions {
            start_lsn: 1,
            ..opts.clone()
        };
        let (wal, _report) = Wal::open(
            Arc::clone(&storage),
            log_dir(&dir, meta.generation),
            wal_opts,
        )?;
        let wal = Arc::new(wal);
        let shared = Arc::new(Shared {
            storage,
            dir,
            opts,
            state: Mutex::new(State {
                wal,
                meta,
                last: None,
                cache: EntryCache::default(),
            }),
        });
        remove_other_generations(&shared)?;
        let last = last_entry(&shared)?;
        shared.lock().last = last;
        let (tx, rx) = mpsc::channel();
        let for_flusher = Arc::clone(&shared);
        let in_flight = AppendsInFlight::default();
        let counted = in_flight.clone();
        std::thread::Builder::new()
            .name("keel-raft-log-flusher".into())
            .spawn(move || flusher_loop(for_flusher, rx, counted))
            .map_err(|e| LogStoreError::Options(format!("cannot start a thread: {e}")))?;
        Ok(KeelLogStore {
            shared,
            flusher: tx,
            in_flight,
            committed: CommitIndex::default(),
        })
    }

    /// The commit index openraft reports to this store.
    pub fn commit_index(&self) -> CommitIndex {
        self.committed.clone()
    }

    /// The count of this store's appends waiting for their fdatasync.
    pub fn appends_in_flight(&self) -> AppendsInFlight {
        self.in_flight.clone()
    }

    /// The meta file as it stands (vote, purge point, generation).
    pub fn meta(&self) -> RaftMeta {
        self.shared.lock().meta
    }

    /// Appends `entries` (their indexes must follow the log's last) and
    /// returns the LSN of the last, without waiting for the disk.
    fn enqueue(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Option<(u64, u64)>, LogStoreError> {
        // Entries at or below the purge point are applied and compacted
        // already (a snapshot holds them): appending one again changes
        // nothing.
        let purged = self.shared.lock().meta.purged.map(|p| p.index);
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| purged.is_none_or(|p| e.log_id.index > p))
            .collect();
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(None);
        };
        let starts_anew = {
            let st = self.shared.lock();
            // An empty log may begin at any index after the purge point
            // (a follower's first entries, after a snapshot).
            st.last.is_none() && first != st.next_index() && first >= st.first_readable()
        };
        if starts_anew {
            let purged = self.shared.lock().meta.purged;
            self.switch_generation(purged, first)?;
        }
        let mut st = self.shared.lock();
        let mut last = None;
        for e in entries {
            let want = st.next_index();
            if e.log_id.index != want {
                return Err(LogStoreError::Damaged(format!(
                    "entry {} appended where entry {want} must come next",
                    e.log_id.index
                )));
            }
            let lsn = st.wal.enqueue_with(&entry_codec::encode(&e), |_| {})?;
            st.last = Some(e.log_id);
            st.cache.push(e);
            last = Some(lsn);
        }
        Ok(last.map(|lsn| (st.meta.generation, lsn)))
    }

    /// Removes entries from `index` on.
    fn remove_from(&self, index: u64) -> Result<(), LogStoreError> {
        let mut st = self.shared.lock();
        if index < st.first_readable() {
            return Err(LogStoreError::Damaged(format!(
                "entries from {index} cannot be removed: the log is purged through {}",
                st.first_readable().saturating_sub(1)
            )));
        }
        if index >= st.next_index() {
            return Ok(());
        }
        let lsn = st.lsn_of(index);
        st.cache.truncate_from(index);
        st.wal.truncate_after(lsn - 1)?;
        st.last = None;
        drop(st);
        let last = last_entry(&self.shared)?;
        self.shared.lock().last = last;
        Ok(())
    }

    /// Purges entries through `log_id`.
    fn purge_through(&self, log_id: LogId) -> Result<(), LogStoreError> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.meta.purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        if log_id.index + 1 >= st.next_index() {
            // Nothing would be left: a new log generation begins at the
            // next index.
            drop(st);
            return self.switch_generation(Some(log_id), log_id.index + 1);
        }
        // The purge point is durable before any segment goes: entries
        // at or below it that stay in a kept segment are never read.
        let next = RaftMeta {
            purged: Some(log_id),
            ..st.meta
        };
        next.save(&*shared.storage, &meta_path(&shared.dir))?;
        st.meta = next;
        let lsn = st.lsn_of(log_id.index + 1);
        let wal = Arc::clone(&st.wal);
        drop(st);
        wal.truncate_before(lsn)?;
        Ok(())
    }

    /// Begins a new, empty log generation whose first record is entry
    /// `base`, with `purged` as the purge point. The old log is synced
    /// first (so no flush waits on it), the new one exists durably before
    /// the meta file names it, and the old one's files go after.
    fn switch_generation(&self, purged: Option<LogId>, base: u64) -> Result<(), LogStoreError> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        st.wal.sync()?;
        let next = RaftMeta {
            purged,
            generation: st.meta.generation + 1,
            base,
            ..st.meta
        };
        let (wal, _) = Wal::open(
            Arc::clone(&shared.storage),
            log_dir(&shared.dir, next.generation),
            WalOptions {
                start_lsn: 1,
                ..shared.opts.clone()
            },
        )?;
        next.save(&*shared.storage, &meta_path(&shared.dir))?;
        let old = std::mem::replace(&mut st.wal, Arc::new(wal));
        st.meta = next;
        st.last = None;
        st.cache.clear();
        drop(st);
        close_when_unshared(old);
        remove_other_generations(shared)
    }

    fn save_vote_now(&self, vote: &Vote) -> Result<(), LogStoreError> {
        let mut st = self.shared.lock();
        let next = RaftMeta {
            vote: Some(*vote),
            ..st.meta
        };
        next.save(&*self.shared.storage, &meta_path(&self.shared.dir))?;
        st.meta = next;
        Ok(())
    }
}

/// The log id of the last entry the log holds above the purge point.
fn last_entry(shared: &Shared) -> Result<Option<LogId>, LogStoreError> {
    let (first, next) = {
        let st = shared.lock();
        (st.first_readable(), st.next_index())
    };
    if next == 0 || next <= first {
        return Ok(None);
    }
    let got = shared.read(next - 1, next)?;
    match got.last() {
        Some(e) => Ok(Some(e.log_id)),
        None => Err(LogStoreError::Damaged(format!(
            "the log's last entry {} cannot be read",
            next - 1
        ))),
    }
}

/// Removes the files of the log generations before and after the current
/// one: the one a switch replaced, or one a crash left half made before
/// the meta file named it. (Each switch cleans up after itself, so no
/// older generation is left.) The empty directories stay.
fn remove_other_generations(shared: &Shared) -> Result<(), LogStoreError> {
    let current = shared.lock().meta.generation;
    let storage = &*shared.storage;
    let io = |op, p: &Path, e| LogStoreError::Io(keel_storage::IoError::new(op, p, e));
    let others = [current.checked_sub(1), current.checked_add(1)];
    for generation in others.into_iter().flatten() {
        let path = log_dir(&shared.dir, generation);
        if !storage
            .exists(&path)
            .map_err(|e| io("checking", &path, e))?
        {
            continue;
        }
        let files = storage.list(&path).map_err(|e| io("listing", &path, e))?;
        for f in &files {
            let p = path.join(f);
            storage.remove(&p).map_err(|e| io("removing", &p, e))?;
        }
        if !files.is_empty() {
            // The removals are durable only once the directory is.
            storage
                .sync_dir(&path)
                .map_err(|e| io("syncing", &path, e))?;
        }
    }
    Ok(())
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for KeelLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.shared.read(start, end).map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared.read_from_start(start, end).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for KeelLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.shared.read(start, end).map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared.read_from_start(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for KeelLogStore {
    type LogReader = KeelLogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self.shared.lock();
        Ok(LogState {
            last_purged_log_id: st.meta.purged,
            last_log_id: st.last.or(st.meta.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        KeelLogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.save_vote_now(vote)
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.lock().meta.vote)
    }

    /// Kept in memory only ([`CommitIndex`]): openraft then re-learns it
    /// from the leader after a restart, as it does when nothing is saved.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let v = committed.map_or(0, |c| c.index + 1);
        self.committed.0.fetch_max(v, Ordering::SeqCst);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.enqueue(entries).map_err(write_err)? {
            Some((generation, lsn)) => {
                self.in_flight.0.fetch_add(1, Ordering::SeqCst);
                if let Err(mpsc::SendError((_, _, callback, _))) =
                    self.flusher
                        .send((generation, lsn, callback, std::time::Instant::now()))
                {
                    callback.log_io_completed(Err(std::io::Error::other(
                        "the log's flusher thread is gone",
                    )));
                    self.in_flight.done();
                }
            }
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_from(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_through(log_id).map_err(write_err)
    }
}

impl KeelLogStore {
    /// The log id of entry `index`, if the log holds it.
    pub fn log_id_at(&self, index: u64) -> Result<Option<LogId>, LogStoreError> {
        Ok(self
            .shared
            .read(index, index.saturating_add(1))?
            .first()
            .map(|e| *e.get_log_id()))
    }
}
