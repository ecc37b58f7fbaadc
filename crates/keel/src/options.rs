//! Options of a [`Db`](crate::Db), built in code or read from a TOML file.
//!
//! ```toml
//! sync = "always"              # or "never", or "interval:100ms"
//! segment_size = 67108864      # bytes per log segment
//! checkpoint_log_bytes = 67108864  # checkpoint after this much log (0: never by size)
//! checkpoint_interval = "10m"  # and/or after this long (omit: never by time)
//! checkpoint_bytes_per_sec = 67108864  # pace checkpoint writes (0: unlimited)
//! recovery = "tolerate-corrupted-tail"  # absolute-consistency, point-in-time, skip-any-corrupted-records
//! max_key_len = 65536
//! max_value_len = 67108864
//! ```

use crate::error::{Error, Result};
use keel_wal::{RecoveryMode, SyncPolicy};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// Options of a [`Db`](crate::Db).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// When writes are made durable. Default [`SyncPolicy::Always`]: a write
    /// returns only after its log record is fdatasynced.
    pub sync: SyncPolicy,
    /// Log segment size. Default 64 MiB.
    pub segment_size: u64,
    /// Checkpoint once this many log bytes were written since the last one.
    /// Default 64 MiB; `None` disables the size trigger.
    pub checkpoint_log_bytes: Option<u64>,
    /// Checkpoint once this long has passed since the last one (if anything
    /// was written). Default `None`.
    pub checkpoint_interval: Option<Duration>,
    /// Most bytes per second a checkpoint writes (it sleeps between 1 MiB
    /// blocks), so that checkpoints leave the disk to the log's fdatasyncs.
    /// Default 64 MiB/s; `None`: as fast as the disk goes.
    pub checkpoint_bytes_per_sec: Option<u64>,
    /// What recovery does with a damaged log. Default: cut a torn tail,
    /// refuse anything else.
    pub recovery: RecoveryMode,
    /// Longest key accepted. Default 64 KiB.
    pub max_key_len: usize,
    /// Longest value accepted. Default 64 MiB.
    pub max_value_len: usize,
    /// Largest encoded batch accepted. Default 128 MiB.
    pub max_batch_bytes: usize,
    /// Preallocate log segments. Default true.
    pub preallocate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncPolicy::Always,
            segment_size: 64 << 20,
            checkpoint_log_bytes: Some(64 << 20),
            checkpoint_interval: None,
            checkpoint_bytes_per_sec: Some(32 << 20),
            recovery: RecoveryMode::TolerateCorruptedTail,
            max_key_len: 64 << 10,
            max_value_len: 64 << 20,
            max_batch_bytes: 128 << 20,
            preallocate: true,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    sync: Option<String>,
    segment_size: Option<u64>,
    checkpoint_log_bytes: Option<u64>,
    checkpoint_interval: Option<String>,
    checkpoint_bytes_per_sec: Option<u64>,
    recovery: Option<String>,
    max_key_len: Option<usize>,
    max_value_len: Option<usize>,
    max_batch_bytes: Option<usize>,
    preallocate: Option<bool>,
}

impl Options {
    /// Parses options from TOML text; keys left out keep their defaults.
    pub fn from_toml(text: &str) -> Result<Options> {
        let f: FileOptions =
            toml::from_str(text).map_err(|e| Error::InvalidOptions(e.to_string()))?;
        let mut o = Options::default();
        if let Some(s) = f.sync {
            o.sync = parse_sync(&s)?;
        }
        if let Some(v) = f.segment_size {
            o.segment_size = v;
        }
        if let Some(v) = f.checkpoint_log_bytes {
            o.checkpoint_log_bytes = (v > 0).then_some(v);
        }
        if let Some(s) = f.checkpoint_interval {
            o.checkpoint_interval = Some(parse_duration(&s)?);
        }
        if let Some(v) = f.checkpoint_bytes_per_sec {
            o.checkpoint_bytes_per_sec = (v > 0).then_some(v);
        }
        if let Some(s) = f.recovery {
            o.recovery = parse_recovery(&s)?;
        }
        if let Some(v) = f.max_key_len {
            o.max_key_len = v;
        }
        if let Some(v) = f.max_value_len {
            o.max_value_len = v;
        }
        if let Some(v) = f.max_batch_bytes {
            o.max_batch_bytes = v;
        }
        if let Some(v) = f.preallocate {
            o.preallocate = v;
        }
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

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_key_len == 0 {
            return Err(Error::InvalidOptions(
                "max_key_len must be at least 1".into(),
            ));
        }
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
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(Error::InvalidOptions(format!(
                "bad duration unit in {s:?}: use ms, s, m or h"
            )))
        }
    };
    Ok(d)
}

fn parse_recovery(s: &str) -> Result<RecoveryMode> {
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
    }

    #[test]
    fn bad_options_say_what_is_wrong() {
        let e = Options::from_toml("sync = \"sometimes\"").unwrap_err();
        assert!(e.to_string().contains("interval:100ms"), "{e}");
        let e = Options::from_toml("colour = 1").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_sync("interval:0ms").is_err());
        let e = Options::from_toml("max_value_len = 999999999999").unwrap_err();
        assert!(e.to_string().contains("max_batch_bytes"), "{e}");
    }
}
