//! [`FaultyStorage`]: any storage (the real file system included) with
//! faults injected at chosen operations, by the same [`Fault`] rules as the
//! simulated storage. For testing the shipped binary: a failed fdatasync on
//! real files, ENOSPC, short writes, or an abort of the process at the Nth
//! operation (`FaultKind::Crash`).

use super::sim::{fault_error, FaultPlan};
use super::{LockGuard, OpenMode, Storage, StorageFile};
use crate::{Fault, FaultKind, FaultOp};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Wraps a storage and injects faults.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    plan: Arc<Mutex<FaultPlan>>,
}

struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    plan: Arc<Mutex<FaultPlan>>,
}

fn check(plan: &Mutex<FaultPlan>, op: FaultOp) -> Option<FaultKind> {
    let kind = plan.lock().unwrap_or_else(|p| p.into_inner()).check(op);
    if kind == Some(FaultKind::Crash) {
        // A real process "crash" at this exact operation, as kill -9 would.
        eprintln!("keel: injected crash at a {op:?} operation");
        std::process::abort();
    }
    kind
}

impl FaultyStorage {
    /// `inner` with `faults` armed.
    pub fn new(inner: Arc<dyn Storage>, faults: &[Fault]) -> Self {
        let mut plan = FaultPlan::default();
        for f in faults {
            plan.arm(*f);
        }
        FaultyStorage {
            inner,
            plan: Arc::new(Mutex::new(plan)),
        }
    }

    /// Parses faults written as `op:nth:kind[:persistent]`, separated by
    /// commas, e.g. `sync:20:eio` or `write:100:enospc:persistent`. Ops:
    /// write, sync, syncdir, create, rename, remove, any. Kinds: eio,
    /// enospc, short, crash.
    pub fn parse_faults(spec: &str) -> Result<Vec<Fault>, FaultSpecError> {
        spec.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(parse_fault)
            .collect()
    }
}

/// A fault spec `KEEL_FAULT` could not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad fault {fault:?}: {why}; expected op:nth:kind[:persistent], op one of write, sync, syncdir, create, rename, remove, any; kind one of eio, enospc, short, crash")]
pub struct FaultSpecError {
    /// The fault as written.
    pub fault: String,
    /// Which part is wrong.
    pub why: &'static str,
}

fn parse_fault(one: &str) -> Result<Fault, FaultSpecError> {
    let bad = |why| FaultSpecError {
        fault: one.trim().to_string(),
        why,
    };
    let parts: Vec<&str> = one.trim().split(':').collect();
    if parts.len() < 3 || parts.len() > 4 {
        return Err(bad("wrong number of parts"));
    }
    let op = match parts[0] {
        "write" => FaultOp::Write,
        "sync" => FaultOp::Sync,
        "syncdir" => FaultOp::SyncDir,
        "create" => FaultOp::Create,
        "rename" => FaultOp::Rename,
        "remove" => FaultOp::Remove,
        "any" => FaultOp::Any,
        _ => return Err(bad("unknown operation")),
    };
    let nth = parts[1]
        .parse()
        .map_err(|_| bad("the count is not a number"))?;
    let kind = match parts[2] {
        "eio" => FaultKind::Eio,
        "enospc" => FaultKind::Enospc,
        "short" => FaultKind::ShortWrite,
        "crash" => FaultKind::Crash,
        _ => return Err(bad("unknown kind")),
    };
    let persistent = match parts.get(3) {
        None => false,
        Some(&"persistent") => true,
        Some(_) => return Err(bad("unknown flag (only `persistent`)")),
    };
    Ok(Fault {
        op,
        nth,
        persistent,
        kind,
    })
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        if mode == OpenMode::CreateNew {
            if let Some(k) = check(&self.plan, FaultOp::Create) {
                return Err(fault_error(k));
            }
        }
        Ok(Arc::new(FaultyFile {
            inner: self.inner.open(path, mode)?,
            plan: Arc::clone(&self.plan),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match check(&self.plan, FaultOp::Rename) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.rename(from, to),
        }
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        match check(&self.plan, FaultOp::Remove) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.remove(path),
        }
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match check(&self.plan, FaultOp::SyncDir) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.sync_dir(dir),
        }
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        match check(&self.plan, FaultOp::Create) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.hard_link(from, to),
        }
    }
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        self.inner.lock_exclusive(path, holder)
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match check(&self.plan, FaultOp::Write) {
            None => self.inner.write_at(buf, offset),
            Some(FaultKind::ShortWrite) => {
                self.inner.write_at(&buf[..buf.len() / 2], offset)?;
                Err(fault_error(FaultKind::ShortWrite))
            }
            Some(k) => Err(fault_error(k)),
        }
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        match check(&self.plan, FaultOp::Write) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.set_len(len),
        }
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        match check(&self.plan, FaultOp::Write) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.allocate(len),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        match check(&self.plan, FaultOp::Sync) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.sync_data(),
        }
    }
    fn sync_all(&self) -> io::Result<()> {
        match check(&self.plan, FaultOp::Sync) {
            Some(k) => Err(fault_error(k)),
            None => self.inner.sync_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsStorage;

    #[test]
    fn parses_specs_and_fails_the_nth_sync_on_real_files() {
        let faults = FaultyStorage::parse_faults("sync:2:eio, write:1:enospc:persistent").unwrap();
        assert_eq!(faults.len(), 2);
        assert!(faults[1].persistent);
        assert!(FaultyStorage::parse_faults("sync:x:eio").is_err());
        assert!(FaultyStorage::parse_faults("fsync:1:eio").is_err());

        let dir = tempfile::tempdir().unwrap();
        let s = FaultyStorage::new(
            Arc::new(FsStorage::new()),
            &FaultyStorage::parse_faults("sync:2:eio").unwrap(),
        );
        let f = s.open(&dir.path().join("f"), OpenMode::CreateNew).unwrap();
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        f.sync_data().unwrap();
    }
}
