//! Restore: a backup copied into a new data directory, which then opens as
//! a store holding exactly the backup's state.
//!
//! Invariants:
//! - Only a complete backup is restored: one with a valid `BACKUP` marker
//!   and no `BACKUP-IN-PROGRESS`; anything else is refused by name.
//! - The destination must not exist; the backup is only read.
//! - The copy is durable (each file fdatasynced, each directory fsynced)
//!   before restore returns; the markers are not copied, so the result is
//!   a store.

use crate::backup::{backup_state, BackupMarker, BackupState, BACKUP_IN_PROGRESS, BACKUP_MARKER};
use crate::error::{Error, Result};
use crate::layout::{LOG_DIR, MANIFEST_DIR, TABLES_DIR};
use keel_storage::Storage;
use std::path::Path;

/// Checks that `backup` is a complete backup and returns its marker.
pub fn check_backup(storage: &dyn Storage, backup: &Path) -> Result<BackupMarker> {
    match backup_state(storage, backup)? {
        BackupState::Complete(m) => Ok(m),
        BackupState::Incomplete => Err(Error::NotABackup {
            dir: backup.to_path_buf(),
            why: format!("it holds {BACKUP_IN_PROGRESS}: the backup was interrupted and is incomplete; take a new one"),
        }),
        BackupState::NotABackup => Err(Error::NotABackup {
            dir: backup.to_path_buf(),
            why: format!("it has no {BACKUP_MARKER} file (a backup is marked complete last: this one never finished, or the directory is not a backup)"),
        }),
    }
}

/// Copies the complete backup `backup` into `into` (which must not exist),
/// durably, without its markers. Returns the backup's marker.
pub fn copy_backup(storage: &dyn Storage, backup: &Path, into: &Path) -> Result<BackupMarker> {
    let marker = check_backup(storage, backup)?;
    crate::backup::check_destination(storage, into)?;
    for sub in ["", TABLES_DIR, MANIFEST_DIR, LOG_DIR] {
        let from = backup.join(sub);
        let Ok(names) = storage.list(&from) else {
            continue;
        };
        let to = into.join(sub);
        keel_storage::create_dir_durable(storage, &to)?;
        for name in names {
            if sub.is_empty() && (name == BACKUP_MARKER || name == BACKUP_IN_PROGRESS) {
                continue;
            }
            crate::backup::copy_file(storage, &from.join(&name), &to.join(&name))?;
        }
        // The copies' names are durable once their directory is.
        storage
            .sync_dir(&to)
            .map_err(|e| Error::io("syncing a restored directory", &to, e))?;
    }
    Ok(marker)
}

/// Where a restore stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// After the record with this LSN (included).
    Lsn(u64),
    /// After the last record committed at or before this time
    /// (microseconds since the Unix epoch).
    Time(u64),
    /// After the last record the archive and the source's log hold.
    Latest,
}

/// What a restore reads and where it writes.
#[derive(Clone, Debug)]
pub struct RestoreRequest<'a> {
    /// A complete backup.
    pub backup: &'a Path,
    /// The new data directory (must not exist).
    pub into: &'a Path,
    /// A log archive (`archive_dir`) to replay from.
    pub archive_dir: Option<&'a Path>,
    /// A stopped data directory whose log is replayed after the archive
    /// (only read).
    pub source: Option<&'a Path>,
    /// Where to stop.
    pub target: RestoreTarget,
}

/// Why a restore stopped where it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStop {
    /// The next record is past the target (or the target LSN was reached).
    TargetReached,
    /// No segment holds the next record: the archive and the source's log
    /// end (or have a gap) there.
    LogRanOut {
        /// The first LSN no segment holds.
        next_lsn: u64,
    },
    /// The source's last segment ends in a torn write (bytes never
    /// acknowledged): the records before it were replayed.
    TornTail {
        /// The LSN of the torn record.
        lsn: u64,
    },
}

/// What [`restore`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// The backup's LSN.
    pub backup_lsn: u64,
    /// The last record the restored store holds.
    pub reached_lsn: u64,
    /// That record's commit time (microseconds since the Unix epoch; 0 if
    /// it has none).
    pub reached_time_us: u64,
    /// Why it stopped there.
    pub stop: RestoreStop,
    /// Records replayed after the backup's LSN.
    pub records_after_backup: u64,
    /// Log segments copied from the archive or the source.
    pub segments_copied: usize,
    /// Bytes of those segments read and checked while planning.
    pub log_bytes_scanned: u64,
    /// How long planning took: reading and checking every record after
    /// the backup's LSN (the replay of the archived log, before a byte is
    /// written).
    pub plan_duration: std::time::Duration,
    /// How long copying the backup and the segments took (with fsyncs).
    pub copy_duration: std::time::Duration,
    /// How long the check took: opening the result, which applies the
    /// records to the engine as any recovery does.
    pub open_duration: std::time::Duration,
}

/// One segment of the plan: copy `path` cut at `cut` bytes.
struct PlannedSegment {
    path: std::path::PathBuf,
    name: std::ffi::OsString,
    cut: u64,
}

/// Restores `req.backup` into `req.into`, then replays the log records
/// after the backup's LSN that the archive and the source's log hold, up to
/// the target, by copying their segments (records keep their LSNs and
/// times) cut after the last record wanted. Everything is planned and
/// checked before anything is written: a target before the backup, a
/// target not reached (unless [`RestoreTarget::Latest`]), damage in the
/// middle of the log, or segments of another log fail with nothing
/// written. The result is durable and opens as a store at exactly the
/// reached LSN (checked by opening it).
///
/// About 80 lines: the steps above, each a few lines, read top to bottom.
pub fn restore(
    storage: std::sync::Arc<dyn Storage>,
    req: &RestoreRequest<'_>,
) -> Result<RestoreReport> {
    let st = &*storage;
    let marker = check_backup(st, req.backup)?;
    match req.target {
        RestoreTarget::Lsn(n) if n < marker.lsn => {
            return Err(Error::RestoreTarget(format!(
                "the backup is at LSN {}, after the target LSN {n}: restore from an older backup",
                marker.lsn
            )))
        }
        RestoreTarget::Time(t) if marker.time_us > t => {
            return Err(Error::RestoreTarget(format!(
                "the backup's last record was committed at {} µs, after the target time {t} µs: restore from an older backup",
                marker.time_us
            )))
        }
        _ => {}
    }
    crate::backup::check_destination(st, req.into)?;
    let started = std::time::Instant::now();
    let log_id = backup_log_id(st, req.backup)?;
    let (plan, mut report) = plan(st, req, &marker, log_id)?;
    report.plan_duration = started.elapsed();
    let started = std::time::Instant::now();
    copy_backup(st, req.backup, req.into)?;
    let log_dir = req.into.join(LOG_DIR);
    keel_storage::create_dir_durable(st, &log_dir)?;
    for seg in &plan {
        let target = log_dir.join(&seg.name);
        let src = st
            .open(&seg.path, keel_storage::OpenMode::Read)
            .map_err(|e| Error::io("opening", &seg.path, e))?;
        let mut bytes = vec![0u8; seg.cut as usize];
        src.read_exact_at(&mut bytes, 0)
            .map_err(|e| Error::io("reading", &seg.path, e))?;
        // Replaces the backup's shorter copy of the same segment, if any.
        keel_storage::write_atomic(st, &target, |f, _| f.write_at(&bytes, 0))?;
    }
    report.copy_duration = started.elapsed();
    let started = std::time::Instant::now();
    // Open it once: it must recover to exactly the reached LSN. (No
    // preallocated segment: the store's own open makes one.)
    let mut opts = crate::Options::default();
    opts.preallocate = false;
    opts.memtable_size = if st
        .exists(&req.into.join(MANIFEST_DIR))
        .map_err(|e| Error::io("checking", req.into, e))?
        || st.list(&req.into.join(MANIFEST_DIR)).is_ok()
    {
        opts.memtable_size
    } else {
        None
    };
    let (db, _) = crate::Db::builder(req.into)
        .options(opts)
        .storage(storage)
        .open()?;
    let applied = db.stats().applied_lsn;
    db.close()?;
    report.open_duration = started.elapsed();
    if applied != report.reached_lsn {
        return Err(Error::RestoreTarget(format!(
            "the restored store recovered to LSN {applied}, not the planned {}: report this",
            report.reached_lsn
        )));
    }
    Ok(report)
}

/// The log id of the backup's log segments (`None` if it holds none).
fn backup_log_id(storage: &dyn Storage, backup: &Path) -> Result<Option<u64>> {
    let segs = keel_wal::inspect::segment_files(storage, &backup.join(LOG_DIR)).unwrap_or_default();
    for s in segs {
        let summary = keel_wal::inspect::inspect_segment(storage, &s, 0, false, |_, _| {})?;
        if let Ok(h) = summary.header {
            return Ok(Some(h.log_id));
        }
    }
    Ok(None)
}

/// Works out which segments to copy and where to cut them.
///
/// Long (about 150 lines) on purpose: it is one pass over the segments in
/// LSN order whose state (the next LSN expected, whether the target is
/// reached, the report) every step reads and changes; split into helpers,
/// that state would be passed around by `&mut` from each to the next.
fn plan(
    storage: &dyn Storage,
    req: &RestoreRequest<'_>,
    marker: &BackupMarker,
    log_id: Option<u64>,
) -> Result<(Vec<PlannedSegment>, RestoreReport)> {
    // Candidates by first LSN; a segment in both places is the same
    // segment: the source's (possibly longer, the log's tail) wins.
    let mut candidates: std::collections::BTreeMap<u64, (std::path::PathBuf, bool)> =
        std::collections::BTreeMap::new();
    if let Some(a) = req.archive_dir {
        for (first, p) in keel_wal::archive::archived_segments(storage, a)? {
            candidates.insert(first, (p, false));
        }
    }
    if let Some(src) = req.source {
        for p in keel_wal::inspect::segment_files(storage, &src.join(LOG_DIR))? {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if let Some(first) = keel_wal::segment::parse_segment_name(&name) {
                candidates.insert(first, (p, true));
            }
        }
    }
    let candidates: Vec<(u64, std::path::PathBuf, bool)> = candidates
        .into_iter()
        .map(|(f, (p, s))| (f, p, s))
        .collect();
    let last_source = candidates.iter().rposition(|c| c.2);
    let mut report = RestoreReport {
        backup_lsn: marker.lsn,
        reached_lsn: marker.lsn,
        reached_time_us: marker.time_us,
        stop: RestoreStop::LogRanOut {
            next_lsn: marker.lsn + 1,
        },
        records_after_backup: 0,
        segments_copied: 0,
        log_bytes_scanned: 0,
        plan_duration: std::time::Duration::ZERO,
        copy_duration: std::time::Duration::ZERO,
        open_duration: std::time::Duration::ZERO,
    };
    let mut plan = Vec::new();
    let mut expected = marker.lsn + 1;
    let mut reached = matches!(req.target, RestoreTarget::Lsn(n) if n == marker.lsn);
    for (i, (first, path, from_source)) in candidates.iter().enumerate() {
        if reached {
            break;
        }
        if candidates.get(i + 1).is_some_and(|n| n.0 <= expected) {
            continue; // Wholly before what is needed.
        }
        if *first > expected {
            break; // A gap: the log runs out at `expected`.
        }
        let mut cut = None;
        let summary = keel_wal::inspect::inspect_segment(
            storage,
            path,
            keel_wal::format::MAX_RECORD_LEN_LIMIT,
            false,
            |r, offset| {
                if reached || r.lsn < expected {
                    return;
                }
                let past = match req.target {
                    RestoreTarget::Lsn(n) => r.lsn > n,
                    RestoreTarget::Time(t) => r.time_us > t,
                    RestoreTarget::Latest => false,
                };
                if past {
                    reached = true;
                    return;
                }
                expected = r.lsn + 1;
                report.reached_lsn = r.lsn;
                report.reached_time_us = r.time_us;
                report.records_after_backup += 1;
                cut = Some((offset, r.stored_len));
                if matches!(req.target, RestoreTarget::Lsn(n) if n == r.lsn) {
                    reached = true;
                }
            },
        )?;
        report.log_bytes_scanned += summary.file_len;
        let header = summary.header.map_err(|e| {
            Error::RestoreTarget(format!(
                "segment {} has a bad header ({e}); it cannot be replayed",
                path.display()
            ))
        })?;
        if log_id.is_some_and(|id| id != header.log_id) {
            return Err(Error::RestoreTarget(format!(
                "segment {} belongs to another log than the backup's (another store's archive or data directory?)",
                path.display()
            )));
        }
        if let Some(d) = summary.damage.first() {
            if !reached && d.lsn == expected {
                let torn = *from_source && Some(i) == last_source && !d.proven_synced;
                if !torn {
                    return Err(Error::RestoreTarget(format!(
                        "segment {} is damaged at offset {} (LSN {}: {}); run `keel verify` on it",
                        path.display(),
                        d.offset,
                        d.lsn,
                        d.kind
                    )));
                }
                report.stop = RestoreStop::TornTail { lsn: d.lsn };
            }
        }
        if let Some((offset, stored)) = cut {
            plan.push(PlannedSegment {
                path: path.clone(),
                name: path
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default(),
                cut: offset
                    + keel_wal::format::record_size_in(header.version, stored as usize) as u64,
            });
            report.segments_copied += 1;
        }
        if matches!(report.stop, RestoreStop::TornTail { .. }) {
            break;
        }
    }
    if reached {
        report.stop = RestoreStop::TargetReached;
    } else if !matches!(report.stop, RestoreStop::TornTail { .. }) {
        report.stop = RestoreStop::LogRanOut { next_lsn: expected };
    }
    if report.stop != RestoreStop::TargetReached && req.target != RestoreTarget::Latest {
        let (at, why) = match report.stop {
            RestoreStop::TornTail { lsn } => (lsn, "the source's log ends in a torn write"),
            _ => (
                expected,
                "no segment in the archive or the source's log holds it",
            ),
        };
        return Err(Error::RestoreTarget(format!(
            "the log ran out before the target: the last record found is LSN {} (record {at} is missing: {why}); nothing was written. Give --archive-dir and --source if they were left out, or restore with --latest to stop at LSN {}",
            report.reached_lsn, report.reached_lsn
        )));
    }
    Ok((plan, report))
}
