//! Options of the log: sync policy, recovery mode, segment and record
//! sizes, compression, and the clock that stamps records.

use crate::archive::ArchiveOptions;
use crate::compression::Compression;
use crate::error::{Result, WalError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where records' commit times come from: microseconds since the Unix epoch.
///
/// The log stamps each record with `max(clock, time of the record before)`,
/// so times never go backwards in LSN order even when the clock does (an
/// NTP step, a VM restored from a snapshot): a record then carries its
/// predecessor's time until the clock catches up.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's wall clock (0 if it reads before 1970).
    pub fn system() -> Clock {
        Clock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        }))
    }

    /// A clock read by calling `now` (tests use it to make time go
    /// backwards, or to step it exactly).
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The clock's reading, microseconds since the Unix epoch.
    pub fn now_us(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// When appended records are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Every append returns only after its record is fdatasynced. Concurrent
    /// appenders share one write and one fdatasync (group commit). An
    /// acknowledged record survives kill -9 and power loss.
    #[default]
    Always,
    /// Appends return once written to the OS; a background thread fdatasyncs
    /// every interval. An acknowledged record survives kill -9; power loss
    /// may lose the records of the last interval.
    Interval(Duration),
    /// Appends return once written to the OS, which writes them back when it
    /// likes. Survives kill -9, NOT power loss: not crash-safe.
    Never,
}

/// What recovery does with damage it finds at open (named as in RocksDB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn tail (damage at the end of the last segment that no later
    /// record proves was ever synced) is cut and reported; any other damage
    /// fails the open and changes nothing.
    #[default]
    TolerateCorruptedTail,
    /// Any damage, a torn tail included, fails the open; nothing is cut.
    AbsoluteConsistency,
    /// Recovery stops at the first damage of any kind: the log keeps the
    /// records before it, and the damaged bytes and every later segment are
    /// moved aside (never deleted) and reported.
    PointInTime,
    /// Salvage: damaged records are skipped and every valid record found
    /// after them is kept, leaving LSN gaps. Loud; for disaster recovery.
    SkipAnyCorruptedRecords,
}

/// Largest segment accepted: a segment is preallocated whole (the next one
/// in the background, so a 1 TiB setting would fill the file system) and
/// read whole into memory at recovery.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// Options of a [`Wal`](crate::Wal).
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// When records are made durable. Default: [`SyncPolicy::Always`].
    pub sync: SyncPolicy,
    /// What to do with damage at open. Default: tolerate a torn tail.
    pub recovery: RecoveryMode,
    /// Size at which a segment is closed and the next begun. Default 64 MiB.
    pub segment_size: u64,
    /// Whether segments are preallocated to `segment_size` (by a background
    /// thread for the next one). Default true.
    pub preallocate: bool,
    /// Largest payload accepted and read back. Default 128 MiB.
    pub max_record_size: u32,
    /// LSN of the first record when the directory holds no segment yet.
    /// Default 1. A store that keeps a checkpoint at LSN N and must start a
    /// new log sets N + 1, so LSNs never go back.
    pub start_lsn: u64,
    /// How payloads of at least `compression_min_size` bytes are stored.
    /// Default [`Compression::None`]. Each record says how it is stored, so
    /// changing this between opens is safe: old records read as written.
    pub compression: Compression,
    /// Payloads shorter than this are stored as is whatever `compression`
    /// says: too small to gain. Default 64 bytes.
    pub compression_min_size: usize,
    /// With [`Compression::Zstd`]: the largest dictionary trained from the
    /// log's own records, carried by each segment whose records use it
    /// ([`crate::dictionary`]); 0: no dictionary. Default 8 KiB. A segment
    /// carries a dictionary only if it takes at most a sixteenth of
    /// `segment_size`.
    pub zstd_dictionary_size: usize,
    /// What stamps records with their commit time. Default: the system
    /// clock.
    pub clock: Clock,
    /// Copy each segment into an archive before deleting it
    /// ([`truncate_before`](crate::Wal::truncate_before)). Default `None`:
    /// deleted segments are gone.
    pub archive: Option<ArchiveOptions>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            sync: SyncPolicy::Always,
            recovery: RecoveryMode::TolerateCorruptedTail,
            segment_size: 64 << 20,
            preallocate: true,
            max_record_size: 128 << 20,
            start_lsn: 1,
            compression: Compression::None,
            compression_min_size: 64,
            zstd_dictionary_size: 8 << 10,
            clock: Clock::system(),
            archive: None,
        }
    }
}

impl WalOptions {
    /// Checks every option against its bounds (the error names the option).
    pub fn validate(&self) -> Result<()> {
        if self.segment_size < 4096 {
            return Err(WalError::InvalidOptions(format!(
                "segment_size {} is below the minimum of 4096 bytes",
                self.segment_size
            )));
        }
        if self.segment_size > MAX_SEGMENT_SIZE {
            return Err(WalError::InvalidOptions(format!(
                "segment_size {} is above the maximum of {MAX_SEGMENT_SIZE} bytes (1 GiB): each segment is preallocated whole and read whole into memory at recovery",
                self.segment_size
            )));
        }
        if self.max_record_size == 0 || self.max_record_size > crate::format::MAX_RECORD_LEN_LIMIT {
            return Err(WalError::InvalidOptions(format!(
                "max_record_size must be between 1 and {} bytes",
                crate::format::MAX_RECORD_LEN_LIMIT
            )));
        }
        if self.zstd_dictionary_size > crate::format::MAX_DICTIONARY_LEN as usize {
            return Err(WalError::InvalidOptions(format!(
                "zstd_dictionary_size {} is above the maximum of {} bytes",
                self.zstd_dictionary_size,
                crate::format::MAX_DICTIONARY_LEN
            )));
        }
        if self.start_lsn == 0 {
            return Err(WalError::InvalidOptions(
                "start_lsn must be at least 1 (LSN 0 is never a record)".into(),
            ));
        }
        if let SyncPolicy::Interval(d) = self.sync {
            if d.is_zero() {
                return Err(WalError::InvalidOptions(
                    "SyncPolicy::Interval needs a non-zero interval (use Always to sync every write)"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}
