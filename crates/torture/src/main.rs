//! `keel-torture`: kill -9 the real `keel serve` under load, restart it, and
//! check every recorded operation.
//!
//! Each cycle starts the server on a loopback port and a scratch directory
//! (tiny checkpoint trigger, so kills land during checkpoints too), runs N
//! clients that PUT, DELETE, batch, clear, GET and checkpoint with unique
//! values on a small key set, SIGKILLs the server after a uniform random
//! 10-500 ms, restarts it and reads everything back. Every operation is ok
//! (2xx), fail (refused before sending) or unknown (sent, then timeout, reset
//! or 5xx); a client whose operation is unknown continues under a fresh id.
//!
//! Checks, after every restart and at the end: acknowledged writes present
//! unless a later-or-concurrent write may have replaced them; no value that
//! no client wrote; batches all-or-nothing; then, per key, linearizability of
//! the whole history (which rules out reads going back in time across
//! restarts). On a violation: exit 1, keeping the history (JSON lines), the
//! data directory and the seed.
//!
//! Short tiers (CI, `.ci/run`): `--cycles 150` on real and on buffered storage,
//! `--cycles 20 --failpoints`, `--cycles 100 --storage buffered --protocol resp`.
//! Long tier: `cargo run --release -p keel-torture -- --release-bin --cycles 1000`.
//!
//! `--cluster 3`: three `keel serve --node-id` processes, a node killed
//! each cycle (the leader half the time); with `--partitions`, half the
//! cycles isolate a node instead (`link_proxy`); with `--protocol resp`,
//! the clients speak the Redis protocol to the nodes; see `cluster`.

mod cluster;
mod history;
mod link_proxy;
mod resp_client;

use anyhow::{bail, Context};
use clap::Parser;
use history::{Event, History, Outcome, Target};
use keel_storage::rng::SplitMix64;
use resp_client::{Failed, Reply, RespConn};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "kill -9 torture of keel serve with a history checker")]
struct Args {
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 20)]
    cycles: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Distinct keys (few, so keys are overwritten often).
    #[arg(long, default_value_t = 12)]
    keys: u32,
    /// Seed of every random choice (printed; replays the schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Shortest time before the kill, ms.
    #[arg(long, default_value_t = 10)]
    min_ms: u64,
    /// Longest time before the kill, ms.
    #[arg(long, default_value_t = 500)]
    max_ms: u64,
    /// The keel binary (default: target/debug/keel, or target/release/keel
    /// with --release-bin).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Use target/release/keel.
    #[arg(long)]
    release_bin: bool,
    /// Scratch directory (default: a new one under target/keel-torture).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Sync policy given to the server (always is the only one whose
    /// acknowledged writes must survive).
    #[arg(long, default_value = "always")]
    sync: String,
    /// Storage under the server: `real` files, or `buffered` (file data held
    /// in the server process until synced: kill -9 then loses exactly what
    /// power loss would).
    #[arg(long, default_value = "real")]
    storage: String,
    /// Instead of SIGKILL at a random moment, make the server abort itself
    /// at a storage step, in turn: the Nth create, rename, directory sync,
    /// remove or sync (the steps of segment rotation, checkpoints and
    /// segment deletion), N = 1..4.
    #[arg(long)]
    failpoints: bool,
    /// How clients talk to the server: `http`, or `resp` (the Redis
    /// protocol: SET, DEL, MSET, FLUSHALL and GET on connections kept open;
    /// batches are then puts only, as MSET is).
    #[arg(long, default_value = "http")]
    protocol: String,
    /// The server's memtable size (default: the server's, 64 MiB, which a
    /// short run rarely fills). 64KiB: with the 64 KiB log trigger, a flush
    /// every few hundred writes and a compaction every few flushes, in
    /// every cycle (the run fails if there were none). 0: every key in
    /// memory, saved by checkpoints.
    #[arg(long)]
    memtable_size: Option<String>,
    /// The server's log compression (`none`, `snappy`, `zstd`). With it,
    /// every value carries about 170 more bytes of JSON-like text after its
    /// unique prefix, so log records are big enough to be compressed.
    #[arg(long)]
    wal_compression: Option<String>,
    /// Archive the server's log (`--archive-dir`) and back it up over HTTP
    /// before the first load; at the end, restore the backup to the latest
    /// record from the archive and the last data directory (`keel restore
    /// --latest`) and check that the restored store holds exactly what the
    /// last check read back.
    #[arg(long)]
    archive: bool,
    /// Run a cluster of this many nodes (`keel serve --node-id`) instead
    /// of one server: each cycle kills one node (the leader half the time)
    /// under load and restarts it; clients talk to random nodes.
    #[arg(long)]
    cluster: Option<u32>,
    /// With `--cluster`: node-to-node traffic goes through proxies the
    /// harness controls, and half the cycles isolate a node (the leader
    /// half the time) instead of killing it.
    #[arg(long, requires = "cluster")]
    partitions: bool,
}

/// The fail point of a cycle in `--failpoints` mode (`KEEL_FAULT` syntax).
fn failpoint(cycle: u32) -> String {
    const OPS: [&str; 5] = ["create", "rename", "syncdir", "remove", "sync"];
    let op = OPS[cycle as usize % OPS.len()];
    let nth = 1 + (cycle as usize / OPS.len()) % 4;
    format!("{op}:{nth}:crash")
}

struct Server {
    child: Child,
    port: u16,
    resp_port: Option<u16>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `keel serve` for `cycle` and waits until it answers. About 90
/// lines, most of them the command's arguments, one flag of the run each.
fn start(
    bin: &Path,
    dir: &Path,
    args: &Args,
    cycle: u32,
    fault: Option<&str>,
) -> anyhow::Result<(Server, Duration)> {
    let sync = args.sync.as_str();
    let port = free_port()?;
    let resp_port = if args.protocol == "resp" {
        Some(free_port()?)
    } else {
        None
    };
    let cfg = dir.join("keel.toml");
    std::fs::write(
        &cfg,
        "segment_size = 1048576\ncheckpoint_log_bytes = 65536\ncheckpoint_bytes_per_sec = 0\n",
    )?;
    let log = std::fs::File::create(dir.join(format!("server-{cycle}.log")))?;
    let started = Instant::now();
    let child = Command::new(bin)
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--sync",
            sync,
            "--working-dir",
        ])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&cfg)
        .args(
            resp_port
                .map(|p| vec!["--resp-port".to_string(), p.to_string()])
                .unwrap_or_default(),
        )
        .args(
            args.memtable_size
                .as_ref()
                .map(|m| vec!["--memtable-size".to_string(), m.clone()])
                .unwrap_or_default(),
        )
        .args(
            args.wal_compression
                .as_ref()
                .map(|c| vec!["--wal-compression".to_string(), c.clone()])
                .unwrap_or_default(),
        )
        .args(if args.archive {
            vec![
                "--archive-dir".into(),
                dir.join("archive").display().to_string(),
            ]
        } else {
            vec![]
        })
        .env(
            "KEEL_STORAGE",
            if args.storage == "buffered" {
                "buffered"
            } else {
                ""
            },
        )
        .env("KEEL_FAULT", fault.unwrap_or(""))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut s = Server {
        child,
        port,
        resp_port,
    };
    loop {
        let resp_up = resp_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
        if resp_up && matches!(raw(port, "GET", "/health", b""), Ok((200, _))) {
            return Ok((s, started.elapsed()));
        }
        if let Some(st) = s.child.try_wait()? {
            bail!(
                "keel serve exited with {st} at start of cycle {cycle}; see {}",
                dir.join(format!("server-{cycle}.log")).display()
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = s.child.kill();
            bail!("keel serve did not come up within 60 s (cycle {cycle})");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body). Errors say
/// whether the request was sent.
fn raw(port: u16, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), Sent> {
    exchange(port, method, path, body).map(|(status, body, _)| (status, body))
}

/// [`raw`], and whether the answer says nothing was written (a cluster
/// node's `x-keel-outcome: not-written`).
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>, bool), Sent> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|_| Sent::No)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if path == "/batch" || path == "/admin/backup" { "application/json" } else { "application/octet-stream" },
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|_| Sent::Maybe)?;
    s.write_all(body).map_err(|_| Sent::Maybe)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|_| Sent::Maybe)?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(Sent::Maybe)?;
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(Sent::Maybe)?;
    let not_written = String::from_utf8_lossy(&buf[..end])
        .to_ascii_lowercase()
        .contains("\r\nx-keel-outcome: not-written");
    Ok((status, buf[end + 4..].to_vec(), not_written))
}

#[derive(Debug)]
enum Sent {
    /// Refused before anything was sent: the operation did not happen.
    No,
    /// Sent (or maybe sent), no answer: outcome unknown.
    Maybe,
}

fn key(i: u64) -> String {
    format!("k{i:03}")
}

struct Shared {
    port: u16,
    /// With `--cluster`: every node's port; each request goes to one at
    /// random.
    cluster_ports: Vec<u16>,
    /// With `--cluster` and `--protocol resp`: every node's Redis port; a
    /// client connects to one at random, again after a failure.
    cluster_resp_ports: Vec<u16>,
    resp_port: Option<u16>,
    stop: AtomicBool,
    history: Mutex<History>,
    next_client: AtomicU64,
    epoch: Instant,
    /// Appended to every value (empty unless the log compresses).
    value_padding: String,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One operation a client chooses.
enum Request {
    Put(String, String),
    Delete(String),
    Batch(Vec<(String, Option<String>)>),
    Clear,
    Checkpoint,
    Get(String),
}

impl Request {
    fn random(
        rng: &mut SplitMix64,
        keys: u64,
        puts_only_batches: bool,
        val: impl Fn(u64) -> String,
    ) -> Request {
        match rng.below(100) {
            0..=44 => Request::Put(key(rng.below(keys)), val(0)),
            45..=54 => Request::Delete(key(rng.below(keys))),
            55..=64 => {
                let n = 2 + rng.below(2);
                let mut entries: Vec<(String, Option<String>)> = vec![];
                for j in 0..n {
                    let k = key(rng.below(keys));
                    if entries.iter().any(|(e, _)| *e == k) {
                        continue;
                    }
                    let put = rng.chance(4, 5) || puts_only_batches;
                    entries.push((k, put.then(|| val(j))));
                }
                Request::Batch(entries)
            }
            65 => Request::Clear,
            66..=67 => Request::Checkpoint,
            _ => Request::Get(key(rng.below(keys))),
        }
    }

    /// What the history records of it (before its outcome is known).
    fn targets(&self) -> Vec<Target> {
        match self {
            Request::Put(k, v) => vec![Target::Write(k.clone(), Some(v.clone()))],
            Request::Delete(k) => vec![Target::Write(k.clone(), None)],
            Request::Batch(e) => e
                .iter()
                .map(|(k, v)| Target::Write(k.clone(), v.clone()))
                .collect(),
            Request::Clear => vec![Target::Clear],
            Request::Checkpoint => vec![],
            Request::Get(k) => vec![Target::Read(k.clone(), None)],
        }
    }
}

/// Runs `req` over HTTP (a fresh connection each time): the outcome, and
/// for a GET that succeeded, what it read.
fn over_http(port: u16, req: &Request) -> (Outcome, Option<Option<String>>) {
    let (method, path, body) = match req {
        Request::Put(k, v) => ("PUT", format!("/kv/{k}"), v.clone().into_bytes()),
        Request::Delete(k) => ("DELETE", format!("/kv/{k}"), vec![]),
        Request::Batch(entries) => {
            let ops: Vec<_> = entries
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => serde_json::json!({"op": "put", "key": k, "value": v}),
                    None => serde_json::json!({"op": "delete", "key": k}),
                })
                .collect();
            let body = serde_json::json!({ "ops": ops }).to_string().into_bytes();
            ("POST", "/batch".into(), body)
        }
        Request::Clear => ("DELETE", "/clear".into(), vec![]),
        Request::Checkpoint => ("POST", "/admin/checkpoint".into(), vec![]),
        Request::Get(k) => ("GET", format!("/kv/{k}"), vec![]),
    };
    match exchange(port, method, &path, &body).map(|(s, b, not_written)| {
        // A cluster node certain that nothing was written: a failure.
        (if not_written { 0 } else { s }, b)
    }) {
        Ok((0, _)) => (Outcome::Fail, None),
        Ok((200, b)) if method == "GET" => (
            Outcome::Ok,
            Some(Some(String::from_utf8_lossy(&b).into_owned())),
        ),
        Ok((404, _)) if method == "GET" => (Outcome::Ok, Some(None)),
        Ok((s, _)) if (200..300).contains(&s) => (Outcome::Ok, None),
        Err(Sent::No) => (Outcome::Fail, None),
        _ => (Outcome::Unknown, None),
    }
}

/// Runs `req` over RESP on the client's connection (opened to `port` if
/// needed). An error reply to a write counts as unknown (the commit behind
/// it may have failed after writing), except a cluster node's `-TRYAGAIN`:
/// nothing was written or read.
fn over_resp(
    conn: &mut Option<RespConn>,
    port: u16,
    http_port: u16,
    req: &Request,
) -> (Outcome, Option<Option<String>>) {
    if let Request::Checkpoint = req {
        return over_http(http_port, req); // an admin call, HTTP only
    }
    if conn.is_none() {
        match RespConn::connect(port) {
            Ok(c) => *conn = Some(c),
            Err(_) => return (Outcome::Fail, None),
        }
    }
    let c = conn.as_mut().expect("connected above");
    let reply = match req {
        Request::Put(k, v) => c.call(&[b"SET", k.as_bytes(), v.as_bytes()]),
        Request::Delete(k) => c.call(&[b"DEL", k.as_bytes()]),
        Request::Batch(entries) => {
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            for (k, v) in entries {
                args.push(k.as_bytes());
                args.push(v.as_deref().expect("RESP batches are puts only").as_bytes());
            }
            c.call(&args)
        }
        Request::Clear => c.call(&[b"FLUSHALL"]),
        Request::Get(k) => c.call(&[b"GET", k.as_bytes()]),
        Request::Checkpoint => unreachable!("sent over HTTP above"),
    };
    match (req, reply) {
        (Request::Get(_), Ok(Reply::Bulk(v))) => (
            Outcome::Ok,
            Some(v.map(|b| String::from_utf8_lossy(&b).into_owned())),
        ),
        (Request::Delete(_), Ok(Reply::Integer(_))) => (Outcome::Ok, None),
        (Request::Put(..) | Request::Batch(_) | Request::Clear, Ok(Reply::Simple(s)))
            if s == "OK" =>
        {
            (Outcome::Ok, None)
        }
        (_, Ok(Reply::Error(e))) if e.starts_with("TRYAGAIN ") => {
            *conn = None; // another node may serve: a real client moves on
            (Outcome::Fail, None)
        }
        (_, Err(Failed::NotSent)) => {
            *conn = None;
            (Outcome::Fail, None)
        }
        _ => {
            *conn = None;
            (Outcome::Unknown, None)
        }
    }
}

fn client_loop(sh: Arc<Shared>, mut rng: SplitMix64, keys: u64) {
    let mut client = sh.next_client.fetch_add(1, Ordering::SeqCst);
    let mut seq = 0u64;
    let mut conn: Option<RespConn> = None;
    while !sh.stop.load(Ordering::Relaxed) {
        seq += 1;
        let val = |j: u64| format!("c{client}:{seq}:{j}{}", sh.value_padding);
        let (port, resp_port) = match sh.cluster_ports.len() {
            0 => (sh.port, sh.resp_port),
            n => {
                let i = rng.below(n as u64) as usize;
                (sh.cluster_ports[i], sh.cluster_resp_ports.get(i).copied())
            }
        };
        let req = Request::random(&mut rng, keys, resp_port.is_some(), val);
        let mut targets = req.targets();
        let call = sh.now();
        let (outcome, read) = match resp_port {
            Some(p) => over_resp(&mut conn, p, port, &req),
            None => over_http(port, &req),
        };
        let ret = sh.now();
        if let (Some(seen), [Target::Read(k, _)]) = (read, targets.as_slice()) {
            targets = vec![Target::Read(k.clone(), seen)];
        }
        if !targets.is_empty() {
            sh.history.lock().unwrap().push(Event {
                client,
                call,
                ret,
                outcome,
                targets,
            });
        }
        match outcome {
            Outcome::Ok => {}
            // The server is gone or going: a fresh client id for the
            // operations after an unknown one, then back off briefly.
            Outcome::Unknown | Outcome::Fail => {
                client = sh.next_client.fetch_add(1, Ordering::SeqCst);
                seq = 0;
                // A cluster elects a leader in about a second: retrying at
                // once would only pile up failures. After an unknown
                // outcome (a leader lost, a node cut off) a client backs
                // off longer, as a real one would: each unknown write
                // doubles what the linearizability check may have to try.
                let pause = match (sh.cluster_ports.is_empty(), outcome) {
                    (true, _) => 2,
                    (false, Outcome::Unknown) => 200,
                    (false, _) => 20,
                };
                std::thread::sleep(Duration::from_millis(pause));
            }
        }
    }
}

/// Starts `args.clients` client threads on `sh`.
fn spawn_clients(
    sh: &Arc<Shared>,
    args: &Args,
    rng: &mut SplitMix64,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..args.clients)
        .map(|_| {
            let sh = Arc::clone(sh);
            let rng = SplitMix64::new(rng.next_u64());
            let keys = args.keys as u64;
            std::thread::spawn(move || client_loop(sh, rng, keys))
        })
        .collect()
}

/// Stops the clients; returns the history and the next client id.
fn stop_clients(
    sh: &Shared,
    clients: Vec<std::thread::JoinHandle<()>>,
) -> anyhow::Result<(History, u64)> {
    sh.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    let history =
        std::mem::take(&mut *sh.history.lock().map_err(|_| {
            anyhow::anyhow!("a client thread panicked while recording the history")
        })?);
    Ok((history, sh.next_client.load(Ordering::SeqCst)))
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel-torture: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut run = Run::prepare(args)?;
    if let Some(size) = run.args.cluster {
        return cluster::run(run, size);
    }
    for cycle in 0..=run.args.cycles {
        // In fail-point mode the server of this cycle carries its fault; if
        // it fires during startup recovery, that is the cycle's crash, and
        // the server is started again without it.
        let fault = (run.args.failpoints && cycle < run.args.cycles).then(|| failpoint(cycle));
        let server = match run.restart_and_check(cycle, fault.as_deref())? {
            Ok(server) => server,
            Err(violated) => return Ok(violated),
        };
        if cycle == 0 && run.args.archive {
            let dest = serde_json::json!({"dest": run.dir.join("backup")}).to_string();
            match raw(server.port, "POST", "/admin/backup", dest.as_bytes()) {
                Ok((200, _)) => {}
                other => bail!("the backup over HTTP failed: {other:?}"),
            }
        }
        if cycle == run.args.cycles {
            let mut child = server.child;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        run.load_then_kill(server, fault.is_some())?;
    }
    run.finish()
}

/// One torture run: its settings and what it has recorded so far.
struct Run {
    args: Args,
    seed: u64,
    bin: PathBuf,
    dir: PathBuf,
    rng: SplitMix64,
    epoch: Instant,
    started: Instant,
    history: History,
    recoveries: Vec<Duration>,
    next_client: u64,
    self_crashes: u32,
    /// What the last check read back (`GET /kv?limit=10000`).
    last_listing: Vec<u8>,
}

impl Run {
    /// Checks the arguments, finds the binary, makes a fresh data directory.
    fn prepare(args: Args) -> anyhow::Result<Run> {
        let seed = args
            .seed
            .unwrap_or_else(|| SplitMix64::from_entropy().next_u64());
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let bin = args.bin.clone().unwrap_or_else(|| {
            root.join(if args.release_bin {
                "target/release/keel"
            } else {
                "target/debug/keel"
            })
        });
        if !bin.exists() {
            bail!(
                "{} is missing: build it first (cargo build{} -p keel-server)",
                bin.display(),
                if args.release_bin { " --release" } else { "" }
            );
        }
        let dir = match &args.dir {
            Some(d) => d.clone(),
            None => {
                let base = root.join("target/keel-torture");
                std::fs::create_dir_all(&base)?;
                base.join(format!("run-{seed}"))
            }
        };
        if args.storage != "real" && args.storage != "buffered" {
            bail!("--storage must be `real` or `buffered`");
        }
        if args.protocol != "http" && args.protocol != "resp" {
            bail!("--protocol must be `http` or `resp`");
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        println!(
            "keel-torture: seed {seed}, {} cycles, {} clients ({}), {} keys, {}, sync {}, storage {}, data in {}",
            args.cycles,
            args.clients,
            args.protocol,
            args.keys,
            if args.failpoints {
                "crash at the Nth create/rename/syncdir/remove/sync in turn".to_string()
            } else {
                format!("kill after {}-{} ms", args.min_ms, args.max_ms)
            },
            args.sync,
            args.storage,
            dir.display()
        );
        Ok(Run {
            args,
            seed,
            bin,
            dir,
            rng: SplitMix64::new(seed),
            epoch: Instant::now(),
            started: Instant::now(),
            history: History::default(),
            recoveries: Vec::new(),
            next_client: 0,
            self_crashes: 0,
            last_listing: Vec::new(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Starts the server of `cycle`, reads everything back and checks it
    /// against the history. `Ok(Err(code))`: a violation, already reported.
    fn restart_and_check(
        &mut self,
        cycle: u32,
        fault: Option<&str>,
    ) -> anyhow::Result<Result<Server, ExitCode>> {
        let (bin, dir, args) = (&self.bin, &self.dir, &self.args);
        let started = match start(bin, dir, args, cycle, fault) {
            Err(_) if fault.is_some() => start(bin, dir, args, cycle + 100_000, None),
            r => r,
        };
        let (server, took) = match started {
            Ok(x) => x,
            // Not coming back after a kill is a violation, not a tool error.
            Err(e) if cycle > 0 => {
                let log = std::fs::read_to_string(dir.join(format!("server-{cycle}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                let what = format!(
                    "the server did not recover after kill {cycle}: {e}; its log ends: {}",
                    tail.join(" | ")
                );
                return violation(dir, &self.history, self.seed, &what).map(Err);
            }
            Err(e) => return Err(e),
        };
        if cycle > 0 {
            self.recoveries.push(took);
        }
        // Whatever was unknown could only take effect before this server
        // was ready: close those windows now.
        self.history.close_unknown_windows(self.now());
        let call = self.now();
        let listing = raw(server.port, "GET", "/kv?limit=10000", b"");
        let ret = self.now();
        let state = match listing {
            Ok((200, ref body)) => history::parse_listing(body)?,
            other => bail!("reading everything back after restart {cycle} failed: {other:?}"),
        };
        self.last_listing = match &listing {
            Ok((_, body)) => body.clone(),
            Err(_) => Vec::new(),
        };
        let checked = self.history.check_snapshot(&state);
        self.history
            .push_snapshot(call, ret, &state, self.args.keys as u64, key);
        if let Err(v) = checked {
            let what = format!("after restart {cycle}: {v}");
            return violation(&self.dir, &self.history, self.seed, &what).map(Err);
        }
        Ok(Ok(server))
    }

    /// Runs the clients against `server`, then kills it with SIGKILL at a
    /// random moment (or waits for its injected fault to abort it).
    fn load_then_kill(&mut self, server: Server, has_fault: bool) -> anyhow::Result<()> {
        let mut child = server.child;
        let sh = Arc::new(Shared {
            port: server.port,
            cluster_ports: Vec::new(),
            cluster_resp_ports: Vec::new(),
            resp_port: server.resp_port,
            stop: AtomicBool::new(false),
            history: Mutex::new(std::mem::take(&mut self.history)),
            next_client: AtomicU64::new(self.next_client),
            epoch: self.epoch,
            value_padding: if self.args.wal_compression.is_some() {
                ":{\"kind\":\"torture\",\"note\":\"padding so the log compresses\"}".repeat(3)
            } else {
                String::new()
            },
        });
        let clients = spawn_clients(&sh, &self.args, &mut self.rng);
        let (min, max) = (self.args.min_ms, self.args.max_ms);
        let wait = min + self.rng.below(max.saturating_sub(min) + 1);
        if has_fault {
            // Wait for the injected abort (or give up after a while and kill).
            let deadline = Instant::now() + Duration::from_millis(wait.max(100) * 10);
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait()?.is_some() {
                self.self_crashes += 1;
            }
        } else {
            std::thread::sleep(Duration::from_millis(wait));
        }
        let _ = child.kill(); // SIGKILL, at a random moment under load
        child.wait()?;
        (self.history, self.next_client) = stop_clients(&sh, clients)?;
        Ok(())
    }

    /// Flushes and compactions the servers logged (every `server-*.log`:
    /// the cycles' servers and the ones that checked them).
    fn tables_activity(&self) -> (usize, usize) {
        let (mut flushes, mut compactions) = (0, 0);
        let logs = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        for entry in logs {
            let name = entry.file_name().to_string_lossy().to_string();
            if !(name.starts_with("server-") && name.ends_with(".log")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            flushes += text.matches("memtable flushed").count();
            compactions += text.matches("compaction done").count();
        }
        (flushes, compactions)
    }

    /// Checks every key for linearizability and prints the run's figures.
    fn finish(mut self) -> anyhow::Result<ExitCode> {
        let checking = Instant::now();
        let lin = self.history.check_linearizable();
        let lin_time = checking.elapsed();
        let counts = self.history.counts();
        self.recoveries.sort();
        let (p50, max) = match self.recoveries.len() {
            0 => (Duration::ZERO, Duration::ZERO),
            n => (self.recoveries[n / 2], self.recoveries[n - 1]),
        };
        println!(
            "cycles {}, ops ok {} / fail {} / unknown {}, acknowledged writes verified {}, lost 0, phantom 0, stale reads 0, keys linearizable {}/{}, restart-to-ready p50 {:.0} ms max {:.0} ms, {:.1} s ({:.1} s in the linearizability check)",
            self.args.cycles,
            counts.ok,
            counts.fail,
            counts.unknown,
            counts.acked_writes,
            lin.iter().filter(|(_, ok)| *ok).count(),
            lin.len(),
            p50.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
            self.started.elapsed().as_secs_f64(),
            lin_time.as_secs_f64()
        );
        let in_memory = self
            .args
            .memtable_size
            .as_deref()
            .is_some_and(|m| m.trim() == "0");
        if self.args.memtable_size.is_some() && !in_memory {
            let (flushes, compactions) = self.tables_activity();
            println!("tables: the servers logged {flushes} memtable flushes and {compactions} compactions over the run");
            if flushes == 0 || compactions == 0 {
                anyhow::bail!("--memtable-size was given but the servers never flushed and compacted: the run did not test the tables");
            }
        }
        if self.args.failpoints {
            println!(
                "fail points: the server aborted itself at its injected fault in {} of {} cycles (the others were killed after waiting)",
                self.self_crashes, self.args.cycles
            );
        }
        if let Some((k, _)) = lin.iter().find(|(_, ok)| !ok) {
            let what = format!("key {k} is not linearizable");
            return violation(&self.dir, &self.history, self.seed, &what);
        }
        if self.args.archive {
            if let Err(what) = self.restore_and_compare() {
                return violation(&self.dir, &self.history, self.seed, &what);
            }
        }
        if std::env::var_os("KEEL_TORTURE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Run {
    /// `--archive`: restores the backup taken before the first load to the
    /// latest record of the archive and the (stopped) data directory, serves
    /// it, and compares what it holds with what the last check read back.
    fn restore_and_compare(&self) -> Result<(), String> {
        let restored = self.dir.join("restored");
        let out = Command::new(&self.bin)
            .arg("restore")
            .arg(self.dir.join("backup"))
            .arg("--into")
            .arg(&restored)
            .arg("--archive-dir")
            .arg(self.dir.join("archive"))
            .arg("--source")
            .arg(self.dir.join("data"))
            .arg("--latest")
            .output()
            .map_err(|e| format!("running keel restore: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "keel restore failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let port = free_port().map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.bin)
            .args(["serve", "--port", &port.to_string(), "--working-dir"])
            .arg(&restored)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("serving the restored store: {e}"))?;
        let started = Instant::now();
        let listing = loop {
            if matches!(raw(port, "GET", "/health", b""), Ok((200, _))) {
                break raw(port, "GET", "/kv?limit=10000", b"");
            }
            if started.elapsed() > Duration::from_secs(60) {
                break Err(Sent::No);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = child.kill();
        let _ = child.wait();
        match listing {
            Ok((200, body)) if body == self.last_listing => {
                let archived = std::fs::read_dir(self.dir.join("archive"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                println!(
                    "archive: {archived} segments archived; {}",
                    said.lines().next().unwrap_or_default()
                );
                Ok(())
            }
            Ok((200, body)) => Err(format!(
                "the store restored from the backup and the archive differs from the last check: {} vs {} bytes of listing ({})",
                body.len(),
                self.last_listing.len(),
                said.trim()
            )),
            other => Err(format!("reading the restored store failed: {other:?}")),
        }
    }
}

fn violation(dir: &Path, history: &History, seed: u64, what: &str) -> anyhow::Result<ExitCode> {
    let path = dir.join("history.jsonl");
    history.save(&path)?;
    eprintln!(
        "VIOLATION {what}\n  seed {seed} (replay: --seed {seed}); history: {}; data directory and server logs: {}",
        path.display(),
        dir.display()
    );
    Ok(ExitCode::from(1))
}
