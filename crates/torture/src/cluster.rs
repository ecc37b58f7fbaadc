//! `keel-torture --cluster N`: N real `keel serve --node-id` processes on
//! loopback under load from the clients, each request sent to a random
//! node (followers forward to the leader). Each cycle kills one node with
//! SIGKILL (the leader half the time) after a random wait, keeps the load
//! on the others while it is down, and restarts it. With `--partitions`,
//! the nodes reach each other through proxies ([`crate::link_proxy`]) and
//! half the cycles isolate the node instead (both ways, every open
//! connection closed) while the load goes on everywhere, then heal. With
//! `--protocol resp`, each client keeps a Redis connection to a random node
//! (a new one after a failure).
//!
//! After each cycle the load stops and the cluster settles: a leader, and
//! on every node the last log index applied (so no entry is left
//! uncommitted anywhere). An operation whose outcome is unknown (a write the
//! killed leader appended may be committed by the next one) can take effect
//! only until then, so its window closes there. Then, and at the end: the
//! same keys on every node (compared whole, read from each node's own
//! copy), every acknowledged write there unless a later-or-concurrent write
//! may have replaced it; at the end every key linearizable over the whole
//! history.

use super::*;
use crate::link_proxy::LinkProxies;

/// One node of the cluster: its id, ports and process.
struct ClusterNode {
    id: u64,
    port: u16,
    /// With `--protocol resp`: its Redis protocol port.
    resp_port: Option<u16>,
    child: Option<Child>,
}

/// The cluster under test.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    peers: String,
    nodes: Vec<ClusterNode>,
    storage: String,
    memtable_size: Option<String>,
    starts: u32,
}

impl Cluster {
    fn start_node(&mut self, i: usize) -> anyhow::Result<Duration> {
        let node = &self.nodes[i];
        let dir = self.dir.join(format!("n{}", node.id));
        std::fs::create_dir_all(&dir)?;
        self.starts += 1;
        let log = std::fs::File::create(dir.join(format!("server-{}.log", self.starts)))?;
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .args(["serve", "--port", &node.port.to_string(), "--working-dir"])
            .arg(dir.join("data"))
            .args(["--node-id", &node.id.to_string(), "--peers", &self.peers])
            .args(["--cluster-secret", "keel-torture"])
            // Snapshots (and log purges) happen during the run, too.
            .args(["--snapshot-every", "500"])
            // A write or read the leader cannot finish (cut off) answers
            // 503 after this, not after the default 10 s.
            .args(["--cluster-timeout", "3s"])
            .args(
                node.resp_port
                    .map(|p| vec!["--resp-port".to_string(), p.to_string()])
                    .unwrap_or_default(),
            )
            .args(
                self.memtable_size
                    .as_ref()
                    .map(|m| vec!["--memtable-size".to_string(), m.clone()])
                    .unwrap_or_default(),
            )
            .env(
                "KEEL_STORAGE",
                if self.storage == "buffered" {
                    "buffered"
                } else {
                    ""
                },
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let port = node.port;
        self.nodes[i].child = Some(child);
        loop {
            if matches!(raw(port, "GET", "/health", b""), Ok((200, _))) {
                return Ok(started.elapsed());
            }
            if let Some(st) = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "node {} exited with {st} at start; see {}",
                    i + 1,
                    dir.display()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("node {} did not come up within 60 s", i + 1);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill(); // SIGKILL
            c.wait()?;
        }
        Ok(())
    }

    /// `GET /cluster` of a running node.
    fn status(&self, i: usize) -> Option<serde_json::Value> {
        match raw(self.nodes[i].port, "GET", "/cluster", b"") {
            Ok((200, body)) => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    /// The leader the running nodes name, if any.
    fn leader(&self) -> Option<u64> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .find_map(|i| self.status(i)?["leader_id"].as_u64())
    }

    /// Waits until every node has applied what the leader has.
    fn settle(&self) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            let applied: Vec<Option<u64>> = (0..self.nodes.len())
                .map(|i| self.status(i).and_then(|s| s["applied_index"].as_u64()))
                .collect();
            let last: Vec<Option<u64>> = (0..self.nodes.len())
                .map(|i| self.status(i).and_then(|s| s["last_log_index"].as_u64()))
                .collect();
            if self.leader().is_some()
                && applied.iter().all(|a| a.is_some() && *a == applied[0])
                && last.iter().all(|l| *l == applied[0])
            {
                return Ok(applied[0].unwrap_or(0));
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the nodes did not converge within 60 s: applied {applied:?}, log {last:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.kill(i);
        }
    }
}

/// Runs the cluster torture (module doc). About 140 lines on purpose:
/// one cycle's steps in the order they happen (load, kill or isolate, down time,
/// stop the load, restart or heal, settle, check), read top to bottom; the
/// cluster's own steps and the checks are functions of their own.
pub fn run(mut run: Run, size: u32) -> anyhow::Result<ExitCode> {
    if run.args.failpoints || run.args.archive {
        bail!("--cluster runs without --failpoints and --archive");
    }
    let ports: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
    let resp_ports: Vec<u16> = match run.args.protocol.as_str() {
        "resp" => (0..size).map(|_| free_port()).collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let ids: Vec<u64> = (1..=size as u64).collect();
    let proxies = match run.args.partitions {
        true => Some(LinkProxies::start(
            &ids.iter()
                .copied()
                .zip(ports.iter().copied())
                .collect::<Vec<_>>(),
        )?),
        false => None,
    };
    // The nodes know each other by their proxies' ports, if any.
    let peer_ports = proxies.as_ref().map_or(&ports, |p| &p.ports);
    let peers = peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut cluster = Cluster {
        bin: run.bin.clone(),
        dir: run.dir.clone(),
        peers,
        nodes: ports
            .iter()
            .enumerate()
            .map(|(i, &port)| ClusterNode {
                id: i as u64 + 1,
                port,
                resp_port: resp_ports.get(i).copied(),
                child: None,
            })
            .collect(),
        storage: run.args.storage.clone(),
        memtable_size: run.args.memtable_size.clone(),
        starts: 0,
    };
    for i in 0..size as usize {
        cluster.start_node(i)?;
    }
    let (mut leader_kills, mut restarts) = (0u32, Vec::new());
    let (mut partitions, mut leader_partitions) = (0u32, 0u32);
    let mut history = History::default();
    let mut next_client = 0;
    let mut applied = 0;
    for cycle in 0..run.args.cycles {
        let sh = Arc::new(Shared {
            port: ports[0],
            cluster_ports: ports.clone(),
            cluster_resp_ports: resp_ports.clone(),
            resp_port: None,
            stop: AtomicBool::new(false),
            history: Mutex::new(std::mem::take(&mut history)),
            next_client: AtomicU64::new(next_client),
            epoch: run.epoch,
            value_padding: String::new(),
        });
        let clients = spawn_clients(&sh, &run.args, &mut run.rng);
        let (min, max) = (run.args.min_ms, run.args.max_ms);
        std::thread::sleep(Duration::from_millis(
            min + run.rng.below(max.saturating_sub(min) + 1),
        ));
        let isolate = proxies.as_ref().filter(|_| run.rng.chance(1, 2));
        let (victim, of_leader) = match cluster.leader() {
            Some(l) if run.rng.chance(1, 2) => ((l - 1) as usize, 1),
            _ => (run.rng.below(size as u64) as usize, 0),
        };
        match isolate {
            Some(p) => {
                p.isolate(victim as u64 + 1, &ids);
                partitions += 1;
                leader_partitions += of_leader;
            }
            None => {
                cluster.kill(victim)?;
                leader_kills += of_leader;
            }
        }
        // The others go on under load while it is down or cut off (the
        // clients still reach it: they are on both sides). A partition
        // lasts past an election (the followers' leader lease and election
        // timeout: 2-3 s), so the other side elects a leader and commits
        // while a cut-off leader still believes it leads.
        let pause = match isolate {
            Some(_) => 2500 + run.rng.below(2500),
            None => 100 + run.rng.below(900),
        };
        std::thread::sleep(Duration::from_millis(pause));
        (history, next_client) = stop_clients(&sh, clients)?;
        match isolate {
            Some(p) => p.heal(),
            None => restarts.push(cluster.start_node(victim)?),
        }
        applied = cluster.settle()?;
        history.close_unknown_windows(run.now());
        if let Err(what) = check_nodes(&cluster, &mut history, &run, applied) {
            return violation(
                &run.dir,
                &history,
                run.seed,
                &format!("after cycle {cycle}: {what}"),
            );
        }
    }
    restarts.sort();
    let counts = history.counts();
    eprintln!(
        "checking {} ops ({} unknown) for linearizability",
        counts.ok + counts.fail + counts.unknown,
        counts.unknown
    );
    let lin = history.check_linearizable();
    println!(
        "cluster of {size}: {} kill -9 ({leader_kills} of the leader), {partitions} partitions ({leader_partitions} isolating the leader), ops ok {} / fail {} / unknown {}, acknowledged writes verified {}, lost 0, every node equal at applied index {applied}, keys linearizable {}/{}, restart-to-ready p50 {:.0} ms, {:.1} s",
        run.args.cycles - partitions,
        counts.ok,
        counts.fail,
        counts.unknown,
        counts.acked_writes,
        lin.iter().filter(|(_, ok)| *ok).count(),
        lin.len(),
        restarts.get(restarts.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        run.started.elapsed().as_secs_f64()
    );
    if let Some((k, _)) = lin.iter().find(|(_, ok)| !ok) {
        return violation(
            &run.dir,
            &history,
            run.seed,
            &format!("key {k} is not linearizable"),
        );
    }
    if counts.acked_writes == 0 {
        bail!("no write was acknowledged: the cluster never served");
    }
    drop(cluster);
    if std::env::var_os("KEEL_TORTURE_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&run.dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads every node's own copy: all equal, and consistent with the
/// history (recorded as a read of every key).
fn check_nodes(
    cluster: &Cluster,
    history: &mut History,
    run: &Run,
    applied: u64,
) -> Result<(), String> {
    let call = run.now();
    let mut listings = Vec::new();
    for n in &cluster.nodes {
        match raw(n.port, "GET", "/kv?limit=10000&consistency=stale", b"") {
            Ok((200, body)) => listings.push(body),
            other => return Err(format!("reading node {} back failed: {other:?}", n.id)),
        }
    }
    let ret = run.now();
    if let Some(i) = listings.iter().position(|l| *l != listings[0]) {
        return Err(format!(
            "node {} holds other keys than node 1 at applied index {applied}",
            i + 1
        ));
    }
    let state = history::parse_listing(&listings[0]).map_err(|e| e.to_string())?;
    history.check_snapshot(&state).map_err(|v| v.to_string())?;
    history.push_snapshot(call, ret, &state, run.args.keys as u64, key);
    Ok(())
}
