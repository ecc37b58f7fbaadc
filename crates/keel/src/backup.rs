//! Online backup ([`Db::backup`](crate::Db::backup)): a copy of the store
//! consistent at one LSN, taken while writes go on.
//!
//! A backup is a data directory: the live tables and a manifest naming them
//! (on tables) or the newest checkpoint (in memory), and the log from where
//! those end up to and including the backup's LSN, the last segment cut
//! after that record. Table and checkpoint files are immutable once
//! written, so they are hard-linked where the file system allows and copied
//! otherwise; the log is always copied.
//!
//! Invariants:
//! - Consistent at one LSN: the file set is captured under the lock that
//!   flushes and checkpoints take, the tables stay pinned by a version and
//!   the log's segments by a [`keel_wal::LogPin`] while they are copied, and
//!   the LSN is one the log had made durable.
//! - Marked complete last: `BACKUP-IN-PROGRESS` is written (durably) before
//!   anything else and removed only after every file, every directory and
//!   the `BACKUP` marker are durable. A crash leaves a directory that names
//!   itself incomplete; restore, verify and open refuse it by that name.
//! - The source is only read: nothing in it changes, and writes, flushes
//!   and compactions go on (only the capture holds the flush lock).

use crate::error::{Error, Result};
use crate::layout::{LOG_DIR, MANIFEST_DIR};
use crate::manifest::{Manifest, VersionEdit};
use keel_storage::{OpenMode, Storage};
use keel_wal::format::record_size_in;
use keel_wal::inspect::inspect_segment;
use keel_wal::LogPin;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The file that marks a complete backup (docs/FORMAT.md, "Backups").
pub const BACKUP_MARKER: &str = "BACKUP";
/// The file present while a backup is written: its presence means the
/// backup is incomplete.
pub const BACKUP_IN_PROGRESS: &str = "BACKUP-IN-PROGRESS";
const MARKER_HEADER: &str = "keel backup 1";

/// What a complete backup's marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupMarker {
    /// The backup holds every write up to and including this LSN, and none
    /// after it.
    pub lsn: u64,
    /// Commit time of that record, microseconds since the Unix epoch (0
    /// when the log held no record to take it from).
    pub time_us: u64,
}

impl BackupMarker {
    fn encode(&self) -> String {
        let body = format!(
            "{MARKER_HEADER}\nlsn {}\ntime_us {}\n",
            self.lsn, self.time_us
        );
        format!("{body}crc32c {:08x}\n", crc32c::crc32c(body.as_bytes()))
    }

    fn decode(text: &str) -> std::result::Result<BackupMarker, String> {
        let (body, crc_line) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or("too short")?;
        let body = format!("{body}\n");
        let crc = crc_line
            .strip_prefix("crc32c ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("no checksum line")?;
        if crc != crc32c::crc32c(body.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(MARKER_HEADER) {
            return Err(format!("not a {MARKER_HEADER:?} marker"));
        }
        let mut field = |name: &str| -> std::result::Result<u64, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no {name} line"))
        };
        Ok(BackupMarker {
            lsn: field("lsn")?,
            time_us: field("time_us")?,
        })
    }
}

/// What a directory is, as far as backups go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupState {
    /// Not a backup (no marker of either kind).
    NotABackup,
    /// A backup that never finished (`BACKUP-IN-PROGRESS`): incomplete,
    /// never to be restored.
    Incomplete,
    /// A complete backup.
    Complete(BackupMarker),
}

/// Reads the backup markers of `dir`.
pub fn backup_state(storage: &dyn Storage, dir: &Path) -> Result<BackupState> {
    let exists = |name: &str| {
        let p = dir.join(name);
        storage.exists(&p).map_err(|e| Error::io("checking", &p, e))
    };
    if exists(BACKUP_IN_PROGRESS)? {
        return Ok(BackupState::Incomplete);
    }
    if !exists(BACKUP_MARKER)? {
        return Ok(BackupState::NotABackup);
    }
    let path = dir.join(BACKUP_MARKER);
    let f = storage
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("opening", &path, e))?;
    let len = f.len().map_err(|e| Error::io("reading", &path, e))?;
    let mut buf = vec![0u8; len.min(4096) as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io("reading", &path, e))?;
    let text = String::from_utf8_lossy(&buf);
    BackupMarker::decode(&text)
        .map(BackupState::Complete)
        .map_err(|why| Error::NotABackup {
            dir: dir.to_path_buf(),
            why: format!("its {BACKUP_MARKER} file is damaged ({why})"),
        })
}

/// What [`Db::backup`](crate::Db::backup) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup's directory.
    pub dir: PathBuf,
    /// Its marker: the LSN (and time) it is consistent at.
    pub marker: BackupMarker,
    /// Table or checkpoint files hard-linked (no bytes copied).
    pub files_linked: usize,
    /// Files copied (the log's segments, and tables or a checkpoint where
    /// links could not be made).
    pub files_copied: usize,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// How long it took.
    pub duration: Duration,
}

impl std::fmt::Display for BackupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backup {} complete at LSN {}: {} files linked, {} copied ({} bytes) in {:.2?}",
            self.dir.display(),
            self.marker.lsn,
            self.files_linked,
            self.files_copied,
            self.bytes_copied,
            self.duration
        )
    }
}

/// The state a backup copies, captured by the engine under its flush lock.
pub(crate) struct Captured {
    pub storage: Arc<dyn Storage>,
    /// The source's log directory.
    pub log_dir: PathBuf,
    /// Whole immutable files: (source path, path under the backup).
    pub files: Vec<(PathBuf, PathBuf)>,
    /// On tables: the manifest state to write.
    pub manifest: Option<VersionEdit>,
    /// The first LSN the backup's log must hold.
    pub log_from: u64,
    /// The LSN the backup is consistent at.
    pub lsn: u64,
    /// Keeps the log's segments from `log_from` on while they are copied.
    pub _pin: LogPin,
    /// Keeps the tables from deletion while they are linked or copied.
    pub _version: Option<Arc<crate::lsm::Version>>,
}

/// Refuses a destination that exists: a backup goes into a new directory.
pub(crate) fn check_destination(storage: &dyn Storage, dest: &Path) -> Result<()> {
    if storage
        .exists(dest)
        .map_err(|e| Error::io("checking", dest, e))?
        || storage.list(dest).is_ok()
    {
        return Err(Error::BackupDestinationExists {
            dest: dest.to_path_buf(),
        });
    }
    Ok(())
}

/// Counts of what was transferred.
#[derive(Default)]
struct Transferred {
    linked: usize,
    copied: usize,
    bytes: u64,
}

/// Writes the backup of `c` into `dest` (which does not exist yet).
pub(crate) fn write(c: Captured, dest: &Path) -> Result<BackupReport> {
    let started = Instant::now();
    let storage = &*c.storage;
    keel_storage::create_dir_durable(storage, dest)?;
    // First, durably: whatever happens next, the directory says it is
    // incomplete until the very end.
    keel_storage::write_atomic(storage, &dest.join(BACKUP_IN_PROGRESS), |f, _| {
        f.write_at(
            b"a keel backup is being written here; incomplete until this file is gone\n",
            0,
        )
    })?;
    let mut done = Transferred::default();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (from, rel) in &c.files {
        let to = dest.join(rel);
        let dir = keel_storage::parent_dir(&to);
        if !dirs.contains(&dir) {
            keel_storage::create_dir_durable(storage, &dir)?;
            dirs.push(dir);
        }
        link_or_copy(storage, from, &to, &mut done)?;
    }
    if let Some(edit) = &c.manifest {
        let mut m =
            Manifest::open(Arc::clone(&c.storage), &dest.join(MANIFEST_DIR)).map_err(|e| {
                Error::ManifestDamaged {
                    dir: dest.join(MANIFEST_DIR),
                    why: e.to_string(),
                }
            })?;
        m.apply(edit).map_err(|e| Error::ManifestDamaged {
            dir: dest.join(MANIFEST_DIR),
            why: e.to_string(),
        })?;
        m.close().map_err(|e| Error::ManifestDamaged {
            dir: dest.join(MANIFEST_DIR),
            why: e.to_string(),
        })?;
    }
    let log_dest = dest.join(LOG_DIR);
    keel_storage::create_dir_durable(storage, &log_dest)?;
    let time_us = copy_log(storage, &c.log_dir, &log_dest, c.log_from, c.lsn, &mut done)?;
    dirs.push(log_dest);
    for d in &dirs {
        // Each link and copy is a new name: durable once its directory is.
        storage
            .sync_dir(d)
            .map_err(|e| Error::io("syncing a backup directory", d, e))?;
    }
    let marker = BackupMarker {
        lsn: c.lsn,
        time_us,
    };
    keel_storage::write_atomic(storage, &dest.join(BACKUP_MARKER), |f, _| {
        f.write_at(marker.encode().as_bytes(), 0)
    })?;
    let in_progress = dest.join(BACKUP_IN_PROGRESS);
    storage
        .remove(&in_progress)
        .map_err(|e| Error::io("removing", &in_progress, e))?;
    // Complete only once the removal is durable.
    storage
        .sync_dir(dest)
        .map_err(|e| Error::io("syncing the backup directory", dest, e))?;
    Ok(BackupReport {
        dir: dest.to_path_buf(),
        marker,
        files_linked: done.linked,
        files_copied: done.copied,
        bytes_copied: done.bytes,
        duration: started.elapsed(),
    })
}

/// Hard-links `from` to `to`, or copies it (fdatasynced) where links fail.
fn link_or_copy(
    storage: &dyn Storage,
    from: &Path,
    to: &Path,
    done: &mut Transferred,
) -> Result<()> {
    if storage.hard_link(from, to).is_ok() {
        done.linked += 1;
        return Ok(());
    }
    done.bytes += copy_file(storage, from, to)?;
    done.copied += 1;
    Ok(())
}

/// Copies the file `from` whole into a new file `to`, fdatasynced (its
/// name is made durable by the caller's directory sync). Returns its size.
pub(crate) fn copy_file(storage: &dyn Storage, from: &Path, to: &Path) -> Result<u64> {
    let src = storage
        .open(from, OpenMode::Read)
        .map_err(|e| Error::io("opening", from, e))?;
    let len = src.len().map_err(|e| Error::io("reading", from, e))?;
    copy_prefix(storage, &*src, from, to, len)?;
    Ok(len)
}

/// Copies the first `len` bytes of `src` into a new file `to`, fdatasynced
/// (its name is made durable by the caller's directory sync).
fn copy_prefix(
    storage: &dyn Storage,
    src: &dyn keel_storage::StorageFile,
    from: &Path,
    to: &Path,
    len: u64,
) -> Result<()> {
    let dst = storage
        .open(to, OpenMode::CreateNew)
        .map_err(|e| Error::io("creating", to, e))?;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        src.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io("reading", from, e))?;
        dst.write_at(&buf[..n], at)
            .map_err(|e| Error::io("writing", to, e))?;
        at += n as u64;
    }
    // The copy must be on disk before the backup is marked complete.
    dst.sync_all()
        .map_err(|e| Error::io("syncing a copied file", to, e))?;
    Ok(())
}

/// Copies the log's segments that hold records `from..=upto` into `dest`,
/// the last one cut after record `upto`. Returns that record's time.
fn copy_log(
    storage: &dyn Storage,
    log_dir: &Path,
    dest: &Path,
    from: u64,
    upto: u64,
    done: &mut Transferred,
) -> Result<u64> {
    let segments = keel_wal::inspect::segment_files(storage, log_dir)?;
    let firsts: Vec<u64> = segments
        .iter()
        .filter_map(|p| {
            p.file_name()
                .and_then(|n| keel_wal::segment::parse_segment_name(&n.to_string_lossy()))
        })
        .collect();
    let mut time_us = 0;
    for (i, path) in segments.iter().enumerate() {
        let first = firsts[i];
        let next = firsts.get(i + 1).copied();
        // Wholly before `from`, or wholly after `upto`: not needed.
        if next.is_some_and(|n| n <= from) || first > upto {
            continue;
        }
        let mut end = None;
        let mut time = 0;
        let summary = inspect_segment(
            storage,
            path,
            keel_wal::format::MAX_RECORD_LEN_LIMIT,
            false,
            |r, offset| {
                if r.lsn <= upto {
                    time = r.time_us;
                    end = Some((r.lsn, offset, r.stored_len));
                }
            },
        )?;
        let header = summary.header.map_err(|e| {
            Error::Wal(keel_wal::WalError::Corrupt(Box::new(keel_wal::Damage {
                segment: path.clone(),
                offset: 0,
                lsn: first,
                kind: keel_wal::DamageKind::BadHeader(e),
            })))
        })?;
        let cut = match end {
            Some((_, offset, stored)) => {
                offset + record_size_in(header.version, stored as usize) as u64
            }
            None => header.records_start() as u64,
        };
        if let Some((lsn, ..)) = end {
            if lsn == upto {
                time_us = time;
            }
        }
        let src = storage
            .open(path, OpenMode::Read)
            .map_err(|e| Error::io("opening", path, e))?;
        let len = src.len().map_err(|e| Error::io("reading", path, e))?;
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        copy_prefix(storage, &*src, path, &dest.join(name), cut.min(len))?;
        done.copied += 1;
        done.bytes += cut.min(len);
    }
    Ok(time_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips_and_damage_is_refused() {
        let m = BackupMarker {
            lsn: 12345,
            time_us: 1_796_280_062_123_456,
        };
        let text = m.encode();
        assert_eq!(BackupMarker::decode(&text), Ok(m));
        // docs/FORMAT.md's example.
        let example = BackupMarker {
            lsn: 2201,
            time_us: 1_796_280_062_123_456,
        };
        assert_eq!(
            example.encode(),
            "keel backup 1\nlsn 2201\ntime_us 1796280062123456\ncrc32c f95b4304\n"
        );
        let damaged = text.replace("12345", "12346");
        assert!(BackupMarker::decode(&damaged)
            .unwrap_err()
            .contains("checksum"));
        assert!(BackupMarker::decode("").is_err());
    }
}
