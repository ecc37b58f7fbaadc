//! [`RaftMeta`]: what a Raft node's log must remember besides its entries,
//! in one 80-byte file (`meta` in the node's raft directory), replaced
//! whole and durably on every change (temp file, fsync, rename, directory
//! fsync: docs/DESIGN.md rule 4).
//!
//! - The vote: a node that voted in a term must never vote otherwise in it
//!   after a restart, so a vote is durable before openraft acts on it.
//! - The last purged log id: entries up to it may still lie in the log's
//!   oldest segment (the log drops whole segments), so reads skip them by
//!   this record, and [`get_log_state`](openraft::storage::RaftLogStorage)
//!   reports it with its term.
//! - The log's generation and base: the entries live in `log-<generation>`,
//!   whose first record (LSN 1) is entry `base`. A purge past the last
//!   entry (a snapshot installed ahead of the log) starts a new generation
//!   at the next index; the switch is this file's replacement, so a crash
//!   leaves the old log or the new one, never a mix.
//!
//! Layout (little endian; docs/FORMAT.md, "Raft meta file"):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `KEELRAFT` |
//! | 8 | 4 | version, 1 |
//! | 12 | 4 | flags: bit 0 a vote is stored, bit 1 it is committed, bit 2 a purged log id is stored |
//! | 16 | 16 | vote: term, node id |
//! | 32 | 24 | purged log id: term, node id, index |
//! | 56 | 8 | generation |
//! | 64 | 8 | base |
//! | 72 | 4 | CRC32C of bytes 0..72 |
//! | 76 | 4 | zero |

use crate::{LogId, Vote};
use keel_storage::{OpenMode, Storage};
use openraft::CommittedLeaderId;
use std::path::Path;

/// The file's length.
pub const META_LEN: usize = 80;
const MAGIC: [u8; 8] = *b"KEELRAFT";
const VERSION: u32 = 1;
const VOTE: u32 = 1;
const COMMITTED: u32 = 2;
const PURGED: u32 = 4;

/// A node's vote, purge point and log generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftMeta {
    /// The last vote saved.
    pub vote: Option<Vote>,
    /// The last log id purged.
    pub purged: Option<LogId>,
    /// Which `log-<generation>` directory holds the entries.
    pub generation: u64,
    /// The index of that log's first record (LSN 1).
    pub base: u64,
}

/// Why a meta file does not read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Reading or writing it failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// It is not a meta file this code reads, or its checksum fails.
    #[error("the Raft meta file {path} is damaged ({why}); the node's vote is unknown: restore the node from a peer (remove its working directory and add it back as a learner)")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
}

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

impl RaftMeta {
    /// The file's bytes.
    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let mut flags = 0;
        if let Some(v) = self.vote {
            flags |= VOTE;
            if v.committed {
                flags |= COMMITTED;
            }
            b[16..24].copy_from_slice(&v.leader_id.term.to_le_bytes());
            b[24..32].copy_from_slice(&v.leader_id.node_id.to_le_bytes());
        }
        if let Some(p) = self.purged {
            flags |= PURGED;
            b[32..40].copy_from_slice(&p.leader_id.term.to_le_bytes());
            b[40..48].copy_from_slice(&p.leader_id.node_id.to_le_bytes());
            b[48..56].copy_from_slice(&p.index.to_le_bytes());
        }
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[56..64].copy_from_slice(&self.generation.to_le_bytes());
        b[64..72].copy_from_slice(&self.base.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..72]);
        b[72..76].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks the file's bytes.
    pub fn decode(b: &[u8]) -> Result<RaftMeta, &'static str> {
        if b.len() != META_LEN {
            return Err("wrong length");
        }
        if b[0..8] != MAGIC {
            return Err("bad magic");
        }
        if le32(&b[72..76]) != crc32c::crc32c(&b[0..72]) || b[76..80] != [0; 4] {
            return Err("checksum mismatch");
        }
        if le32(&b[8..12]) != VERSION {
            return Err("unknown version (written by a newer keel?)");
        }
        let flags = le32(&b[12..16]);
        if flags & !(VOTE | COMMITTED | PURGED) != 0
            || (flags & COMMITTED != 0 && flags & VOTE == 0)
        {
            return Err("unknown flags");
        }
        let vote = (flags & VOTE != 0).then(|| {
            let mut v = Vote::new(le64(&b[16..]), le64(&b[24..]));
            v.committed = flags & COMMITTED != 0;
            v
        });
        let purged = (flags & PURGED != 0).then(|| {
            LogId::new(
                CommittedLeaderId::new(le64(&b[32..]), le64(&b[40..])),
                le64(&b[48..]),
            )
        });
        Ok(RaftMeta {
            vote,
            purged,
            generation: le64(&b[56..]),
            base: le64(&b[64..]),
        })
    }

    /// Reads the meta file at `path`; a node that never saved one has the
    /// default (no vote, nothing purged, generation 0 from index 0).
    pub fn load(storage: &dyn Storage, path: &Path) -> Result<RaftMeta, MetaError> {
        let io = |op, source| MetaError::Io {
            op,
            path: path.display().to_string(),
            source,
        };
        if !storage.exists(path).map_err(|e| io("checking for", e))? {
            return Ok(RaftMeta::default());
        }
        let f = storage
            .open(path, OpenMode::Read)
            .map_err(|e| io("opening", e))?;
        let len = f.len().map_err(|e| io("reading", e))?;
        let mut b = vec![0u8; len.min(4096) as usize];
        f.read_exact_at(&mut b, 0).map_err(|e| io("reading", e))?;
        RaftMeta::decode(&b).map_err(|why| MetaError::Damaged {
            path: path.display().to_string(),
            why,
        })
    }

    /// Replaces the meta file at `path` with this one, durably.
    pub fn save(&self, storage: &dyn Storage, path: &Path) -> Result<(), MetaError> {
        let bytes = self.encode();
        keel_storage::write_atomic(storage, path, |f, _| f.write_at(&bytes, 0)).map_err(|e| {
            MetaError::Io {
                op: "replacing",
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_and_every_bit_flip_is_refused(
            vote in proptest::option::of((any::<u64>(), any::<u64>(), any::<bool>())),
            purged in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
            generation: u64, base: u64,
        ) {
            let m = RaftMeta {
                vote: vote.map(|(t, n, c)| {
                    let mut v = Vote::new(t, n);
                    v.committed = c;
                    v
                }),
                purged: purged.map(|(t, n, i)| LogId::new(CommittedLeaderId::new(t, n), i)),
                generation,
                base,
            };
            let b = m.encode();
            prop_assert_eq!(RaftMeta::decode(&b), Ok(m));
            for i in 0..META_LEN * 8 {
                let mut d = b;
                d[i / 8] ^= 1 << (i % 8);
                prop_assert!(RaftMeta::decode(&d).is_err(), "bit {} flip accepted", i);
            }
        }
    }

    #[test]
    fn a_missing_file_is_the_default_and_a_saved_one_loads() {
        let s = keel_storage::SimStorage::new(1);
        keel_storage::create_dir_durable(&s, Path::new("/n")).unwrap();
        let p = Path::new("/n/meta");
        assert_eq!(RaftMeta::load(&s, p).unwrap(), RaftMeta::default());
        let m = RaftMeta {
            vote: Some(Vote::new_committed(3, 2)),
            ..RaftMeta::default()
        };
        m.save(&s, p).unwrap();
        let after = s.crash_with(keel_storage::CrashMode::DropUnsynced);
        assert_eq!(RaftMeta::load(&after, p).unwrap(), m);
    }
}
