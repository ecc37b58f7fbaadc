//! A 3-node keel cluster against a 3-node etcd cluster, side by side on
//! this machine (issue 14), driven over HTTP by the same load generator.
//!
//! Starts three `keel serve --node-id` (release build) and three `etcd`
//! members on loopback with scratch directories (both fdatasync every
//! acknowledged write), then for 1, 16 and 64 clients runs, alternating
//! the two systems, `--seconds` of puts (100-byte values, random keys of a
//! million) and of linearizable gets; each client sends to the nodes in
//! turn (followers forward to the leader in both). etcd is driven through
//! its v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`). Prints median
//! ops/s and p50/p99 latency per point and the keel/etcd ratios, then the
//! failover time of each: kill -9 of the leader to the first acknowledged
//! write (median of `--failovers` kills).
//!
//! Needs etcd (`apt-get install etcd-server etcd-client`: etcd 3.4) and
//! `cargo build --release -p keel-server`. Run:
//! `cargo run --release -p keel-bench --bin keel-vs-etcd [-- --seconds 5 --rounds 3]`.

use anyhow::{bail, Context};
use keel_bench::{arg, free_port, loadavg, median};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: [usize; 3] = [1, 16, 64];
const KEYS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Keel,
    Etcd,
}

/// One running node: its process and the port clients use.
struct Node {
    child: Option<Child>,
    port: u16,
}

struct Cluster {
    system: System,
    nodes: Vec<Node>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn b64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// One request: whether it succeeded.
fn request(a: &ureq::Agent, system: System, port: u16, key: &str, put: Option<&[u8]>) -> bool {
    let resp = match (system, put) {
        (System::Keel, Some(v)) => a.put(format!("http://127.0.0.1:{port}/kv/{key}")).send(v),
        (System::Keel, None) => a.get(format!("http://127.0.0.1:{port}/kv/{key}")).call(),
        (System::Etcd, Some(v)) => {
            a.post(format!("http://127.0.0.1:{port}/v3/kv/put"))
                .send(format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    b64(key.as_bytes()),
                    b64(v)
                ))
        }
        (System::Etcd, None) => a
            .post(format!("http://127.0.0.1:{port}/v3/kv/range"))
            .send(format!(r#"{{"key":"{}"}}"#, b64(key.as_bytes()))),
    };
    match resp {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let _ = r.body_mut().read_to_vec();
            // A keel GET of a key never written is 404, and still a read.
            status == 200 || (put.is_none() && status == 404)
        }
        Err(_) => false,
    }
}

fn wait_http(port: u16, path: &str, post: bool) -> anyhow::Result<()> {
    let a = agent();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let url = format!("http://127.0.0.1:{port}{path}");
        let ok = if post {
            a.post(&url).send("{}")
        } else {
            a.get(&url).call()
        };
        if ok.is_ok_and(|r| r.status().as_u16() == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing answered on port {port} within 60 s")
}

fn start(system: System, keel: &Path, dir: &Path) -> anyhow::Result<Cluster> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for (i, &(port, peer)) in ports.iter().enumerate() {
        let d = dir.join(format!("{system:?}-{}", i + 1));
        std::fs::create_dir_all(&d)?;
        let log = std::fs::File::create(d.join("log"))?;
        let mut cmd = match system {
            System::Keel => {
                let peers = ports
                    .iter()
                    .enumerate()
                    .map(|(j, (p, _))| format!("{}=127.0.0.1:{p}", j + 1))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut c = Command::new(keel);
                c.args(["serve", "--port", &port.to_string(), "--working-dir"])
                    .arg(d.join("data"))
                    .args(["--node-id", &(i + 1).to_string(), "--peers", &peers])
                    .args(["--cluster-secret", "bench"]);
                c
            }
            System::Etcd => {
                let initial = ports
                    .iter()
                    .enumerate()
                    .map(|(j, (_, pp))| format!("e{}=http://127.0.0.1:{pp}", j + 1))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut c = Command::new("etcd");
                c.args(["--name", &format!("e{}", i + 1), "--data-dir"])
                    .arg(d.join("data"))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
                    .args([
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{port}"),
                    ])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args([
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                    ])
                    .args([
                        "--initial-cluster",
                        &initial,
                        "--initial-cluster-state",
                        "new",
                    ])
                    .args(["--log-level", "error"]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {system:?} node {}", i + 1))?;
        nodes.push(Node {
            child: Some(child),
            port,
        });
    }
    let cluster = Cluster { system, nodes };
    for n in &cluster.nodes {
        match system {
            System::Keel => wait_http(n.port, "/health", false)?,
            System::Etcd => wait_http(n.port, "/v3/maintenance/status", true)?,
        }
    }
    // Until a write goes through, there is no leader.
    let a = agent();
    let t = Instant::now();
    while !request(&a, system, cluster.nodes[0].port, "warmup", Some(b"x")) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("{system:?}: no write acknowledged within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(cluster)
}

struct Point {
    ops: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` threads doing puts (or gets) for `seconds`.
fn load(cluster: &Cluster, clients: usize, seconds: f64, puts: bool, seed: u64) -> Point {
    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let system = cluster.system;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, ports) = (Arc::clone(&stop), ports.clone());
            std::thread::spawn(move || {
                let a = agent();
                let mut rng = keel::storage::rng::SplitMix64::new(seed ^ (c as u64) << 32);
                let mut lat = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let value = [b'v'; 100];
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("key{:07}", rng.below(KEYS));
                    let t = Instant::now();
                    let ok = request(
                        &a,
                        system,
                        ports[i % ports.len()],
                        &key,
                        puts.then_some(&value[..]),
                    );
                    if ok {
                        let _ = lat.record(t.elapsed().as_micros() as u64);
                    }
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for t in threads {
        let _ = all.add(t.join().expect("client thread"));
    }
    Point {
        ops: all.len() as f64 / seconds,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

/// The index of the leader's node.
fn leader(cluster: &Cluster) -> Option<usize> {
    let a = agent();
    for n in cluster.nodes.iter().filter(|n| n.child.is_some()) {
        let url = format!("http://127.0.0.1:{}", n.port);
        let body = match cluster.system {
            System::Keel => a.get(format!("{url}/cluster")).call(),
            System::Etcd => a.post(format!("{url}/v3/maintenance/status")).send("{}"),
        };
        let Ok(mut r) = body else { continue };
        let Ok(v) = r.body_mut().read_json::<serde_json::Value>() else {
            continue;
        };
        match cluster.system {
            System::Keel => {
                if let Some(l) = v["leader_id"].as_u64() {
                    return Some(l as usize - 1);
                }
            }
            System::Etcd => {
                // Each member's status names its own id and the leader's.
                let leader = v["leader"].as_str().map(str::to_string);
                for (i, m) in cluster.nodes.iter().enumerate() {
                    let url = format!("http://127.0.0.1:{}/v3/maintenance/status", m.port);
                    if let Ok(mut r) = a.post(url).send("{}") {
                        if let Ok(s) = r.body_mut().read_json::<serde_json::Value>() {
                            if s["header"]["member_id"].as_str().map(str::to_string) == leader {
                                return Some(i);
                            }
                        }
                    }
                }
            }
        }
    }
    None
}

/// kill -9 of the leader to the first acknowledged write through another
/// node.
fn failover(cluster: &mut Cluster) -> anyhow::Result<Duration> {
    let l = leader(cluster).context("no leader to kill")?;
    let other = cluster.nodes[(l + 1) % 3].port;
    let a = agent();
    let mut child = cluster.nodes[l].child.take().expect("running");
    let t = Instant::now();
    let _ = child.kill();
    child.wait()?;
    while !request(&a, cluster.system, other, "failover", Some(b"x")) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "{:?}: no write within 60 s of killing the leader",
                cluster.system
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(t.elapsed())
}

/// The run (module doc): checks, the two clusters, the table, then the
/// failovers; about 80 lines, one block per part, in the order printed.
fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg("--seconds", 5.0);
    let rounds: usize = arg("--rounds", 3);
    let failovers: usize = arg("--failovers", 3);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let keel = root.join("target/release/keel");
    if !keel.exists() {
        bail!(
            "{} is missing: cargo build --release -p keel-server",
            keel.display()
        );
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("etcd is missing: apt-get install etcd-server etcd-client");
    }
    let scratch = tempfile::tempdir_in(root.join("target"))?;
    println!("keel-vs-etcd: 3 nodes each on loopback, 100-byte values, {seconds} s per run, {rounds} rounds alternating; load {}", loadavg());
    let keel_c = start(System::Keel, &keel, scratch.path())?;
    let etcd_c = start(System::Etcd, &keel, scratch.path())?;
    println!("| clients | op | keel ops/s | etcd ops/s | keel/etcd (median of rounds) | keel p50 / p99 ms | etcd p50 / p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for &clients in &CLIENTS {
        for puts in [true, false] {
            let (mut k, mut e, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..rounds {
                // Alternate which system goes first.
                let order = if r % 2 == 0 {
                    [&keel_c, &etcd_c]
                } else {
                    [&etcd_c, &keel_c]
                };
                let mut pair = [None, None];
                for c in order {
                    let p = load(c, clients, seconds, puts, r as u64);
                    pair[usize::from(c.system == System::Etcd)] = Some(p);
                }
                let [Some(kp), Some(ep)] = pair else {
                    unreachable!()
                };
                ratios.push(kp.ops / ep.ops.max(1.0));
                k.push(kp);
                e.push(ep);
            }
            let med =
                |v: &[Point], f: fn(&Point) -> f64| median(v.iter().map(f).collect::<Vec<_>>());
            println!(
                "| {clients} | {} | {:.0} | {:.0} | {:.2}x ({:.2}-{:.2}) | {:.2} / {:.2} | {:.2} / {:.2} |",
                if puts { "put" } else { "linearizable get" },
                med(&k, |p| p.ops),
                med(&e, |p| p.ops),
                median(ratios.clone()),
                ratios.iter().cloned().fold(f64::MAX, f64::min),
                ratios.iter().cloned().fold(0.0, f64::max),
                med(&k, |p| p.p50_ms),
                med(&k, |p| p.p99_ms),
                med(&e, |p| p.p50_ms),
                med(&e, |p| p.p99_ms),
            );
        }
    }
    drop(keel_c);
    drop(etcd_c);
    let (mut kf, mut ef) = (Vec::new(), Vec::new());
    for i in 0..failovers {
        let d = scratch.path().join(format!("failover-{i}"));
        for (system, out) in [(System::Keel, &mut kf), (System::Etcd, &mut ef)] {
            let mut c = start(system, &keel, &d)?;
            // Some writes first, so the new leader has a log to catch up.
            let _ = load(&c, 4, 1.0, true, i as u64);
            out.push(failover(&mut c)?.as_secs_f64() * 1000.0);
        }
    }
    println!(
        "failover (kill -9 of the leader to the first acknowledged write), median of {failovers}: keel {:.0} ms, etcd {:.0} ms (keel runs {:?}, etcd {:?})",
        median(kf.clone()),
        median(ef.clone()),
        kf.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        ef.iter().map(|v| *v as u64).collect::<Vec<_>>()
    );
    Ok(())
}
