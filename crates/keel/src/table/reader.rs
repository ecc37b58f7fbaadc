//! [`Table`]: an open table file. Opening reads and checks the footer, the
//! properties, the filter and the index (kept in memory); data blocks are
//! read, and their checksums checked, when a lookup or a scan needs them.
//! Every error names the file and the block; damage is never read as a
//! wrong value or a missing key.

use super::block::{Block, Cursor, Stored};
use super::bloom::{self, Bloom};
use super::footer::{check_block, Footer, Handle, Properties, FOOTER_LEN};
use super::{BlockCache, TableError};
use keel_storage::StorageFile;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a table says about a key it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The key's value.
    Put(Vec<u8>),
    /// The key was deleted (older tables' entries for it are hidden).
    Tombstone,
}

impl From<Stored<'_>> for Entry {
    fn from(s: Stored<'_>) -> Entry {
        match s {
            Stored::Put(v) => Entry::Put(v.to_vec()),
            Stored::Tombstone => Entry::Tombstone,
        }
    }
}

/// An open table.
pub struct Table {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    footer: Footer,
    props: Properties,
    filter: Bloom,
    /// Each data block's last key and where it is, in key order.
    index: Vec<(Vec<u8>, Handle)>,
    /// The shared block cache and this table's key space in it.
    cache: Option<(Arc<BlockCache>, u64)>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("props", &self.props)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Opens the table in `file` (named `path` in errors) and checks
    /// everything but the data blocks ([`verify`](Self::verify) reads
    /// those too).
    pub fn open(file: Arc<dyn StorageFile>, path: &Path) -> Result<Table, TableError> {
        Table::open_cached(file, path, None)
    }

    /// [`open`](Self::open), its data blocks read through `cache`.
    pub fn open_cached(
        file: Arc<dyn StorageFile>,
        path: &Path,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table, TableError> {
        let io = |source| TableError::Io {
            path: path.to_path_buf(),
            source,
        };
        let damaged = |at: &str, why: &str| TableError::damaged(path, at, why);
        let len = file.len().map_err(io)?;
        if len < FOOTER_LEN as u64 {
            return Err(damaged("the footer", "the file is shorter than a footer"));
        }
        let mut fb = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut fb, len - FOOTER_LEN as u64)
            .map_err(io)?;
        let footer = Footer::decode(&fb, len).map_err(|why| damaged("the footer", why))?;
        let mut table = Table {
            file,
            path: path.to_path_buf(),
            footer,
            props: Properties::default(),
            filter: Bloom::new(vec![0, 1]).expect("a valid empty filter"),
            index: Vec::new(),
            cache: cache.map(|c| {
                let id = c.table_id();
                (c, id)
            }),
        };
        let props = table.read_payload(footer.props, "the properties block")?;
        table.props =
            Properties::decode(&props).map_err(|why| damaged("the properties block", why))?;
        let filter = table.read_payload(footer.filter, "the filter block")?;
        table.filter =
            Bloom::new(filter).ok_or_else(|| damaged("the filter block", "malformed filter"))?;
        table.index = table.read_index()?;
        Ok(table)
    }

    /// The index entries, checked: keys increasing, blocks one after the
    /// other from offset 0 up to the filter, as many as the properties say.
    fn read_index(&self) -> Result<Vec<(Vec<u8>, Handle)>, TableError> {
        let at = "the index block";
        let block = Block::new(self.read_payload(self.footer.index, at)?)
            .map_err(|e| self.damaged(at, e.0))?;
        let mut index: Vec<(Vec<u8>, Handle)> = Vec::new();
        let mut next = 0u64;
        for entry in block.iter() {
            let (key, value) = entry.map_err(|e| self.damaged(at, e.0))?;
            let handle = match value {
                Stored::Put(v) => Handle::decode(v),
                Stored::Tombstone => None,
            }
            .ok_or_else(|| self.damaged(at, "an entry is not a block handle"))?;
            if handle.offset != next || index.last().is_some_and(|(k, _)| *k >= key) {
                return Err(self.damaged(at, "blocks out of order"));
            }
            next = handle.end();
            index.push((key, handle));
        }
        let p = &self.props;
        let consistent = next == self.footer.filter.offset
            && index.len() as u64 == p.data_blocks
            && (p.entries == 0) == index.is_empty()
            && index.last().is_none_or(|(k, _)| *k == p.largest);
        if !consistent {
            return Err(self.damaged(at, "it disagrees with the properties or the footer"));
        }
        Ok(index)
    }

    fn damaged(&self, at: &str, why: &str) -> TableError {
        TableError::damaged(&self.path, at, why)
    }

    /// Reads a block's payload and checks its trailer.
    fn read_payload(&self, h: Handle, at: &str) -> Result<Vec<u8>, TableError> {
        let mut buf = vec![0u8; h.len as usize + super::footer::TRAILER_LEN];
        self.file
            .read_exact_at(&mut buf, h.offset)
            .map_err(|source| TableError::Io {
                path: self.path.clone(),
                source,
            })?;
        check_block(buf).map_err(|why| self.damaged(at, why))
    }

    fn data_block(&self, i: usize) -> Result<Arc<Block>, TableError> {
        let h = self.index[i].1;
        if let Some((cache, id)) = &self.cache {
            if let Some(b) = cache.get(*id, h.offset) {
                return Ok(b);
            }
        }
        let at = format!("the data block at offset {}", h.offset);
        let payload = self.read_payload(h, &at)?;
        let block = Arc::new(Block::new(payload).map_err(|e| self.damaged(&at, e.0))?);
        if let Some((cache, id)) = &self.cache {
            cache.insert(*id, h.offset, Arc::clone(&block));
        }
        Ok(block)
    }

    /// Bytes this open table keeps in memory outside the block cache (its
    /// index and filter).
    pub fn pinned_bytes(&self) -> usize {
        self.filter.bytes()
            + self
                .index
                .iter()
                .map(|(k, _)| k.len() + 12 + 24)
                .sum::<usize>()
    }

    /// The table's properties (entry counts, LSN and key range).
    pub fn properties(&self) -> &Properties {
        &self.props
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the table holds for `key`: `None` if it holds nothing (the
    /// key's fate is in older tables).
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>, TableError> {
        if self.index.is_empty()
            || key < self.props.smallest.as_slice()
            || key > self.props.largest.as_slice()
            || !self.filter.may_contain(bloom::key_hash(key))
        {
            return Ok(None);
        }
        // The first block whose last key is >= key is the only one that
        // can hold it.
        let i = self
            .index
            .partition_point(|(last, _)| last.as_slice() < key);
        if i == self.index.len() {
            return Ok(None);
        }
        let block = self.data_block(i)?;
        let at = || format!("the data block at offset {}", self.index[i].1.offset);
        let mut it = block.seek(key).map_err(|e| self.damaged(&at(), e.0))?;
        match it.next() {
            Some(Ok((k, v))) if k == key => Ok(Some(v.into())),
            Some(Err(e)) => Err(self.damaged(&at(), e.0)),
            _ => Ok(None),
        }
    }

    /// Entries with keys `>= from` (all with `&[]`), in key order.
    pub fn iter_from(&self, from: &[u8]) -> TableIter<&Table> {
        TableIter::new(self, from)
    }

    /// [`iter_from`](Self::iter_from) holding the table by `Arc`, for
    /// iterators that outlive the caller's borrow (a pinned version).
    pub fn iter_arc(self: &Arc<Self>, from: &[u8]) -> TableIter<Arc<Table>> {
        TableIter::new(Arc::clone(self), from)
    }

    /// Reads every data block and checks what opening could not: each
    /// block's checksum and entries, keys strictly increasing across
    /// blocks, each block ending at its index key, every key in the filter,
    /// and the counts in the properties.
    pub fn verify(&self) -> Result<(), TableError> {
        let mut last: Option<Vec<u8>> = None;
        let (mut entries, mut tombstones) = (0u64, 0u64);
        for (i, (index_key, h)) in self.index.iter().enumerate() {
            let at = format!("the data block at offset {}", h.offset);
            let block = self.data_block(i)?;
            let mut n = 0;
            for e in block.iter() {
                let (k, v) = e.map_err(|e| self.damaged(&at, e.0))?;
                if k.is_empty() || last.as_ref().is_some_and(|l| *l >= k) {
                    return Err(self.damaged(&at, "keys out of order"));
                }
                if !self.filter.may_contain(bloom::key_hash(&k)) {
                    return Err(self.damaged("the filter block", "a key is missing from it"));
                }
                if entries == 0 && k != self.props.smallest {
                    return Err(self.damaged(&at, "the first key is not the smallest"));
                }
                entries += 1;
                tombstones += u64::from(v == Stored::Tombstone);
                n += 1;
                last = Some(k);
            }
            if n == 0 || last.as_ref() != Some(index_key) {
                return Err(self.damaged(&at, "the block does not end at its index key"));
            }
        }
        if entries != self.props.entries || tombstones != self.props.tombstones {
            return Err(self.damaged(
                "the properties block",
                "its entry counts disagree with the data blocks",
            ));
        }
        Ok(())
    }
}

/// A data block [`Table::salvage`] could not keep: the keys it held lie
/// after `after` (or from the table's smallest key, if it is the first
/// block) up to and including `through`.
#[derive(Debug)]
pub struct LostBlock {
    /// The previous block's last key, or `None` for the first block.
    pub after: Option<Vec<u8>>,
    /// This block's last key, as the index gives it.
    pub through: Vec<u8>,
    /// Why the block cannot be read.
    pub why: TableError,
}

impl Table {
    /// For repair: hands `keep` every entry of every data block that reads
    /// back whole (checksum, entries, keys increasing and within the range
    /// the index gives the block), in key order, and returns the blocks that
    /// do not. Damage outside the data blocks (footer, properties, filter,
    /// index) fails [`open`](Self::open) instead, and then nothing of the
    /// table can be placed. An error from `keep` stops it and is returned.
    pub fn salvage<E>(
        &self,
        mut keep: impl FnMut(&[u8], Stored<'_>) -> Result<(), E>,
    ) -> Result<Vec<LostBlock>, E> {
        let mut lost = Vec::new();
        let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for (i, (index_key, h)) in self.index.iter().enumerate() {
            let after = i.checked_sub(1).map(|p| self.index[p].0.clone());
            let at = format!("the data block at offset {}", h.offset);
            entries.clear();
            let read = self.data_block(i).and_then(|block| {
                for e in block.iter() {
                    let (k, v) = e.map_err(|e| self.damaged(&at, e.0))?;
                    let previous = entries
                        .last()
                        .map(|(k, _)| k.as_slice())
                        .or(after.as_deref());
                    if k.is_empty() || previous.is_some_and(|p| p >= k.as_slice()) {
                        return Err(self.damaged(&at, "keys out of order"));
                    }
                    let value = match v {
                        Stored::Put(v) => Some(v.to_vec()),
                        Stored::Tombstone => None,
                    };
                    entries.push((k, value));
                }
                match entries.last() {
                    Some((k, _)) if k == index_key => Ok(()),
                    _ => Err(self.damaged(&at, "the block does not end at its index key")),
                }
            });
            match read {
                Ok(()) => {
                    for (k, v) in &entries {
                        let stored = v.as_deref().map_or(Stored::Tombstone, Stored::Put);
                        keep(k, stored)?;
                    }
                }
                Err(why) => lost.push(LostBlock {
                    after,
                    through: index_key.clone(),
                    why,
                }),
            }
        }
        Ok(lost)
    }
}

/// A table's entries in key order, decoded one at a time from the current
/// data block (a seek followed by a few nexts decodes only those); `T`
/// holds the table (`&Table` or `Arc<Table>`).
pub struct TableIter<T> {
    table: T,
    next_block: usize,
    from: Vec<u8>,
    /// The block being read (its index), and the position in it.
    current: Option<(usize, Arc<Block>, Cursor)>,
    failed: bool,
}

impl<T: std::ops::Deref<Target = Table>> TableIter<T> {
    fn new(table: T, from: &[u8]) -> TableIter<T> {
        let next_block = table
            .index
            .partition_point(|(last, _)| last.as_slice() < from);
        TableIter {
            table,
            next_block,
            from: from.to_vec(),
            current: None,
            failed: false,
        }
    }
}

impl<T: std::ops::Deref<Target = Table>> Iterator for TableIter<T> {
    type Item = Result<(Vec<u8>, Entry), TableError>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = |t: &Table, i: usize| format!("the data block at offset {}", t.index[i].1.offset);
        loop {
            if self.failed {
                return None;
            }
            if let Some((i, block, cursor)) = &mut self.current {
                match cursor.next(block) {
                    Some(Ok((k, v))) => return Some(Ok((k, Entry::from(v)))),
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(self.table.damaged(&at(&self.table, *i), e.0)));
                    }
                    None => self.current = None,
                }
            }
            if self.next_block >= self.table.index.len() {
                return None;
            }
            let i = self.next_block;
            self.next_block += 1;
            let positioned = self.table.data_block(i).and_then(|block| {
                let cursor = block
                    .seek_cursor(&self.from)
                    .map_err(|e| self.table.damaged(&at(&self.table, i), e.0))?;
                Ok((i, block, cursor))
            });
            match positioned {
                Ok(c) => self.current = Some(c),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
