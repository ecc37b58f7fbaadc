//! [`KeelStateMachine`]: openraft's `RaftStateMachine` on keel's engine.
//!
//! A command is a list of encoded keel writes (`keel::op::Op`). An entry
//! of one write (or none, or a membership) is applied as one engine record
//! that also sets the engine's application metadata `raft.applied` (the
//! entry's log id) and, for a membership entry, `raft.membership`
//! (`keel::Db::write_with_metadata`). An entry of several writes is one
//! record per write: the last sets `raft.applied`, each before it sets
//! `raft.applying` (the entry's index, how many of its writes are in). So
//! after any crash the engine holds exactly the entries up to the log id it
//! reports, plus perhaps the first writes of the next one, which it skips
//! when that entry is applied again: no write is applied twice, and a
//! stale read never sees a key go back. An engine that lost its unsynced
//! tail re-applies from its recovered log id and reaches the same state:
//! the Raft log's fdatasync is what acknowledges a write.
//!
//! Directory (`dir`):
//! - `CURRENT`: the name of the engine's data directory in use, replaced
//!   durably (rule 4); installing a snapshot switches it;
//! - `data-<n>/`: engine data directories (all but the current one are
//!   left by an install and removed at the next open);
//! - `snapshots/snapshot-<index>-<term>.snap`: the newest snapshot
//!   (`crate::snapshot`), and `receiving-<n>` while one arrives;
//! - `work/`: backups being packed and snapshots being unpacked; emptied
//!   at open.
//!
//! A snapshot is a backup of the engine (`keel::Db::backup`: hard links
//! of its tables or checkpoint, the log cut at one LSN) taken while no
//! entry is being applied, so its metadata names exactly the entry it
//! holds, packed into one file. Installing one unpacks it, restores it
//! into a new data directory (`keel::restore`), checks that the store
//! opens at the snapshot's log id, and then switches `CURRENT`: a crash
//! before leaves the old state, after it the new one (with the received
//! file kept as its snapshot at the next open, if the crash came first).

use crate::snapshot::{self, SnapshotError, SnapshotFile};
use crate::{Command, CommandResult, Entry, LogId, SnapshotMeta, StorageError, TypeConfig};
use keel::{Db, Options, SyncPolicy};
use keel_storage::{IoError, Storage};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
    StoredMembership,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Metadata name of the last applied log id (24 bytes: term, node, index).
pub const APPLIED: &[u8] = b"raft.applied";
/// Metadata name of the last applied membership (JSON).
pub const MEMBERSHIP: &[u8] = b"raft.membership";
/// Metadata name of how far an entry of several writes was applied (16
/// bytes: the entry's index, then how many of its writes, little endian).
pub const APPLYING: &[u8] = b"raft.applying";

const CURRENT: &str = "CURRENT";
const SNAPSHOTS: &str = "snapshots";
const WORK: &str = "work";

/// The membership as openraft stores it.
pub type Membership = StoredMembership<u64, openraft::BasicNode>;

/// Why a state machine does not open.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] keel::Error),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Files of the directory are not what this module writes.
    #[error("{0}")]
    Damaged(String),
}

/// The engine a node serves reads from: replaced whole when a snapshot is
/// installed, so readers take the current one for each request.
#[derive(Clone)]
pub struct EngineHandle(Arc<RwLock<Arc<Db>>>);

impl EngineHandle {
    /// The engine now.
    pub fn current(&self) -> Arc<Db> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn replace(&self, db: Arc<Db>) -> Arc<Db> {
        std::mem::replace(&mut *self.0.write().unwrap_or_else(|p| p.into_inner()), db)
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    options: Options,
    sync: SyncPolicy,
    engine: EngineHandle,
    /// Names of work files and received snapshots.
    counter: AtomicU64,
    /// Serialises snapshot building and installing on the directory.
    snapshots: Mutex<()>,
}

/// keel's engine as openraft's state machine. See the module doc.
pub struct KeelStateMachine {
    shared: Arc<Shared>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn snapshot_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Snapshot(None), verb, e)
}

/// `term`, `node`, `index`, little endian.
pub fn encode_log_id(id: &LogId) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&id.leader_id.term.to_le_bytes());
    b.extend_from_slice(&id.leader_id.node_id.to_le_bytes());
    b.extend_from_slice(&id.index.to_le_bytes());
    b
}

/// The log id [`encode_log_id`] wrote.
pub fn decode_log_id(b: &[u8]) -> Option<LogId> {
    let n = |i: usize| {
        Some(u64::from_le_bytes(
            b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    if b.len() != 24 {
        return None;
    }
    Some(LogId::new(
        openraft::CommittedLeaderId::new(n(0)?, n(1)?),
        n(2)?,
    ))
}

/// The applied log id and membership the engine's metadata records.
pub fn applied_of(meta: &keel::Metadata) -> Result<(Option<LogId>, Membership), String> {
    let applied = match meta.get(APPLIED) {
        None => None,
        Some(b) => Some(decode_log_id(b).ok_or("raft.applied is not a log id")?),
    };
    let membership = match meta.get(MEMBERSHIP) {
        None => Membership::default(),
        Some(b) => serde_json::from_slice(b).map_err(|e| format!("raft.membership: {e}"))?,
    };
    Ok((applied, membership))
}

/// Whether the engine refused a write as bad input (nothing written): the
/// entry is still applied, as a no-op with the error as its result.
fn refused(e: &keel::Error) -> bool {
    use keel::Error::*;
    matches!(
        e,
        EmptyKey
            | KeyTooLong { .. }
            | EmptyValue
            | ValueTooLarge { .. }
            | BatchTooLarge { .. }
            | BadMetadata(_)
    )
}

/// At open: a received snapshot (`receiving-<n>`) whose install switched
/// `CURRENT` but was cut before keeping it (the engine's log id is the
/// snapshot's, and the file checks whole) is kept now as the current
/// snapshot, as the install would have; any other never finished and
/// goes, as do temp files. Without this, a node restarted there would hold
/// the new engine with an older snapshot (or none) whose log it had
/// already dropped.
fn finish_or_drop_received(
    storage: &dyn Storage,
    snaps: &Path,
    applied: Option<LogId>,
) -> Result<(), StateMachineError> {
    let listed = storage
        .list(snaps)
        .map_err(|e| IoError::new("listing snapshots", snaps, e))?;
    let mut kept = None;
    for n in &listed {
        if n.ends_with(".snap") {
            continue;
        }
        let path = snaps.join(n);
        let finished = n.starts_with("receiving-")
            && kept.is_none()
            && applied.is_some()
            && snapshot::check_whole(storage, &path).is_ok_and(|m| m.last_log_id == applied);
        if !finished {
            remove_file(storage, &path)?;
            continue;
        }
        let meta = snapshot::check_whole(storage, &path)?;
        let dest = snaps.join(snapshot::file_name(&meta));
        storage
            .rename(&path, &dest)
            .map_err(|e| IoError::new("keeping a received snapshot", &path, e))?;
        // The rename is durable only once its directory is (rule 2).
        storage
            .sync_dir(snaps)
            .map_err(|e| IoError::new("syncing a directory", snaps, e))?;
        kept = Some(dest);
    }
    if let Some(keep) = kept {
        for n in &listed {
            let path = snaps.join(n);
            if n.ends_with(".snap") && path != keep {
                remove_file(storage, &path)?;
            }
        }
    }
    Ok(())
}

/// The entry index and count of writes [`APPLYING`] records, if any.
fn applying_of(meta: &keel::Metadata) -> Option<(u64, u64)> {
    let b = meta.get(APPLYING)?;
    let index = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let done = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((index, done))
}

/// Applies the writes of the entry at `index`, one engine record each,
/// skipping the first `done` (an engine that recovered part of the entry
/// holds them). The last record sets `applied`; each before it sets
/// [`APPLYING`] to (`index`, writes up to it). A write refused as bad input
/// writes nothing and leaves its reason in `refusals` (one per write);
/// if it is the last, a record of `applied` alone is written. Returns the
/// LSN of the last record.
fn apply_writes(
    db: &Db,
    index: u64,
    applied: (Vec<u8>, Vec<u8>),
    writes: Vec<Vec<u8>>,
    done: u64,
    refusals: &mut Vec<Option<String>>,
) -> Result<u64, keel::Error> {
    let n = writes.len();
    let mut lsn = None;
    for (i, bytes) in writes.into_iter().enumerate() {
        let is_last = i + 1 == n;
        if (i as u64) < done && !is_last {
            refusals.push(None);
            continue;
        }
        let metadata = if is_last {
            vec![applied.clone()]
        } else {
            let mut part = index.to_le_bytes().to_vec();
            part.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            vec![(APPLYING.to_vec(), part)]
        };
        let mut why = None;
        let written = match keel::op::Op::decode(&bytes) {
            Ok(op) => match db.write_with_metadata_deferred(Some(op), metadata.clone()) {
                Err(e) if refused(&e) => {
                    why = Some(e.to_string());
                    None
                }
                other => Some(other?),
            },
            Err(e) => {
                why = Some(format!("not a keel write: {e}"));
                None
            }
        };
        let written = match written {
            None if is_last => Some(db.write_with_metadata_deferred(None, metadata)?),
            w => w,
        };
        if let Some(w) = written {
            lsn = Some(w.lsn());
        }
        refusals.push(why);
    }
    match lsn {
        Some(lsn) => Ok(lsn),
        // No writes at all: the entry still advances the applied log id.
        None => Ok(db.write_with_metadata_deferred(None, vec![applied])?.lsn()),
    }
}

impl Shared {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn open_engine(&self, name: &str) -> Result<Db, keel::Error> {
        open_engine(&self.storage, &self.path(name), &self.options, self.sync)
    }

    /// A number for a new name under `work/`, `snapshots/` or `data-`,
    /// used by nothing on disk: the storage trait removes files, not
    /// directories, so an emptied `work/backup-N/` of an earlier run stays
    /// (and a backup refuses an existing directory).
    fn next(&self) -> Result<u64, IoError> {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let names = [
                self.path(WORK).join(format!("backup-{n}")),
                self.path(WORK).join(format!("unpacked-{n}")),
                self.path(SNAPSHOTS).join(format!("receiving-{n}")),
                self.path(&data_name(n)),
            ];
            let mut free = true;
            for p in &names {
                free &= !self
                    .storage
                    .exists(p)
                    .map_err(|e| IoError::new("checking for a name in use", p, e))?;
            }
            if free {
                return Ok(n);
            }
        }
    }

    /// The newest complete snapshot, if any.
    fn newest_snapshot(&self) -> Result<Option<PathBuf>, IoError> {
        let dir = self.path(SNAPSHOTS);
        let mut names: Vec<String> = self
            .storage
            .list(&dir)
            .map_err(|e| IoError::new("listing snapshots", &dir, e))?
            .into_iter()
            .filter(|n| n.starts_with("snapshot-") && n.ends_with(".snap"))
            .collect();
        names.sort();
        Ok(names.pop().map(|n| dir.join(n)))
    }

    /// Removes every snapshot file but `keep`.
    fn remove_snapshots_but(&self, keep: &Path) -> Result<(), IoError> {
        let dir = self.path(SNAPSHOTS);
        for n in self
            .storage
            .list(&dir)
            .map_err(|e| IoError::new("listing snapshots", &dir, e))?
        {
            let p = dir.join(&n);
            if p != keep && n.starts_with("snapshot-") {
                remove_file(&*self.storage, &p)?;
            }
        }
        Ok(())
    }
}

fn open_engine(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    options: &Options,
    sync: SyncPolicy,
) -> Result<Db, keel::Error> {
    Db::builder(dir)
        .options(options.clone())
        .sync(sync)
        .storage(Arc::clone(storage))
        .open()
        .map(|(db, _)| db)
}

fn remove_file(storage: &dyn Storage, p: &Path) -> Result<(), IoError> {
    storage
        .remove(p)
        .map_err(|e| IoError::new("removing a file", p, e))
}

/// Removes every file under `dir` (and its subdirectories), leaving the
/// directories (the storage trait removes files only).
fn remove_tree(storage: &dyn Storage, dir: &Path) -> Result<(), IoError> {
    for n in storage
        .list(dir)
        .map_err(|e| IoError::new("listing a directory", dir, e))?
    {
        let p = dir.join(&n);
        if storage.list(&p).is_ok() {
            remove_tree(storage, &p)?;
        } else {
            remove_file(storage, &p)?;
        }
    }
    Ok(())
}

fn data_name(n: u64) -> String {
    format!("data-{n:020}")
}

fn parse_data_name(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("data-")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl KeelStateMachine {
    /// Opens (or creates) the state machine in `dir`: its engine opened
    /// with `options` and the `sync` policy (a node may use
    /// [`SyncPolicy::Never`]: the Raft log's fdatasync acknowledges writes,
    /// and the engine re-applies what it lost), stale work files and data
    /// directories removed.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        options: Options,
        sync: SyncPolicy,
    ) -> Result<(KeelStateMachine, EngineHandle), StateMachineError> {
        let dir = dir.as_ref().to_path_buf();
        keel_storage::create_dir_durable(&*storage, &dir)?;
        for sub in [SNAPSHOTS, WORK] {
            keel_storage::create_dir_durable(&*storage, &dir.join(sub))?;
        }
        let current_path = dir.join(CURRENT);
        let current = if storage
            .exists(&current_path)
            .map_err(|e| IoError::new("checking for CURRENT", &current_path, e))?
        {
            let file = storage
                .open(&current_path, keel_storage::OpenMode::Read)
                .map_err(|e| IoError::new("opening CURRENT", &current_path, e))?;
            let mut b = vec![
                0u8;
                file.len()
                    .map_err(|e| IoError::new("reading CURRENT", &current_path, e))?
                    as usize
            ];
            file.read_exact_at(&mut b, 0)
                .map_err(|e| IoError::new("reading CURRENT", &current_path, e))?;
            let text = String::from_utf8_lossy(&b);
            let name = text.trim_end_matches('\n');
            parse_data_name(name).ok_or_else(|| {
                StateMachineError::Damaged(format!(
                    "{} names {name:?}, not an engine directory (data-<20 digits>)",
                    current_path.display()
                ))
            })?
        } else {
            0
        };
        // Work files and received snapshots never finished; data
        // directories a switch left behind.
        remove_tree(&*storage, &dir.join(WORK))?;
        let listed = storage
            .list(&dir)
            .map_err(|e| IoError::new("listing a directory", &dir, e))?;
        for n in &listed {
            if parse_data_name(n).is_some_and(|g| g != current) {
                remove_tree(&*storage, &dir.join(n))?;
            }
        }
        let db = open_engine(&storage, &dir.join(data_name(current)), &options, sync)?;
        let (applied, _) = applied_of(&db.metadata()).map_err(StateMachineError::Damaged)?;
        finish_or_drop_received(&*storage, &dir.join(SNAPSHOTS), applied)?;
        let engine = EngineHandle(Arc::new(RwLock::new(Arc::new(db))));
        let shared = Shared {
            storage,
            dir,
            options,
            sync,
            engine: engine.clone(),
            counter: AtomicU64::new(current + 1),
            snapshots: Mutex::new(()),
        };
        Ok((
            KeelStateMachine {
                shared: Arc::new(shared),
            },
            engine,
        ))
    }

    /// The engine now.
    pub fn engine(&self) -> Arc<Db> {
        self.shared.engine.current()
    }
}

/// A snapshot being built: the backup taken when it was asked for (no
/// entry being applied), packed by [`RaftSnapshotBuilder::build_snapshot`].
pub struct KeelSnapshotBuilder {
    shared: Arc<Shared>,
    /// The backup directory and the meta it holds, or why it failed.
    backup: Result<(PathBuf, SnapshotMeta), String>,
}

impl KeelSnapshotBuilder {
    fn build(&self) -> Result<(SnapshotMeta, PathBuf), StateMachineError> {
        let (backup, meta) = self
            .backup
            .as_ref()
            .map_err(|e| StateMachineError::Damaged(e.clone()))?;
        let sh = &self.shared;
        let _one = sh.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let dest = sh.path(SNAPSHOTS).join(snapshot::file_name(meta));
        if !sh
            .storage
            .exists(&dest)
            .map_err(|e| IoError::new("checking for a snapshot", &dest, e))?
        {
            snapshot::pack(&*sh.storage, backup, meta, &dest)?;
        }
        remove_tree(&*sh.storage, backup)?;
        sh.remove_snapshots_but(&dest)?;
        Ok((snapshot::read_meta(&*sh.storage, &dest)?, dest))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for KeelSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, path) = self
            .build()
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let file = SnapshotFile::open(&*self.shared.storage, &path)
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl KeelStateMachine {
    /// Applies `entries` as engine records (module doc); one commit for
    /// all of them.
    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Vec<CommandResult>, keel::Error> {
        let started = std::time::Instant::now();
        let db = self.engine();
        let mut results = Vec::new();
        let mut last = None;
        // Read once, and only if an entry of several writes comes.
        let mut applying: Option<Option<(u64, u64)>> = None;
        for e in entries {
            let applied = (APPLIED.to_vec(), encode_log_id(&e.log_id));
            let mut refusals = Vec::new();
            let lsn = match e.payload {
                EntryPayload::Blank => db.write_with_metadata_deferred(None, vec![applied])?.lsn(),
                EntryPayload::Membership(m) => {
                    let stored = Membership::new(Some(e.log_id), m);
                    let json = serde_json::to_vec(&stored).expect("a membership serialises");
                    let metadata = vec![applied, (MEMBERSHIP.to_vec(), json)];
                    db.write_with_metadata_deferred(None, metadata)?.lsn()
                }
                EntryPayload::Normal(Command { writes }) => {
                    let mut done = 0;
                    if writes.len() > 1 {
                        let part = *applying.get_or_insert_with(|| applying_of(&db.metadata()));
                        if let Some((index, n)) = part {
                            if index == e.log_id.index {
                                done = n;
                            }
                        }
                    }
                    apply_writes(&db, e.log_id.index, applied, writes, done, &mut refusals)?
                }
            };
            last = Some(lsn);
            results.push(CommandResult {
                index: e.log_id.index,
                refused: refusals,
            });
        }
        if let Some(lsn) = last {
            db.commit_through(lsn)?;
        }
        metrics::histogram!("keel_raft_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("keel_raft_entries_applied_total").increment(results.len() as u64);
        Ok(results)
    }

    /// Backs the engine up for a snapshot, now (nothing is being applied).
    fn take_backup(&self) -> Result<(PathBuf, SnapshotMeta), StateMachineError> {
        let sh = &self.shared;
        let db = self.engine();
        let (last_log_id, last_membership) =
            applied_of(&db.metadata()).map_err(StateMachineError::Damaged)?;
        let n = sh.next()?;
        let backup = sh.path(WORK).join(format!("backup-{n}"));
        db.backup(&backup)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!(
                "{}-{}-{n}",
                last_log_id.map_or(0, |l| l.leader_id.term),
                last_log_id.map_or(0, |l| l.index)
            ),
        };
        Ok((backup, meta))
    }

    /// Installs the received snapshot `file`, named `path` (module doc).
    fn install(
        &self,
        meta: &SnapshotMeta,
        file: &dyn keel_storage::StorageFile,
        path: &Path,
    ) -> Result<(), StateMachineError> {
        let sh = &self.shared;
        let _one = sh.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let n = sh.next()?;
        let unpacked = sh.path(WORK).join(format!("unpacked-{n}"));
        let held = snapshot::unpack(&*sh.storage, file, path, &unpacked)?;
        if held.last_log_id != meta.last_log_id {
            return Err(StateMachineError::Damaged(format!(
                "the snapshot received holds {:?}, not the {:?} announced",
                held.last_log_id, meta.last_log_id
            )));
        }
        let name = data_name(n);
        let into = sh.path(&name);
        let req = keel::restore::RestoreRequest {
            backup: &unpacked,
            into: &into,
            archive_dir: None,
            source: None,
            target: keel::restore::RestoreTarget::Latest,
        };
        keel::restore::restore(Arc::clone(&sh.storage), &req)?;
        let db = sh.open_engine(&name)?;
        let (applied, _) = applied_of(&db.metadata()).map_err(StateMachineError::Damaged)?;
        if applied != meta.last_log_id {
            return Err(StateMachineError::Damaged(format!(
                "the restored engine applied {applied:?}, not the snapshot's {:?}",
                meta.last_log_id
            )));
        }
        // The switch: before it the old engine is the state, after it the
        // new one (temp file, fsync, rename, directory fsync).
        keel_storage::write_atomic(&*sh.storage, &sh.path(CURRENT), |f, _| {
            f.write_at(format!("{name}\n").as_bytes(), 0)
        })?;
        drop(sh.engine.replace(Arc::new(db)));
        // Kept as the current snapshot; the others, and the work files, go.
        let dest = sh.path(SNAPSHOTS).join(snapshot::file_name(meta));
        let exists = |p: &Path| {
            sh.storage
                .exists(p)
                .map_err(|e| IoError::new("checking for a snapshot", p, e))
        };
        if path != dest && exists(path)? {
            sh.storage
                .rename(path, &dest)
                .map_err(|e| IoError::new("keeping a received snapshot", path, e))?;
            // The rename is durable only once its directory is (rule 2).
            sh.storage
                .sync_dir(&sh.path(SNAPSHOTS))
                .map_err(|e| IoError::new("syncing a directory", sh.path(SNAPSHOTS), e))?;
        } else if !exists(&dest)? {
            // A snapshot handed back whose file a newer one replaced.
            snapshot::copy(&*sh.storage, file, &dest)?;
        }
        sh.remove_snapshots_but(&dest)?;
        remove_tree(&*sh.storage, &unpacked)?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for KeelStateMachine {
    type SnapshotBuilder = KeelSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        applied_of(&self.engine().metadata()).map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        self.apply_entries(entries)
            .map_err(|why| sm_err(ErrorVerb::Write, why))
    }

    async fn get_snapshot_builder(&mut self) -> KeelSnapshotBuilder {
        KeelSnapshotBuilder {
            shared: Arc::clone(&self.shared),
            backup: self.take_backup().map_err(|e| e.to_string()),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let sh = &self.shared;
        let path = sh.path(SNAPSHOTS).join(format!(
            "receiving-{}",
            sh.next().map_err(|e| snapshot_err(ErrorVerb::Write, e))?
        ));
        let file = SnapshotFile::create(&*sh.storage, &path)
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        // The bytes received, and the file's name (rule 2), durable before
        // the switch relies on them: a crash after the switch finds the
        // file at open and keeps it (`finish_or_drop_received`).
        snapshot
            .file()
            .sync_data()
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        if let Some(dir) = snapshot.path().parent() {
            self.shared
                .storage
                .sync_dir(dir)
                .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        }
        let installed = self.install(meta, &**snapshot.file(), snapshot.path());
        if installed.is_err() {
            // What a failed install leaves is never read; it goes now (and
            // at the next open, if this fails too).
            let sh = &self.shared;
            let _ = remove_tree(&*sh.storage, &sh.path(WORK));
            if snapshot.path().starts_with(sh.path(SNAPSHOTS))
                && snapshot
                    .path()
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("receiving-"))
            {
                let _ = remove_file(&*sh.storage, snapshot.path());
            }
        }
        installed.map_err(|e| snapshot_err(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let sh = &self.shared;
        let Some(path) = sh
            .newest_snapshot()
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let meta = snapshot::read_meta(&*sh.storage, &path)
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        let file = SnapshotFile::open(&*sh.storage, &path)
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
