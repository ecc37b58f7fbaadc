//! Recovery time after about 1 GiB of log: keel replaying its write-ahead
//! log against Redis loading an equivalent append-only file, measured the
//! same way for both: from process start until the server answers PING
//! (Redis answers `-LOADING` until its AOF is loaded; keel listens only
//! after recovery).
//!
//! The keel store is written through the engine (no checkpoint, so the whole
//! log is replayed); the Redis AOF holds the same SET commands in RESP, as
//! an `appendonly.aof` that Redis 7 loads (and upgrades) at start.
//!
//! `cargo build --release -p keel-server && cargo run --release -p keel-bench
//! --bin recovery-vs-redis [-- --mib 1024]`

use anyhow::{bail, Context};
use keel_bench::{free_port, median};
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KEYS: u64 = 1_000_000;
const VALUE: [u8; 100] = [b'v'; 100];

/// Time from `spawn` until PING answers +PONG.
fn time_to_ready(mut cmd: Command, port: u16) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok() {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf) {
                    if buf[..n].starts_with(b"+PONG") {
                        let took = started.elapsed();
                        let _ = child.kill();
                        let _ = child.wait();
                        return Ok(took);
                    }
                }
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            bail!("not ready after 600 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The benchmark as a script, read top to bottom (about 115 lines): write
/// the same data to both stores, restart each, time it to ready, print.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let keel_bin = root.join("target/release/keel");
    if !keel_bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p keel-server",
            keel_bin.display()
        );
    }
    let scratch = root.join("target/recovery-vs-redis");
    let _ = std::fs::remove_dir_all(&scratch);
    let keel_dir = scratch.join("keel");
    let redis_dir = scratch.join("redis");
    std::fs::create_dir_all(&redis_dir)?;

    // keel: writes until the log holds `mib` MiB, no checkpoint.
    let opts = {
        let mut o = keel::Options::default();
        o.sync = keel::SyncPolicy::Never;
        o.checkpoint_log_bytes = None;
        o
    };
    let (db, _) = keel::Db::open(&keel_dir, opts.clone()).context("creating the keel store")?;
    let mut n = 0u64;
    while db.stats().wal.bytes_written < mib << 20 {
        for _ in 0..10_000 {
            db.put(format!("key:{:07}", n % KEYS), VALUE)?;
            n += 1;
        }
    }
    db.close()?;
    let log_bytes: u64 = std::fs::read_dir(keel::layout::DataDir::new(&keel_dir).log_dir())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    // Redis: the same SETs as an append-only file.
    let aof = redis_dir.join("appendonly.aof");
    {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&aof)?);
        for i in 0..n {
            let k = format!("key:{:07}", i % KEYS);
            write!(
                w,
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n",
                k.len(),
                VALUE.len()
            )?;
            w.write_all(&VALUE)?;
            w.write_all(b"\r\n")?;
        }
        w.flush()?;
    }
    let aof_bytes = std::fs::metadata(&aof)?.len();
    println!(
        "{n} SETs of 100-byte values on {KEYS} keys: keel log {} MiB (segment files, preallocated), Redis AOF {} MiB",
        log_bytes >> 20,
        aof_bytes >> 20
    );

    let mut keel_t = vec![];
    let mut redis_t = vec![];
    for _ in 0..3 {
        let port = free_port()?;
        let mut k = Command::new(&keel_bin);
        k.args([
            "serve",
            "--port",
            &free_port()?.to_string(),
            "--resp-port",
            &port.to_string(),
            "--sync",
            "never",
        ])
        .arg("--config")
        .arg({
            let cfg = scratch.join("keel.toml");
            std::fs::write(&cfg, "checkpoint_log_bytes = 0\n")?;
            cfg
        })
        .arg("--working-dir")
        .arg(&keel_dir);
        keel_t.push(time_to_ready(k, port)?);
        let port = free_port()?;
        let mut r = Command::new("redis-server");
        r.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfilename", "appendonly.aof"])
        .arg("--dir")
        .arg(&redis_dir);
        redis_t.push(time_to_ready(r, port)?);
    }
    let (k, r) = (median(keel_t), median(redis_t));
    println!(
        "time to ready (median of 3): keel {:.2} s, Redis {:.2} s, keel/Redis {:.2}x",
        k.as_secs_f64(),
        r.as_secs_f64(),
        k.as_secs_f64() / r.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
