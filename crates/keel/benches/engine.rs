//! Benchmarks of the engine on the real file system; prints medians. Run on
//! an otherwise idle machine:
//!
//! `cargo bench -p keel --bench engine` (`-- --quick` for a short run).
//! Scratch space: `$KEEL_BENCH_DIR` or `target/keel-bench`.
//!
//! 1. Open time of a store with a long history (many checkpoints) against a
//!    store holding the same keys in a short log: recovery is bounded by the
//!    checkpoint trigger, not by history.
//! 2. Write latency (1 writer, `SyncPolicy::Always`, 100 B values) p50/p99
//!    with no checkpoint running and with checkpoints running back to back.
//! 3. get() throughput from 1, 2, 4 and 8 threads.

use keel::{Db, Options};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn open_time(dir: &std::path::Path, opts: &Options) -> (f64, keel::RecoveryReport) {
    let mut times = vec![];
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let (db, report) = Db::open(dir, opts.clone()).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        db.close().unwrap();
        last = Some(report);
    }
    (median(times), last.unwrap())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let keys = 20_000u64;
    let history = if quick { 300_000u64 } else { 2_000_000 };
    let trigger = 8u64 << 20;
    println!(
        "keel engine benchmarks ({}; load average before: {})\n",
        if quick { "quick" } else { "full" },
        loadavg()
    );

    // 1. Open time: long history vs short log.
    let opts = {
        let mut o = Options::default();
        o.sync = keel::SyncPolicy::Never;
        o.// building the history fast; opens are what is measured
        checkpoint_log_bytes = Some(trigger);
        o.segment_size = 4 << 20;
        o
    };
    let long = scratch();
    {
        let (db, _) = Db::open(&long, opts.clone()).unwrap();
        for i in 0..history {
            db.put(format!("key{:08}", i % keys), [b'v'; 100]).unwrap();
        }
        db.close().unwrap();
    }
    let short = scratch();
    {
        let no_ckpt = {
            let mut o = opts.clone();
            o.checkpoint_log_bytes = None;
            o
        };
        // As much log as one checkpoint trigger: the most a store with any
        // history replays after its newest checkpoint.
        let (db, _) = Db::open(&short, no_ckpt).unwrap();
        let mut i = 0;
        while db.stats().wal.bytes_written < trigger {
            db.put(format!("key{:08}", i % keys), [b'v'; 100]).unwrap();
            i += 1;
        }
        db.close().unwrap();
    }
    let (t_long, r_long) = open_time(&long, &opts);
    let (t_short, r_short) = open_time(&short, &opts);
    println!(
        "open time (median of 5), {keys} keys of 100 B, checkpoint trigger {} MiB:",
        trigger >> 20
    );
    println!(
        "  {history} writes of history: {t_long:>8.1} ms  (checkpoint + {} records replayed, {} log segments read)",
        r_long.records_replayed, r_long.wal.segments
    );
    println!(
        "  {} MiB of log, no checkpoint:  {t_short:>8.1} ms  ({} records replayed)",
        trigger >> 20,
        r_short.records_replayed
    );
    println!(
        "  ratio long history / one trigger of log: {:.2}\n",
        t_long / t_short
    );
    let _ = std::fs::remove_dir_all(&long);
    let _ = std::fs::remove_dir_all(&short);

    // 2. Write latency with and without a checkpoint running.
    let dir = scratch();
    let preload = if quick { 100_000u64 } else { 500_000 };
    let opts = {
        let mut o = Options::default();
        o.checkpoint_log_bytes = None;
        o
    };
    let (db, _) = Db::open(&dir, {
        let mut o = opts.clone();
        o.sync = keel::SyncPolicy::Never;
        o
    })
    .unwrap();
    for i in 0..preload {
        db.put(format!("key{i:08}"), [b'p'; 100]).unwrap();
    }
    db.close().unwrap();
    let (db, _) = Db::open(&dir, opts).unwrap();
    let db = Arc::new(db);
    let secs = if quick { 1.5 } else { 4.0 };
    let measure = |label: &str, checkpointing: bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let ckpts = Arc::new(AtomicU64::new(0));
        let bg = checkpointing.then(|| {
            let (db, stop, ckpts) = (Arc::clone(&db), Arc::clone(&stop), Arc::clone(&ckpts));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if db.checkpoint().unwrap().written {
                        ckpts.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        let mut lat = vec![];
        let t = Instant::now();
        let mut i = 0u64;
        while t.elapsed() < Duration::from_secs_f64(secs) {
            let s = Instant::now();
            db.put(format!("key{:08}", i % preload), [b'w'; 100])
                .unwrap();
            lat.push(s.elapsed().as_micros() as u64);
            i += 1;
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = bg {
            h.join().unwrap();
        }
        lat.sort_unstable();
        println!(
            "  {label:<28} {:>7} writes  p50 {:>5} us  p99 {:>6} us  max {:>6} us  ({} checkpoints of {preload} keys written meanwhile)",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().unwrap(),
            ckpts.load(Ordering::Relaxed)
        );
        (pct(&lat, 0.5), pct(&lat, 0.99))
    };
    println!(
        "write latency, 1 writer, SyncPolicy::Always, 100 B values, {preload} keys (load {}):",
        loadavg()
    );
    let (_, p99_idle) = measure("no checkpoint running", false);
    let (_, p99_ck) = measure("checkpoints back to back", true);
    println!(
        "  p99 ratio with/without checkpoint: {:.2}\n",
        p99_ck as f64 / p99_idle as f64
    );

    // 3. get() throughput.
    println!("get() throughput, {preload} keys (load {}):", loadavg());
    for threads in [1usize, 2, 4, 8] {
        let stop = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut rng = keel_storage::rng::SplitMix64::new(t as u64);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = format!("key{:08}", rng.below(preload));
                        assert!(db.get(k).unwrap().is_some());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
        stop.store(true, Ordering::Relaxed);
        let n: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        println!(
            "  {threads} threads: {:>10.0} gets/s",
            n as f64 / (secs / 2.0)
        );
    }
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
