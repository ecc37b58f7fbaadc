//! [`BufferedStorage`]: file data held in process memory until it is synced.
//!
//! Writes to a file are kept in the process (reads see them) and reach the
//! real file only at `sync_data`/`sync_all`, so killing the process (kill -9)
//! loses exactly the data a power loss would: everything not yet synced.
//! Torture runs use it to prove that nothing is acknowledged before its
//! fsync. Directory operations (create, rename, remove) and `set_len`/
//! `allocate` go straight through: only file data is buffered.

use super::{LockGuard, OpenMode, Storage, StorageFile};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Wraps a storage, buffering file writes until sync.
pub struct BufferedStorage {
    inner: Arc<dyn Storage>,
}

impl BufferedStorage {
    /// Buffers writes made through `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        BufferedStorage { inner }
    }
}

struct BufferedFile {
    inner: Arc<dyn StorageFile>,
    /// Unsynced writes (offset, bytes) in the order they were made: applied
    /// in that order at sync, and overlaid in that order on reads, so a later
    /// write always wins over an earlier one, however they overlap.
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl Storage for BufferedStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(BufferedFile {
            inner: self.inner.open(path, mode)?,
            pending: Mutex::new(Vec::new()),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        // A link shares the file: its unsynced bytes, buffered in this
        // process under the old name, would not be seen under the new one.
        // Every file keel links is complete and synced; copies are safe.
        let _ = (from, to);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "hard links are not supported by buffered storage",
        ))
    }
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard> {
        self.inner.lock_exclusive(path, holder)
    }
}

impl BufferedFile {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Vec<u8>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self) -> io::Result<()> {
        let writes = std::mem::take(&mut *self.pending());
        for (off, data) in &writes {
            if let Err(e) = self.inner.write_at(data, *off) {
                // Keep what did not reach the file: it is still unsynced.
                *self.pending() = writes;
                return Err(e);
            }
        }
        Ok(())
    }
}

impl StorageFile for BufferedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let pending = self.pending();
        let end_pending = pending
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .max()
            .unwrap_or(0);
        let file_len = self.inner.len()?;
        let len = file_len.max(end_pending);
        if offset >= len {
            return Ok(0);
        }
        let n = buf.len().min((len - offset) as usize);
        let buf = &mut buf[..n];
        // The file's bytes (zeros past its end), then pending writes on top,
        // oldest first.
        buf.fill(0);
        if offset < file_len {
            let m = n.min((file_len - offset) as usize);
            self.inner.read_exact_at(&mut buf[..m], offset)?;
        }
        for (o, d) in pending.iter() {
            let (ws, we) = (*o, *o + d.len() as u64);
            let (rs, re) = (offset, offset + n as u64);
            if ws < re && we > rs {
                let s = ws.max(rs);
                let e = we.min(re);
                buf[(s - rs) as usize..(e - rs) as usize]
                    .copy_from_slice(&d[(s - ws) as usize..(e - ws) as usize]);
            }
        }
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.pending().push((offset, buf.to_vec()));
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let end_pending = self
            .pending()
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .max()
            .unwrap_or(0);
        Ok(self.inner.len()?.max(end_pending))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.flush()?;
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.flush()?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.flush()?;
        self.inner.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsStorage;

    #[test]
    fn unsynced_writes_stay_in_the_process_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = BufferedStorage::new(Arc::new(FsStorage::new()));
        let path = dir.path().join("f");
        let f = s.open(&path, OpenMode::CreateNew).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.write_at(b" world", 5).unwrap();
        let mut buf = [0u8; 11];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
        assert_eq!(std::fs::read(&path).unwrap(), b"", "written before sync");
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        f.write_at(b"!", 11).unwrap();
        drop(f); // a killed process: the unsynced byte is gone
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
    }

    #[test]
    fn a_later_overlapping_write_wins_in_reads_and_at_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = BufferedStorage::new(Arc::new(FsStorage::new()));
        let path = dir.path().join("f");
        let f = s.open(&path, OpenMode::CreateNew).unwrap();
        f.write_at(b"BBB", 5).unwrap();
        f.write_at(b"AAAAAAAAAA", 0).unwrap();
        let mut buf = [0u8; 10];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"AAAAAAAAAA");
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"AAAAAAAAAA");
    }
}
