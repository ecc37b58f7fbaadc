//! [`dump`]: every checkpoint header, or on tables the manifest's state and
//! every live table's properties, then every log record of a target, in
//! order, continuing past damage (as etcd's dump tool does with
//! `continueOnCrcError`) and marking it.

use super::{Target, ANY_RECORD_SIZE};
use crate::checkpoint::{self, CheckpointError, CheckpointHeader};
use crate::error::{Error, Result};
use crate::layout::{table_file_name, FileKind, TABLES_DIR};
use crate::op::{DecodeError, Op};
use keel_storage::{OpenMode, Storage};
use keel_wal::format::HeaderError;
use keel_wal::inspect::{inspect_segment, segment_files, SegmentDamage};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Bytes read of a checkpoint for its header (header and footer lengths:
/// what [`checkpoint::decode_header`] checks the length against).
const CHECKPOINT_HEAD: usize = 64;

/// One thing [`dump`] found, in file order.
#[derive(Debug)]
pub enum DumpEvent<'a> {
    /// A checkpoint file and what its header says.
    Checkpoint {
        /// The file.
        path: &'a Path,
        /// Its size in bytes.
        bytes: u64,
        /// Its header, or why it does not verify.
        header: std::result::Result<CheckpointHeader, CheckpointError>,
    },
    /// A segment is about to be read (`index` of `total`, from 0).
    Segment {
        /// The file.
        path: &'a Path,
        /// Its position among the segments dumped.
        index: usize,
        /// How many are dumped.
        total: usize,
    },
    /// A valid log record at or after the LSN asked for.
    Record {
        /// Its LSN.
        lsn: u64,
        /// The segment holding it.
        segment: &'a Path,
        /// Its byte offset there.
        offset: u64,
        /// Its payload's length.
        len: usize,
        /// Its commit time, microseconds since the Unix epoch (0: written
        /// before records carried a time, log format version 1).
        time_us: u64,
        /// How its payload is stored in the log.
        compression: keel_wal::Compression,
        /// Compressed with its segment's zstd dictionary.
        dictionary: bool,
        /// Bytes its payload takes in the log (after compression).
        stored_len: u32,
        /// The operation it holds, or why it is not one.
        op: std::result::Result<Op, DecodeError>,
    },
    /// A store on tables: what its manifest says (the live tables follow,
    /// one [`DumpEvent::Table`] each, level by level).
    Manifest {
        /// Where the log starts (records below are in tables).
        log_start: u64,
        /// Keys live as of the log start; `None` when not counted (last
        /// written with `Options::exact_key_count` off).
        live_keys: Option<u64>,
        /// Live tables per level, and their bytes.
        levels: Vec<(usize, u64)>,
    },
    /// A manifest record: an edit of the live tables.
    Edit {
        /// Its LSN in the manifest's log.
        lsn: u64,
        /// The edit, or why it is not one.
        edit: std::result::Result<crate::manifest::VersionEdit, crate::manifest::EditError>,
    },
    /// A table file and its properties, or why it cannot be read.
    Table {
        /// The file.
        path: &'a Path,
        /// Its properties.
        props: std::result::Result<crate::table::Properties, crate::table::TableError>,
    },
    /// An entry of a table, in key order.
    TableEntry {
        /// Its key.
        key: Vec<u8>,
        /// Its value or tombstone.
        entry: crate::table::Entry,
    },
    /// Damage in a table: the entries after it are not listed.
    TableDamage {
        /// The file.
        path: &'a Path,
        /// What and where.
        why: crate::table::TableError,
    },
    /// Damage in a segment.
    Damage {
        /// The segment.
        segment: &'a Path,
        /// What and where.
        damage: DumpDamage,
    },
}

/// Damage [`dump`] found in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpDamage {
    /// The segment's header does not verify: nothing in it can be read.
    Header(HeaderError),
    /// A record does not verify (the dump resumes at the next one that does).
    Record(SegmentDamage),
}

/// Calls `visit` for every checkpoint header and log record of `target`
/// with LSN >= `from`, and for the damage found. `visit` returns
/// `ControlFlow::Break` to stop early (a closed output pipe). Returns whether
/// any damage was found.
pub fn dump(
    storage: &dyn Storage,
    target: &Target,
    from: u64,
    visit: &mut dyn FnMut(DumpEvent<'_>) -> ControlFlow<()>,
) -> Result<bool> {
    if let Target::Table(path) = target {
        return dump_table(storage, path, visit);
    }
    for path in checkpoints(storage, target)? {
        let event = DumpEvent::Checkpoint {
            path: &path,
            bytes: file_len(storage, &path)?,
            header: read_checkpoint_header(storage, &path),
        };
        if visit(event).is_break() {
            return Ok(false);
        }
    }
    let mut damaged = false;
    if let Target::DataDir(d) = target {
        match dump_live_tables(storage, d, visit)? {
            ControlFlow::Break(()) => return Ok(false),
            ControlFlow::Continue(d) => damaged = d,
        }
    }
    let segments = match (target, target.log_dir()) {
        (Target::Segment(p), _) => vec![p.clone()],
        (Target::Manifest(dir), _) => segment_files(storage, dir)?,
        (Target::Checkpoint(_) | Target::Table(_), _) | (_, None) => Vec::new(),
        (_, Some(dir)) if storage.list(&dir).is_err() => Vec::new(),
        (_, Some(dir)) => segment_files(storage, &dir)?,
    };
    for (index, seg) in segments.iter().enumerate() {
        let total = segments.len();
        if visit(DumpEvent::Segment {
            path: seg,
            index,
            total,
        })
        .is_break()
        {
            return Ok(damaged);
        }
        let edits = matches!(target, Target::Manifest(_));
        match dump_segment(storage, seg, from, edits, visit)? {
            ControlFlow::Break(()) => return Ok(damaged),
            ControlFlow::Continue(d) => damaged |= d,
        }
    }
    Ok(damaged)
}

/// One segment's records and damage; `Continue(damaged)` or `Break`.
fn dump_segment(
    storage: &dyn Storage,
    seg: &Path,
    from: u64,
    edits: bool,
    visit: &mut dyn FnMut(DumpEvent<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<(), bool>> {
    let mut stopped = false;
    let summary = inspect_segment(storage, seg, ANY_RECORD_SIZE, true, |record, offset| {
        let (lsn, payload) = (record.lsn, record.payload);
        if lsn < from || stopped {
            return;
        }
        let event = if edits {
            DumpEvent::Edit {
                lsn,
                edit: crate::manifest::VersionEdit::decode(payload),
            }
        } else {
            DumpEvent::Record {
                lsn,
                segment: seg,
                offset,
                len: payload.len(),
                time_us: record.time_us,
                compression: record.compression,
                dictionary: record.dictionary,
                stored_len: record.stored_len,
                op: Op::decode(payload),
            }
        };
        stopped = visit(event).is_break();
    })?;
    if stopped {
        return Ok(ControlFlow::Break(()));
    }
    let mut damage: Vec<DumpDamage> = summary.damage.into_iter().map(DumpDamage::Record).collect();
    if let Err(e) = summary.header {
        damage.insert(0, DumpDamage::Header(e));
    }
    let damaged = !damage.is_empty();
    for d in damage {
        if visit(DumpEvent::Damage {
            segment: seg,
            damage: d,
        })
        .is_break()
        {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(damaged))
}

/// A store on tables: its manifest's state, then each live table's
/// properties; `Continue(damaged)` or `Break`. Nothing for a store that is
/// not on tables.
fn dump_live_tables(
    storage: &dyn Storage,
    d: &crate::layout::DataDir,
    visit: &mut dyn FnMut(DumpEvent<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<(), bool>> {
    let Some(state) = super::verify::manifest_state(storage, d)? else {
        return Ok(ControlFlow::Continue(false));
    };
    let levels = state
        .levels
        .iter()
        .map(|t| (t.len(), t.iter().map(|m| m.size).sum()))
        .collect();
    let event = DumpEvent::Manifest {
        log_start: state.log_start,
        live_keys: Some(state.live_keys).filter(|n| *n != crate::manifest::KEYS_NOT_COUNTED),
        levels,
    };
    if visit(event).is_break() {
        return Ok(ControlFlow::Break(()));
    }
    let mut damaged = false;
    for meta in state.levels.iter().flatten() {
        let path = d.root().join(TABLES_DIR).join(table_file_name(meta.number));
        let props = match storage.open(&path, OpenMode::Read) {
            Ok(file) => crate::table::Table::open(file, &path).map(|t| t.properties().clone()),
            Err(source) => Err(crate::table::TableError::Io {
                path: path.clone(),
                source,
            }),
        };
        damaged |= props.is_err();
        if visit(DumpEvent::Table { path: &path, props }).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(damaged))
}

/// A table's properties and entries; whether it is damaged.
fn dump_table(
    storage: &dyn Storage,
    path: &Path,
    visit: &mut dyn FnMut(DumpEvent<'_>) -> ControlFlow<()>,
) -> Result<bool> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("opening", path, e))?;
    let table = match crate::table::Table::open(file, path) {
        Ok(t) => t,
        Err(e) => {
            let _ = visit(DumpEvent::Table {
                path,
                props: Err(e),
            });
            return Ok(true);
        }
    };
    let props = Ok(table.properties().clone());
    if visit(DumpEvent::Table { path, props }).is_break() {
        return Ok(false);
    }
    for item in table.iter_from(&[]) {
        let event = match item {
            Ok((key, entry)) => DumpEvent::TableEntry { key, entry },
            Err(why) => {
                let _ = visit(DumpEvent::TableDamage { path, why });
                return Ok(true);
            }
        };
        if visit(event).is_break() {
            return Ok(false);
        }
    }
    Ok(false)
}

/// The checkpoint files a target holds, oldest first.
fn checkpoints(storage: &dyn Storage, target: &Target) -> Result<Vec<PathBuf>> {
    Ok(match target {
        Target::DataDir(d) => {
            let (mut found, _) = d.list_checkpoints(storage)?;
            found.reverse();
            found.into_iter().map(|(_, p)| p).collect()
        }
        Target::Checkpoint(p) => vec![p.clone()],
        Target::LogDir(_) | Target::Segment(_) | Target::Table(_) | Target::Manifest(_) => {
            Vec::new()
        }
    })
}

fn file_len(storage: &dyn Storage, path: &Path) -> Result<u64> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("opening", path, e))?;
    file.len()
        .map_err(|e| Error::io("reading the length of", path, e))
}

/// A checkpoint's header alone (a dump does not read whole checkpoints).
fn read_checkpoint_header(
    storage: &dyn Storage,
    path: &Path,
) -> std::result::Result<CheckpointHeader, CheckpointError> {
    let unreadable = |e| CheckpointError::Unreadable(std::sync::Arc::new(e));
    let file = storage.open(path, OpenMode::Read).map_err(unreadable)?;
    let len = file.len().map_err(unreadable)?;
    if len < CHECKPOINT_HEAD as u64 {
        return Err(CheckpointError::TooShort(len as usize));
    }
    let mut head = [0u8; CHECKPOINT_HEAD];
    file.read_exact_at(&mut head, 0).map_err(unreadable)?;
    let header = checkpoint::decode_header(&head)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match FileKind::parse(name) {
        Some(FileKind::Checkpoint(lsn)) if lsn != header.lsn => Err(CheckpointError::LsnMismatch {
            name: lsn,
            header: header.lsn,
        }),
        _ => Ok(header),
    }
}
