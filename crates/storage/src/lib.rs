//! keel-storage: the I/O seam. Every file and directory operation keel
//! performs goes through [`Storage`] and [`StorageFile`], so every durability
//! rule can be tested on storage that loses unsynced bytes and fails on cue.
//!
//! Four implementations:
//! - [`FsStorage`], the real one on `std::fs` (fdatasync for `sync_data`,
//!   fsync of a directory handle for `sync_dir`);
//! - [`SimStorage`], a deterministic in-memory one that keeps what is durable
//!   apart from what is merely written, so tests can crash it and inject faults;
//! - [`FaultyStorage`], real files with the same injected faults (`KEEL_FAULT`);
//! - [`BufferedStorage`], real files whose unsynced writes stay in the process,
//!   so that kill -9 loses what a power loss would.
//!
//! Invariant the callers keep (and the simulated storage checks by losing data
//! otherwise): a create, rename or remove is durable only after `sync_dir` of the
//! directory that holds the name, and written bytes are durable only after
//! `sync_data`/`sync_all` of the file returned `Ok`. [`write_atomic`] and
//! [`publish_temp`] are the one place that writes a whole file that way;
//! [`create_dir_durable`] the one place that creates a directory.
//!
//! ```
//! use keel_storage::{create_dir_durable, write_atomic, SimStorage, CrashMode};
//! use std::path::Path;
//!
//! let disk = SimStorage::new(7);
//! create_dir_durable(&disk, Path::new("/d")).unwrap();
//! write_atomic(&disk, Path::new("/d/vote"), |file, _| file.write_at(b"term 3", 0)).unwrap();
//! // Power loss right after: the file is there whole.
//! let after = disk.crash_with(CrashMode::DropUnsynced);
//! assert_eq!(after.read_file(Path::new("/d/vote")).unwrap(), b"term 3");
//! ```

#![warn(missing_docs)]

mod atomic;
mod buffered;
mod error;
mod faulty;
mod fs;
pub mod rng;
mod sim;

pub use atomic::{create_dir_durable, publish_temp, temp_path, write_atomic, TEMP_SUFFIX};
pub use buffered::BufferedStorage;
pub use error::IoError;
pub use faulty::{FaultSpecError, FaultyStorage};
pub use fs::FsStorage;
pub use sim::{CrashMode, Fault, FaultKind, FaultOp, SimStorage};

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only.
    Read,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Create a new file (fails if it exists), for reading and writing.
    CreateNew,
}

/// A directory and file namespace. Paths are absolute or relative to the
/// process's working directory, as with `std::fs`.
pub trait Storage: Send + Sync + 'static {
    /// Opens or creates a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a directory and its parents (like `create_dir_all`). The new
    /// entries are durable after `sync_dir` of each parent.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries (files only) directly inside `dir`, unsorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Gives the file at `from` a second name `to` (a hard link; `to` must
    /// not exist). The new name is durable after `sync_dir` of its
    /// directory. Fails (as with `EXDEV` across file systems, or
    /// `Unsupported` here by default) where links cannot be made: callers
    /// then copy.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "hard links are not supported by this storage",
        ))
    }
    /// Takes an exclusive advisory lock on `path` (creating the file if it
    /// is missing) for as long as the returned guard lives, and records
    /// `holder` in it. Fails with `ErrorKind::WouldBlock` if another holder
    /// has it; the error message then carries what that holder recorded.
    fn lock_exclusive(&self, path: &Path, holder: &str) -> io::Result<LockGuard>;
}

/// Holds a lock taken by [`Storage::lock_exclusive`]; dropping it unlocks.
pub struct LockGuard {
    _inner: Box<dyn Send + Sync>,
}

impl LockGuard {
    /// Wraps whatever keeps the lock held until it is dropped.
    pub fn new(inner: Box<dyn Send + Sync>) -> Self {
        LockGuard { _inner: inner }
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

/// An open file. All offsets are absolute; there is no cursor, so one handle
/// can be shared by a writer and readers.
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at or past the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) the file to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space so that the file is at least `len` bytes long, all of
    /// it allocated; new bytes read as zeros. Appending into allocated space
    /// lets `sync_data` skip the metadata update of a growing file.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and the metadata needed to read it, like its
    /// length) durable: fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all of its metadata durable: fsync.
    fn sync_all(&self) -> io::Result<()>;

    /// Fills `buf` from `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the requested range",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The directory that holds `path`'s name, for `sync_dir` after a create,
/// rename or remove.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
