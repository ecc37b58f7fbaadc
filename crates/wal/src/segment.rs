//! Segment files: naming, listing and preparation.
//!
//! A segment is named by the LSN of its first record, zero-padded so names
//! sort by LSN: `00000000000000000001.wal`. The next segment is prepared off
//! the write path by a background thread: created as `prealloc-N.tmp`,
//! allocated to the segment size, fsynced, its directory fsynced. At rotation
//! the writer writes the header into it, fsyncs it, renames it to its final
//! name and fsyncs the directory, so a file with a segment's name always has
//! a durable header; a leftover `.tmp` file holds no records and is removed at
//! open.

use crate::error::{Result, WalError};
use crate::format::{HeaderError, SegmentHeader};
use keel_storage::{OpenMode, Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

const SEGMENT_SUFFIX: &str = ".wal";
/// Prefix of a prepared segment's temp name (`prealloc-N.tmp`).
pub const PREPARED_PREFIX: &str = "prealloc-";
const PREPARED_SUFFIX: &str = ".tmp";

/// The file name of the segment whose first record has `first_lsn`.
pub fn segment_file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The first LSN a segment file name stands for, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_prepared_name(name: &str) -> bool {
    name.starts_with(PREPARED_PREFIX) && name.ends_with(PREPARED_SUFFIX)
}

/// The temp file of a save of cut bytes that never finished
/// (`<segment>.cut-at-<N>.tmp`): the cut it was saving for never happened
/// (bytes are saved durably before the segment is truncated), so it holds
/// nothing the segment does not.
fn is_interrupted_save(name: &str) -> bool {
    name.strip_suffix(keel_storage::TEMP_SUFFIX)
        .and_then(|base| base.rsplit_once(".cut-at-"))
        .is_some_and(|(seg, at)| {
            parse_segment_name(seg).is_some() && at.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Segment files (first LSN, path), sorted by first LSN.
pub(crate) type SegmentList = Vec<(u64, PathBuf)>;

/// Segment files in `dir`, sorted by first LSN, and leftovers to remove at
/// open: prepared files, and temp files of interrupted saves of cut bytes.
pub(crate) fn list_segments(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<(SegmentList, Vec<PathBuf>)> {
    let names = storage
        .list(dir)
        .map_err(|e| WalError::io("listing the log directory", dir, e))?;
    let mut segments = Vec::new();
    let mut prepared = Vec::new();
    for name in names {
        if let Some(lsn) = parse_segment_name(&name) {
            segments.push((lsn, dir.join(name)));
        } else if is_prepared_name(&name) || is_interrupted_save(&name) {
            prepared.push(dir.join(name));
        }
    }
    segments.sort();
    Ok((segments, prepared))
}

/// A segment file opened and read whole, its header decoded (or not).
pub(crate) struct OpenedSegment {
    pub file: Arc<dyn StorageFile>,
    pub header: std::result::Result<SegmentHeader, HeaderError>,
}

/// The one way every reader (recovery, [`Wal::read_from`](crate::Wal::read_from),
/// inspection) opens a segment: open it (`writable` for recovery, which may
/// cut it), fdatasync it first if `sync_first`, read it whole into `buf`,
/// and decode its header.
pub(crate) fn read_segment(
    storage: &dyn Storage,
    path: &Path,
    writable: bool,
    sync_first: bool,
    buf: &mut Vec<u8>,
) -> Result<OpenedSegment> {
    let mode = if writable {
        OpenMode::ReadWrite
    } else {
        OpenMode::Read
    };
    let file = storage
        .open(path, mode)
        .map_err(|e| WalError::io("opening a segment", path, e))?;
    if sync_first {
        file.sync_data()
            .map_err(|e| WalError::io("syncing the last segment at open", path, e))?;
    }
    read_whole(&*file, path, buf)?;
    let header = SegmentHeader::decode(buf);
    Ok(OpenedSegment { file, header })
}

/// Reads a whole file into `buf` (reusing its allocation).
fn read_whole(file: &dyn StorageFile, path: &Path, buf: &mut Vec<u8>) -> Result<()> {
    let len = file
        .len()
        .map_err(|e| WalError::io("reading the length of", path, e))?;
    buf.clear();
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, 0)
        .map_err(|e| WalError::io("reading", path, e))
}

/// A created, allocated, durable file waiting to become the next segment.
pub(crate) struct Prepared {
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
}

/// Creates one prepared file now, on the caller's thread.
pub(crate) fn prepare_segment(
    storage: &dyn Storage,
    dir: &Path,
    n: u64,
    size: u64,
    preallocate: bool,
) -> Result<Prepared> {
    let path = dir.join(format!("{PREPARED_PREFIX}{n}{PREPARED_SUFFIX}"));
    if storage
        .exists(&path)
        .map_err(|e| WalError::io("checking", &path, e))?
    {
        storage
            .remove(&path)
            .map_err(|e| WalError::io("removing a stale prepared segment", &path, e))?;
    }
    let file = storage
        .open(&path, OpenMode::CreateNew)
        .map_err(|e| WalError::io("creating a segment", &path, e))?;
    let allocated = if preallocate {
        file.allocate(size)
            .map_err(|e| WalError::io("preallocating a segment", &path, e))
    } else {
        Ok(())
    };
    // fsync (not fdatasync): the allocation is metadata, and making it
    // durable now is what lets every later fdatasync skip it.
    let synced = allocated.and_then(|()| {
        file.sync_all()
            .map_err(|e| WalError::io("syncing a prepared segment", &path, e))
    });
    if let Err(e) = synced {
        // A full disk must not keep a half-allocated file: give the space
        // back (best effort; a leftover is removed at the next open).
        drop(file);
        let _ = storage.remove(&path);
        return Err(e);
    }
    // The name need not be durable yet (a lost .tmp file holds nothing), but
    // syncing it here keeps the rename at rotation a single-entry change.
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("syncing the log directory", dir, e))?;
    Ok(Prepared { path, file })
}

struct PreparerState {
    ready: Option<Prepared>,
    wanted: bool,
    shutdown: bool,
    next_n: u64,
}

/// A background thread that keeps one prepared segment ready.
pub(crate) struct Preparer {
    shared: Arc<(Mutex<PreparerState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    size: u64,
    preallocate: bool,
}

impl Preparer {
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        size: u64,
        preallocate: bool,
    ) -> Preparer {
        let shared = Arc::new((
            Mutex::new(PreparerState {
                ready: None,
                wanted: true,
                shutdown: false,
                next_n: 0,
            }),
            Condvar::new(),
        ));
        let thread = {
            let shared = Arc::clone(&shared);
            let storage = Arc::clone(&storage);
            let dir = dir.clone();
            std::thread::Builder::new()
                .name("keel-wal-prepare".into())
                .spawn(move || loop {
                    // A poisoned lock (a panic while holding it) ends this
                    // thread; take() then fails and the log stops.
                    let n = {
                        let (lock, cv) = &*shared;
                        let Ok(mut st) = lock.lock() else { return };
                        while !(st.shutdown || st.wanted && st.ready.is_none()) {
                            let Ok(next) = cv.wait(st) else { return };
                            st = next;
                        }
                        if st.shutdown {
                            return;
                        }
                        st.wanted = false;
                        st.next_n += 1;
                        st.next_n
                    };
                    // A failure here is not fatal: rotation then prepares the
                    // segment itself and reports the error if it fails again.
                    let made = prepare_segment(&*storage, &dir, n, size, preallocate).ok();
                    let (lock, _) = &*shared;
                    let Ok(mut st) = lock.lock() else { return };
                    st.ready = made;
                })
                .ok()
        };
        Preparer {
            shared,
            thread,
            storage,
            dir,
            size,
            preallocate,
        }
    }

    /// The prepared segment, made now if the thread has none ready.
    pub(crate) fn take(&self) -> Result<Prepared> {
        let (lock, cv) = &*self.shared;
        // Poisoned: a thread panicked mid-update; the rotation that asked
        // fails, which stops the log (docs/DESIGN.md, rule 9).
        let mut st = lock.lock().map_err(|_| {
            WalError::io(
                "taking a prepared segment",
                &self.dir,
                std::io::Error::other("poisoned lock: a thread panicked while holding it"),
            )
        })?;
        let ready = st.ready.take();
        st.wanted = true;
        st.next_n += 1;
        let n = st.next_n;
        drop(st);
        cv.notify_all();
        match ready {
            Some(p) => Ok(p),
            None => prepare_segment(&*self.storage, &self.dir, n, self.size, self.preallocate),
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        // Shutting down: even a poisoned state only needs its flag set.
        lock.lock().unwrap_or_else(|p| p.into_inner()).shutdown = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn_and_parse_back() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(
            parse_segment_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_name("1.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.wal"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn leftovers_of_interrupted_work_are_listed_for_removal_and_nothing_else() {
        let s = keel_storage::SimStorage::new(1);
        let dir = Path::new("/log");
        keel_storage::create_dir_durable(&s, dir).unwrap();
        let seg = segment_file_name(1);
        for name in [
            seg.clone(),
            "prealloc-3.tmp".to_string(),
            format!("{seg}.cut-at-4096.tmp"),
            format!("{seg}.cut-at-4096"),
            format!("{seg}.dropped"),
            "notes.tmp".to_string(),
        ] {
            s.open(&dir.join(name), keel_storage::OpenMode::CreateNew)
                .unwrap();
        }
        let (segs, leftovers) = list_segments(&s, dir).unwrap();
        assert_eq!(segs, vec![(1, dir.join(&seg))]);
        let mut names: Vec<String> = leftovers
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Saved cut bytes and set-aside segments stay for the operator.
        assert_eq!(
            names,
            [format!("{seg}.cut-at-4096.tmp"), "prealloc-3.tmp".into()]
        );
    }
}
