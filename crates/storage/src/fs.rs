//! [`FsStorage`]: the storage trait on the real file system.
//!
//! `sync_data` is fdatasync, `sync_all` is fsync, `sync_dir` opens the
//! directory and fsyncs it (the only way to make a create, rename or remove
//! durable on Linux). `allocate` is fallocate(2) with mode 0, so the space is
//! reserved and the file length covers it: appends into it then need no
//! metadata update at fdatasync.

use super::{LockGuard, OpenMode, Storage, StorageFile};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStorage;

impl FsStorage {
    /// The real file system.
    pub fn new() -> Self {
        FsStorage
    }
}

struct FsFile(File);

impl Storage for FsStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(FsFile(o.open(path)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // fsync on a directory handle persists its entries: without it a
        // created or renamed file may be missing after power loss (ALICE,
        // OSDI 2014).
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }

    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => {
                // Diagnostics only: who holds it. Not synced; the lock itself
                // lives in the kernel and dies with the process.
                file.set_len(0)?;
                file.write_all(holder.as_bytes())?;
                Ok(LockGuard::new(Box::new(file)))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut current = String::new();
                let _ = file.read_to_string(&mut current);
                Err(io::Error::new(io::ErrorKind::WouldBlock, current))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl StorageFile for FsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let current = self.len()?;
        if len <= current {
            return Ok(());
        }
        // Ask first: fallocate of more than is free can fill the file system
        // block by block before it fails, starving everything else on it.
        let stat = rustix::fs::fstatvfs(&self.0)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if len - current > free {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "not enough free space to preallocate {} bytes ({free} available); free some space or lower segment_size",
                    len - current
                ),
            ));
        }
        match rustix::fs::fallocate(
            &self.0,
            rustix::fs::FallocateFlags::empty(),
            current,
            len - current,
        ) {
            Ok(()) => Ok(()),
            // File systems without fallocate: a sparse extension still reads
            // as zeros, which is all correctness needs; only speed suffers.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                self.0.set_len(len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        // fdatasync: data plus the metadata needed to read it back.
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preallocating_more_than_is_free_fails_before_taking_any_space() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let f = FsStorage::new().open(&path, OpenMode::CreateNew).unwrap();
        let stat = rustix::fs::statvfs(dir.path()).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        let err = f.allocate(free + (1 << 30)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("not enough free space"), "{err}");
        assert_eq!(f.len().unwrap(), 0);
        f.allocate(4096).unwrap();
        assert_eq!(f.len().unwrap(), 4096);
    }
}
