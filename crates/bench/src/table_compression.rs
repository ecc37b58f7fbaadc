//! `table-compression`: how each block compression does on keel's tables,
//! side by side in one run, to choose the default (issue 12).
//!
//! For each data shape (JSON-like values, English-like text, random bytes)
//! and each codec (none, lz4, zstd levels 1 and 3), it writes one table of
//! `--entries` entries to a real file, then reports its size against the
//! raw data, the write rate, random point gets without a block cache (each
//! reads and decompresses a block) and a full scan. Medians of `--runs`.
//!
//!     cargo run --release -p keel-bench --bin table-compression

use keel::storage::{FsStorage, OpenMode, Storage};
use keel::table::{Compression, Stored, Table, TableBuilder};
use std::sync::Arc;
use std::time::Instant;

/// A table's entries: (key, value), in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn shapes(n: usize) -> Vec<(&'static str, Entries)> {
    let words = [
        "the", "log", "is", "durable", "before", "a", "write", "returns", "and", "every", "table",
        "holds", "sorted", "keys", "with", "their", "values",
    ];
    let mut rng = keel::storage::rng::SplitMix64::new(42);
    let key = |i: usize| format!("user:{i:010}").into_bytes();
    let json = (0..n)
        .map(|i| {
            let v = format!(
                "{{\"id\":{i},\"name\":\"user{}\",\"city\":\"{}\",\"active\":{},\"score\":{}}}",
                i % 977,
                ["Paris", "Lyon", "Berlin", "Oslo"][i % 4],
                i % 3 == 0,
                i * 7 % 1000
            );
            (key(i), v.into_bytes())
        })
        .collect();
    let text = (0..n)
        .map(|i| {
            let v: Vec<&str> = (0..16)
                .map(|_| words[rng.below(words.len() as u64) as usize])
                .collect();
            (key(i), v.join(" ").into_bytes())
        })
        .collect();
    let random = (0..n)
        .map(|i| {
            let mut v = vec![0u8; 100];
            rng.fill(&mut v);
            (key(i), v)
        })
        .collect();
    vec![("json", json), ("text", text), ("random", random)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (n, runs) = (flag("--entries", 200_000), flag("--runs", 3));
    let dir = tempfile::tempdir()?;
    let s: Arc<dyn Storage> = Arc::new(FsStorage::new());
    let codecs = [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd-1", Compression::Zstd(1)),
        ("zstd-3", Compression::Zstd(3)),
    ];
    println!("{n} entries per table, medians of {runs} runs");
    println!(
        "{:<7} {:<7} {:>9} {:>7} {:>10} {:>11} {:>10}",
        "data", "codec", "size MiB", "ratio", "write MB/s", "gets/s", "scan MB/s"
    );
    for (shape, entries) in shapes(n) {
        let raw: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        for (name, codec) in codecs {
            let (mut w, mut g, mut sc, mut size) = (Vec::new(), Vec::new(), Vec::new(), 0);
            for run in 0..runs {
                let path = dir.path().join(format!("{shape}-{name}-{run}.sst"));
                let file = s.open(&path, OpenMode::CreateNew)?;
                let t0 = Instant::now();
                let mut b = TableBuilder::with_compression(&*file, codec);
                for (k, v) in &entries {
                    b.add(k, Stored::Put(v), 1)?;
                }
                let (_, len) = b.finish()?;
                w.push(raw as f64 / t0.elapsed().as_secs_f64() / 1e6);
                size = len;
                let table = Table::open(s.open(&path, OpenMode::Read)?, &path)?;
                let mut rng = keel::storage::rng::SplitMix64::new(run as u64);
                let gets = 20_000;
                let t0 = Instant::now();
                for _ in 0..gets {
                    let i = rng.below(n as u64) as usize;
                    assert!(table.get(&entries[i].0)?.is_some());
                }
                g.push(gets as f64 / t0.elapsed().as_secs_f64());
                let t0 = Instant::now();
                let count = table.iter_from(&[]).count();
                assert_eq!(count, n);
                sc.push(raw as f64 / t0.elapsed().as_secs_f64() / 1e6);
                std::fs::remove_file(&path)?;
            }
            println!(
                "{:<7} {:<7} {:>9.1} {:>7.2} {:>10.0} {:>11.0} {:>10.0}",
                shape,
                name,
                size as f64 / (1 << 20) as f64,
                raw as f64 / size as f64,
                median(w),
                median(g),
                median(sc)
            );
        }
    }
    Ok(())
}
