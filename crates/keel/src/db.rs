//! [`Db`]: the durable key-value store.
//!
//! Write path: validate -> encode the operation -> append to the log (which
//! returns once the record is durable under the sync policy) -> apply to the
//! in-memory tree -> return. Operations are queued in LSN order at the moment
//! the log assigns their LSN (`Wal::append_with`), and a writer whose record
//! is durable applies every queued operation up to its own LSN. So the tree
//! always equals the log replayed up to `applied_lsn`, a reader never sees a
//! write that is not yet acknowledged-durable, and no writer waits on another.
//!
//! Deferred writes (`put_deferred`, ...) split that path in two for event
//! loops: the operation is queued and gets its LSN at once, and
//! `commit_through(lsn)` later makes it durable (one fdatasync for all the
//! writes of a loop turn, on the loop's own thread) and applies it. Until
//! then it is not acknowledged and no reader sees it.
//!
//! By default (`Options::memtable_size`) the state is kept on tables
//! ([`crate::on_tables`]): the write path applies to a memtable, reads
//! merge it with frozen memtables and tables, and a checkpoint is a flush.
//!
//! With `memtable_size = None` every key is kept in memory instead:
//! checkpoints snapshot the tree in O(1) (a persistent map) and serialise
//! it on a background thread while writes go on. After checkpoint N is
//! durable, the checkpoint before it (P) and the log after P are kept, so a
//! damaged newest checkpoint is survivable; everything older is deleted.
//!
//! Directory layout: [`crate::layout`]. Recovery: [`crate::recovery`].

use crate::checkpoint::{self, Key};
use crate::error::{Error, Result};
use crate::keyspace::Keyspace;
use crate::layout::DataDir;
use crate::metadata::Metadata;
use crate::on_tables::{OnTables, TablesStats};
use crate::op::{BatchOp, Op};
use crate::options::Options;
use crate::poison::Poison;
use crate::range::Range;
use crate::recovery::{self, RecoveryReport, RECORD_OVERHEAD};
use keel_storage::{LockGuard, Storage};
use keel_wal::{Wal, WalStats};
use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// First wait before retrying a failed automatic checkpoint.
const CHECKPOINT_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait before retrying a failed automatic checkpoint.
const CHECKPOINT_RETRY_MAX: Duration = Duration::from_secs(60);

/// Counters and positions of a running [`Db`].
#[derive(Clone, Debug)]
pub struct Stats {
    /// Keys stored.
    pub keys: usize,
    /// The state includes every record up to this LSN.
    pub applied_lsn: u64,
    /// Every record up to this LSN is durable.
    pub durable_lsn: u64,
    /// The log's counters since open.
    pub wal: WalStats,
    /// Log segments on disk.
    pub log_segments: usize,
    /// Log bytes written since the last checkpoint.
    pub log_bytes_since_checkpoint: u64,
    /// LSN of the newest checkpoint, if any.
    pub checkpoint_lsn: Option<u64>,
    /// When the newest checkpoint was written (or found at open).
    pub checkpoint_time: Option<SystemTime>,
    /// Checkpoints written since open.
    pub checkpoints_written: u64,
    /// Checkpoints that failed since open (automatic ones back off after a
    /// failure: 1 s, doubling to 60 s).
    pub checkpoints_failed: u64,
    /// The last checkpoint failure, if the last attempt failed.
    pub last_checkpoint_error: Option<String>,
    /// How the store was recovered at open.
    pub recovery: RecoveryReport,
    /// Whether writes have stopped after a failure (reads go on).
    pub stopped: bool,
    /// On tables (`Options::memtable_size`): levels, memtables, flushes,
    /// compactions, stalls and the block cache.
    pub tables: Option<TablesStats>,
}

/// What a [`Db::checkpoint`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// LSN of the checkpoint now newest.
    pub lsn: u64,
    /// Whether a new file was written (false: the newest already covered it).
    pub written: bool,
    /// Log segments deleted after it.
    pub segments_removed: usize,
    /// Old checkpoint files deleted after it.
    pub checkpoints_removed: usize,
}

/// A batch of puts and deletes applied atomically by [`Db::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }
    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Put(key.into(), value.into()));
        self
    }
    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(BatchOp::Delete(key.into()));
        self
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Its operations, in order (to send the batch elsewhere: a cluster
    /// node proposes it as one `Op::Batch`).
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

struct TreeState {
    keys: Keyspace,
    /// Application metadata as of `applied_lsn`.
    metadata: Metadata,
    applied_lsn: u64,
}

struct CheckpointState {
    newest: Option<(u64, PathBuf)>,
    previous: Option<(u64, PathBuf)>,
    time: Option<SystemTime>,
    written: u64,
    failed: u64,
    last_error: Option<String>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    dir: DataDir,
    opts: Options,
    wal: Wal,
    /// Operations whose LSN is assigned, not yet applied, keyed by LSN.
    queue: Mutex<BTreeMap<u64, Op>>,
    state: RwLock<TreeState>,
    checkpoints: Mutex<CheckpointState>,
    /// Serialises checkpoints (automatic and on demand).
    checkpoint_running: Mutex<()>,
    log_bytes_since_checkpoint: AtomicU64,
    trigger: (Mutex<bool>, Condvar),
    closing: AtomicBool,
    recovery: RecoveryReport,
    /// Set when the state is kept on tables (then `state` stays empty).
    tables: Option<OnTables>,
    /// Takes every lock above; a poisoned one stops writes (crate::poison).
    poison: Poison,
    _lock: LockGuard,
}

/// A write queued in the log by one of the `*_deferred` methods of [`Db`],
/// not yet acknowledged: pass its [`lsn`](Self::lsn) (or a later one) to
/// [`Db::commit_through`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a deferred write is not acknowledged until Db::commit_through returns Ok"]
pub struct Deferred {
    lsn: u64,
}

impl Deferred {
    /// The write's LSN.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }
}

/// A durable key-value store in one directory. Share it with `Arc`.
pub struct Db {
    shared: Arc<Shared>,
    checkpointer: Option<JoinHandle<()>>,
    /// On tables: the threads doing the key count's lookups and the
    /// compactions.
    table_threads: Vec<JoinHandle<()>>,
}

/// Opens a [`Db`]: where, on what storage, with which options. Made by
/// [`Db::builder`].
///
/// ```
/// use keel::{Db, Options, SyncPolicy};
/// use std::sync::Arc;
///
/// let dir = tempfile::tempdir().unwrap();
/// let (db, report) = Db::builder(dir.path())
///     .options(Options::default())
///     .sync(SyncPolicy::Always)                       // durability as a value
///     .storage(Arc::new(keel::storage::FsStorage::new()))
///     .progress(|replayed| eprintln!("{replayed} records replayed"))
///     .open()
///     .unwrap();
/// assert_eq!(report.keys, 0);
/// # drop(db);
/// ```
#[must_use = "a builder does nothing until open() is called"]
pub struct DbBuilder<'a> {
    dir: PathBuf,
    options: Options,
    storage: Option<Arc<dyn Storage>>,
    progress: Option<Box<dyn Fn(u64) + 'a>>,
}

impl<'a> DbBuilder<'a> {
    /// The options to open with (default: [`Options::default`]).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// When writes are acknowledged: sets [`Options::sync`].
    pub fn sync(mut self, policy: keel_wal::SyncPolicy) -> Self {
        self.options.sync = policy;
        self
    }

    /// The storage to open on (default: the real file system). Tests pass
    /// a `SimStorage` here.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Called with the number of records replayed, every 8,192 records,
    /// for a progress display during a long recovery.
    pub fn progress(mut self, progress: impl Fn(u64) + 'a) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Takes the directory lock, loads the newest valid checkpoint, replays
    /// the log after it, and starts serving (see [`crate::recovery`]).
    pub fn open(self) -> Result<(Db, RecoveryReport)> {
        self.options.validate()?;
        let storage = self
            .storage
            .unwrap_or_else(|| Arc::new(keel_storage::FsStorage::new()));
        let dir = DataDir::new(self.dir);
        keel_storage::create_dir_durable(&*storage, dir.root())?;
        refuse_a_backup(&*storage, dir.root())?;
        let lock = dir.lock(&*storage, "keel")?;
        let progress = self.progress.unwrap_or_else(|| Box::new(|_| {}));
        let (r, tables) = match self.options.memtable_size {
            Some(size) => {
                let o = OnTables::open(&storage, &dir, &self.options, size, &*progress)?;
                let r = recovery::Recovered {
                    wal: o.wal,
                    keys: Keyspace::default(),
                    metadata: Metadata::new(),
                    report: o.report,
                    newest: None,
                    older: None,
                    log_bytes: o.log_bytes,
                };
                (r, Some(o.tables))
            }
            None => (
                recovery::recover(&storage, &dir, &self.options, &*progress)?,
                None,
            ),
        };
        let shared = Arc::new(Shared {
            storage,
            dir,
            wal: r.wal,
            queue: Mutex::new(BTreeMap::new()),
            state: RwLock::new(TreeState {
                keys: r.keys,
                metadata: r.metadata,
                applied_lsn: r.report.lsn,
            }),
            checkpoints: Mutex::new(CheckpointState {
                time: r.newest.as_ref().map(|_| SystemTime::now()),
                newest: r.newest,
                previous: r.older,
                written: 0,
                failed: 0,
                last_error: None,
            }),
            checkpoint_running: Mutex::new(()),
            log_bytes_since_checkpoint: AtomicU64::new(r.log_bytes),
            trigger: (Mutex::new(false), Condvar::new()),
            closing: AtomicBool::new(false),
            recovery: r.report.clone(),
            tables,
            poison: Poison::default(),
            opts: self.options,
            _lock: lock,
        });
        let checkpointer = {
            let worker = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("keel-checkpoint".into())
                .spawn(move || worker.checkpoint_loop())
                .map_err(|e| Error::io("starting the checkpoint thread", shared.dir.root(), e))?
        };
        let mut db = Db {
            shared,
            checkpointer: Some(checkpointer),
            table_threads: Vec::new(),
        };
        // On an error, dropping `db` stops the threads started.
        spawn_table_threads(&db.shared, &mut db.table_threads)?;
        Ok((db, r.report))
    }
}

/// On tables: starts the threads doing the key count's lookups
/// (`keel-count`) and the compactions (`keel-compact`).
fn spawn_table_threads(shared: &Arc<Shared>, threads: &mut Vec<JoinHandle<()>>) -> Result<()> {
    if shared.tables.is_none() {
        return Ok(());
    }
    type Job = fn(&OnTables, &Poison);
    let jobs: [(&str, &'static str, Job); 2] = [
        (
            "keel-count",
            "starting the key count thread",
            OnTables::count_loop,
        ),
        (
            "keel-compact",
            "starting the compaction thread",
            OnTables::compact_loop,
        ),
    ];
    for (name, op, job) in jobs {
        let worker = Arc::clone(shared);
        let t = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Some(t) = &worker.tables {
                    job(t, &worker.poison);
                }
            })
            .map_err(|e| Error::io(op, shared.dir.root(), e))?;
        threads.push(t);
    }
    Ok(())
}

/// A backup is not a store: opening one would write to it and make its
/// marker false. An interrupted one is incomplete and never opens.
fn refuse_a_backup(storage: &dyn Storage, root: &Path) -> Result<()> {
    use crate::backup::{backup_state, BackupState};
    let why = match backup_state(storage, root)? {
        BackupState::NotABackup => return Ok(()),
        BackupState::Incomplete => format!("is an interrupted backup (it holds {}): it is incomplete and never a store; delete it and back up again", crate::backup::BACKUP_IN_PROGRESS),
        BackupState::Complete(m) => format!("is a keel backup (complete at LSN {}), not a store: restore it into a new directory with `keel restore {} --into NEW_DIR`, and open that", m.lsn, root.display()),
    };
    Err(Error::NotAStoreButABackup {
        dir: root.to_path_buf(),
        why,
    })
}

impl Db {
    /// Opens (creating if needed) the store in `dir` on the real file system;
    /// shorthand for `Db::builder(dir).options(opts).open()`.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<(Db, RecoveryReport)> {
        Db::builder(dir).options(opts).open()
    }

    /// A builder to open the store in `dir` with storage, options and a
    /// progress callback of the caller's choosing.
    pub fn builder<'a>(dir: impl AsRef<Path>) -> DbBuilder<'a> {
        DbBuilder {
            dir: dir.as_ref().to_path_buf(),
            options: Options::default(),
            storage: None,
            progress: None,
        }
    }

    /// Sets `key` to `value`; returns the write's LSN once it is durable.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        let (k, v) = (key.as_ref(), value.as_ref());
        self.shared.check_key(k)?;
        self.shared.check_value(k, v)?;
        self.shared.submit(Op::Put(k.to_vec(), v.to_vec()))
    }

    /// Removes `key` (not an error if it is missing); returns the LSN.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64> {
        let k = key.as_ref();
        self.shared.check_key(k)?;
        self.shared.submit(Op::Delete(k.to_vec()))
    }

    /// Removes every key, durably; returns the LSN.
    pub fn clear(&self) -> Result<u64> {
        self.shared.submit(Op::Clear)
    }

    /// Applies a batch atomically: after any crash all of it is there or
    /// none. Returns the LSN. An invalid entry refuses the whole batch.
    pub fn write(&self, batch: WriteBatch) -> Result<u64> {
        let op = self.shared.check_batch(batch)?;
        self.shared.submit(op)
    }

    /// [`put`](Self::put) for async code: never blocks the calling thread.
    pub async fn put_async(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        let (k, v) = (key.as_ref(), value.as_ref());
        self.shared.check_key(k)?;
        self.shared.check_value(k, v)?;
        self.shared
            .submit_async(Op::Put(k.to_vec(), v.to_vec()))
            .await
    }

    /// [`delete`](Self::delete) for async code.
    pub async fn delete_async(&self, key: impl AsRef<[u8]>) -> Result<u64> {
        let k = key.as_ref();
        self.shared.check_key(k)?;
        self.shared.submit_async(Op::Delete(k.to_vec())).await
    }

    /// [`clear`](Self::clear) for async code.
    pub async fn clear_async(&self) -> Result<u64> {
        self.shared.submit_async(Op::Clear).await
    }

    /// [`write`](Self::write) for async code.
    pub async fn write_async(&self, batch: WriteBatch) -> Result<u64> {
        let op = self.shared.check_batch(batch)?;
        self.shared.submit_async(op).await
    }

    /// Queues `key = value` in the log and returns at once, **not yet
    /// acknowledged**: it is neither durable nor visible to readers until
    /// [`commit_through`](Self::commit_through) is called with its LSN (or a
    /// later one) and returns `Ok`. For event loops that gather the writes
    /// of many requests, then commit them with one fdatasync on their own
    /// thread before replying to any (what Redis does once per loop turn).
    /// Validation errors are returned at once and queue nothing.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (db, _) = keel::Db::open(dir.path(), keel::Options::default()).unwrap();
    /// let a = db.put_deferred("k1", "v1").unwrap();
    /// let b = db.put_deferred("k2", "v2").unwrap();
    /// assert_eq!(db.get("k1").unwrap(), None);           // not acknowledged yet
    /// db.commit_through(b.lsn()).unwrap();               // one fdatasync for both
    /// assert_eq!(db.get("k1").unwrap(), Some(b"v1".to_vec()));
    /// # let _ = a;
    /// ```
    pub fn put_deferred(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Deferred> {
        let (k, v) = (key.as_ref(), value.as_ref());
        self.shared.check_key(k)?;
        self.shared.check_value(k, v)?;
        self.shared.submit_deferred(Op::Put(k.to_vec(), v.to_vec()))
    }

    /// [`delete`](Self::delete), deferred like [`put_deferred`](Self::put_deferred).
    pub fn delete_deferred(&self, key: impl AsRef<[u8]>) -> Result<Deferred> {
        let k = key.as_ref();
        self.shared.check_key(k)?;
        self.shared.submit_deferred(Op::Delete(k.to_vec()))
    }

    /// [`clear`](Self::clear), deferred like [`put_deferred`](Self::put_deferred).
    pub fn clear_deferred(&self) -> Result<Deferred> {
        self.shared.submit_deferred(Op::Clear)
    }

    /// [`write`](Self::write), deferred like [`put_deferred`](Self::put_deferred).
    pub fn write_deferred(&self, batch: WriteBatch) -> Result<Deferred> {
        let op = self.shared.check_batch(batch)?;
        self.shared.submit_deferred(op)
    }

    /// Sets application metadata ([`crate::metadata`]: named values that
    /// are not keys; reads, scans and clear never see them) and applies
    /// `op` (`None`: metadata only) in one log record, so after any crash
    /// both are there or neither. Returns the LSN once durable. For an
    /// application that must know exactly which of its own commands the
    /// store holds (keel-raft stores the last applied Raft log id so).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (db, _) = keel::Db::open(dir.path(), keel::Options::default()).unwrap();
    /// use keel::op::Op;
    /// let put = Op::Put(b"k".to_vec(), b"v".to_vec());
    /// db.write_with_metadata(Some(put), vec![(b"applied".to_vec(), b"7".to_vec())]).unwrap();
    /// assert_eq!(db.metadata().get(b"applied".as_slice()), Some(&b"7".to_vec()));
    /// assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()));
    /// ```
    pub fn write_with_metadata(
        &self,
        op: Option<Op>,
        metadata: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<u64> {
        let op = self.shared.check_with_metadata(op, metadata)?;
        self.shared.submit(op)
    }

    /// [`write_with_metadata`](Self::write_with_metadata), deferred like
    /// [`put_deferred`](Self::put_deferred).
    pub fn write_with_metadata_deferred(
        &self,
        op: Option<Op>,
        metadata: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Deferred> {
        let op = self.shared.check_with_metadata(op, metadata)?;
        self.shared.submit_deferred(op)
    }

    /// Checks `op` as a write of it would (key and value limits, batch
    /// size) without writing: for a caller that passes writes on elsewhere
    /// first (a cluster's leader, before it proposes one).
    pub fn check_write(&self, op: &Op) -> Result<()> {
        self.shared
            .check_with_metadata(Some(op.clone()), Vec::new())
            .map(|_| ())
    }

    /// The application metadata as of the last applied write.
    pub fn metadata(&self) -> Metadata {
        match &self.shared.tables {
            Some(t) => t.metadata(&self.shared.poison),
            None => self.shared.read_state().metadata.clone(),
        }
    }

    /// Acknowledges every write up to LSN `lsn` (deferred or not): returns
    /// once they are durable under the sync policy, doing the log's write
    /// and fdatasync on the calling thread when no other thread is, and
    /// applies them, so readers see them from now on.
    ///
    /// On `Err` none of the writes not yet acknowledged is: their outcome is
    /// unknown (they may or may not be there after a restart), and the store
    /// has stopped taking writes (fail-stop).
    pub fn commit_through(&self, lsn: u64) -> Result<()> {
        self.shared.poison.check()?;
        self.shared.wal.flush_through(lsn)?;
        self.shared.apply_through(lsn);
        self.shared.poison.check()
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        if let Some(t) = &self.shared.tables {
            return Ok(t.view(&self.shared.poison).get(key.as_ref())?);
        }
        let st = self.shared.read_state();
        Ok(st.keys.get(key.as_ref()).map(|v| v.to_vec()))
    }

    /// The entries with keys in `range`, in key order, as they are now:
    /// the iterator reads an O(1) snapshot, so later writes are not seen
    /// and never wait for it.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let (db, _) = keel::Db::open(dir.path(), keel::Options::default()).unwrap();
    /// for k in ["a", "b", "c", "d"] {
    ///     db.put(k, "v").unwrap();
    /// }
    /// let keys: Vec<Vec<u8>> = db.range("b".."d").map(|(k, _)| k).collect();
    /// assert_eq!(keys, [b"b".to_vec(), b"c".to_vec()]);
    /// assert_eq!(db.range::<&[u8], _>(..).count(), 4);
    /// ```
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Range {
        let bound = |b: Bound<&K>| b.map(|k| Key::from(k.as_ref()));
        let (start, end) = (bound(range.start_bound()), bound(range.end_bound()));
        if let Some(t) = &self.shared.tables {
            let (from, skip) = match &start {
                Bound::Included(k) => (k.to_vec(), None),
                Bound::Excluded(k) => (k.to_vec(), Some(k.to_vec())),
                Bound::Unbounded => (Vec::new(), None),
            };
            let merged = t.view(&self.shared.poison).iter_from(&from);
            return Range::merged(merged, skip, end, None);
        }
        Range::new(self.snapshot(), start, end)
    }

    /// Every entry whose key starts with `prefix`, in key order, as now.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Range {
        let prefix = prefix.as_ref();
        if let Some(t) = &self.shared.tables {
            let merged = t.view(&self.shared.poison).iter_from(prefix);
            return Range::merged(merged, None, Bound::Unbounded, Some(prefix.to_vec()));
        }
        Range::with_prefix(self.snapshot(), prefix)
    }

    /// Every entry, in key order, as now.
    pub fn iter(&self) -> Range {
        self.range::<&[u8], _>(..)
    }

    /// An O(1) snapshot of the state.
    fn snapshot(&self) -> crate::checkpoint::Tree {
        let st = self.shared.read_state();
        st.keys.tree().clone()
    }

    /// Up to `limit` entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = prefix.as_ref();
        if self.shared.tables.is_some() {
            let mut r = self.prefix(prefix);
            let entries: Vec<_> = r.by_ref().take(limit).collect();
            return match r.take_error() {
                Some(e) => Err(Error::Table(e)),
                None => Ok(entries),
            };
        }
        let start = Key::from(prefix);
        let st = self.shared.read_state();
        Ok(st
            .keys
            .tree()
            .range((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        if let Some(t) = &self.shared.tables {
            return t.len(&self.shared.poison);
        }
        self.shared.read_state().keys.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes a checkpoint now (or reports that the newest covers the state).
    /// On tables: flushes the memtable, then runs the compactions due (and
    /// waits for one running).
    pub fn checkpoint(&self) -> Result<CheckpointOutcome> {
        let outcome = self.shared.checkpoint()?;
        if let Some(t) = &self.shared.tables {
            t.compact_while_due(&self.shared.poison)?;
        }
        Ok(outcome)
    }

    /// Writes a backup of the store into `dest`, a directory that must not
    /// exist yet, while writes go on: consistent at one LSN (the last one
    /// durable when it starts), table and checkpoint files hard-linked where
    /// the file system allows (copied otherwise), the log copied up to that
    /// LSN, everything fsynced, and the directory marked complete last
    /// (`BACKUP`). A crash in between leaves `BACKUP-IN-PROGRESS` in it,
    /// which restore refuses. See [`crate::backup`].
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<crate::backup::BackupReport> {
        let sh = &self.shared;
        let dest = dest.as_ref();
        crate::backup::check_destination(&*sh.storage, dest)?;
        let root = sh.dir.root();
        // The capture: no flush or checkpoint runs meanwhile (they delete
        // log segments and checkpoints), so the files, the log start and
        // the LSN agree.
        let no_flush = sh.poison.lock(&sh.checkpoint_running, "checkpoint");
        let (files, manifest, version, log_from) = match &sh.tables {
            Some(t) => {
                let (version, edit) = t.backup_snapshot(&sh.poison);
                let files = edit
                    .added
                    .iter()
                    .map(|m| {
                        let name = crate::layout::table_file_name(m.number);
                        (
                            root.join(crate::layout::TABLES_DIR).join(&name),
                            PathBuf::from(crate::layout::TABLES_DIR).join(name),
                        )
                    })
                    .collect();
                let from = edit.log_start.unwrap_or(1);
                (files, Some(edit), Some(version), from)
            }
            None => {
                let newest = sh
                    .poison
                    .lock(&sh.checkpoints, "checkpoints")
                    .newest
                    .clone();
                match newest {
                    Some((lsn, path)) => {
                        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                        (vec![(path, name)], None, None, lsn + 1)
                    }
                    None => (Vec::new(), None, None, sh.wal.first_lsn()),
                }
            }
        };
        let pin = sh.wal.pin_from(log_from)?;
        // Under an interval or no-sync policy, writes are acknowledged
        // before they are durable: make them durable, so the backup holds
        // every write acknowledged before it began.
        sh.wal.sync()?;
        let captured = crate::backup::Captured {
            storage: Arc::clone(&sh.storage),
            log_dir: sh.dir.log_dir(),
            files,
            manifest,
            log_from,
            lsn: sh.wal.durable_lsn().max(log_from - 1),
            _pin: pin,
            _version: version,
        };
        if sh.tables.is_some() {
            // Tables stay pinned by the version; flushes may go on.
            drop(no_flush);
            return crate::backup::write(captured, dest);
        }
        // A checkpoint file is deleted two checkpoints later: checkpoints
        // wait until it is linked or copied (writes go on).
        let report = crate::backup::write(captured, dest);
        drop(no_flush);
        report
    }

    /// Counters and positions.
    pub fn stats(&self) -> Stats {
        let sh = &self.shared;
        let (keys, applied_lsn) = match &sh.tables {
            Some(t) => (t.len(&sh.poison), t.applied_lsn(&sh.poison)),
            None => {
                let st = sh.read_state();
                (st.keys.len(), st.applied_lsn)
            }
        };
        let tables = sh.tables.as_ref().map(|t| t.stats(&sh.poison));
        let log_start = sh.tables.as_ref().map(|t| t.log_start());
        let ck = sh.poison.lock(&sh.checkpoints, "checkpoints");
        Stats {
            keys,
            applied_lsn,
            durable_lsn: sh.wal.durable_lsn(),
            wal: sh.wal.stats(),
            log_segments: sh.wal.segment_paths().len(),
            log_bytes_since_checkpoint: sh.log_bytes_since_checkpoint.load(Ordering::Relaxed),
            checkpoint_lsn: match log_start {
                Some(s) => Some(s - 1).filter(|l| *l > 0),
                None => ck.newest.as_ref().map(|c| c.0),
            },
            checkpoint_time: ck.time,
            checkpoints_written: ck.written,
            checkpoints_failed: ck.failed,
            last_checkpoint_error: ck.last_error.clone(),
            recovery: sh.recovery.clone(),
            stopped: sh.wal.stopped().is_some() || sh.poison.check().is_err(),
            tables,
        }
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.shared.dir.root()
    }

    /// If writes have stopped after a failure, why (reads go on).
    pub fn stopped(&self) -> Option<Error> {
        if let Err(e) = self.shared.poison.check() {
            return Some(e);
        }
        self.shared.wal.stopped().map(Error::Wal)
    }

    /// Makes every write so far durable (a no-op under `Always`, where every
    /// acknowledged write already is).
    pub fn sync(&self) -> Result<()> {
        Ok(self.shared.wal.sync()?)
    }

    /// Makes every write so far durable (for `Interval`/`Never` policies),
    /// stops the checkpoint thread and releases the directory.
    pub fn close(mut self) -> Result<()> {
        self.stop_checkpointer();
        if self.shared.wal.stopped().is_none() {
            self.shared.wal.sync()?;
        }
        Ok(())
    }

    fn stop_checkpointer(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        {
            let (m, cv) = &self.shared.trigger;
            *self.shared.poison.lock(m, "checkpoint trigger") = true;
            cv.notify_all();
        }
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        if let Some(tables) = &self.shared.tables {
            tables.stop_counting(&self.shared.poison);
            tables.stop_compacting(&self.shared.poison);
        }
        for t in self.table_threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop_checkpointer();
    }
}

impl Shared {
    /// The state, for reading (a poisoned lock: crate::poison).
    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, TreeState> {
        self.poison.read(&self.state, "state")
    }

    fn check_key(&self, k: &[u8]) -> Result<()> {
        if k.is_empty() {
            return Err(Error::EmptyKey);
        }
        if k.len() > self.opts.max_key_len {
            return Err(Error::KeyTooLong {
                len: k.len(),
                max: self.opts.max_key_len,
            });
        }
        Ok(())
    }

    fn check_value(&self, _k: &[u8], v: &[u8]) -> Result<()> {
        if v.is_empty() && !self.opts.allow_empty_values {
            return Err(Error::EmptyValue);
        }
        if v.len() > self.opts.max_value_len {
            return Err(Error::ValueTooLarge {
                len: v.len(),
                max: self.opts.max_value_len,
            });
        }
        Ok(())
    }

    /// The record for [`Db::write_with_metadata`], checked like the write
    /// it holds, with the metadata's limits.
    fn check_with_metadata(&self, op: Option<Op>, metadata: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Op> {
        let bad = |why: String| Error::BadMetadata(why);
        crate::metadata::check(&metadata).map_err(|e| bad(e.to_string()))?;
        let op = match op {
            None => None,
            Some(Op::Put(k, v)) => {
                self.check_key(&k)?;
                self.check_value(&k, &v)?;
                Some(Op::Put(k, v))
            }
            Some(Op::Delete(k)) => {
                self.check_key(&k)?;
                Some(Op::Delete(k))
            }
            Some(Op::Clear) => Some(Op::Clear),
            Some(Op::Batch(ops)) => Some(self.check_batch(WriteBatch { ops })?),
            Some(Op::WithMetadata { .. }) => {
                return Err(bad("it holds another write with metadata".into()))
            }
        };
        Ok(Op::WithMetadata {
            metadata,
            op: op.map(Box::new),
        })
    }

    fn check_batch(&self, batch: WriteBatch) -> Result<Op> {
        for op in &batch.ops {
            match op {
                BatchOp::Put(k, v) => {
                    self.check_key(k)?;
                    self.check_value(k, v)?;
                }
                BatchOp::Delete(k) => self.check_key(k)?,
            }
        }
        let op = Op::Batch(batch.ops);
        if op.encoded_len() > self.opts.max_batch_bytes {
            return Err(Error::BatchTooLarge {
                len: op.encoded_len(),
                max: self.opts.max_batch_bytes,
            });
        }
        Ok(op)
    }

    /// Appends `op` and applies it (with every earlier queued op) in LSN order.
    fn submit(&self, op: Op) -> Result<u64> {
        self.poison.check()?;
        self.wait_for_room()?;
        let payload = op.encode();
        let lsn = self.wal.append_with(&payload, |lsn| {
            self.poison.lock(&self.queue, "queue").insert(lsn, op);
        })?;
        self.after_append(lsn, payload.len());
        // A lock found poisoned on the way: not acknowledged (outcome unknown).
        self.poison.check()?;
        Ok(lsn)
    }

    fn submit_deferred(&self, op: Op) -> Result<Deferred> {
        self.poison.check()?;
        self.wait_for_room()?;
        let payload = op.encode();
        let lsn = self.wal.enqueue_with(&payload, |lsn| {
            self.poison.lock(&self.queue, "queue").insert(lsn, op);
        })?;
        self.count_log_bytes(payload.len());
        self.poison.check()?;
        Ok(Deferred { lsn })
    }

    async fn submit_async(&self, op: Op) -> Result<u64> {
        self.poison.check()?;
        // A stall blocks this thread (at most while flushes catch up): the
        // engine has no async runtime to yield to.
        self.wait_for_room()?;
        let payload = op.encode();
        let lsn = self
            .wal
            .append_async_with(&payload, |lsn| {
                self.poison.lock(&self.queue, "queue").insert(lsn, op);
            })
            .await?;
        self.after_append(lsn, payload.len());
        // A lock found poisoned on the way: not acknowledged (outcome unknown).
        self.poison.check()?;
        Ok(lsn)
    }

    /// On tables: waits while flushes or compactions are behind (see
    /// `crate::on_tables`).
    fn wait_for_room(&self) -> Result<()> {
        match &self.tables {
            Some(t) => t.wait_for_room(&self.poison, &|| self.wake_background()),
            None => Ok(()),
        }
    }

    /// Wakes the background thread.
    fn wake_background(&self) {
        let (m, cv) = &self.trigger;
        let mut due = self.poison.lock(m, "checkpoint trigger");
        if !*due {
            *due = true;
            cv.notify_one();
        }
    }

    /// Record `lsn` is acknowledged, so is every record before it: apply all
    /// queued operations up to it, in order.
    fn after_append(&self, lsn: u64, bytes: usize) {
        self.apply_through(lsn);
        self.count_log_bytes(bytes);
    }

    /// Applies every queued operation up to `lsn`, in order. Call only once
    /// `lsn` is acknowledged.
    fn apply_through(&self, lsn: u64) {
        if let Some(t) = &self.tables {
            let wake = {
                let mut queue = self.poison.lock(&self.queue, "queue");
                let mut ready = Vec::new();
                while let Some(entry) = queue.first_entry() {
                    if *entry.key() > lsn {
                        break;
                    }
                    ready.push(entry.remove_entry());
                }
                // Still under the queue lock: applied in LSN order.
                !ready.is_empty() && t.apply(&self.poison, ready.into_iter())
            };
            if wake {
                self.wake_background();
            }
            return;
        }
        {
            let mut queue = self.poison.lock(&self.queue, "queue");
            if queue.first_key_value().is_some_and(|(l, _)| *l <= lsn) {
                let mut st = self.poison.write(&self.state, "state");
                while let Some(entry) = queue.first_entry() {
                    if *entry.key() > lsn {
                        break;
                    }
                    let (l, op) = entry.remove_entry();
                    debug_assert_eq!(l, st.applied_lsn + 1, "operations applied out of order");
                    let st = &mut *st;
                    st.keys.apply(op, &mut st.metadata);
                    st.applied_lsn = l;
                }
            }
        }
    }

    /// Counts log bytes towards the size trigger of the next checkpoint.
    fn count_log_bytes(&self, bytes: usize) {
        let since = self
            .log_bytes_since_checkpoint
            .fetch_add(bytes as u64 + RECORD_OVERHEAD, Ordering::Relaxed)
            + bytes as u64
            + RECORD_OVERHEAD;
        if self.opts.checkpoint_log_bytes.is_some_and(|t| since >= t) {
            self.wake_background();
        }
    }

    /// The checkpoint thread: checkpoints when the log-size or time trigger
    /// fires. After a failure it backs off (1 s, doubling to 60 s) whatever
    /// triggers in between: a full disk must not turn every write into a
    /// checkpoint attempt.
    fn checkpoint_loop(&self) {
        let (m, cv) = &self.trigger;
        // When the next attempt may start, and the current backoff.
        let mut retry: Option<(Instant, Duration)> = None;
        let mut due = self.poison.lock(m, "checkpoint trigger");
        loop {
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            let hold = retry.map(|(at, _)| at.saturating_duration_since(Instant::now()));
            let backing_off = hold.is_some_and(|d| !d.is_zero());
            let timed_out = if *due && !backing_off {
                false
            } else {
                let timeout = if backing_off {
                    hold
                } else {
                    self.opts.checkpoint_interval
                };
                let waited = self.poison.wait(cv, due, timeout, "checkpoint trigger");
                due = waited.0;
                waited.1
            };
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            if retry.is_some_and(|(at, _)| Instant::now() < at) {
                continue; // a trigger during the backoff waits for its end
            }
            if *due || timed_out {
                *due = false;
                drop(due);
                if self.wal.stopped().is_none() && self.poison.check().is_ok() {
                    retry = match self.background_work(timed_out) {
                        Ok(_) => None,
                        Err(e) => {
                            let wait = retry.map_or(CHECKPOINT_RETRY_MIN, |(_, d)| {
                                (d * 2).min(CHECKPOINT_RETRY_MAX)
                            });
                            tracing::error!(error = %e, retry_in = ?wait, "automatic checkpoint failed; the log keeps every write");
                            Some((Instant::now() + wait, wait))
                        }
                    };
                }
                due = self.poison.lock(m, "checkpoint trigger");
            }
        }
    }

    /// After a new checkpoint is durable, with `prev_lsn` the one before
    /// it (kept as a fallback, with the log after it): deletes the log
    /// segments and checkpoints older than that. Returns how many of each.
    fn remove_obsolete(&self, prev_lsn: u64) -> Result<(usize, usize)> {
        let segments_removed = self.wal.truncate_before(prev_lsn + 1)?;
        let (found, _) = self.dir.list_checkpoints(&*self.storage)?;
        let mut checkpoints_removed = 0;
        for (l, p) in found {
            if l < prev_lsn {
                self.storage
                    .remove(&p)
                    .map_err(|e| Error::io("removing an old checkpoint", &p, e))?;
                checkpoints_removed += 1;
            }
        }
        if checkpoints_removed > 0 {
            // The removals are durable only once the directory is.
            let root = self.dir.root();
            self.storage
                .sync_dir(root)
                .map_err(|e| Error::io("syncing the data directory", root, e))?;
        }
        Ok((segments_removed, checkpoints_removed))
    }

    /// What the background thread does when woken: a checkpoint; on
    /// tables, the flushes and compactions due, with a flush of the live
    /// memtable too when the log or time trigger fired.
    fn background_work(&self, timed_out: bool) -> Result<CheckpointOutcome> {
        if self.tables.is_none() {
            return self.checkpoint();
        }
        let log_bytes = self.log_bytes_since_checkpoint.load(Ordering::Relaxed);
        let force = timed_out
            || self
                .opts
                .checkpoint_log_bytes
                .is_some_and(|t| log_bytes >= t);
        self.flush_tables(force)
    }

    /// On tables: flushes (all frozen memtables, and the live one if
    /// `force`) and compacts.
    fn flush_tables(&self, force: bool) -> Result<CheckpointOutcome> {
        let Some(t) = &self.tables else {
            unreachable!("called only on tables")
        };
        let _one_at_a_time = self.poison.lock(&self.checkpoint_running, "checkpoint");
        let bytes_before = self.log_bytes_since_checkpoint.load(Ordering::Relaxed);
        let outcome = match t.flush(&self.wal, &self.poison, force) {
            Ok(o) => o,
            Err(e) => {
                let mut ck = self.poison.lock(&self.checkpoints, "checkpoints");
                ck.failed += 1;
                ck.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        if force {
            // Everything logged before the freeze is in tables now.
            self.log_bytes_since_checkpoint
                .fetch_sub(bytes_before, Ordering::Relaxed);
            let mut ck = self.poison.lock(&self.checkpoints, "checkpoints");
            ck.time = Some(SystemTime::now());
            ck.written += u64::from(outcome.written);
            ck.last_error = None;
        }
        if outcome.written {
            tracing::info!(
                lsn = outcome.lsn,
                segments_removed = outcome.segments_removed,
                "memtable flushed"
            );
        }
        Ok(outcome)
    }

    fn checkpoint(&self) -> Result<CheckpointOutcome> {
        if self.tables.is_some() {
            return self.flush_tables(true);
        }
        let _one_at_a_time = self.poison.lock(&self.checkpoint_running, "checkpoint");
        // O(1): the persistent map shares structure with the live one.
        let (tree, metadata, lsn) = {
            let st = self.read_state();
            (st.keys.tree().clone(), st.metadata.clone(), st.applied_lsn)
        };
        let bytes_at_snapshot = self.log_bytes_since_checkpoint.load(Ordering::Relaxed);
        let newest = self
            .poison
            .lock(&self.checkpoints, "checkpoints")
            .newest
            .clone();
        if newest.as_ref().is_some_and(|n| n.0 == lsn) || lsn == 0 {
            return Ok(CheckpointOutcome {
                lsn,
                written: false,
                segments_removed: 0,
                checkpoints_removed: 0,
            });
        }
        // Records up to `lsn` are applied, hence acknowledged; under Interval
        // or Never they may not be durable yet, and a checkpoint must never
        // get ahead of the log it replaces.
        self.wal.sync()?;
        let path = self.dir.checkpoint(lsn);
        if let Err(e) = checkpoint::write(
            &*self.storage,
            &path,
            lsn,
            &tree,
            &metadata,
            self.opts.checkpoint_bytes_per_sec,
        ) {
            let mut ck = self.poison.lock(&self.checkpoints, "checkpoints");
            ck.last_error = Some(e.to_string());
            ck.failed += 1;
            return Err(e);
        }
        self.log_bytes_since_checkpoint
            .fetch_sub(bytes_at_snapshot, Ordering::Relaxed);
        // The new checkpoint is durable. Keep it and the one before it (and
        // the log after that one); delete everything older.
        let previous = {
            let mut ck = self.poison.lock(&self.checkpoints, "checkpoints");
            let previous = ck.newest.replace((lsn, path));
            ck.previous = previous.clone();
            ck.time = Some(SystemTime::now());
            ck.written += 1;
            ck.last_error = None;
            previous
        };
        let (segments_removed, checkpoints_removed) = match previous {
            Some((prev_lsn, _)) => self.remove_obsolete(prev_lsn)?,
            None => (0, 0),
        };
        tracing::info!(
            lsn,
            keys = tree.len(),
            segments_removed,
            "checkpoint written"
        );
        Ok(CheckpointOutcome {
            lsn,
            written: true,
            segments_removed,
            checkpoints_removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_stops_writes_and_reads_go_on() {
        let dir = DataDir::new("/db");
        let s = keel_storage::SimStorage::new(3);
        let (db, _) = Db::builder(dir.root()).storage(Arc::new(s)).open().unwrap();
        db.put("k", "v").unwrap();
        let shared = Arc::clone(&db.shared);
        let _ = std::thread::spawn(move || {
            let _held = shared.queue.lock();
            panic!("a bug while holding the queue");
        })
        .join();
        assert!(db.stopped().is_none(), "noticed only when a lock is taken");
        let err = db.put("k2", "v").unwrap_err();
        assert!(matches!(err, Error::Poisoned { what: "queue" }), "{err}");
        assert!(err.is_stopped());
        assert!(db.put_deferred("k3", "v").is_err());
        assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()));
        assert!(db.stopped().is_some());
    }
}
