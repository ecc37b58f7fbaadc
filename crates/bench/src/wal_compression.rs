//! `wal-compression`: what log record compression (`wal_compression`)
//! does to the bytes the log writes and to durable write throughput, each
//! codec side by side in one run (issue 13).
//!
//! For each value shape (JSON-like documents and random bytes, `--value-size`
//! bytes each) and each codec (none, snappy, zstd), it opens a store in a
//! scratch directory on the real disk with `sync = always` and puts values
//! under fresh keys from 1 and from 64 threads, then reports the log bytes
//! per record (`Stats::wal.bytes_written`, which counts what reaches the
//! log, after compression) and the durable puts per second. Codecs
//! alternate within each round; the figures are medians of `--rounds`, and
//! each ratio is the median of the ratios of runs made back to back.
//!
//!     cargo run --release -p keel-bench --bin wal-compression [-- --rounds 3]

use keel::wal::Compression;
use keel::{Db, Options, SyncPolicy};
use keel_bench::{arg, loadavg, median};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const CODECS: [Compression; 3] = [Compression::None, Compression::Snappy, Compression::Zstd];
const THREADS: [usize; 2] = [1, 64];

/// Makes value `i` of a given size.
type Shape = fn(u64, usize) -> Vec<u8>;

/// A JSON document of about `size` bytes, as an API might store per key:
/// field names repeat (within the document, as in any array of objects),
/// values vary with `i`.
fn json_value(i: u64, size: usize) -> Vec<u8> {
    let mut rng = keel::storage::rng::SplitMix64::new(i);
    let names = ["ada", "grace", "linus", "barbara", "ken", "margaret"];
    let cities = ["Paris", "Lyon", "Berlin", "Oslo", "Lisbon"];
    let mut s = format!(
        "{{\"id\":{i},\"user\":{{\"name\":\"{}\",\"email\":\"{}{}@example.com\",\"city\":\"{}\"}},\"created_at\":\"2026-12-{:02}T{:02}:{:02}:{:02}Z\",\"items\":[",
        names[rng.below(6) as usize],
        names[rng.below(6) as usize],
        rng.below(10_000),
        cities[rng.below(5) as usize],
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60)
    );
    let mut first = true;
    while s.len() + 100 < size {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&format!(
            "{{\"sku\":\"SKU-{:06}\",\"qty\":{},\"price\":{}.{:02},\"currency\":\"EUR\",\"gift\":{}}}",
            rng.below(1_000_000),
            1 + rng.below(9),
            rng.below(500),
            rng.below(100),
            rng.chance(1, 5)
        ));
    }
    s.push_str("],\"status\":\"confirmed\"}");
    let mut v = s.into_bytes();
    v.resize(size, b' ');
    v
}

fn random_value(i: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    keel::storage::rng::SplitMix64::new(i ^ 0xabcd).fill(&mut v);
    v
}

struct Run {
    ops_per_sec: f64,
    log_bytes_per_record: f64,
}

/// Puts `n` values from `threads` threads into a fresh store.
fn run(
    codec: Compression,
    shape: Shape,
    size: usize,
    threads: usize,
    n: u64,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir_in(".")?;
    let mut opts = Options::default();
    opts.sync = SyncPolicy::Always;
    opts.wal_compression = codec;
    let (db, _) = Db::open(dir.path(), opts)?;
    let db = Arc::new(db);
    // Values made before the clock starts: the run measures the store.
    let values: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| shape(i, size)).collect());
    let next = Arc::new(AtomicU64::new(0));
    let before = db.stats().wal.bytes_written;
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (db, values, next) = (Arc::clone(&db), Arc::clone(&values), Arc::clone(&next));
            std::thread::spawn(move || -> keel::Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    db.put(format!("key{i:010}"), &values[i as usize])?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread")?;
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = db.stats().wal.bytes_written - before;
    Ok(Run {
        ops_per_sec: n as f64 / secs,
        log_bytes_per_record: bytes as f64 / n as f64,
    })
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = arg("--rounds", 3);
    let size: usize = arg("--value-size", 1024);
    let shapes: [(&str, Shape); 2] = [("json", json_value), ("random", random_value)];
    println!(
        "wal-compression: {size}-byte values, sync=always, {rounds} rounds, codecs alternating; load {}",
        loadavg()
    );
    // (shape, threads, codec) -> runs, in round order.
    let mut runs: BTreeMap<(&str, usize, &str), Vec<Run>> = BTreeMap::new();
    for _ in 0..rounds {
        for (shape, make) in shapes {
            for threads in THREADS {
                let n = if threads == 1 { 10_000 } else { 100_000 };
                for codec in CODECS {
                    let r = run(codec, make, size, threads, n)?;
                    runs.entry((shape, threads, codec.name()))
                        .or_default()
                        .push(r);
                }
            }
        }
    }
    println!(
        "{:<7} {:>7} {:<7} {:>12} {:>14} {:>12} {:>11}",
        "values", "threads", "codec", "log B/rec", "bytes vs none", "puts/s", "vs none"
    );
    for (shape, _) in shapes {
        for threads in THREADS {
            let base = &runs[&(shape, threads, "none")];
            for codec in CODECS {
                let rs = &runs[&(shape, threads, codec.name())];
                let bytes = median(rs.iter().map(|r| r.log_bytes_per_record).collect());
                let ops = median(rs.iter().map(|r| r.ops_per_sec).collect());
                let ratio = median(
                    rs.iter()
                        .zip(base)
                        .map(|(r, b)| r.ops_per_sec / b.ops_per_sec)
                        .collect(),
                );
                let base_bytes = median(base.iter().map(|r| r.log_bytes_per_record).collect());
                println!(
                    "{shape:<7} {threads:>7} {:<7} {bytes:>12.0} {:>13.2}x {ops:>12.0} {ratio:>10.2}x",
                    codec.name(),
                    base_bytes / bytes,
                );
            }
        }
    }
    println!("load after: {}", loadavg());
    Ok(())
}
