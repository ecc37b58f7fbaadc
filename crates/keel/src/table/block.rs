//! Blocks of sorted entries (data blocks and the index block), with keys
//! prefix-compressed against the entry before and restart points for
//! binary search, as LevelDB's are.
//!
//! Payload: entries, then the restart offsets (`u32` each), then their
//! count (`u32`). An entry: `shared` (varint: bytes of the key shared with
//! the previous entry's key; 0 at a restart), `unshared` (varint), `vlen`
//! (varint), `kind` (1 byte: [`KIND_PUT`] or [`KIND_TOMBSTONE`]), then the
//! `unshared` key bytes and `vlen` value bytes.
//!
//! Decoding never trusts a length: every offset is checked against the
//! payload, and a violation is a [`BlockError`] (the caller names the file
//! and block).

/// Entry kind: a key with its value.
pub const KIND_PUT: u8 = 1;
/// Entry kind: a deleted key (no value), which hides older tables' entries.
pub const KIND_TOMBSTONE: u8 = 2;

/// Why a block payload cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BlockError(pub &'static str);

/// An entry's value as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// The value.
    Put(&'a [u8]),
    /// The key was deleted.
    Tombstone,
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A LEB128 `u32` at `b[*pos..]`, advancing `pos`.
fn get_varint(b: &[u8], pos: &mut usize) -> Result<u32, BlockError> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b
            .get(*pos)
            .ok_or(BlockError("an entry runs past the block"))?;
        *pos += 1;
        if shift == 28 && byte > 0x0F {
            return Err(BlockError("a varint overflows 32 bits"));
        }
        v |= u32::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(BlockError("a varint overflows 32 bits"))
}

/// Builds one block payload.
pub struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    /// A builder with a restart point every `interval` entries (at least 1).
    pub fn new(interval: usize) -> BlockBuilder {
        BlockBuilder {
            buf: Vec::new(),
            restarts: Vec::new(),
            interval: interval.max(1),
            since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Appends an entry; `key` must sort after the previous one (the
    /// table builder checks).
    pub fn add(&mut self, key: &[u8], value: Stored<'_>) {
        let shared = if self.since_restart == self.interval || self.entries == 0 {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let (kind, v): (u8, &[u8]) = match value {
            Stored::Put(v) => (KIND_PUT, v),
            Stored::Tombstone => (KIND_TOMBSTONE, &[]),
        };
        put_varint(&mut self.buf, shared as u32);
        put_varint(&mut self.buf, (key.len() - shared) as u32);
        put_varint(&mut self.buf, v.len() as u32);
        self.buf.push(kind);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(v);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.since_restart += 1;
        self.entries += 1;
    }

    /// Bytes the payload would take if finished now.
    pub fn size_estimate(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    /// No entry added.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The last key added.
    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// The finished payload; the builder is empty again.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        self.since_restart = 0;
        self.last_key.clear();
        self.entries = 0;
        out
    }
}

/// A decoded block payload, ready to be searched and iterated.
#[derive(Debug, Clone)]
pub struct Block {
    data: Vec<u8>,
    /// Where the entries end (the restart array begins).
    entries_end: usize,
    restarts: Vec<u32>,
}

/// One entry decoded at some offset: its key suffix and value.
struct Raw<'a> {
    shared: usize,
    suffix: &'a [u8],
    value: Stored<'a>,
    next: usize,
}

impl Block {
    /// Checks the restart array of `data` and keeps it.
    pub fn new(data: Vec<u8>) -> Result<Block, BlockError> {
        let n = data
            .len()
            .checked_sub(4)
            .map(|at| u32::from_le_bytes(data[at..].try_into().expect("4 bytes")) as usize)
            .ok_or(BlockError("shorter than its restart count"))?;
        let entries_end = n
            .checked_mul(4)
            .and_then(|r| data.len().checked_sub(4 + r))
            .ok_or(BlockError("the restart count does not fit the block"))?;
        let restarts: Vec<u32> = data[entries_end..data.len() - 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if entries_end > 0 && restarts.first() != Some(&0) {
            return Err(BlockError("the first restart is not at offset 0"));
        }
        if restarts
            .windows(2)
            .any(|w| w[0] >= w[1] || w[1] as usize >= entries_end)
        {
            return Err(BlockError(
                "restart offsets out of order or past the entries",
            ));
        }
        if entries_end == 0 && !restarts.is_empty() {
            return Err(BlockError("restarts in a block without entries"));
        }
        Ok(Block {
            data,
            entries_end,
            restarts,
        })
    }

    fn raw_at(&self, pos: usize) -> Result<Raw<'_>, BlockError> {
        let b = &self.data[..self.entries_end];
        let mut p = pos;
        let shared = get_varint(b, &mut p)? as usize;
        let unshared = get_varint(b, &mut p)? as usize;
        let vlen = get_varint(b, &mut p)? as usize;
        let kind = *b.get(p).ok_or(BlockError("an entry runs past the block"))?;
        p += 1;
        let key_end = p
            .checked_add(unshared)
            .filter(|&e| e <= b.len())
            .ok_or(BlockError("a key runs past the block"))?;
        let value_end = key_end
            .checked_add(vlen)
            .filter(|&e| e <= b.len())
            .ok_or(BlockError("a value runs past the block"))?;
        let value = match kind {
            KIND_PUT => Stored::Put(&b[key_end..value_end]),
            KIND_TOMBSTONE if vlen == 0 => Stored::Tombstone,
            KIND_TOMBSTONE => return Err(BlockError("a tombstone with a value")),
            _ => return Err(BlockError("an unknown entry kind")),
        };
        Ok(Raw {
            shared,
            suffix: &b[p..key_end],
            value,
            next: value_end,
        })
    }

    /// The full key of the restart entry `i`.
    fn restart_key(&self, i: usize) -> Result<&[u8], BlockError> {
        let raw = self.raw_at(self.restarts[i] as usize)?;
        if raw.shared != 0 {
            return Err(BlockError("a restart entry shares a prefix"));
        }
        Ok(raw.suffix)
    }

    /// Bytes of the payload.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// An iterator from the first entry.
    pub fn iter(&self) -> BlockIter<'_> {
        BlockIter {
            block: self,
            cursor: Cursor::default(),
        }
    }

    /// An iterator from the first entry whose key is `>= target`.
    pub fn seek(&self, target: &[u8]) -> Result<BlockIter<'_>, BlockError> {
        Ok(BlockIter {
            block: self,
            cursor: self.seek_cursor(target)?,
        })
    }

    /// A [`Cursor`] at the first entry whose key is `>= target`.
    pub fn seek_cursor(&self, target: &[u8]) -> Result<Cursor, BlockError> {
        // The last restart whose key is < target: every entry before it is
        // smaller, so the scan starts there.
        let (mut lo, mut hi) = (0usize, self.restarts.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.restart_key(mid)? < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start = lo.saturating_sub(1);
        let mut it = Cursor {
            pos: self.restarts.get(start).map_or(0, |&r| r as usize),
            key: Vec::new(),
            next_restart: start,
        };
        loop {
            let before = (it.pos, it.key.len(), it.next_restart);
            match it.next(self) {
                None => return Ok(it),
                Some(Err(e)) => return Err(e),
                Some(Ok((k, _))) if k.as_slice() >= target => {
                    // Step back to that entry: the iterator yields it next.
                    it.pos = before.0;
                    it.key.truncate(before.1);
                    it.next_restart = before.2;
                    // The previous key's bytes beyond `before.1` are gone,
                    // but the entry re-decodes against the kept prefix.
                    return Ok(it);
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Entries of a block in order: `(key, value)`, the key owned (it is
/// rebuilt from the shared prefix), the value borrowed from the block.
pub struct BlockIter<'a> {
    block: &'a Block,
    cursor: Cursor,
}

impl<'a> Iterator for BlockIter<'a> {
    type Item = Result<(Vec<u8>, Stored<'a>), BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.cursor.next(self.block)
    }
}

/// A position in a block, kept apart from the block so that an iterator
/// owning its block (an `Arc` from the cache) can decode one entry at a
/// time instead of the whole block up front.
#[derive(Debug, Default)]
pub struct Cursor {
    pos: usize,
    key: Vec<u8>,
    /// Index of the next restart point at or after `pos`.
    next_restart: usize,
}

impl Cursor {
    /// The entry at the cursor in `block` (the block it was made for), and
    /// the cursor moved past it; `None` at the end. After an error, `None`.
    pub fn next<'b>(
        &mut self,
        block: &'b Block,
    ) -> Option<Result<(Vec<u8>, Stored<'b>), BlockError>> {
        if self.pos >= block.entries_end {
            return None;
        }
        let at_restart = block
            .restarts
            .get(self.next_restart)
            .is_some_and(|&r| r as usize == self.pos);
        let raw = match block.raw_at(self.pos) {
            Ok(r) => r,
            Err(e) => {
                self.pos = block.entries_end;
                return Some(Err(e));
            }
        };
        if at_restart {
            self.next_restart += 1;
            if raw.shared != 0 {
                self.pos = block.entries_end;
                return Some(Err(BlockError("a restart entry shares a prefix")));
            }
        }
        if raw.shared > self.key.len() {
            self.pos = block.entries_end;
            return Some(Err(BlockError(
                "an entry shares more than the previous key",
            )));
        }
        self.key.truncate(raw.shared);
        self.key.extend_from_slice(raw.suffix);
        self.pos = raw.next;
        Some(Ok((self.key.clone(), raw.value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(entries: &[(Vec<u8>, Option<Vec<u8>>)], interval: usize) -> Block {
        let mut b = BlockBuilder::new(interval);
        for (k, v) in entries {
            b.add(
                k,
                match v {
                    Some(v) => Stored::Put(v),
                    None => Stored::Tombstone,
                },
            );
        }
        Block::new(b.finish()).unwrap()
    }

    fn owned(it: BlockIter<'_>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            (
                k,
                match v {
                    Stored::Put(v) => Some(v.to_vec()),
                    Stored::Tombstone => None,
                },
            )
        })
        .collect()
    }

    #[test]
    fn varints_round_trip_and_refuse_overflow() {
        for v in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos), Ok(v));
            assert_eq!(pos, out.len());
        }
        let mut pos = 0;
        assert!(get_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x1F], &mut pos).is_err());
        let mut pos = 0;
        assert!(get_varint(&[0x80, 0x80], &mut pos).is_err());
    }

    #[test]
    fn an_empty_block_has_no_entries() {
        let b = Block::new(BlockBuilder::new(16).finish()).unwrap();
        assert_eq!(b.iter().count(), 0);
        assert_eq!(b.seek(b"x").unwrap().count(), 0);
    }

    fn sorted_entries() -> impl Strategy<Value = Vec<(Vec<u8>, Option<Vec<u8>>)>> {
        proptest::collection::btree_map(
            proptest::collection::vec(0u8..4, 1..8),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)),
            0..60,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn blocks_round_trip_and_seek_finds_the_first_key_not_below(
            entries in sorted_entries(),
            interval in 1usize..20,
            target in proptest::collection::vec(0u8..4, 0..8),
        ) {
            let b = build(&entries, interval);
            prop_assert_eq!(owned(b.iter()), entries.clone());
            let want: Vec<_> = entries.iter().filter(|(k, _)| *k >= target).cloned().collect();
            prop_assert_eq!(owned(b.seek(&target).unwrap()), want);
        }

        #[test]
        fn damaged_payloads_are_errors_never_panics(
            entries in sorted_entries(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let mut b = BlockBuilder::new(4);
            for (k, v) in &entries {
                b.add(k, v.as_deref().map_or(Stored::Tombstone, Stored::Put));
            }
            let mut data = b.finish();
            for (at, x) in flips {
                let n = data.len();
                data[at % n] ^= x;
            }
            data.truncate(cut % (data.len() + 1));
            if let Ok(block) = Block::new(data) {
                for r in block.iter() { let _ = r; }
                let _ = block.seek(b"\x01\x02").map(|it| it.count());
            }
        }
    }
}
