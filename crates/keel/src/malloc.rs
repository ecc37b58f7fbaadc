//! [`limit_arenas`]: a setting of the C allocator for processes that run a
//! store, not part of the engine itself. glibc's malloc gives each thread
//! that allocates its own arena (up to 8 per core); memory a memtable, a
//! flush or a compaction freed in one arena is not reused by another, and
//! a store's threads (writers, flush, compaction, key count) then hold far
//! more than they use. Measured with `keel-db-bench`, a 2 GiB fill with
//! 64 MiB memtables and a 64 MiB cache peaked at 467 MB with glibc's
//! default and 264 MB with two arenas, for the same throughput
//! (docs/BENCHMARKS.md). The `keel` server and `keel-db-bench` call it
//! first thing; a program embedding keel may too.

/// Limits glibc's malloc to two arenas, unless `MALLOC_ARENA_MAX` is set
/// (the operator's choice wins). Call it at the start of `main`, before any
/// thread exists. A no-op on other C libraries.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets one of malloc's parameters; it touches
        // no Rust memory, and M_ARENA_MAX is valid to set at any time.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
