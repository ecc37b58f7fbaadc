//! Opening a data directory: the engine's half of recovery. The log's half
//! (torn tail or corruption, recovery modes) is `keel_wal::recovery`.
//!
//! The steps, each a function below:
//! 1. `remove_checkpoint_temps`: an interrupted checkpoint never counts.
//! 2. `choose_checkpoint`: the newest checkpoint that verifies is the base;
//!    newer damaged ones are reported and passed over, and the one before the
//!    base is remembered (it and the log after it are kept as a fallback).
//! 3. `replay_log`: open the log, replaying every record after the base.
//! 4. `check_continuity`: the log must continue the base exactly. The same
//!    judgment is what `keel verify` applies (`crate::inspect`), so verify
//!    says "sound" only of a store that opens.

use crate::checkpoint::{self, CheckpointError, Tree};
use crate::error::{Error, Result};
use crate::keyspace::{Keyspace, Replay};
use crate::layout::DataDir;
use crate::metadata::Metadata;
use crate::op::Op;
use crate::options::Options;
use keel_storage::Storage;
use keel_wal::Wal;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replay reports progress to the open's caller every this many records.
const PROGRESS_EVERY: u64 = 8192;
/// What a log record costs beyond its payload (a 40-byte header and
/// padding, rounded up), for counting log bytes towards the next
/// checkpoint. Payloads count uncompressed: what bounds replay is the work
/// of decoding and applying them, not the bytes on disk.
pub(crate) const RECORD_OVERHEAD: u64 = 44;

/// A checkpoint recovery started from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointUsed {
    /// Its file.
    pub path: PathBuf,
    /// Its LSN.
    pub lsn: u64,
    /// Entries it held.
    pub entries: u64,
}

/// What [`Db::open`](crate::Db::open) found and did.
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    /// The checkpoint loaded, if any.
    pub checkpoint: Option<CheckpointUsed>,
    /// On tables: the tables the manifest names and where the log starts.
    pub tables: Option<TablesUsed>,
    /// Newer checkpoints that were damaged and passed over, and why.
    pub damaged_checkpoints: Vec<(PathBuf, CheckpointError)>,
    /// Interrupted checkpoint temp files removed.
    pub checkpoint_temps_removed: usize,
    /// What the log's recovery found and did (torn tail cut, ...).
    pub wal: keel_wal::RecoveryReport,
    /// Log records applied on top of the checkpoint.
    pub records_replayed: u64,
    /// Keys after recovery. On tables (`Options::memtable_size`) an upper
    /// bound: the replayed keys are not yet looked up in the tables
    /// (`Db::len` is exact).
    pub keys: usize,
    /// The LSN the state is at.
    pub lsn: u64,
    /// Total time.
    pub duration: Duration,
}

/// The tables a store on tables opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablesUsed {
    /// Live tables, and their bytes.
    pub tables: usize,
    /// See `tables`.
    pub bytes: u64,
    /// The log is replayed from this LSN (records below are in tables).
    pub log_start: u64,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.tables, &self.checkpoint) {
            (Some(t), _) => write!(
                f,
                "{} tables ({} bytes), log from LSN {}",
                t.tables, t.bytes, t.log_start
            )?,
            (None, Some(c)) => write!(f, "checkpoint at LSN {} ({} keys)", c.lsn, c.entries)?,
            (None, None) => write!(f, "no checkpoint")?,
        }
        let at_most = if self.tables.is_some() {
            "at most "
        } else {
            ""
        };
        write!(
            f,
            " + {} log records replayed -> {at_most}{} keys at LSN {} in {:.1?}",
            self.records_replayed, self.keys, self.lsn, self.duration
        )?;
        for (p, why) in &self.damaged_checkpoints {
            write!(
                f,
                "; DAMAGED checkpoint {} passed over ({why})",
                p.display()
            )?;
        }
        write!(f, "; log: {}", self.wal)
    }
}

/// The checkpoints found, and which one recovery starts from.
pub(crate) struct CheckpointChoice {
    /// The newest checkpoint that verifies, and its state.
    pub base: Option<(CheckpointUsed, Tree, Metadata)>,
    /// The checkpoint just older than the base (kept as a fallback).
    pub older: Option<(u64, PathBuf)>,
    /// Newer checkpoints that did not verify.
    pub damaged: Vec<(PathBuf, CheckpointError)>,
}

impl CheckpointChoice {
    /// The LSN the log must continue from (0: no checkpoint).
    pub fn base_lsn(&self) -> u64 {
        self.base.as_ref().map_or(0, |(u, _, _)| u.lsn)
    }
}

/// Everything [`Db`](crate::Db) needs to start serving.
pub(crate) struct Recovered {
    pub wal: Wal,
    pub keys: Keyspace,
    /// Application metadata as of the last record.
    pub metadata: Metadata,
    pub report: RecoveryReport,
    /// The checkpoint the state started from, and the one before it.
    pub newest: Option<(u64, PathBuf)>,
    pub older: Option<(u64, PathBuf)>,
    /// Log bytes after the newest checkpoint (towards the next one).
    pub log_bytes: u64,
}

/// Recovers the store in `dir` (whose lock the caller holds).
pub(crate) fn recover(
    storage: &Arc<dyn Storage>,
    dir: &DataDir,
    opts: &Options,
    progress: &dyn Fn(u64),
) -> Result<Recovered> {
    let started = Instant::now();
    let temps = remove_checkpoint_temps(&**storage, dir)?;
    let choice = choose_checkpoint(&**storage, dir, opts.max_key_len, opts.max_value_len)?;
    let base_lsn = choice.base_lsn();
    let (used, tree, metadata) = match choice.base {
        Some((used, tree, metadata)) => (Some(used), tree, metadata),
        None => (None, Tree::new(), Metadata::new()),
    };
    let replayed = replay_log(storage, dir, opts, base_lsn, (tree, metadata), progress)?;
    let last_lsn = replayed.wal.next_lsn() - 1;
    check_continuity(
        &dir.log_dir(),
        base_lsn,
        &choice.damaged,
        replayed.wal.first_lsn(),
        last_lsn,
    )?;
    let report = RecoveryReport {
        tables: None,
        checkpoint: used.clone(),
        damaged_checkpoints: choice.damaged,
        checkpoint_temps_removed: temps,
        wal: replayed.report,
        records_replayed: replayed.records,
        keys: replayed.keys.len(),
        lsn: last_lsn,
        duration: started.elapsed(),
    };
    if report.damaged_checkpoints.is_empty() && report.wal.torn_tail.is_none() {
        tracing::debug!(%report, "keel recovered");
    } else {
        tracing::warn!(%report, "keel recovered with damage");
    }
    Ok(Recovered {
        wal: replayed.wal,
        keys: replayed.keys,
        metadata: replayed.metadata,
        report,
        newest: used.map(|u| (u.lsn, u.path)),
        older: choice.older,
        log_bytes: replayed.bytes,
    })
}

/// Removes the temp files of interrupted checkpoints; returns how many.
pub(crate) fn remove_checkpoint_temps(storage: &dyn Storage, dir: &DataDir) -> Result<usize> {
    let (_, temps) = dir.list_checkpoints(storage)?;
    for t in &temps {
        storage
            .remove(t)
            .map_err(|e| Error::io("removing an interrupted checkpoint", t, e))?;
    }
    if !temps.is_empty() {
        // The removals are durable only once the directory is.
        storage
            .sync_dir(dir.root())
            .map_err(|e| Error::io("syncing the data directory", dir.root(), e))?;
    }
    Ok(temps.len())
}

/// Reads checkpoints newest first until one verifies (its name and header
/// agree, every checksum holds, keys and values within the limits).
pub(crate) fn choose_checkpoint(
    storage: &dyn Storage,
    dir: &DataDir,
    max_key: usize,
    max_value: usize,
) -> Result<CheckpointChoice> {
    let (found, _) = dir.list_checkpoints(storage)?;
    let mut choice = CheckpointChoice {
        base: None,
        older: None,
        damaged: Vec::new(),
    };
    for (lsn, path) in found {
        if choice.base.is_some() {
            choice.older = Some((lsn, path));
            break;
        }
        let checked = checkpoint::read(storage, &path, max_key, max_value).and_then(|c| {
            if c.0.lsn == lsn {
                Ok(c)
            } else {
                Err(CheckpointError::LsnMismatch {
                    name: lsn,
                    header: c.0.lsn,
                })
            }
        });
        match checked {
            Ok((h, tree, metadata)) => {
                let used = CheckpointUsed {
                    path,
                    lsn: h.lsn,
                    entries: h.count,
                };
                choice.base = Some((used, tree, metadata));
            }
            Err(why) => {
                tracing::error!(path = %path.display(), %why, "damaged checkpoint passed over");
                choice.damaged.push((path, why));
            }
        }
    }
    Ok(choice)
}

/// The log opened and replayed onto a checkpoint's state.
struct Replayed {
    wal: Wal,
    report: keel_wal::RecoveryReport,
    keys: Keyspace,
    metadata: Metadata,
    records: u64,
    bytes: u64,
}

/// Opens the log and applies every record after `base_lsn` to a
/// checkpoint's keys and metadata.
fn replay_log(
    storage: &Arc<dyn Storage>,
    dir: &DataDir,
    opts: &Options,
    base_lsn: u64,
    (tree, mut metadata): (Tree, Metadata),
    progress: &dyn Fn(u64),
) -> Result<Replayed> {
    let mut keys = Replay::new(tree);
    let r = replay_ops(storage, dir, opts, base_lsn + 1, progress, |_, op| {
        keys.apply(op, &mut metadata);
        Ok(())
    })?;
    Ok(Replayed {
        wal: r.wal,
        report: r.report,
        keys: keys.finish(),
        metadata,
        records: r.records,
        bytes: r.bytes,
    })
}

/// The log opened, and what replaying it found.
pub(crate) struct OpsReplayed {
    pub wal: Wal,
    pub report: keel_wal::RecoveryReport,
    /// Records applied, and their log bytes.
    pub records: u64,
    pub bytes: u64,
}

/// Opens the log in `dir` and passes every record from `from` on, decoded,
/// to `apply`, in LSN order, reporting progress every 8,192 records. A
/// record that does not decode, or that `apply` fails on, fails the open.
pub(crate) fn replay_ops(
    storage: &Arc<dyn Storage>,
    dir: &DataDir,
    opts: &Options,
    from: u64,
    progress: &dyn Fn(u64),
    mut apply: impl FnMut(u64, Op) -> Result<()>,
) -> Result<OpsReplayed> {
    if let Some(archive) = &opts.archive_dir {
        if archive == dir.root() || *archive == dir.log_dir() {
            return Err(Error::InvalidOptions(format!(
                "archive_dir {} is the data directory or its log: give the archive a directory of its own (another disk is best)",
                archive.display()
            )));
        }
    }
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut failed: Option<Error> = None;
    let (wal, report) = Wal::open_with_replay(
        Arc::clone(storage),
        dir.log_dir(),
        opts.wal_options(from),
        from,
        |record| {
            let (lsn, payload) = (record.lsn, record.payload);
            if failed.is_some() {
                return;
            }
            let applied = Op::decode(payload)
                .map_err(|why| Error::BadRecord { lsn, why })
                .and_then(|op| apply(lsn, op));
            match applied {
                Ok(()) => {
                    records += 1;
                    bytes += payload.len() as u64 + RECORD_OVERHEAD;
                    if records.is_multiple_of(PROGRESS_EVERY) {
                        progress(records);
                    }
                }
                Err(e) => failed = Some(e),
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(OpsReplayed {
        wal,
        report,
        records,
        bytes,
    })
}

/// The log (holding `log_first..=log_last`) must continue the checkpoint at
/// `base_lsn`: hold `base_lsn + 1` onwards, or end exactly at `base_lsn`.
/// If not, and a newer checkpoint was passed over as damaged, that damage is
/// the error (the log was trimmed after it); otherwise records are missing.
pub(crate) fn check_continuity(
    log_dir: &Path,
    base_lsn: u64,
    damaged: &[(PathBuf, CheckpointError)],
    log_first: u64,
    log_last: u64,
) -> Result<()> {
    if log_first <= base_lsn + 1 && log_last >= base_lsn {
        return Ok(());
    }
    if let Some((path, why)) = damaged.first() {
        return Err(Error::CheckpointDamaged {
            path: path.clone(),
            why: why.clone(),
        });
    }
    Err(Error::LogGap {
        dir: log_dir.to_path_buf(),
        checkpoint_lsn: base_lsn,
        log_first,
        log_last,
    })
}
