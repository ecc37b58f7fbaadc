//! [`EntryCache`]: the newest entries of a Raft log, in memory, in index
//! order, so that replicating them to followers does not read segment files
//! (a log read scans whole segments), and so that an entry is readable as
//! soon as it is appended, as openraft expects, before its fdatasync.
//!
//! Invariants:
//! - It holds a contiguous run of entries ending at the log's last entry,
//!   or nothing: an append that does not follow it empties it first, a
//!   truncation cuts it at the same index, a new log generation empties it.
//! - It is bounded ([`MAX_ENTRIES`], [`MAX_BYTES`]); the oldest entries go
//!   first, and reads before its first entry go to the log.

use crate::Entry;
use openraft::EntryPayload;
use std::collections::VecDeque;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 65_536;
/// Most payload bytes kept (commands; other entries count 64 bytes).
pub const MAX_BYTES: usize = 32 << 20;

/// The newest entries of a log.
#[derive(Debug, Default)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn weight(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(c) => c.writes.iter().map(|w| w.len() + 16).sum::<usize>().max(64),
        _ => 64,
    }
}

impl EntryCache {
    /// The index of the first entry held.
    pub fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Adds `e`, the log's new last entry.
    pub fn push(&mut self, e: Entry) {
        let follows = self
            .entries
            .back()
            .is_none_or(|last| last.log_id.index + 1 == e.log_id.index);
        if !follows {
            self.clear();
        }
        self.bytes += weight(&e);
        self.entries.push_back(e);
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= weight(&old),
                None => break,
            }
        }
    }

    /// Drops every entry from `index` on (a truncation).
    pub fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= weight(&e);
            }
        }
    }

    /// Empties it.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `[from, to)` if it holds all of them.
    pub fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.log_id.index;
        if from < first || to > last + 1 || from >= to {
            return None;
        }
        let start = (from - first) as usize;
        let end = (to - first) as usize;
        Some(self.entries.range(start..end).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, LogId};
    use openraft::CommittedLeaderId;

    fn e(index: u64, len: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::one(vec![7; len])),
        }
    }

    #[test]
    fn holds_a_contiguous_run_and_answers_only_what_it_holds() {
        let mut c = EntryCache::default();
        for i in 5..15 {
            c.push(e(i, 10));
        }
        assert_eq!(c.get(5, 15).unwrap().len(), 10);
        assert_eq!(c.get(7, 9).unwrap()[0].log_id.index, 7);
        assert!(c.get(4, 9).is_none() && c.get(10, 16).is_none() && c.get(9, 9).is_none());
        c.truncate_from(12);
        assert!(c.get(10, 13).is_none());
        assert_eq!(c.get(10, 12).unwrap().len(), 2);
        // An append that does not follow starts over.
        c.push(e(40, 10));
        assert_eq!(c.first_index(), Some(40));
        assert!(c.get(10, 12).is_none());
    }

    #[test]
    fn the_oldest_entries_go_when_it_is_full() {
        let mut c = EntryCache::default();
        for i in 0..20 {
            c.push(e(i, MAX_BYTES / 10));
        }
        let first = c.first_index().unwrap();
        assert!(first > 0 && c.bytes <= MAX_BYTES);
        assert_eq!(c.get(first, 20).unwrap().len(), (20 - first) as usize);
    }
}
