//! [`IoError`]: a failed storage operation, with what was being done and where.

use std::path::PathBuf;

/// A storage operation that failed: what keel was doing, on which path, and
/// the operating system's error. The crates above wrap it in their own error
/// types without losing these facts.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed on {}: {source}", path.display())]
pub struct IoError {
    /// What was being done ("fdatasync", "renaming into place", ...).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// Wraps `source` with the operation and path it failed on.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }
}
