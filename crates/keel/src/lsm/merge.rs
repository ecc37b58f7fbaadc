//! Merging sorted sources into one sorted stream where, for a key held by
//! several sources, the first source (the newest data) wins and the others'
//! entries for it are skipped. Reads and compactions both use it.

use crate::table::{Entry, TableError};
use std::iter::Peekable;

/// One entry of a sorted source.
pub type Item = Result<(Vec<u8>, Entry), TableError>;

/// A sorted source, boxed so tables and levels mix.
pub type Source<'a> = Box<dyn Iterator<Item = Item> + Send + 'a>;

/// The merge of sources given newest first.
pub struct MergeIter<'a> {
    sources: Vec<Peekable<Source<'a>>>,
    failed: bool,
}

impl<'a> MergeIter<'a> {
    /// Merges `sources`, newest first.
    pub fn new(sources: Vec<Source<'a>>) -> MergeIter<'a> {
        MergeIter {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
            failed: false,
        }
    }
}

impl Iterator for MergeIter<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.failed {
            return None;
        }
        // The smallest head key, and the newest source holding it. A
        // source's error is returned at once (and ends the merge).
        let mut best: Option<(usize, Vec<u8>)> = None;
        for i in 0..self.sources.len() {
            match self.sources[i].peek() {
                None => {}
                Some(Err(_)) => {
                    self.failed = true;
                    return self.sources[i].next();
                }
                Some(Ok((k, _))) if best.as_ref().is_none_or(|(_, b)| k < b) => {
                    best = Some((i, k.clone()));
                }
                Some(Ok(_)) => {}
            }
        }
        let (winner, key) = best?;
        let item = self.sources[winner].next();
        for (i, s) in self.sources.iter_mut().enumerate() {
            if i != winner && matches!(s.peek(), Some(Ok((k, _))) if *k == key) {
                s.next();
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
