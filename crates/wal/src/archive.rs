//! The log archive: segments the log no longer needs are copied into an
//! archive directory before they are deleted, so that a restore can replay
//! the log from a backup up to any point (issue 13; docs/DESIGN.md).
//!
//! Invariants:
//! - A segment leaves the log only after its copy in the archive is durable:
//!   written to a temp file, fdatasynced, renamed, the archive directory
//!   fsynced (`keel_storage::write_atomic`). A crash in between leaves the
//!   segment in both places, never in neither.
//! - Only a segment whose records all verify, from its header to its end,
//!   is archived; the copy is cut after its last record (the zeroed,
//!   preallocated rest is not copied) and keeps the log's file name.
//! - The archive holds segments of one log: a file of another log under the
//!   same name is never replaced.
//! - Retention deletes oldest first and never the newest segment, so the
//!   archive is always a contiguous run of LSNs.
//! - A failed archive keeps the segment, and every later one, in the log;
//!   the next truncation tries again.

use crate::error::{Result, WalError};
use crate::format::{self, SegmentHeader};
use crate::reader::{scan_records, ScanStop};
use crate::segment::{parse_segment_name, read_segment, segment_file_name};
use keel_storage::{OpenMode, Storage};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where and for how long segments are archived (`WalOptions::archive`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// The archive directory: created at open if missing; if it disappears
    /// later, archiving fails (and segments stay in the log) until it is
    /// back.
    pub dir: PathBuf,
    /// Delete an archived segment once every record in it is older than
    /// this (judged by the first record of the segment after it). `None`:
    /// kept whatever their age.
    pub max_age: Option<Duration>,
    /// Delete the oldest archived segments while the archive holds more
    /// than this many bytes (the newest is always kept). `None`: no limit.
    pub max_bytes: Option<u64>,
}

impl ArchiveOptions {
    /// An archive in `dir` that keeps everything.
    pub fn new(dir: impl Into<PathBuf>) -> ArchiveOptions {
        ArchiveOptions {
            dir: dir.into(),
            max_age: None,
            max_bytes: None,
        }
    }
}

/// A segment copied into the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedSegment {
    /// Its path in the archive.
    pub path: PathBuf,
    /// LSNs of its first and last record.
    pub lsns: (u64, u64),
    /// Bytes copied.
    pub bytes: u64,
}

/// Copies the log segment at `seg` into the archive durably, after checking
/// every record in it. `log_id` is the log's: the archive must hold only
/// its segments.
pub(crate) fn archive_segment(
    storage: &dyn Storage,
    seg: &Path,
    opts: &ArchiveOptions,
    log_id: u64,
    max_record_size: u32,
) -> Result<ArchivedSegment> {
    let refuse = |what: String| {
        WalError::io(
            "archiving",
            seg,
            std::io::Error::new(std::io::ErrorKind::InvalidData, what),
        )
    };
    if !storage
        .exists(&opts.dir)
        .map_err(|e| WalError::io("checking the archive directory", &opts.dir, e))?
    {
        return Err(WalError::io(
            "archiving into",
            &opts.dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the archive directory is gone (mount it again or create it)",
            ),
        ));
    }
    let mut data = Vec::new();
    let opened = read_segment(storage, seg, false, false, &mut data)?;
    let header = opened
        .header
        .map_err(|e| refuse(format!("its header is bad ({e}): not archived")))?;
    if header.log_id != log_id {
        return Err(refuse("it belongs to another log: not archived".into()));
    }
    let mut last = None;
    let scan = scan_records(
        &data,
        header.records_start(),
        header.first_lsn,
        &header,
        max_record_size,
        &mut Vec::new(),
        &mut |r, _| last = Some(r.lsn),
    );
    let end = match scan.stop {
        ScanStop::Clean { end } => (end as usize).min(data.len()),
        ScanStop::Damaged { offset, kind } => {
            return Err(refuse(format!(
                "record {} at offset {offset} is damaged ({kind}): not archived; run `keel verify`",
                scan.next_lsn
            )))
        }
    };
    let name = seg.file_name().map_or_else(
        || segment_file_name(header.first_lsn).into(),
        |n| n.to_os_string(),
    );
    let target = opts.dir.join(name);
    if storage
        .exists(&target)
        .map_err(|e| WalError::io("checking", &target, e))?
    {
        let other = read_header(storage, &target)?;
        if other.is_some_and(|h| h.log_id != log_id) {
            return Err(WalError::io(
                "archiving into",
                &target,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the archive holds a segment of another log under this name: give each store its own archive directory",
                ),
            ));
        }
    }
    let bytes = &data[..end];
    keel_storage::write_atomic(storage, &target, |f, _| f.write_at(bytes, 0))?;
    Ok(ArchivedSegment {
        path: target,
        lsns: (header.first_lsn, last.unwrap_or(header.first_lsn - 1)),
        bytes: end as u64,
    })
}

/// The header of the segment file at `path`, if it has a valid one (its
/// dictionary block, if any, checked too).
fn read_header(storage: &dyn Storage, path: &Path) -> Result<Option<SegmentHeader>> {
    let f = storage
        .open(path, OpenMode::Read)
        .map_err(|e| WalError::io("opening", path, e))?;
    let len = f.len().map_err(|e| WalError::io("reading", path, e))?;
    let most = format::records_start(format::MAX_DICTIONARY_LEN as usize) as u64;
    let mut b = vec![0u8; len.min(most) as usize];
    f.read_exact_at(&mut b, 0)
        .map_err(|e| WalError::io("reading", path, e))?;
    Ok(SegmentHeader::decode(&b).ok())
}

/// The time of the first record of the segment file at `path` (0 if it
/// has none, or it does not verify).
fn first_record_time(storage: &dyn Storage, path: &Path, max_record_size: u32) -> Result<u64> {
    let f = storage
        .open(path, OpenMode::Read)
        .map_err(|e| WalError::io("opening", path, e))?;
    let len = f.len().map_err(|e| WalError::io("reading", path, e))?;
    let Some(header) = read_header(storage, path)? else {
        return Ok(0);
    };
    let start = header.records_start() as u64;
    let mut head = vec![0u8; header.record_header_len()];
    if len < start + head.len() as u64 {
        return Ok(0);
    }
    f.read_exact_at(&mut head, start)
        .map_err(|e| WalError::io("reading", path, e))?;
    let Some((stored, _, _)) = format::peek_header(&head, header.version) else {
        return Ok(0);
    };
    if stored > max_record_size {
        return Ok(0);
    }
    let size = format::record_size_in(header.version, stored as usize) as u64;
    let mut rec = vec![0u8; (size.min(len - start)) as usize];
    f.read_exact_at(&mut rec, start)
        .map_err(|e| WalError::io("reading", path, e))?;
    Ok(
        match format::decode_record(&rec, header.version, header.salt, max_record_size) {
            format::Decoded::Record(r) => r.meta.time_us,
            _ => 0,
        },
    )
}

/// Archived segments in `dir`: (first LSN, path), oldest first.
pub fn archived_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segs: Vec<(u64, PathBuf)> = storage
        .list(dir)
        .map_err(|e| WalError::io("listing the archive", dir, e))?
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|lsn| (lsn, dir.join(n))))
        .collect();
    segs.sort();
    Ok(segs)
}

/// Applies retention to the archive (`now_us`: the log's clock): removes
/// leftover temp files of interrupted copies, then the oldest segments
/// past `max_age` or over `max_bytes`, never the newest, then syncs the
/// directory. Returns how many segments were removed.
pub(crate) fn apply_retention(
    storage: &dyn Storage,
    opts: &ArchiveOptions,
    now_us: u64,
    max_record_size: u32,
) -> Result<usize> {
    let dir = &opts.dir;
    let mut changed = false;
    for name in storage
        .list(dir)
        .map_err(|e| WalError::io("listing the archive", dir, e))?
    {
        let is_copy_in_progress = name
            .strip_suffix(keel_storage::TEMP_SUFFIX)
            .is_some_and(|base| parse_segment_name(base).is_some());
        if is_copy_in_progress {
            // An interrupted copy: its segment is still in the log.
            let p = dir.join(&name);
            storage
                .remove(&p)
                .map_err(|e| WalError::io("removing", &p, e))?;
            changed = true;
        }
    }
    let segs = archived_segments(storage, dir)?;
    let mut sizes = Vec::with_capacity(segs.len());
    for (_, p) in &segs {
        let f = storage
            .open(p, OpenMode::Read)
            .map_err(|e| WalError::io("opening", p, e))?;
        sizes.push(f.len().map_err(|e| WalError::io("reading", p, e))?);
    }
    let mut total: u64 = sizes.iter().sum();
    let cutoff = opts
        .max_age
        .map(|age| now_us.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX)));
    let mut removed = 0;
    // Never the newest: the archive stays a contiguous run ending where the
    // log begins.
    for i in 0..segs.len().saturating_sub(1) {
        let over_bytes = opts.max_bytes.is_some_and(|max| total > max);
        // Every record of segment i is no newer than the first of i + 1.
        let too_old = match cutoff {
            Some(cutoff) => {
                let t = first_record_time(storage, &segs[i + 1].1, max_record_size)?;
                t != 0 && t < cutoff
            }
            None => false,
        };
        if !over_bytes && !too_old {
            break;
        }
        storage
            .remove(&segs[i].1)
            .map_err(|e| WalError::io("removing an archived segment", &segs[i].1, e))?;
        total -= sizes[i];
        removed += 1;
        changed = true;
    }
    if changed {
        // The removals are durable only once the directory is.
        storage
            .sync_dir(dir)
            .map_err(|e| WalError::io("syncing the archive directory", dir, e))?;
    }
    Ok(removed)
}
