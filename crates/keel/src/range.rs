//! [`Range`]: an iterator over the entries of a key range, in key order, as
//! they were when it was made.
//!
//! It holds an O(1) snapshot of the ordered map (the persistent map shares
//! structure with the live one), so writes that come after it are not seen
//! and never wait for it. It fetches entries from the snapshot a batch at a
//! time, restarting each batch just after the last key returned.
//!
//! On a store kept on tables it holds a pinned [`View`](crate::layers::View)
//! instead and merges its memtables and tables. A table block that fails
//! its checksum ends the iteration early: [`Range::error`] then says why
//! (and it is logged), so a scan never silently returns less.

use crate::checkpoint::{Key, Tree};
use crate::lsm::MergeIter;
use crate::table::{Entry, TableError};
use std::collections::VecDeque;
use std::ops::Bound;

/// Entries fetched from the snapshot per refill.
const BATCH: usize = 128;

/// An iterator over `(key, value)` pairs in key order; see
/// [`Db::range`](crate::Db::range), [`Db::prefix`](crate::Db::prefix) and
/// [`Db::iter`](crate::Db::iter).
pub struct Range {
    /// Set on a store kept on tables: the merged layers.
    merged: Option<MergeIter<'static>>,
    /// A key the merged layers may begin with that the range excludes.
    skip: Option<Vec<u8>>,
    error: Option<TableError>,
    snapshot: Tree,
    next: Bound<Key>,
    end: Bound<Key>,
    prefix: Option<Vec<u8>>,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl Range {
    pub(crate) fn new(snapshot: Tree, start: Bound<Key>, end: Bound<Key>) -> Range {
        Range {
            merged: None,
            skip: None,
            error: None,
            snapshot,
            next: start,
            end,
            prefix: None,
            buf: VecDeque::new(),
            done: false,
        }
    }

    /// Entries whose keys start with `prefix`.
    pub(crate) fn with_prefix(snapshot: Tree, prefix: &[u8]) -> Range {
        let mut r = Range::new(
            snapshot,
            Bound::Included(Key::from(prefix)),
            Bound::Unbounded,
        );
        r.prefix = Some(prefix.to_vec());
        r
    }

    /// Entries of merged layers (positioned at the range's start) up to
    /// `end`, or with `prefix`.
    pub(crate) fn merged(
        merged: MergeIter<'static>,
        skip: Option<Vec<u8>>,
        end: Bound<Key>,
        prefix: Option<Vec<u8>>,
    ) -> Range {
        let mut r = Range::new(Tree::new(), Bound::Unbounded, end);
        r.merged = Some(merged);
        r.skip = skip;
        r.prefix = prefix;
        r
    }

    /// Why the iteration ended early, if it did: a damaged table.
    pub fn error(&self) -> Option<&TableError> {
        self.error.as_ref()
    }

    /// [`error`](Self::error), taken.
    pub fn take_error(&mut self) -> Option<TableError> {
        self.error.take()
    }

    fn next_merged(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let merged = self.merged.as_mut()?;
        loop {
            let (k, e) = match merged.next()? {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "a scan stopped at a damaged table");
                    self.error = Some(e);
                    self.merged = None;
                    return None;
                }
            };
            let past_end = match &self.end {
                Bound::Included(end) => k.as_slice() > &end[..],
                Bound::Excluded(end) => k.as_slice() >= &end[..],
                Bound::Unbounded => false,
            };
            if past_end || self.prefix.as_ref().is_some_and(|p| !k.starts_with(p)) {
                self.merged = None;
                return None;
            }
            if self.skip.take_if(|s| *s == k).is_some() {
                continue;
            }
            if let Entry::Put(v) = e {
                return Some((k, v));
            }
        }
    }

    fn refill(&mut self) {
        let prefix = self.prefix.as_deref();
        let mut last = None;
        for (k, v) in self
            .snapshot
            .range((self.next.clone(), self.end.clone()))
            .take(BATCH)
        {
            if prefix.is_some_and(|p| !k.starts_with(p)) {
                self.done = true;
                break;
            }
            self.buf.push_back((k.to_vec(), v.to_vec()));
            last = Some(k.clone());
        }
        match last {
            Some(k) if self.buf.len() == BATCH => self.next = Bound::Excluded(k),
            _ => self.done = true,
        }
    }
}

impl Iterator for Range {
    type Item = (Vec<u8>, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.merged.is_some() || self.error.is_some() {
            return self.next_merged();
        }
        if self.buf.is_empty() && !self.done {
            self.refill();
        }
        self.buf.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn tree(keys: &[Vec<u8>]) -> Tree {
        keys.iter()
            .map(|k| (Key::from(k.as_slice()), Arc::<[u8]>::from(&b"v"[..])))
            .collect()
    }

    proptest! {
        #[test]
        fn yields_exactly_what_the_map_range_holds(
            keys in proptest::collection::btree_set(proptest::collection::vec(0u8..4, 0..5), 0..400),
            lo in proptest::collection::vec(0u8..4, 0..3),
            hi in proptest::collection::vec(0u8..4, 0..3),
            prefix in proptest::collection::vec(0u8..4, 0..3),
        ) {
            let keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| !k.is_empty()).collect();
            let t = tree(&keys);
            let got: Vec<Vec<u8>> = Range::new(
                t.clone(),
                Bound::Included(Key::from(lo.as_slice())),
                Bound::Excluded(Key::from(hi.as_slice())),
            )
            .map(|(k, _)| k)
            .collect();
            let want: Vec<Vec<u8>> = keys.iter().filter(|k| **k >= lo && **k < hi).cloned().collect();
            prop_assert_eq!(got, want);
            let got: Vec<Vec<u8>> = Range::with_prefix(t, &prefix).map(|(k, _)| k).collect();
            let want: Vec<Vec<u8>> = keys.iter().filter(|k| k.starts_with(&prefix)).cloned().collect();
            prop_assert_eq!(got, want);
        }
    }
}
