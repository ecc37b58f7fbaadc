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
//! `--write_buffer_size=N` (db_bench's name for the memtable size;
//! default 64 MiB, as RocksDB's and keel's) sizes the memtable of the
//! tables, with a block cache of `--cache_size`; `--write_buffer_size=0`
//! keeps every key in memory (`--cache_size` unused). At the end it prints
//! the tree's shape, write amplification, stalls, the cache's hit ratio and
//! the peak RSS.
//!
//! `--keel_exact_key_count=0` (keel's own; db-bench-vs-rocksdb passes
//! `--keel_*` flags to keel alone) opens the store with
//! `Options::exact_key_count` off: `len` an estimate, no lookups.
//!
//! `--histogram=1` (db_bench's flag) prints the write workloads' latency
//! percentiles, overall and split by whether a compaction was running when
//! the write began or ended (sampled every millisecond), with the ratio of
//! the two p99s: the "write p99 while a compaction runs".

use hdrhistogram::Histogram;
use keel::storage::rng::SplitMix64;
use keel::{Db, Options, SyncPolicy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    histogram: bool,
    exact_key_count: bool,
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
        histogram: false,
        exact_key_count: true,
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
            "histogram" => f.histogram = v == "1" || v == "true",
            "keel_exact_key_count" => f.exact_key_count = v == "1" || v == "true",
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

/// Write latencies in microseconds, split by whether a compaction ran.
struct Latencies {
    /// (no compaction running, a compaction running).
    hist: Mutex<(Histogram<u64>, Histogram<u64>)>,
    /// Set by the sampler while a compaction runs.
    compacting: AtomicBool,
}

impl Latencies {
    fn new() -> Latencies {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Latencies {
            hist: Mutex::new((h(), h())),
            compacting: AtomicBool::new(false),
        }
    }

    /// Times `op`, filed under compaction if one ran when it began or ended.
    fn time<T>(&self, op: impl FnOnce() -> T) -> T {
        let before = self.compacting.load(Ordering::Relaxed);
        let started = Instant::now();
        let out = op();
        let micros = (started.elapsed().as_micros() as u64).max(1);
        let during = before || self.compacting.load(Ordering::Relaxed);
        let mut h = self.hist.lock().expect("not poisoned");
        let h = if during { &mut h.1 } else { &mut h.0 };
        h.saturating_record(micros);
        out
    }

    /// Runs `work` while a thread samples whether a compaction runs.
    fn sampled<T>(&self, db: &Db, work: impl FnOnce() -> T) -> T {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let now = db.stats().tables.is_some_and(|t| t.compacting);
                    self.compacting.store(now, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            let out = work();
            stop.store(true, Ordering::Relaxed);
            out
        })
    }

    fn print(&self, name: &str) {
        let (idle, busy) = &*self.hist.lock().expect("not poisoned");
        let mut all = idle.clone();
        all.add(busy).expect("same bounds");
        let line = |h: &Histogram<u64>| {
            format!(
                "{} ops: p50 {} p99 {} p99.9 {} max {} us",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )
        };
        println!("{name:<13}: latency {}", line(&all));
        println!("{:<13}  no compaction running: {}", "", line(idle));
        println!("{:<13}  a compaction running:  {}", "", line(busy));
        if !idle.is_empty() && !busy.is_empty() {
            println!(
                "{:<13}  p99 while compacting / idle: {:.2}x",
                "",
                busy.value_at_quantile(0.99) as f64 / idle.value_at_quantile(0.99) as f64
            );
        }
    }
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
    // As the keel server does (keel::malloc): two malloc arenas.
    keel::malloc::limit_arenas();
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
    if let Some(m) = f.write_buffer_size {
        opts.memtable_size = Some(m).filter(|m| *m > 0);
    }
    // db_bench's pace of background writes (0: unlimited, its default) is
    // keel's pace of checkpoints and compactions.
    opts.checkpoint_bytes_per_sec = Some(f.rate_limiter_bytes_per_sec).filter(|r| *r > 0);
    opts.cache_size = f.cache_size;
    opts.exact_key_count = f.exact_key_count;
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
    let layout = match opts.memtable_size {
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
            "fillseq" | "fillrandom" | "overwrite" => {
                // fillseq: each thread writes keys 0..num in order, as
                // db_bench's fillseq does per thread.
                let seq = bench == "fillseq";
                let lat = Latencies::new();
                let put = |i: u64, rng: &mut SplitMix64| {
                    let k = key(if seq { i } else { rng.below(n) }, ks);
                    let v = value(rng, vs);
                    if f.histogram {
                        lat.time(|| db.put(k, v))
                    } else {
                        db.put(k, v)
                    }
                    .expect("put");
                    kv
                };
                let (s, ops, b) = if f.histogram {
                    lat.sampled(&db, || run_threads(f.threads, n, put))
                } else {
                    run_threads(f.threads, n, put)
                };
                report(bench, s, ops, b, "");
                if f.histogram {
                    lat.print(bench);
                }
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
                print_shape(&db, &f);
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
    print_shape(&db, &f);
    Ok(())
}

/// The tree's shape and costs after the run, the live data and the
/// process's peak RSS.
fn print_shape(db: &Db, f: &Flags) {
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // Every key is key_size + value_size bytes: the live data, against
    // which the harness reports space amplification. Without an exact
    // count, counted by a scan (after the timed runs).
    let live = if f.exact_key_count {
        db.len() as u64
    } else {
        db.iter().count() as u64
    };
    println!(
        "keel: live keys {live} ({:.1} MB of keys and values)",
        (live * (f.key_size + f.value_size) as u64) as f64 / 1e6
    );
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
