//! [`Wal`]: the log's writer, with group commit, and its readers.
//!
//! Group commit (leader/followers, no sleeps): an appender encodes its record
//! into the pending buffer under the state lock and takes the next LSN. If no
//! flush is running it becomes the leader: it takes everything pending, writes
//! it with one write per segment, fdatasyncs once, publishes the new
//! "durable through" watermark and wakes the followers — then returns without
//! waiting to be woken itself. Appenders that arrive during a flush wait; the
//! first to see the flush end leads the next one, carrying all of them.
//!
//! Invariants:
//! - An append under [`SyncPolicy::Always`] returns `Ok` only after an
//!   fdatasync that covers its record returned `Ok`.
//! - Records reach the files in LSN order, and every segment is fdatasynced
//!   before the first record of the next one is written, so only the last
//!   segment can ever hold unsynced bytes.
//! - A failed write or sync stops the log for good (fail-stop): every waiter
//!   gets the error and every later append is refused. A sync is never
//!   retried, because after a failed fsync Linux may already have dropped the
//!   data while reporting later syncs as successful.
//! - Each record carries the durable watermark at the time it was encoded;
//!   recovery relies on it (see [`crate::reader`]).
//! - Each record's time is `max(clock, previous record's time)`, assigned
//!   with its LSN under the state lock, so times never decrease in LSN
//!   order, across restarts too (the last time is recovered at open).
//! - Records are appended only to segments of the current format version:
//!   after an upgrade the first append begins a new segment.
//! - Compression happens before the lock is taken: a record is compressed
//!   on its appender's thread, never while others wait. With zstd it uses
//!   the dictionary of the segment then being filled; a record compressed
//!   with a dictionary that is not its segment's (a new segment began
//!   meanwhile) is compressed again under the lock, so a record and its
//!   segment always agree. That happens only around rotations.
//! - The log's first dictionary begins a new segment as soon as it is
//!   trained; later ones wait for the next segment (see
//!   [`crate::dictionary`]).

use crate::compression::{self, Compression};
use crate::dictionary::{Trainer, ZstdDictionary};
use crate::error::Damage;
use crate::error::{Result, StopCause, WalError};
use crate::format::{self, RecordMeta, SegmentHeader, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use crate::options::{SyncPolicy, WalOptions};
use crate::reader::{scan_records, Record, ScanStop};
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{read_segment, segment_file_name, Preparer};
use keel_storage::rng::SplitMix64;
use keel_storage::{Storage, StorageFile};
use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod suffix;
pub use suffix::SuffixTruncation;

/// Counters of a log's activity since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended.
    pub appends: u64,
    /// Write calls that carried records to segment files.
    pub writes: u64,
    /// fdatasync calls on segment files made to cover records.
    pub syncs: u64,
    /// Bytes written to segment files (records and headers).
    pub bytes_written: u64,
    /// Segments begun since open.
    pub rotations: u64,
    /// Total time spent in those fdatasync calls, in nanoseconds.
    pub sync_nanos: u64,
    /// The longest of those fdatasync calls, in nanoseconds.
    pub max_sync_nanos: u64,
    /// Segments copied into the archive (then deleted from the log).
    pub segments_archived: u64,
    /// Attempts to archive a segment that failed (the segment was kept).
    pub archive_failures: u64,
}

#[derive(Default)]
struct AtomicStats {
    appends: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
    bytes_written: AtomicU64,
    rotations: AtomicU64,
    sync_nanos: AtomicU64,
    max_sync_nanos: AtomicU64,
    segments_archived: AtomicU64,
    archive_failures: AtomicU64,
}

/// A payload ready to encode: checked, and compressed if that pays.
#[derive(Clone)]
struct Prepared<'p> {
    /// The payload as appended.
    raw: &'p [u8],
    stored: Cow<'p, [u8]>,
    compression: Compression,
    /// The dictionary `stored` was compressed with, if any.
    dictionary: Option<Arc<ZstdDictionary>>,
    raw_len: u32,
}

/// A segment to begin before the records of a batch.
struct NewSegment {
    first_lsn: u64,
    salt: u64,
    dictionary: Option<Arc<ZstdDictionary>>,
}

/// Encoded records waiting to be written, all bound for one segment.
struct Batch {
    /// Set when these records begin a new segment.
    new_segment: Option<NewSegment>,
    bytes: Vec<u8>,
}

/// The segment being appended to. Touched only by the flushing thread.
struct Tail {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Where the next record goes.
    end: u64,
}

struct Parked {
    lsn: u64,
    durable: bool,
    thread: std::thread::Thread,
}

/// Most rounds one syncing thread runs back to back before handing over.
const MAX_SYNC_ROUNDS: usize = 8;
/// Spare batch buffers kept for reuse.
const SPARE_BUFFERS: usize = 4;

struct State {
    next_lsn: u64,
    /// Commit time of the last record given an LSN (microseconds).
    last_time_us: u64,
    /// Format version of the segment the last pending batch targets.
    plan_version: u32,
    pending: Vec<Batch>,
    /// Salt, first record offset, end offset and dictionary of the segment
    /// the last pending batch targets.
    plan_salt: u64,
    plan_start: u64,
    plan_end: u64,
    plan_dictionary: Option<Arc<ZstdDictionary>>,
    written_lsn: u64,
    durable_lsn: u64,
    /// A thread is writing pending batches (it has taken `tail`).
    writing: bool,
    /// A thread is fdatasyncing `sync_file`.
    syncing: bool,
    /// Threads parked until a watermark reaches an LSN: (LSN, whether it
    /// must be durable, the thread). Publishing unparks exactly those whose
    /// condition now holds, so no thread is woken only to sleep again.
    parked: Vec<Parked>,
    flush_requested: bool,
    tail: Option<Tail>,
    /// The segment that holds every written record not yet durable (records
    /// in older segments were synced at rotation). Updated with
    /// `written_lsn`, so a syncer reads a consistent pair.
    sync_file: Option<(Arc<dyn StorageFile>, PathBuf)>,
    spare: Vec<Vec<u8>>,
    stopped: Option<Arc<StopCause>>,
    closed: bool,
    wakers: Vec<(u64, Waker)>,
    rng: SplitMix64,
}

struct Inner {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    opts: WalOptions,
    log_id: u64,
    state: Mutex<State>,
    /// The background flusher waits here for work.
    work: Condvar,
    /// Segment first LSNs and paths, oldest first.
    segments: Mutex<Vec<(u64, PathBuf)>>,
    preparer: Preparer,
    /// Samples payloads and trains the next zstd dictionary.
    trainer: Trainer,
    /// The dictionary of the segment being filled (`plan_dictionary`),
    /// readable by appenders without the state lock.
    dictionary: Mutex<Option<Arc<ZstdDictionary>>>,
    stats: AtomicStats,
    /// Set when a lock other than `state` was found poisoned; the next
    /// append (holding `state`) stops the log.
    poisoned: AtomicBool,
    /// Held while segments are deleted (and archived): one truncation at a
    /// time, without holding `segments` during the copies. Guards `pins`.
    truncation: Mutex<Pins>,
}

/// LSNs whose segments [`LogPin`]s keep from deletion: (pin id, LSN).
#[derive(Default)]
struct Pins {
    next_id: u64,
    held: Vec<(u64, u64)>,
}

/// Keeps every segment that holds records at or after an LSN from being
/// deleted by [`Wal::truncate_before`] while it lives (a backup copying
/// them, for one). Made by [`Wal::pin_from`].
pub struct LogPin {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for LogPin {
    fn drop(&mut self) {
        let mut pins = self
            .inner
            .truncation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pins.held.retain(|(id, _)| *id != self.id);
    }
}

/// A write-ahead log in one directory. Share it between threads with `Arc`.
pub struct Wal {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and recovers it, without replay.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: WalOptions,
    ) -> Result<(Wal, RecoveryReport)> {
        // Every record is needed: damage anywhere counts.
        Wal::open_with_replay(storage, dir, opts, 1, |_| {})
    }

    /// Opens (or creates) the log in `dir`, recovering it and calling
    /// `replay(record)` for every record with LSN >= `replay_from`, in LSN
    /// order, in the same single read of the log.
    ///
    /// Records below `replay_from` are ones the caller no longer needs (a
    /// checkpoint holds them): damage confined to them does not fail the
    /// open; it is reported in `RecoveryReport::covered_damage`.
    pub fn open_with_replay(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: WalOptions,
        replay_from: u64,
        mut replay: impl FnMut(Record<'_>),
    ) -> Result<(Wal, RecoveryReport)> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        // Durably: a log whose directory a power loss can take away is no log.
        keel_storage::create_dir_durable(&*storage, &dir)?;
        if let Some(archive) = &opts.archive {
            keel_storage::create_dir_durable(&*storage, &archive.dir)?;
        }
        let recovered = recover(&*storage, &dir, &opts, replay_from, false, &mut replay)?;
        let report = recovered.report.clone();
        let inner = Arc::new(Inner::resume(storage, dir, opts, recovered));
        if inner.lock().tail.is_none() {
            inner.begin_first_segment()?;
        }
        let flusher = {
            let worker = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("keel-wal-flush".into())
                .spawn(move || worker.flusher_loop())
                .map_err(|e| WalError::io("starting the flush thread for", &inner.dir, e))?
        };
        if report.torn_tail.is_some() || report.set_aside.is_some() || !report.skipped.is_empty() {
            tracing::warn!(%report, "write-ahead log recovered with damage");
        } else {
            tracing::debug!(%report, "write-ahead log recovered");
        }
        Ok((
            Wal {
                inner,
                flusher: Some(flusher),
            },
            report,
        ))
    }

    /// Reads and checks the log in `dir` without changing anything, calling
    /// `visit` for each record with LSN >= `from`. The report says what an
    /// open would cut; damage an open would refuse is returned as an error.
    pub fn read_dir(
        storage: &dyn Storage,
        dir: impl AsRef<Path>,
        opts: &WalOptions,
        from: u64,
        mut visit: impl FnMut(Record<'_>),
    ) -> Result<RecoveryReport> {
        Ok(recover(storage, dir.as_ref(), opts, from, true, &mut visit)?.report)
    }

    /// Appends one record and returns its LSN once it is acknowledged under
    /// the sync policy (for `Always`: fdatasynced).
    ///
    /// An `Err` means the outcome is unknown: the record may or may not be
    /// found after a restart. It is never acknowledged.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.append_with(payload, |_| {})
    }

    /// Like [`append`](Self::append), and calls `on_lsn(lsn)` when the LSN
    /// is assigned, under the log's lock — so callers can queue work in LSN
    /// order (the engine applies operations to memory that way). `on_lsn`
    /// must be quick and must not call into this log. It is not called when
    /// the record is refused before it gets an LSN.
    pub fn append_with(&self, payload: &[u8], on_lsn: impl FnOnce(u64)) -> Result<u64> {
        let inner = &*self.inner;
        let stored = inner.prepare(payload)?;
        let mut st = inner.lock();
        let lsn = inner.enqueue(&mut st, &stored)?;
        on_lsn(lsn);
        let need_sync = inner.opts.sync == SyncPolicy::Always;
        inner.drive(st, lsn, need_sync).map(|_| lsn)
    }

    /// Queues one record and returns its LSN at once, without writing it:
    /// the first half of [`append_with`](Self::append_with), for callers
    /// that gather many records and then wait once, on their own thread, with
    /// [`flush_through`](Self::flush_through) (an event loop does this once
    /// per turn, as Redis does before it replies).
    ///
    /// The record is **not acknowledged** until `flush_through` (or any
    /// other append or sync that covers its LSN) returns `Ok`. Nothing is
    /// written unless somebody asks: a queued record that nobody waits for
    /// goes out with the next flush, the next interval sync, or at close.
    pub fn enqueue_with(&self, payload: &[u8], on_lsn: impl FnOnce(u64)) -> Result<u64> {
        let inner = &*self.inner;
        let stored = inner.prepare(payload)?;
        let mut st = inner.lock();
        let lsn = inner.enqueue(&mut st, &stored)?;
        on_lsn(lsn);
        Ok(lsn)
    }

    /// Waits until every record up to `lsn` is acknowledged under the sync
    /// policy (for `Always`: fdatasynced), doing the write and the
    /// fdatasync on the calling thread when no other thread is doing them.
    /// So a single caller pays no thread hand-off; concurrent callers still
    /// share one fdatasync (group commit).
    ///
    /// An `Err` means the outcome of every record not yet acknowledged is
    /// unknown, and the log has stopped (fail-stop).
    pub fn flush_through(&self, lsn: u64) -> Result<()> {
        let inner = &*self.inner;
        let st = inner.lock();
        if lsn >= st.next_lsn {
            return Err(WalError::NotAppended {
                lsn,
                next: st.next_lsn,
            });
        }
        let need_sync = inner.opts.sync == SyncPolicy::Always;
        inner.drive(st, lsn, need_sync).map(|_| ())
    }

    /// Appends one record without blocking the calling thread: the record is
    /// queued at once and the returned future resolves to its LSN when it is
    /// acknowledged; the background flush thread does the I/O. For async
    /// runtimes such as tokio.
    pub fn append_async(&self, payload: &[u8]) -> AppendFuture {
        self.append_async_with(payload, |_| {})
    }

    /// [`append_async`](Self::append_async) with the `on_lsn` hook of
    /// [`append_with`](Self::append_with).
    pub fn append_async_with(&self, payload: &[u8], on_lsn: impl FnOnce(u64)) -> AppendFuture {
        let inner = &*self.inner;
        let prepared = inner.prepare(payload);
        let mut st = inner.lock();
        let state = match prepared.and_then(|stored| inner.enqueue(&mut st, &stored)) {
            Ok(lsn) => {
                on_lsn(lsn);
                st.flush_requested = true;
                inner.work.notify_one();
                Ok(lsn)
            }
            Err(e) => Err(Some(e)),
        };
        AppendFuture {
            inner: Arc::clone(&self.inner),
            state,
        }
    }

    /// Makes every record appended so far durable (whatever the policy).
    pub fn sync(&self) -> Result<()> {
        let inner = &*self.inner;
        let st = inner.lock();
        let target = st.next_lsn - 1;
        inner.drive(st, target, true).map(|_| ())
    }

    /// Deletes every segment whose records all have LSNs below `lsn` (never
    /// the segment being written). Crash-safe: oldest first, then the
    /// directory is synced, so the log always starts at a segment boundary.
    /// Returns how many segments were removed.
    ///
    /// With an archive ([`WalOptions::archive`]) each segment is first
    /// copied there durably. If that fails (the archive's disk is full, its
    /// directory gone), the segment and every later one stay in the log,
    /// the failure is logged and counted ([`WalStats::archive_failures`]),
    /// and this returns `Ok` with what was removed before it: writes go on,
    /// and the next truncation tries again. Then archive retention runs.
    ///
    /// About 85 lines, kept whole: the order of its steps (archive, remove,
    /// update the list, retention, directory sync) is the crash-safety
    /// argument, and reads best in one place.
    pub fn truncate_before(&self, lsn: u64) -> Result<usize> {
        let inner = &*self.inner;
        let pins = inner
            .truncation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Segments a pin holds stay, whatever the caller asks.
        let lsn = pins.held.iter().map(|p| p.1).fold(lsn, u64::min);
        // The segments to delete, oldest first; the list is not held while
        // they are archived (rotation appends to it meanwhile).
        let doomed: Vec<(u64, PathBuf)> = {
            let segs = inner.segments();
            segs.windows(2)
                .take_while(|w| w[1].0 <= lsn)
                .map(|w| w[0].clone())
                .collect()
        };
        let mut removed = 0;
        let mut archived = 0;
        for (first, path) in doomed {
            if let Some(archive) = &inner.opts.archive {
                let copied = crate::archive::archive_segment(
                    &*inner.storage,
                    &path,
                    archive,
                    inner.log_id,
                    inner.opts.max_record_size,
                );
                match copied {
                    Ok(a) => {
                        archived += 1;
                        inner
                            .stats
                            .segments_archived
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(segment = %a.path.display(), first = a.lsns.0, last = a.lsns.1, bytes = a.bytes, "segment archived");
                    }
                    Err(error) => {
                        inner.stats.archive_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(segment = %path.display(), archive = %archive.dir.display(), %error,
                            "archiving a log segment failed; it and every later segment stay in the log (which grows) until archiving succeeds: fix the archive directory");
                        break;
                    }
                }
            }
            inner
                .storage
                .remove(&path)
                .map_err(|e| WalError::io("removing an old segment", &path, e))?;
            {
                let mut segs = inner.segments();
                // Invariant: only truncation removes from the front, and it
                // runs one at a time.
                debug_assert_eq!(segs.first().map(|s| s.0), Some(first));
                segs.remove(0);
            }
            removed += 1;
        }
        if archived > 0 {
            if let Some(archive) = &inner.opts.archive {
                let now = inner.opts.clock.now_us();
                let retention = crate::archive::apply_retention(
                    &*inner.storage,
                    archive,
                    now,
                    inner.opts.max_record_size,
                );
                if let Err(error) = retention {
                    tracing::error!(archive = %archive.dir.display(), %error, "archive retention failed; old archived segments stay until the next try");
                }
            }
        }
        if removed > 0 {
            // The removals are durable only once the directory is.
            if let Err(e) = inner.storage.sync_dir(&inner.dir) {
                let err = WalError::io("syncing the log directory", &inner.dir, e);
                inner.stop(
                    "syncing the log directory after removing segments",
                    &inner.dir,
                    &err,
                );
                return Err(err);
            }
        }
        Ok(removed)
    }

    /// Keeps every segment holding records at or after `lsn` in the log
    /// until the returned pin is dropped: [`truncate_before`](Self::truncate_before)
    /// deletes none of them meanwhile (it deletes what is older). Fails if
    /// the log no longer holds `lsn` (its segment was deleted already).
    pub fn pin_from(&self, lsn: u64) -> Result<LogPin> {
        let inner = &self.inner;
        let mut pins = inner
            .truncation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let first = self.first_lsn();
        if lsn < first {
            return Err(WalError::NotInLog { lsn, first });
        }
        let id = pins.next_id;
        pins.next_id += 1;
        pins.held.push((id, lsn));
        Ok(LogPin {
            inner: Arc::clone(inner),
            id,
        })
    }

    /// Calls `visit` for every acknowledged record with LSN >= `from`, in
    /// order, reading the segment files. Appends may go on meanwhile.
    pub fn read_from(&self, from: u64, mut visit: impl FnMut(Record<'_>)) -> Result<()> {
        let inner = &*self.inner;
        let upto = {
            let st = inner.lock();
            match inner.opts.sync {
                SyncPolicy::Always => st.durable_lsn,
                _ => st.written_lsn,
            }
        };
        let segs = inner.segments().clone();
        let mut scratch = Vec::new();
        for (i, (first, path)) in segs.iter().enumerate() {
            if segs.get(i + 1).is_some_and(|next| next.0 <= from) || *first > upto {
                continue;
            }
            let mut data = Vec::new();
            let header = inner.read_listed_segment(*first, path, &mut data)?;
            let mut done = false;
            let scan = scan_records(
                &data,
                header.records_start(),
                header.first_lsn,
                &header,
                inner.opts.max_record_size,
                &mut scratch,
                &mut |r, _| {
                    if r.lsn > upto {
                        done = true;
                    } else if r.lsn >= from && !done {
                        visit(r);
                    }
                },
            );
            if let ScanStop::Damaged { offset, kind } = scan.stop {
                if scan.next_lsn <= upto {
                    return Err(WalError::Corrupt(Box::new(Damage {
                        segment: path.clone(),
                        offset,
                        lsn: scan.next_lsn,
                        kind,
                    })));
                }
            }
        }
        Ok(())
    }

    /// The next LSN an append will get.
    pub fn next_lsn(&self) -> u64 {
        self.inner.lock().next_lsn
    }

    /// Every record up to this LSN is durable.
    pub fn durable_lsn(&self) -> u64 {
        self.inner.lock().durable_lsn
    }

    /// The first LSN still held by the log's segments.
    pub fn first_lsn(&self) -> u64 {
        let segs = self.inner.segments();
        segs.first().map_or(1, |s| s.0)
    }

    /// Paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        let segs = self.inner.segments();
        segs.iter().map(|s| s.1.clone()).collect()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.inner.opts
    }

    /// If the log has stopped after a failure, why.
    pub fn stopped(&self) -> Option<WalError> {
        let st = self.inner.lock();
        st.stopped.as_ref().map(|c| self.inner.stopped_error(c))
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let s = &self.inner.stats;
        WalStats {
            appends: s.appends.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            rotations: s.rotations.load(Ordering::Relaxed),
            sync_nanos: s.sync_nanos.load(Ordering::Relaxed),
            max_sync_nanos: s.max_sync_nanos.load(Ordering::Relaxed),
            segments_archived: s.segments_archived.load(Ordering::Relaxed),
            archive_failures: s.archive_failures.load(Ordering::Relaxed),
        }
    }

    /// Syncs what was appended and stops the background threads.
    pub fn close(mut self) -> Result<()> {
        let res = if self.inner.lock().stopped.is_none() {
            self.sync()
        } else {
            Ok(())
        };
        self.shutdown();
        res
    }

    fn shutdown(&mut self) {
        {
            let mut st = self.inner.lock();
            st.closed = true;
            self.inner.publish(&mut st);
        }
        self.inner.work.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if self.flusher.is_some() {
            // Best effort for Interval/Never: what was acknowledged as written
            // should reach the disk on an orderly drop.
            if self.inner.lock().stopped.is_none() {
                let _ = self.sync();
            }
            self.shutdown();
        }
    }
}

/// How appends go on in the last segment recovery kept.
struct TailPlan {
    tail: Option<Tail>,
    salt: u64,
    version: u32,
    /// Where its records start (after its dictionary block, if any).
    start: u64,
    /// Its dictionary, if appends go on using it.
    dictionary: Option<Arc<ZstdDictionary>>,
}

impl TailPlan {
    fn of(last: Option<crate::recovery::KeptSegment>, opts: &WalOptions) -> TailPlan {
        let Some(s) = last else {
            return TailPlan {
                tail: None,
                salt: 0,
                version: FORMAT_VERSION,
                start: SEGMENT_HEADER_LEN as u64,
                dictionary: None,
            };
        };
        let start = format::records_start(s.dictionary.as_ref().map_or(0, Vec::len)) as u64;
        TailPlan {
            tail: Some(Tail {
                path: s.path,
                file: s.file,
                end: s.end,
            }),
            salt: s.salt,
            version: s.version,
            start,
            // Records go on using the tail's dictionary while the log
            // compresses with zstd and dictionaries.
            dictionary: s
                .dictionary
                .filter(|d| uses_dictionaries(opts) && dictionary_fits(opts, d.len()))
                .and_then(ZstdDictionary::new)
                .map(Arc::new),
        }
    }
}

/// Whether the log's records use zstd dictionaries: zstd, with a
/// dictionary size.
fn uses_dictionaries(opts: &WalOptions) -> bool {
    opts.compression == Compression::Zstd && opts.zstd_dictionary_size > 0
}

/// Whether a segment may carry a dictionary of `len` bytes: its block
/// takes at most a sixteenth of the segment.
fn dictionary_fits(opts: &WalOptions, len: usize) -> bool {
    format::records_start(len) as u64 * 16 <= opts.segment_size
}

impl Inner {
    /// Reads the segment `path`, listed as beginning at LSN `first`, whole
    /// into `data`, and returns its header (or the damage that makes it
    /// unreadable).
    fn read_listed_segment(
        &self,
        first: u64,
        path: &Path,
        data: &mut Vec<u8>,
    ) -> Result<SegmentHeader> {
        let seg = read_segment(&*self.storage, path, false, false, data)?;
        seg.header.map_err(|e| {
            WalError::Corrupt(Box::new(Damage {
                segment: path.to_path_buf(),
                offset: 0,
                lsn: first,
                kind: crate::error::DamageKind::BadHeader(e),
            }))
        })
    }

    /// The log's state after recovery: the kept segments, the next LSN,
    /// the last segment as the tail to append to, and the preparer started.
    fn resume(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        opts: WalOptions,
        recovered: crate::recovery::Recovered,
    ) -> Inner {
        let mut rng = SplitMix64::from_entropy();
        let log_id = recovered.log_id.unwrap_or_else(|| rng.next_u64());
        let preparer = Preparer::start(
            Arc::clone(&storage),
            dir.clone(),
            opts.segment_size,
            opts.preallocate,
        );
        let next_lsn = recovered.next_lsn;
        let segments: Vec<(u64, PathBuf)> = recovered
            .segments
            .iter()
            .map(|s| (s.first_lsn, s.path.clone()))
            .collect();
        let TailPlan {
            tail,
            salt: plan_salt,
            version: plan_version,
            start: plan_start,
            dictionary,
        } = TailPlan::of(recovered.segments.into_iter().last(), &opts);
        let plan_end = tail.as_ref().map_or(0, |t| t.end);
        // Dictionaries only where they fit a sixteenth of a segment, so no
        // trained dictionary is ever refused (and trained again).
        let fits = dictionary_fits(&opts, opts.zstd_dictionary_size);
        let trainer = Trainer::new(if uses_dictionaries(&opts) && fits {
            opts.zstd_dictionary_size
        } else {
            0
        });
        Inner {
            storage,
            dir,
            opts,
            log_id,
            state: Mutex::new(State {
                next_lsn,
                last_time_us: recovered.report.last_time_us,
                plan_version,
                pending: Vec::new(),
                plan_salt,
                plan_start,
                plan_end,
                plan_dictionary: dictionary.clone(),
                written_lsn: next_lsn - 1,
                durable_lsn: next_lsn - 1,
                writing: false,
                syncing: false,
                parked: Vec::new(),
                flush_requested: false,
                sync_file: tail.as_ref().map(|t| (Arc::clone(&t.file), t.path.clone())),
                tail,
                spare: Vec::new(),
                stopped: None,
                closed: false,
                wakers: Vec::new(),
                rng,
            }),
            work: Condvar::new(),
            segments: Mutex::new(segments),
            preparer,
            trainer,
            dictionary: Mutex::new(dictionary),
            stats: AtomicStats::default(),
            poisoned: AtomicBool::new(false),
            truncation: Mutex::new(Pins::default()),
        }
    }

    /// A new log: its first segment exists (durably) before open returns.
    fn begin_first_segment(&self) -> Result<()> {
        let mut tail = None;
        let (salt, first_lsn) = {
            let mut st = self.lock();
            (st.rng.next_u64(), st.next_lsn)
        };
        let first = NewSegment {
            first_lsn,
            salt,
            dictionary: None,
        };
        self.rotate(&mut tail, &first)?;
        let mut st = self.lock();
        st.plan_salt = salt;
        st.plan_version = FORMAT_VERSION;
        st.plan_start = SEGMENT_HEADER_LEN as u64;
        st.plan_end = SEGMENT_HEADER_LEN as u64;
        st.sync_file = tail.as_ref().map(|t| (Arc::clone(&t.file), t.path.clone()));
        st.tail = tail;
        Ok(())
    }

    /// The state lock. Poisoned means a thread panicked while holding it,
    /// possibly mid-update: the log stops, as after a failed fsync
    /// (docs/DESIGN.md, rule 9). Every waiter and later append gets the
    /// error; reads of what is durable go on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut st = poisoned.into_inner();
            self.poison_stop(&mut st, "the log's state");
            st
        })
    }

    /// The segment list (same rule as [`lock`](Self::lock); the stop is
    /// recorded at the next append, which holds the state lock).
    fn segments(&self) -> MutexGuard<'_, Vec<(u64, PathBuf)>> {
        self.segments.lock().unwrap_or_else(|poisoned| {
            self.poisoned.store(true, Ordering::SeqCst);
            poisoned.into_inner()
        })
    }

    /// Stops the log because a lock was poisoned, unless it already stopped.
    fn poison_stop(&self, st: &mut State, what: &'static str) {
        if st.stopped.is_none() {
            tracing::error!(
                what,
                "a thread panicked holding a lock; write-ahead log stopped"
            );
            st.stopped = Some(Arc::new(StopCause {
                op: "a thread panicked while holding a lock of",
                path: self.dir.clone(),
                error: std::io::Error::other(format!("poisoned lock: {what}")),
            }));
        }
        self.publish(st);
    }

    fn stopped_error(&self, cause: &Arc<StopCause>) -> WalError {
        WalError::Stopped {
            dir: self.dir.clone(),
            cause: Arc::clone(cause),
        }
    }

    fn acked(&self, st: &State, lsn: u64) -> bool {
        match self.opts.sync {
            SyncPolicy::Always => st.durable_lsn >= lsn,
            SyncPolicy::Interval(_) | SyncPolicy::Never => st.written_lsn >= lsn,
        }
    }

    /// Checks a payload's size and compresses it if the options say so:
    /// the work of an append that needs no lock.
    fn prepare<'p>(&self, payload: &'p [u8]) -> Result<Prepared<'p>> {
        if payload.len() > self.opts.max_record_size as usize {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: self.opts.max_record_size,
            });
        }
        let codec = self.opts.compression;
        if codec == Compression::Zstd && payload.len() >= self.opts.compression_min_size {
            // May train the next dictionary (on this thread, no lock held).
            self.trainer.offer(payload);
        }
        let dictionary = self
            .dictionary
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Ok(self.compress(payload, dictionary.as_ref()))
    }

    /// `payload` as it will be stored: compressed with the log's codec (and
    /// with zstd, `dictionary` if given) when that pays, else as is.
    fn compress<'p>(
        &self,
        payload: &'p [u8],
        dictionary: Option<&Arc<ZstdDictionary>>,
    ) -> Prepared<'p> {
        // Invariant: max_record_size <= MAX_RECORD_LEN_LIMIT < u32::MAX.
        let raw_len = payload.len() as u32;
        let codec = self.opts.compression;
        if codec != Compression::None && payload.len() >= self.opts.compression_min_size {
            let mut out = Vec::new();
            let (ok, dictionary) = match dictionary {
                Some(d) if codec == Compression::Zstd => (
                    compression::compress_with_dictionary(d, payload, &mut out),
                    Some(Arc::clone(d)),
                ),
                _ => (compression::compress(codec, payload, &mut out), None),
            };
            if ok {
                return Prepared {
                    raw: payload,
                    stored: Cow::Owned(out),
                    compression: codec,
                    dictionary,
                    raw_len,
                };
            }
        }
        Prepared {
            raw: payload,
            stored: Cow::Borrowed(payload),
            compression: Compression::None,
            dictionary: None,
            raw_len,
        }
    }

    /// `rec`, compressed again if it used a dictionary other than
    /// `dictionary`, the one of the segment it is going into, or used none
    /// though the segment has one (it was compressed just before the
    /// segment's dictionary came in).
    fn fit<'a, 'p>(
        &self,
        rec: Cow<'a, Prepared<'p>>,
        dictionary: Option<&Arc<ZstdDictionary>>,
    ) -> Cow<'a, Prepared<'p>> {
        match (&rec.dictionary, dictionary) {
            (Some(used), Some(segment)) if Arc::ptr_eq(used, segment) => rec,
            (Some(_), _) => Cow::Owned(self.compress(rec.raw, dictionary)),
            (None, Some(_)) if rec.compression == Compression::Zstd => {
                Cow::Owned(self.compress(rec.raw, dictionary))
            }
            (None, _) => rec,
        }
    }

    /// Encodes a record into the pending batches and assigns its LSN and
    /// time.
    fn enqueue(&self, st: &mut State, rec: &Prepared<'_>) -> Result<u64> {
        if self.poisoned.load(Ordering::SeqCst) {
            self.poison_stop(st, "the segment list");
        }
        if let Some(cause) = &st.stopped {
            return Err(self.stopped_error(cause));
        }
        if st.closed {
            return Err(WalError::Closed);
        }
        let lsn = st.next_lsn;
        let rec = self.fit(Cow::Borrowed(rec), st.plan_dictionary.as_ref());
        let size = format::record_size(rec.stored.len()) as u64;
        let has_records = st.plan_end > st.plan_start;
        let full = has_records && st.plan_end + size > self.opts.segment_size;
        // The log's first dictionary is worth a new segment at once.
        let first_dictionary =
            has_records && st.plan_dictionary.is_none() && self.trainer.has_ready();
        // A segment of an older format (the tail after an upgrade) takes
        // no new record: a new segment begins, replacing it if it is empty.
        let rec = if full || first_dictionary || st.plan_version != FORMAT_VERSION {
            let salt = st.rng.next_u64();
            let dictionary = self.next_dictionary(st.plan_dictionary.take());
            st.plan_salt = salt;
            st.plan_version = FORMAT_VERSION;
            st.plan_start =
                format::records_start(dictionary.as_ref().map_or(0, |d| d.bytes().len())) as u64;
            st.plan_end = st.plan_start;
            st.plan_dictionary = dictionary.clone();
            *self
                .dictionary
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = dictionary.clone();
            st.pending.push(Batch {
                new_segment: Some(NewSegment {
                    first_lsn: lsn,
                    salt,
                    dictionary,
                }),
                bytes: Vec::new(),
            });
            self.fit(rec, st.plan_dictionary.as_ref())
        } else {
            if st.pending.is_empty() {
                let bytes = st
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(64 * 1024));
                st.pending.push(Batch {
                    new_segment: None,
                    bytes,
                });
            }
            rec
        };
        let size = format::record_size(rec.stored.len()) as u64;
        let salt = st.plan_salt;
        let time_us = self.opts.clock.now_us().max(st.last_time_us);
        st.last_time_us = time_us;
        let meta = RecordMeta {
            lsn,
            durable_lsn: st.durable_lsn,
            time_us,
            compression: rec.compression,
            dictionary: rec.dictionary.is_some(),
            raw_len: rec.raw_len,
        };
        // Invariant: both branches above leave a batch in `pending`.
        let batch = st.pending.last_mut().expect("a batch was just ensured");
        format::encode_record(&mut batch.bytes, salt, &meta, &rec.stored);
        st.plan_end += size;
        st.next_lsn += 1;
        self.stats.appends.fetch_add(1, Ordering::Relaxed);
        Ok(lsn)
    }

    /// The dictionary for a segment about to begin: a newly trained one,
    /// else `current`, the one of the segment before (while the log
    /// compresses with zstd).
    fn next_dictionary(&self, current: Option<Arc<ZstdDictionary>>) -> Option<Arc<ZstdDictionary>> {
        if !uses_dictionaries(&self.opts) {
            return None;
        }
        self.trainer
            .next_segment()
            .or(current)
            .filter(|d| dictionary_fits(&self.opts, d.bytes().len()))
    }

    /// Works until record `lsn` is acknowledged (written, or with `durable`
    /// fdatasynced): writes what is pending if nobody is writing, syncs what
    /// is written if nobody is syncing, and otherwise waits. Writing and
    /// syncing are separate roles, so records are written while an fdatasync
    /// runs and the next fdatasync covers all of them.
    fn drive<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        lsn: u64,
        durable: bool,
    ) -> Result<MutexGuard<'a, State>> {
        loop {
            let done = if durable {
                st.durable_lsn >= lsn
            } else {
                st.written_lsn >= lsn
            };
            if done {
                return Ok(st);
            }
            if let Some(cause) = &st.stopped {
                return Err(self.stopped_error(cause));
            }
            if !st.writing && !st.pending.is_empty() {
                st = self.write_pending(st);
                continue;
            }
            if durable && !st.syncing && st.written_lsn > st.durable_lsn && st.written_lsn >= lsn {
                st = self.sync_rounds(st);
                continue;
            }
            if st.closed && st.pending.is_empty() && !st.writing && !st.syncing {
                return Err(WalError::Closed);
            }
            let me = std::thread::current();
            let id = me.id();
            st.parked.push(Parked {
                lsn,
                durable,
                thread: me,
            });
            drop(st);
            std::thread::park();
            st = self.lock();
            // Woken or not (park may return spuriously), leave the list; the
            // loop re-checks and parks again if needed.
            st.parked.retain(|p| p.thread.id() != id);
        }
    }

    /// Writes everything pending, and whatever arrives meanwhile, as the
    /// writer. Called with the lock held and no writer; returns with it held.
    fn write_pending<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.writing = true;
        st.flush_requested = false;
        while !st.pending.is_empty() && st.stopped.is_none() {
            let batches = std::mem::take(&mut st.pending);
            let last = st.next_lsn - 1;
            let mut tail = st.tail.take();
            drop(st);
            let result = self.write_batches(&mut tail, batches);
            st = self.lock();
            match result {
                Ok(mut buffers) => {
                    st.written_lsn = last;
                    st.sync_file = tail.as_ref().map(|t| (Arc::clone(&t.file), t.path.clone()));
                    while st.spare.len() < SPARE_BUFFERS {
                        match buffers.pop() {
                            Some(b) => st.spare.push(b),
                            None => break,
                        }
                    }
                }
                Err(cause) => st.stopped = Some(cause),
            }
            st.tail = tail;
        }
        st.writing = false;
        self.publish(&mut st);
        st
    }

    /// fdatasyncs what is written, as the syncer; when more was written
    /// during a sync, syncs again without handing over (up to
    /// [`MAX_SYNC_ROUNDS`]), so no thread has to be woken to carry on.
    fn sync_rounds<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.syncing = true;
        for _ in 0..MAX_SYNC_ROUNDS {
            let target = st.written_lsn;
            let Some((file, path)) = st.sync_file.clone() else {
                break;
            };
            drop(st);
            let result = self.sync_file(&*file, &path);
            st = self.lock();
            match result {
                Ok(()) => {
                    let covered = target.saturating_sub(st.durable_lsn);
                    metrics::histogram!("keel_wal_records_per_fsync").record(covered as f64);
                    st.durable_lsn = st.durable_lsn.max(target);
                }
                Err(cause) => {
                    st.stopped = Some(cause);
                    break;
                }
            }
            self.publish(&mut st);
            if st.written_lsn <= st.durable_lsn {
                break;
            }
        }
        st.syncing = false;
        // Whoever waits for the rest must learn that nobody is syncing now.
        self.publish(&mut st);
        st
    }

    /// Wakes the parked threads and async appenders whose records are now
    /// acknowledged, and one more to take over syncing if records are
    /// written but nobody is syncing them.
    fn publish(&self, st: &mut State) {
        if !st.parked.is_empty() {
            let all = st.stopped.is_some() || st.closed;
            let (written, durable) = (st.written_lsn, st.durable_lsn);
            st.parked.retain(|p| {
                let ready = all
                    || if p.durable {
                        durable >= p.lsn
                    } else {
                        written >= p.lsn
                    };
                if ready {
                    p.thread.unpark();
                }
                !ready
            });
            let needs_syncer = !st.syncing && written > durable;
            let needs_writer = !st.writing && !st.pending.is_empty();
            if needs_syncer || needs_writer {
                if let Some(p) = st.parked.iter().find(|p| p.durable || needs_writer) {
                    p.thread.unpark();
                }
            }
        }
        if !st.wakers.is_empty() {
            let stopped = st.stopped.is_some();
            let acked_to = match self.opts.sync {
                SyncPolicy::Always => st.durable_lsn,
                _ => st.written_lsn,
            };
            st.wakers.retain(|(lsn, waker)| {
                let ready = stopped || *lsn <= acked_to;
                if ready {
                    waker.wake_by_ref();
                }
                !ready
            });
            if !st.wakers.is_empty() {
                st.flush_requested = true;
                self.work.notify_one();
            }
        }
    }

    fn stop(&self, op: &'static str, path: &Path, err: &WalError) {
        let mut st = self.lock();
        if st.stopped.is_none() {
            st.stopped = Some(Arc::new(StopCause {
                op,
                path: path.to_path_buf(),
                error: std::io::Error::other(err.to_string()),
            }));
        }
        self.publish(&mut st);
    }

    fn write_batches(
        &self,
        tail: &mut Option<Tail>,
        batches: Vec<Batch>,
    ) -> std::result::Result<Vec<Vec<u8>>, Arc<StopCause>> {
        let fail = |op, path: &Path, error| {
            tracing::error!(op, path = %path.display(), %error, "write-ahead log stopped");
            Arc::new(StopCause {
                op,
                path: path.to_path_buf(),
                error,
            })
        };
        let mut buffers = Vec::with_capacity(batches.len());
        for mut batch in batches {
            if let Some(new) = &batch.new_segment {
                self.rotate(tail, new).map_err(|e| match e {
                    WalError::Io { op, path, source } => fail(op, &path, source),
                    other => fail(
                        "rotating segments",
                        &self.dir,
                        std::io::Error::other(other.to_string()),
                    ),
                })?;
            }
            if !batch.bytes.is_empty() {
                // Invariant: open creates the first segment before any
                // append, and rotation only ever replaces the tail.
                let t = tail.as_mut().expect("a tail segment exists after open");
                t.file
                    .write_at(&batch.bytes, t.end)
                    .map_err(|e| fail("writing records", &t.path, e))?;
                t.end += batch.bytes.len() as u64;
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_written
                    .fetch_add(batch.bytes.len() as u64, Ordering::Relaxed);
            }
            batch.bytes.clear();
            buffers.push(batch.bytes);
        }
        Ok(buffers)
    }

    fn sync_file(
        &self,
        file: &dyn StorageFile,
        path: &Path,
    ) -> std::result::Result<(), Arc<StopCause>> {
        let started = Instant::now();
        // fdatasync: the records (and the file length, if it grew) must be on
        // disk before any append they carry is acknowledged. Never retried:
        // a failure stops the log.
        if let Err(error) = file.sync_data() {
            tracing::error!(path = %path.display(), %error, "fdatasync failed; write-ahead log stopped");
            return Err(Arc::new(StopCause {
                op: "fdatasync",
                path: path.to_path_buf(),
                error,
            }));
        }
        let elapsed = started.elapsed();
        let nanos = elapsed.as_nanos() as u64;
        // Facade only: free unless the application installs a recorder.
        metrics::histogram!("keel_wal_fsync_seconds").record(elapsed.as_secs_f64());
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.stats
            .max_sync_nanos
            .fetch_max(nanos, Ordering::Relaxed);
        if nanos > 1_000_000_000 {
            tracing::warn!(ms = nanos / 1_000_000, "fdatasync took over a second");
        }
        Ok(())
    }

    /// Closes the current segment and begins `new`.
    fn rotate(&self, tail: &mut Option<Tail>, new: &NewSegment) -> Result<()> {
        let first_lsn = new.first_lsn;
        if let Some(t) = tail.as_ref() {
            // The old segment must be wholly durable before any record of the
            // new one can be: only the last segment may hold a tear.
            t.file
                .sync_data()
                .map_err(|e| WalError::io("fdatasync", &t.path, e))?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        let prepared = self.preparer.take()?;
        let header = SegmentHeader::new(self.log_id, first_lsn, new.salt);
        let preamble = match &new.dictionary {
            Some(d) => header
                .with_dictionary(d.bytes())
                .encode_with_dictionary(d.bytes()),
            None => header.encode().to_vec(),
        };
        prepared
            .file
            .write_at(&preamble, 0)
            .map_err(|e| WalError::io("writing a segment header", &prepared.path, e))?;
        // Header fdatasynced, then renamed, then the directory fsynced: a
        // file named as a segment always has a durable header, and the new
        // name is durable before any record in it is acknowledged. The
        // rename replaces an empty segment of an older format that began
        // at the same LSN (atomically: a crash leaves one or the other,
        // neither holding a record).
        let path = self.dir.join(segment_file_name(first_lsn));
        keel_storage::publish_temp(&*self.storage, &*prepared.file, &prepared.path, &path)?;
        {
            let mut segs = self.segments();
            if segs.last().is_some_and(|s| s.0 == first_lsn) {
                segs.pop();
            }
            segs.push((first_lsn, path.clone()));
        }
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_written
            .fetch_add(preamble.len() as u64, Ordering::Relaxed);
        *tail = Some(Tail {
            path,
            file: prepared.file,
            end: preamble.len() as u64,
        });
        Ok(())
    }

    /// The background thread: writes (and under `Always` syncs) for async
    /// appenders, and syncs on the interval of `SyncPolicy::Interval`.
    fn flusher_loop(&self) {
        let interval = match self.opts.sync {
            SyncPolicy::Interval(d) => Some(d),
            _ => None,
        };
        let durable = self.opts.sync == SyncPolicy::Always;
        let mut next_sync = interval.map(|d| Instant::now() + d);
        let mut st = self.lock();
        loop {
            if st.closed || st.stopped.is_some() {
                self.publish(&mut st);
                return;
            }
            if st.flush_requested && !st.pending.is_empty() || !st.wakers.is_empty() {
                st.flush_requested = false;
                let target = st.next_lsn - 1;
                st = match self.drive(st, target, durable) {
                    Ok(st) => st,
                    Err(_) => self.lock(),
                };
                continue;
            }
            st.flush_requested = false;
            if next_sync.is_some_and(|t| Instant::now() >= t) {
                let target = st.written_lsn;
                if st.durable_lsn < target {
                    st = match self.drive(st, target, true) {
                        Ok(st) => st,
                        Err(_) => self.lock(),
                    };
                }
                next_sync = interval.map(|d| Instant::now() + d);
                continue;
            }
            let wait = next_sync.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            st = match self.work.wait_timeout(st, wait) {
                Ok((st, _)) => st,
                Err(poisoned) => {
                    let mut st = poisoned.into_inner().0;
                    self.poison_stop(&mut st, "the log's state");
                    st
                }
            };
        }
    }
}

/// The future returned by [`Wal::append_async`].
pub struct AppendFuture {
    inner: Arc<Inner>,
    state: std::result::Result<u64, Option<WalError>>,
}

impl Future for AppendFuture {
    type Output = Result<u64>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let lsn = match &mut this.state {
            Ok(lsn) => *lsn,
            Err(e) => return Poll::Ready(Err(e.take().unwrap_or(WalError::Closed))),
        };
        let inner = &*this.inner;
        let mut st = inner.lock();
        if inner.acked(&st, lsn) {
            return Poll::Ready(Ok(lsn));
        }
        if let Some(cause) = &st.stopped {
            return Poll::Ready(Err(inner.stopped_error(cause)));
        }
        if st.closed {
            return Poll::Ready(Err(WalError::Closed));
        }
        st.wakers.push((lsn, cx.waker().clone()));
        st.flush_requested = true;
        inner.work.notify_one();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::SimStorage;

    #[test]
    fn a_poisoned_lock_stops_the_log_and_reads_go_on() {
        let s = SimStorage::new(5);
        let (wal, _) = Wal::open(Arc::new(s), "/w", WalOptions::default()).unwrap();
        wal.append(b"before").unwrap();
        let inner = Arc::clone(&wal.inner);
        let _ = std::thread::spawn(move || {
            let _held = inner.state.lock();
            panic!("a bug while holding the state lock");
        })
        .join();
        let err = wal.append(b"after").unwrap_err();
        assert!(err.is_stopped(), "{err}");
        assert!(err.to_string().contains("poisoned lock"), "{err}");
        let mut seen = Vec::new();
        wal.read_from(1, |r| seen.push((r.lsn, r.payload.to_vec())))
            .unwrap();
        assert_eq!(seen, vec![(1, b"before".to_vec())]);
    }

    #[test]
    fn a_poisoned_segment_list_stops_the_next_append() {
        let s = SimStorage::new(6);
        let (wal, _) = Wal::open(Arc::new(s), "/w", WalOptions::default()).unwrap();
        let inner = Arc::clone(&wal.inner);
        let _ = std::thread::spawn(move || {
            let _held = inner.segments.lock();
            panic!("a bug while holding the segment list");
        })
        .join();
        assert_eq!(wal.segment_paths().len(), 1, "reads of the list go on");
        assert!(wal.append(b"x").unwrap_err().is_stopped());
    }
}
