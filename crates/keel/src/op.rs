//! The engine's log records: what one WAL payload means. Pure codec, no I/O.
//!
//! Layout (all integers little-endian; specified in docs/FORMAT.md):
//! - `1` Put:    `[1][klen u32][key][vlen u32][value]`
//! - `2` Delete: `[2][klen u32][key]`
//! - `3` Clear:  `[3]`
//! - `4` Batch:  `[4][count u32]` then `count` Put or Delete bodies, each
//!   with its own tag. A batch is one record, hence atomic.
//! - `5` With metadata: `[5][count u8]` then `count` metadata entries
//!   (`crate::metadata`), then `0` (no change) or `1` and one operation of
//!   tags 1-4: the metadata and the change are one record, hence atomic.
//!
//! Decoding checks every length against the bytes left before using it and
//! rejects trailing bytes, so no input can panic it or make it allocate more
//! than the record's own size.

const PUT: u8 = 1;
const DELETE: u8 = 2;
const CLEAR: u8 = 3;
const BATCH: u8 = 4;
const WITH_METADATA: u8 = 5;

/// One change inside a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// One logged mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set a key to a value.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (removing a missing key is not an error).
    Delete(Vec<u8>),
    /// Remove every key.
    Clear,
    /// Puts and deletes applied together, in order, or not at all.
    Batch(Vec<BatchOp>),
    /// Application metadata set (`crate::metadata`) in the same record as
    /// a change (or none): after any crash both are there or neither.
    WithMetadata {
        /// Names and values to set, in order.
        metadata: Vec<(Vec<u8>, Vec<u8>)>,
        /// The change to the keys (never another `WithMetadata`).
        op: Option<Box<Op>>,
    },
}

/// Why a log record's payload is not an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field runs past the end of the payload.
    #[error("needs {needed} bytes at offset {offset}, only {left} left")]
    CutShort {
        /// Bytes the field needs.
        needed: usize,
        /// Where it starts.
        offset: usize,
        /// Bytes left in the payload.
        left: usize,
    },
    /// A batch claims more entries than its bytes could hold.
    #[error("batch claims {count} entries in {bytes} bytes")]
    BatchCountTooLarge {
        /// Entries claimed.
        count: usize,
        /// Bytes left for them.
        bytes: usize,
    },
    /// An operation tag keel does not know.
    #[error("unknown operation tag {0}")]
    UnknownOperation(u8),
    /// A batch entry tag keel does not know.
    #[error("unknown batch entry tag {0}")]
    UnknownBatchEntry(u8),
    /// Bytes after a complete operation.
    #[error("{0} unexpected bytes after the operation")]
    TrailingBytes(usize),
    /// A metadata entry is malformed.
    #[error("metadata: {0}")]
    Metadata(#[from] crate::metadata::MetadataError),
    /// A record with metadata holds another one.
    #[error("a record with metadata holds another record with metadata")]
    NestedMetadata,
}

/// At most the first 48 bytes of `b`, escaped for a terminal, with `...`
/// when there is more: how tools show keys and values.
pub fn preview(b: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&b[..b.len().min(48)])
        .chars()
        .flat_map(char::escape_default)
        .collect();
    if b.len() > 48 {
        format!("{s}...")
    } else {
        s
    }
}

/// One line for a person: `put key="k" value="v" (1 bytes)`, `delete
/// key="k"`, `clear`, `batch of 2: put "a"="1", delete "b"` (keys and
/// values previewed).
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put(k, v) => write!(
                f,
                "put key=\"{}\" value=\"{}\" ({} bytes)",
                preview(k),
                preview(v),
                v.len()
            ),
            Op::Delete(k) => write!(f, "delete key=\"{}\"", preview(k)),
            Op::Clear => f.write_str("clear"),
            Op::Batch(ops) => {
                write!(f, "batch of {}: ", ops.len())?;
                for (i, o) in ops.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    match o {
                        BatchOp::Put(k, v) => {
                            write!(f, "{sep}put \"{}\"=\"{}\"", preview(k), preview(v))?
                        }
                        BatchOp::Delete(k) => write!(f, "{sep}delete \"{}\"", preview(k))?,
                    }
                }
                Ok(())
            }
            Op::WithMetadata { metadata, op } => {
                let set = crate::metadata::describe(crate::metadata::pairs(metadata));
                write!(f, "metadata {set}")?;
                match op {
                    Some(op) => write!(f, " with {op}"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A put or delete body with its tag: shared by lone operations and batch
/// entries, which have the same layout.
fn encode_put(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.push(PUT);
    put_bytes(out, k);
    put_bytes(out, v);
}

fn encode_delete(out: &mut Vec<u8>, k: &[u8]) {
    out.push(DELETE);
    put_bytes(out, k);
}

fn put_len(k: &[u8], v: &[u8]) -> usize {
    9 + k.len() + v.len()
}

fn delete_len(k: &[u8]) -> usize {
    5 + k.len()
}

impl BatchOp {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            BatchOp::Put(k, v) => encode_put(out, k, v),
            BatchOp::Delete(k) => encode_delete(out, k),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            BatchOp::Put(k, v) => put_len(k, v),
            BatchOp::Delete(k) => delete_len(k),
        }
    }
}

impl Op {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        match self {
            Op::Put(k, v) => encode_put(&mut out, k, v),
            Op::Delete(k) => encode_delete(&mut out, k),
            Op::Clear => out.push(CLEAR),
            Op::Batch(ops) => {
                out.push(BATCH);
                out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
                for op in ops {
                    op.encode_into(&mut out);
                }
            }
            Op::WithMetadata { metadata, op } => {
                out.push(WITH_METADATA);
                out.push(metadata.len() as u8);
                crate::metadata::encode_into(&mut out, crate::metadata::pairs(metadata));
                match op {
                    Some(op) => {
                        out.push(1);
                        out.extend_from_slice(&op.encode());
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }

    /// Bytes [`encode`](Self::encode) produces.
    pub fn encoded_len(&self) -> usize {
        match self {
            Op::Put(k, v) => put_len(k, v),
            Op::Delete(k) => delete_len(k),
            Op::Clear => 1,
            Op::Batch(ops) => 5 + ops.iter().map(BatchOp::encoded_len).sum::<usize>(),
            Op::WithMetadata { metadata, op } => {
                3 + crate::metadata::encoded_len(crate::metadata::pairs(metadata))
                    + op.as_ref().map_or(0, |op| op.encoded_len())
            }
        }
    }

    /// The change to the keys, without metadata (`None`: metadata only).
    pub fn change(&self) -> Option<&Op> {
        match self {
            Op::WithMetadata { op, .. } => op.as_deref(),
            op => Some(op),
        }
    }

    /// Parses a record, trusting nothing.
    pub fn decode(buf: &[u8]) -> Result<Op, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let op = match r.u8()? {
            PUT => Op::Put(r.bytes()?, r.bytes()?),
            DELETE => Op::Delete(r.bytes()?),
            CLEAR => Op::Clear,
            BATCH => {
                let count = r.u32()? as usize;
                // Each entry takes at least 5 bytes: cap before allocating.
                if count > r.remaining() / 5 {
                    return Err(DecodeError::BatchCountTooLarge {
                        count,
                        bytes: r.remaining(),
                    });
                }
                let mut ops = Vec::with_capacity(count);
                for _ in 0..count {
                    ops.push(match r.u8()? {
                        PUT => BatchOp::Put(r.bytes()?, r.bytes()?),
                        DELETE => BatchOp::Delete(r.bytes()?),
                        t => return Err(DecodeError::UnknownBatchEntry(t)),
                    });
                }
                Op::Batch(ops)
            }
            WITH_METADATA => {
                let count = r.u8()? as usize;
                let mut metadata = Vec::with_capacity(count.min(crate::metadata::MAX_NAMES));
                for _ in 0..count {
                    metadata.push(crate::metadata::decode_entry(r.buf, &mut r.pos)?);
                }
                crate::metadata::check(&metadata)?;
                let op = match r.u8()? {
                    0 => None,
                    1 => {
                        let inner = Op::decode(&r.buf[r.pos..])?;
                        if matches!(inner, Op::WithMetadata { .. }) {
                            return Err(DecodeError::NestedMetadata);
                        }
                        r.pos = r.buf.len();
                        Some(Box::new(inner))
                    }
                    t => return Err(DecodeError::UnknownOperation(t)),
                };
                Op::WithMetadata { metadata, op }
            }
            t => return Err(DecodeError::UnknownOperation(t)),
        };
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes(r.remaining()));
        }
        Ok(op)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::CutShort {
                needed: n,
                offset: self.pos,
                left: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    fn op() -> impl Strategy<Value = Op> {
        let batch_op = prop_oneof![
            (bytes(), bytes()).prop_map(|(k, v)| BatchOp::Put(k, v)),
            bytes().prop_map(BatchOp::Delete),
        ];
        let plain = prop_oneof![
            (bytes(), bytes()).prop_map(|(k, v)| Op::Put(k, v)),
            bytes().prop_map(Op::Delete),
            Just(Op::Clear),
            proptest::collection::vec(batch_op, 0..8).prop_map(Op::Batch),
        ];
        let metadata = proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..12), bytes()),
            0..4,
        );
        prop_oneof![
            3 => plain.clone(),
            1 => (metadata, proptest::option::of(plain)).prop_map(|(metadata, op)| {
                Op::WithMetadata { metadata, op: op.map(Box::new) }
            }),
        ]
    }

    proptest! {
        #[test]
        fn ops_round_trip(op in op()) {
            let enc = op.encode();
            prop_assert_eq!(enc.len(), op.encoded_len());
            prop_assert_eq!(Op::decode(&enc), Ok(op.clone()));
            // Whatever decodes re-encodes identically.
            prop_assert_eq!(Op::decode(&enc).unwrap().encode(), enc);
        }

        #[test]
        fn truncations_are_rejected(op in op()) {
            let enc = op.encode();
            for cut in 0..enc.len() {
                prop_assert!(Op::decode(&enc[..cut]).is_err());
            }
            let mut longer = enc.clone();
            longer.push(0);
            prop_assert!(Op::decode(&longer).is_err());
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(op) = Op::decode(&buf) {
                prop_assert_eq!(op.encode(), buf);
            }
        }
    }

    #[test]
    fn format_md_example_is_what_the_code_writes() {
        let enc = Op::Put(b"a".to_vec(), b"xy".to_vec()).encode();
        assert_eq!(enc, [0x01, 1, 0, 0, 0, 0x61, 2, 0, 0, 0, 0x78, 0x79]);
    }

    #[test]
    fn metadata_records_decode_as_format_md_says_and_never_nest() {
        let op = Op::WithMetadata {
            metadata: vec![(b"n".to_vec(), b"v".to_vec())],
            op: Some(Box::new(Op::Clear)),
        };
        let enc = op.encode();
        assert_eq!(enc, [5, 1, 1, b'n', 1, 0, 0, 0, b'v', 1, 3]);
        assert_eq!(Op::decode(&enc), Ok(op.clone()));
        assert_eq!(op.change(), Some(&Op::Clear));
        let mut nested = vec![5, 0, 1];
        nested.extend_from_slice(&op.encode());
        assert_eq!(Op::decode(&nested), Err(DecodeError::NestedMetadata));
        // Metadata only: 0 after the entries.
        assert_eq!(
            Op::decode(&[5, 0, 0]),
            Ok(Op::WithMetadata {
                metadata: Vec::new(),
                op: None
            })
        );
        assert_eq!(
            Op::decode(&[5, 1, 0]),
            Err(DecodeError::Metadata(
                crate::metadata::MetadataError::BadName(0)
            ))
        );
    }

    #[test]
    fn a_huge_batch_count_does_not_allocate() {
        let mut b = vec![BATCH];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Op::decode(&b).is_err());
    }
}
