//! The table's bloom filter: a lookup of a key the table does not hold
//! reads no data block in about 99 of 100 cases.
//!
//! Payload: the bit array (`m` bits, `m / 8` bytes, bit `i` is bit `i % 8`
//! of byte `i / 8`), then `k` (1 byte, the number of probes). A key's
//! probes: `h = crc32c(key)`, `delta = h.rotate_right(17)`; probe `j` (for
//! `j` in `0..k`) is bit `(h + j * delta) mod m` (wrapping 32-bit
//! arithmetic), LevelDB's double hashing. CRC32C is already computed in
//! hardware here and specified in docs/FORMAT.md, so the filter needs no
//! other hash function to be written down.

/// Bits per key: about 1% false positives with [`PROBES`] probes.
pub const BITS_PER_KEY: usize = 10;
/// Probes per key: `BITS_PER_KEY * ln 2`, rounded.
pub const PROBES: u8 = 7;
/// The smallest filter, so a table of few keys still filters well.
const MIN_BITS: usize = 64;

/// A key's hash, the start of its probes.
pub fn key_hash(key: &[u8]) -> u32 {
    crc32c::crc32c(key)
}

/// The filter payload for keys with these hashes.
pub fn build(hashes: &[u32]) -> Vec<u8> {
    let bits = (hashes.len() * BITS_PER_KEY).max(MIN_BITS).div_ceil(8) * 8;
    let mut out = vec![0u8; bits / 8];
    for &h in hashes {
        for bit in probes(h, PROBES, bits as u32) {
            out[bit as usize / 8] |= 1 << (bit % 8);
        }
    }
    out.push(PROBES);
    out
}

fn probes(mut h: u32, k: u8, m: u32) -> impl Iterator<Item = u32> {
    let delta = h.rotate_right(17);
    (0..k).map(move |_| {
        let bit = h % m;
        h = h.wrapping_add(delta);
        bit
    })
}

/// A filter read from a table.
#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u8>,
    k: u8,
}

impl Bloom {
    /// The filter in `payload`; `None` if it has no bits or more than 30
    /// probes (not written by keel).
    pub fn new(mut payload: Vec<u8>) -> Option<Bloom> {
        let k = payload.pop()?;
        if payload.is_empty() || k == 0 || k > 30 {
            return None;
        }
        Some(Bloom { bits: payload, k })
    }

    /// Bytes of the filter.
    pub fn bytes(&self) -> usize {
        self.bits.len()
    }

    /// Whether the key with hash `h` may be in the table (false: it is not).
    pub fn may_contain(&self, h: u32) -> bool {
        let m = (self.bits.len() * 8) as u32;
        probes(h, self.k, m).all(|bit| self.bits[bit as usize / 8] & (1 << (bit % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let keys: Vec<Vec<u8>> = (0..10_000u32)
            .map(|i| format!("key{i}").into_bytes())
            .collect();
        let hashes: Vec<u32> = keys.iter().map(|k| key_hash(k)).collect();
        let bloom = Bloom::new(build(&hashes)).unwrap();
        assert!(hashes.iter().all(|&h| bloom.may_contain(h)));
        let false_positives = (0..100_000u32)
            .filter(|i| bloom.may_contain(key_hash(format!("other{i}").as_bytes())))
            .count();
        // 1% expected; the bound leaves room for this hash's quality.
        assert!(
            false_positives < 2_000,
            "{false_positives} false positives in 100,000"
        );
    }

    #[test]
    fn an_empty_filter_holds_nothing_and_bad_payloads_are_refused() {
        let bloom = Bloom::new(build(&[])).unwrap();
        assert!(!bloom.may_contain(key_hash(b"a")));
        assert!(Bloom::new(vec![]).is_none());
        assert!(Bloom::new(vec![7]).is_none());
        assert!(Bloom::new(vec![0xFF, 0]).is_none());
    }
}
