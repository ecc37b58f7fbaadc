//! [`Target`]: what a path given to a tool names.

use crate::error::{Error, Result};
use crate::layout::{DataDir, FileKind, MANIFEST_DIR};
use keel_storage::Storage;
use std::path::{Path, PathBuf};

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A store: checkpoints and `LOCK` here, the log in `wal/`.
    DataDir(DataDir),
    /// A log directory (segments only).
    LogDir(PathBuf),
    /// One segment file.
    Segment(PathBuf),
    /// One checkpoint file.
    Checkpoint(PathBuf),
    /// One table file (issue 12).
    Table(PathBuf),
    /// A manifest directory (issue 12): a log whose records are edits.
    Manifest(PathBuf),
}

impl Target {
    /// Says what `path` is. A directory that holds nothing keel wrote (not a
    /// `wal/` directory, a checkpoint, a segment or a `LOCK`) is
    /// [`Error::NotAStore`]; a file keel did not name is
    /// [`Error::NotAKeelFile`].
    pub fn resolve(storage: &dyn Storage, path: &Path) -> Result<Target> {
        let names = match storage.list(path) {
            Ok(names) => names,
            Err(_) => return Target::file(storage, path),
        };
        let data_dir = DataDir::new(path);
        if storage.list(&data_dir.log_dir()).is_ok() {
            return Ok(Target::DataDir(data_dir));
        }
        let kinds: Vec<FileKind> = names.iter().filter_map(|n| FileKind::parse(n)).collect();
        if kinds
            .iter()
            .any(|k| matches!(k, FileKind::Segment(_) | FileKind::PreparedSegment))
        {
            let manifest = path.file_name().and_then(|n| n.to_str()) == Some(MANIFEST_DIR);
            return Ok(if manifest {
                Target::Manifest(path.to_path_buf())
            } else {
                Target::LogDir(path.to_path_buf())
            });
        }
        if kinds
            .iter()
            .any(|k| matches!(k, FileKind::Checkpoint(_) | FileKind::Lock))
        {
            return Ok(Target::DataDir(data_dir));
        }
        Err(Error::NotAStore {
            path: path.to_path_buf(),
        })
    }

    fn file(storage: &dyn Storage, path: &Path) -> Result<Target> {
        let exists = storage
            .exists(path)
            .map_err(|e| Error::io("reading", path, e))?;
        if !exists {
            return Err(Error::io(
                "reading",
                path,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match FileKind::parse(name) {
            Some(FileKind::Segment(_)) => Ok(Target::Segment(path.to_path_buf())),
            Some(FileKind::Checkpoint(_)) => Ok(Target::Checkpoint(path.to_path_buf())),
            Some(FileKind::Table(_)) => Ok(Target::Table(path.to_path_buf())),
            _ => Err(Error::NotAKeelFile {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The log directory this target holds or lies in, if any.
    pub fn log_dir(&self) -> Option<PathBuf> {
        match self {
            Target::DataDir(d) => Some(d.log_dir()),
            Target::LogDir(d) => Some(d.clone()),
            Target::Segment(p) => p.parent().map(Path::to_path_buf),
            Target::Checkpoint(_) | Target::Table(_) | Target::Manifest(_) => None,
        }
    }

    /// The data directory whose lock guards this target: the directory
    /// itself, or the one a log directory lies in (when it holds a `LOCK`).
    pub fn data_dir(&self, storage: &dyn Storage) -> Option<DataDir> {
        match self {
            Target::DataDir(d) => Some(d.clone()),
            Target::LogDir(w) => w
                .parent()
                .map(DataDir::new)
                .filter(|d| storage.exists(&d.lock_file()).unwrap_or(false)),
            Target::Segment(_) | Target::Checkpoint(_) | Target::Table(_) | Target::Manifest(_) => {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::{OpenMode, SimStorage};

    fn touch(s: &SimStorage, p: &str) {
        s.open(Path::new(p), OpenMode::CreateNew).unwrap();
    }

    #[test]
    fn names_what_it_finds_and_refuses_the_rest() {
        let s = SimStorage::new(1);
        for d in ["/store/wal", "/etc", "/log", "/empty"] {
            keel_storage::create_dir_durable(&s, Path::new(d)).unwrap();
        }
        touch(&s, "/etc/passwd");
        touch(&s, "/log/00000000000000000001.wal");
        touch(&s, "/store/checkpoint-00000000000000000005.ckpt");
        let t = |p: &str| Target::resolve(&s, Path::new(p));
        assert_eq!(
            t("/store").unwrap(),
            Target::DataDir(DataDir::new("/store"))
        );
        assert_eq!(t("/log").unwrap(), Target::LogDir("/log".into()));
        assert_eq!(
            t("/log/00000000000000000001.wal").unwrap(),
            Target::Segment("/log/00000000000000000001.wal".into())
        );
        assert_eq!(
            t("/store/checkpoint-00000000000000000005.ckpt").unwrap(),
            Target::Checkpoint("/store/checkpoint-00000000000000000005.ckpt".into())
        );
        assert!(matches!(t("/etc"), Err(Error::NotAStore { .. })));
        assert!(matches!(t("/empty"), Err(Error::NotAStore { .. })));
        assert!(matches!(t("/etc/passwd"), Err(Error::NotAKeelFile { .. })));
        assert!(matches!(t("/nowhere"), Err(Error::Io { .. })));
    }
}
