//! [`SimStorage`]: deterministic in-memory storage that can crash and fail.
//!
//! Every file has two images: the *volatile* one that reads see (the page
//! cache) and the *durable* one (the disk). Writes, truncations and
//! allocations go to the volatile image and are queued as pending operations;
//! `sync_data`/`sync_all` moves a file's pending operations into its durable
//! image. Directory entries work the same way: creates, renames and removes
//! change the visible namespace at once and are queued; `sync_dir` makes the
//! queued changes of that directory durable.
//!
//! [`SimStorage::crash`] freezes the storage (every later call fails, as in a
//! dead machine) and returns a new storage holding what a disk could show
//! after power loss: the durable image, plus a random choice, per file, of
//! the pending operations — none, a prefix, a prefix with the next write torn
//! (part kept, the rest zeros, garbage or old bytes), or an arbitrary subset
//! applied out of order — and a random prefix of the queued directory changes
//! (metadata is journaled in order, as on ext4). Directories themselves are
//! taken to be durable once created.
//!
//! Faults: [`SimStorage::inject`] fails the Nth operation of a kind, once or
//! from then on, with EIO, ENOSPC or a short write. A failed sync drops the
//! file's pending operations from what can become durable while reads still
//! see them — exactly the Linux behaviour behind PostgreSQL's "fsyncgate", so
//! a caller that retries the sync and carries on is caught losing data.
//!
//! All randomness comes from one seeded [`SplitMix64`]: a single-threaded run
//! replays exactly from its seed.

use super::{LockGuard, OpenMode, Storage, StorageFile};
use crate::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The operations a [`Fault`] can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// `write_at`, `set_len`, `allocate`.
    Write,
    /// `sync_data` and `sync_all`.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// `open` with `CreateNew`.
    Create,
    /// `rename`.
    Rename,
    /// `remove`.
    Remove,
    /// Any of the above (every mutating or syncing operation).
    Any,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with EIO and has no effect (for a sync: the
    /// pending data is lost from the durable image).
    Eio,
    /// The operation fails with ENOSPC and has no effect.
    Enospc,
    /// For a write: the first half of the bytes are written, then ENOSPC.
    /// Other operations fail as with `Enospc`.
    ShortWrite,
    /// The machine dies at this operation: it has no effect and the storage
    /// freezes (every call fails) until [`SimStorage::crash`] is called.
    Crash,
}

/// A fault to inject: the `nth` (1-based, counted from injection) operation
/// of kind `op` fails with `kind`; with `persistent`, every later one too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which operations count.
    pub op: FaultOp,
    /// The first operation that fails, 1-based.
    pub nth: u64,
    /// Whether every later matching operation fails as well.
    pub persistent: bool,
    /// How it fails.
    pub kind: FaultKind,
}

/// How pending (unsynced) writes survive a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Choose one of the modes below at random, per file.
    Random,
    /// Every unsynced operation is lost.
    DropUnsynced,
    /// A random prefix of the unsynced operations survives.
    Prefix,
    /// A random prefix survives, and the next write is torn.
    Torn,
    /// A random subset survives, applied out of order.
    Reorder,
    /// Everything written survives (a process crash, not a power loss).
    KeepAll,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link {
        path: PathBuf,
        inode: u64,
    },
    Unlink {
        path: PathBuf,
    },
    /// Atomic, as rename(2) is: after a crash the old name or the new one.
    Rename {
        from: PathBuf,
        to: PathBuf,
        inode: u64,
    },
    /// A directory created: like a file's name, an entry in its parent,
    /// durable only once the parent is synced.
    MkDir {
        path: PathBuf,
    },
}

impl DirOp {
    fn dir(&self) -> PathBuf {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } | DirOp::MkDir { path } => {
                super::parent_dir(path)
            }
            DirOp::Rename { to, .. } => super::parent_dir(to),
        }
    }

    fn apply(self, names: &mut BTreeMap<PathBuf, u64>, dirs: &mut BTreeSet<PathBuf>) {
        match self {
            DirOp::MkDir { path } => {
                dirs.insert(path);
            }
            DirOp::Link { path, inode } => {
                names.insert(path, inode);
            }
            DirOp::Unlink { path } => {
                names.remove(&path);
            }
            DirOp::Rename { from, to, inode } => {
                names.remove(&from);
                names.insert(to, inode);
            }
        }
    }
}

struct ArmedFault {
    fault: Fault,
    seen: u64,
}

/// Armed faults and their operation counts; shared by [`SimStorage`] and
/// [`FaultyStorage`](super::FaultyStorage).
#[derive(Default)]
pub(crate) struct FaultPlan {
    faults: Vec<ArmedFault>,
}

impl FaultPlan {
    pub(crate) fn arm(&mut self, fault: Fault) {
        self.faults.push(ArmedFault { fault, seen: 0 });
    }

    fn clear(&mut self) {
        self.faults.clear();
    }

    /// Counts one operation of kind `op`; the fault that fires, if any.
    pub(crate) fn check(&mut self, op: FaultOp) -> Option<FaultKind> {
        let mut hit = None;
        for armed in &mut self.faults {
            if armed.fault.op == op || armed.fault.op == FaultOp::Any {
                armed.seen += 1;
                let fires = if armed.fault.persistent {
                    armed.seen >= armed.fault.nth
                } else {
                    armed.seen == armed.fault.nth
                };
                if fires && hit.is_none() {
                    hit = Some(armed.fault.kind);
                }
            }
        }
        hit
    }
}

struct State {
    rng: SplitMix64,
    frozen: bool,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dir_log: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    /// The directories that survive a crash (created, and their parent
    /// synced since).
    durable_dirs: BTreeSet<PathBuf>,
    faults: FaultPlan,
    capacity: Option<u64>,
    ops: u64,
    syncs: u64,
    /// Held locks and what their holders recorded (not durable: locks die
    /// with the machine).
    locks: HashMap<PathBuf, String>,
}

/// Deterministic simulated storage; clones share the same state.
#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

struct SimFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    writable: bool,
}

/// The directories that always exist: the root and the working directory.
fn is_root(dir: &Path) -> bool {
    dir == Path::new(".") || dir == Path::new("/")
}

fn frozen_err() -> io::Error {
    io::Error::other("simulated machine has crashed; this storage accepts no more calls")
}

/// The error an injected fault of `kind` returns.
pub(crate) fn fault_error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::Eio => io::Error::from_raw_os_error(5),
        FaultKind::Enospc | FaultKind::ShortWrite => io::Error::from_raw_os_error(28),
        FaultKind::Crash => frozen_err(),
    }
}

fn apply(buf: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let off = *offset as usize;
            if buf.len() < off + data.len() {
                buf.resize(off + data.len(), 0);
            }
            buf[off..off + data.len()].copy_from_slice(data);
        }
        Pending::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

impl State {
    /// Counts an operation and returns the fault to apply, if any.
    fn check(&mut self, op: FaultOp) -> io::Result<Option<FaultKind>> {
        if self.frozen {
            return Err(frozen_err());
        }
        self.ops += 1;
        let hit = self.faults.check(op);
        if hit == Some(FaultKind::Crash) {
            self.frozen = true;
        }
        Ok(hit)
    }

    fn used_bytes(&self) -> u64 {
        self.inodes.values().map(|i| i.volatile.len() as u64).sum()
    }

    fn check_space(&self, inode: u64, new_len: u64) -> io::Result<()> {
        if let Some(cap) = self.capacity {
            let cur = self.inodes[&inode].volatile.len() as u64;
            if new_len > cur && self.used_bytes() + (new_len - cur) > cap {
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        Ok(())
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        is_root(dir) || self.dirs.contains(dir)
    }

    /// The durable content of a file after a crash, given the mode.
    fn crash_content(&mut self, inode: u64, mode: CrashMode) -> Vec<u8> {
        let node = &self.inodes[&inode];
        let mut out = node.durable.clone();
        let pending = node.pending.clone();
        let n = pending.len();
        let mode = match mode {
            CrashMode::Random => match self.rng.below(5) {
                0 => CrashMode::DropUnsynced,
                1 => CrashMode::Prefix,
                2 | 3 => CrashMode::Torn,
                _ => CrashMode::Reorder,
            },
            m => m,
        };
        match mode {
            CrashMode::DropUnsynced | CrashMode::Random => {}
            CrashMode::KeepAll => pending.iter().for_each(|p| apply(&mut out, p)),
            CrashMode::Prefix | CrashMode::Torn => {
                let keep = self.rng.below(n as u64 + 1) as usize;
                pending[..keep].iter().for_each(|p| apply(&mut out, p));
                if mode == CrashMode::Torn && keep < n {
                    if let Pending::Write { offset, data } = &pending[keep] {
                        self.tear(&mut out, *offset, data);
                    }
                }
            }
            CrashMode::Reorder => {
                for p in &pending {
                    if self.rng.chance(1, 2) {
                        apply(&mut out, p);
                    }
                }
            }
        }
        out
    }

    /// Applies part of a write: a random prefix of it survives and the rest
    /// of its range is zeros, garbage, or left as it was.
    fn tear(&mut self, out: &mut Vec<u8>, offset: u64, data: &[u8]) {
        let kept = self.rng.below(data.len() as u64 + 1) as usize;
        let mut torn = data.to_vec();
        match self.rng.below(3) {
            0 => torn[kept..].fill(0),
            1 => self.rng.fill(&mut torn[kept..]),
            _ => torn.truncate(kept),
        }
        apply(out, &Pending::Write { offset, data: torn });
    }
}

impl SimStorage {
    /// An empty simulated storage whose every random choice follows `seed`.
    pub fn new(seed: u64) -> Self {
        SimStorage {
            state: Arc::new(Mutex::new(State {
                rng: SplitMix64::new(seed),
                frozen: false,
                next_inode: 1,
                inodes: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dir_log: Vec::new(),
                dirs: BTreeSet::new(),
                durable_dirs: BTreeSet::new(),
                faults: FaultPlan::default(),
                capacity: None,
                ops: 0,
                syncs: 0,
                locks: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread must not hide the storage from the checker.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a fault; its operation count starts now.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.arm(fault);
    }

    /// Removes every armed fault (space and I/O come back).
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Limits the total size of all files (None: unlimited). A write or
    /// allocation that would pass it fails with ENOSPC and changes nothing.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes held by all files now (what [`set_capacity`](Self::set_capacity)
    /// counts against).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Operations counted so far (mutations and syncs; reads are not counted).
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Successful `sync_data`/`sync_all` calls so far.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Whether a `Crash` fault fired or [`crash`](Self::crash) was called.
    pub fn is_frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Simulates power loss with [`CrashMode::Random`].
    pub fn crash(&self) -> SimStorage {
        self.crash_with(CrashMode::Random)
    }

    /// Simulates power loss: this storage freezes and the returned one holds
    /// what survived, chosen by `mode` and the seeded generator.
    pub fn crash_with(&self, mode: CrashMode) -> SimStorage {
        let mut st = self.lock();
        st.frozen = true;
        let mut names = st.durable_names.clone();
        let mut dirs = st.durable_dirs.clone();
        let keep_dir_ops = match mode {
            CrashMode::KeepAll => st.dir_log.len(),
            CrashMode::DropUnsynced => 0,
            _ => {
                let n = st.dir_log.len() as u64;
                st.rng.below(n + 1) as usize
            }
        };
        for op in st.dir_log[..keep_dir_ops].iter().cloned() {
            op.apply(&mut names, &mut dirs);
        }
        // A directory whose own entry was lost takes its contents with it.
        // Sorted order visits a parent before its children.
        let mut kept_dirs = BTreeSet::new();
        for d in dirs {
            if is_root(&super::parent_dir(&d)) || kept_dirs.contains(&super::parent_dir(&d)) {
                kept_dirs.insert(d);
            }
        }
        let dirs = kept_dirs;
        names.retain(|p, _| {
            let parent = super::parent_dir(p);
            is_root(&parent) || dirs.contains(&parent)
        });
        let mut inodes = HashMap::new();
        let live: BTreeSet<u64> = names.values().copied().collect();
        for inode in live {
            let content = st.crash_content(inode, mode);
            inodes.insert(
                inode,
                Inode {
                    volatile: content.clone(),
                    durable: content,
                    pending: Vec::new(),
                },
            );
        }
        let seed = st.rng.next_u64();
        SimStorage {
            state: Arc::new(Mutex::new(State {
                rng: SplitMix64::new(seed),
                frozen: false,
                next_inode: st.next_inode,
                inodes,
                names: names.clone(),
                durable_names: names,
                dir_log: Vec::new(),
                dirs: dirs.clone(),
                durable_dirs: dirs,
                faults: FaultPlan::default(),
                capacity: st.capacity,
                ops: 0,
                syncs: 0,
                locks: HashMap::new(),
            })),
        }
    }

    /// The visible content of a file (for tests that damage or inspect it).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let inode = st.names.get(path).ok_or_else(not_found)?;
        Ok(st.inodes[inode].volatile.clone())
    }

    /// Replaces a file's content, durably (for tests that damage a log).
    pub fn write_file_durably(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let inode = *st.names.get(path).ok_or_else(not_found)?;
        // Invariant: every name maps to an inode that exists.
        let node = st.inodes.get_mut(&inode).expect("named inode exists");
        node.volatile = data.to_vec();
        node.durable = data.to_vec();
        node.pending.clear();
        Ok(())
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file in simulated storage")
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        let inode = match mode {
            OpenMode::Read | OpenMode::ReadWrite => *st.names.get(path).ok_or_else(not_found)?,
            OpenMode::CreateNew => {
                if !st.dir_exists(&super::parent_dir(path)) {
                    return Err(not_found());
                }
                if st.names.contains_key(path) {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
                }
                if let Some(kind) = st.check(FaultOp::Create)? {
                    return Err(fault_error(kind));
                }
                let inode = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(inode, Inode::default());
                st.names.insert(path.to_path_buf(), inode);
                st.dir_log.push(DirOp::Link {
                    path: path.to_path_buf(),
                    inode,
                });
                inode
            }
        };
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            writable: mode != OpenMode::Read,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        let mut created: Vec<PathBuf> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !is_root(a) && !st.dirs.contains(*a))
            .map(Path::to_path_buf)
            .collect();
        created.reverse();
        for d in created {
            st.dirs.insert(d.clone());
            st.dir_log.push(DirOp::MkDir { path: d });
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        if !st.dir_exists(dir) {
            return Err(not_found());
        }
        Ok(st
            .names
            .keys()
            .filter(|p| super::parent_dir(p) == dir)
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let inode = *st.names.get(from).ok_or_else(not_found)?;
        if let Some(kind) = st.check(FaultOp::Rename)? {
            return Err(fault_error(kind));
        }
        st.names.remove(from);
        st.names.insert(to.to_path_buf(), inode);
        st.dir_log.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            inode,
        });
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        let inode = *st.names.get(from).ok_or_else(not_found)?;
        if !st.dir_exists(&super::parent_dir(to)) {
            return Err(not_found());
        }
        if st.names.contains_key(to) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        if let Some(kind) = st.check(FaultOp::Create)? {
            return Err(fault_error(kind));
        }
        st.names.insert(to.to_path_buf(), inode);
        st.dir_log.push(DirOp::Link {
            path: to.to_path_buf(),
            inode,
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if !st.names.contains_key(path) {
            return Err(not_found());
        }
        if let Some(kind) = st.check(FaultOp::Remove)? {
            return Err(fault_error(kind));
        }
        st.names.remove(path);
        st.dir_log.push(DirOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(kind) = st.check(FaultOp::SyncDir)? {
            return Err(fault_error(kind));
        }
        let log = std::mem::take(&mut st.dir_log);
        let (now, later): (Vec<DirOp>, Vec<DirOp>) =
            log.into_iter().partition(|op| op.dir() == dir);
        let st = &mut *st;
        for op in now {
            op.apply(&mut st.durable_names, &mut st.durable_dirs);
        }
        st.dir_log = later;
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        Ok(st.names.contains_key(path) || st.dirs.contains(path))
    }

    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        let mut st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        if let Some(current) = st.locks.get(path) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, current.clone()));
        }
        st.locks.insert(path.to_path_buf(), holder.to_string());
        Ok(LockGuard::new(Box::new(SimLock {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
        })))
    }
}

struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.locks.remove(&self.path);
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mutate(&self, op: Pending) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        let mut st = self.lock();
        let new_len = match &op {
            Pending::Write { offset, data } => {
                let cur = st.inodes[&self.inode].volatile.len() as u64;
                cur.max(offset + data.len() as u64)
            }
            Pending::SetLen(len) => *len,
        };
        let fault = st.check(FaultOp::Write)?;
        let op = match (fault, op) {
            (None, op) => op,
            (Some(FaultKind::ShortWrite), Pending::Write { offset, data }) => {
                let half = Pending::Write {
                    offset,
                    data: data[..data.len() / 2].to_vec(),
                };
                // Invariant: an open handle keeps its inode (inodes are never freed).
                let node = st.inodes.get_mut(&self.inode).expect("open inode exists");
                apply(&mut node.volatile, &half);
                node.pending.push(half);
                return Err(fault_error(FaultKind::ShortWrite));
            }
            (Some(kind), _) => return Err(fault_error(kind)),
        };
        st.check_space(self.inode, new_len)?;
        // Invariant: an open handle keeps its inode (inodes are never freed).
        let node = st.inodes.get_mut(&self.inode).expect("open inode exists");
        apply(&mut node.volatile, &op);
        node.pending.push(op);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        let fault = st.check(FaultOp::Sync)?;
        if fault == Some(FaultKind::Crash) {
            // The machine died: what is pending is for `crash()` to decide.
            return Err(frozen_err());
        }
        // Invariant: an open handle keeps its inode (inodes are never freed).
        let node = st.inodes.get_mut(&self.inode).expect("open inode exists");
        if let Some(kind) = fault {
            // As Linux may: the dirty pages are marked clean and their data
            // never reaches the disk, but reads still see it.
            node.pending.clear();
            return Err(fault_error(kind));
        }
        for op in std::mem::take(&mut node.pending) {
            apply(&mut node.durable, &op);
        }
        st.syncs += 1;
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        let data = &st.inodes[&self.inode].volatile;
        let off = offset as usize;
        if off >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mutate(Pending::Write {
            offset,
            data: buf.to_vec(),
        })
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.lock();
        if st.frozen {
            return Err(frozen_err());
        }
        Ok(st.inodes[&self.inode].volatile.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(Pending::SetLen(len))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if len <= self.len()? {
            return Ok(());
        }
        self.mutate(Pending::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/db")
    }

    fn setup(seed: u64) -> SimStorage {
        let s = SimStorage::new(seed);
        crate::create_dir_durable(&s, &dir()).unwrap();
        s
    }

    #[test]
    fn unsynced_create_is_lost_and_synced_survives() {
        let s = setup(1);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        a.write_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        // Data synced, directory not: the name may vanish.
        let after = s.crash_with(CrashMode::DropUnsynced);
        assert!(!after.exists(&dir().join("a")).unwrap());

        let s = setup(1);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        a.write_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        s.sync_dir(&dir()).unwrap();
        a.write_at(b" world", 5).unwrap();
        let after = s.crash_with(CrashMode::DropUnsynced);
        assert_eq!(after.read_file(&dir().join("a")).unwrap(), b"hello");
    }

    #[test]
    fn keep_all_keeps_everything_written() {
        let s = setup(2);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        a.write_at(b"abc", 0).unwrap();
        let after = s.crash_with(CrashMode::KeepAll);
        assert_eq!(after.read_file(&dir().join("a")).unwrap(), b"abc");
    }

    #[test]
    fn crashed_storage_refuses_calls() {
        let s = setup(3);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        let _ = s.crash();
        assert!(a.write_at(b"x", 0).is_err());
        assert!(s.list(&dir()).is_err());
    }

    #[test]
    fn failed_sync_loses_pending_data_but_reads_still_see_it() {
        let s = setup(4);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        s.sync_dir(&dir()).unwrap();
        a.write_at(b"lost", 0).unwrap();
        s.inject(Fault {
            op: FaultOp::Sync,
            nth: 1,
            persistent: false,
            kind: FaultKind::Eio,
        });
        assert_eq!(a.sync_data().unwrap_err().raw_os_error(), Some(5));
        let mut buf = [0u8; 4];
        a.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"lost");
        // The retried sync "succeeds", yet the data is gone: fsyncgate.
        a.sync_data().unwrap();
        let after = s.crash_with(CrashMode::KeepAll);
        assert_eq!(after.read_file(&dir().join("a")).unwrap(), b"");
    }

    #[test]
    fn nth_fault_fires_once_or_persistently() {
        let s = setup(5);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        s.inject(Fault {
            op: FaultOp::Write,
            nth: 2,
            persistent: false,
            kind: FaultKind::Enospc,
        });
        a.write_at(b"1", 0).unwrap();
        assert_eq!(a.write_at(b"2", 1).unwrap_err().raw_os_error(), Some(28));
        a.write_at(b"3", 1).unwrap();
        s.inject(Fault {
            op: FaultOp::Write,
            nth: 1,
            persistent: true,
            kind: FaultKind::Eio,
        });
        assert!(a.write_at(b"4", 2).is_err());
        assert!(a.write_at(b"5", 2).is_err());
        assert_eq!(s.read_file(&dir().join("a")).unwrap(), b"13");
    }

    #[test]
    fn short_write_keeps_half() {
        let s = setup(6);
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        s.inject(Fault {
            op: FaultOp::Write,
            nth: 1,
            persistent: false,
            kind: FaultKind::ShortWrite,
        });
        assert!(a.write_at(b"abcd", 0).is_err());
        assert_eq!(s.read_file(&dir().join("a")).unwrap(), b"ab");
    }

    #[test]
    fn unsynced_rename_may_be_undone_but_never_half_done() {
        for seed in 0..200 {
            let s = setup(seed);
            let a = s.open(&dir().join("tmp"), OpenMode::CreateNew).unwrap();
            a.write_at(b"x", 0).unwrap();
            a.sync_data().unwrap();
            s.sync_dir(&dir()).unwrap();
            s.rename(&dir().join("tmp"), &dir().join("final")).unwrap();
            let after = s.crash();
            let names = after.list(&dir()).unwrap();
            assert_eq!(names.len(), 1, "seed {seed}: {names:?}");
        }
    }

    #[test]
    fn a_hard_link_shares_the_file_and_is_durable_after_its_directory_sync() {
        let a = dir().join("a");
        let linked = || {
            let s = setup(8);
            let f = s.open(&a, OpenMode::CreateNew).unwrap();
            f.write_at(b"table", 0).unwrap();
            f.sync_all().unwrap();
            s.sync_dir(&dir()).unwrap();
            s.hard_link(&a, &dir().join("b")).unwrap();
            s
        };
        let s = linked();
        assert_eq!(s.read_file(&dir().join("b")).unwrap(), b"table");
        assert!(
            s.hard_link(&a, &dir().join("b")).is_err(),
            "the target exists"
        );
        let lost = s.crash_with(CrashMode::DropUnsynced);
        assert!(
            !lost.exists(&dir().join("b")).unwrap(),
            "undurable link kept"
        );
        let s = linked();
        s.sync_dir(&dir()).unwrap();
        s.remove(&a).unwrap();
        s.sync_dir(&dir()).unwrap();
        let kept = s.crash_with(CrashMode::DropUnsynced);
        assert_eq!(kept.read_file(&dir().join("b")).unwrap(), b"table");
        assert!(!kept.exists(&a).unwrap());
    }

    #[test]
    fn capacity_refuses_growth_beyond_it() {
        let s = setup(7);
        s.set_capacity(Some(8));
        let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        a.write_at(b"12345678", 0).unwrap();
        assert_eq!(a.write_at(b"9", 8).unwrap_err().raw_os_error(), Some(28));
        a.write_at(b"x", 0).unwrap();
        s.set_capacity(None);
        a.write_at(b"9", 8).unwrap();
    }

    #[test]
    fn same_seed_same_crash_image() {
        let image = |seed| {
            let s = setup(seed);
            let a = s.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
            s.sync_dir(&dir()).unwrap();
            for i in 0..20u8 {
                a.write_at(&[i; 7], u64::from(i) * 7).unwrap();
            }
            s.crash().read_file(&dir().join("a")).unwrap()
        };
        assert_eq!(image(42), image(42));
    }
}
