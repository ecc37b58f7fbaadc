//! [`BlockCache`]: data blocks read from tables, kept up to a byte budget
//! (`quick_cache`, sharded and weighted by bytes; fjall uses it), so hot
//! blocks are read and checksummed once. Index and filter blocks are not in
//! it: each open table holds its own in memory
//! ([`Table::pinned_bytes`](super::Table::pinned_bytes) says how much).

use super::block::Block;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone)]
struct BlockWeight;

impl quick_cache::Weighter<(u64, u64), Arc<Block>> for BlockWeight {
    fn weight(&self, _key: &(u64, u64), block: &Arc<Block>) -> u64 {
        // The payload plus a rough charge for the entry and its restarts.
        block.bytes() as u64 + 64
    }
}

/// Counters of a [`BlockCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that read the file.
    pub misses: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// The budget.
    pub capacity: u64,
}

/// Data blocks shared by every table of a store, keyed by (table, offset).
pub struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u64), Arc<Block>, BlockWeight>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    next_id: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache of at most `capacity` bytes (at least one block's worth).
    pub fn new(capacity: u64) -> Arc<BlockCache> {
        let capacity = capacity.max(64 << 10);
        let items = (capacity / super::DATA_BLOCK_SIZE as u64).max(16) as usize;
        Arc::new(BlockCache {
            cache: quick_cache::sync::Cache::with_weighter(items, capacity, BlockWeight),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    /// A key space for one open table (so two tables never share keys).
    pub(crate) fn table_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, table: u64, offset: u64) -> Option<Arc<Block>> {
        let hit = self.cache.get(&(table, offset));
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub(crate) fn insert(&self, table: u64, offset: u64, block: Arc<Block>) {
        self.cache.insert((table, offset), block);
    }

    /// Hits, misses and bytes held.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.cache.weight(),
            capacity: self.capacity,
        }
    }
}
