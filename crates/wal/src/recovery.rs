//! Opening a log: read every segment once, check it, classify how the log
//! ends, apply the recovery mode, and hand each record to the caller.
//!
//! Order of work, and why:
//! 1. Leftover prepared files are removed (they never hold records).
//! 2. The last segment is fdatasynced before anything read from it is acted
//!    on: a killed process's writes may still be only in the page cache, and
//!    new records must never become durable ahead of older ones.
//! 3. Segments are checked in LSN order: header, log id, name, continuity,
//!    then every record (see [`crate::reader`] for the torn/corrupt rule).
//! 4. Only then is anything changed on disk — never when the open fails.

use crate::error::{Damage, DamageDetail, DamageKind, Result, WalError};
use crate::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use crate::options::{RecoveryMode, WalOptions};
use crate::reader::{examine_after, scan_records, ScanStop};
use crate::segment::{list_segments, read_whole};
use keel_storage::{OpenMode, Storage, StorageFile};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What recovery cut from the end of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The damage that marked the tear.
    pub damage: Damage,
    /// Bytes removed (from the tear to the last non-zero byte).
    pub bytes_cut: u64,
    /// The last valid LSN kept (0 if none).
    pub last_good_lsn: u64,
    /// Valid-looking records after the tear, never synced, also cut.
    pub unsynced_records_cut: u64,
    /// Where the cut bytes were saved (point-in-time mode and repair only).
    pub saved_to: Option<PathBuf>,
}

/// Damage that point-in-time recovery stopped at, and what it set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    /// Where recovery stopped.
    pub damage: Damage,
    /// Files that now hold the bytes and segments after it.
    pub saved_to: Vec<PathBuf>,
}

/// What recovery found and did. Returned by [`Wal::open`](crate::Wal::open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The recovery mode used.
    pub mode: RecoveryMode,
    /// Segment files read.
    pub segments: usize,
    /// The first LSN the log holds (the next LSN when it holds none).
    pub first_lsn: u64,
    /// The last valid LSN (0 when the log is empty).
    pub last_lsn: u64,
    /// Valid records read.
    pub records_read: u64,
    /// Records handed to the replay callback (those at or after its start).
    pub records_replayed: u64,
    /// Bytes read from segment files.
    pub bytes_read: u64,
    /// The torn tail that was cut, if any.
    pub torn_tail: Option<TornTail>,
    /// Point-in-time recovery: the damage it stopped at, and what it moved aside.
    pub set_aside: Option<SetAside>,
    /// Salvage mode: damage skipped over.
    pub skipped: Vec<Damage>,
    /// Damage confined to records below the replay start (records the
    /// caller's checkpoint already holds): reported and stepped over, since
    /// recovery does not need them.
    pub covered_damage: Vec<Damage>,
    /// Leftover prepared segment files removed.
    pub prepared_removed: usize,
    /// How long recovery took.
    pub duration: Duration,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} records (LSN {}..={}) from {} segments, {} bytes, {} replayed, in {:.1?}",
            self.records_read,
            self.first_lsn,
            self.last_lsn,
            self.segments,
            self.bytes_read,
            self.records_replayed,
            self.duration
        )?;
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; cut a torn tail of {} bytes at {} offset {} ({}; last good LSN {})",
                t.bytes_cut,
                t.damage.segment.display(),
                t.damage.offset,
                t.damage.kind,
                t.last_good_lsn
            )?;
        }
        if let Some(s) = &self.set_aside {
            write!(
                f,
                "; STOPPED at damage ({}), later data moved aside to {:?}",
                s.damage, s.saved_to
            )?;
        }
        for d in &self.covered_damage {
            write!(
                f,
                "; stepped over damage in records the checkpoint holds: [{d}]"
            )?;
        }
        if !self.skipped.is_empty() {
            write!(f, "; SKIPPED {} damaged ranges: ", self.skipped.len())?;
            for d in &self.skipped {
                write!(f, "[{d}] ")?;
            }
        }
        Ok(())
    }
}

/// A segment kept after recovery.
pub(crate) struct KeptSegment {
    pub path: PathBuf,
    pub first_lsn: u64,
    pub salt: u64,
    /// Offset after the last valid record.
    pub end: u64,
    pub file: Arc<dyn StorageFile>,
}

/// The outcome of a successful recovery.
pub(crate) struct Recovered {
    pub report: RecoveryReport,
    pub segments: Vec<KeptSegment>,
    pub log_id: Option<u64>,
    pub next_lsn: u64,
}

enum Fix {
    /// Truncate a segment at `at`, zero-fill back to `old_len`; first save
    /// `saved` (the cut bytes) to a side file, if given.
    Cut {
        seg: usize,
        at: u64,
        old_len: u64,
        saved: Option<Vec<u8>>,
    },
    /// Rename a segment to `<name>.dropped`.
    SetAside(PathBuf),
}

fn corrupt(d: Damage) -> WalError {
    WalError::Corrupt(Box::new(d))
}

/// Reads and checks the whole log in `dir`, calling `visit` for every record
/// with LSN >= `replay_from`. With `read_only` nothing is changed on disk and
/// the report says what would be.
pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    opts: &WalOptions,
    replay_from: u64,
    read_only: bool,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<Recovered> {
    let started = Instant::now();
    let mode = opts.recovery;
    let (segs, prepared) = list_segments(storage, dir)?;
    let mut report = RecoveryReport {
        mode,
        segments: segs.len(),
        first_lsn: segs.first().map_or(opts.start_lsn, |s| s.0),
        last_lsn: 0,
        records_read: 0,
        records_replayed: 0,
        bytes_read: 0,
        torn_tail: None,
        set_aside: None,
        skipped: Vec::new(),
        covered_damage: Vec::new(),
        prepared_removed: 0,
        duration: Duration::ZERO,
    };
    let mut kept: Vec<KeptSegment> = Vec::new();
    // One buffer for every segment: no fresh 64 MiB allocation (and its page
    // faults) per segment.
    let mut data: Vec<u8> = Vec::new();
    let mut fixes: Vec<Fix> = Vec::new();
    let mut log_id: Option<u64> = None;
    let mut next_lsn: Option<u64> = None;

    'segments: for (i, (name_lsn, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let open_mode = if read_only {
            OpenMode::Read
        } else {
            OpenMode::ReadWrite
        };
        let file = storage
            .open(path, open_mode)
            .map_err(|e| WalError::io("opening a segment", path, e))?;
        if is_last && !read_only {
            // What a killed process wrote may be only in the page cache; make
            // it durable before new records are written after it.
            file.sync_data()
                .map_err(|e| WalError::io("syncing the last segment at open", path, e))?;
        }
        read_whole(&*file, path, &mut data)?;
        report.bytes_read += data.len() as u64;
        let expected = next_lsn.unwrap_or(*name_lsn);
        let at_header = |kind| Damage {
            segment: path.clone(),
            offset: 0,
            lsn: expected,
            kind,
        };
        let header_damage = match SegmentHeader::decode(&data) {
            Err(e) => Some((at_header(DamageKind::BadHeader(format!("{e:?}"))), None)),
            Ok(h) if log_id.is_some_and(|id| id != h.log_id) => {
                Some((at_header(DamageKind::ForeignSegment), None))
            }
            Ok(h) if h.first_lsn != *name_lsn => {
                Some((at_header(DamageKind::NameMismatch(h.first_lsn)), None))
            }
            Ok(h) if h.first_lsn != expected => Some((
                at_header(DamageKind::MissingRecords {
                    expected,
                    found: h.first_lsn,
                }),
                Some(h),
            )),
            Ok(_) => None,
        };
        let header = match header_damage {
            None => SegmentHeader::decode(&data).expect("checked above"),
            Some((damage, gap_header)) => match mode {
                RecoveryMode::TolerateCorruptedTail | RecoveryMode::AbsoluteConsistency => {
                    return Err(corrupt(damage))
                }
                RecoveryMode::PointInTime => {
                    let mut saved = Vec::new();
                    for (_, p) in &segs[i..] {
                        fixes.push(Fix::SetAside(p.clone()));
                        saved.push(dropped_name(p));
                    }
                    report.set_aside = Some(SetAside {
                        damage,
                        saved_to: saved,
                    });
                    break 'segments;
                }
                RecoveryMode::SkipAnyCorruptedRecords => match gap_header {
                    // A gap between segments: keep going after it.
                    Some(h) => {
                        tracing::error!(%damage, "salvage: accepting an LSN gap");
                        report.skipped.push(damage);
                        h
                    }
                    None => {
                        tracing::error!(%damage, "salvage: skipping a whole segment");
                        report.skipped.push(damage);
                        continue 'segments;
                    }
                },
            },
        };
        log_id.get_or_insert(header.log_id);
        let mut lsn = header.first_lsn;
        let mut offset = SEGMENT_HEADER_LEN;
        let seg_index = kept.len();
        let end = loop {
            let scan = scan_records(
                &data,
                offset,
                lsn,
                header.salt,
                opts.max_record_size,
                &mut |l, payload, _| {
                    report.records_read += 1;
                    if l >= replay_from {
                        report.records_replayed += 1;
                        visit(l, payload);
                    }
                },
            );
            lsn = scan.next_lsn;
            let (at, kind) = match scan.stop {
                ScanStop::Clean { end } => break end,
                ScanStop::Damaged { offset, kind } => (offset, kind),
            };
            let ev = examine_after(&data, at as usize, lsn, header.salt, opts.max_record_size);
            let mut damage = Damage {
                segment: path.clone(),
                offset: at,
                lsn,
                kind,
            };
            // Damage the caller does not need: every record it destroyed is
            // below the replay start, and the log verifies again at or
            // before it. Step over it, loudly.
            if let Some((roff, rlsn)) = ev.resume {
                if lsn < replay_from && rlsn <= replay_from && rlsn > lsn {
                    tracing::warn!(%damage, resumed_at = rlsn, "damaged log records below the replay start (already in a checkpoint) were stepped over");
                    report.covered_damage.push(damage);
                    offset = roff as usize;
                    lsn = rlsn;
                    continue;
                }
            }
            let torn = is_last && ev.proof.is_none();
            if torn {
                if mode == RecoveryMode::AbsoluteConsistency {
                    return Err(WalError::TornTailRefused(Box::new(damage)));
                }
                // Point-in-time mode (what repair uses) never destroys bytes,
                // not even never-acknowledged ones: they are saved beside.
                let save = mode == RecoveryMode::PointInTime && ev.data_end > at;
                report.torn_tail = Some(TornTail {
                    damage,
                    bytes_cut: ev.data_end - at,
                    last_good_lsn: lsn - 1,
                    unsynced_records_cut: ev.valid_records,
                    saved_to: save.then(|| cut_name(path, at)),
                });
                fixes.push(Fix::Cut {
                    seg: seg_index,
                    at,
                    old_len: data.len() as u64,
                    saved: save.then(|| data[at as usize..ev.data_end as usize].to_vec()),
                });
                break at;
            }
            if let Some(by) = ev.proof {
                damage.kind = DamageKind::SyncedRecordDamaged(DamageDetail {
                    what: damage.kind.to_string(),
                    proven_by_lsn: by,
                });
            }
            match mode {
                RecoveryMode::TolerateCorruptedTail | RecoveryMode::AbsoluteConsistency => {
                    return Err(corrupt(damage))
                }
                RecoveryMode::PointInTime => {
                    let mut saved = vec![cut_name(path, at)];
                    fixes.push(Fix::Cut {
                        seg: seg_index,
                        at,
                        old_len: data.len() as u64,
                        saved: Some(data[at as usize..ev.data_end as usize].to_vec()),
                    });
                    for (_, p) in &segs[i + 1..] {
                        fixes.push(Fix::SetAside(p.clone()));
                        saved.push(dropped_name(p));
                    }
                    report.set_aside = Some(SetAside {
                        damage,
                        saved_to: saved,
                    });
                    kept.push(KeptSegment {
                        path: path.clone(),
                        first_lsn: header.first_lsn,
                        salt: header.salt,
                        end: at,
                        file,
                    });
                    next_lsn = Some(lsn);
                    break 'segments;
                }
                RecoveryMode::SkipAnyCorruptedRecords => {
                    tracing::error!(%damage, "salvage: skipping damaged records");
                    report.skipped.push(damage);
                    match ev.resume {
                        Some((roff, rlsn)) => {
                            offset = roff as usize;
                            lsn = rlsn;
                        }
                        None => break at,
                    }
                }
            }
        };
        kept.push(KeptSegment {
            path: path.clone(),
            first_lsn: header.first_lsn,
            salt: header.salt,
            end,
            file,
        });
        next_lsn = Some(lsn);
    }

    let next_lsn = next_lsn.unwrap_or(report.first_lsn);
    report.last_lsn = next_lsn - 1;
    if !read_only {
        apply_fixes(storage, opts, &fixes, &kept)?;
        for p in &prepared {
            storage
                .remove(p)
                .map_err(|e| WalError::io("removing a leftover prepared segment", p, e))?;
        }
        if !prepared.is_empty() || !fixes.is_empty() {
            // Removals and set-asides are durable only once the directory is.
            storage
                .sync_dir(dir)
                .map_err(|e| WalError::io("syncing the log directory", dir, e))?;
        }
    }
    report.prepared_removed = prepared.len();
    report.duration = started.elapsed();
    Ok(Recovered {
        report,
        segments: kept,
        log_id,
        next_lsn,
    })
}

fn dropped_name(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".dropped");
    PathBuf::from(s)
}

fn cut_name(p: &Path, at: u64) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".cut-at-{at}"));
    PathBuf::from(s)
}

fn apply_fixes(
    storage: &dyn Storage,
    opts: &WalOptions,
    fixes: &[Fix],
    kept: &[KeptSegment],
) -> Result<()> {
    for fix in fixes {
        match fix {
            Fix::Cut {
                seg,
                at,
                old_len,
                saved,
            } => {
                let s = &kept[*seg];
                if let Some(bytes) = saved {
                    // Never destroy what we cut in point-in-time mode: save it
                    // durably before truncating.
                    let side = cut_name(&s.path, *at);
                    // Bytes saved by an earlier cut at the same offset are
                    // never replaced.
                    if storage
                        .exists(&side)
                        .map_err(|e| WalError::io("checking", &side, e))?
                    {
                        return Err(WalError::io(
                            "saving cut bytes to",
                            &side,
                            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                        ));
                    }
                    keel_storage::write_atomic(storage, &side, |f, _| f.write_at(bytes, 0))?;
                }
                let old_len = *old_len;
                let f = &s.file;
                f.set_len(*at)
                    .map_err(|e| WalError::io("cutting a damaged tail of", &s.path, e))?;
                if opts.preallocate && old_len > *at {
                    f.allocate(old_len)
                        .map_err(|e| WalError::io("re-allocating", &s.path, e))?;
                }
                // The cut must be durable before anything is appended after
                // it, or the old bytes could reappear behind new records.
                f.sync_all()
                    .map_err(|e| WalError::io("syncing a cut segment", &s.path, e))?;
            }
            Fix::SetAside(p) => {
                storage
                    .rename(p, &dropped_name(p))
                    .map_err(|e| WalError::io("moving aside", p, e))?;
            }
        }
    }
    Ok(())
}
