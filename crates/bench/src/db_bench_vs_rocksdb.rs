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

use keel_bench::{loadavg, median};
use std::collections::BTreeMap;
use std::process::Command;

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
    let common: Vec<String> = flags.iter().map(|(k, v)| format!("--{k}={v}")).collect();
    let dir = tempfile::tempdir()?;
    let mut keel: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rocks: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    println!(
        "{} rounds of: {} (load average {})",
        rounds,
        common.join(" "),
        loadavg()
    );
    for round in 0..rounds {
        for first_keel in [round % 2 == 0, round % 2 != 0] {
            let out = if first_keel {
                Command::new(&keel_bin)
                    .args(&common)
                    .arg(format!("--db={}", dir.path().join("keel").display()))
                    .output()?
            } else {
                let db = dir.path().join("rocksdb");
                let _ = std::fs::remove_dir_all(&db);
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
    Ok(())
}
