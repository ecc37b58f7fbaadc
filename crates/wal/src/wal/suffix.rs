//! [`Wal::truncate_after`]: removing the newest records, so that the next
//! append reuses their LSNs. A Raft follower needs it when a new leader's
//! entries conflict with ones it holds but that were never committed.
//!
//! Invariants:
//! - When it returns `Ok`, no record after the LSN can come back, whatever
//!   crash follows: later segments are removed (newest first, so a crash
//!   leaves the log contiguous) and the directory synced, then the segment
//!   that held the first removed record is cut at that record and synced,
//!   all before the next append is written.
//! - A crash before it returns leaves a prefix of the log as it was, at
//!   least up to the LSN: every record it keeps stays readable.
//! - Nothing is appended while it runs: it holds the log's state lock once
//!   every pending record is durable, and the next record goes exactly where
//!   the first removed one was, with that segment's salt and dictionary.
//! - Removed records are not archived: they are records the caller
//!   disowns (an uncommitted suffix), not history.

use super::{Inner, State, Tail, Wal};
use crate::dictionary::ZstdDictionary;
use crate::error::{Damage, Result, StopCause, WalError};
use crate::format::SegmentHeader;
use crate::reader::{scan_records, ScanStop};
use keel_storage::{OpenMode, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

/// What [`Wal::truncate_after`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuffixTruncation {
    /// Records removed (their LSNs are handed out again).
    pub records: u64,
    /// Segment files removed whole.
    pub segments: usize,
}

impl Wal {
    /// Removes every record with an LSN above `lsn`, durably: the next
    /// append gets `lsn + 1`. Waits for pending appends to become durable
    /// first, and blocks appends while it runs. `lsn` must be at least
    /// [`first_lsn`](Wal::first_lsn)` - 1` ([`WalError::NotInLog`]
    /// otherwise); at or above the last LSN it removes nothing.
    ///
    /// A failure once files have begun to change stops the log (as a
    /// failed fsync does): its files then hold a prefix of the log, at
    /// least up to `lsn`, which the next open recovers. Readers that go on
    /// meanwhile ([`read_from`](Wal::read_from)) may see an error if a
    /// segment they read is removed under them.
    pub fn truncate_after(&self, lsn: u64) -> Result<SuffixTruncation> {
        let inner = &*self.inner;
        // One truncation (of either end) at a time.
        let _pins = inner
            .truncation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut st = self.quiesce()?;
        let last = st.next_lsn - 1;
        if lsn >= last {
            return Ok(SuffixTruncation::default());
        }
        let segments = inner.segments().clone();
        let first = segments.first().map_or(st.next_lsn, |s| s.0);
        if lsn + 1 < first {
            return Err(WalError::NotInLog {
                lsn: lsn + 1,
                first,
            });
        }
        // The segment that holds record lsn + 1 (the first to remove).
        let k = segments.partition_point(|s| s.0 <= lsn + 1) - 1;
        let (first_of_k, path) = &segments[k];
        let mut data = Vec::new();
        let header = inner.read_listed_segment(*first_of_k, path, &mut data)?;
        let cut = offset_of(&data, &header, lsn + 1, path, inner.opts.max_record_size)?;
        let doomed = &segments[k + 1..];
        let tail = st.tail.take();
        let file = match inner.remove_and_cut(doomed, path, tail, cut, data.len() as u64) {
            Ok(file) => file,
            Err(e) => {
                // The files are part way: stop, as after a failed fsync;
                // the next open recovers a prefix of the log.
                tracing::error!(error = %e, "truncating the log's newest records failed; write-ahead log stopped");
                if st.stopped.is_none() {
                    st.stopped = Some(Arc::new(StopCause {
                        op: "truncating the log's newest records",
                        path: inner.dir.clone(),
                        error: std::io::Error::other(e.to_string()),
                    }));
                }
                inner.publish(&mut st);
                return Err(e);
            }
        };
        inner.segments().truncate(k + 1);
        let dictionary = header
            .dictionary
            .filter(|_| super::uses_dictionaries(&inner.opts))
            .and_then(|_| ZstdDictionary::new(header.dictionary_in(&data).to_vec()))
            .map(Arc::new);
        st.next_lsn = lsn + 1;
        st.written_lsn = lsn;
        st.durable_lsn = lsn;
        st.plan_version = header.version;
        st.plan_salt = header.salt;
        st.plan_start = header.records_start() as u64;
        st.plan_end = cut;
        st.plan_dictionary = dictionary.clone();
        *inner
            .dictionary
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = dictionary;
        st.sync_file = Some((Arc::clone(&file), path.clone()));
        st.tail = Some(Tail {
            path: path.clone(),
            file,
            end: cut,
        });
        Ok(SuffixTruncation {
            records: last - lsn,
            segments: doomed.len(),
        })
    }

    /// The state lock, held once every record appended is durable and no
    /// thread writes or syncs.
    fn quiesce(&self) -> Result<MutexGuard<'_, State>> {
        let inner = &*self.inner;
        loop {
            self.sync()?;
            let st = inner.lock();
            if let Some(cause) = &st.stopped {
                return Err(inner.stopped_error(cause));
            }
            if st.closed {
                return Err(WalError::Closed);
            }
            if st.pending.is_empty()
                && !st.writing
                && !st.syncing
                && st.written_lsn == st.durable_lsn
            {
                return Ok(st);
            }
            // Appends came in after the sync: sync them too.
        }
    }
}

/// Where record `lsn` starts in the segment `data` (headed by `header`):
/// its offset, or the end of the records if the segment holds none from
/// `lsn` on and `lsn` is where it would begin.
fn offset_of(
    data: &[u8],
    header: &SegmentHeader,
    lsn: u64,
    path: &Path,
    max_record_size: u32,
) -> Result<u64> {
    let mut found = None;
    let scan = scan_records(
        data,
        header.records_start(),
        header.first_lsn,
        header,
        max_record_size,
        &mut Vec::new(),
        &mut |r, offset| {
            if r.lsn == lsn {
                found = Some(offset);
            }
        },
    );
    let damage = |offset, lsn, kind| {
        WalError::Corrupt(Box::new(Damage {
            segment: path.to_path_buf(),
            offset,
            lsn,
            kind,
        }))
    };
    match (found, scan.stop) {
        (Some(at), _) => Ok(at),
        (None, ScanStop::Damaged { offset, kind }) => Err(damage(offset, scan.next_lsn, kind)),
        (None, ScanStop::Clean { end }) if scan.next_lsn == lsn => Ok(end),
        // The list says the segment holds `lsn`, but it ends before.
        (None, ScanStop::Clean { .. }) => Err(damage(
            0,
            lsn,
            crate::error::DamageKind::UnexpectedLsn(scan.next_lsn),
        )),
    }
}

impl Inner {
    /// Removes the `doomed` segments (newest first) and cuts the segment
    /// `path` at `cut`, durably, in that order. `tail` is the log's open
    /// tail segment (used if it is `path`); `old_len` the file's length.
    fn remove_and_cut(
        &self,
        doomed: &[(u64, PathBuf)],
        path: &Path,
        tail: Option<Tail>,
        cut: u64,
        old_len: u64,
    ) -> Result<Arc<dyn StorageFile>> {
        // Later segments go, newest first: a crash leaves a contiguous log.
        for (_, p) in doomed.iter().rev() {
            self.storage
                .remove(p)
                .map_err(|e| WalError::io("removing a segment after the truncation point", p, e))?;
        }
        if !doomed.is_empty() {
            // The removals must be durable before the cut below is: else a
            // crash could bring back segments after a cut one.
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| WalError::io("syncing the log directory", &self.dir, e))?;
        }
        let file = match tail {
            Some(t) if t.path == path => t.file,
            _ => self
                .storage
                .open(path, OpenMode::ReadWrite)
                .map_err(|e| WalError::io("opening a segment to cut", path, e))?,
        };
        file.set_len(cut)
            .map_err(|e| WalError::io("cutting the log after a record", path, e))?;
        if self.opts.preallocate && old_len > cut {
            file.allocate(old_len)
                .map_err(|e| WalError::io("re-allocating", path, e))?;
        }
        // fsync: the cut must be durable before anything is appended after
        // it, or removed records could reappear behind new ones.
        file.sync_all()
            .map_err(|e| WalError::io("syncing a cut segment", path, e))?;
        Ok(file)
    }
}
