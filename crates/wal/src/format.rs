//! The byte layout of segment files: the segment header and records.
//! Pure functions, no I/O; docs/FORMAT.md is the normative description.
//!
//! Two record layouts exist, chosen by the segment header's version: version
//! 1 (24-byte record headers: no time, no compression), still read, and
//! version 2 (40-byte record headers with the commit time, the compression
//! and the raw length), the only one written.
//!
//! Invariants:
//! - An all-zero record header is never a valid record (LSNs start at 1 and
//!   the checksum is seeded with the segment's salt), so zeroed, preallocated
//!   space reads as "no record here".
//! - A length field (stored and, in version 2, raw) is checked against
//!   [`MAX_RECORD_LEN_LIMIT`], the caller's maximum and the bytes actually
//!   available before anything is allocated or read for it.
//! - A record's checksum is seeded with its segment's random salt, so bytes
//!   from another segment or an earlier life of a reused file never verify.
//! - The checksum covers the stored bytes (compressed, if they are), so a
//!   damaged compressed record is caught before it is decompressed.
//! - A segment may carry one zstd dictionary, in a block after its header
//!   with its own checksum; records compressed with it say so (compression
//!   byte 3), so they are read with exactly the dictionary they were
//!   written with, and a segment is readable on its own (archived, backed
//!   up, restored) with nothing from outside it.

use crate::compression::Compression;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";
/// Segment format version written by this code.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest segment format version this code reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here unless a
/// dictionary block follows it ([`SegmentHeader::records_start`]).
pub const SEGMENT_HEADER_LEN: usize = 48;
/// Header flag (version 2): a zstd dictionary block follows the header.
pub const FLAG_DICTIONARY: u32 = 1;
/// Bytes before the dictionary itself in its block: length and checksum.
pub const DICTIONARY_BLOCK_HEADER_LEN: usize = 8;
/// The largest dictionary a segment may carry.
pub const MAX_DICTIONARY_LEN: u32 = 64 * 1024;
/// Size of a record header in version 2 segments.
pub const RECORD_HEADER_LEN: usize = 40;
/// Size of a record header in version 1 segments.
pub const RECORD_HEADER_LEN_V1: usize = 24;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// No record payload may exceed this, whatever the options say (the length
/// field is 32 bits and must leave room for the header and padding).
pub const MAX_RECORD_LEN_LIMIT: u32 = u32::MAX - 64;

/// The decoded header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version of this segment's records.
    pub version: u32,
    /// Identifies the log; every segment of one log carries the same id.
    pub log_id: u64,
    /// LSN of the first record in this segment.
    pub first_lsn: u64,
    /// Random per segment; seeds every record checksum in it.
    pub salt: u64,
    /// The zstd dictionary after the header, if the segment has one.
    pub dictionary: Option<DictionaryRef>,
}

/// Where a segment's dictionary is and what it must check as: its bytes
/// are `segment[56..56 + len]` ([`SegmentHeader::dictionary_in`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictionaryRef {
    /// Bytes of the dictionary (1 to [`MAX_DICTIONARY_LEN`]).
    pub len: u32,
    /// CRC32C of its length and bytes, seeded with the segment's salt.
    pub crc: u32,
}

/// Where the first record of a segment starts when it carries a
/// dictionary of `dictionary_len` bytes (0: none).
pub fn records_start(dictionary_len: usize) -> usize {
    if dictionary_len == 0 {
        SEGMENT_HEADER_LEN
    } else {
        (SEGMENT_HEADER_LEN + DICTIONARY_BLOCK_HEADER_LEN + dictionary_len)
            .next_multiple_of(RECORD_ALIGN)
    }
}

/// The checksum of a dictionary block: its length (4 bytes, little
/// endian) and bytes, seeded like record checksums with the salt.
pub fn dictionary_crc(salt: u64, dictionary: &[u8]) -> u32 {
    let len = dictionary.len() as u32;
    record_crc(salt, &len.to_le_bytes(), dictionary)
}

/// Why a segment header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    #[error("the file is shorter than a segment header")]
    Short,
    /// All zeros: the file was created but its header never written.
    #[error("the header is all zeros (never written)")]
    Zeroed,
    /// Not a keel segment.
    #[error("not a keel segment (bad magic)")]
    BadMagic,
    /// Written by a newer format.
    #[error(
        "unsupported segment format version {0} (this keel reads versions 1 and 2: upgrade keel)"
    )]
    UnsupportedVersion(u32),
    /// Reserved flag bits are set: written by a newer writer.
    #[error("unknown header flags {0:#x} (written by a newer keel?)")]
    UnknownFlags(u32),
    /// The dictionary block is cut short, too long, not padded with zeros
    /// or fails its checksum.
    #[error("the segment's zstd dictionary is damaged (length, padding or checksum)")]
    BadDictionary,
    /// The header's checksum does not match.
    #[error("header checksum mismatch")]
    BadChecksum,
}

impl SegmentHeader {
    /// The header of a new segment, in the version this code writes.
    pub fn new(log_id: u64, first_lsn: u64, salt: u64) -> SegmentHeader {
        SegmentHeader {
            version: FORMAT_VERSION,
            log_id,
            first_lsn,
            salt,
            dictionary: None,
        }
    }

    /// This header, announcing `dictionary` after it (write the block with
    /// [`encode_with_dictionary`](Self::encode_with_dictionary)).
    pub fn with_dictionary(self, dictionary: &[u8]) -> SegmentHeader {
        SegmentHeader {
            dictionary: Some(DictionaryRef {
                len: dictionary.len() as u32,
                crc: dictionary_crc(self.salt, dictionary),
            }),
            ..self
        }
    }

    /// Where the first record starts: after the header and, if there is
    /// one, the dictionary block padded to a multiple of 8.
    pub fn records_start(&self) -> usize {
        records_start(self.dictionary.map_or(0, |d| d.len as usize))
    }

    /// The dictionary's bytes in `segment` (the file's bytes from offset
    /// 0, which [`decode`](Self::decode) checked), empty if it has none.
    pub fn dictionary_in<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        match self.dictionary {
            None => &[],
            Some(d) => {
                let start = SEGMENT_HEADER_LEN + DICTIONARY_BLOCK_HEADER_LEN;
                segment.get(start..start + d.len as usize).unwrap_or(&[])
            }
        }
    }

    /// The size of a record header in this segment.
    pub fn record_header_len(&self) -> usize {
        record_header_len(self.version)
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.dictionary.is_some() {
            FLAG_DICTIONARY
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[32..40].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        // 44..48: zero padding so records start 8-aligned.
        b
    }

    /// Everything before the first record: the header, then, if it has a
    /// dictionary, its block (length, checksum, `dictionary`, zeros to a
    /// multiple of 8). `dictionary` must be what
    /// [`with_dictionary`](Self::with_dictionary) was given.
    pub fn encode_with_dictionary(&self, dictionary: &[u8]) -> Vec<u8> {
        let mut b = self.encode().to_vec();
        if let Some(d) = self.dictionary {
            debug_assert_eq!(d.len as usize, dictionary.len());
            b.extend_from_slice(&d.len.to_le_bytes());
            b.extend_from_slice(&d.crc.to_le_bytes());
            b.extend_from_slice(dictionary);
            b.resize(self.records_start(), 0);
        }
        b
    }

    /// Parses and verifies a header from the segment's first bytes, and
    /// its dictionary block if the header announces one (so `b` must hold
    /// everything up to [`records_start`](Self::records_start)).
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let whole = b;
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(if b.iter().all(|&x| x == 0) {
                HeaderError::Zeroed
            } else {
                HeaderError::Short
            });
        }
        let b = &b[..SEGMENT_HEADER_LEN];
        if b.iter().all(|&x| x == 0) {
            return Err(HeaderError::Zeroed);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let crc = le32(&b[40..44]);
        if crc != crc32c::crc32c(&b[0..40]) {
            return Err(HeaderError::BadChecksum);
        }
        if b[44..48] != [0u8; 4] {
            // Padding is written as zeros and not covered by the checksum.
            return Err(HeaderError::BadChecksum);
        }
        let version = le32(&b[8..12]);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = le32(&b[12..16]);
        let known = if version >= 2 { FLAG_DICTIONARY } else { 0 };
        if flags & !known != 0 {
            // A flag no version defines could change what the bytes mean:
            // refuse rather than guess (found by fuzzing).
            return Err(HeaderError::UnknownFlags(flags));
        }
        let header = SegmentHeader {
            version,
            log_id: le64(&b[16..24]),
            first_lsn: le64(&b[24..32]),
            salt: le64(&b[32..40]),
            dictionary: None,
        };
        if flags & FLAG_DICTIONARY == 0 {
            return Ok(header);
        }
        // The header and its dictionary are written and fdatasynced
        // before the segment gets its name, so a short or damaged block
        // is damage, never a tear.
        let block = SEGMENT_HEADER_LEN + DICTIONARY_BLOCK_HEADER_LEN;
        if whole.len() < block {
            return Err(HeaderError::BadDictionary);
        }
        let len = le32(&whole[SEGMENT_HEADER_LEN..]);
        let crc = le32(&whole[SEGMENT_HEADER_LEN + 4..]);
        if len == 0 || len > MAX_DICTIONARY_LEN {
            return Err(HeaderError::BadDictionary);
        }
        let header = SegmentHeader {
            dictionary: Some(DictionaryRef { len, crc }),
            ..header
        };
        let end = block + len as usize;
        let start = header.records_start();
        if whole.len() < start
            || dictionary_crc(header.salt, &whole[block..end]) != crc
            || whole[end..start].iter().any(|&x| x != 0)
        {
            return Err(HeaderError::BadDictionary);
        }
        Ok(header)
    }
}

/// The size of a record header in a segment of `version`.
pub fn record_header_len(version: u32) -> usize {
    if version == 1 {
        RECORD_HEADER_LEN_V1
    } else {
        RECORD_HEADER_LEN
    }
}

/// Little-endian integers from slices the callers cut at a fixed length
/// (`b[8..16]`): the length always matches, so the copies cannot fail and
/// no `expect` is needed.
fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Bytes a version 2 record with `stored` payload bytes takes, padding
/// included.
pub fn record_size(stored: usize) -> usize {
    record_size_in(FORMAT_VERSION, stored)
}

/// Bytes a record of a segment of `version` takes, padding included.
pub fn record_size_in(version: u32, stored: usize) -> usize {
    (record_header_len(version) + stored).next_multiple_of(RECORD_ALIGN)
}

fn record_crc(salt: u64, header_tail: &[u8], payload: &[u8]) -> u32 {
    let seed = crc32c::crc32c(&salt.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(seed, header_tail), payload)
}

/// What a version 2 record header says besides its length and checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// The record's log sequence number.
    pub lsn: u64,
    /// Every record up to this LSN was durable when this one was written.
    pub durable_lsn: u64,
    /// Commit time, microseconds since the Unix epoch (0: not recorded,
    /// as in version 1 segments).
    pub time_us: u64,
    /// How the payload is stored.
    pub compression: Compression,
    /// Compressed (zstd) with its segment's dictionary: compression byte 3.
    pub dictionary: bool,
    /// The payload's length once decompressed (the stored length when
    /// stored as is).
    pub raw_len: u32,
}

/// Appends one version 2 record (header, stored payload, zero padding) to
/// `out`.
///
/// `meta.durable_lsn` is the writer's promise that every record with an
/// LSN up to it had been made durable before this record was written;
/// recovery uses it to tell damage to synced records from a torn,
/// never-acknowledged tail.
pub fn encode_record(out: &mut Vec<u8>, salt: u64, meta: &RecordMeta, stored: &[u8]) {
    // Invariant: the log refuses payloads over max_record_size, which
    // validate() caps at MAX_RECORD_LEN_LIMIT (< u32::MAX), before encoding,
    // and stores a compressed form only when it is smaller.
    let len = u32::try_from(stored.len()).expect("payload length checked by the caller");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&meta.lsn.to_le_bytes());
    out.extend_from_slice(&meta.durable_lsn.to_le_bytes());
    out.extend_from_slice(&meta.time_us.to_le_bytes());
    out.extend_from_slice(&[stored_as_byte(meta), 0, 0, 0]);
    out.extend_from_slice(&meta.raw_len.to_le_bytes());
    out.extend_from_slice(stored);
    let crc = record_crc(salt, &out[start + 4..start + RECORD_HEADER_LEN], stored);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_size(stored.len()), 0);
}

/// The compression byte of a record: its codec's byte, or
/// [`ZSTD_WITH_DICTIONARY`] when it uses its segment's dictionary.
fn stored_as_byte(meta: &RecordMeta) -> u8 {
    if meta.dictionary {
        debug_assert_eq!(meta.compression, Compression::Zstd);
        ZSTD_WITH_DICTIONARY
    } else {
        meta.compression.to_byte()
    }
}

/// The compression byte of a record compressed with zstd and its
/// segment's dictionary.
pub const ZSTD_WITH_DICTIONARY: u8 = 3;

/// What a record's compression byte says: the codec, and whether the
/// segment's dictionary was used. `None` for a byte no version defines.
fn stored_as(byte: u8) -> Option<(Compression, bool)> {
    match byte {
        ZSTD_WITH_DICTIONARY => Some((Compression::Zstd, true)),
        b => Compression::from_byte(b).map(|c| (c, false)),
    }
}

/// Appends one version 1 record: what releases before record times wrote.
/// The log never writes it now; tests and fuzzing do, to check that such
/// logs still read.
pub fn encode_record_v1(out: &mut Vec<u8>, salt: u64, lsn: u64, durable_lsn: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&durable_lsn.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(salt, &out[start + 4..start + RECORD_HEADER_LEN_V1], payload);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_size_in(1, payload.len()), 0);
}

/// A record that passed every check of its header and checksum. Its
/// payload is as stored: [`crate::compression::decompress`] turns it into
/// the payload that was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// LSN, durable LSN, time, compression and raw length.
    pub meta: RecordMeta,
    /// The stored payload bytes.
    pub stored: &'a [u8],
    /// Bytes the record takes, padding included (the file may end inside
    /// the padding; the next record starts after it).
    pub size: usize,
}

impl RecordView<'_> {
    /// The record's LSN.
    pub fn lsn(&self) -> u64 {
        self.meta.lsn
    }
}

/// What lies at a record position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record.
    Record(RecordView<'a>),
    /// A header of zeros: no record was ever written here.
    Zero,
    /// The header or payload runs past the end of the bytes available.
    Truncated,
    /// The length field (stored or raw) exceeds the maximum record size.
    TooLong(u32),
    /// The checksum does not match the contents.
    BadChecksum,
    /// The checksum matches but the header names a compression this code
    /// does not know, sets reserved bytes, or gives inconsistent lengths:
    /// written by a newer keel, or by a bug; never readable here.
    Undecodable(&'static str),
}

/// Decodes the record at the start of `buf` (the rest of a segment of
/// format `version`), trusting nothing before it is checked.
pub fn decode_record(buf: &[u8], version: u32, salt: u64, max_len: u32) -> Decoded<'_> {
    let header_len = record_header_len(version);
    if buf.len() < header_len {
        return if buf.iter().all(|&b| b == 0) {
            Decoded::Zero
        } else {
            Decoded::Truncated
        };
    }
    let header = &buf[..header_len];
    if header.iter().all(|&b| b == 0) {
        return Decoded::Zero;
    }
    let max_len = max_len.min(MAX_RECORD_LEN_LIMIT);
    let len = le32(&header[4..8]);
    if len > max_len {
        return Decoded::TooLong(len);
    }
    let size = record_size_in(version, len as usize);
    if buf.len() < header_len + len as usize {
        return Decoded::Truncated;
    }
    let stored = &buf[header_len..header_len + len as usize];
    let crc = le32(&header[0..4]);
    if crc != record_crc(salt, &header[4..header_len], stored) {
        return Decoded::BadChecksum;
    }
    let pad_end = size.min(buf.len());
    if buf[header_len + len as usize..pad_end]
        .iter()
        .any(|&b| b != 0)
    {
        // Padding is always written as zeros; anything else is damage.
        return Decoded::BadChecksum;
    }
    let lsn = le64(&header[8..16]);
    if lsn == 0 {
        // Never written by a writer: LSNs start at 1.
        return Decoded::BadChecksum;
    }
    let mut meta = RecordMeta {
        lsn,
        durable_lsn: le64(&header[16..24]),
        time_us: 0,
        compression: Compression::None,
        dictionary: false,
        raw_len: len,
    };
    if version >= 2 {
        meta.time_us = le64(&header[24..32]);
        let Some((compression, dictionary)) = stored_as(header[32]) else {
            return Decoded::Undecodable("unknown compression (written by a newer keel?)");
        };
        if header[33..36] != [0, 0, 0] {
            return Decoded::Undecodable("reserved header bytes set (written by a newer keel?)");
        }
        meta.compression = compression;
        meta.dictionary = dictionary;
        meta.raw_len = le32(&header[36..40]);
        if meta.raw_len > max_len {
            // Checked before anything is allocated for decompression.
            return Decoded::TooLong(meta.raw_len);
        }
        if compression == Compression::None && meta.raw_len != len {
            return Decoded::Undecodable(
                "raw length differs from the stored length of an uncompressed record",
            );
        }
    }
    Decoded::Record(RecordView {
        meta,
        stored,
        // Always the full padded size, even when the file ends inside the
        // padding (a write torn there): the next record must go to the
        // aligned offset, never on top of this record's padding.
        size,
    })
}

/// Reads a record header's length, LSN and durable LSN without verifying
/// anything: a cheap filter before a checksum when scanning damaged bytes.
/// (These fields sit at the same offsets in both versions.)
pub fn peek_header(buf: &[u8], version: u32) -> Option<(u32, u64, u64)> {
    if buf.len() < record_header_len(version) {
        return None;
    }
    Some((le32(&buf[4..8]), le64(&buf[8..16]), le64(&buf[16..24])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(lsn: u64, durable_lsn: u64, time_us: u64) -> RecordMeta {
        RecordMeta {
            lsn,
            durable_lsn,
            time_us,
            compression: Compression::None,
            dictionary: false,
            raw_len: 0,
        }
    }

    /// Encodes `payload` stored as is.
    fn plain(
        out: &mut Vec<u8>,
        salt: u64,
        lsn: u64,
        durable_lsn: u64,
        time_us: u64,
        payload: &[u8],
    ) {
        let m = RecordMeta {
            raw_len: payload.len() as u32,
            ..meta(lsn, durable_lsn, time_us)
        };
        encode_record(out, salt, &m, payload);
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        for version in [1, 2] {
            let h = SegmentHeader {
                version,
                log_id: 0x1122_3344_5566_7788,
                first_lsn: 42,
                salt: 0xDEAD_BEEF,
                dictionary: None,
            };
            let b = h.encode();
            assert_eq!(SegmentHeader::decode(&b), Ok(h));
            for i in 0..SEGMENT_HEADER_LEN * 8 {
                let mut d = b;
                d[i / 8] ^= 1 << (i % 8);
                assert!(SegmentHeader::decode(&d).is_err(), "bit {i} flip accepted");
            }
        }
        assert_eq!(
            SegmentHeader::decode(&[0u8; SEGMENT_HEADER_LEN]),
            Err(HeaderError::Zeroed)
        );
        let newer = SegmentHeader {
            version: 3,
            ..SegmentHeader::new(1, 1, 1)
        };
        assert_eq!(
            SegmentHeader::decode(&newer.encode()),
            Err(HeaderError::UnsupportedVersion(3))
        );
    }

    #[test]
    fn a_header_with_a_dictionary_round_trips_and_every_bit_flip_is_refused() {
        let dict: Vec<u8> = (0..37u8).collect();
        let h = SegmentHeader::new(7, 100, 0xABCD).with_dictionary(&dict);
        let b = h.encode_with_dictionary(&dict);
        assert_eq!(b.len(), h.records_start());
        assert_eq!(h.records_start(), 48 + 8 + 40);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(h.dictionary_in(&b), &dict[..]);
        for i in 0..b.len() * 8 {
            let mut d = b.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert!(SegmentHeader::decode(&d).is_err(), "bit {i} flip accepted");
        }
        // Cut anywhere before the first record: refused, never read short.
        for n in SEGMENT_HEADER_LEN..b.len() {
            assert_eq!(
                SegmentHeader::decode(&b[..n]),
                Err(HeaderError::BadDictionary),
                "cut at {n}"
            );
        }
        // The same dictionary under another salt does not check.
        let mut other = b.clone();
        let h2 = SegmentHeader::new(7, 100, 0xABCE).encode();
        other[..SEGMENT_HEADER_LEN].copy_from_slice(&h2);
        other[12] = FLAG_DICTIONARY as u8;
        let crc = crc32c::crc32c(&other[0..40]);
        other[40..44].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&other),
            Err(HeaderError::BadDictionary)
        );
        // Version 1 defines no flag.
        let mut v1 = b.clone();
        v1[8] = 1;
        let crc = crc32c::crc32c(&v1[0..40]);
        v1[40..44].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&v1),
            Err(HeaderError::UnknownFlags(1))
        );
    }

    #[test]
    fn unknown_header_flags_are_refused() {
        let mut b = SegmentHeader::new(1, 1, 2).encode();
        b[14] = 0x20;
        let crc = crc32c::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(HeaderError::UnknownFlags(0x20_0000))
        );
    }

    #[test]
    fn zeros_never_decode_as_a_record() {
        for version in [1, 2] {
            for salt in [0u64, 1, u64::MAX] {
                assert_eq!(
                    decode_record(&[0u8; 64], version, salt, 1024),
                    Decoded::Zero
                );
                assert_eq!(decode_record(&[0u8; 5], version, salt, 1024), Decoded::Zero);
            }
        }
    }

    #[test]
    fn lengths_are_checked_before_use() {
        let mut buf = Vec::new();
        plain(&mut buf, 9, 1, 0, 5, &[7u8; 100]);
        assert_eq!(decode_record(&buf, 2, 9, 99), Decoded::TooLong(100));
        assert_eq!(decode_record(&buf[..100], 2, 9, 1024), Decoded::Truncated);
        // A huge length in a short buffer is rejected without allocating.
        let mut bomb = buf.clone();
        bomb[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_record(&bomb, 2, 9, u32::MAX),
            Decoded::TooLong(u32::MAX)
        );
        // So is a huge raw length behind a valid checksum: nothing is
        // decompressed (or allocated) for it.
        let mut huge = Vec::new();
        let m = RecordMeta {
            compression: Compression::Zstd,
            raw_len: 1 << 30,
            ..meta(1, 0, 5)
        };
        encode_record(&mut huge, 9, &m, &[1, 2, 3]);
        assert_eq!(
            decode_record(&huge, 2, 9, 1 << 20),
            Decoded::TooLong(1 << 30)
        );
    }

    #[test]
    fn unknown_compression_and_reserved_bytes_are_refused() {
        let mut buf = Vec::new();
        plain(&mut buf, 9, 1, 0, 5, b"payload");
        for (at, value) in [(32, 4u8), (33, 1), (35, 0x80)] {
            let mut d = buf.clone();
            d[at] = value;
            let crc = record_crc(9, &d[4..RECORD_HEADER_LEN], b"payload");
            d[0..4].copy_from_slice(&crc.to_le_bytes());
            assert!(
                matches!(decode_record(&d, 2, 9, 1024), Decoded::Undecodable(_)),
                "byte {at}"
            );
        }
        let mut wrong_raw = Vec::new();
        let m = RecordMeta {
            raw_len: 8,
            ..meta(1, 0, 5)
        };
        encode_record(&mut wrong_raw, 9, &m, b"payload");
        assert!(matches!(
            decode_record(&wrong_raw, 2, 9, 1024),
            Decoded::Undecodable(_)
        ));
    }

    #[test]
    fn a_record_from_another_segment_does_not_verify() {
        let mut buf = Vec::new();
        plain(&mut buf, 1, 5, 4, 6, b"payload");
        assert_eq!(decode_record(&buf, 2, 2, 1024), Decoded::BadChecksum);
    }

    #[test]
    fn version_1_records_read_with_no_time() {
        let mut buf = Vec::new();
        encode_record_v1(&mut buf, 3, 7, 6, b"old");
        match decode_record(&buf, 1, 3, 1024) {
            Decoded::Record(r) => {
                assert_eq!(
                    r.meta,
                    RecordMeta {
                        raw_len: 3,
                        ..meta(7, 6, 0)
                    }
                );
                assert_eq!(r.stored, b"old");
                assert_eq!(r.size, 32);
            }
            other => panic!("{other:?}"),
        }
        // Read as version 2 the same bytes are not a record.
        assert!(!matches!(
            decode_record(&buf, 2, 3, 1024),
            Decoded::Record(_)
        ));
    }

    /// The header and two records: version 1 (docs/FORMAT.md, "Version 1").
    #[test]
    fn version_1_worked_example_in_format_md_is_what_version_1_wrote() {
        let h = SegmentHeader {
            version: 1,
            log_id: 0x0123_4567_89AB_CDEF,
            first_lsn: 1,
            salt: 0x1122_3344_5566_7788,
            dictionary: None,
        };
        let mut b = h.encode().to_vec();
        encode_record_v1(&mut b, h.salt, 1, 0, b"hello");
        encode_record_v1(&mut b, h.salt, 2, 1, b"keel!");
        let want = "4b 45 45 4c 57 41 4c 00 01 00 00 00 00 00 00 00 \
                    ef cd ab 89 67 45 23 01 01 00 00 00 00 00 00 00 \
                    88 77 66 55 44 33 22 11 dc 73 2a bd 00 00 00 00 \
                    41 77 4d ac 05 00 00 00 01 00 00 00 00 00 00 00 \
                    00 00 00 00 00 00 00 00 68 65 6c 6c 6f 00 00 00 \
                    c7 77 a1 b3 05 00 00 00 02 00 00 00 00 00 00 00 \
                    01 00 00 00 00 00 00 00 6b 65 65 6c 21 00 00 00";
        assert_hex(&b, want);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    /// The header and two records, one stored as is and one compressed
    /// with Snappy (docs/FORMAT.md, "Worked example").
    #[test]
    fn worked_example_in_format_md_is_what_the_code_writes() {
        let h = SegmentHeader::new(0x0123_4567_89AB_CDEF, 1, 0x1122_3344_5566_7788);
        let mut b = h.encode().to_vec();
        // 2026-12-03T06:41:02.123456Z
        let t = 1_796_280_062_123_456;
        let m1 = RecordMeta {
            raw_len: 5,
            ..meta(1, 0, t)
        };
        encode_record(&mut b, h.salt, &m1, b"hello");
        let raw = b"keel!".repeat(16);
        let mut stored = Vec::new();
        assert!(crate::compression::compress(
            Compression::Snappy,
            &raw,
            &mut stored
        ));
        let m2 = RecordMeta {
            compression: Compression::Snappy,
            raw_len: raw.len() as u32,
            ..meta(2, 1, t + 250)
        };
        encode_record(&mut b, h.salt, &m2, &stored);
        let want = "4b 45 45 4c 57 41 4c 00 02 00 00 00 00 00 00 00 \
                    ef cd ab 89 67 45 23 01 01 00 00 00 00 00 00 00 \
                    88 77 66 55 44 33 22 11 81 02 c1 fb 00 00 00 00 \
                    58 68 7c 44 05 00 00 00 01 00 00 00 00 00 00 00 \
                    00 00 00 00 00 00 00 00 c0 1d 05 0b b5 61 06 00 \
                    00 00 00 00 05 00 00 00 68 65 6c 6c 6f 00 00 00 \
                    c8 f7 ee 11 0c 00 00 00 02 00 00 00 00 00 00 00 \
                    01 00 00 00 00 00 00 00 ba 1e 05 0b b5 61 06 00 \
                    01 00 00 00 50 00 00 00 50 10 6b 65 65 6c 21 fe \
                    05 00 1d 05 00 00 00 00";
        assert_hex(&b, want);
        // And it reads back as the 80 bytes appended.
        let Decoded::Record(r) = decode_record(&b[96..], 2, h.salt, 1024) else {
            panic!("record 2 does not decode");
        };
        let mut back = Vec::new();
        crate::compression::decompress(r.meta.compression, r.stored, r.meta.raw_len, &mut back)
            .unwrap();
        assert_eq!(back, raw);
    }

    fn assert_hex(b: &[u8], want: &str) {
        let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
        let want: Vec<&str> = want.split_whitespace().collect();
        assert_eq!(hex, want, "docs/FORMAT.md's worked example is out of date");
    }

    proptest! {
        #[test]
        fn records_round_trip(
            salt: u64,
            records in proptest::collection::vec((1u64.., any::<u64>(), any::<u64>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..300)), 1..20)
        ) {
            let mut buf = Vec::new();
            let mut metas = Vec::new();
            for (lsn, durable, time_us, codec, stored) in &records {
                // The format does not care whether the bytes really are
                // compressed: that is checked when they are decompressed.
                let m = RecordMeta {
                    lsn: *lsn,
                    durable_lsn: *durable,
                    time_us: *time_us,
                    compression: Compression::from_byte(*codec).unwrap(),
                    dictionary: false,
                    raw_len: if *codec == 0 { stored.len() as u32 } else { 5000 },
                };
                encode_record(&mut buf, salt, &m, stored);
                metas.push(m);
                prop_assert_eq!(buf.len() % RECORD_ALIGN, 0);
            }
            let mut off = 0;
            for (m, (.., stored)) in metas.iter().zip(&records) {
                match decode_record(&buf[off..], 2, salt, 1 << 20) {
                    Decoded::Record(r) => {
                        prop_assert_eq!(&r.meta, m);
                        prop_assert_eq!(r.stored, &stored[..]);
                        off += r.size;
                    }
                    other => prop_assert!(false, "decoded {:?}", other),
                }
            }
            prop_assert_eq!(off, buf.len());
        }

        #[test]
        fn every_bit_flip_is_detected(
            salt: u64, lsn in 1u64.., time_us: u64, codec in 0u8..3,
            payload in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            // Compressed or not, the checksum covers the stored bytes and
            // every header field: no flip yields a record.
            let m = RecordMeta {
                lsn,
                durable_lsn: lsn - 1,
                time_us,
                compression: Compression::from_byte(codec).unwrap(),
                dictionary: false,
                raw_len: if codec == 0 { payload.len() as u32 } else { 700 },
            };
            let mut buf = Vec::new();
            encode_record(&mut buf, salt, &m, &payload);
            for bit in 0..buf.len() * 8 {
                let mut d = buf.clone();
                d[bit / 8] ^= 1 << (bit % 8);
                let ok = matches!(decode_record(&d, 2, salt, 1 << 20), Decoded::Record(_));
                prop_assert!(!ok, "flip of bit {} accepted", bit);
            }
        }

        #[test]
        fn every_bit_flip_of_a_version_1_record_is_detected(
            salt: u64, lsn in 1u64.., payload in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let mut buf = Vec::new();
            encode_record_v1(&mut buf, salt, lsn, lsn - 1, &payload);
            for bit in 0..buf.len() * 8 {
                let mut d = buf.clone();
                d[bit / 8] ^= 1 << (bit % 8);
                let ok = matches!(decode_record(&d, 1, salt, 1 << 20), Decoded::Record(_));
                prop_assert!(!ok, "flip of bit {} accepted", bit);
            }
        }

        #[test]
        fn garbage_never_panics(salt: u64, version in 1u32..3, buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&buf, version, salt, 1 << 20);
            let _ = SegmentHeader::decode(&buf);
        }
    }
}
