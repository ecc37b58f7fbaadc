//! keel against Redis, side by side on this machine, with Redis's own
//! benchmark tool.
//!
//! Starts `keel serve --resp-port` (release build) and `redis-server` on
//! loopback ports with scratch directories, pairing durable against durable:
//! keel `--sync always` with Redis `appendonly yes, appendfsync always`,
//! keel `--sync interval:1s` with Redis `appendfsync everysec`. For each
//! pair it runs `redis-benchmark -t set,get -d 100 -r 1000000` at 1, 16, 64
//! and 256 clients, alternating the two servers, five times per point (three
//! with `--quick`), and prints median ops/s and p50/p99 latency, the
//! keel/Redis ratio as the median (and range) of the ratios of runs made
//! back to back, and the load average beside each block. It writes an SVG plot of SET
//! throughput against clients to docs/bench/keel-vs-redis.svg (a `--quick`
//! run's plot goes to target/keel-vs-redis-quick.svg instead).
//!
//! `--keel-wal-compression zstd` (or `snappy`) starts keel with its log
//! records compressed (`--wal-compression`); redis-benchmark's values
//! (repeated `x`) compress well.
//!
//! Needs redis-server and redis-benchmark (Debian packages redis-server and
//! redis-tools) and `cargo build --release -p keel-server`. Run:
//! `cargo run --release -p keel-bench --bin keel-vs-redis [-- --quick]`.

use anyhow::{bail, Context};
use keel_bench::{free_port, loadavg, median};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENTS: [u32; 4] = [1, 16, 64, 256];
/// Runs per point (each server), full and quick.
const REPEATS: usize = 5;
const QUICK_REPEATS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Store {
    Keel,
    Redis,
}

struct Point {
    rps: f64,
    p50: f64,
    p99: f64,
}

fn wait_ready(port: u16) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(out) = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
        {
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("server on port {port} did not answer PING within 30 s")
}

fn start(
    store: Store,
    durable: bool,
    keel: &Path,
    dir: &Path,
    wal_compression: &str,
) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let child = match store {
        Store::Keel => Command::new(keel)
            .args([
                "serve",
                "--port",
                &free_port()?.to_string(),
                "--resp-port",
                &port.to_string(),
            ])
            .args(["--sync", if durable { "always" } else { "interval:1s" }])
            .args(["--wal-compression", wal_compression])
            .arg("--working-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting keel")?,
        Store::Redis => Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                if durable { "always" } else { "everysec" },
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    };
    wait_ready(port)?;
    Ok((child, port))
}

/// One redis-benchmark run: test name -> (rps, p50 ms, p99 ms).
fn bench(port: u16, clients: u32, requests: u32) -> anyhow::Result<BTreeMap<String, Point>> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "set,get",
            "-d",
            "100",
            "-r",
            "1000000",
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-n",
            &requests.to_string(),
            "--csv",
        ])
        .output()
        .context("running redis-benchmark")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut res = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let f: Vec<String> = line
            .split(',')
            .map(|x| x.trim_matches('"').to_string())
            .collect();
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        if f.len() >= 7 {
            res.insert(
                f[0].clone(),
                Point {
                    rps: f[1].parse().unwrap_or(0.0),
                    p50: f[4].parse().unwrap_or(0.0),
                    p99: f[6].parse().unwrap_or(0.0),
                },
            );
        }
    }
    Ok(res)
}

type Results = BTreeMap<(bool, &'static str, u32, Store), (f64, f64, f64)>;

/// The benchmark as a script, read top to bottom (about 115 lines): build,
/// start both servers, run every point, print, plot. Splitting it would
/// only pass its dozen settings from function to function.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let wal_compression = args
        .iter()
        .position(|a| a == "--keel-wal-compression")
        .and_then(|i| args.get(i + 1))
        .map_or("none", |s| s.as_str());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let keel = root.join("target/release/keel");
    if !keel.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p keel-server` first",
            keel.display()
        );
    }
    for tool in ["redis-server", "redis-benchmark", "redis-cli"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing: install the Debian packages redis-server and redis-tools");
        }
    }
    let scratch = root.join("target/keel-vs-redis");
    let _ = std::fs::remove_dir_all(&scratch);
    let mut results: Results = BTreeMap::new();
    // keel/Redis of the two runs made back to back in each repetition: the
    // machine's load drifts, and a pair shares most of it.
    let mut paired: BTreeMap<(bool, &'static str, u32), Vec<f64>> = BTreeMap::new();
    let repeats = if quick { QUICK_REPEATS } else { REPEATS };
    println!("keel vs Redis ({}), SET/GET with 100-byte values, redis-benchmark -r 1000000, median of {repeats}; ratio: median (min-max) of keel/Redis over back-to-back pairs; keel --wal-compression {wal_compression}", if quick { "quick" } else { "full" });
    for durable in [true, false] {
        let (k, kp) = start(
            Store::Keel,
            durable,
            &keel,
            &scratch.join(format!("keel-{durable}")),
            wal_compression,
        )?;
        let (r, rp) = start(
            Store::Redis,
            durable,
            &keel,
            &scratch.join(format!("redis-{durable}")),
            wal_compression,
        )?;
        let mut servers = [(Store::Keel, k, kp), (Store::Redis, r, rp)];
        println!(
            "\n{} (load average {}):",
            if durable {
                "durable: keel --sync always vs Redis appendfsync always"
            } else {
                "keel --sync interval:1s vs Redis appendfsync everysec"
            },
            loadavg()
        );
        for c in CLIENTS {
            let n = (c * 2000).clamp(20_000, 400_000) / if quick { 4 } else { 1 };
            let mut runs: BTreeMap<(&str, Store), Vec<Point>> = BTreeMap::new();
            for rep in 0..repeats {
                // Alternate which server goes first.
                let order: Vec<usize> = if rep % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
                for i in order {
                    let (store, _, port) = &servers[i];
                    for (test, p) in bench(*port, c, n)? {
                        let t: &'static str = if test == "SET" { "SET" } else { "GET" };
                        runs.entry((t, *store)).or_default().push(p);
                    }
                }
            }
            for t in ["SET", "GET"] {
                let (k, r) = (&runs[&(t, Store::Keel)], &runs[&(t, Store::Redis)]);
                let ratios = k.iter().zip(r).map(|(k, r)| k.rps / r.rps).collect();
                paired.insert((durable, t, c), ratios);
            }
            for ((t, store), ps) in runs {
                let rps = median(ps.iter().map(|p| p.rps).collect());
                let p50 = median(ps.iter().map(|p| p.p50).collect());
                let p99 = median(ps.iter().map(|p| p.p99).collect());
                results.insert((durable, t, c, store), (rps, p50, p99));
            }
        }
        for (_, child, _) in servers.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        println!(
            "{:>4} {:>8} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>6} {:>13}",
            "op",
            "clients",
            "keel ops/s",
            "p50 ms",
            "p99 ms",
            "Redis ops/s",
            "p50 ms",
            "p99 ms",
            "ratio",
            "(min-max)"
        );
        for t in ["SET", "GET"] {
            for c in CLIENTS {
                let k = results[&(durable, t, c, Store::Keel)];
                let r = results[&(durable, t, c, Store::Redis)];
                let ratios = &paired[&(durable, t, c)];
                let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().cloned().fold(0.0, f64::max);
                println!(
                    "{t:>4} {c:>8} | {:>10.0} {:>8.3} {:>8.3} | {:>10.0} {:>8.3} {:>8.3} | {:>5.2}x  ({lo:.2}-{hi:.2})",
                    k.0,
                    k.1,
                    k.2,
                    r.0,
                    r.1,
                    r.2,
                    median(ratios.clone())
                );
            }
        }
    }
    let svg = plot(&results, repeats);
    // The committed plot is the full run's; a quick run's goes to target/.
    let out = if quick {
        root.join("target/keel-vs-redis-quick.svg")
    } else {
        root.join("docs/bench/keel-vs-redis.svg")
    };
    std::fs::write(&out, svg)?;
    println!("\nplot: {}", out.display());
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// SET throughput against clients, four lines, as a small hand-made SVG.
/// (About 85 lines of drawing commands: axes, grid, lines, legend.)
fn plot(results: &Results, repeats: usize) -> String {
    let (w, h, left, bottom, top, right) = (760.0, 400.0, 70.0, 50.0, 40.0, 240.0);
    let max = results
        .iter()
        .filter(|((_, t, _, _), _)| *t == "SET")
        .map(|(_, v)| v.0)
        .fold(1.0f64, f64::max)
        * 1.1;
    let x = |i: usize| left + (w - left - right) * i as f64 / (CLIENTS.len() - 1) as f64;
    let y = |v: f64| h - bottom - (h - bottom - top) * v / max;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="14">SET ops/s vs clients (100-byte values, median of {repeats})</text>"#,
        left
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        s += &format!(
            r#"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="rgb(221,221,221)"/><text x="{}" y="{}" text-anchor="end">{:.0}k</text>"#,
            w - right,
            left - 6.0,
            y(v) + 4.0,
            v / 1000.0,
            y = y(v)
        );
    }
    for (i, c) in CLIENTS.iter().enumerate() {
        s += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{c}</text>"#,
            x(i),
            h - bottom + 18.0
        );
    }
    s += &format!(
        r#"<text x="{}" y="{}" text-anchor="middle">clients</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    let series = [
        (true, Store::Keel, "keel --sync always", "#d62728", ""),
        (
            true,
            Store::Redis,
            "Redis appendfsync always",
            "#1f77b4",
            "",
        ),
        (
            false,
            Store::Keel,
            "keel --sync interval:1s",
            "#d62728",
            "6,4",
        ),
        (
            false,
            Store::Redis,
            "Redis appendfsync everysec",
            "#1f77b4",
            "6,4",
        ),
    ];
    for (n, (durable, store, label, color, dash)) in series.iter().enumerate() {
        let pts: Vec<String> = CLIENTS
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                results
                    .get(&(*durable, "SET", *c, *store))
                    .map(|v| format!("{:.1},{:.1}", x(i), y(v.0)))
            })
            .collect();
        s += &format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = top + 10.0 + 20.0 * n as f64;
        s += &format!(
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{label}</text>"#,
            w - right + 10.0,
            w - right + 34.0,
            w - right + 40.0,
            ly + 4.0
        );
    }
    s + "</svg>\n"
}
