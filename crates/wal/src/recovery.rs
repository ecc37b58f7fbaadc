//! Opening a log: read every segment once, check it, classify how the log
//! ends, apply the recovery mode, and hand each record to the caller.
//!
//! Order of work, and why:
//! 1. Leftover prepared files, and temp files of interrupted saves of cut
//!    bytes, are removed (neither holds anything a segment does not).
//! 2. The last segment is fdatasynced before anything read from it is acted
//!    on: a killed process's writes may still be only in the page cache, and
//!    new records must never become durable ahead of older ones.
//! 3. Segments are checked in LSN order: header, log id, name, continuity,
//!    then every record (see `reader.rs` for the torn/corrupt rule).
//! 4. Only then is anything changed on disk — never when the open fails.

use crate::error::{Damage, DamageDetail, DamageKind, Result, WalError};
use crate::format::{HeaderError, SegmentHeader};
use crate::options::{RecoveryMode, WalOptions};
use crate::reader::{examine_after, scan_records, AfterDamage, Record, ScanStop};
use crate::segment::{list_segments, read_segment, OpenedSegment};
use keel_storage::{Storage, StorageFile};
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
    /// Commit time of the last valid record, microseconds since the Unix
    /// epoch (0 when the log is empty or its records carry no time).
    pub last_time_us: u64,
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
    /// Leftover files removed: prepared segments, and temp files of saves of
    /// cut bytes that a crash interrupted.
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
    /// The segment's format version (the writer never appends to an older
    /// one: it begins a new segment).
    pub version: u32,
    /// The zstd dictionary the segment carries, if any (the writer goes on
    /// compressing with it when this is the last segment).
    pub dictionary: Option<Vec<u8>>,
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

/// A change to make on disk once the whole log has been read.
enum Fix {
    /// Truncate a kept segment at `at`, zero-fill back to `old_len`; first
    /// save `saved` (the cut bytes) to a side file, if given.
    Cut {
        seg: usize,
        at: u64,
        old_len: u64,
        saved: Option<Vec<u8>>,
    },
    /// Rename a segment to `<name>.dropped`.
    SetAside(PathBuf),
}

/// What a segment's header says about where it belongs (pure: no I/O).
enum HeaderVerdict {
    /// It continues the log.
    Continues(SegmentHeader),
    /// It is damaged, foreign or misnamed: nothing in it can be trusted.
    Unusable(Damage),
    /// Valid, but LSNs jump from the previous segment to it.
    Gap(Damage, SegmentHeader),
}

/// Judges a segment's header against the log read so far.
fn classify_header(
    header: std::result::Result<SegmentHeader, HeaderError>,
    path: &Path,
    name_lsn: u64,
    expected: u64,
    log_id: Option<u64>,
) -> HeaderVerdict {
    let damage = |kind| Damage {
        segment: path.to_path_buf(),
        offset: 0,
        lsn: expected,
        kind,
    };
    match header {
        Err(e) => HeaderVerdict::Unusable(damage(DamageKind::BadHeader(e))),
        Ok(h) if log_id.is_some_and(|id| id != h.log_id) => {
            HeaderVerdict::Unusable(damage(DamageKind::ForeignSegment))
        }
        Ok(h) if h.first_lsn != name_lsn => {
            HeaderVerdict::Unusable(damage(DamageKind::NameMismatch(h.first_lsn)))
        }
        Ok(h) if h.first_lsn != expected => HeaderVerdict::Gap(
            damage(DamageKind::MissingRecords {
                expected,
                found: h.first_lsn,
            }),
            h,
        ),
        Ok(h) => HeaderVerdict::Continues(h),
    }
}

/// What recovery does about damage (the recovery mode applied).
enum Action {
    /// Refuse to open: nothing changes on disk.
    Refuse(WalError),
    /// Cut the segment at the damage (a torn tail) and keep the rest.
    CutTail,
    /// Point-in-time: cut here, set every later segment aside, stop.
    StopHere,
    /// Salvage: skip to the next valid record (or segment), loudly.
    Skip,
}

fn corrupt(d: Damage) -> WalError {
    WalError::Corrupt(Box::new(d))
}

/// The recovery mode's answer to damage that is corruption (not a torn tail).
fn on_corruption(mode: RecoveryMode, damage: &Damage) -> Action {
    match mode {
        RecoveryMode::TolerateCorruptedTail | RecoveryMode::AbsoluteConsistency => {
            Action::Refuse(corrupt(damage.clone()))
        }
        RecoveryMode::PointInTime => Action::StopHere,
        RecoveryMode::SkipAnyCorruptedRecords => {
            tracing::error!(%damage, "salvage: skipping damaged data");
            Action::Skip
        }
    }
}

/// The recovery mode's answer to a torn tail.
fn on_torn_tail(mode: RecoveryMode, damage: &Damage) -> Action {
    match mode {
        RecoveryMode::AbsoluteConsistency => {
            Action::Refuse(WalError::TornTailRefused(Box::new(damage.clone())))
        }
        _ => Action::CutTail,
    }
}

/// How one segment's scan ended.
enum SegmentEnd {
    /// Keep the segment up to `end` and go on to the next.
    Kept { end: u64 },
    /// Keep it up to `end`, set everything after aside, read no further.
    Stopped { end: u64 },
}

/// One pass over the log: the state carried from segment to segment.
struct Pass<'a> {
    opts: &'a WalOptions,
    replay_from: u64,
    visit: &'a mut dyn FnMut(Record<'_>),
    report: RecoveryReport,
    kept: Vec<KeptSegment>,
    fixes: Vec<Fix>,
    log_id: Option<u64>,
    next_lsn: Option<u64>,
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
    visit: &mut dyn FnMut(Record<'_>),
) -> Result<Recovered> {
    let started = Instant::now();
    let (segs, prepared) = list_segments(storage, dir)?;
    let mut pass = Pass {
        opts,
        replay_from,
        visit,
        report: RecoveryReport {
            mode: opts.recovery,
            segments: segs.len(),
            first_lsn: segs.first().map_or(opts.start_lsn, |s| s.0),
            last_lsn: 0,
            last_time_us: 0,
            records_read: 0,
            records_replayed: 0,
            bytes_read: 0,
            torn_tail: None,
            set_aside: None,
            skipped: Vec::new(),
            covered_damage: Vec::new(),
            prepared_removed: prepared.len(),
            duration: Duration::ZERO,
        },
        kept: Vec::new(),
        fixes: Vec::new(),
        log_id: None,
        next_lsn: None,
    };
    // One buffer for every segment: no fresh 64 MiB allocation (and its page
    // faults) per segment.
    let mut data = Vec::new();
    for (i, (name_lsn, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        // What a killed process wrote may be only in the page cache; make the
        // last segment durable before new records are written after it.
        let sync_first = is_last && !read_only;
        let seg = read_segment(storage, path, !read_only, sync_first, &mut data)?;
        pass.report.bytes_read += data.len() as u64;
        if !pass.segment(seg, *name_lsn, path, &data, is_last, &segs[i + 1..])? {
            break;
        }
    }
    let next_lsn = pass.next_lsn.unwrap_or(pass.report.first_lsn);
    pass.report.last_lsn = next_lsn - 1;
    if !read_only {
        apply_fixes(storage, opts, &pass.fixes, &pass.kept)?;
        remove_prepared(storage, dir, &prepared, !pass.fixes.is_empty())?;
    }
    pass.report.duration = started.elapsed();
    Ok(Recovered {
        report: pass.report,
        segments: pass.kept,
        log_id: pass.log_id,
        next_lsn,
    })
}

impl Pass<'_> {
    /// Checks one segment and its records. Returns false when recovery
    /// stops reading here (point-in-time mode set the rest aside).
    fn segment(
        &mut self,
        seg: OpenedSegment,
        name_lsn: u64,
        path: &Path,
        data: &[u8],
        is_last: bool,
        later: &[(u64, PathBuf)],
    ) -> Result<bool> {
        let expected = self.next_lsn.unwrap_or(name_lsn);
        let header = match classify_header(seg.header, path, name_lsn, expected, self.log_id) {
            HeaderVerdict::Continues(h) => h,
            HeaderVerdict::Gap(damage, h) => match on_corruption(self.opts.recovery, &damage) {
                Action::Skip => {
                    self.report.skipped.push(damage);
                    h
                }
                other => return self.header_damage(other, damage, path, later),
            },
            HeaderVerdict::Unusable(damage) => match on_corruption(self.opts.recovery, &damage) {
                Action::Skip => {
                    self.report.skipped.push(damage);
                    return Ok(true);
                }
                other => return self.header_damage(other, damage, path, later),
            },
        };
        self.log_id.get_or_insert(header.log_id);
        let (end, lsn, go_on) = match self.records(data, path, &header, is_last, later)? {
            (SegmentEnd::Kept { end }, lsn) => (end, lsn, true),
            (SegmentEnd::Stopped { end }, lsn) => (end, lsn, false),
        };
        self.kept.push(KeptSegment {
            path: path.to_path_buf(),
            first_lsn: header.first_lsn,
            salt: header.salt,
            version: header.version,
            dictionary: header
                .dictionary
                .map(|_| header.dictionary_in(data).to_vec()),
            end,
            file: seg.file,
        });
        self.next_lsn = Some(lsn);
        Ok(go_on)
    }

    /// Refuses, or (point-in-time) sets this segment and all later ones aside.
    fn header_damage(
        &mut self,
        action: Action,
        damage: Damage,
        path: &Path,
        later: &[(u64, PathBuf)],
    ) -> Result<bool> {
        match action {
            Action::Refuse(e) => Err(e),
            _ => {
                self.set_aside(damage, None, path, later);
                Ok(false)
            }
        }
    }

    /// Records the point-in-time stop: `first_saved` (the cut bytes of the
    /// damaged segment, if it is kept) and every later segment set aside.
    fn set_aside(
        &mut self,
        damage: Damage,
        first_saved: Option<PathBuf>,
        path: &Path,
        later: &[(u64, PathBuf)],
    ) {
        // The damaged segment itself goes too unless its good part is kept.
        let mut moved: Vec<&Path> = Vec::new();
        if first_saved.is_none() {
            moved.push(path);
        }
        moved.extend(later.iter().map(|(_, p)| p.as_path()));
        let mut saved: Vec<PathBuf> = first_saved.into_iter().collect();
        for p in moved {
            self.fixes.push(Fix::SetAside(p.to_path_buf()));
            saved.push(dropped_name(p));
        }
        self.report.set_aside = Some(SetAside {
            damage,
            saved_to: saved,
        });
    }

    /// Scans a segment's records, replaying them and acting on damage.
    /// Returns how the segment ends and the LSN after its last kept record.
    fn records(
        &mut self,
        data: &[u8],
        path: &Path,
        header: &SegmentHeader,
        is_last: bool,
        later: &[(u64, PathBuf)],
    ) -> Result<(SegmentEnd, u64)> {
        let max = self.opts.max_record_size;
        let mut lsn = header.first_lsn;
        let mut offset = header.records_start();
        let mut scratch = Vec::new();
        loop {
            let report = &mut self.report;
            let (replay_from, visit) = (self.replay_from, &mut *self.visit);
            let scan = scan_records(data, offset, lsn, header, max, &mut scratch, &mut |r, _| {
                report.records_read += 1;
                report.last_time_us = r.time_us;
                if r.lsn >= replay_from {
                    report.records_replayed += 1;
                    visit(r);
                }
            });
            lsn = scan.next_lsn;
            let (at, kind) = match scan.stop {
                ScanStop::Clean { end } => return Ok((SegmentEnd::Kept { end }, lsn)),
                ScanStop::Damaged { offset, kind } => (offset, kind),
            };
            let damage = Damage {
                segment: path.to_path_buf(),
                offset: at,
                lsn,
                kind,
            };
            let ev = examine_after(data, at as usize, lsn, header, max);
            match self.on_damage(damage, &ev, data, is_last, later)? {
                AfterDamageStep::Resume(roff, rlsn) => (offset, lsn) = (roff as usize, rlsn),
                AfterDamageStep::End(end) => return Ok((end, lsn)),
            }
        }
    }

    /// Acts on damage found in a segment's records: steps over what the
    /// caller does not need, and otherwise applies the recovery mode.
    fn on_damage(
        &mut self,
        mut damage: Damage,
        ev: &AfterDamage,
        data: &[u8],
        is_last: bool,
        later: &[(u64, PathBuf)],
    ) -> Result<AfterDamageStep> {
        let (at, lsn) = (damage.offset, damage.lsn);
        // Damage the caller does not need: every record it destroyed is
        // below the replay start, and the log verifies again at or before
        // it. Step over it, loudly.
        if let Some((roff, rlsn)) = ev.resume {
            if lsn < self.replay_from && rlsn <= self.replay_from && rlsn > lsn {
                tracing::warn!(%damage, resumed_at = rlsn, "damaged log records below the replay start (already in a checkpoint) were stepped over");
                self.report.covered_damage.push(damage);
                return Ok(AfterDamageStep::Resume(roff, rlsn));
            }
        }
        let torn = is_last && ev.proof.is_none();
        if let Some(by) = ev.proof {
            damage.kind = DamageKind::SyncedRecordDamaged(DamageDetail {
                what: damage.kind.to_string(),
                proven_by_lsn: by,
            });
        }
        let action = if torn {
            on_torn_tail(self.opts.recovery, &damage)
        } else {
            on_corruption(self.opts.recovery, &damage)
        };
        let path = damage.segment.clone();
        let cut = |saved: bool| Fix::Cut {
            seg: self.kept.len(),
            at,
            old_len: data.len() as u64,
            saved: saved.then(|| data[at as usize..ev.data_end as usize].to_vec()),
        };
        match action {
            Action::Refuse(e) => Err(e),
            Action::CutTail => {
                // Point-in-time mode (what repair uses) never destroys
                // bytes, not even never-acknowledged ones: they are saved.
                let save = self.opts.recovery == RecoveryMode::PointInTime && ev.data_end > at;
                self.fixes.push(cut(save));
                self.report.torn_tail = Some(TornTail {
                    damage,
                    bytes_cut: ev.data_end - at,
                    last_good_lsn: lsn - 1,
                    unsynced_records_cut: ev.valid_records,
                    saved_to: save.then(|| cut_name(&path, at)),
                });
                Ok(AfterDamageStep::End(SegmentEnd::Kept { end: at }))
            }
            Action::StopHere => {
                self.fixes.push(cut(true));
                self.set_aside(damage, Some(cut_name(&path, at)), &path, later);
                Ok(AfterDamageStep::End(SegmentEnd::Stopped { end: at }))
            }
            Action::Skip => {
                self.report.skipped.push(damage);
                Ok(match ev.resume {
                    Some((roff, rlsn)) => AfterDamageStep::Resume(roff, rlsn),
                    None => AfterDamageStep::End(SegmentEnd::Kept { end: at }),
                })
            }
        }
    }
}

/// Where a segment's scan goes after damage.
enum AfterDamageStep {
    /// Resume at this (offset, LSN).
    Resume(u64, u64),
    /// The segment ends here.
    End(SegmentEnd),
}

/// Removes leftover prepared segments, then syncs the directory if that or
/// an earlier fix (a set-aside rename, a saved cut) changed it.
fn remove_prepared(
    storage: &dyn Storage,
    dir: &Path,
    prepared: &[PathBuf],
    dir_changed: bool,
) -> Result<()> {
    for p in prepared {
        storage
            .remove(p)
            .map_err(|e| WalError::io("removing a leftover temp file", p, e))?;
    }
    if !prepared.is_empty() || dir_changed {
        // Removals and set-asides are durable only once the directory is.
        storage
            .sync_dir(dir)
            .map_err(|e| WalError::io("syncing the log directory", dir, e))?;
    }
    Ok(())
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
