//! Checkpoints: the whole key-value state at one LSN, in a file of its own.
//!
//! Written crash-safely (docs/DESIGN.md, rule 4) by `keel_storage::write_atomic`:
//! into `checkpoint-N.ckpt.tmp`, fdatasynced, renamed to `checkpoint-N.ckpt`,
//! then the directory fsynced.
//! Only after that may the caller delete older checkpoints and the log they
//! needed. A file with the final name is therefore complete and durable; a
//! `.tmp` file is an interrupted checkpoint and is removed at open.
//!
//! Layout (little-endian; docs/FORMAT.md): a 40-byte header (magic
//! `KEELCKPT`, version, flags, LSN, entry count, CRC32C), the application
//! metadata as of the LSN (`crate::metadata`; only if flags bit 0 is set),
//! blocks of entries each with its own CRC32C, and a 24-byte footer (magic
//! `KEELEND\0`, entry count, CRC32C). Every length is checked against the
//! file before use.

use crate::error::Result;
use crate::metadata::Metadata;
use keel_storage::{OpenMode, Storage, StorageFile};
use std::path::Path;
use std::sync::Arc;

const MAGIC: [u8; 8] = *b"KEELCKPT";
const FOOTER_MAGIC: [u8; 8] = *b"KEELEND\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 40;
const FOOTER_LEN: usize = 24;
const BLOCK_HEADER_LEN: usize = 12;
/// Flags bit 0: a metadata block follows the header.
const FLAG_METADATA: u32 = 1;
/// The metadata block's `len u32` and `crc u32`.
const METADATA_HEADER_LEN: usize = 8;
/// Entries are grouped into blocks of about this many bytes.
const BLOCK_TARGET: usize = 64 << 10;

/// A value as the engine stores it.
pub type Bytes = Arc<[u8]>;
pub use crate::key::Key;
/// The engine's state: an immutable ordered map whose clone is O(1).
pub type Tree = imbl::OrdMap<Key, Bytes>;

/// What a checkpoint file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The state is that after applying every record up to this LSN.
    pub lsn: u64,
    /// Number of key-value entries.
    pub count: u64,
    /// Whether a metadata block follows the header (flags bit 0).
    pub metadata: bool,
}

fn encode_header(h: CheckpointHeader) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let flags = if h.metadata { FLAG_METADATA } else { 0 };
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b[16..24].copy_from_slice(&h.lsn.to_le_bytes());
    b[24..32].copy_from_slice(&h.count.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a checkpoint file cannot be used. Every variant names the offset
/// or the numbers that disagree, so `keel verify` can say exactly where.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Unreadable(Arc<std::io::Error>),
    /// Shorter than a header and a footer.
    #[error("file is {0} bytes, shorter than header and footer")]
    TooShort(usize),
    /// The first 8 bytes are not `KEELCKPT`.
    #[error("not a keel checkpoint (bad magic)")]
    BadMagic,
    /// The header's checksum (or its reserved bytes) does not verify.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// A format version this keel does not read.
    #[error("unsupported checkpoint version {0}")]
    UnsupportedVersion(u32),
    /// Flags this keel does not know.
    #[error("unknown checkpoint flags {0:#x} (written by a newer keel?)")]
    UnknownFlags(u32),
    /// The footer magic is missing.
    #[error("footer missing: the file is truncated")]
    FooterMissing,
    /// The footer's checksum (or its reserved bytes) does not verify.
    #[error("footer checksum mismatch")]
    FooterChecksum,
    /// Header and footer disagree on the entry count.
    #[error("header says {header} entries, footer {footer}")]
    FooterCount {
        /// The header's count.
        header: u64,
        /// The footer's count.
        footer: u64,
    },
    /// A block header runs into the footer.
    #[error("block header at offset {0} is cut short")]
    BlockHeaderCutShort(usize),
    /// A block claims more bytes than are left before the footer.
    #[error("block at offset {offset} claims {len} bytes, past the footer")]
    BlockPastFooter {
        /// The block's offset.
        offset: usize,
        /// The length it claims.
        len: usize,
    },
    /// A block's checksum does not verify.
    #[error("block at offset {0}: checksum mismatch")]
    BlockChecksum(usize),
    /// An entry does not fit in its block, or exceeds the key/value limits.
    #[error("entry with key {key_len} / value {value_len} bytes does not fit in block at offset {block}")]
    BadEntry {
        /// The block's offset.
        block: usize,
        /// The key length the entry claims.
        key_len: usize,
        /// The value length the entry claims.
        value_len: usize,
    },
    /// Keys are not in strictly increasing order.
    #[error("keys out of order in block at offset {0}")]
    KeysOutOfOrder(usize),
    /// Bytes left in a block after its last entry.
    #[error("{stray} stray bytes in block at offset {block}")]
    StrayBytes {
        /// The block's offset.
        block: usize,
        /// How many bytes.
        stray: usize,
    },
    /// The metadata block is cut short, fails its checksum or does not
    /// decode.
    #[error("metadata block after the header: {0}")]
    BadMetadata(String),
    /// The blocks hold another number of entries than the header says.
    #[error("header says {header} entries, found {found}")]
    EntryCount {
        /// The header's count.
        header: u64,
        /// Entries found.
        found: u64,
    },
    /// The file's name and its header disagree on the LSN.
    #[error("its name says LSN {name}, its header {header}")]
    LsnMismatch {
        /// The LSN in the file name.
        name: u64,
        /// The LSN in the header.
        header: u64,
    },
}

/// Little-endian integers at fixed offsets of a slice whose length the
/// caller has checked: indexing cannot fail.
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// Parses and verifies a checkpoint header (the first 40 bytes of a file of
/// at least 64: header and footer).
pub fn decode_header(b: &[u8]) -> Result<CheckpointHeader, CheckpointError> {
    if b.len() < HEADER_LEN + FOOTER_LEN {
        return Err(CheckpointError::TooShort(b.len()));
    }
    if b[0..8] != MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    if u32_at(b, 32) != crc32c::crc32c(&b[0..32]) || b[36..40] != [0; 4] {
        return Err(CheckpointError::HeaderChecksum);
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(CheckpointError::UnsupportedVersion(version));
    }
    let flags = u32_at(b, 12);
    if flags & !FLAG_METADATA != 0 {
        return Err(CheckpointError::UnknownFlags(flags));
    }
    Ok(CheckpointHeader {
        lsn: u64_at(b, 16),
        count: u64_at(b, 24),
        metadata: flags & FLAG_METADATA != 0,
    })
}

fn block_crc(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// Writes the checkpoint of `tree` and `metadata` at `lsn` to `path` (the
/// name [`DataDir::checkpoint`](crate::layout::DataDir::checkpoint) gives
/// it), crash-safely. Runs on a snapshot, so writers go on meanwhile.
///
/// `bytes_per_sec` paces the writing (sleeping on this, the checkpoint's own
/// thread) so that a checkpoint never takes the disk away from the log's
/// fdatasyncs; `None` writes as fast as possible.
pub fn write(
    storage: &dyn Storage,
    path: &Path,
    lsn: u64,
    tree: &Tree,
    metadata: &Metadata,
    bytes_per_sec: Option<u64>,
) -> Result<()> {
    // Temp file, fdatasync, rename, directory fsync (keel_storage::write_atomic).
    keel_storage::write_atomic(storage, path, |file, _| {
        write_contents(file, lsn, tree, metadata, bytes_per_sec)
    })?;
    Ok(())
}

/// Writes header, blocks and footer into `file`, syncing and pacing as it goes.
fn write_contents(
    file: &dyn StorageFile,
    lsn: u64,
    tree: &Tree,
    metadata: &Metadata,
    bytes_per_sec: Option<u64>,
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let header = encode_header(CheckpointHeader {
        lsn,
        count: tree.len() as u64,
        metadata: !metadata.is_empty(),
    });
    file.write_at(&header, 0)?;
    let mut offset = HEADER_LEN as u64;
    if !metadata.is_empty() {
        let block = encode_metadata_block(metadata);
        file.write_at(&block, offset)?;
        offset += block.len() as u64;
    }
    let mut block = Vec::with_capacity(BLOCK_TARGET + 1024);
    let mut in_block = 0u32;
    let mut flush = |block: &mut Vec<u8>, in_block: &mut u32| -> std::io::Result<()> {
        if *in_block == 0 {
            return Ok(());
        }
        let payload_len = (block.len() - BLOCK_HEADER_LEN) as u32;
        block[0..4].copy_from_slice(&payload_len.to_le_bytes());
        block[4..8].copy_from_slice(&in_block.to_le_bytes());
        let crc = block_crc(&block[0..8], &block[BLOCK_HEADER_LEN..]);
        block[8..12].copy_from_slice(&crc.to_le_bytes());
        file.write_at(block, offset)?;
        offset += block.len() as u64;
        // fdatasync every block (BLOCK_TARGET, 64 KiB), so the disk never
        // holds a large burst of checkpoint data in front of the log's small
        // fdatasyncs: one big fsync at the end stalled writes for ~10 ms.
        file.sync_data()?;
        if let Some(rate) = bytes_per_sec.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(offset as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        block.clear();
        *in_block = 0;
        Ok(())
    };
    for (k, v) in tree.iter() {
        if block.is_empty() {
            block.extend_from_slice(&[0u8; BLOCK_HEADER_LEN]);
        }
        block.extend_from_slice(&(k.len() as u32).to_le_bytes());
        block.extend_from_slice(&(v.len() as u32).to_le_bytes());
        block.extend_from_slice(k);
        block.extend_from_slice(v);
        in_block += 1;
        if block.len() >= BLOCK_TARGET {
            flush(&mut block, &mut in_block)?;
        }
    }
    flush(&mut block, &mut in_block)?;
    let mut footer = [0u8; FOOTER_LEN];
    footer[0..8].copy_from_slice(&FOOTER_MAGIC);
    footer[8..16].copy_from_slice(&(tree.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c(&footer[0..16]);
    footer[16..20].copy_from_slice(&crc.to_le_bytes());
    file.write_at(&footer, offset)
}

/// `len u32`, `crc u32` (CRC32C of the length's bytes, then the
/// entries), the entries.
fn encode_metadata_block(metadata: &Metadata) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_HEADER_LEN];
    crate::metadata::encode_into(&mut b, metadata);
    let len = (b.len() - METADATA_HEADER_LEN) as u32;
    b[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = block_crc(&b[0..4], &b[METADATA_HEADER_LEN..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes the metadata block at `pos` (before `end`, the footer);
/// returns it and where the entry blocks start.
fn decode_metadata_block(
    data: &[u8],
    pos: usize,
    end: usize,
) -> Result<(Metadata, usize), CheckpointError> {
    let bad = |why: String| CheckpointError::BadMetadata(why);
    if end - pos < METADATA_HEADER_LEN {
        return Err(bad("its header is cut short".into()));
    }
    let len = u32_at(data, pos) as usize;
    let start = pos + METADATA_HEADER_LEN;
    if len > end - start {
        return Err(bad(format!("it claims {len} bytes, past the footer")));
    }
    let entries = &data[start..start + len];
    if u32_at(data, pos + 4) != block_crc(&data[pos..pos + 4], entries) {
        return Err(bad("checksum mismatch".into()));
    }
    let metadata = crate::metadata::decode_all(entries).map_err(|e| bad(e.to_string()))?;
    if metadata.is_empty() {
        return Err(bad("the flag is set but it holds nothing".into()));
    }
    Ok((metadata, start + len))
}

/// Reads and verifies a whole checkpoint file: its header, the keys and
/// the application metadata.
pub fn read(
    storage: &dyn Storage,
    path: &Path,
    max_key: usize,
    max_value: usize,
) -> Result<(CheckpointHeader, Tree, Metadata), CheckpointError> {
    let unreadable = |e| CheckpointError::Unreadable(Arc::new(e));
    let file = storage.open(path, OpenMode::Read).map_err(unreadable)?;
    let len = file.len().map_err(unreadable)?;
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, 0).map_err(unreadable)?;
    decode(&data, max_key, max_value)
}

/// Verifies and decodes checkpoint bytes.
pub fn decode(
    data: &[u8],
    max_key: usize,
    max_value: usize,
) -> Result<(CheckpointHeader, Tree, Metadata), CheckpointError> {
    let header = decode_header(data)?;
    let end = data.len() - FOOTER_LEN;
    let footer = &data[end..];
    if footer[0..8] != FOOTER_MAGIC {
        return Err(CheckpointError::FooterMissing);
    }
    if u32_at(footer, 16) != crc32c::crc32c(&footer[0..16]) || footer[20..24] != [0; 4] {
        return Err(CheckpointError::FooterChecksum);
    }
    let footer_count = u64_at(footer, 8);
    if footer_count != header.count {
        return Err(CheckpointError::FooterCount {
            header: header.count,
            footer: footer_count,
        });
    }
    let (metadata, mut pos) = if header.metadata {
        decode_metadata_block(data, HEADER_LEN, end)?
    } else {
        (Metadata::new(), HEADER_LEN)
    };
    let mut tree = Tree::new();
    let mut prev: Option<Key> = None;
    while pos < end {
        pos = decode_block(data, pos, end, (max_key, max_value), &mut prev, &mut tree)?;
    }
    if tree.len() as u64 != header.count {
        return Err(CheckpointError::EntryCount {
            header: header.count,
            found: tree.len() as u64,
        });
    }
    Ok((header, tree, metadata))
}

/// Decodes the block at `pos` (blocks end at `end`, the footer) into
/// `tree`, checking order against `prev`; returns where the next block starts.
fn decode_block(
    data: &[u8],
    pos: usize,
    end: usize,
    (max_key, max_value): (usize, usize),
    prev: &mut Option<Key>,
    tree: &mut Tree,
) -> Result<usize, CheckpointError> {
    if end - pos < BLOCK_HEADER_LEN {
        return Err(CheckpointError::BlockHeaderCutShort(pos));
    }
    let bh = &data[pos..pos + BLOCK_HEADER_LEN];
    let payload_len = u32_at(bh, 0) as usize;
    let count = u32_at(bh, 4);
    let start = pos + BLOCK_HEADER_LEN;
    if payload_len > end - start {
        return Err(CheckpointError::BlockPastFooter {
            offset: pos,
            len: payload_len,
        });
    }
    let payload = &data[start..start + payload_len];
    if u32_at(bh, 8) != block_crc(&bh[0..8], payload) {
        return Err(CheckpointError::BlockChecksum(pos));
    }
    let mut p = 0;
    for _ in 0..count {
        let bad = |key_len, value_len| CheckpointError::BadEntry {
            block: pos,
            key_len,
            value_len,
        };
        if payload_len - p < 8 {
            return Err(bad(0, 0));
        }
        let kl = u32_at(payload, p) as usize;
        let vl = u32_at(payload, p + 4) as usize;
        p += 8;
        if kl == 0 || kl > max_key || vl > max_value || kl + vl > payload_len - p {
            return Err(bad(kl, vl));
        }
        let key = Key::from(&payload[p..p + kl]);
        let value: Bytes = Arc::from(&payload[p + kl..p + kl + vl]);
        p += kl + vl;
        if prev.as_ref().is_some_and(|pk| *pk >= key) {
            return Err(CheckpointError::KeysOutOfOrder(pos));
        }
        *prev = Some(key.clone());
        tree.insert(key, value);
    }
    if p != payload_len {
        return Err(CheckpointError::StrayBytes {
            block: pos,
            stray: payload_len - p,
        });
    }
    Ok(start + payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::DataDir;
    use keel_storage::SimStorage;
    use std::path::PathBuf;

    fn tree(n: usize, vlen: usize) -> Tree {
        (0..n)
            .map(|i| {
                let k = Key::from(format!("key-{i:06}").as_bytes());
                let v: Bytes = Arc::from(vec![i as u8; vlen].as_slice());
                (k, v)
            })
            .collect()
    }

    fn setup() -> (SimStorage, DataDir) {
        let s = SimStorage::new(1);
        let dir = DataDir::new("/db");
        keel_storage::create_dir_durable(&s, dir.root()).unwrap();
        (s, dir)
    }

    fn write_at(s: &SimStorage, dir: &DataDir, lsn: u64, t: &Tree) -> PathBuf {
        write_with(s, dir, lsn, t, &Metadata::new())
    }

    fn write_with(s: &SimStorage, dir: &DataDir, lsn: u64, t: &Tree, m: &Metadata) -> PathBuf {
        let path = dir.checkpoint(lsn);
        write(s, &path, lsn, t, m, None).unwrap();
        path
    }

    fn metadata() -> Metadata {
        Metadata::from([
            (b"raft.applied".to_vec(), vec![7; 26]),
            (b"raft.membership".to_vec(), b"{}".to_vec()),
        ])
    }

    #[test]
    fn round_trips_including_multi_block_and_empty() {
        let (s, dir) = setup();
        for (n, vlen) in [(0, 0), (1, 0), (100, 10), (3000, 700)] {
            for m in [Metadata::new(), metadata()] {
                let t = tree(n, vlen);
                let path = write_with(&s, &dir, 42 + n as u64, &t, &m);
                let (h, back, back_m) = read(&s, &path, 1024, 1 << 20).unwrap();
                assert_eq!(
                    h,
                    CheckpointHeader {
                        lsn: 42 + n as u64,
                        count: n as u64,
                        metadata: !m.is_empty(),
                    }
                );
                assert_eq!((back, back_m), (t, m));
            }
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_detected() {
        let (s, dir) = setup();
        let path = write_with(&s, &dir, 7, &tree(5, 3), &metadata());
        let data = s.read_file(&path).unwrap();
        let mut flips = 0;
        for bit in 0..data.len() * 8 {
            let mut d = data.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&d, 1024, 1024).is_err(),
                "flip of bit {bit} accepted"
            );
            flips += 1;
        }
        for cut in 0..data.len() {
            assert!(
                decode(&data[..cut], 1024, 1024).is_err(),
                "cut at {cut} accepted"
            );
        }
        println!(
            "checkpoint: {flips} bit flips and {} truncations detected",
            data.len()
        );
    }

    #[test]
    fn the_named_file_appears_only_once_complete_and_durable() {
        let (s, dir) = setup();
        let path = write_at(&s, &dir, 9, &tree(10, 10));
        let after = s.crash_with(keel_storage::CrashMode::DropUnsynced);
        let (h, t, _) = read(&after, &path, 1024, 1024).unwrap();
        assert_eq!((h.lsn, t.len()), (9, 10));
        assert!(!after.exists(&keel_storage::temp_path(&path)).unwrap());
    }
}
