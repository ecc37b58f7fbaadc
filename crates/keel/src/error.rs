//! Typed errors of the engine. Every message says what happened and what to do.

use std::path::PathBuf;

/// Errors of [`Db`](crate::Db).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The write-ahead log failed or refused (includes fail-stop).
    #[error(transparent)]
    Wal(#[from] keel_wal::WalError),
    /// Another process (or another `Db` in this one) has the directory open.
    #[error("the data directory {} is already in use ({holder}); only one process may open it at a time: stop the other one, or use another directory", dir.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// What the holder recorded (its pid), if known.
        holder: String,
    },
    /// A key is empty: keys are 1 to `max_key_len` bytes.
    #[error("key cannot be empty")]
    EmptyKey,
    /// A key is longer than [`Options::max_key_len`](crate::Options::max_key_len).
    #[error("key of {len} bytes exceeds the limit of {max} bytes (max_key_len)")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is empty and the store refuses empty values
    /// ([`Options::allow_empty_values`](crate::Options::allow_empty_values) is false).
    #[error("value cannot be empty")]
    EmptyValue,
    /// A value is longer than [`Options::max_value_len`](crate::Options::max_value_len).
    #[error("value of {len} bytes exceeds the limit of {max} bytes (max_value_len)")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A batch encodes to more than [`Options::max_batch_bytes`](crate::Options::max_batch_bytes).
    #[error("batch of {len} bytes exceeds the limit of {max} bytes (max_batch_bytes); split it")]
    BatchTooLarge {
        /// The batch's encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A storage operation failed.
    #[error("{op} failed on {}: {source}; check the disk, free space and permissions", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is damaged and no older one could stand in.
    #[error("checkpoint {} is damaged: {why}; no older valid checkpoint and log cover it. Inspect it with `keel verify`", path.display())]
    CheckpointDamaged {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        why: crate::checkpoint::CheckpointError,
    },
    /// The log does not continue where the checkpoint ends.
    #[error("the log in {} holds LSN {log_first}..={log_last}, which does not continue the newest usable checkpoint at LSN {checkpoint_lsn} (the log must hold LSN {} onwards, or end exactly at {checkpoint_lsn}); records are missing. Restore the missing log segments or the newer checkpoint", dir.display(), checkpoint_lsn + 1)]
    LogGap {
        /// The log directory.
        dir: PathBuf,
        /// The checkpoint's LSN.
        checkpoint_lsn: u64,
        /// The first LSN the log holds (or would write next, if empty).
        log_first: u64,
        /// The last LSN the log holds (first - 1 if empty).
        log_last: u64,
    },
    /// Application metadata offered with a write breaks a limit, or the
    /// write holds another write with metadata: nothing was written.
    #[error("refused a write with metadata: {0}; keep names 1 to 255 bytes, values to 64 KiB, at most 64 names, and one level of metadata")]
    BadMetadata(String),
    /// A log record does not decode as an operation.
    #[error("log record {lsn} is not a valid operation ({why}); the log was written by another program or version")]
    BadRecord {
        /// The record's LSN.
        lsn: u64,
        /// What is wrong.
        why: crate::op::DecodeError,
    },
    /// Options are invalid or the options file could not be read.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A tool was pointed at a directory that holds nothing keel wrote.
    #[error("{} is not a keel store: it holds no `wal/` directory, checkpoint, log segment or LOCK file. Point the tool at a data directory (the one `keel serve --working-dir` uses), its `wal/` directory, or one of their files", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// A tool was pointed at a file keel did not write.
    #[error("{} is neither a log segment (NNNNNNNNNNNNNNNNNNNN.wal) nor a checkpoint (checkpoint-N.ckpt)", path.display())]
    NotAKeelFile {
        /// The file.
        path: PathBuf,
    },
    /// Repair was pointed at one file.
    #[error("repair works on a data directory or a log directory, not on one file")]
    RepairNeedsDirectory,
    /// Repair would cut the log back behind the newest checkpoint.
    #[error("the damage is at LSN {damage_lsn}, before the newest checkpoint (LSN {checkpoint_lsn}), and nothing after it verifies; cutting there would leave the log behind the checkpoint. Keep the data as it is and restore the log from a backup")]
    RepairBehindCheckpoint {
        /// The first damaged LSN.
        damage_lsn: u64,
        /// The checkpoint's LSN.
        checkpoint_lsn: u64,
    },
    /// A thread panicked while holding one of the store's locks; the store
    /// stopped taking writes (see `crate::poison`).
    #[error("a thread panicked while holding the store's {what} lock; the store has stopped taking writes (reads go on). Restart the process to recover from the log, and report the panic")]
    Poisoned {
        /// Which lock.
        what: &'static str,
    },
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
    /// A tool found the manifest of a store on tables damaged.
    #[error("the manifest in {} is damaged ({why}); which tables are live and where the log starts are unknown, so the log cannot be repaired safely. Restore the manifest from a backup", dir.display())]
    ManifestDamaged {
        /// The manifest directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The tables of a store kept on tables (manifest, a table, a flush or
    /// a compaction) failed.
    #[error(transparent)]
    Tables(#[from] crate::lsm::LsmError),
    /// A table could not be read.
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
    /// The write would wait for a flush (both memtables full) or a
    /// compaction (level 0 full) whose last attempt failed: it was refused,
    /// nothing changed.
    #[error("write refused: {why}; every acknowledged write is in the log. Fix the cause (often a full disk); writes resume once a flush or compaction succeeds")]
    WriteStalled {
        /// What failed, and how.
        why: String,
    },
    /// A backup goes into a new directory; this one exists.
    #[error("the backup destination {} exists; give a directory that does not exist yet (a backup never writes into an existing one)", dest.display())]
    BackupDestinationExists {
        /// The destination asked for.
        dest: PathBuf,
    },
    /// The directory is a backup (or an interrupted one), not a store.
    #[error("{} {why}", dir.display())]
    NotAStoreButABackup {
        /// The directory.
        dir: PathBuf,
        /// What it is, and what to do.
        why: String,
    },
    /// A restore cannot reach its target, or its log cannot be replayed.
    #[error("restore refused: {0}")]
    RestoreTarget(String),
    /// The directory is not a usable backup.
    #[error("{} is not a usable keel backup: {why}", dir.display())]
    NotABackup {
        /// The directory.
        dir: PathBuf,
        /// Why.
        why: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the store has stopped accepting writes after a failed write
    /// or sync (reads still work; restart to recover).
    pub fn is_stopped(&self) -> bool {
        matches!(self, Error::Wal(e) if e.is_stopped()) || matches!(self, Error::Poisoned { .. })
    }

    /// Whether the request itself was bad (nothing was changed): an empty
    /// key or value, or one over a limit.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::EmptyKey
                | Error::EmptyValue
                | Error::KeyTooLong { .. }
                | Error::ValueTooLarge { .. }
                | Error::BatchTooLarge { .. }
        )
    }

    /// Whether the request was refused for its size (a key, value or batch
    /// over a limit), as opposed to being malformed.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Error::KeyTooLong { .. } | Error::ValueTooLarge { .. } | Error::BatchTooLarge { .. }
        )
    }
}

impl From<keel_storage::IoError> for Error {
    fn from(e: keel_storage::IoError) -> Self {
        Error::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
