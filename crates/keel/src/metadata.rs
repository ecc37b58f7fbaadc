//! Application metadata: a few named values that an application built on
//! the store (keel-raft: the last applied Raft log id and the membership)
//! writes in the same log record as a change to the keys, so that after any
//! crash the store holds exactly the changes the metadata says it holds.
//!
//! Metadata is not keys: reads, scans, `len` and `clear` never see or touch
//! it. A record may set some names (a name set again replaces its value;
//! nothing removes a name); the store keeps the latest value of each, in
//! memory, in every checkpoint and in the manifest's edits, so it survives
//! the log below them being deleted. Limits: [`MAX_NAME_LEN`],
//! [`MAX_VALUE_LEN`], [`MAX_NAMES`] (per record and in all).
//!
//! Encoding of a list of entries (docs/FORMAT.md, "Application metadata"):
//! `nlen u8`, name, `vlen u32`, value, repeated; a reader checks every
//! length against the bytes left.

use std::collections::BTreeMap;

/// The store's metadata: name -> latest value.
pub type Metadata = BTreeMap<Vec<u8>, Vec<u8>>;

/// Longest name, in bytes (names are 1 to 255 bytes).
pub const MAX_NAME_LEN: usize = 255;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 << 10;
/// Most names one record may set, and the store may hold.
pub const MAX_NAMES: usize = 64;

/// Why metadata was refused or does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A name is empty or longer than [`MAX_NAME_LEN`].
    #[error("a metadata name must be 1 to {MAX_NAME_LEN} bytes, not {0}")]
    BadName(usize),
    /// A value is longer than [`MAX_VALUE_LEN`].
    #[error("a metadata value must be at most {MAX_VALUE_LEN} bytes, not {0}")]
    ValueTooLarge(usize),
    /// More than [`MAX_NAMES`] names.
    #[error("at most {MAX_NAMES} metadata names, not {0}")]
    TooMany(usize),
    /// The bytes end inside an entry.
    #[error("metadata cut short: an entry runs past the end at offset {0}")]
    CutShort(usize),
}

/// Checks one record's entries against the limits.
pub fn check(entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), MetadataError> {
    if entries.len() > MAX_NAMES {
        return Err(MetadataError::TooMany(entries.len()));
    }
    for (name, value) in entries {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(MetadataError::BadName(name.len()));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(MetadataError::ValueTooLarge(value.len()));
        }
    }
    Ok(())
}

/// Sets each of `entries` in `meta`, in order.
pub fn set_all<'a>(
    meta: &mut Metadata,
    entries: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>,
) {
    for (name, value) in entries {
        meta.insert(name.clone(), value.clone());
    }
}

/// A record's entries as the pairs the functions here take.
pub fn pairs(entries: &[(Vec<u8>, Vec<u8>)]) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
    entries.iter().map(|(n, v)| (n, v))
}

/// Bytes [`encode_into`] writes for `entries`.
pub fn encoded_len<'a>(entries: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> usize {
    entries
        .into_iter()
        .map(|(n, v)| 5 + n.len() + v.len())
        .sum()
}

/// Appends the encoding of `entries` (each name 1..=255 bytes: checked by
/// [`check`] before anything is written) to `out`.
pub fn encode_into<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>,
) {
    for (name, value) in entries {
        debug_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
}

/// Decodes one entry at `*pos` of `b`, advancing `pos`.
pub fn decode_entry(b: &[u8], pos: &mut usize) -> Result<(Vec<u8>, Vec<u8>), MetadataError> {
    let at = *pos;
    let cut = || MetadataError::CutShort(at);
    let nlen = *b.get(at).ok_or_else(cut)? as usize;
    if nlen == 0 {
        return Err(MetadataError::BadName(0));
    }
    let name = b.get(at + 1..at + 1 + nlen).ok_or_else(cut)?;
    let v_at = at + 1 + nlen;
    let vlen = b.get(v_at..v_at + 4).ok_or_else(cut)?;
    let vlen = u32::from_le_bytes(vlen.try_into().expect("4 bytes")) as usize;
    if vlen > MAX_VALUE_LEN {
        return Err(MetadataError::ValueTooLarge(vlen));
    }
    let value = b.get(v_at + 4..v_at + 4 + vlen).ok_or_else(cut)?;
    *pos = v_at + 4 + vlen;
    Ok((name.to_vec(), value.to_vec()))
}

/// Decodes a whole list (every byte of `b` belongs to an entry).
pub fn decode_all(b: &[u8]) -> Result<Metadata, MetadataError> {
    let mut meta = Metadata::new();
    let mut pos = 0;
    while pos < b.len() {
        let (name, value) = decode_entry(b, &mut pos)?;
        meta.insert(name, value);
        if meta.len() > MAX_NAMES {
            return Err(MetadataError::TooMany(meta.len()));
        }
    }
    Ok(meta)
}

/// One line for a person: `raft.applied=(26 bytes), x="y"` (UTF-8 values
/// shown previewed, others by length).
pub fn describe<'a>(entries: impl IntoIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> String {
    entries
        .into_iter()
        .map(|(n, v)| match std::str::from_utf8(v) {
            Ok(_) => format!("{}=\"{}\"", crate::op::preview(n), crate::op::preview(v)),
            Err(_) => format!("{}=({} bytes)", crate::op::preview(n), v.len()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries() -> impl Strategy<Value = Metadata> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..20),
            proptest::collection::vec(any::<u8>(), 0..40),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn lists_round_trip_and_cuts_are_refused(meta in entries()) {
            let mut b = Vec::new();
            encode_into(&mut b, &meta);
            prop_assert_eq!(b.len(), encoded_len(&meta));
            prop_assert_eq!(decode_all(&b), Ok(meta.clone()));
            // A cut inside the last entry is an error; a cut between
            // entries decodes as fewer entries (callers frame the list).
            if let Some((n, v)) = meta.iter().next_back() {
                let last = 5 + n.len() + v.len();
                for cut in b.len() - last + 1..b.len() {
                    prop_assert!(decode_all(&b[..cut]).is_err());
                }
            }
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_all(&b);
        }
    }

    #[test]
    fn limits_are_checked() {
        let ok = vec![(b"a".to_vec(), vec![0; MAX_VALUE_LEN])];
        assert_eq!(check(&ok), Ok(()));
        assert_eq!(
            check(&[(Vec::new(), Vec::new())]),
            Err(MetadataError::BadName(0))
        );
        assert_eq!(
            check(&[(vec![b'n'; 256], Vec::new())]),
            Err(MetadataError::BadName(256))
        );
        assert_eq!(
            check(&[(b"a".to_vec(), vec![0; MAX_VALUE_LEN + 1])]),
            Err(MetadataError::ValueTooLarge(MAX_VALUE_LEN + 1))
        );
        let many: Vec<_> = (0..=MAX_NAMES)
            .map(|i| (format!("n{i}").into_bytes(), Vec::new()))
            .collect();
        assert_eq!(check(&many), Err(MetadataError::TooMany(MAX_NAMES + 1)));
        // A decoded value over the limit is refused before it is copied.
        let mut b = vec![1, b'a'];
        b.extend_from_slice(&(u32::MAX).to_le_bytes());
        assert_eq!(
            decode_all(&b),
            Err(MetadataError::ValueTooLarge(u32::MAX as usize))
        );
    }
}
