//! Scanning the records of one segment held in memory, and weighing the
//! evidence after damage. No I/O; [`crate::recovery`] decides what to do.
//!
//! The rule that separates a torn tail from corruption: every record carries
//! `durable_lsn`, the writer's promise that all records up to it were durable
//! before this one was written. Damage at LSN `n` is *proven synced* when a
//! valid record after it has `durable_lsn >= n`; such damage (or any damage in
//! a segment that is not the last) is corruption. Unproven damage at the end
//! of the last segment can only be bytes that were never acknowledged.

use crate::compression::{self, Compression};
use crate::dictionary::SegmentDictionary;
use crate::error::DamageKind;
use crate::format::{self, Decoded, SegmentHeader, RECORD_ALIGN};

/// One record as a reader sees it: the payload as it was appended
/// (decompressed, if it was stored compressed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's log sequence number.
    pub lsn: u64,
    /// Commit time, microseconds since the Unix epoch; never less than the
    /// time of the record before it. 0 for records of version 1 segments,
    /// which carry no time.
    pub time_us: u64,
    /// The payload as appended.
    pub payload: &'a [u8],
    /// How the payload was stored.
    pub compression: Compression,
    /// Compressed with its segment's zstd dictionary.
    pub dictionary: bool,
    /// Bytes the payload took in the segment (after compression).
    pub stored_len: u32,
}

/// How a scan of a segment's records ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Only zeros (or nothing) follow the last valid record, which ends at `end`.
    Clean { end: u64 },
    /// The record at `offset` is damaged.
    Damaged { offset: u64, kind: DamageKind },
}

/// The result of scanning records from one position.
#[derive(Clone, Debug)]
pub(crate) struct Scan {
    /// The LSN after the last valid record read.
    pub next_lsn: u64,
    /// How the scan ended.
    pub stop: ScanStop,
}

/// Offset of the first non-zero byte of `data`, if any.
pub(crate) fn first_nonzero(data: &[u8]) -> Option<usize> {
    let mut chunks = data.chunks_exact(16);
    let mut base = 0;
    for c in &mut chunks {
        // Invariant: chunks_exact(16) yields 16-byte chunks only.
        if u128::from_ne_bytes(c.try_into().expect("16 bytes")) != 0 {
            return c.iter().position(|&b| b != 0).map(|i| base + i);
        }
        base += 16;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b != 0)
        .map(|i| base + i)
}

/// Scans the records of the segment `header` heads from `offset`, expecting
/// LSN `lsn` first, calling `visit` with each valid record and its offset.
/// `data` is the segment from its first byte (its dictionary, if it has
/// one, is read from it). `scratch` holds decompressed payloads (reused
/// from call to call).
pub(crate) fn scan_records(
    data: &[u8],
    mut offset: usize,
    mut lsn: u64,
    header: &SegmentHeader,
    max_len: u32,
    scratch: &mut Vec<u8>,
    visit: &mut dyn FnMut(Record<'_>, u64),
) -> Scan {
    loop {
        if offset >= data.len() {
            // `offset` may pass the end of the file by up to 7 bytes when it
            // ends inside the last record's padding: appends go there.
            return Scan {
                next_lsn: lsn,
                stop: ScanStop::Clean { end: offset as u64 },
            };
        }
        let damaged = |kind| Scan {
            next_lsn: lsn,
            stop: ScanStop::Damaged {
                offset: offset as u64,
                kind,
            },
        };
        match format::decode_record(&data[offset..], header.version, header.salt, max_len) {
            Decoded::Record(r) if r.lsn() == lsn => {
                let decoded = match (r.meta.compression, r.meta.dictionary, header.dictionary) {
                    (Compression::None, ..) => Ok(r.stored),
                    (_, true, None) => {
                        return damaged(DamageKind::Undecodable(
                            "the record uses a dictionary its segment does not have".into(),
                        ))
                    }
                    (_, true, Some(d)) => {
                        let dict = SegmentDictionary {
                            salt: header.salt,
                            crc: d.crc,
                            bytes: header.dictionary_in(data),
                        };
                        compression::decompress_with_dictionary(
                            dict,
                            r.stored,
                            r.meta.raw_len,
                            scratch,
                        )
                        .map(|()| &scratch[..])
                    }
                    (codec, false, _) => {
                        compression::decompress(codec, r.stored, r.meta.raw_len, scratch)
                            .map(|()| &scratch[..])
                    }
                };
                let payload = match decoded {
                    Ok(p) => p,
                    Err(e) => return damaged(DamageKind::Undecodable(e.to_string())),
                };
                let record = Record {
                    lsn,
                    time_us: r.meta.time_us,
                    payload,
                    compression: r.meta.compression,
                    dictionary: r.meta.dictionary,
                    stored_len: r.stored.len() as u32,
                };
                visit(record, offset as u64);
                lsn += 1;
                offset += r.size;
            }
            Decoded::Record(r) => return damaged(DamageKind::UnexpectedLsn(r.lsn())),
            Decoded::Zero => {
                return match first_nonzero(&data[offset..]) {
                    None => Scan {
                        next_lsn: lsn,
                        stop: ScanStop::Clean { end: offset as u64 },
                    },
                    Some(_) => damaged(DamageKind::HoleBeforeData),
                }
            }
            Decoded::Truncated => return damaged(DamageKind::Truncated),
            Decoded::TooLong(n) => return damaged(DamageKind::LengthTooLarge(n)),
            Decoded::BadChecksum => return damaged(DamageKind::BadChecksum),
            Decoded::Undecodable(why) => return damaged(DamageKind::Undecodable(why.into())),
        }
    }
}

/// What the bytes after a damaged record show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AfterDamage {
    /// Offset just past the last non-zero byte of the segment.
    pub data_end: u64,
    /// Valid records found after the damage.
    pub valid_records: u64,
    /// A later valid record whose `durable_lsn` covers the damaged LSN.
    pub proof: Option<u64>,
    /// The first valid record after the damage: (offset, LSN).
    pub resume: Option<(u64, u64)>,
}

/// Looks for valid records after damage at `offset` (expected LSN `lsn`).
/// Positions are tried at record alignment; a cheap plausibility filter on
/// the header runs before any checksum, so damaged bytes cost little.
pub(crate) fn examine_after(
    data: &[u8],
    offset: usize,
    lsn: u64,
    header: &SegmentHeader,
    max_len: u32,
) -> AfterDamage {
    let header_len = header.record_header_len();
    let data_end = data
        .iter()
        .rposition(|&b| b != 0)
        .map_or(offset, |i| (i + 1).max(offset)) as u64;
    let mut out = AfterDamage {
        data_end,
        valid_records: 0,
        proof: None,
        resume: None,
    };
    // No more records can follow than headers fit in what remains.
    let max_lsn = lsn.saturating_add((data.len() / header_len) as u64 + 1);
    let mut p = offset + RECORD_ALIGN;
    // Nothing past the last non-zero byte can be a record (zero headers
    // never are): preallocated space costs nothing to pass over.
    while p + header_len <= data.len() && (p as u64) < data_end {
        let Some((len, rlsn, durable)) = format::peek_header(&data[p..], header.version) else {
            break;
        };
        let plausible = rlsn >= lsn
            && rlsn <= max_lsn
            && durable < rlsn
            && len <= max_len
            && p + header_len + len as usize <= data.len();
        if plausible {
            let decoded = format::decode_record(&data[p..], header.version, header.salt, max_len);
            if let Decoded::Record(r) = decoded {
                out.valid_records += 1;
                if out.resume.is_none() {
                    out.resume = Some((p as u64, r.lsn()));
                }
                if r.meta.durable_lsn >= lsn && out.proof.is_none() {
                    out.proof = Some(r.lsn());
                }
                p += r.size;
                continue;
            }
        }
        p += RECORD_ALIGN;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, RecordMeta};

    /// Records of 13 bytes each after an 8-byte stand-in for the header.
    fn log(records: &[(u64, u64)]) -> Vec<u8> {
        let mut buf = vec![0u8; 8];
        for &(lsn, durable) in records {
            let meta = RecordMeta {
                lsn,
                durable_lsn: durable,
                time_us: 1000 + lsn,
                compression: Compression::None,
                dictionary: false,
                raw_len: 13,
            };
            encode_record(&mut buf, 5, &meta, &[lsn as u8; 13]);
        }
        buf
    }

    const H: SegmentHeader = SegmentHeader {
        version: 2,
        log_id: 1,
        first_lsn: 1,
        salt: 5,
        dictionary: None,
    };

    fn scan(d: &[u8], seen: &mut Vec<(u64, u64)>) -> Scan {
        scan_records(d, 8, 1, &H, 1024, &mut Vec::new(), &mut |r, _| {
            seen.push((r.lsn, r.time_us))
        })
    }

    #[test]
    fn first_nonzero_finds_the_byte() {
        let mut d = vec![0u8; 100];
        assert_eq!(first_nonzero(&d), None);
        d[77] = 1;
        assert_eq!(first_nonzero(&d), Some(77));
        d[3] = 1;
        assert_eq!(first_nonzero(&d), Some(3));
    }

    #[test]
    fn clean_scan_stops_at_zeros() {
        let mut d = log(&[(1, 0), (2, 1), (3, 2)]);
        let end = d.len() as u64;
        d.resize(d.len() + 200, 0);
        let mut seen = vec![];
        let s = scan(&d, &mut seen);
        assert_eq!(seen, vec![(1, 1001), (2, 1002), (3, 1003)]);
        assert_eq!(s.next_lsn, 4);
        assert_eq!(s.stop, ScanStop::Clean { end });
    }

    #[test]
    fn damage_with_proof_after_it_is_found() {
        let mut d = log(&[(1, 0), (2, 1), (3, 2)]);
        d[50] ^= 1; // inside record 1's payload (record 1 spans 8..64)
        let s = scan(&d, &mut vec![]);
        let ScanStop::Damaged { offset, .. } = s.stop else {
            panic!("no damage found")
        };
        assert_eq!(offset, 8);
        let ev = examine_after(&d, 8, 1, &H, 1024);
        assert_eq!(ev.valid_records, 2);
        assert_eq!(ev.proof, Some(2));
        assert_eq!(ev.resume, Some((64, 2)));
    }

    #[test]
    fn unproven_damage_has_no_proof() {
        // Records 2 and 3 were written before record 1 was synced.
        let mut d = log(&[(1, 0), (2, 0), (3, 0)]);
        d[10] ^= 0xff;
        let ev = examine_after(&d, 8, 1, &H, 1024);
        assert_eq!(ev.proof, None);
        assert_eq!(ev.valid_records, 2);
    }

    #[test]
    fn zero_hole_before_data_is_damage() {
        let mut d = log(&[(1, 0), (2, 1)]);
        d[8..64].fill(0);
        let s = scan(&d, &mut vec![]);
        assert_eq!(
            s.stop,
            ScanStop::Damaged {
                offset: 8,
                kind: DamageKind::HoleBeforeData
            }
        );
    }
}

#[cfg(test)]
mod compressed_tests {
    use super::*;
    use crate::format::{encode_record, RecordMeta};

    /// A compressed record reads back as the payload appended, and one whose
    /// bytes verify but do not decompress is damage, not a record.
    #[test]
    fn compressed_records_read_back_and_bad_ones_are_damage() {
        let raw = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(4);
        let header = SegmentHeader::new(1, 1, 5);
        for codec in [Compression::Snappy, Compression::Zstd] {
            let mut stored = Vec::new();
            assert!(compression::compress(codec, &raw, &mut stored));
            let mut d = vec![0u8; 8];
            let meta = RecordMeta {
                lsn: 1,
                durable_lsn: 0,
                time_us: 7,
                compression: codec,
                dictionary: false,
                raw_len: raw.len() as u32,
            };
            encode_record(&mut d, 5, &meta, &stored);
            let mut got = Vec::new();
            let s = scan_records(&d, 8, 1, &header, 1 << 20, &mut Vec::new(), &mut |r, _| {
                got.push((r.payload.to_vec(), r.compression, r.stored_len))
            });
            assert_eq!(s.next_lsn, 2, "{codec}");
            assert_eq!(got, vec![(raw.clone(), codec, stored.len() as u32)]);

            let mut bad = vec![0u8; 8];
            let wrong = RecordMeta {
                raw_len: raw.len() as u32 + 1,
                ..meta
            };
            encode_record(&mut bad, 5, &wrong, &stored);
            let s = scan_records(
                &bad,
                8,
                1,
                &header,
                1 << 20,
                &mut Vec::new(),
                &mut |_, _| panic!("an undecodable record was visited"),
            );
            assert!(
                matches!(
                    s.stop,
                    ScanStop::Damaged {
                        offset: 8,
                        kind: DamageKind::Undecodable(_)
                    }
                ),
                "{codec}: {:?}",
                s.stop
            );
        }
    }
}
