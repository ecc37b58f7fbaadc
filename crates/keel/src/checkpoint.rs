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
//! `KEELCKPT`, version, flags, LSN, entry count, CRC32C), blocks of entries
//! each with its own CRC32C, and a 24-byte footer (magic `KEELEND\0`, entry
//! count, CRC32C). Every length is checked against the file before use.

use crate::error::{Error, Result};
use keel_storage::{OpenMode, Storage, StorageFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: [u8; 8] = *b"KEELCKPT";
const FOOTER_MAGIC: [u8; 8] = *b"KEELEND\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 40;
const FOOTER_LEN: usize = 24;
const BLOCK_HEADER_LEN: usize = 12;
/// Entries are grouped into blocks of about this many bytes.
const BLOCK_TARGET: usize = 64 << 10;
const SUFFIX: &str = ".ckpt";
const TMP_SUFFIX: &str = ".ckpt.tmp";

/// A value as the engine stores it.
pub type Bytes = Arc<[u8]>;
pub use crate::key::Key;
/// The engine's state: an immutable ordered map whose clone is O(1).
pub type Tree = imbl::OrdMap<Key, Bytes>;

/// The file name of the checkpoint at `lsn`.
pub fn checkpoint_file_name(lsn: u64) -> String {
    format!("checkpoint-{lsn:020}{SUFFIX}")
}

/// The LSN of a checkpoint file name, if it is one.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checkpoint files (LSN, path), newest first.
pub type CheckpointList = Vec<(u64, PathBuf)>;

/// Checkpoint files in `dir`, newest first, and leftover temp files.
pub fn list(storage: &dyn Storage, dir: &Path) -> Result<(CheckpointList, Vec<PathBuf>)> {
    let names = storage
        .list(dir)
        .map_err(|e| Error::io("listing the data directory", dir, e))?;
    let mut found = Vec::new();
    let mut temps = Vec::new();
    for name in names {
        if let Some(lsn) = parse_checkpoint_name(&name) {
            found.push((lsn, dir.join(name)));
        } else if name.starts_with("checkpoint-") && name.ends_with(TMP_SUFFIX) {
            temps.push(dir.join(name));
        }
    }
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok((found, temps))
}

/// What a checkpoint file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The state is that after applying every record up to this LSN.
    pub lsn: u64,
    /// Number of key-value entries.
    pub count: u64,
}

fn encode_header(h: CheckpointHeader) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.lsn.to_le_bytes());
    b[24..32].copy_from_slice(&h.count.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Parses and verifies a checkpoint header.
pub fn decode_header(b: &[u8]) -> Result<CheckpointHeader, String> {
    if b.len() < HEADER_LEN + FOOTER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than header and footer",
            b.len()
        ));
    }
    if b[0..8] != MAGIC {
        return Err("not a keel checkpoint (bad magic)".into());
    }
    let crc = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&b[0..32]) || b[36..40] != [0; 4] {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("unsupported checkpoint version {version}"));
    }
    let flags = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    if flags != 0 {
        return Err(format!(
            "unknown checkpoint flags {flags:#x} (written by a newer keel?)"
        ));
    }
    Ok(CheckpointHeader {
        lsn: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        count: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
    })
}

fn block_crc(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// Writes the checkpoint of `tree` at `lsn` into `dir`, crash-safely, and
/// returns its path. Runs on a snapshot, so writers go on meanwhile.
///
/// `bytes_per_sec` paces the writing (sleeping on this, the checkpoint's own
/// thread) so that a checkpoint never takes the disk away from the log's
/// fdatasyncs; `None` writes as fast as possible.
pub fn write(
    storage: &dyn Storage,
    dir: &Path,
    lsn: u64,
    tree: &Tree,
    bytes_per_sec: Option<u64>,
) -> Result<PathBuf> {
    let final_path = dir.join(checkpoint_file_name(lsn));
    // Temp file, fdatasync, rename, directory fsync (keel_storage::write_atomic).
    keel_storage::write_atomic(storage, &final_path, |file, _| {
        write_contents(file, lsn, tree, bytes_per_sec)
    })?;
    Ok(final_path)
}

/// Writes header, blocks and footer into `file`, syncing and pacing as it goes.
fn write_contents(
    file: &dyn StorageFile,
    lsn: u64,
    tree: &Tree,
    bytes_per_sec: Option<u64>,
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let header = encode_header(CheckpointHeader {
        lsn,
        count: tree.len() as u64,
    });
    file.write_at(&header, 0)?;
    let mut offset = HEADER_LEN as u64;
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

/// Reads and verifies a whole checkpoint file.
pub fn read(
    storage: &dyn Storage,
    path: &Path,
    max_key: usize,
    max_value: usize,
) -> Result<(CheckpointHeader, Tree), String> {
    let file = storage
        .open(path, OpenMode::Read)
        .map_err(|e| format!("cannot open: {e}"))?;
    let len = file.len().map_err(|e| format!("cannot read length: {e}"))?;
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, 0)
        .map_err(|e| format!("cannot read: {e}"))?;
    decode(&data, max_key, max_value)
}

/// Verifies and decodes checkpoint bytes.
pub fn decode(
    data: &[u8],
    max_key: usize,
    max_value: usize,
) -> Result<(CheckpointHeader, Tree), String> {
    let header = decode_header(data)?;
    let end = data.len() - FOOTER_LEN;
    let footer = &data[end..];
    if footer[0..8] != FOOTER_MAGIC {
        return Err("footer missing: the file is truncated".into());
    }
    let crc = u32::from_le_bytes(footer[16..20].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&footer[0..16]) || footer[20..24] != [0; 4] {
        return Err("footer checksum mismatch".into());
    }
    let footer_count = u64::from_le_bytes(footer[8..16].try_into().expect("8 bytes"));
    if footer_count != header.count {
        return Err(format!(
            "header says {} entries, footer {footer_count}",
            header.count
        ));
    }
    let mut tree = Tree::new();
    let mut pos = HEADER_LEN;
    let mut entries = 0u64;
    let mut prev: Option<Key> = None;
    while pos < end {
        if end - pos < BLOCK_HEADER_LEN {
            return Err(format!("block header at offset {pos} is cut short"));
        }
        let bh = &data[pos..pos + BLOCK_HEADER_LEN];
        let payload_len = u32::from_le_bytes(bh[0..4].try_into().expect("4 bytes")) as usize;
        let count = u32::from_le_bytes(bh[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bh[8..12].try_into().expect("4 bytes"));
        let start = pos + BLOCK_HEADER_LEN;
        if payload_len > end - start {
            return Err(format!(
                "block at offset {pos} claims {payload_len} bytes, past the footer"
            ));
        }
        let payload = &data[start..start + payload_len];
        if crc != block_crc(&bh[0..8], payload) {
            return Err(format!("block at offset {pos}: checksum mismatch"));
        }
        let mut p = 0;
        for _ in 0..count {
            if payload_len - p < 8 {
                return Err(format!("entry header cut short in block at offset {pos}"));
            }
            let kl = u32::from_le_bytes(payload[p..p + 4].try_into().expect("4 bytes")) as usize;
            let vl =
                u32::from_le_bytes(payload[p + 4..p + 8].try_into().expect("4 bytes")) as usize;
            p += 8;
            if kl == 0 || kl > max_key || vl > max_value || kl + vl > payload_len - p {
                return Err(format!(
                    "entry with key {kl} / value {vl} bytes does not fit in block at offset {pos}"
                ));
            }
            let key = Key::from(&payload[p..p + kl]);
            let value: Bytes = Arc::from(&payload[p + kl..p + kl + vl]);
            p += kl + vl;
            if prev.as_ref().is_some_and(|pk| *pk >= key) {
                return Err(format!("keys out of order in block at offset {pos}"));
            }
            prev = Some(key.clone());
            tree.insert(key, value);
            entries += 1;
        }
        if p != payload_len {
            return Err(format!(
                "{} stray bytes in block at offset {pos}",
                payload_len - p
            ));
        }
        pos = start + payload_len;
    }
    if entries != header.count {
        return Err(format!(
            "header says {} entries, found {entries}",
            header.count
        ));
    }
    Ok((header, tree))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::SimStorage;

    fn tree(n: usize, vlen: usize) -> Tree {
        (0..n)
            .map(|i| {
                let k = Key::from(format!("key-{i:06}").as_bytes());
                let v: Bytes = Arc::from(vec![i as u8; vlen].as_slice());
                (k, v)
            })
            .collect()
    }

    fn setup() -> (SimStorage, PathBuf) {
        let s = SimStorage::new(1);
        let dir = PathBuf::from("/db");
        s.create_dir_all(&dir).unwrap();
        (s, dir)
    }

    #[test]
    fn round_trips_including_multi_block_and_empty() {
        let (s, dir) = setup();
        for (n, vlen) in [(0, 0), (1, 0), (100, 10), (3000, 700)] {
            let t = tree(n, vlen);
            let path = write(&s, &dir, 42 + n as u64, &t, None).unwrap();
            let (h, back) = read(&s, &path, 1024, 1 << 20).unwrap();
            assert_eq!(
                h,
                CheckpointHeader {
                    lsn: 42 + n as u64,
                    count: n as u64
                }
            );
            assert_eq!(back, t);
        }
    }

    #[test]
    fn every_bit_flip_and_truncation_is_detected() {
        let (s, dir) = setup();
        let path = write(&s, &dir, 7, &tree(5, 3), None).unwrap();
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
        let path = write(&s, &dir, 9, &tree(10, 10), None).unwrap();
        let after = s.crash_with(keel_storage::CrashMode::DropUnsynced);
        let (h, t) = read(&after, &path, 1024, 1024).unwrap();
        assert_eq!((h.lsn, t.len()), (9, 10));
        assert!(!after
            .exists(&dir.join(format!("checkpoint-{:020}{TMP_SUFFIX}", 9)))
            .unwrap());
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_checkpoint_name(&checkpoint_file_name(123)), Some(123));
        assert_eq!(parse_checkpoint_name("checkpoint-1.ckpt"), None);
    }
}
