//! The fixed parts of a table file: the trailer after every block, the
//! properties block, and the footer that locates the filter, properties
//! and index blocks (docs/FORMAT.md, "Table files").

/// The footer's magic.
pub const MAGIC: &[u8; 8] = b"KEELSST\0";
/// The format version written and read.
pub const VERSION: u32 = 1;
/// Bytes of the footer, at the end of the file.
pub const FOOTER_LEN: usize = 56;
/// Bytes of the trailer after each block's payload.
pub const TRAILER_LEN: usize = 5;
/// Compression byte of a block stored as is.
pub const COMPRESSION_NONE: u8 = 0;
/// Compression byte of an LZ4 block (`ulen u32`, then LZ4 block format).
pub const COMPRESSION_LZ4: u8 = 1;
/// Compression byte of a zstd block (`ulen u32`, then one zstd frame).
pub const COMPRESSION_ZSTD: u8 = 2;

/// How data blocks are compressed when a table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4: fast to write and read, modest savings.
    #[default]
    Lz4,
    /// zstd at this level (1-19): smaller, slower to write.
    Zstd(i32),
}

impl Compression {
    /// The stored bytes and compression byte for `payload`: compressed if
    /// that saves at least an eighth, else as is (as RocksDB does).
    pub fn compress(self, payload: &[u8]) -> (Vec<u8>, u8) {
        let (packed, byte) = match self {
            Compression::None => return (payload.to_vec(), COMPRESSION_NONE),
            Compression::Lz4 => (lz4_flex::block::compress(payload), COMPRESSION_LZ4),
            Compression::Zstd(level) => match zstd::bulk::compress(payload, level) {
                Ok(p) => (p, COMPRESSION_ZSTD),
                Err(_) => return (payload.to_vec(), COMPRESSION_NONE),
            },
        };
        if packed.len() + 4 > payload.len() - payload.len() / 8 {
            return (payload.to_vec(), COMPRESSION_NONE);
        }
        let mut out = Vec::with_capacity(4 + packed.len());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&packed);
        (out, byte)
    }
}

/// The payload of a block stored with compression byte `byte`.
fn decompress(stored: Vec<u8>, byte: u8) -> Result<Vec<u8>, &'static str> {
    if byte == COMPRESSION_NONE {
        return Ok(stored);
    }
    let ulen = stored
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("a compressed block without its length")?;
    let packed = &stored[4..];
    let out = match byte {
        COMPRESSION_LZ4 => lz4_flex::block::decompress(packed, ulen)
            .map_err(|_| "the LZ4 data does not decompress")?,
        COMPRESSION_ZSTD => {
            zstd::bulk::decompress(packed, ulen).map_err(|_| "the zstd data does not decompress")?
        }
        _ => return Err("unknown compression"),
    };
    if out.len() != ulen {
        return Err("a compressed block decompresses to another length");
    }
    Ok(out)
}

/// The trailer for `payload`: the compression byte, then CRC32C of the
/// payload followed by that byte.
pub fn trailer(payload: &[u8], compression: u8) -> [u8; TRAILER_LEN] {
    let crc = crc32c::crc32c_append(crc32c::crc32c(payload), &[compression]);
    let mut t = [0u8; TRAILER_LEN];
    t[0] = compression;
    t[1..].copy_from_slice(&crc.to_le_bytes());
    t
}

/// Checks a block read with its trailer; the payload (decompressed), or
/// why not.
pub fn check_block(mut with_trailer: Vec<u8>) -> Result<Vec<u8>, &'static str> {
    let n = with_trailer
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or("shorter than its trailer")?;
    let t = &with_trailer[n..];
    let (compression, crc) = (
        t[0],
        u32::from_le_bytes(t[1..].try_into().expect("4 bytes")),
    );
    if crc != crc32c::crc32c_append(crc32c::crc32c(&with_trailer[..n]), &[compression]) {
        return Err("checksum mismatch");
    }
    with_trailer.truncate(n);
    decompress(with_trailer, compression)
}

/// Where a block's payload lies in the file (its trailer follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// Offset of the payload.
    pub offset: u64,
    /// Bytes of the payload (not counting the trailer).
    pub len: u32,
}

impl Handle {
    /// Offset just past the block's trailer.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len) + TRAILER_LEN as u64
    }

    /// 12 bytes: offset `u64`, len `u32` (an index entry's value).
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// The handle in an index entry's value.
    pub fn decode(b: &[u8]) -> Option<Handle> {
        if b.len() != 12 {
            return None;
        }
        Some(Handle {
            offset: u64::from_le_bytes(b[..8].try_into().ok()?),
            len: u32::from_le_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// The footer: where the filter, properties and index blocks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The bloom filter block.
    pub filter: Handle,
    /// The properties block.
    pub props: Handle,
    /// The index block.
    pub index: Handle,
}

impl Footer {
    /// The 56 footer bytes.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        // 12..16: flags, 0.
        b[16..24].copy_from_slice(&self.filter.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.props.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.index.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.filter.len.to_le_bytes());
        b[44..48].copy_from_slice(&self.props.len.to_le_bytes());
        b[48..52].copy_from_slice(&self.index.len.to_le_bytes());
        let crc = crc32c::crc32c(&b[..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The footer of a file of `file_len` bytes whose last 56 are `b`,
    /// checked: magic, version, flags, checksum, and that the blocks it
    /// names follow each other up to the footer.
    pub fn decode(b: &[u8; FOOTER_LEN], file_len: u64) -> Result<Footer, &'static str> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if &b[0..8] != MAGIC {
            return Err("no table magic (not a keel table, or cut short)");
        }
        if u32_at(52) != crc32c::crc32c(&b[..52]) {
            return Err("footer checksum mismatch");
        }
        if u32_at(8) != VERSION {
            return Err("unknown table version");
        }
        if u32_at(12) != 0 {
            return Err("reserved footer flags set");
        }
        let f = Footer {
            filter: Handle {
                offset: u64_at(16),
                len: u32_at(40),
            },
            props: Handle {
                offset: u64_at(24),
                len: u32_at(44),
            },
            index: Handle {
                offset: u64_at(32),
                len: u32_at(48),
            },
        };
        let adjacent = f
            .filter
            .offset
            .checked_add(u64::from(f.filter.len) + TRAILER_LEN as u64)
            == Some(f.props.offset)
            && f.props
                .offset
                .checked_add(u64::from(f.props.len) + TRAILER_LEN as u64)
                == Some(f.index.offset)
            && f.index
                .offset
                .checked_add(u64::from(f.index.len) + TRAILER_LEN as u64)
                == file_len.checked_sub(FOOTER_LEN as u64);
        if !adjacent {
            return Err("the filter, properties and index blocks do not end at the footer");
        }
        Ok(f)
    }
}

/// What a table holds, from its properties block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Entries (puts and tombstones).
    pub entries: u64,
    /// Of which tombstones.
    pub tombstones: u64,
    /// Data blocks.
    pub data_blocks: u64,
    /// Lowest LSN of a write in the table.
    pub min_lsn: u64,
    /// Highest LSN of a write in the table.
    pub max_lsn: u64,
    /// The first key (empty when there are no entries).
    pub smallest: Vec<u8>,
    /// The last key (empty when there are no entries).
    pub largest: Vec<u8>,
}

impl Properties {
    /// The payload: five `u64` (entries, tombstones, data_blocks, min_lsn,
    /// max_lsn), then `u32` length and bytes of the smallest key, then of
    /// the largest.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.smallest.len() + self.largest.len());
        for v in [
            self.entries,
            self.tombstones,
            self.data_blocks,
            self.min_lsn,
            self.max_lsn,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for k in [&self.smallest, &self.largest] {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(k);
        }
        b
    }

    /// The properties in `b`, which must hold exactly them.
    pub fn decode(b: &[u8]) -> Result<Properties, &'static str> {
        let bad = "the properties block is malformed";
        let u64_at = |i: usize| -> Result<u64, &'static str> {
            Ok(u64::from_le_bytes(
                b.get(i..i + 8).ok_or(bad)?.try_into().expect("8 bytes"),
            ))
        };
        let mut pos = 40;
        let mut key = || -> Result<Vec<u8>, &'static str> {
            let len =
                u32::from_le_bytes(b.get(pos..pos + 4).ok_or(bad)?.try_into().expect("4")) as usize;
            let k = b.get(pos + 4..pos + 4 + len).ok_or(bad)?.to_vec();
            pos += 4 + len;
            Ok(k)
        };
        let (smallest, largest) = (key()?, key()?);
        if pos != b.len() {
            return Err(bad);
        }
        let p = Properties {
            entries: u64_at(0)?,
            tombstones: u64_at(8)?,
            data_blocks: u64_at(16)?,
            min_lsn: u64_at(24)?,
            max_lsn: u64_at(32)?,
            smallest,
            largest,
        };
        if p.tombstones > p.entries
            || p.min_lsn > p.max_lsn
            || (p.entries > 0 && p.smallest > p.largest)
        {
            return Err("the properties contradict themselves");
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footers_and_properties_round_trip_and_refuse_damage() {
        let f = Footer {
            filter: Handle {
                offset: 100,
                len: 10,
            },
            props: Handle {
                offset: 115,
                len: 60,
            },
            index: Handle {
                offset: 180,
                len: 20,
            },
        };
        let b = f.encode();
        assert_eq!(Footer::decode(&b, 205 + 56), Ok(f));
        assert!(
            Footer::decode(&b, 205 + 57).is_err(),
            "blocks must end at the footer"
        );
        for i in 0..FOOTER_LEN * 8 {
            let mut d = b;
            d[i / 8] ^= 1 << (i % 8);
            assert!(Footer::decode(&d, 205 + 56).is_err(), "bit {i}");
        }
        let p = Properties {
            entries: 3,
            tombstones: 1,
            data_blocks: 1,
            min_lsn: 5,
            max_lsn: 9,
            smallest: b"a".to_vec(),
            largest: b"zz".to_vec(),
        };
        assert_eq!(Properties::decode(&p.encode()), Ok(p.clone()));
        let mut long = p.encode();
        long.push(0);
        assert!(Properties::decode(&long).is_err());
        let enc = p.encode();
        assert!(Properties::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn compressed_blocks_round_trip_and_incompressible_ones_are_stored_as_is() {
        let text: Vec<u8> = (0..4000u32)
            .flat_map(|i| format!("user:{i:06} {{\"name\":\"n{}\"}}", i % 13).into_bytes())
            .collect();
        let mut noise = vec![0u8; 4000];
        keel_storage::rng::SplitMix64::new(1).fill(&mut noise);
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            for payload in [&text, &noise] {
                let (stored, byte) = c.compress(payload);
                let mut with_trailer = stored.clone();
                with_trailer.extend_from_slice(&trailer(&stored, byte));
                assert_eq!(check_block(with_trailer).as_ref(), Ok(payload), "{c:?}");
                if payload == &noise || c == Compression::None {
                    assert_eq!(byte, COMPRESSION_NONE, "{c:?}");
                } else {
                    assert!(stored.len() < text.len() / 2, "{c:?}: {}", stored.len());
                }
            }
        }
        let (mut stored, byte) = Compression::Lz4.compress(&text);
        stored[0] ^= 1; // the length, under the checksum
        let mut with_trailer = stored.clone();
        with_trailer.extend_from_slice(&trailer(&stored, byte));
        assert!(check_block(with_trailer).is_err());
    }

    #[test]
    fn a_block_trailer_catches_every_flipped_bit() {
        let payload = b"some block".to_vec();
        let mut stored = payload.clone();
        stored.extend_from_slice(&trailer(&payload, COMPRESSION_NONE));
        assert_eq!(check_block(stored.clone()), Ok(payload));
        for i in 0..stored.len() * 8 {
            let mut d = stored.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert!(check_block(d).is_err(), "bit {i}");
        }
    }
}
