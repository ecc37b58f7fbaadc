//! The byte layout of segment files: the segment header and records.
//! Pure functions, no I/O; docs/FORMAT.md is the normative description.
//!
//! Invariants:
//! - An all-zero record header is never a valid record (LSNs start at 1 and
//!   the checksum is seeded with the segment's salt), so zeroed, preallocated
//!   space reads as "no record here".
//! - A length field is checked against [`MAX_RECORD_LEN_LIMIT`], the caller's
//!   maximum and the bytes actually available before anything is allocated or
//!   read for it.
//! - A record's checksum is seeded with its segment's random salt, so bytes
//!   from another segment or an earlier life of a reused file never verify.

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";
/// Segment format version written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: usize = 48;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 24;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// No record payload may exceed this, whatever the options say (the length
/// field is 32 bits and must leave room for the header and padding).
pub const MAX_RECORD_LEN_LIMIT: u32 = u32::MAX - 64;

/// The decoded header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Identifies the log; every segment of one log carries the same id.
    pub log_id: u64,
    /// LSN of the first record in this segment.
    pub first_lsn: u64,
    /// Random per segment; seeds every record checksum in it.
    pub salt: u64,
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
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u32),
    /// Reserved flag bits are set: written by a newer writer.
    #[error("unknown header flags {0:#x} (written by a newer keel?)")]
    UnknownFlags(u32),
    /// The header's checksum does not match.
    #[error("header checksum mismatch")]
    BadChecksum,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 12..16: flags, zero in version 1.
        b[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[32..40].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        // 44..48: zero padding so records start 8-aligned.
        b
    }

    /// Parses and verifies a header.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
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
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = le32(&b[12..16]);
        if flags != 0 {
            // Version 1 defines no flag: a set bit could change what the
            // bytes mean, so refuse rather than guess (found by fuzzing).
            return Err(HeaderError::UnknownFlags(flags));
        }
        Ok(SegmentHeader {
            log_id: le64(&b[16..24]),
            first_lsn: le64(&b[24..32]),
            salt: le64(&b[32..40]),
        })
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

/// Bytes a record with a payload of `len` bytes takes, padding included.
pub fn record_size(len: usize) -> usize {
    (RECORD_HEADER_LEN + len).next_multiple_of(RECORD_ALIGN)
}

fn record_crc(salt: u64, header_tail: &[u8], payload: &[u8]) -> u32 {
    let seed = crc32c::crc32c(&salt.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(seed, header_tail), payload)
}

/// Appends one record (header, payload, zero padding) to `out`.
///
/// `durable_lsn` is the writer's promise that every record with an LSN up to
/// it had been made durable before this record was written; recovery uses it
/// to tell damage to synced records from a torn, never-acknowledged tail.
pub fn encode_record(out: &mut Vec<u8>, salt: u64, lsn: u64, durable_lsn: u64, payload: &[u8]) {
    // Invariant: the log refuses payloads over max_record_size, which
    // validate() caps at MAX_RECORD_LEN_LIMIT (< u32::MAX), before encoding.
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&durable_lsn.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(salt, &out[start + 4..start + RECORD_HEADER_LEN], payload);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_size(payload.len()), 0);
}

/// A record that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's log sequence number.
    pub lsn: u64,
    /// Every record up to this LSN was durable when this one was written.
    pub durable_lsn: u64,
    /// The opaque payload.
    pub payload: &'a [u8],
    /// Bytes the record takes, padding included (the file may end inside
    /// the padding; the next record starts after it).
    pub size: usize,
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
    /// The length field exceeds the maximum record size.
    TooLong(u32),
    /// The checksum does not match the contents.
    BadChecksum,
}

/// Decodes the record at the start of `buf` (the rest of the segment),
/// trusting nothing before it is checked.
pub fn decode_record(buf: &[u8], salt: u64, max_len: u32) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) {
            Decoded::Zero
        } else {
            Decoded::Truncated
        };
    }
    let header = &buf[..RECORD_HEADER_LEN];
    if header.iter().all(|&b| b == 0) {
        return Decoded::Zero;
    }
    let len = le32(&header[4..8]);
    if len > max_len.min(MAX_RECORD_LEN_LIMIT) {
        return Decoded::TooLong(len);
    }
    let size = record_size(len as usize);
    if buf.len() < RECORD_HEADER_LEN + len as usize {
        return Decoded::Truncated;
    }
    let payload = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    let crc = le32(&header[0..4]);
    if crc != record_crc(salt, &header[4..RECORD_HEADER_LEN], payload) {
        return Decoded::BadChecksum;
    }
    let pad_end = size.min(buf.len());
    if buf[RECORD_HEADER_LEN + len as usize..pad_end]
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
    Decoded::Record(RecordView {
        lsn,
        durable_lsn: le64(&header[16..24]),
        payload,
        // Always the full padded size, even when the file ends inside the
        // padding (a write torn there): the next record must go to the
        // aligned offset, never on top of this record's padding.
        size,
    })
}

/// Reads a record header's length, LSN and durable LSN without verifying
/// anything: a cheap filter before a checksum when scanning damaged bytes.
pub fn peek_header(buf: &[u8]) -> Option<(u32, u64, u64)> {
    if buf.len() < RECORD_HEADER_LEN {
        return None;
    }
    Some((le32(&buf[4..8]), le64(&buf[8..16]), le64(&buf[16..24])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            log_id: 0x1122_3344_5566_7788,
            first_lsn: 42,
            salt: 0xDEAD_BEEF,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(
            SegmentHeader::decode(&[0u8; SEGMENT_HEADER_LEN]),
            Err(HeaderError::Zeroed)
        );
        for i in 0..SEGMENT_HEADER_LEN * 8 {
            let mut d = b;
            d[i / 8] ^= 1 << (i % 8);
            assert!(SegmentHeader::decode(&d).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn unknown_header_flags_are_refused() {
        let mut b = SegmentHeader {
            log_id: 1,
            first_lsn: 1,
            salt: 2,
        }
        .encode();
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
        for salt in [0u64, 1, u64::MAX] {
            assert_eq!(decode_record(&[0u8; 64], salt, 1024), Decoded::Zero);
            assert_eq!(decode_record(&[0u8; 5], salt, 1024), Decoded::Zero);
        }
    }

    #[test]
    fn length_is_checked_before_use() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 9, 1, 0, &[7u8; 100]);
        assert_eq!(decode_record(&buf, 9, 99), Decoded::TooLong(100));
        assert_eq!(decode_record(&buf[..100], 9, 1024), Decoded::Truncated);
        // A huge length in a short buffer is rejected without allocating.
        let mut bomb = buf.clone();
        bomb[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_record(&bomb, 9, u32::MAX),
            Decoded::TooLong(u32::MAX)
        );
    }

    #[test]
    fn a_record_from_another_segment_does_not_verify() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 5, 4, b"payload");
        assert_eq!(decode_record(&buf, 2, 1024), Decoded::BadChecksum);
    }

    #[test]
    fn worked_example_in_format_md_is_what_the_code_writes() {
        let h = SegmentHeader {
            log_id: 0x0123_4567_89AB_CDEF,
            first_lsn: 1,
            salt: 0x1122_3344_5566_7788,
        };
        let mut b = h.encode().to_vec();
        encode_record(&mut b, h.salt, 1, 0, b"hello");
        encode_record(&mut b, h.salt, 2, 1, b"keel!");
        let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
        let want = "4b 45 45 4c 57 41 4c 00 01 00 00 00 00 00 00 00 \
                    ef cd ab 89 67 45 23 01 01 00 00 00 00 00 00 00 \
                    88 77 66 55 44 33 22 11 dc 73 2a bd 00 00 00 00 \
                    41 77 4d ac 05 00 00 00 01 00 00 00 00 00 00 00 \
                    00 00 00 00 00 00 00 00 68 65 6c 6c 6f 00 00 00 \
                    c7 77 a1 b3 05 00 00 00 02 00 00 00 00 00 00 00 \
                    01 00 00 00 00 00 00 00 6b 65 65 6c 21 00 00 00";
        let want: Vec<&str> = want.split_whitespace().collect();
        assert_eq!(hex, want, "docs/FORMAT.md's worked example is out of date");
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    proptest! {
        #[test]
        fn records_round_trip(
            salt: u64,
            records in proptest::collection::vec((1u64.., any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..20)
        ) {
            let mut buf = Vec::new();
            for (lsn, durable, payload) in &records {
                encode_record(&mut buf, salt, *lsn, *durable, payload);
                prop_assert_eq!(buf.len() % RECORD_ALIGN, 0);
            }
            let mut off = 0;
            for (lsn, durable, payload) in &records {
                match decode_record(&buf[off..], salt, 1 << 20) {
                    Decoded::Record(r) => {
                        prop_assert_eq!(r.lsn, *lsn);
                        prop_assert_eq!(r.durable_lsn, *durable);
                        prop_assert_eq!(r.payload, &payload[..]);
                        off += r.size;
                    }
                    other => prop_assert!(false, "decoded {:?}", other),
                }
            }
            prop_assert_eq!(off, buf.len());
        }

        #[test]
        fn every_bit_flip_is_detected(
            salt: u64, lsn in 1u64.., payload in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let mut buf = Vec::new();
            encode_record(&mut buf, salt, lsn, lsn - 1, &payload);
            for bit in 0..buf.len() * 8 {
                let mut d = buf.clone();
                d[bit / 8] ^= 1 << (bit % 8);
                let ok = matches!(decode_record(&d, salt, 1 << 20), Decoded::Record(_));
                prop_assert!(!ok, "flip of bit {} accepted", bit);
            }
        }

        #[test]
        fn garbage_never_panics(salt: u64, buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&buf, salt, 1 << 20);
            let _ = SegmentHeader::decode(&buf);
        }
    }
}
