//! The payload of the log record that holds one Raft entry.
//!
//! Layout (little endian; docs/FORMAT.md, "Raft log entries"):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, 1 |
//! | 1 | 8 | term of the leader that made the entry |
//! | 9 | 8 | that leader's node id |
//! | 17 | 8 | the entry's index |
//! | 25 | 1 | kind: 0 blank, 1 one write, 2 membership, 3 writes |
//! | 26 | ... | the write's bytes (kind 1), the membership as JSON (kind 2), or the writes (kind 3) |
//!
//! Kind 3's body: a u32 count, then for each write a u32 length and its
//! bytes. An entry of exactly one write is written as kind 1, so entries
//! of a single write keep the layout they had before kind 3 existed.
//!
//! Invariants:
//! - The index is stored although the record's LSN implies it: a record
//!   read at the wrong place (a mapping bug, a file from another log) is
//!   refused, never taken for another entry.
//! - Decoding checks every length and byte; anything else is an error that
//!   names what is wrong, never a panic.

use crate::{Command, Entry, LogId, TypeConfig};
use openraft::{CommittedLeaderId, EntryPayload, Membership};

/// The layout version written.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 26;

const BLANK: u8 = 0;
const COMMAND: u8 = 1;
const MEMBERSHIP: u8 = 2;
const WRITES: u8 = 3;

/// Why a record's payload is not an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryDecodeError {
    /// Shorter than the header.
    #[error("a Raft entry record of {0} bytes is shorter than its 26-byte header")]
    Short(usize),
    /// A version this code does not know.
    #[error("Raft entry layout version {0} is unknown (written by a newer keel?)")]
    Version(u8),
    /// An entry kind this code does not know.
    #[error("Raft entry kind {0} is unknown")]
    Kind(u8),
    /// A blank entry with a body.
    #[error("a blank Raft entry carries {0} bytes")]
    BlankWithBody(usize),
    /// The membership's JSON does not parse.
    #[error("a Raft membership entry does not parse: {0}")]
    Membership(String),
    /// A list of writes whose lengths do not add up to its body.
    #[error("a Raft entry's list of writes is malformed: {0}")]
    Writes(String),
}

/// The record payload for `entry`.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let (kind, body) = match &entry.payload {
        EntryPayload::Blank => (BLANK, Vec::new()),
        EntryPayload::Normal(c) => match c.writes.as_slice() {
            [one] => (COMMAND, one.clone()),
            writes => (WRITES, encode_writes(writes)),
        },
        EntryPayload::Membership(m) => (
            MEMBERSHIP,
            // Invariant: a Membership of u64 ids and BasicNodes (strings)
            // always serializes.
            serde_json::to_vec(m).expect("a membership serializes to JSON"),
        ),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(VERSION);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&entry.log_id.index.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// Kind 3's body for `writes` (also the body of a follower's forwarded
/// batch, `POST /raft/propose`).
pub fn encode_writes(writes: &[Vec<u8>]) -> Vec<u8> {
    let len = 4 + writes.iter().map(|w| 4 + w.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    // Invariant: a write is at most a keel batch (megabytes), never 4 GiB,
    // and an entry holds far fewer than 2^32 of them.
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for w in writes {
        out.extend_from_slice(&(w.len() as u32).to_le_bytes());
        out.extend_from_slice(w);
    }
    out
}

/// The writes [`encode_writes`] encoded.
pub fn decode_writes(mut b: &[u8]) -> Result<Vec<Vec<u8>>, EntryDecodeError> {
    let mut take = |n: usize, what: &str| -> Result<&[u8], EntryDecodeError> {
        if b.len() < n {
            return Err(EntryDecodeError::Writes(format!(
                "{what} needs {n} bytes, {} left",
                b.len()
            )));
        }
        let (head, rest) = b.split_at(n);
        b = rest;
        Ok(head)
    };
    let count = le32(take(4, "the count")?);
    let mut writes = Vec::new();
    for i in 0..count {
        let len = le32(take(4, &format!("write {i}'s length"))?) as usize;
        writes.push(take(len, &format!("write {i}"))?.to_vec());
    }
    if !b.is_empty() {
        return Err(EntryDecodeError::Writes(format!(
            "{} bytes after the last of {count} writes",
            b.len()
        )));
    }
    Ok(writes)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The entry a record payload holds.
pub fn decode(b: &[u8]) -> Result<Entry, EntryDecodeError> {
    if b.len() < HEADER_LEN {
        return Err(EntryDecodeError::Short(b.len()));
    }
    if b[0] != VERSION {
        return Err(EntryDecodeError::Version(b[0]));
    }
    let log_id = LogId::new(
        CommittedLeaderId::new(le64(&b[1..]), le64(&b[9..])),
        le64(&b[17..]),
    );
    let body = &b[HEADER_LEN..];
    let payload = match b[25] {
        BLANK if body.is_empty() => EntryPayload::Blank,
        BLANK => return Err(EntryDecodeError::BlankWithBody(body.len())),
        COMMAND => EntryPayload::Normal(Command::one(body.to_vec())),
        WRITES => EntryPayload::Normal(Command {
            writes: decode_writes(body)?,
        }),
        MEMBERSHIP => {
            let m: Membership<u64, openraft::BasicNode> = serde_json::from_slice(body)
                .map_err(|e| EntryDecodeError::Membership(e.to_string()))?;
            EntryPayload::Membership(m)
        }
        k => return Err(EntryDecodeError::Kind(k)),
    };
    Ok(openraft::Entry::<TypeConfig> { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn entry(term: u64, node: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, node), index),
            payload,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let voters = BTreeSet::from([1u64, 2, 3]);
        let nodes: BTreeMap<u64, openraft::BasicNode> = (1..=4)
            .map(|i| (i, openraft::BasicNode::new(format!("127.0.0.1:700{i}"))))
            .collect();
        let m = Membership::new(vec![voters], nodes);
        for e in [
            entry(1, 1, 0, EntryPayload::Blank),
            entry(
                3,
                2,
                17,
                EntryPayload::Normal(Command::one(b"put k v".to_vec())),
            ),
            entry(
                u64::MAX,
                u64::MAX,
                u64::MAX,
                EntryPayload::Normal(Command::one(vec![])),
            ),
            entry(4, 1, 3, EntryPayload::Normal(Command::default())),
            entry(
                4,
                1,
                4,
                EntryPayload::Normal(Command {
                    writes: vec![b"a".to_vec(), vec![], b"ccc".to_vec()],
                }),
            ),
            entry(5, 3, 9, EntryPayload::Membership(m)),
        ] {
            assert_eq!(decode(&encode(&e)), Ok(e));
        }
    }

    #[test]
    fn the_layout_is_as_documented() {
        let e = entry(2, 7, 5, EntryPayload::Normal(Command::one(b"xy".to_vec())));
        let b = encode(&e);
        assert_eq!(b.len(), HEADER_LEN + 2);
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..9], &2u64.to_le_bytes());
        assert_eq!(&b[9..17], &7u64.to_le_bytes());
        assert_eq!(&b[17..25], &5u64.to_le_bytes());
        assert_eq!(b[25], 1);
        assert_eq!(&b[26..], b"xy");
        let two = Command {
            writes: vec![b"xy".to_vec(), b"z".to_vec()],
        };
        let b = encode(&entry(2, 7, 6, EntryPayload::Normal(two)));
        assert_eq!(b[25], 3);
        assert_eq!(&b[26..30], &2u32.to_le_bytes());
        assert_eq!(&b[30..34], &2u32.to_le_bytes());
        assert_eq!(&b[34..36], b"xy");
        assert_eq!(&b[36..40], &1u32.to_le_bytes());
        assert_eq!(&b[40..], b"z");
    }

    #[test]
    fn malformed_payloads_are_refused_by_name() {
        let good = encode(&entry(1, 1, 1, EntryPayload::Blank));
        assert_eq!(decode(&good[..25]), Err(EntryDecodeError::Short(25)));
        let mut v = good.clone();
        v[0] = 2;
        assert_eq!(decode(&v), Err(EntryDecodeError::Version(2)));
        let mut k = good.clone();
        k[25] = 9;
        assert_eq!(decode(&k), Err(EntryDecodeError::Kind(9)));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(decode(&b), Err(EntryDecodeError::BlankWithBody(1)));
        let mut m = good.clone();
        m[25] = 2;
        m.extend_from_slice(b"{not json");
        assert!(matches!(decode(&m), Err(EntryDecodeError::Membership(_))));
        let two = Command {
            writes: vec![b"xy".to_vec(), b"z".to_vec()],
        };
        let w = encode(&entry(1, 1, 1, EntryPayload::Normal(two)));
        for cut in HEADER_LEN..w.len() {
            assert!(
                matches!(decode(&w[..cut]), Err(EntryDecodeError::Writes(_))),
                "cut at {cut}"
            );
        }
        let mut long = w;
        long.push(0);
        assert!(matches!(decode(&long), Err(EntryDecodeError::Writes(_))));
    }

    proptest! {
        #[test]
        fn commands_round_trip(term: u64, node: u64, index: u64,
                               writes in proptest::collection::vec(
                                   proptest::collection::vec(any::<u8>(), 0..50), 0..5)) {
            let e = entry(term, node, index, EntryPayload::Normal(Command { writes }));
            prop_assert_eq!(decode(&encode(&e)), Ok(e));
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode(&b);
        }
    }
}
