//! The durable-replace sequence, written once: every file keel writes whole
//! (checkpoint, saved log bytes, and later tables, manifests and votes) goes
//! temp file -> write -> fdatasync -> rename -> fsync of the directory.
//!
//! Why each step (docs/DESIGN.md, rules 2 and 4):
//! - the temp name means a crash mid-write leaves no file under the final
//!   name, only a `*.tmp` that its owner removes at open;
//! - fdatasync before the rename, or a crash could leave the final name
//!   pointing at bytes that never reached the disk (ext4 and XFS may persist
//!   the rename first);
//! - fsync of the directory after the rename, because a rename is a change to
//!   the directory and is durable only once the directory is. Only after this
//!   may the caller delete what the new file makes obsolete.

use crate::{parent_dir, IoError, OpenMode, Storage, StorageFile};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Suffix of the temp file [`write_atomic`] writes before renaming.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The temp file name [`write_atomic`] uses for `path`: `path` + `.tmp`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(TEMP_SUFFIX);
    PathBuf::from(s)
}

/// Writes the file at `path` whole and durably, replacing any file there:
/// `write(file, temp_path)` fills a fresh temp file, then [`publish_temp`]
/// syncs it and renames it into place. When this returns `Ok`, the new file
/// is durable under its final name; on `Err` the final name is unchanged
/// (or, if the directory sync failed, may or may not be), and the temp file
/// has been removed where that was still possible.
///
/// A temp file left by an earlier interrupted attempt is replaced.
pub fn write_atomic(
    storage: &dyn Storage,
    path: &Path,
    write: impl FnOnce(&dyn StorageFile, &Path) -> std::io::Result<()>,
) -> Result<(), IoError> {
    let tmp = temp_path(path);
    if storage
        .exists(&tmp)
        .map_err(|e| IoError::new("checking for a stale temp file", &tmp, e))?
    {
        storage
            .remove(&tmp)
            .map_err(|e| IoError::new("removing a stale temp file", &tmp, e))?;
    }
    let file = storage
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| IoError::new("creating a temp file", &tmp, e))?;
    let result = write(&*file, &tmp)
        .map_err(|e| IoError::new("writing a temp file", &tmp, e))
        .and_then(|()| publish_temp(storage, &*file, &tmp, path));
    if result.is_err() {
        // Best effort: a temp file is never read, and its owner removes any
        // left at open, but one per failed attempt must not pile up.
        drop(file);
        if storage.exists(&tmp).unwrap_or(false) {
            let _ = storage.remove(&tmp);
        }
    }
    result
}

/// Makes an already written temp file durable under its final name:
/// fdatasync `file` (at `tmp`), rename `tmp` to `path`, fsync the directory.
/// For callers that prepare the temp file ahead of time (the log's
/// preallocated segments); others use [`write_atomic`].
pub fn publish_temp(
    storage: &dyn Storage,
    file: &dyn StorageFile,
    tmp: &Path,
    path: &Path,
) -> Result<(), IoError> {
    // The contents must be durable before the file gets its final name:
    // otherwise a crash could leave a named, "complete" file whose bytes
    // never reached the disk.
    file.sync_data()
        .map_err(|e| IoError::new("fdatasync", tmp, e))?;
    storage
        .rename(tmp, path)
        .map_err(|e| IoError::new("renaming into place", path, e))?;
    // The rename is durable only once the directory holding it is.
    let dir = parent_dir(path);
    storage
        .sync_dir(&dir)
        .map_err(|e| IoError::new("syncing the directory", &dir, e))
}

/// Creates the directory `path` (and any missing parents) so that it
/// survives power loss: a new directory is an entry in its parent, durable
/// only once the parent is synced (docs/DESIGN.md, rule 2). Every directory
/// this call creates gets its parent synced; so does `path`'s own parent
/// when `path` already existed, because a process killed between an
/// earlier create and its sync leaves a directory that exists but is not
/// yet durable.
pub fn create_dir_durable(storage: &dyn Storage, path: &Path) -> Result<(), IoError> {
    let mut missing = Vec::new();
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() {
            break;
        }
        let exists = storage
            .exists(dir)
            .map_err(|e| IoError::new("checking for a directory", dir, e))?;
        if exists {
            break;
        }
        missing.push(dir.to_path_buf());
    }
    if missing.is_empty() {
        missing.push(path.to_path_buf());
    } else {
        storage
            .create_dir_all(path)
            .map_err(|e| IoError::new("creating a directory", path, e))?;
    }
    // Outermost first: each new entry is made durable in a parent that is
    // itself already durable.
    for dir in missing.iter().rev() {
        let parent = parent_dir(dir);
        // The new directory's entry lives in its parent: without this sync
        // a power loss can take the directory, and every file in it, away.
        storage
            .sync_dir(&parent)
            .map_err(|e| IoError::new("syncing the directory", &parent, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CrashMode, Fault, FaultKind, FaultOp, SimStorage};

    fn disk() -> SimStorage {
        let s = SimStorage::new(11);
        create_dir_durable(&s, Path::new("/d")).unwrap();
        s
    }

    #[test]
    fn survives_power_loss_whole_and_replaces() {
        let s = disk();
        let p = Path::new("/d/f");
        write_atomic(&s, p, |f, _| f.write_at(b"one", 0)).unwrap();
        write_atomic(&s, p, |f, _| f.write_at(b"two!", 0)).unwrap();
        for mode in [CrashMode::DropUnsynced, CrashMode::Random] {
            let after = s.crash_with(mode);
            assert_eq!(after.read_file(p).unwrap(), b"two!");
            assert!(!after.exists(&temp_path(p)).unwrap());
        }
    }

    #[test]
    fn a_crash_before_the_directory_sync_leaves_old_or_new_never_torn() {
        for seed in 0..200 {
            let s = SimStorage::new(seed);
            create_dir_durable(&s, Path::new("/d")).unwrap();
            let p = Path::new("/d/f");
            write_atomic(&s, p, |f, _| f.write_at(b"old", 0)).unwrap();
            s.inject(Fault {
                op: FaultOp::SyncDir,
                nth: 1,
                kind: FaultKind::Crash,
                persistent: false,
            });
            assert!(write_atomic(&s, p, |f, _| f.write_at(b"new", 0)).is_err());
            let after = s.crash_with(CrashMode::Random);
            let got = after.read_file(p).unwrap();
            assert!(got == b"old" || got == b"new", "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_file() {
        let s = disk();
        let p = Path::new("/d/f");
        write_atomic(&s, p, |f, _| f.write_at(b"old", 0)).unwrap();
        let err = write_atomic(&s, p, |_, _| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert_eq!(err.op, "writing a temp file");
        assert!(!s.exists(&temp_path(p)).unwrap());
        assert_eq!(s.read_file(p).unwrap(), b"old");
    }

    #[test]
    fn a_stale_temp_file_is_replaced() {
        let s = disk();
        let p = Path::new("/d/f");
        let stale = s.open(&temp_path(p), OpenMode::CreateNew).unwrap();
        stale.write_at(b"garbage from a crash", 0).unwrap();
        drop(stale);
        write_atomic(&s, p, |f, _| f.write_at(b"ok", 0)).unwrap();
        assert_eq!(s.read_file(p).unwrap(), b"ok");
    }

    #[test]
    fn a_directory_survives_power_loss_only_when_created_durably() {
        // create_dir_all alone: the directory, and the synced file in it,
        // are gone after power loss.
        let s = SimStorage::new(3);
        s.create_dir_all(Path::new("/a/b")).unwrap();
        write_atomic(&s, Path::new("/a/b/f"), |f, _| f.write_at(b"x", 0)).unwrap();
        let after = s.crash_with(CrashMode::DropUnsynced);
        assert!(!after.exists(Path::new("/a")).unwrap());
        assert!(!after.exists(Path::new("/a/b/f")).unwrap());

        let s = SimStorage::new(3);
        create_dir_durable(&s, Path::new("/a/b")).unwrap();
        write_atomic(&s, Path::new("/a/b/f"), |f, _| f.write_at(b"x", 0)).unwrap();
        let after = s.crash_with(CrashMode::DropUnsynced);
        assert_eq!(after.read_file(Path::new("/a/b/f")).unwrap(), b"x");
    }

    #[test]
    fn an_existing_but_unsynced_directory_is_made_durable() {
        // A process killed between mkdir and the parent's sync: the next
        // open finds the directory and must still sync its parent.
        let s = SimStorage::new(4);
        create_dir_durable(&s, Path::new("/a")).unwrap();
        s.create_dir_all(Path::new("/a/b")).unwrap();
        create_dir_durable(&s, Path::new("/a/b")).unwrap();
        let after = s.crash_with(CrashMode::DropUnsynced);
        assert!(after.exists(Path::new("/a/b")).unwrap());
    }
}
