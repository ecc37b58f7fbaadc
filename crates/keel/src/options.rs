//! Options of a [`Db`](crate::Db), built in code or read from a TOML file.
//!
//! ```toml
//! sync = "always"              # or "never", or "interval:100ms"
//! segment_size = 67108864      # bytes per log segment
//! checkpoint_log_bytes = 67108864  # checkpoint after this much log (0: never by size)
//! checkpoint_interval = "10m"  # and/or after this long (omit: never by time)
//! checkpoint_bytes_per_sec = 33554432  # pace checkpoint writes (0: unlimited)
//! recovery = "tolerate-corrupted-tail"  # absolute-consistency, point-in-time, skip-any-corrupted-records
//! max_key_len = 65536
//! max_value_len = 67108864
//! memtable_size = 67108864     # the default: data in tables on disk (0: every key in memory)
//! cache_size = 67108864        # block cache of the tables
//! exact_key_count = true       # len() exact on tables (false: an estimate, faster fills)
//! ```

use crate::error::{Error, Result};
use keel_wal::{Compression, RecoveryMode, SyncPolicy};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default log segment size: large enough that rotation (an fdatasync of
/// the old segment, a rename and a directory fsync) is rare, small enough
/// that preallocating the next one takes well under a second.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default checkpoint trigger: recovery replays at most about this much log
/// (about a third of a second at the ~190 MB/s the engine replays and
/// applies, docs/BENCHMARKS.md, recovery-vs-redis).
pub const DEFAULT_CHECKPOINT_LOG_BYTES: u64 = 64 << 20;
/// Default checkpoint pace: a checkpoint shares the disk with the log's
/// fdatasyncs; unpaced, back-to-back checkpoints took write p99 from about
/// 0.4 ms to 12.7 ms (docs/BENCHMARKS.md), paced at 32 MiB/s to about 0.6 ms.
pub const DEFAULT_CHECKPOINT_BYTES_PER_SEC: u64 = 32 << 20;
/// Default longest key: keys are held in memory twice (map and hash index).
pub const DEFAULT_MAX_KEY_LEN: usize = 64 << 10;
/// Default longest value: one value is one log record, read whole at replay.
pub const DEFAULT_MAX_VALUE_LEN: usize = 64 << 20;
/// Default largest batch: a batch is one log record (atomic after a crash),
/// so it must fit in memory twice at replay.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 128 << 20;

/// Default block cache of a store on tables.
pub const DEFAULT_CACHE_SIZE: u64 = 64 << 20;
/// Default memtable: RocksDB's default `write_buffer_size`. Two at most
/// (one frozen while it flushes), each bounded in memory, not only in
/// payload bytes (`crate::memtable`).
pub const DEFAULT_MEMTABLE_SIZE: u64 = 64 << 20;
/// Smallest memtable accepted: smaller, every few writes would be a flush.
pub const MIN_MEMTABLE_SIZE: u64 = 16 << 10;

/// Longest key accepted at most: every key is held in memory twice (the
/// ordered map and the hash index).
pub const MAX_KEY_LEN_LIMIT: usize = 16 << 20;
/// Longest value accepted at most: a value is one log record, encoded and
/// replayed whole in memory.
pub const MAX_VALUE_LEN_LIMIT: usize = 1 << 30;
/// Slowest checkpoint pace accepted: slower, a checkpoint of a large state
/// would run for days while the log it would let go of keeps growing.
pub const MIN_CHECKPOINT_BYTES_PER_SEC: u64 = 64 << 10;

/// Options of a [`Db`](crate::Db). Build them from [`Options::default`]
/// (fields are public; new ones may be added, so the struct is
/// `#[non_exhaustive]`) or read them from TOML with [`Options::from_toml`],
/// where every key is optional and named as the field.
///
/// ```
/// let mut opts = keel::Options::default();
/// opts.segment_size = 16 << 20;
/// let from_file = keel::Options::from_toml("segment_size = 16777216").unwrap();
/// assert_eq!(opts, from_file);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Options {
    /// When writes are made durable. Default [`SyncPolicy::Always`]: a write
    /// returns only after its log record is fdatasynced. TOML: `"always"`,
    /// `"never"`, `"interval:100ms"`.
    #[serde(deserialize_with = "de_sync")]
    pub sync: SyncPolicy,
    /// Log segment size ([`DEFAULT_SEGMENT_SIZE`]).
    pub segment_size: u64,
    /// Checkpoint once this many log bytes were written since the last one
    /// ([`DEFAULT_CHECKPOINT_LOG_BYTES`]); `None` (TOML: 0) disables the
    /// size trigger.
    #[serde(deserialize_with = "de_zero_is_none")]
    pub checkpoint_log_bytes: Option<u64>,
    /// Checkpoint once this long has passed since the last one (if anything
    /// was written). Default `None`. TOML: `"10m"`.
    #[serde(deserialize_with = "de_duration")]
    pub checkpoint_interval: Option<Duration>,
    /// Most bytes per second a checkpoint writes (it sleeps between its
    /// 64 KiB blocks), so that checkpoints leave the disk to the log's
    /// fdatasyncs ([`DEFAULT_CHECKPOINT_BYTES_PER_SEC`]); `None` (TOML: 0):
    /// as fast as the disk goes.
    #[serde(deserialize_with = "de_zero_is_none")]
    pub checkpoint_bytes_per_sec: Option<u64>,
    /// What recovery does with a damaged log. Default: cut a torn tail,
    /// refuse anything else. TOML: `"tolerate-corrupted-tail"`,
    /// `"absolute-consistency"`, `"point-in-time"`, `"skip-any-corrupted-records"`.
    #[serde(deserialize_with = "de_recovery")]
    pub recovery: RecoveryMode,
    /// Longest key accepted ([`DEFAULT_MAX_KEY_LEN`]).
    pub max_key_len: usize,
    /// Longest value accepted ([`DEFAULT_MAX_VALUE_LEN`]).
    pub max_value_len: usize,
    /// Largest encoded batch accepted ([`DEFAULT_MAX_BATCH_BYTES`]).
    pub max_batch_bytes: usize,
    /// Whether an empty value may be stored. Default true. `keel serve`
    /// always sets it false, whatever its config file says: its HTTP
    /// contract refuses an empty body, and its Redis listener follows the
    /// same rule, so both protocols accept exactly the same writes.
    pub allow_empty_values: bool,
    /// Preallocate log segments (appends into allocated space fdatasync
    /// faster). Default true.
    pub preallocate: bool,
    /// Keep the data in tables on disk (an LSM tree, docs/DESIGN.md, "The
    /// LSM tree"), with the newest writes in a memtable of about this many
    /// bytes, so the data set may be larger than memory
    /// ([`DEFAULT_MEMTABLE_SIZE`]). `None` (TOML: 0): every key in memory,
    /// saved by checkpoints, as before tables (open is then a checkpoint
    /// load plus replay, and memory grows with the data set).
    /// On tables, `checkpoint_log_bytes` and `checkpoint_interval` trigger
    /// a flush of the memtable (bounding replay), and a checkpoint is a
    /// flush.
    /// TOML: bytes, or a string such as `"64MiB"` ([`parse_size`]).
    #[serde(deserialize_with = "de_size_zero_is_none")]
    pub memtable_size: Option<u64>,
    /// Bytes of table blocks cached in memory ([`DEFAULT_CACHE_SIZE`]; 0:
    /// none). Only with `memtable_size`. TOML: as `memtable_size`.
    #[serde(deserialize_with = "de_size")]
    pub cache_size: u64,
    /// On tables, whether [`Db::len`](crate::Db::len) is exact (the
    /// default). Exact costs a lookup in the tables below for each key new
    /// to a memtable, off the write path but not free: a random fill of
    /// 800k keys ran at 0.81x RocksDB's with it and 1.05x without
    /// (docs/BENCHMARKS.md). `false`: `len` is an estimate, as RocksDB's
    /// `estimate-num-keys`: the puts less the tombstones of every memtable
    /// and live table, so a key overwritten since the last compaction that
    /// reached it counts once per version. Turning it back on counts the
    /// keys once, at open, by reading every table. In memory
    /// (`memtable_size` 0) the count is always exact and free.
    pub exact_key_count: bool,
    /// How log records are stored: [`Compression::None`] (the default),
    /// `Snappy` or `Zstd`. A record of at least 64 bytes is compressed when
    /// that saves an eighth of it; each record says how it is stored, so
    /// this may change between opens. It compresses the log only (tables
    /// have their own block compression). zstd uses a dictionary trained
    /// from the log's own records, carried by each segment. On 1 KiB
    /// JSON-like values Snappy halves the log's bytes and zstd stores 5.2x
    /// fewer, both within 10% of uncompressed durable puts at 1 and 64
    /// writers (docs/BENCHMARKS.md). TOML: `"none"`, `"snappy"`, `"zstd"`.
    #[serde(deserialize_with = "de_compression")]
    pub wal_compression: Compression,
    /// Copy each log segment the store no longer needs (its records are in
    /// a checkpoint or in tables) into this directory, durably, before
    /// deleting it: with a backup, `keel restore` replays the archive to
    /// any point in time. If archiving fails (the archive's disk full, the
    /// directory gone), segments stay in the log, the failure is logged
    /// and counted (`Stats::wal.archive_failures`; the server's
    /// `keel_wal_archive_failures`), and writes go on;
    /// the log then grows until archiving works again or the data disk
    /// fills, when writes are refused (reads go on). Default `None`. Must
    /// not be the data directory or its log directory. Created at open.
    pub archive_dir: Option<PathBuf>,
    /// Delete archived segments whose every record is older than this
    /// (TOML: `"7d"`). Default `None`: kept whatever their age.
    #[serde(deserialize_with = "de_duration")]
    pub archive_retention_age: Option<Duration>,
    /// Delete the oldest archived segments while the archive holds more
    /// than this (TOML: bytes or `"10GiB"`; 0: no limit). The newest
    /// archived segment is always kept. Default `None`.
    #[serde(deserialize_with = "de_size_zero_is_none")]
    pub archive_retention_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncPolicy::Always,
            segment_size: DEFAULT_SEGMENT_SIZE,
            checkpoint_log_bytes: Some(DEFAULT_CHECKPOINT_LOG_BYTES),
            checkpoint_interval: None,
            checkpoint_bytes_per_sec: Some(DEFAULT_CHECKPOINT_BYTES_PER_SEC),
            recovery: RecoveryMode::TolerateCorruptedTail,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            allow_empty_values: true,
            preallocate: true,
            memtable_size: Some(DEFAULT_MEMTABLE_SIZE),
            cache_size: DEFAULT_CACHE_SIZE,
            exact_key_count: true,
            wal_compression: Compression::None,
            archive_dir: None,
            archive_retention_age: None,
            archive_retention_bytes: None,
        }
    }
}

fn de_compression<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Compression, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

fn de_sync<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<SyncPolicy, D::Error> {
    parse_sync(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn de_recovery<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<RecoveryMode, D::Error> {
    parse_recovery(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    parse_duration(&String::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A size in TOML: an integer (bytes) or a string [`parse_size`] reads.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn de_size_zero_is_none<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    Ok(Some(de_size(d)?).filter(|v| *v > 0))
}

fn de_zero_is_none<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    Ok(Some(u64::deserialize(d)?).filter(|v| *v > 0))
}

impl Options {
    /// Parses options from TOML text; keys left out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Options> {
        let o: Options = toml::from_str(text).map_err(|e| Error::InvalidOptions(e.to_string()))?;
        o.validate()?;
        Ok(o)
    }

    /// Reads options from a TOML file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Options> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidOptions(format!("cannot read {}: {e}", path.display())))?;
        Options::from_toml(&text).map_err(|e| match e {
            Error::InvalidOptions(m) => Error::InvalidOptions(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Checks every option against its bounds; the error names the option,
    /// the value and the bound.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_key_len == 0 || self.max_key_len > MAX_KEY_LEN_LIMIT {
            return Err(Error::InvalidOptions(format!(
                "max_key_len {} must be between 1 and {MAX_KEY_LEN_LIMIT} bytes (16 MiB)",
                self.max_key_len
            )));
        }
        if self.max_value_len > MAX_VALUE_LEN_LIMIT {
            return Err(Error::InvalidOptions(format!(
                "max_value_len {} must be at most {MAX_VALUE_LEN_LIMIT} bytes (1 GiB)",
                self.max_value_len
            )));
        }
        if self
            .checkpoint_bytes_per_sec
            .is_some_and(|r| r < MIN_CHECKPOINT_BYTES_PER_SEC)
        {
            return Err(Error::InvalidOptions(format!(
                "checkpoint_bytes_per_sec must be at least {MIN_CHECKPOINT_BYTES_PER_SEC} (64 KiB/s), or 0 for unpaced"
            )));
        }
        if self.memtable_size.is_some_and(|m| m < MIN_MEMTABLE_SIZE) {
            return Err(Error::InvalidOptions(format!(
                "memtable_size must be at least {MIN_MEMTABLE_SIZE} bytes (16 KiB), or 0 to keep every key in memory"
            )));
        }
        if self.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOptions(
                "checkpoint_interval must be above zero (omit it to checkpoint by log size only)"
                    .into(),
            ));
        }
        self.wal_options(1)
            .validate()
            .map_err(|e| Error::InvalidOptions(e.to_string()))?;
        let largest_put = 9 + self.max_key_len + self.max_value_len;
        if largest_put > self.max_batch_bytes {
            return Err(Error::InvalidOptions(format!(
                "max_batch_bytes ({}) must hold the largest put (key {} + value {} + 9 bytes)",
                self.max_batch_bytes, self.max_key_len, self.max_value_len
            )));
        }
        if self.max_batch_bytes > keel_wal::format::MAX_RECORD_LEN_LIMIT as usize {
            return Err(Error::InvalidOptions(format!(
                "max_batch_bytes must be at most {} bytes",
                keel_wal::format::MAX_RECORD_LEN_LIMIT
            )));
        }
        Ok(())
    }

    pub(crate) fn wal_options(&self, start_lsn: u64) -> keel_wal::WalOptions {
        keel_wal::WalOptions {
            sync: self.sync,
            recovery: self.recovery,
            segment_size: self.segment_size,
            preallocate: self.preallocate,
            max_record_size: self.max_batch_bytes as u32,
            start_lsn,
            compression: self.wal_compression,
            archive: self
                .archive_dir
                .as_ref()
                .map(|dir| keel_wal::ArchiveOptions {
                    dir: dir.clone(),
                    max_age: self.archive_retention_age,
                    max_bytes: self.archive_retention_bytes,
                }),
            ..keel_wal::WalOptions::default()
        }
    }
}

/// Parses a sync policy: `always`, `never`, or `interval:<duration>`.
pub fn parse_sync(s: &str) -> Result<SyncPolicy> {
    match s.trim() {
        "always" => Ok(SyncPolicy::Always),
        "never" => Ok(SyncPolicy::Never),
        other => match other.strip_prefix("interval:") {
            Some(d) => {
                let d = parse_duration(d)?;
                if d.is_zero() {
                    return Err(Error::InvalidOptions(
                        "sync interval must be above zero (use `always` to sync every write)"
                            .into(),
                    ));
                }
                Ok(SyncPolicy::Interval(d))
            }
            None => Err(Error::InvalidOptions(format!(
                "unknown sync policy {other:?}: use `always`, `never` or `interval:100ms`"
            ))),
        },
    }
}

/// Parses a size in bytes: `65536`, or with a binary unit, `64KiB`,
/// `64MiB`, `2GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of
/// 1024, as memory sizes are).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let bad = || {
        Error::InvalidOptions(format!(
            "bad size {s:?}: expected bytes, or a number with KiB, MiB or GiB (e.g. 64MiB)"
        ))
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses a duration such as `250ms`, `1s`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        Error::InvalidOptions(format!("bad duration {s:?}: expected e.g. 100ms, 1s, 5m"))
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "h" | "d" => {
            let unit = match unit {
                "m" => 60,
                "h" => 3600,
                _ => 86_400,
            };
            Duration::from_secs(
                n.checked_mul(unit)
                    .ok_or_else(|| Error::InvalidOptions(format!("duration {s:?} is too long")))?,
            )
        }
        _ => {
            return Err(Error::InvalidOptions(format!(
                "bad duration unit in {s:?}: use ms, s, m, h or d"
            )))
        }
    };
    Ok(d)
}

/// Parses a recovery mode as named in TOML (`point-in-time`, ...).
pub fn parse_recovery(s: &str) -> Result<RecoveryMode> {
    match s {
        "tolerate-corrupted-tail" => Ok(RecoveryMode::TolerateCorruptedTail),
        "absolute-consistency" => Ok(RecoveryMode::AbsoluteConsistency),
        "point-in-time" => Ok(RecoveryMode::PointInTime),
        "skip-any-corrupted-records" => Ok(RecoveryMode::SkipAnyCorruptedRecords),
        other => Err(Error::InvalidOptions(format!(
            "unknown recovery mode {other:?}: use tolerate-corrupted-tail, absolute-consistency, point-in-time or skip-any-corrupted-records"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_sets_what_it_names_and_keeps_the_rest() {
        let o = Options::from_toml(
            "sync = \"interval:100ms\"\ncheckpoint_interval = \"5m\"\nrecovery = \"point-in-time\"\nmax_key_len = 128\n",
        )
        .unwrap();
        assert_eq!(o.sync, SyncPolicy::Interval(Duration::from_millis(100)));
        assert_eq!(o.checkpoint_interval, Some(Duration::from_secs(300)));
        assert_eq!(o.recovery, RecoveryMode::PointInTime);
        assert_eq!(o.max_key_len, 128);
        assert_eq!(o.segment_size, Options::default().segment_size);
        assert_eq!(o.memtable_size, Some(DEFAULT_MEMTABLE_SIZE));
        let o = Options::from_toml("memtable_size = \"64MiB\"\ncache_size = 1048576\n").unwrap();
        assert_eq!((o.memtable_size, o.cache_size), (Some(64 << 20), 1 << 20));
        let o = Options::from_toml("memtable_size = 0").unwrap();
        assert_eq!(o.memtable_size, None);
    }

    #[test]
    fn sizes_take_binary_units() {
        for (text, want) in [
            ("65536", 65536),
            ("64KiB", 64 << 10),
            ("64 MiB", 64 << 20),
            ("2G", 2 << 30),
            ("1gb", 1 << 30),
        ] {
            assert_eq!(parse_size(text).unwrap(), want, "{text}");
        }
        for bad in ["", "MiB", "12 parsecs", "99999999999999GiB", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let e = Options::from_toml("sync = \"sometimes\"").unwrap_err();
        assert!(e.to_string().contains("interval:100ms"), "{e}");
        let e = Options::from_toml("colour = 1").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_sync("interval:0ms").is_err());
        let e = Options::from_toml("max_value_len = 999999999").unwrap_err();
        assert!(e.to_string().contains("max_batch_bytes"), "{e}");
        for (toml, says) in [
            ("segment_size = 1099511627776", "segment_size"),
            ("segment_size = 100", "segment_size"),
            ("max_value_len = 999999999999", "max_value_len"),
            ("max_key_len = 0", "max_key_len"),
            ("checkpoint_bytes_per_sec = 10", "checkpoint_bytes_per_sec"),
            ("checkpoint_interval = \"0s\"", "checkpoint_interval"),
            ("memtable_size = 1000", "memtable_size"),
            ("memtable_size = \"64 parsecs\"", "64 parsecs"),
        ] {
            let e = Options::from_toml(toml).unwrap_err();
            assert!(e.to_string().contains(says), "{toml}: {e}");
        }
    }
}
