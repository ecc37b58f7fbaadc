//! `keel-soak`: honest clients against the real `keel serve` while hostile
//! ones hold connections open, then kill -9, restart and check.
//!
//! - `--slowloris` HTTP connections each send a request head a byte at a
//!   time (one byte every few seconds, so the idle timeout never fires; the
//!   header timeout cuts them off, and each is opened again at once);
//! - `--idle-resp` RESP connections each send one PING, then nothing;
//! - `--clients` honest clients (half HTTP PUT, half RESP SET, each on one
//!   kept-alive connection) write unique keys for `--seconds`.
//!
//! Then: the honest clients' latency (p50, p99, max per protocol), the
//! server's resident memory (sampled every 250 ms, and its peak), how many
//! hostile connections were still held; then SIGKILL, restart, and every
//! acknowledged write must read back. Fails (exit 1) if one is missing, if
//! the peak RSS passes `--max-rss-mb`, or if the hostile connections could
//! not all be opened (the server refused honest capacity).
//!
//! CI (`.ci/run`): `--seconds 30` with 2,000 + 2,000 hostile connections.

#[path = "../resp_client.rs"]
#[allow(dead_code)]
mod resp_client;

use anyhow::{bail, Context};
use clap::Parser;
use resp_client::{Reply, RespConn};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "honest clients against keel serve while hostile ones hold connections")]
struct Args {
    /// HTTP connections sending their request a byte at a time.
    #[arg(long, default_value_t = 2000)]
    slowloris: usize,
    /// RESP connections that PING once, then stay idle.
    #[arg(long, default_value_t = 2000)]
    idle_resp: usize,
    /// Honest writers (half over HTTP, half over RESP).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long the honest clients write.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Fail if the server's peak resident memory passes this.
    #[arg(long, default_value_t = 1024)]
    max_rss_mb: u64,
    /// The keel binary (default: target/debug/keel).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Scratch directory (default: target/keel-soak).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Raises this process's open-files limit to its hard limit (the server
/// inherits it) and says whether `needed` descriptors fit.
fn raise_fd_limit(needed: u64) -> anyhow::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: lim.maximum,
        },
    )
    .context("raising the open-files limit")?;
    if hard < needed {
        bail!("the open-files hard limit is {hard}; this soak needs about {needed}: lower --slowloris / --idle-resp or raise the limit");
    }
    Ok(())
}

struct Server {
    child: Child,
    http: u16,
    resp: u16,
}

fn start(bin: &Path, dir: &Path, tag: &str) -> anyhow::Result<Server> {
    let (http, resp) = (free_port()?, free_port()?);
    let log = std::fs::File::create(dir.join(format!("server-{tag}.log")))?;
    let child = Command::new(bin)
        .args(["serve", "--port", &http.to_string()])
        .args(["--resp-port", &resp.to_string(), "--working-dir"])
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while RespConn::connect(resp)
        .ok()
        .and_then(|mut c| c.call(&[b"PING"]).ok())
        .is_none()
    {
        if Instant::now() > deadline {
            bail!("the server did not come up; see {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Server { child, http, resp })
}

/// The resident memory of `pid` now and at its peak, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One kept-alive HTTP connection that PUTs and reads the answer.
struct HttpConn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    fn connect(port: u16) -> std::io::Result<HttpConn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(HttpConn { s, buf: Vec::new() })
    }

    /// PUTs `value` at `key`; the status.
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<u16> {
        let head = format!(
            "PUT /kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            value.len()
        );
        self.s.write_all(head.as_bytes())?;
        self.s.write_all(value)?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    return Ok(status);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What the honest clients did.
#[derive(Default)]
struct Tally {
    /// Acknowledged writes: (key, value).
    acked: Vec<(String, Vec<u8>)>,
    /// Latencies of acknowledged writes, per protocol.
    http: Vec<Duration>,
    resp: Vec<Duration>,
    /// Writes with no acknowledgement (errors, reconnects).
    failed: u64,
}

fn honest_client(id: usize, server: (u16, u16), stop: &AtomicBool, tally: &Mutex<Tally>) {
    let over_http = id.is_multiple_of(2);
    let mut mine = Tally::default();
    let mut http = None;
    let mut resp = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("c{id}-{n}");
        let value = format!("{key}:{}", "v".repeat(100)).into_bytes();
        let started = Instant::now();
        let ok = if over_http {
            if http.is_none() {
                http = HttpConn::connect(server.0).ok();
            }
            match http.as_mut().map(|c| c.put(&key, &value)) {
                Some(Ok(200)) => true,
                _ => {
                    http = None;
                    false
                }
            }
        } else {
            if resp.is_none() {
                resp = RespConn::connect(server.1).ok();
            }
            match resp
                .as_mut()
                .map(|c| c.call(&[b"SET", key.as_bytes(), &value]))
            {
                Some(Ok(Reply::Simple(s))) if s == "OK" => true,
                _ => {
                    resp = None;
                    false
                }
            }
        };
        if ok {
            let took = started.elapsed();
            if over_http {
                mine.http.push(took);
            } else {
                mine.resp.push(took);
            }
            mine.acked.push((key, value));
        } else {
            mine.failed += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut t = tally.lock().unwrap();
    t.acked.append(&mut mine.acked);
    t.http.append(&mut mine.http);
    t.resp.append(&mut mine.resp);
    t.failed += mine.failed;
}

const SLOW_HEAD: &[u8] = b"PUT /kv/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ";

fn slow_connect(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(SLOW_HEAD).ok()?;
    Some(s)
}

/// What the slowloris connections met.
struct Loris {
    /// Cut off by the server (its header timeout) and opened again.
    cut_off: u64,
    /// Open at the end.
    held: usize,
}

/// Opens the slowloris connections and drips a byte into each every few
/// seconds until `stop`; one the server closes is opened again at once,
/// as a real slowloris does.
fn slowloris(port: u16, count: usize, stop: &AtomicBool, opened: &AtomicU64) -> Loris {
    let mut conns: Vec<Option<TcpStream>> = Vec::with_capacity(count);
    for _ in 0..count {
        match slow_connect(port) {
            Some(s) => {
                conns.push(Some(s));
                opened.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                eprintln!("keel-soak: a slowloris connection was refused");
                break;
            }
        }
    }
    let mut cut_off = 0;
    // Every connection gets a byte every DRIP_EVERY.
    const DRIP_EVERY: Duration = Duration::from_secs(5);
    let tick = Duration::from_millis(100);
    let per_tick =
        (conns.len() as u128 * tick.as_millis() / DRIP_EVERY.as_millis()).max(1) as usize;
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) && !conns.is_empty() {
        for _ in 0..per_tick {
            let len = conns.len();
            let slot = &mut conns[next % len];
            if slot.as_mut().is_none_or(|s| s.write_all(b"a").is_err()) {
                cut_off += 1;
                *slot = slow_connect(port);
            }
            next += 1;
        }
        std::thread::sleep(tick);
    }
    // A closed connection shows when written to.
    let held = conns
        .iter_mut()
        .flatten()
        .filter(|s| (&**s).write_all(b"a").is_ok())
        .count();
    Loris { cut_off, held }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, lat: &mut [Duration]) -> String {
    lat.sort();
    format!(
        "{name}: {} writes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )
}

fn run(args: Args) -> anyhow::Result<bool> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| root.join("target/debug/keel"));
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p keel-server)",
            bin.display()
        );
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| root.join("target/keel-soak"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Both ends of every connection are in this machine's two processes.
    raise_fd_limit((args.slowloris + args.idle_resp + args.clients) as u64 + 512)?;
    let server = start(&bin, &dir, "soak")?;
    let pid = server.child.id();
    println!(
        "keel-soak: {} slowloris HTTP + {} idle RESP connections, {} honest clients for {} s (server pid {pid})",
        args.slowloris, args.idle_resp, args.clients, args.seconds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let loris = {
        let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
        let (port, n) = (server.http, args.slowloris);
        std::thread::spawn(move || slowloris(port, n, &stop, &opened))
    };
    let mut idle = Vec::with_capacity(args.idle_resp);
    for _ in 0..args.idle_resp {
        let mut c = RespConn::connect(server.resp)
            .map_err(|_| anyhow::anyhow!("an idle RESP connection was refused"))?;
        match c.call(&[b"PING"]) {
            Ok(Reply::Simple(p)) if p == "PONG" => idle.push(c),
            other => bail!("an idle RESP connection's PING got {other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (opened.load(Ordering::Relaxed) as usize) < args.slowloris && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (rss_before, _) = rss_kib(pid);
    println!(
        "keel-soak: hostile connections open ({} slowloris, {} idle RESP); server RSS {} MiB",
        opened.load(Ordering::Relaxed),
        idle.len(),
        rss_before / 1024
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let honest: Vec<_> = (0..args.clients)
        .map(|id| {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            let ports = (server.http, server.resp);
            std::thread::spawn(move || honest_client(id, ports, &stop, &tally))
        })
        .collect();
    let started = Instant::now();
    let mut peak_sampled = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        peak_sampled = peak_sampled.max(rss_kib(pid).0);
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    for h in honest {
        h.join().expect("an honest client panicked");
    }
    let loris = loris.join().expect("the slowloris thread panicked");
    let (_, hwm) = rss_kib(pid);
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    println!("keel-soak: {}", summary("HTTP PUT", &mut t.http));
    println!("keel-soak: {}", summary("RESP SET", &mut t.resp));
    println!(
        "keel-soak: {} writes acknowledged, {} not; slowloris connections cut off by the server (and reopened): {}, open at the end: {}",
        t.acked.len(),
        t.failed,
        loris.cut_off,
        loris.held
    );
    println!(
        "keel-soak: server RSS {} MiB before the honest clients, {} MiB at most while they wrote (sampled), peak {} MiB",
        rss_before / 1024,
        peak_sampled / 1024,
        hwm / 1024
    );
    drop(idle);
    let missing = kill_restart_and_check(server, &bin, &dir, &t.acked)?;
    let mut ok = true;
    if missing > 0 {
        eprintln!("keel-soak: FAILED: {missing} acknowledged writes lost");
        ok = false;
    }
    if hwm / 1024 > args.max_rss_mb {
        eprintln!(
            "keel-soak: FAILED: peak RSS {} MiB over --max-rss-mb {}",
            hwm / 1024,
            args.max_rss_mb
        );
        ok = false;
    }
    if (opened.load(Ordering::Relaxed) as usize) < args.slowloris {
        eprintln!("keel-soak: FAILED: not every slowloris connection could be opened");
        ok = false;
    }
    if t.acked.is_empty() || t.http.is_empty() || t.resp.is_empty() {
        eprintln!("keel-soak: FAILED: an honest protocol got no write through");
        ok = false;
    }
    Ok(ok)
}

/// SIGKILLs the server, starts it again on the same data and reads back
/// every acknowledged write; how many are missing.
fn kill_restart_and_check(
    mut server: Server,
    bin: &Path,
    dir: &Path,
    acked: &[(String, Vec<u8>)],
) -> anyhow::Result<u64> {
    server.child.kill()?;
    server.child.wait()?;
    let mut restarted = start(bin, dir, "restart")?;
    let mut c = RespConn::connect(restarted.resp)
        .map_err(|_| anyhow::anyhow!("cannot connect after the restart"))?;
    let mut missing = 0u64;
    for (key, value) in acked {
        match c.call(&[b"GET", key.as_bytes()]) {
            Ok(Reply::Bulk(Some(v))) if v == *value => {}
            other => {
                if missing < 5 {
                    eprintln!("keel-soak: acknowledged {key} reads back as {other:?}");
                }
                missing += 1;
            }
        }
    }
    restarted.child.kill()?;
    restarted.child.wait()?;
    println!(
        "keel-soak: after kill -9 and restart: {} of {} acknowledged writes present",
        acked.len() as u64 - missing,
        acked.len()
    );
    Ok(missing)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keel-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
