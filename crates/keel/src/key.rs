//! [`Key`]: a stored key, with its first 16 bytes kept inline so that most
//! comparisons never leave the map's node.
//!
//! The ordered map compares a key with about log2(n) others on every insert
//! and lookup. With the bytes behind a pointer, each comparison is a likely
//! cache miss at a million keys (memcmp was the top entry of a SET profile).
//! `Key` orders first by `head`, the first 16 bytes read as a big-endian
//! number (zero-padded), and only when heads are equal by the whole bytes.
//!
//! Invariant: that order is exactly the bytewise (lexicographic) order of
//! the keys, so ranges, scans and checkpoint order are unchanged. Proof
//! sketch: if the heads differ, they differ first at some byte i < 16; if
//! both keys have a byte there, that byte decides both orders; if one key
//! has ended before i (its padding is 0 and the other's byte is not), it
//! is a proper prefix of the other and so smaller in both orders. If the
//! heads are equal, the whole bytes decide.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

const HEAD: usize = 16;

/// An immutable key: shared bytes plus an inline head for comparisons.
#[derive(Clone)]
pub struct Key {
    head: u128,
    bytes: Arc<[u8]>,
}

impl Key {
    /// The key made of `bytes`.
    pub fn new(bytes: Arc<[u8]>) -> Key {
        let mut head = [0u8; HEAD];
        let n = bytes.len().min(HEAD);
        head[..n].copy_from_slice(&bytes[..n]);
        Key {
            head: u128::from_be_bytes(head),
            bytes,
        }
    }
}

impl From<&[u8]> for Key {
    fn from(b: &[u8]) -> Key {
        Key::new(Arc::from(b))
    }
}

impl From<Vec<u8>> for Key {
    fn from(b: Vec<u8>) -> Key {
        Key::new(Arc::from(b))
    }
}

impl Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.bytes
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.bytes[..].cmp(&other.bytes[..]))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.head == other.head && self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// As the bytes hash, so that `Borrow<[u8]>` lookups find it.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes[..].hash(state)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Key order is byte order, for keys short and long, sharing
        /// prefixes and zero bytes (the padding's value) in every place.
        #[test]
        fn key_order_is_byte_order(
            a in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..40),
            b in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..40),
            shared in 0usize..20,
        ) {
            let mut b2 = a[..shared.min(a.len())].to_vec();
            b2.extend_from_slice(&b);
            for (x, y) in [(&a, &b), (&a, &b2)] {
                let (kx, ky) = (Key::from(x.as_slice()), Key::from(y.as_slice()));
                prop_assert_eq!(kx.cmp(&ky), x.as_slice().cmp(y.as_slice()), "{:?} vs {:?}", x, y);
                prop_assert_eq!(kx == ky, x == y);
            }
        }
    }

    #[test]
    fn padding_zeros_and_real_zeros_differ() {
        let k = |b: &[u8]| Key::from(b);
        assert!(k(b"a") < k(b"a\0"));
        assert!(k(b"a\0") < k(b"a\0\0"));
        assert!(k(&[0u8; 16]) < k(&[0u8; 17]));
        assert!(k(&[0u8; 17]) < k(&[0u8, 1]));
        assert_eq!(
            k(b"same-long-key-over-16-bytes"),
            k(b"same-long-key-over-16-bytes")
        );
    }
}
