//! Typed errors of the log. Every message says what happened and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Where damage was found and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset of the damaged record (or header) in the segment.
    pub offset: u64,
    /// The LSN the reader expected at that offset.
    pub lsn: u64,
    /// What is wrong.
    pub kind: DamageKind,
}

/// The kinds of damage a reader can find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// A record's checksum (or zero padding) does not match.
    BadChecksum,
    /// A record's length field exceeds the maximum record size.
    LengthTooLarge(u32),
    /// A record runs past the end of the file.
    Truncated,
    /// A valid record carries an LSN other than the next one.
    UnexpectedLsn(u64),
    /// Zeros where a record should be, with data after them.
    HoleBeforeData,
    /// The segment header is missing, damaged or of another format.
    BadHeader(crate::format::HeaderError),
    /// The segment belongs to another log (its log id differs).
    ForeignSegment,
    /// The file name and the header's first LSN disagree.
    NameMismatch(u64),
    /// LSNs jump between two segments: a segment is missing.
    MissingRecords {
        /// The first LSN that no segment holds.
        expected: u64,
        /// The first LSN of the segment that follows the gap.
        found: u64,
    },
    /// A record that was already durable (a later record says so) is damaged.
    SyncedRecordDamaged(DamageDetail),
    /// A record's checksum matches but its contents cannot be read: an
    /// unknown compression or reserved field (a newer keel wrote it), or a
    /// payload that does not decompress to its recorded length.
    Undecodable(String),
}

/// The detail of damage to a record that had been synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamageDetail {
    /// What the damaged record looks like.
    pub what: String,
    /// LSN of the later record that proves it had been synced.
    pub proven_by_lsn: u64,
}

impl fmt::Display for DamageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DamageKind::BadChecksum => write!(f, "checksum mismatch"),
            DamageKind::LengthTooLarge(n) => write!(f, "record length {n} exceeds the maximum"),
            DamageKind::Truncated => write!(f, "record runs past the end of the file"),
            DamageKind::UnexpectedLsn(l) => write!(f, "valid record carries unexpected LSN {l}"),
            DamageKind::HoleBeforeData => write!(f, "zeroed bytes followed by data"),
            DamageKind::BadHeader(why) => write!(f, "bad segment header ({why})"),
            DamageKind::ForeignSegment => write!(f, "segment belongs to another log"),
            DamageKind::NameMismatch(l) => {
                write!(f, "file name disagrees with header first LSN {l}")
            }
            DamageKind::MissingRecords { expected, found } => write!(
                f,
                "records {expected}..{} are missing (a segment is gone)",
                found.saturating_sub(1)
            ),
            DamageKind::Undecodable(why) => write!(f, "record cannot be decoded: {why}"),
            DamageKind::SyncedRecordDamaged(d) => write!(
                f,
                "{} in a record that had been made durable (record {} was written after it was synced)",
                d.what, d.proven_by_lsn
            ),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} offset {} (expected LSN {})",
            self.kind,
            self.segment.display(),
            self.offset,
            self.lsn
        )
    }
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A storage operation failed.
    #[error("{op} failed on {}: {source}; check the disk, free space and permissions", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The log is damaged in a way recovery must not paper over.
    #[error("the log is damaged: {0}; nothing was changed. Inspect it with `keel verify`; to recover the records before the damage, open with RecoveryMode::PointInTime (or `keel repair`), which sets the damaged part aside")]
    Corrupt(Box<Damage>),
    /// A torn tail was found and the recovery mode forbids cutting it.
    #[error("the log ends in a torn write: {0}; RecoveryMode::AbsoluteConsistency refuses to cut it. Open with the default mode (TolerateCorruptedTail) to cut the never-acknowledged tail")]
    TornTailRefused(Box<Damage>),
    /// An earlier write or sync failed; the log accepts no more writes.
    #[error("the log in {} has stopped: {cause}. No more writes are accepted (a failed sync cannot be retried safely); reads go on. Restart the process to recover from what is durable", dir.display())]
    Stopped {
        /// The log's directory.
        dir: PathBuf,
        /// The failure that stopped it.
        cause: Arc<StopCause>,
    },
    /// A record is larger than the configured maximum.
    #[error("record of {len} bytes exceeds the maximum record size of {max} bytes; raise WalOptions::max_record_size or split the record")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// The options are invalid.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
    /// Records asked for are no longer in the log (deleted after a
    /// checkpoint or flush, or archived).
    #[error("LSN {lsn} is no longer in the log, which starts at LSN {first}")]
    NotInLog {
        /// The LSN asked for.
        lsn: u64,
        /// The first LSN the log holds.
        first: u64,
    },
    /// A caller waited for an LSN the log has not handed out yet.
    #[error("LSN {lsn} has not been appended (the next LSN is {next}); wait only for LSNs that an append returned")]
    NotAppended {
        /// The LSN asked for.
        lsn: u64,
        /// The next LSN the log will assign.
        next: u64,
    },
    /// The log was closed.
    #[error("the log has been closed; open it again to write")]
    Closed,
}

/// Why a log stopped.
#[derive(Debug)]
pub struct StopCause {
    /// The operation that failed.
    pub op: &'static str,
    /// The file it failed on.
    pub path: PathBuf,
    /// The operating system's error.
    pub error: io::Error,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed on {}: {}",
            self.op,
            self.path.display(),
            self.error
        )
    }
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether this error stopped the log (or was returned because it had).
    pub fn is_stopped(&self) -> bool {
        matches!(self, WalError::Stopped { .. })
    }

    /// The damage this error reports, if any.
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            WalError::Corrupt(d) | WalError::TornTailRefused(d) => Some(d),
            _ => None,
        }
    }
}

impl From<keel_storage::IoError> for WalError {
    fn from(e: keel_storage::IoError) -> Self {
        WalError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;
