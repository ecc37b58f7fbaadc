//! Read-only inspection of one segment file, for dump and verify tools:
//! every record with its offset, and where damage is. Unlike recovery it can
//! continue past damage (as etcd's dump tool does with continueOnCrcError),
//! resuming at the next record that verifies.

use crate::error::{DamageKind, Result};
use crate::format::{HeaderError, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::reader::{examine_after, scan_records, Record, ScanStop};
use keel_storage::Storage;
use std::path::{Path, PathBuf};

/// Damage found while inspecting a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentDamage {
    /// Byte offset of the damaged record.
    pub offset: u64,
    /// The LSN expected there.
    pub lsn: u64,
    /// What is wrong.
    pub kind: DamageKind,
    /// Whether a later record proves the damaged one had been synced
    /// (otherwise, in the last segment, it is a torn tail).
    pub proven_synced: bool,
    /// Where the next valid record is, if any: (offset, LSN).
    pub resumes_at: Option<(u64, u64)>,
    /// Offset just past the last non-zero byte.
    pub data_end: u64,
}

/// What one segment file holds.
#[derive(Clone, Debug)]
pub struct SegmentSummary {
    /// The file.
    pub path: PathBuf,
    /// Its length in bytes.
    pub file_len: u64,
    /// Its header, or why it is invalid.
    pub header: std::result::Result<SegmentHeader, HeaderError>,
    /// Valid records read.
    pub records: u64,
    /// LSN of the first and last valid record.
    pub lsn_range: Option<(u64, u64)>,
    /// Commit times of the first and last valid record that has one
    /// (microseconds since the Unix epoch; none in a version 1 segment).
    pub time_range: Option<(u64, u64)>,
    /// Offset after the last valid record before any damage.
    pub end: u64,
    /// Damage found (only the first unless continuing past damage).
    pub damage: Vec<SegmentDamage>,
}

/// Reads `path` and calls `visit(record, offset)` for each valid record.
/// With `continue_past_damage`, resumes after each damaged region.
pub fn inspect_segment(
    storage: &dyn Storage,
    path: &Path,
    max_record_size: u32,
    continue_past_damage: bool,
    mut visit: impl FnMut(Record<'_>, u64),
) -> Result<SegmentSummary> {
    let mut data = Vec::new();
    let seg = crate::segment::read_segment(storage, path, false, false, &mut data)?;
    let mut summary = SegmentSummary {
        path: path.to_path_buf(),
        file_len: data.len() as u64,
        header: seg.header,
        records: 0,
        lsn_range: None,
        time_range: None,
        end: seg.header.map_or(SEGMENT_HEADER_LEN, |h| h.records_start()) as u64,
        damage: Vec::new(),
    };
    let Ok(header) = summary.header else {
        return Ok(summary);
    };
    let mut offset = header.records_start();
    let mut lsn = header.first_lsn;
    let mut scratch = Vec::new();
    loop {
        let scan = scan_records(
            &data,
            offset,
            lsn,
            &header,
            max_record_size,
            &mut scratch,
            &mut |r, off| {
                summary.records += 1;
                summary.lsn_range = Some(match summary.lsn_range {
                    None => (r.lsn, r.lsn),
                    Some((a, _)) => (a, r.lsn),
                });
                if r.time_us != 0 {
                    summary.time_range = Some(match summary.time_range {
                        None => (r.time_us, r.time_us),
                        Some((first, _)) => (first, r.time_us),
                    });
                }
                visit(r, off);
            },
        );
        lsn = scan.next_lsn;
        match scan.stop {
            ScanStop::Clean { end } => {
                if summary.damage.is_empty() {
                    summary.end = end;
                }
                break;
            }
            ScanStop::Damaged { offset: at, kind } => {
                if summary.damage.is_empty() {
                    summary.end = at;
                }
                let ev = examine_after(&data, at as usize, lsn, &header, max_record_size);
                summary.damage.push(SegmentDamage {
                    offset: at,
                    lsn,
                    kind,
                    proven_synced: ev.proof.is_some(),
                    resumes_at: ev.resume,
                    data_end: ev.data_end,
                });
                match ev.resume {
                    Some((roff, rlsn)) if continue_past_damage => {
                        offset = roff as usize;
                        lsn = rlsn;
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(summary)
}

/// Segment files in `dir`, oldest first.
pub fn segment_files(storage: &dyn Storage, dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(crate::segment::list_segments(storage, dir)?
        .0
        .into_iter()
        .map(|s| s.1)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Wal, WalOptions};
    use keel_storage::SimStorage;
    use std::sync::Arc;

    #[test]
    fn reports_offsets_and_continues_past_damage() {
        let s = SimStorage::new(3);
        let dir = PathBuf::from("/w");
        let (wal, _) = Wal::open(Arc::new(s.clone()), &dir, WalOptions::default()).unwrap();
        for i in 0..10u8 {
            wal.append(&[i; 20]).unwrap();
        }
        drop(wal);
        let seg = segment_files(&s, &dir).unwrap().remove(0);
        let mut d = s.read_file(&seg).unwrap();
        d[48 + 45] ^= 1; // record 1's payload (after its 40-byte header)
        s.write_file_durably(&seg, &d).unwrap();
        let mut seen = vec![];
        let sum =
            inspect_segment(&s, &seg, 1 << 20, true, |r, off| seen.push((r.lsn, off))).unwrap();
        assert_eq!(sum.damage.len(), 1);
        assert_eq!(sum.damage[0].offset, 48);
        assert!(sum.damage[0].proven_synced);
        assert_eq!(seen.len(), 9);
        assert_eq!(seen[0], (2, 48 + 64));
        let stop = inspect_segment(&s, &seg, 1 << 20, false, |_, _| {}).unwrap();
        assert_eq!(stop.records, 0);
        assert_eq!(stop.end, 48);
    }
}
