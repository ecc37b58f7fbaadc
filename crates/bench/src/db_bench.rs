//! `keel-db-bench`: RocksDB's `db_bench` workloads and flags on keel, so the
//! two can run the same settings side by side (`db-bench-vs-rocksdb`).
//!
//! Workloads (`--benchmarks=a,b,...`, run in order on one store, as
//! db_bench does): `fillseq`, `fillrandom`, `overwrite`, `readrandom`,
//! `seekrandom` (a seek then `--seek_nexts` keys), `readwhilewriting`
//! (`--threads` readers while one writer writes flat out). Keys are 16
//! bytes (`--key_size`), values `--value_size` bytes of which half
//! compress away (db_bench's default `compression_ratio` 0.5). Each thread
//! does `--num` operations over key indexes `0..num`. `--sync=1` makes every
//! write durable (`SyncPolicy::Always`: writers share fdatasyncs), 0 leaves
//! it in the OS (`SyncPolicy::Never`), as db_bench's `--sync` does for
//! RocksDB's WAL. Output lines are db_bench's:
//! `name : X micros/op Y ops/sec Z seconds N operations; W MB/s`.
//!
//! `--cache_size` is accepted for the harness and reported; keel keeps every
//! key in memory until the LSM tree of issue 12 is the engine.

use keel::storage::rng::SplitMix64;
use keel::{Db, Options, SyncPolicy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

struct Flags {
    benchmarks: Vec<String>,
    num: u64,
    value_size: usize,
    key_size: usize,
    threads: u64,
    sync: bool,
    seek_nexts: usize,
    cache_size: u64,
    db: std::path::PathBuf,
}

fn parse() -> anyhow::Result<Flags> {
    let mut f = Flags {
        benchmarks: vec!["fillrandom".into(), "readrandom".into()],
        num: 100_000,
        value_size: 100,
        key_size: 16,
        threads: 1,
        sync: false,
        seek_nexts: 100,
        cache_size: 8 << 20,
        db: std::env::temp_dir().join("keel-db-bench"),
    };
    for arg in std::env::args().skip(1) {
        let (k, v) = arg
            .trim_start_matches("--")
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("flags are --name=value, as db_bench's: {arg}"))?;
        match k {
            "benchmarks" => f.benchmarks = v.split(',').map(str::to_string).collect(),
            "num" => f.num = v.parse()?,
            "value_size" => f.value_size = v.parse()?,
            "key_size" => f.key_size = v.parse()?,
            "threads" => f.threads = v.parse()?,
            "sync" => f.sync = v == "1" || v == "true",
            "seek_nexts" => f.seek_nexts = v.parse()?,
            "cache_size" => f.cache_size = v.parse()?,
            "db" => f.db = v.into(),
            other => anyhow::bail!("unknown flag --{other}"),
        }
    }
    anyhow::ensure!(f.key_size >= 8, "--key_size must be at least 8");
    Ok(f)
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:016}").into_bytes();
    k.resize(size, b'0');
    k
}

/// A value of `size` bytes whose second half repeats its first.
fn value(rng: &mut SplitMix64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.div_ceil(2)];
    for b in &mut v {
        *b = b' ' + (rng.below(95) as u8);
    }
    let head = v.clone();
    v.extend_from_slice(&head);
    v.truncate(size);
    v
}

/// Runs `op(i, rng)` for `i` in `0..per_thread` on each of `threads`
/// threads (each with its own generator); (seconds, operations, bytes).
fn run_threads(
    threads: u64,
    per_thread: u64,
    op: impl Fn(u64, &mut SplitMix64) -> u64 + Sync,
) -> (f64, u64, u64) {
    let bytes = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (op, bytes) = (&op, &bytes);
            s.spawn(move || {
                let mut rng = SplitMix64::new(1000 + t);
                let mut b = 0;
                for i in 0..per_thread {
                    b += op(i, &mut rng);
                }
                bytes.fetch_add(b, Ordering::Relaxed);
            });
        }
    });
    (
        started.elapsed().as_secs_f64(),
        threads * per_thread,
        bytes.load(Ordering::Relaxed),
    )
}

fn report(name: &str, secs: f64, ops: u64, bytes: u64, extra: &str) {
    println!(
        "{name:<12} : {:>11.3} micros/op {} ops/sec {:.3} seconds {ops} operations; {:>5.1} MB/s{extra}",
        secs * 1e6 / ops.max(1) as f64,
        (ops as f64 / secs) as u64,
        secs,
        bytes as f64 / secs / 1e6,
    );
}

/// One arm per db_bench workload, in one place so the workloads can be
/// compared with db_bench's own at a glance.
fn main() -> anyhow::Result<()> {
    let f = parse()?;
    let _ = std::fs::remove_dir_all(&f.db);
    let mut opts = Options::default();
    opts.sync = if f.sync {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    };
    opts.max_value_len = opts.max_value_len.max(f.value_size);
    let (db, _) = Db::builder(&f.db).options(opts).open()?;
    let db = Arc::new(db);
    println!(
        "keel: {} keys of {} bytes, values {} bytes, {} threads, sync {}, cache_size {} (unused: every key is in memory)",
        f.num, f.key_size, f.value_size, f.threads, f.sync, f.cache_size
    );
    let (n, ks, vs) = (f.num, f.key_size, f.value_size);
    let kv = (ks + vs) as u64;
    for bench in &f.benchmarks {
        match bench.as_str() {
            "fillseq" => {
                // Each thread writes keys 0..num in order, as db_bench's
                // fillseq does per thread.
                let (s, ops, b) = run_threads(f.threads, n, |i, rng| {
                    db.put(key(i, ks), value(rng, vs)).expect("put");
                    kv
                });
                report(bench, s, ops, b, "");
            }
            "fillrandom" | "overwrite" => {
                let (s, ops, b) = run_threads(f.threads, n, |_, rng| {
                    db.put(key(rng.below(n), ks), value(rng, vs)).expect("put");
                    kv
                });
                report(bench, s, ops, b, "");
            }
            "readrandom" => {
                let found = AtomicU64::new(0);
                let (s, ops, b) = run_threads(f.threads, n, |_, rng| {
                    match db.get(key(rng.below(n), ks)).expect("get") {
                        Some(v) => {
                            found.fetch_add(1, Ordering::Relaxed);
                            (ks + v.len()) as u64
                        }
                        None => ks as u64,
                    }
                });
                let found = found.load(Ordering::Relaxed);
                report(bench, s, ops, b, &format!(" ({found} of {ops} found)"));
            }
            "seekrandom" => {
                let nexts = f.seek_nexts;
                let (s, ops, b) = run_threads(f.threads, n, |_, rng| {
                    let from = key(rng.below(n), ks);
                    db.range(from..)
                        .take(nexts + 1)
                        .map(|(k, v)| (k.len() + v.len()) as u64)
                        .sum()
                });
                report(bench, s, ops, b, &format!(" (seek then {nexts} nexts)"));
            }
            "readwhilewriting" => {
                let stop = AtomicBool::new(false);
                let writes = AtomicU64::new(0);
                let (s, ops, b) = std::thread::scope(|sc| {
                    sc.spawn(|| {
                        let mut rng = SplitMix64::new(7);
                        while !stop.load(Ordering::Relaxed) {
                            db.put(key(rng.below(n), ks), value(&mut rng, vs))
                                .expect("put");
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    let r = run_threads(f.threads, n, |_, rng| {
                        db.get(key(rng.below(n), ks))
                            .expect("get")
                            .map_or(ks, |v| ks + v.len()) as u64
                    });
                    stop.store(true, Ordering::Relaxed);
                    r
                });
                let w = writes.load(Ordering::Relaxed);
                report(bench, s, ops, b, &format!(" ({w} writes meanwhile)"));
            }
            other => anyhow::bail!("unknown benchmark {other}"),
        }
    }
    Ok(())
}
