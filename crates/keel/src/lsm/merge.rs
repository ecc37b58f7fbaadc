//! Merging sorted sources into one sorted stream where, for a key held by
//! several sources, the first source (the newest data) wins and the others'
//! entries for it are skipped. Reads and compactions both use it.

use crate::table::{Entry, TableError};

/// One entry of a sorted source.
pub type Item = Result<(Vec<u8>, Entry), TableError>;

/// A sorted source, boxed so tables and levels mix.
pub type Source<'a> = Box<dyn Iterator<Item = Item> + Send + 'a>;

/// The merge of sources given newest first.
///
/// Each source's next entry waits in `heads` (filled lazily), so picking
/// the smallest key compares borrowed keys and copies none.
pub struct MergeIter<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<Item>>,
    /// Whether `heads[i]` holds source i's next entry (or its end).
    filled: Vec<bool>,
    failed: bool,
}

impl<'a> MergeIter<'a> {
    /// Merges `sources`, newest first.
    pub fn new(sources: Vec<Source<'a>>) -> MergeIter<'a> {
        let n = sources.len();
        MergeIter {
            sources,
            heads: (0..n).map(|_| None).collect(),
            filled: vec![false; n],
            failed: false,
        }
    }

    fn fill(&mut self) {
        for i in 0..self.sources.len() {
            if !self.filled[i] {
                self.heads[i] = self.sources[i].next();
                self.filled[i] = true;
            }
        }
    }
}

impl Iterator for MergeIter<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.failed {
            return None;
        }
        self.fill();
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            match head {
                None => {}
                Some(Err(_)) => {
                    self.failed = true;
                    self.filled[i] = false;
                    return self.heads[i].take();
                }
                Some(Ok((k, _))) => {
                    let better = match best {
                        None => true,
                        Some(b) => matches!(&self.heads[b], Some(Ok((bk, _))) if k < bk),
                    };
                    if better {
                        best = Some(i);
                    }
                }
            }
        }
        let winner = best?;
        let item = self.heads[winner].take();
        self.filled[winner] = false;
        if let Some(Ok((key, _))) = &item {
            // Older sources' entries for the same key are shadowed.
            for i in 0..self.heads.len() {
                if i != winner && matches!(&self.heads[i], Some(Ok((k, _))) if k == key) {
                    self.heads[i] = None;
                    self.filled[i] = false;
                }
            }
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(entries: &[(&str, Option<&str>)]) -> Source<'static> {
        let v: Vec<Item> = entries
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.as_bytes().to_vec(),
                    v.map_or(Entry::Tombstone, |v| Entry::Put(v.as_bytes().to_vec())),
                ))
            })
            .collect();
        Box::new(v.into_iter())
    }

    #[test]
    fn the_newest_source_wins_and_keys_come_once_in_order() {
        let newest = src(&[("b", Some("2")), ("d", None)]);
        let older = src(&[("a", Some("1")), ("b", Some("old")), ("d", Some("old"))]);
        let oldest = src(&[("b", Some("older")), ("c", Some("3"))]);
        let got: Vec<(Vec<u8>, Entry)> = MergeIter::new(vec![newest, older, oldest])
            .map(Result::unwrap)
            .collect();
        let want = [
            ("a", Entry::Put(b"1".to_vec())),
            ("b", Entry::Put(b"2".to_vec())),
            ("c", Entry::Put(b"3".to_vec())),
            ("d", Entry::Tombstone),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, e), (wk, we)) in got.iter().zip(want) {
            assert_eq!((k.as_slice(), e), (wk.as_bytes(), &we));
        }
    }
}
