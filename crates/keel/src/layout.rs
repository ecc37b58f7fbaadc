//! Every name in a data directory is made and parsed here, and nowhere else
//! (as LevelDB's `filename.h` does):
//!
//! ```text
//! DIR/LOCK                                  advisory lock, holder's pid inside
//! DIR/checkpoint-<LSN:020>.ckpt             a checkpoint (docs/FORMAT.md)
//! DIR/checkpoint-<LSN:020>.ckpt.tmp         a checkpoint being written
//! DIR/wal/<LSN:020>.wal                     log segments (named by keel_wal)
//! DIR/wal/prealloc-<N>.tmp                  a segment prepared ahead of use
//! DIR/wal/<segment>.cut-at-<OFFSET>         bytes recovery or repair cut, saved
//! DIR/wal/<segment>.dropped                 a segment set aside by repair
//! DIR/manifest/<LSN:020>.wal                the manifest's own log (issue 12)
//! DIR/tables/<N:020>.sst                    table number N (issue 12)
//! DIR/tables/<N:020>.sst.tmp                a table being written
//! ```
//!
//! The names inside `wal/` belong to the log, which knows nothing of keys;
//! [`FileKind::parse`] recognises them through `keel_wal::segment` so that a
//! tool can name any file it finds.

use crate::error::{Error, Result};
use keel_storage::{LockGuard, Storage, TEMP_SUFFIX};
use keel_wal::segment::{parse_segment_name, PREPARED_PREFIX};
use std::path::{Path, PathBuf};

/// The lock file's name.
pub const LOCK_FILE: &str = "LOCK";
/// The log directory's name.
pub const LOG_DIR: &str = "wal";
/// The manifest's directory (a keel-wal log of edits).
pub const MANIFEST_DIR: &str = "manifest";
/// The tables' directory.
pub const TABLES_DIR: &str = "tables";
/// Where `keel repair` moves damaged tables (never read by keel again).
pub const DAMAGED_DIR: &str = "damaged";
const TABLE_SUFFIX: &str = ".sst";
const CHECKPOINT_PREFIX: &str = "checkpoint-";
const CHECKPOINT_SUFFIX: &str = ".ckpt";

/// What a file name in a data directory (or its log directory) stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `LOCK`.
    Lock,
    /// A checkpoint at this LSN.
    Checkpoint(u64),
    /// A checkpoint being written (removed at open).
    CheckpointTemp,
    /// A log segment whose first record has this LSN.
    Segment(u64),
    /// A segment prepared ahead of use (removed at open).
    PreparedSegment,
    /// Bytes cut from a segment and saved (`*.cut-at-N`), or a segment set
    /// aside (`*.dropped`): never read by keel, kept for the operator.
    SetAside,
    /// Table number N.
    Table(u64),
    /// A table being written (removed at open).
    TableTemp,
}

impl FileKind {
    /// What `name` (a bare file name) is, if keel made it.
    pub fn parse(name: &str) -> Option<FileKind> {
        if name == LOCK_FILE {
            return Some(FileKind::Lock);
        }
        if let Some(lsn) = parse_checkpoint_name(name) {
            return Some(FileKind::Checkpoint(lsn));
        }
        if let Some(n) = parse_table_name(name) {
            return Some(FileKind::Table(n));
        }
        if let Some(base) = name.strip_suffix(TEMP_SUFFIX) {
            if parse_table_name(base).is_some() {
                return Some(FileKind::TableTemp);
            }
            if base.starts_with(CHECKPOINT_PREFIX) && base.ends_with(CHECKPOINT_SUFFIX) {
                return Some(FileKind::CheckpointTemp);
            }
            if base.starts_with(PREPARED_PREFIX) {
                return Some(FileKind::PreparedSegment);
            }
        }
        if let Some(lsn) = parse_segment_name(name) {
            return Some(FileKind::Segment(lsn));
        }
        let set_aside = name.ends_with(".dropped")
            || name
                .rsplit_once(".cut-at-")
                .is_some_and(|(_, off)| off.bytes().all(|b| b.is_ascii_digit()));
        set_aside.then_some(FileKind::SetAside)
    }
}

/// The file name of table `number`.
pub fn table_file_name(number: u64) -> String {
    format!("{number:020}{TABLE_SUFFIX}")
}

/// The number of the table named `name`, if it is one.
pub fn parse_table_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(TABLE_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The file name of the checkpoint at `lsn`.
pub fn checkpoint_file_name(lsn: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{lsn:020}{CHECKPOINT_SUFFIX}")
}

/// The LSN of a checkpoint file name, if it is one.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(CHECKPOINT_PREFIX)?
        .strip_suffix(CHECKPOINT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checkpoint files (LSN, path), newest first.
pub type CheckpointList = Vec<(u64, PathBuf)>;

/// The paths of one data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/LOCK`.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// `DIR/wal`, the log's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join(LOG_DIR)
    }

    /// `DIR/checkpoint-<lsn>.ckpt`.
    pub fn checkpoint(&self, lsn: u64) -> PathBuf {
        self.root.join(checkpoint_file_name(lsn))
    }

    /// Checkpoint files, newest first, and leftover checkpoint temp files.
    pub fn list_checkpoints(
        &self,
        storage: &dyn Storage,
    ) -> Result<(CheckpointList, Vec<PathBuf>)> {
        let names = storage
            .list(&self.root)
            .map_err(|e| Error::io("listing the data directory", &self.root, e))?;
        let mut found = Vec::new();
        let mut temps = Vec::new();
        for name in names {
            match FileKind::parse(&name) {
                Some(FileKind::Checkpoint(lsn)) => found.push((lsn, self.root.join(name))),
                Some(FileKind::CheckpointTemp) => temps.push(self.root.join(name)),
                _ => {}
            }
        }
        found.sort_by_key(|c| std::cmp::Reverse(c.0));
        Ok((found, temps))
    }

    /// Takes the directory's lock for `who` (recorded in the file with this
    /// process's pid) for as long as the guard lives. A second holder, in
    /// this process or another, gets [`Error::Locked`] naming the first.
    pub fn lock(&self, storage: &dyn Storage, who: &str) -> Result<LockGuard> {
        let path = self.lock_file();
        storage
            .lock_exclusive(&path, &format!("{who}, pid {}", std::process::id()))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock => Error::Locked {
                    dir: self.root.clone(),
                    holder: if e.to_string().is_empty() {
                        "holder unknown".into()
                    } else {
                        format!("held by {e}")
                    },
                },
                _ => Error::io("locking the data directory", &path, e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_wal::segment::segment_file_name;

    #[test]
    fn every_name_keel_makes_parses_back() {
        assert_eq!(FileKind::parse("LOCK"), Some(FileKind::Lock));
        assert_eq!(
            FileKind::parse(&checkpoint_file_name(123)),
            Some(FileKind::Checkpoint(123))
        );
        let tmp = keel_storage::temp_path(Path::new(&checkpoint_file_name(5)));
        assert_eq!(
            FileKind::parse(tmp.to_str().unwrap()),
            Some(FileKind::CheckpointTemp)
        );
        assert_eq!(
            FileKind::parse(&segment_file_name(77)),
            Some(FileKind::Segment(77))
        );
        assert_eq!(
            FileKind::parse("prealloc-3.tmp"),
            Some(FileKind::PreparedSegment)
        );
        let seg = segment_file_name(1);
        assert_eq!(
            FileKind::parse(&format!("{seg}.cut-at-4096")),
            Some(FileKind::SetAside)
        );
        assert_eq!(
            FileKind::parse(&format!("{seg}.dropped")),
            Some(FileKind::SetAside)
        );
        assert_eq!(
            FileKind::parse(&table_file_name(42)),
            Some(FileKind::Table(42))
        );
        assert_eq!(
            FileKind::parse(&format!("{}.tmp", table_file_name(42))),
            Some(FileKind::TableTemp)
        );
        for other in [
            "checkpoint-1.ckpt",
            "notes.txt",
            "1.wal",
            "x.cut-at-y",
            "1.sst",
        ] {
            assert_eq!(FileKind::parse(other), None, "{other}");
        }
        assert!(checkpoint_file_name(9) < checkpoint_file_name(10));
    }

    #[test]
    fn paths_are_under_the_root() {
        let d = DataDir::new("/data");
        assert_eq!(d.lock_file(), Path::new("/data/LOCK"));
        assert_eq!(d.log_dir(), Path::new("/data/wal"));
        assert_eq!(
            d.checkpoint(1),
            Path::new("/data/checkpoint-00000000000000000001.ckpt")
        );
    }
}
