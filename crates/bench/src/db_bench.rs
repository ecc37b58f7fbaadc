//! `keel-db-bench`: RocksDB's `db_bench` workloads and flags on keel, so the
//! two can run the same settings side by side (`db-bench-vs-rocksdb`).
//!
//! Workloads (`--benchmarks=a,b,...`, run in order on one store, as
//! db_bench does): `fillseq`, `fillrandom`, `overwrite`, `readrandom`,
//! `seekrandom` (a seek then `--seek_nexts` keys), `readwhilewriting`
//! (`--threads` readers while one writer writes flat out), and keel's own
//! `reopen` (drop the store without a flush, open it again: the open's
//! time and log records replayed). Keys are 16
//! bytes (`--key_size`), values `--value_size` bytes of which half
//! compress away (db_bench's default `compression_ratio` 0.5). Each thread
//! does `--num` operations over key indexes `0..num` (reads: `--reads`
//! if given). `--use_existing_db=1` opens the store a previous run left
//! (printing the open's time and records replayed) instead of a fresh one. `--sync=1` makes every
//! write durable (`SyncPolicy::Always`: writers share fdatasyncs), 0 leaves
//! it in the OS (`SyncPolicy::Never`), as db_bench's `--sync` does for
//! RocksDB's WAL. Output lines are db_bench's:
//! `name : X micros/op Y ops/sec Z seconds N operations; W MB/s`.
//!
//! `--rate_limiter_bytes_per_sec` (0, the default, as db_bench's: unpaced)
//! paces compactions and checkpoints.
//! `--write_buffer_size=N` (db_bench's name for the memtable size) keeps
//! the data in tables (`Options::memtable_size`), with a block cache of
//! `--cache_size`; without it keel keeps every key in memory and
//! `--cache_size` is unused. At the end it prints the tree's shape, write
//! amplification, stalls, the cache's hit ratio and the peak RSS.

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
    write_buffer_size: Option<u64>,
    rate_limiter_bytes_per_sec: u64,
    use_existing_db: bool,
    reads: Option<u64>,
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
        write_buffer_size: None,
        rate_limiter_bytes_per_sec: 0,
        use_existing_db: false,
        reads: None,
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
            "write_buffer_size" => f.write_buffer_size = Some(v.parse()?),
            "rate_limiter_bytes_per_sec" => f.rate_limiter_bytes_per_sec = v.parse()?,
            "use_existing_db" => f.use_existing_db = v == "1" || v == "true",
            "reads" => f.reads = Some(v.parse()?),
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
    if !f.use_existing_db {
        let _ = std::fs::remove_dir_all(&f.db);
    }
    let mut opts = Options::default();
    opts.sync = if f.sync {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    };
    opts.max_value_len = opts.max_value_len.max(f.value_size);
    opts.memtable_size = f.write_buffer_size;
    // db_bench's pace of background writes (0: unlimited, its default) is
    // keel's pace of checkpoints and compactions.
    opts.checkpoint_bytes_per_sec = Some(f.rate_limiter_bytes_per_sec).filter(|r| *r > 0);
    opts.cache_size = f.cache_size;
    let started = Instant::now();
    let (db, recovered) = Db::builder(&f.db).options(opts.clone()).open()?;
    if f.use_existing_db {
        println!(
            "open         : {:.3} seconds, {} log records replayed, {} keys",
            started.elapsed().as_secs_f64(),
            recovered.records_replayed,
            recovered.keys
        );
    }
    let mut db = Arc::new(db);
    let reads = f.reads.unwrap_or(f.num);
    let layout = match f.write_buffer_size {
        Some(m) => format!(
            "on tables: memtable {m} bytes, block cache {}",
            f.cache_size
        ),
        None => "every key in memory (cache_size unused)".into(),
    };
    println!(
        "keel: {} keys of {} bytes, values {} bytes, {} threads, sync {}, {layout}",
        f.num, f.key_size, f.value_size, f.threads, f.sync
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
                let (s, ops, b) = run_threads(f.threads, reads, |_, rng| {
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
                let (s, ops, b) = run_threads(f.threads, reads, |_, rng| {
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
                    let r = run_threads(f.threads, reads, |_, rng| {
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
            "reopen" => {
                // As after kill -9: no flush on the way down (close only
                // syncs the log), so the open replays the memtable's log.
                print_shape(&db);
                drop(db);
                let started = Instant::now();
                let (reopened, report) = Db::builder(&f.db).options(opts.clone()).open()?;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "reopen       : {secs:.3} seconds, {} log records replayed, {} keys",
                    report.records_replayed, report.keys
                );
                db = Arc::new(reopened);
            }
            other => anyhow::bail!("unknown benchmark {other}"),
        }
    }
    print_shape(&db);
    Ok(())
}

/// The tree's shape and costs after the run, and the process's peak RSS.
fn print_shape(db: &Db) {
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let Some(t) = db.stats().tables else {
        println!("keel: peak RSS {peak}");
        return;
    };
    let levels: Vec<String> = t
        .levels
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| *n > 0)
        .map(|(l, (n, b))| format!("L{l} {n} tables {:.1} MB", *b as f64 / 1e6))
        .collect();
    println!(
        "keel: {}; {} flushes, {} compactions ({:.1} MB read, {:.1} MB written); write amplification {:.2}; stalls {} ({:.2} s); block cache hit ratio {:.3}; peak RSS {peak}",
        levels.join(", "),
        t.flushes,
        t.compactions,
        t.compaction_bytes_read as f64 / 1e6,
        t.compaction_bytes_written as f64 / 1e6,
        t.write_amplification(),
        t.stalls,
        t.stall_micros as f64 / 1e6,
        t.cache_hit_ratio()
    );
}
