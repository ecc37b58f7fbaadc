//! `db-bench-vs-rocksdb`: keel's `keel-db-bench` and RocksDB's own
//! `db_bench` (Debian's rocksdb-tools: `apt-get install rocksdb-tools`) on
//! the same workloads and settings, alternating which goes first each
//! round, then the median ops/s of each and their ratio.
//!
//!     cargo build --release -p keel-bench
//!     ./target/release/db-bench-vs-rocksdb --num=200000 --threads=1 --sync=0
//!     ./target/release/db-bench-vs-rocksdb --benchmarks=fillrandom --num=5000 --threads=16 --sync=1
//!
//! RocksDB runs with LZ4 (keel's table default) and `--cache_size`; both
//! write a fresh store in a temp directory for each run.
//!
//! After each run it measures space amplification: the bytes the store
//! takes on disk (allocated blocks), its tables alone and the whole
//! directory (logs and manifest too), over the live data (live keys times
//! key and value size). keel prints its live keys; RocksDB's are counted
//! with its own `ldb scan`, after the directory is measured (ldb's open
//! recovers the log into a new table).

use keel_bench::{loadavg, median};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Bytes allocated on disk under `dir`: (`*.sst` files, every file).
fn disk_bytes(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut tables, mut all) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (t, a) = disk_bytes(&entry.path())?;
            tables += t;
            all += a;
        } else {
            let bytes = meta.blocks() * 512;
            all += bytes;
            if entry.path().extension().is_some_and(|e| e == "sst") {
                tables += bytes;
            }
        }
    }
    Ok((tables, all))
}

/// Live keys of the RocksDB store at `db`, by its own `ldb scan`.
fn rocksdb_live_keys(db: &Path) -> anyhow::Result<u64> {
    let out = Command::new("ldb")
        .arg(format!("--db={}", db.display()))
        .arg("scan")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ldb scan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout.iter().filter(|b| **b == b'\n').count() as u64)
}

/// Live keys keel-db-bench printed ("keel: live keys N ...").
fn keel_live_keys(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix("keel: live keys "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Space amplification of one run: tables and whole directory over the
/// live data.
#[derive(Clone, Copy)]
struct Space {
    tables: f64,
    dir: f64,
    live_mb: f64,
}

/// ops/sec per benchmark name, from db_bench-style output.
fn parse(out: &str) -> BTreeMap<String, f64> {
    out.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(" : ")?;
            let mut words = rest.split_whitespace();
            let _micros = words.next()?;
            (words.next()? == "micros/op").then_some(())?;
            let ops: f64 = words.next()?.parse().ok()?;
            Some((name.trim().to_string(), ops))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut flags: BTreeMap<String, String> = [
        (
            "benchmarks",
            "fillseq,fillrandom,overwrite,readrandom,seekrandom,readwhilewriting",
        ),
        ("num", "200000"),
        ("value_size", "100"),
        ("threads", "1"),
        ("sync", "0"),
        ("seek_nexts", "100"),
        ("cache_size", "8388608"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut rounds = 3;
    for arg in std::env::args().skip(1) {
        let (k, v) = arg
            .trim_start_matches("--")
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("flags are --name=value: {arg}"))?;
        if k == "rounds" {
            rounds = v.parse()?;
        } else {
            flags.insert(k.to_string(), v.to_string());
        }
    }
    if Command::new("db_bench").arg("--help").output().is_err() {
        eprintln!("RocksDB's db_bench is not installed: apt-get install rocksdb-tools");
        std::process::exit(2);
    }
    let keel_bin = std::env::current_exe()?.with_file_name("keel-db-bench");
    anyhow::ensure!(
        keel_bin.exists(),
        "{} is missing: cargo build --release -p keel-bench",
        keel_bin.display()
    );
    // `--keel_*` flags are keel-db-bench's own: not for db_bench.
    let keel_only: Vec<String> = flags
        .iter()
        .filter(|(k, _)| k.starts_with("keel_"))
        .map(|(k, v)| format!("--{k}={v}"))
        .collect();
    flags.retain(|k, _| !k.starts_with("keel_"));
    let common: Vec<String> = flags.iter().map(|(k, v)| format!("--{k}={v}")).collect();
    let dir = tempfile::tempdir()?;
    let mut keel: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rocks: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let entry_bytes: u64 = flags.get("key_size").map_or(Ok(16), |v| v.parse())?
        + flags["value_size"].parse::<u64>()?;
    let (mut keel_space, mut rocks_space): (Vec<Space>, Vec<Space>) = (Vec::new(), Vec::new());
    println!(
        "{} rounds of: {} {} (load average {})",
        rounds,
        common.join(" "),
        keel_only.join(" "),
        loadavg()
    );
    for round in 0..rounds {
        for first_keel in [round % 2 == 0, round % 2 != 0] {
            let db = dir.path().join(if first_keel { "keel" } else { "rocksdb" });
            let _ = std::fs::remove_dir_all(&db);
            let out = if first_keel {
                Command::new(&keel_bin)
                    .args(&common)
                    .args(&keel_only)
                    .arg(format!("--db={}", db.display()))
                    .output()?
            } else {
                Command::new("db_bench")
                    .args(&common)
                    .arg(format!("--db={}", db.display()))
                    .args(["--compression_type=lz4", "--use_existing_db=0"])
                    .output()?
            };
            let text = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(
                out.status.success(),
                "{} failed: {}",
                if first_keel {
                    "keel-db-bench"
                } else {
                    "db_bench"
                },
                String::from_utf8_lossy(&out.stderr)
            );
            let into = if first_keel { &mut keel } else { &mut rocks };
            for (name, ops) in parse(&text) {
                into.entry(name).or_default().push(ops);
            }
            let (tables, all) = disk_bytes(&db)?;
            let live = if first_keel {
                keel_live_keys(&text)
                    .ok_or_else(|| anyhow::anyhow!("keel-db-bench printed no live keys"))?
            } else {
                rocksdb_live_keys(&db)?
            };
            let live_bytes = (live * entry_bytes).max(1) as f64;
            let space = Space {
                tables: tables as f64 / live_bytes,
                dir: all as f64 / live_bytes,
                live_mb: live_bytes / 1e6,
            };
            if first_keel {
                keel_space.push(space);
            } else {
                rocks_space.push(space);
            }
        }
    }
    println!(
        "{:<17} {:>14} {:>14} {:>8}",
        "benchmark", "keel ops/s", "RocksDB ops/s", "ratio"
    );
    for name in flags["benchmarks"].split(',') {
        let (Some(k), Some(r)) = (keel.get(name), rocks.get(name)) else {
            println!("{name:<17} (missing from one side's output)");
            continue;
        };
        let (k, r) = (median(k.clone()), median(r.clone()));
        println!("{name:<17} {k:>14.0} {r:>14.0} {:>7.2}x", k / r);
    }
    let med = |v: &[Space], f: fn(&Space) -> f64| median(v.iter().map(f).collect::<Vec<_>>());
    println!(
        "space amplification (disk bytes / live keys x {entry_bytes} B, medians): \
         tables keel {:.2}, RocksDB {:.2}; whole directory keel {:.2}, RocksDB {:.2} \
         (live data keel {:.1} MB, RocksDB {:.1} MB)",
        med(&keel_space, |s| s.tables),
        med(&rocks_space, |s| s.tables),
        med(&keel_space, |s| s.dir),
        med(&rocks_space, |s| s.dir),
        med(&keel_space, |s| s.live_mb),
        med(&rocks_space, |s| s.live_mb),
    );
    Ok(())
}
