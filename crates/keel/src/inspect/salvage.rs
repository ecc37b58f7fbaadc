//! [`DamagedTable`]: what `keel repair` does with a live table that does
//! not read back whole (issue 12: "`keel repair` never deletes a table; it
//! can move a damaged one aside and say what is lost").
//!
//! A table is never modified, so a damaged one is replaced, in this order,
//! each step durable before the next:
//! 1. the damaged file is copied into `damaged/` beside `tables/` (kept for
//!    the operator; keel never reads it again);
//! 2. every entry of its data blocks that still read back whole (checksum,
//!    order, range) is written to a new table at the same level, with the
//!    same LSN range (so level 0 keeps its order, docs/FORMAT.md);
//! 3. one manifest edit removes the damaged tables, adds their rewrites and
//!    records the key count, recounted over the new set of tables;
//! 4. only then is the damaged file removed from `tables/` (rule 4 of
//!    docs/DESIGN.md: what is replaced goes only after the record that
//!    makes it obsolete is durable).
//!
//! A crash before step 3 leaves the store as it was (the rewrites are
//! orphans, removed at open, and the repair can run again); after it, the
//! damaged original is an orphan, and its copy is already in `damaged/`.
//!
//! What cannot be kept is said before anything changes: the key ranges of
//! the blocks lost (the whole table's range when its footer, properties,
//! filter or index is damaged, or the file is missing), and the LSNs of the
//! writes they held. Writes lost this way can uncover older values of the
//! same keys in deeper levels; the plan says so.

use crate::error::{Error, Result};
use crate::layout::{table_file_name, DataDir, DAMAGED_DIR, MANIFEST_DIR, TABLES_DIR};
use crate::lsm::{LiveTable, Version};
use crate::manifest::{Manifest, TableMeta, VersionEdit, VersionState};
use crate::table::{LostBlock, Table, TableBuilder, TableError};
use keel_storage::{OpenMode, Storage};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes read at a time when copying a damaged table aside.
const COPY_CHUNK: usize = 1 << 20;

/// A live table that does not read back whole, and what repair keeps of it.
#[derive(Debug)]
pub struct DamagedTable {
    /// The table as the manifest records it (level, key and LSN range).
    pub meta: TableMeta,
    /// Its file under `tables/`.
    pub path: PathBuf,
    /// What is wrong with it (the first damage found).
    pub damage: String,
    /// Whether the file is there at all (a missing one cannot be copied
    /// aside; nothing of it is kept).
    pub present: bool,
    /// Entries of its intact data blocks, kept in the table that replaces
    /// it (none: no table replaces it).
    pub kept: u64,
    /// The key ranges whose entries are lost.
    pub lost: Vec<LostKeys>,
}

/// A range of keys whose entries in one damaged table are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostKeys {
    /// The lowest key the range can hold.
    pub from: Bound<Vec<u8>>,
    /// The highest key it can hold (included).
    pub through: Vec<u8>,
    /// Why its entries cannot be read.
    pub why: String,
}

impl DamagedTable {
    /// Entries of the table that are lost (the manifest's count less those
    /// kept).
    pub fn lost_entries(&self) -> u64 {
        self.meta.entries.saturating_sub(self.kept)
    }

    /// Where the damaged file is copied to.
    pub fn moved_to(&self, root: &Path) -> PathBuf {
        root.join(DAMAGED_DIR)
            .join(table_file_name(self.meta.number))
    }

    /// The whole table lost, for `why`.
    fn whole(meta: &TableMeta, path: PathBuf, present: bool, why: String) -> DamagedTable {
        DamagedTable {
            lost: vec![LostKeys {
                from: Bound::Included(meta.smallest.clone()),
                through: meta.largest.clone(),
                why: "the whole table".into(),
            }],
            meta: meta.clone(),
            path,
            damage: why,
            present,
            kept: 0,
        }
    }
}

impl std::fmt::Display for LostKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.from {
            Bound::Included(k) => write!(f, "keys from \"{}\"", k.escape_ascii())?,
            Bound::Excluded(k) => write!(f, "keys after \"{}\"", k.escape_ascii())?,
            Bound::Unbounded => write!(f, "keys")?,
        }
        write!(
            f,
            " through \"{}\" ({})",
            self.through.escape_ascii(),
            self.why
        )
    }
}

impl std::fmt::Display for DamagedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.meta;
        writeln!(
            f,
            "{}: level {}, {} entries written at LSN {}..={}: {}",
            self.path.display(),
            m.level,
            m.entries,
            m.min_lsn,
            m.max_lsn,
            self.damage
        )?;
        if self.present {
            writeln!(
                f,
                "  will move it aside (not delete it) to {}/{}",
                DAMAGED_DIR,
                table_file_name(m.number)
            )?;
        }
        if self.kept > 0 {
            writeln!(
                f,
                "  will keep {} entries of its intact blocks in a new table at level {}",
                self.kept, m.level
            )?;
        }
        if self.lost.is_empty() {
            writeln!(f, "  loses nothing: every data block reads back whole")?;
        } else {
            writeln!(
                f,
                "  LOSES {} entries (writes of LSN {}..={}), in:",
                self.lost_entries(),
                m.min_lsn,
                m.max_lsn
            )?;
            for l in &self.lost {
                writeln!(f, "    {l}")?;
            }
            writeln!(
                f,
                "  an older value of a lost key, kept in a deeper level, shows again"
            )?;
        }
        Ok(())
    }
}

/// Every live table of the store at `root` (manifest state `state`) that
/// is missing or does not read back whole, with what repair would keep of
/// it. Reads only. An I/O error (other than a missing file) is an error,
/// never counted as damage: a disk that fails to read is not a reason to
/// give up data.
pub(crate) fn find_damaged(
    storage: &dyn Storage,
    d: &DataDir,
    state: &VersionState,
) -> Result<Vec<DamagedTable>> {
    let tables_dir = d.root().join(TABLES_DIR);
    let mut damaged = Vec::new();
    for meta in state.live() {
        let path = tables_dir.join(table_file_name(meta.number));
        let table = match open(storage, &path)? {
            Ok(Some(t)) => t,
            Ok(None) => {
                let why = "the file is missing".to_string();
                damaged.push(DamagedTable::whole(meta, path, false, why));
                continue;
            }
            Err(e) => {
                damaged.push(DamagedTable::whole(meta, path, true, e.to_string()));
                continue;
            }
        };
        let Err(damage) = table.verify() else {
            continue;
        };
        io_is_error(&damage)?;
        let mut kept = 0u64;
        let lost = table.salvage(|_, _| {
            kept += 1;
            Ok::<(), std::convert::Infallible>(())
        });
        let lost = match lost {
            Ok(l) => l,
            Err(never) => match never {},
        };
        let lost = lost_keys(&table, lost)?;
        damaged.push(DamagedTable {
            meta: meta.clone(),
            path,
            damage: damage.to_string(),
            present: true,
            kept,
            lost,
        });
    }
    Ok(damaged)
}

/// Replaces the `damaged` tables of the store at `root` as the module doc
/// says. The caller holds the store's lock.
pub(crate) fn replace_damaged(
    storage: &Arc<dyn Storage>,
    d: &DataDir,
    damaged: &[DamagedTable],
) -> Result<()> {
    if damaged.is_empty() {
        return Ok(());
    }
    let root = d.root();
    let aside = root.join(DAMAGED_DIR);
    keel_storage::create_dir_durable(&**storage, &aside)?;
    for t in damaged.iter().filter(|t| t.present) {
        copy_durably(&**storage, &t.path, &t.moved_to(root))?;
    }
    let mut manifest = Manifest::open(Arc::clone(storage), &root.join(MANIFEST_DIR))
        .map_err(crate::lsm::LsmError::from)?;
    let mut edit = VersionEdit::default();
    let mut next = manifest.state().next_table;
    let tables_dir = root.join(TABLES_DIR);
    for t in damaged {
        edit.removed.push((t.meta.level, t.meta.number));
        if t.kept == 0 {
            continue;
        }
        // It opened when planned, under the same lock: only a change from
        // outside keel makes this fail, and then nothing has changed yet.
        let table = match open(&**storage, &t.path)? {
            Ok(Some(table)) => table,
            Ok(None) => {
                let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
                return Err(Error::io(
                    "reopening a damaged table to rewrite it",
                    &t.path,
                    gone,
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let path = tables_dir.join(table_file_name(next));
        let props = rewrite(&**storage, &table, &t.meta, &path)?;
        edit.added
            .push(TableMeta::new(t.meta.level, next, props.1, &props.0));
        next += 1;
    }
    edit.next_table = Some(next);
    let after = manifest
        .state()
        .apply(&edit)
        .map_err(crate::manifest::ManifestError::Refused)
        .map_err(crate::lsm::LsmError::from)?;
    edit.live_keys = Some(count_live(&**storage, &tables_dir, &after)?);
    // Durable before the originals go (Manifest::apply syncs it).
    manifest.apply(&edit).map_err(crate::lsm::LsmError::from)?;
    for t in damaged.iter().filter(|t| t.present) {
        storage
            .remove(&t.path)
            .map_err(|e| Error::io("removing a damaged table (copied aside)", &t.path, e))?;
    }
    // The removals are durable only once the directory is (rule 2); a
    // crash before leaves orphans, which the next open removes.
    storage
        .sync_dir(&tables_dir)
        .map_err(|e| Error::io("syncing the tables directory", &tables_dir, e))?;
    Ok(())
}

/// Opens the table at `path`: `Ok(Ok(None))` if it is missing,
/// `Ok(Err(_))` if it is damaged, `Err` if it cannot be read.
fn open(
    storage: &dyn Storage,
    path: &Path,
) -> Result<std::result::Result<Option<Table>, TableError>> {
    let file = match storage.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => return Err(Error::io("opening a table", path, e)),
    };
    match Table::open(file, path) {
        Ok(t) => Ok(Ok(Some(t))),
        Err(e) => {
            io_is_error(&e)?;
            Ok(Err(e))
        }
    }
}

/// An I/O error reading a table stops the repair (the disk, not the data,
/// is at fault).
fn io_is_error(e: &TableError) -> Result<()> {
    match e {
        TableError::Io { path, source } => Err(Error::io(
            "reading a table",
            path,
            std::io::Error::new(source.kind(), source.to_string()),
        )),
        TableError::Damaged { .. } => Ok(()),
    }
}

/// The key ranges of `table`'s lost blocks.
fn lost_keys(table: &Table, lost: Vec<LostBlock>) -> Result<Vec<LostKeys>> {
    lost.into_iter()
        .map(|b| {
            io_is_error(&b.why)?;
            Ok(LostKeys {
                from: match b.after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Included(table.properties().smallest.clone()),
                },
                through: b.through,
                why: b.why.to_string(),
            })
        })
        .collect()
}

/// Copies `from` to `to` durably (temp file, fdatasync, rename, directory
/// fsync), so the damaged table outlives its removal from `tables/`.
fn copy_durably(storage: &dyn Storage, from: &Path, to: &Path) -> Result<()> {
    let src = storage
        .open(from, OpenMode::Read)
        .map_err(|e| Error::io("opening a damaged table to copy it", from, e))?;
    let len = src
        .len()
        .map_err(|e| Error::io("reading a damaged table's length", from, e))?;
    keel_storage::write_atomic(storage, to, |dst, _| {
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(COPY_CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_at(&buf[..n], at)?;
            at += n as u64;
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes the intact entries of `table` (recorded as `meta`) to a new
/// table at `path`, durably, with `meta`'s LSN range.
fn rewrite(
    storage: &dyn Storage,
    table: &Table,
    meta: &TableMeta,
    path: &Path,
) -> Result<(crate::table::Properties, u64)> {
    let mut out = None;
    keel_storage::write_atomic(storage, path, |file, _| {
        let mut b = TableBuilder::new(file);
        b.extend_lsn_range(meta.min_lsn, meta.max_lsn);
        table.salvage(|k, v| b.add(k, v, meta.min_lsn))?;
        out = Some(b.finish()?);
        Ok(())
    })?;
    Ok(out.expect("set when the write succeeded"))
}

/// Keys live in the tables of `state` (read from `tables_dir`): a merge
/// of every table, newest entry first, counting the puts.
fn count_live(storage: &dyn Storage, tables_dir: &Path, state: &VersionState) -> Result<u64> {
    let mut levels = Vec::with_capacity(state.levels.len());
    for tables in &state.levels {
        let mut level = Vec::with_capacity(tables.len());
        for meta in tables {
            let path = tables_dir.join(table_file_name(meta.number));
            let file = storage
                .open(&path, OpenMode::Read)
                .map_err(|e| Error::io("opening a table", &path, e))?;
            level.push(Arc::new(LiveTable {
                meta: meta.clone(),
                table: Arc::new(Table::open(file, &path)?),
            }));
        }
        levels.push(level);
    }
    Ok((Version { levels }).count_live()?)
}
