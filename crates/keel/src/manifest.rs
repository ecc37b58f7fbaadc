//! The manifest: which tables are live, at which level, and where the
//! write-ahead log must start (issue 12). It is a log of [`VersionEdit`]s
//! kept in its own keel-wal log (`manifest/` in the data directory), so it
//! has the log's checksums, torn-tail rules and fail-stop for free.
//!
//! Invariants:
//! - An edit is durable (fdatasynced) before [`Manifest::apply`] returns,
//!   and the in-memory state changes only then: a caller deletes a table an
//!   edit removed, or log segments below its `log_start`, only after that.
//! - An edit changes the live tables and the log start together, in one
//!   record: after a crash the manifest holds all of it or none.
//! - Every edit is checked against the state before it is written (a table
//!   removed must be live, a table added must be new, tables of a level
//!   above 0 must not overlap); a log that breaks these is refused at open.
//! - Every edit is followed by an empty record written after the edit's
//!   fdatasync: its `durable_lsn` proves the edit durable, so damage to an
//!   edit is corruption (the open refuses) rather than a torn tail (cut).
//! - When the log of edits has grown by [`REWRITE_AFTER`] bytes, a snapshot
//!   edit (the whole state) is appended and the segments before it are
//!   deleted. Replay starts at the last snapshot, so the log may begin with
//!   edits that one covers.

use crate::metadata::Metadata;
use crate::table::Properties;
use keel_storage::Storage;
use keel_wal::{Wal, WalError, WalOptions};
use std::path::Path;
use std::sync::Arc;

/// Levels of the tree: L0 (flushed memtables, may overlap) and L1..L6.
pub const LEVELS: usize = 7;
/// Bytes of edits after which the manifest is rewritten as one snapshot.
pub const REWRITE_AFTER: u64 = 256 << 10;
/// Segment size of the manifest's log: small, since edits are small.
const SEGMENT_SIZE: u64 = 1 << 20;

/// The live key count of a store that keeps none (a flush by a store
/// opened with `Options::exact_key_count` off): an exact open counts its
/// keys by reading every table.
pub const KEYS_NOT_COUNTED: u64 = u64::MAX;

/// A live table as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// Level, 0..[`LEVELS`].
    pub level: u8,
    /// The table's number (its file name); unique for the store's life.
    pub number: u64,
    /// File length in bytes.
    pub size: u64,
    /// Entries (puts and tombstones).
    pub entries: u64,
    /// LSN range of the writes it holds.
    pub min_lsn: u64,
    /// See `min_lsn`.
    pub max_lsn: u64,
    /// Its first key.
    pub smallest: Vec<u8>,
    /// Its last key.
    pub largest: Vec<u8>,
}

impl TableMeta {
    /// The record of table `number` at `level`, from its properties.
    pub fn new(level: u8, number: u64, size: u64, p: &Properties) -> TableMeta {
        TableMeta {
            level,
            number,
            size,
            entries: p.entries,
            min_lsn: p.min_lsn,
            max_lsn: p.max_lsn,
            smallest: p.smallest.clone(),
            largest: p.largest.clone(),
        }
    }

    fn overlaps(&self, other: &TableMeta) -> bool {
        self.smallest <= other.largest && other.smallest <= self.largest
    }
}

/// One change to the set of live tables. Encoded as a sequence of tagged
/// fields (docs/FORMAT.md, "Manifest"), so later versions can add fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// This edit is the whole state: everything before it is replaced.
    pub snapshot: bool,
    /// Records below this LSN are in tables: the log may drop them.
    pub log_start: Option<u64>,
    /// The next table number to hand out.
    pub next_table: Option<u64>,
    /// Keys live in the store as of `log_start` (the engine keeps an exact
    /// count; recovery resumes it from here and replays the log).
    pub live_keys: Option<u64>,
    /// Tables no longer live: (level, number).
    pub removed: Vec<(u8, u64)>,
    /// Tables now live.
    pub added: Vec<TableMeta>,
    /// Application metadata (`crate::metadata`) set as of `log_start`: the
    /// values set by the records the edit moves the log start past.
    pub metadata: Metadata,
}

impl std::fmt::Display for VersionEdit {
    /// One line: `snapshot; log start N; next table N; -L0/3; +L1/8 (keys a..m, 3 entries, 100 bytes)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.snapshot {
            parts.push("snapshot".to_string());
        }
        if let Some(l) = self.log_start {
            parts.push(format!("log start {l}"));
        }
        if let Some(n) = self.next_table {
            parts.push(format!("next table {n}"));
        }
        match self.live_keys {
            Some(KEYS_NOT_COUNTED) => parts.push("live keys not counted".into()),
            Some(n) => parts.push(format!("{n} live keys")),
            None => {}
        }
        for (level, number) in &self.removed {
            parts.push(format!("-L{level}/{number}"));
        }
        for t in &self.added {
            parts.push(format!(
                "+L{}/{} (keys {}..{}, {} entries, {} bytes)",
                t.level,
                t.number,
                crate::op::preview(&t.smallest),
                crate::op::preview(&t.largest),
                t.entries,
                t.size
            ));
        }
        if !self.metadata.is_empty() {
            parts.push(format!(
                "metadata {}",
                crate::metadata::describe(&self.metadata)
            ));
        }
        if parts.is_empty() {
            return f.write_str("no change (proves the edit before it durable)");
        }
        f.write_str(&parts.join("; "))
    }
}

const TAG_SNAPSHOT: u8 = 1;
const TAG_LOG_START: u8 = 2;
const TAG_NEXT_TABLE: u8 = 3;
const TAG_REMOVED: u8 = 4;
const TAG_ADDED: u8 = 5;
const TAG_LIVE_KEYS: u8 = 6;
const TAG_METADATA: u8 = 7;

/// Why a manifest record cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EditError(pub String);

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EditError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| EditError("a field runs past the record".into()))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, EditError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, EditError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, EditError> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4")) as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl VersionEdit {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        if self.snapshot {
            b.push(TAG_SNAPSHOT);
        }
        if let Some(l) = self.log_start {
            b.push(TAG_LOG_START);
            b.extend_from_slice(&l.to_le_bytes());
        }
        if let Some(n) = self.next_table {
            b.push(TAG_NEXT_TABLE);
            b.extend_from_slice(&n.to_le_bytes());
        }
        if let Some(n) = self.live_keys {
            b.push(TAG_LIVE_KEYS);
            b.extend_from_slice(&n.to_le_bytes());
        }
        for (level, number) in &self.removed {
            b.push(TAG_REMOVED);
            b.push(*level);
            b.extend_from_slice(&number.to_le_bytes());
        }
        for t in &self.added {
            b.push(TAG_ADDED);
            b.push(t.level);
            for v in [t.number, t.size, t.entries, t.min_lsn, t.max_lsn] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            for k in [&t.smallest, &t.largest] {
                b.extend_from_slice(&(k.len() as u32).to_le_bytes());
                b.extend_from_slice(k);
            }
        }
        for entry in &self.metadata {
            b.push(TAG_METADATA);
            crate::metadata::encode_into(&mut b, [entry]);
        }
        b
    }

    /// The edit in `b`; an unknown tag or a field cut short is an error.
    pub fn decode(b: &[u8]) -> Result<VersionEdit, EditError> {
        let mut r = Reader { b, pos: 0 };
        let mut e = VersionEdit::default();
        while r.pos < b.len() {
            match r.u8()? {
                TAG_SNAPSHOT if !e.snapshot && r.pos == 1 => e.snapshot = true,
                TAG_LOG_START if e.log_start.is_none() => e.log_start = Some(r.u64()?),
                TAG_NEXT_TABLE if e.next_table.is_none() => e.next_table = Some(r.u64()?),
                TAG_LIVE_KEYS if e.live_keys.is_none() => e.live_keys = Some(r.u64()?),
                TAG_REMOVED => e.removed.push((r.u8()?, r.u64()?)),
                TAG_ADDED => e.added.push(TableMeta {
                    level: r.u8()?,
                    number: r.u64()?,
                    size: r.u64()?,
                    entries: r.u64()?,
                    min_lsn: r.u64()?,
                    max_lsn: r.u64()?,
                    smallest: r.bytes()?,
                    largest: r.bytes()?,
                }),
                TAG_METADATA => {
                    let (name, value) = crate::metadata::decode_entry(r.b, &mut r.pos)
                        .map_err(|e| EditError(e.to_string()))?;
                    if e.metadata.contains_key(&name) {
                        return Err(EditError(format!(
                            "the metadata name \"{}\" is set twice",
                            crate::op::preview(&name)
                        )));
                    }
                    e.metadata.insert(name, value);
                }
                t => return Err(EditError(format!("unknown or repeated field tag {t}"))),
            }
        }
        Ok(e)
    }
}

/// The live tables and the log start, as the edits so far make them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionState {
    /// Tables per level: L0 newest first (by max LSN); L1.. in key order.
    pub levels: Vec<Vec<TableMeta>>,
    /// The log is needed from this LSN on.
    pub log_start: u64,
    /// The next table number to hand out.
    pub next_table: u64,
    /// Keys live as of `log_start`.
    pub live_keys: u64,
    /// Application metadata as of `log_start`.
    pub metadata: Metadata,
}

impl Default for VersionState {
    fn default() -> Self {
        VersionState {
            levels: vec![Vec::new(); LEVELS],
            log_start: 1,
            next_table: 1,
            live_keys: 0,
            metadata: Metadata::new(),
        }
    }
}

impl VersionState {
    /// The state after `edit`, or why the edit cannot apply.
    pub fn apply(&self, edit: &VersionEdit) -> Result<VersionState, EditError> {
        let mut s = if edit.snapshot {
            VersionState::default()
        } else {
            self.clone()
        };
        if let Some(l) = edit.log_start {
            if l < s.log_start && !edit.snapshot {
                return Err(EditError(format!(
                    "the log start moves back from {} to {l}",
                    s.log_start
                )));
            }
            s.log_start = l;
        }
        if let Some(n) = edit.next_table {
            if n < s.next_table && !edit.snapshot {
                return Err(EditError("the next table number moves back".into()));
            }
            s.next_table = n;
        }
        if let Some(n) = edit.live_keys {
            s.live_keys = n;
        }
        crate::metadata::set_all(&mut s.metadata, &edit.metadata);
        if s.metadata.len() > crate::metadata::MAX_NAMES {
            return Err(EditError(format!(
                "{} metadata names, more than the {} allowed",
                s.metadata.len(),
                crate::metadata::MAX_NAMES
            )));
        }
        for &(level, number) in &edit.removed {
            let tables = s
                .levels
                .get_mut(level as usize)
                .ok_or_else(|| EditError(format!("level {level} does not exist")))?;
            let at = tables
                .iter()
                .position(|t| t.number == number)
                .ok_or_else(|| EditError(format!("table {number} is not live at level {level}")))?;
            tables.remove(at);
        }
        for t in &edit.added {
            if t.level as usize >= LEVELS {
                return Err(EditError(format!("level {} does not exist", t.level)));
            }
            if t.number >= s.next_table || s.live().any(|l| l.number == t.number) {
                return Err(EditError(format!(
                    "table {} is not new (next table number {})",
                    t.number, s.next_table
                )));
            }
            if t.smallest > t.largest || t.min_lsn > t.max_lsn {
                return Err(EditError(format!(
                    "table {} has an inverted range",
                    t.number
                )));
            }
            let level = &mut s.levels[t.level as usize];
            if t.level > 0 && level.iter().any(|o| o.overlaps(t)) {
                return Err(EditError(format!(
                    "table {} overlaps another at level {}",
                    t.number, t.level
                )));
            }
            level.push(t.clone());
        }
        // Newest first by the writes they hold: a flush's table is newer
        // than every L0 table before it, and a table `keel repair` rewrote
        // keeps its LSN range (and its place) under a new number.
        s.levels[0].sort_by_key(|t| std::cmp::Reverse((t.max_lsn, t.number)));
        for level in &mut s.levels[1..] {
            level.sort_by(|a, b| a.smallest.cmp(&b.smallest));
        }
        Ok(s)
    }

    /// Every live table.
    pub fn live(&self) -> impl Iterator<Item = &TableMeta> {
        self.levels.iter().flatten()
    }

    /// The edit that recreates this state from nothing.
    pub fn snapshot(&self) -> VersionEdit {
        VersionEdit {
            snapshot: true,
            log_start: Some(self.log_start),
            next_table: Some(self.next_table),
            live_keys: Some(self.live_keys),
            removed: Vec::new(),
            added: self.live().cloned().collect(),
            metadata: self.metadata.clone(),
        }
    }
}

/// Why the manifest cannot be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Its log failed (I/O, damage, or stopped after a failed fsync).
    #[error("the manifest's log: {0}")]
    Wal(#[from] WalError),
    /// A record does not decode, or does not apply to the state before it.
    #[error("the manifest record at LSN {lsn} is invalid: {why}; the manifest cannot be trusted")]
    BadEdit {
        /// The record.
        lsn: u64,
        /// What is wrong.
        why: EditError,
    },
    /// An edit offered to [`Manifest::apply`] does not apply (a bug in
    /// the caller): nothing was written.
    #[error("refused a manifest edit: {0}")]
    Refused(EditError),
}

/// The open manifest of a store.
pub struct Manifest {
    wal: Wal,
    state: VersionState,
    /// Bytes of edits appended since the last snapshot.
    since_snapshot: u64,
}

impl Manifest {
    /// Opens (or creates) the manifest in `dir` and replays it from its
    /// last snapshot.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<Manifest, ManifestError> {
        Manifest::open_with(storage, dir, SEGMENT_SIZE)
    }

    /// [`open`](Self::open) with another segment size (tests use small
    /// ones, so rewrites delete segments).
    fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        segment_size: u64,
    ) -> Result<Manifest, ManifestError> {
        let opts = WalOptions {
            segment_size,
            ..WalOptions::default()
        };
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let (wal, _report) = Wal::open_with_replay(storage, dir, opts, 1, |record| {
            records.push((record.lsn, record.payload.to_vec()));
        })?;
        let edits = records
            .into_iter()
            .map(|(lsn, p)| {
                VersionEdit::decode(&p)
                    .map(|e| (lsn, p.len() as u64, e))
                    .map_err(|why| ManifestError::BadEdit { lsn, why })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The log may begin with edits an early snapshot covers (segments
        // before it were deleted whole): state starts at the last snapshot.
        let start = edits.iter().rposition(|(_, _, e)| e.snapshot);
        let mut state = VersionState::default();
        let mut since_snapshot = 0;
        if let Some(start) = start {
            for (lsn, len, e) in &edits[start..] {
                state = state
                    .apply(e)
                    .map_err(|why| ManifestError::BadEdit { lsn: *lsn, why })?;
                since_snapshot += len;
            }
        } else if let Some((lsn, _, _)) = edits.first() {
            return Err(ManifestError::BadEdit {
                lsn: *lsn,
                why: EditError("the manifest holds no snapshot".into()),
            });
        }
        let mut m = Manifest {
            wal,
            state,
            since_snapshot,
        };
        if start.is_none() {
            // A new manifest begins with a snapshot of the empty state.
            m.append(&m.state.snapshot())?;
        }
        Ok(m)
    }

    /// The state after every edit applied.
    pub fn state(&self) -> &VersionState {
        &self.state
    }

    /// Checks `edit` against the state, appends it durably, then makes it
    /// the state; rewrites the manifest when it has grown.
    pub fn apply(&mut self, edit: &VersionEdit) -> Result<(), ManifestError> {
        let next = self.state.apply(edit).map_err(ManifestError::Refused)?;
        self.append(edit)?;
        self.state = next;
        if self.since_snapshot >= REWRITE_AFTER {
            self.rewrite()?;
        }
        Ok(())
    }

    fn append(&mut self, edit: &VersionEdit) -> Result<u64, ManifestError> {
        let bytes = edit.encode();
        // Durable before the caller acts on it (SyncPolicy::Always).
        let lsn = self.wal.append(&bytes)?;
        // Then an empty record (an edit that changes nothing), written after
        // that fdatasync, so its durable_lsn proves the edit was synced: a
        // damaged edit is then corruption, refused at open, never a torn
        // tail quietly cut, which would undo an edit the caller has acted
        // on (deleted the log below its log start, or a table it removed).
        self.wal.append(&[])?;
        if edit.snapshot {
            self.since_snapshot = 0;
        }
        self.since_snapshot += bytes.len() as u64;
        Ok(lsn)
    }

    /// Appends a snapshot of the state, then deletes the log's segments
    /// before it (the snapshot replaces them).
    pub fn rewrite(&mut self) -> Result<(), ManifestError> {
        let lsn = self.append(&self.state.snapshot())?;
        self.wal.truncate_before(lsn)?;
        Ok(())
    }

    /// Syncs and closes the manifest's log.
    pub fn close(self) -> Result<(), ManifestError> {
        Ok(self.wal.close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::rng::SplitMix64;
    use keel_storage::{CrashMode, Fault, FaultKind, FaultOp, SimStorage};

    fn table(level: u8, number: u64, lo: &str, hi: &str) -> TableMeta {
        TableMeta {
            level,
            number,
            size: 100 + number,
            entries: 3,
            min_lsn: number * 10,
            max_lsn: number * 10 + 5,
            smallest: lo.as_bytes().to_vec(),
            largest: hi.as_bytes().to_vec(),
        }
    }

    #[test]
    fn edits_round_trip_and_bad_bytes_are_errors() {
        let e = VersionEdit {
            snapshot: false,
            log_start: Some(42),
            next_table: Some(9),
            live_keys: Some(77),
            removed: vec![(0, 3), (1, 4)],
            added: vec![table(1, 8, "a", "m")],
            metadata: Metadata::from([(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())]),
        };
        assert_eq!(VersionEdit::decode(&e.encode()), Ok(e.clone()));
        // A name set twice in one edit is refused.
        let mut twice = e.encode();
        twice.extend_from_slice(&[TAG_METADATA, 1, b'a', 0, 0, 0, 0]);
        assert!(VersionEdit::decode(&twice).is_err());
        let bytes = e.encode();
        for cut in 1..bytes.len() {
            // A cut may land between fields and decode as a shorter edit;
            // it never panics.
            let _ = VersionEdit::decode(&bytes[..cut]);
        }
        assert!(VersionEdit::decode(&[99]).is_err());
        assert!(VersionEdit::decode(&[TAG_LOG_START, 1, 0]).is_err());
        assert!(
            VersionEdit::decode(&[TAG_REMOVED, 0, 1, 0, 0, 0, 0, 0, 0, 0, TAG_SNAPSHOT]).is_err()
        );
    }

    #[test]
    fn damage_to_any_edit_is_refused_never_cut() {
        // Flip every byte of a small manifest's records, one at a time: the
        // open either refuses or finds every edit (damage to the trailing
        // empty record is a torn tail, and cutting it changes nothing).
        let s = Arc::new(SimStorage::new(5));
        let dir = Path::new("/m");
        let mut m = Manifest::open(s.clone(), dir).unwrap();
        let mut rng = SplitMix64::new(5);
        for _ in 0..4 {
            let e = random_edit(m.state(), &mut rng);
            m.apply(&e).unwrap();
        }
        let want = m.state().clone();
        let written = m.wal.next_lsn();
        m.close().unwrap();
        let names = s.list(dir).unwrap();
        let segs: Vec<&String> = names.iter().filter(|n| n.ends_with(".wal")).collect();
        assert_eq!(segs.len(), 1, "{names:?}");
        let seg = dir.join(segs[0]);
        let good = s.read_file(&seg).unwrap();
        // Records end where the preallocated zeros begin.
        let end = good.iter().rposition(|&b| b != 0).unwrap() + 1;
        let (mut refused, mut same) = (0, 0);
        for at in 48..end {
            let copy = Arc::new(SimStorage::new(1));
            keel_storage::create_dir_durable(&*copy, dir).unwrap();
            copy.open(&seg, keel_storage::OpenMode::CreateNew).unwrap();
            copy.sync_dir(dir).unwrap();
            let mut bytes = good.clone();
            bytes[at] ^= 0x40;
            copy.write_file_durably(&seg, &bytes).unwrap();
            match Manifest::open(copy, dir) {
                Err(_) => refused += 1,
                Ok(m) => {
                    assert_eq!(*m.state(), want, "byte {at}: an edit was lost");
                    same += 1;
                }
            }
        }
        assert!(written > 8 && refused > 0 && same > 0, "{refused} {same}");
    }

    #[test]
    fn edits_that_break_the_invariants_are_refused() {
        let s = VersionState::default();
        let add = |t: TableMeta| VersionEdit {
            next_table: Some(100),
            added: vec![t],
            ..VersionEdit::default()
        };
        let s = s.apply(&add(table(1, 1, "a", "f"))).unwrap();
        assert!(
            s.apply(&add(table(1, 2, "e", "k"))).is_err(),
            "overlap at L1"
        );
        assert!(
            s.apply(&add(table(0, 1, "x", "y"))).is_err(),
            "number reused"
        );
        assert!(s.apply(&add(table(7, 3, "x", "y"))).is_err(), "no level 7");
        assert!(
            s.apply(&add(table(0, 3, "z", "a"))).is_err(),
            "inverted range"
        );
        let s = s.apply(&add(table(0, 2, "e", "k"))).unwrap();
        let s = s.apply(&add(table(0, 3, "e", "k"))).unwrap();
        assert_eq!(
            s.levels[0].iter().map(|t| t.number).collect::<Vec<_>>(),
            [3, 2],
            "L0 newest first"
        );
        let remove = |level, number| VersionEdit {
            removed: vec![(level, number)],
            ..VersionEdit::default()
        };
        // A table rewritten by repair: a new number, the LSN range of the
        // table 2 it replaces, so older than table 3 (its place kept).
        let rewritten = TableMeta {
            number: 9,
            ..table(0, 2, "e", "k")
        };
        let r = s
            .apply(&VersionEdit {
                removed: vec![(0, 2)],
                added: vec![rewritten],
                ..VersionEdit::default()
            })
            .unwrap();
        assert_eq!(
            r.levels[0].iter().map(|t| t.number).collect::<Vec<_>>(),
            [3, 9],
            "L0 ordered by the writes its tables hold"
        );
        assert!(s.apply(&remove(1, 2)).is_err(), "not at that level");
        assert!(s.apply(&remove(0, 2)).is_ok());
        let back = VersionEdit {
            log_start: Some(0),
            ..VersionEdit::default()
        };
        let s2 = s
            .apply(&VersionEdit {
                log_start: Some(50),
                ..VersionEdit::default()
            })
            .unwrap();
        assert!(s2.apply(&back).is_err(), "the log start never moves back");
        assert_eq!(s.apply(&s.snapshot()).unwrap(), s);
    }

    /// Small segments, so rewrites delete some.
    const SMALL_SEGMENTS: u64 = 4096;
    const FIRST_SEGMENT: &str = "00000000000000000001.wal";

    /// A random edit that applies to `s`.
    fn random_edit(s: &VersionState, rng: &mut SplitMix64) -> VersionEdit {
        let mut e = VersionEdit {
            log_start: Some(s.log_start + rng.below(5)),
            next_table: Some(s.next_table + 2),
            live_keys: rng.chance(1, 2).then(|| rng.below(1000)),
            ..VersionEdit::default()
        };
        if rng.chance(1, 2) {
            let name = format!("m{}", rng.below(3)).into_bytes();
            e.metadata
                .insert(name, rng.below(1000).to_le_bytes().to_vec());
        }
        let live: Vec<&TableMeta> = s.live().collect();
        if live.len() > 8 || (!live.is_empty() && rng.below(3) == 0) {
            let t = live[rng.below(live.len() as u64) as usize];
            e.removed.push((t.level, t.number));
        }
        // L0 takes anything; one new L1 table past every other key.
        e.added.push(table(0, s.next_table, "k", "q"));
        let top = s.levels[1].last().map_or(0, |t| t.number);
        let key = format!("{:08}", top + s.next_table + 1);
        e.added.push(TableMeta {
            smallest: format!("z{key}").into_bytes(),
            largest: format!("z{key}~").into_bytes(),
            ..table(1, s.next_table + 1, "", "")
        });
        e
    }

    #[test]
    fn a_crash_at_any_point_keeps_the_state_before_or_after_the_last_edit() {
        // Crash at the Nth storage operation while edits (and rewrites)
        // go on; reopen: the state is that of every acknowledged edit, plus
        // at most the one in flight.
        let seeds = 300u64;
        let mut crash_states = 0;
        let (mut interrupted, mut segments_removed) = (0, 0);
        for seed in 0..seeds {
            let s = Arc::new(SimStorage::new(seed));
            let dir = Path::new("/m");
            let mut rng = SplitMix64::new(seed);
            let mut m = Manifest::open_with(s.clone(), dir, SMALL_SEGMENTS).unwrap();
            // Short rewrites: at 256 KiB the test would never reach one.
            let edits = 20 + rng.below(60);
            let crash_after = rng.below(edits);
            let mut acked = m.state().clone();
            let mut in_flight = None;
            for i in 0..edits {
                let e = random_edit(&acked, &mut rng);
                let next = acked.apply(&e).unwrap();
                if i == crash_after {
                    s.inject(Fault {
                        op: FaultOp::Any,
                        nth: 1 + rng.below(6),
                        persistent: false,
                        kind: FaultKind::Crash,
                    });
                }
                let r = m
                    .apply(&e)
                    .and_then(|()| if i % 7 == 6 { m.rewrite() } else { Ok(()) });
                match r {
                    Ok(()) => acked = next,
                    Err(_) => {
                        in_flight = Some(next);
                        break;
                    }
                }
            }
            drop(m);
            let mode = [
                CrashMode::DropUnsynced,
                CrashMode::Prefix,
                CrashMode::Torn,
                CrashMode::Reorder,
            ][(seed % 4) as usize];
            let after = Arc::new(s.crash_with(mode));
            crash_states += 1;
            let m = Manifest::open_with(after.clone(), dir, SMALL_SEGMENTS).unwrap();
            if in_flight.is_some() {
                interrupted += 1;
            }
            segments_removed += u64::from(!after.exists(&dir.join(FIRST_SEGMENT)).unwrap());
            let got = m.state();
            assert!(
                *got == acked || Some(got) == in_flight.as_ref(),
                "seed {seed}: the reopened manifest is neither the acknowledged state nor the one in flight"
            );
        }
        println!(
            "{crash_states} crash states of the manifest ({interrupted} with an edit in flight, {segments_removed} after a rewrite deleted the first segment): every one recovered"
        );
        assert!(interrupted > seeds / 2 && segments_removed > seeds / 4);
    }
}
