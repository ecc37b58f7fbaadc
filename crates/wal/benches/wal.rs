//! Benchmarks of the write-ahead log on the real file system. Prints a table
//! of medians; run on an otherwise idle machine:
//!
//! `cargo bench -p keel-wal --bench wal` (add `-- --quick` for a short run).
//! The scratch directory is `$KEEL_BENCH_DIR` or `target/keel-bench`.
//!
//! Measures: unsynced append throughput (4 KiB and 100 B records), durable
//! appends (`SyncPolicy::Always`) at 1/4/16/64/256 concurrent writers with
//! latency percentiles and records per fdatasync, and replay speed of a
//! 1 GiB log from the page cache.

use keel_storage::FsStorage;
use keel_wal::{SyncPolicy, Wal, WalOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn scratch() -> PathBuf {
    let base = std::env::var_os("KEEL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/keel-bench")
        });
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap().keep()
}

fn open(dir: &std::path::Path, sync: SyncPolicy) -> Wal {
    open_sized(dir, sync, WalOptions::default().segment_size)
}

fn open_sized(dir: &std::path::Path, sync: SyncPolicy, segment_size: u64) -> Wal {
    let opts = WalOptions {
        sync,
        segment_size,
        preallocate: std::env::var_os("KEEL_BENCH_NO_PREALLOC").is_none(),
        ..WalOptions::default()
    };
    Wal::open(Arc::new(FsStorage::new()), dir, opts).unwrap().0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Unsynced appends. With the default segment size, every 64 MiB the closed
/// segment is fdatasynced (only the last segment may hold unsynced bytes), so
/// the sustained rate is bounded by the disk; `one_segment` measures the code
/// path alone, inside one segment large enough to hold everything.
fn unsynced_append(
    record: usize,
    total_bytes: usize,
    reps: usize,
    one_segment: bool,
) -> (f64, f64) {
    let payload = vec![0xA5u8; record];
    let n = total_bytes / record;
    let mut rates = vec![];
    for _ in 0..reps {
        let dir = scratch();
        let size = if one_segment {
            (total_bytes as u64 * 2).max(64 << 20)
        } else {
            WalOptions::default().segment_size
        };
        let wal = open_sized(&dir, SyncPolicy::Never, size);
        let t = Instant::now();
        for _ in 0..n {
            wal.append(&payload).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        rates.push(n as f64 / secs);
        drop(wal);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let recs = median(rates);
    (recs, recs * record as f64)
}

struct Durable {
    ops: f64,
    p50_us: u64,
    p99_us: u64,
    per_sync: f64,
}

fn durable(writers: usize, secs: f64) -> Durable {
    let dir = scratch();
    let wal = Arc::new(open(&dir, SyncPolicy::Always));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, stop) = (Arc::clone(&wal), Arc::clone(&stop));
            std::thread::spawn(move || {
                let payload = [0x5Au8; 100];
                let mut lat = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    wal.append(&payload).unwrap();
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let st = wal.stats();
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
    Durable {
        ops: lat.len() as f64 / elapsed,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        per_sync: st.appends as f64 / st.syncs.max(1) as f64,
    }
}

fn replay(total: u64, reps: usize) -> f64 {
    let dir = scratch();
    let wal = open(&dir, SyncPolicy::Never);
    let payload = vec![0x3Cu8; 64 * 1024];
    let mut written = 0u64;
    while written < total {
        wal.append(&payload).unwrap();
        written += payload.len() as u64;
    }
    wal.close().unwrap();
    let mut rates = vec![];
    for _ in 0..reps {
        let mut bytes = 0u64;
        let t = Instant::now();
        let (wal, report) = Wal::open_with_replay(
            Arc::new(FsStorage::new()),
            &dir,
            WalOptions::default(),
            1,
            |r| bytes += r.payload.len() as u64,
        )
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(bytes, written);
        rates.push(report.bytes_read as f64 / secs);
        drop(wal);
    }
    let _ = std::fs::remove_dir_all(&dir);
    median(rates)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, secs, big) = if quick {
        (3, 0.5, 256u64 << 20)
    } else {
        (5, 2.0, 1u64 << 30)
    };
    println!(
        "keel-wal benchmarks ({}; load average before: {})",
        if quick { "quick" } else { "full" },
        loadavg()
    );
    println!();
    let total = if quick { 128 << 20 } else { 512 << 20 };
    let (r4k, b4k) = unsynced_append(4096, total, reps, false);
    println!(
        "append, 1 writer, SyncPolicy::Never, 4 KiB records, 64 MiB segments (sustained, disk-bound):  {:>8.0} records/s  {:>5.2} GB/s  (median of {reps})",
        r4k,
        b4k / 1e9
    );
    let (r4k, b4k) = unsynced_append(4096, total / 2, reps, true);
    println!(
        "append, 1 writer, SyncPolicy::Never, 4 KiB records, within one segment (code path):          {:>8.0} records/s  {:>5.2} GB/s",
        r4k,
        b4k / 1e9
    );
    let (r100, _) = unsynced_append(100, if quick { 16 << 20 } else { 64 << 20 }, reps, false);
    println!(
        "append, 1 writer, SyncPolicy::Never, 100 B records:  {:>10.0} records/s",
        r100
    );
    println!();
    println!(
        "SyncPolicy::Always, 100 B records, {secs} s per point, median of 3 runs (load {}):",
        loadavg()
    );
    println!(
        "{:>8} {:>12} {:>9} {:>9} {:>16} {:>10}",
        "writers", "ops/s", "p50 us", "p99 us", "records/fsync", "vs 1"
    );
    let mut one = 0.0;
    for writers in [1usize, 4, 16, 64, 256] {
        let mut runs: Vec<Durable> = (0..3).map(|_| durable(writers, secs)).collect();
        runs.sort_by(|a, b| a.ops.partial_cmp(&b.ops).unwrap());
        let m = &runs[1];
        if writers == 1 {
            one = m.ops;
        }
        println!(
            "{:>8} {:>12.0} {:>9} {:>9} {:>16.1} {:>9.1}x",
            writers,
            m.ops,
            m.p50_us,
            m.p99_us,
            m.per_sync,
            m.ops / one
        );
    }
    println!();
    let gbps = replay(big, 3);
    println!(
        "replay of a {} MiB log from the page cache (open_with_replay): {:.2} GB/s (median of 3)",
        big >> 20,
        gbps / 1e9
    );
    println!("load average after: {}", loadavg());
}
