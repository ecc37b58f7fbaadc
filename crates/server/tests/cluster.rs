//! A keel cluster of real `keel serve --node-id` processes on loopback
//! (issue 14): it forms by itself, any node takes writes and linearizable
//! reads (followers forward to the leader, every answer names it),
//! `/raft/` refuses requests without the cluster secret, kill -9 of the
//! leader loses no acknowledged write and the node rejoins, and a node
//! joins as a learner, is promoted and removed.

mod common;

use common::{free_port, BIN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "cluster-test-secret";

struct Node {
    id: u64,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(base: &Path, id: u64, port: u16, peers: &str, extra: &[&str]) -> Node {
        let dir = base.join(format!("n{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--port", &port.to_string(), "--working-dir"])
            .arg(dir.join("data"))
            .args(["--node-id", &id.to_string(), "--peers", peers])
            .args(["--cluster-secret", SECRET, "--memtable-size", "1MiB"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start keel serve");
        let node = Node {
            id,
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::raw(
            port,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .map(|r| r.0)
        .ok()
            != Some(200)
        {
            assert!(
                Instant::now() < deadline,
                "node {id} did not come up: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build()
        .into()
}

/// (status, body, x-keel-leader).
fn call(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>, Option<String>) {
    let a = agent();
    let mut resp = match method {
        "GET" => {
            let mut r = a.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        "DELETE" => a.delete(url).call(),
        "PUT" => a.put(url).send(body.unwrap_or(b"")),
        "POST" => {
            let mut r = a.post(url).header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.unwrap_or(b""))
        }
        _ => panic!("{method}"),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let leader = resp
        .headers()
        .get("x-keel-leader")
        .map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_vec().unwrap();
    (status, body, leader)
}

/// Sends `head` and then `body` from another thread while reading the
/// answer: (status, body). A server that answers before the body is all
/// sent may close the connection under the sender (a broken pipe there is
/// expected); the answer it sent first is still read.
fn exchange_while_sending(port: u16, head: &str, body: Vec<u8>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    let mut sender = conn.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let _ = sender.write_all(&body);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if got.is_empty() => panic!("no answer from port {port}: {e}"),
            Err(_) => break,
        }
        if answer_complete(&got) {
            break;
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    sending.join().unwrap();
    let (code, body) = common::parse_response(&got).unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Whether `got` holds a whole response head and the body its
/// `content-length` announces.
fn answer_complete(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| got.len() >= end + 4 + n)
}

fn status(node: &Node) -> serde_json::Value {
    let (code, body, _) = call("GET", &node.url("/cluster"), None, &[]);
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

/// Waits until the running nodes agree on a leader; returns its id.
fn leader(nodes: &[&Node]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| status(n)["leader_id"].as_u64())
            .collect();
        if let Some(Some(l)) = ids.first() {
            if ids.iter().all(|i| *i == Some(*l)) && nodes.iter().any(|n| n.id == *l) {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no leader agreed on: {ids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every node applied at least `index`.
fn wait_applied(nodes: &[&Node], index: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in nodes {
        while status(n)["applied_index"].as_u64().unwrap_or(0) < index {
            assert!(
                Instant::now() < deadline,
                "node {} stuck below {index}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every key a node holds (a stale read of its own copy).
fn contents(node: &Node) -> BTreeMap<String, String> {
    let (code, body, _) = call(
        "GET",
        &node.url("/kv?limit=10000&consistency=stale"),
        None,
        &[],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_string(),
                i["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn three(base: &Path) -> (Vec<Node>, String) {
    three_with(base, &[])
}

/// Three nodes started with `extra` arguments.
fn three_with(base: &Path, extra: &[&str]) -> (Vec<Node>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (0..3)
        .map(|i| Node::start(base, i as u64 + 1, ports[i], &peers, extra))
        .collect();
    (nodes, peers)
}

/// Starts node 4 with `--join` and `extra`, runs `before` on it, and has
/// `via` add it as a learner.
fn join_fourth(base: &Path, via: &Node, extra: &[&str], before: impl Fn(&Node)) -> Node {
    let port = free_port();
    let args: Vec<&str> = ["--join"].iter().chain(extra).copied().collect();
    let fourth = Node::start(base, 4, port, &format!("4=127.0.0.1:{port}"), &args);
    before(&fourth);
    let add = format!(r#"{{"add_learner":{{"id":4,"addr":"127.0.0.1:{port}"}}}}"#);
    let (code, body, _) = call(
        "POST",
        &via.url("/cluster/members"),
        Some(add.as_bytes()),
        &[],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    fourth
}

#[test]
fn a_cluster_forms_serves_every_node_and_refuses_raft_requests_without_the_secret() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("keel.toml");
    std::fs::write(
        &cfg,
        "max_key_len = 1024\nmax_value_len = 4096\nmax_batch_bytes = 8192\n",
    )
    .unwrap();
    let (nodes, _) = three_with(t.path(), &["--config", cfg.to_str().unwrap()]);
    let all: Vec<&Node> = nodes.iter().collect();
    let l = leader(&all);
    // Writes through every node, reads through every node.
    for i in 0..30 {
        let n = &nodes[i % 3];
        let (code, body, named) = call("PUT", &n.url(&format!("/kv/k{i}")), Some(b"v"), &[]);
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(named, Some(l.to_string()), "every answer names the leader");
    }
    let batch = br#"{"ops":[{"op":"put","key":"b1","value":"x"},{"op":"delete","key":"k0"}]}"#;
    let follower = nodes.iter().find(|n| n.id != l).unwrap();
    assert_eq!(
        call("POST", &follower.url("/batch"), Some(batch), &[]).0,
        200
    );
    assert_eq!(call("DELETE", &follower.url("/kv/k1"), None, &[]).0, 200);
    for n in &nodes {
        let (code, body, _) = call("GET", &n.url("/kv/b1"), None, &[]);
        assert_eq!(
            (code, body),
            (200, b"x".to_vec()),
            "linearizable read on node {}",
            n.id
        );
        assert_eq!(call("GET", &n.url("/kv/k0"), None, &[]).0, 404);
    }
    // A browser's cross-site write through a follower: refused there.
    let a = agent();
    let mut r = a
        .put(follower.url("/kv/csrf"))
        .header("origin", "http://evil.example")
        .send(&b"x"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let _ = r.body_mut().read_to_vec();
    assert_eq!(call("GET", &nodes[0].url("/kv/csrf"), None, &[]).0, 404);
    // A value over the limit, or a body far over it: 413 from the follower,
    // which checks a write as the leader would before forwarding it, and
    // reads no more of a body than the limit.
    let big = vec![b'v'; 5000];
    assert_eq!(
        call("PUT", &follower.url("/kv/big"), Some(&big), &[]).0,
        413
    );
    // A declared length over it is refused before the body is invited...
    let head =
        "PUT /kv/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 200000\r\n\r\n";
    let (code, body) = exchange_while_sending(follower.port, head, Vec::new());
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("the limit is 4096 bytes"), "{body}");
    // ...and a chunked body is cut off once it passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..25 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8000).as_bytes());
        chunked.extend_from_slice(&[b'v'; 8000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "PUT /kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (code, body) = exchange_while_sending(follower.port, head, chunked);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("the limit is 4096 bytes"), "{body}");
    // Bad input through a follower: refused, nothing proposed.
    let before = status(&nodes[0])["last_log_index"].as_u64();
    let bad = br#"{"ops":[{"op":"put","key":"ok","value":"x"},{"op":"put","key":"","value":"x"}]}"#;
    let refused = call("POST", &follower.url("/batch"), Some(bad), &[]);
    assert_eq!(refused.0, 400, "{}", String::from_utf8_lossy(&refused.1));
    let empty = call("PUT", &follower.url("/kv/e"), Some(b""), &[]);
    assert_eq!(empty.0, 400, "{}", String::from_utf8_lossy(&empty.1));
    assert_eq!(status(&nodes[0])["last_log_index"].as_u64(), before);
    // Every node holds the same keys.
    let applied = status(&nodes[(l - 1) as usize])["applied_index"]
        .as_u64()
        .unwrap();
    wait_applied(&all, applied);
    for n in &nodes {
        let st = status(n);
        let commit = st["commit_index"].as_u64().unwrap();
        assert!(commit >= st["applied_index"].as_u64().unwrap(), "{st}");
        assert!(commit <= st["last_log_index"].as_u64().unwrap(), "{st}");
    }
    let want = contents(&nodes[0]);
    assert_eq!(want.len(), 29);
    for n in &nodes {
        assert_eq!(contents(n), want, "node {}", n.id);
    }
    // /raft/ without the secret, or with another: 401 whatever the path.
    for (path, headers) in [
        ("/raft/append", vec![]),
        ("/raft/vote", vec![("x-keel-cluster-secret", "wrong")]),
        ("/raft/no-such-rpc", vec![]),
    ] {
        let (code, _, _) = call("POST", &nodes[0].url(path), Some(b"{}"), &headers);
        assert_eq!(code, 401, "{path}");
    }
    let (code, _, _) = call("GET", &nodes[0].url("/raft/x"), None, &[]);
    assert_eq!(code, 401);
    // With the secret: routed (an unknown RPC is 404, a malformed one 400).
    let ok = [("x-keel-cluster-secret", SECRET)];
    assert_eq!(
        call("POST", &nodes[0].url("/raft/no-such-rpc"), Some(b"{}"), &ok).0,
        404
    );
    assert_eq!(
        call("POST", &nodes[0].url("/raft/vote"), Some(b"{}"), &ok).0,
        400
    );
    assert_eq!(status(&nodes[0])["term"], status(&nodes[1])["term"]);
    // The leader's metrics: its role, term, each follower's lag, and how
    // long appends, applies and client writes take.
    let (code, body, _) = call("GET", &nodes[(l - 1) as usize].url("/metrics"), None, &[]);
    assert_eq!(code, 200);
    let m = String::from_utf8(body).unwrap();
    for want in [
        "keel_raft_role{role=\"Leader\"} 1",
        "keel_raft_term ",
        "keel_raft_leader_changes_total",
        "keel_raft_replication_lag_entries{follower=",
        "keel_raft_append_seconds",
        "keel_raft_apply_seconds",
        "keel_raft_write_seconds",
    ] {
        assert!(m.contains(want), "/metrics lacks {want}:\n{m}");
    }
}

/// `name_count` and `name_sum` of a histogram in a `/metrics` page.
fn histogram(metrics: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        let prefix = format!("{name}_{suffix} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("/metrics lacks {name}_{suffix}:\n{metrics}"))
    };
    (value("count"), value("sum"))
}

#[test]
fn a_follower_forwards_writes_in_batches_and_each_is_answered_on_its_own() {
    let t = tempfile::tempdir().unwrap();
    let (nodes, _) = three(t.path());
    let all: Vec<&Node> = nodes.iter().collect();
    let l = leader(&all);
    let follower = nodes.iter().find(|n| n.id != l).unwrap();
    // 32 clients, 8 writes each, all through one follower.
    std::thread::scope(|s| {
        for c in 0..32 {
            s.spawn(move || {
                for i in 0..8 {
                    let url = follower.url(&format!("/kv/c{c}-{i}"));
                    let (code, body, _) = call("PUT", &url, Some(b"v"), &[]);
                    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
                }
            });
        }
    });
    let m = String::from_utf8(call("GET", &follower.url("/metrics"), None, &[]).1).unwrap();
    let (requests, writes) = histogram(&m, "keel_raft_forwarded_writes_per_request");
    assert_eq!(writes, 256.0);
    assert!(
        requests < writes,
        "{writes} forwarded writes took {requests} requests: none shared one"
    );
    let leader_node = &nodes[(l - 1) as usize];
    let m = String::from_utf8(call("GET", &leader_node.url("/metrics"), None, &[]).1).unwrap();
    let (entries, proposed) = histogram(&m, "keel_raft_writes_per_entry");
    assert!(
        proposed >= 256.0 && entries < proposed,
        "{proposed} writes in {entries} entries"
    );
    let applied = status(leader_node)["applied_index"].as_u64().unwrap();
    wait_applied(&all, applied);
    for n in &nodes {
        assert_eq!(contents(n).len(), 256, "node {}", n.id);
    }
    // A batch as a follower sends it: each write answered on its own.
    use keel::op::Op;
    let writes = [
        Op::Put(b"p1".to_vec(), b"x".to_vec()).encode(),
        Op::Put(Vec::new(), b"x".to_vec()).encode(),
        vec![99, 1],
        Op::Put(b"p2".to_vec(), b"y".to_vec()).encode(),
    ];
    let body = keel_raft::entry_codec::encode_writes(&writes);
    let ok = [("x-keel-cluster-secret", SECRET)];
    let (code, answer, _) = call("POST", &leader_node.url("/raft/propose"), Some(&body), &ok);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let kinds: Vec<String> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_object().unwrap().keys().next().unwrap().clone())
        .collect();
    assert_eq!(
        kinds,
        ["applied", "refused", "refused", "applied"],
        "{answer}"
    );
    assert!(answer[2]["refused"]
        .as_str()
        .unwrap()
        .contains("not a keel write"));
    assert_eq!(call("GET", &follower.url("/kv/p2"), None, &[]).1, b"y");
    // Sent to a node that does not lead: not written, nothing proposed.
    let (code, answer, _) = call("POST", &follower.url("/raft/propose"), Some(&body), &ok);
    assert_eq!(code, 200);
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert!(answer[0]["not_written"].is_string(), "{answer}");
    assert!(answer[1]["refused"].is_string(), "{answer}");
    // A malformed batch: 400; without the secret: 401.
    let cut = &body[..body.len() - 1];
    assert_eq!(
        call("POST", &leader_node.url("/raft/propose"), Some(cut), &ok).0,
        400
    );
    assert_eq!(
        call("POST", &leader_node.url("/raft/propose"), Some(&body), &[]).0,
        401
    );
    assert_eq!(call("GET", &leader_node.url("/kv/p1"), None, &[]).1, b"x");
}

#[test]
fn kill_9_of_the_leader_loses_no_acknowledged_write_and_the_node_rejoins() {
    let t = tempfile::tempdir().unwrap();
    let (mut nodes, peers) = three(t.path());
    let first = leader(&nodes.iter().collect::<Vec<_>>());
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown = 0;
    let mut failover = None;
    for i in 0..300u64 {
        if i == 100 {
            nodes[(first - 1) as usize].kill9();
        }
        let target = nodes
            .iter()
            .filter(|n| n.child.is_some())
            .nth((i % 2) as usize)
            .unwrap();
        let started = Instant::now();
        loop {
            let (code, _, _) = call(
                "PUT",
                &target.url(&format!("/kv/w{i:04}")),
                Some(format!("v{i}").as_bytes()),
                &[],
            );
            if code == 200 {
                acked.insert(format!("w{i:04}"), format!("v{i}"));
                if i == 100 {
                    failover = Some(started.elapsed());
                }
                break;
            }
            // 503: no leader yet, or the outcome is unknown; retry.
            assert_eq!(code, 503);
            unknown += 1;
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no write for 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("failover: first write acknowledged {failover:?} after kill -9 of the leader ({unknown} answers 503 meanwhile)");
    let port = nodes[(first - 1) as usize].port;
    nodes[(first - 1) as usize] = Node::start(t.path(), first, port, &peers, &[]);
    let all: Vec<&Node> = nodes.iter().collect();
    let l = leader(&all);
    let applied = status(&nodes[(l - 1) as usize])["applied_index"]
        .as_u64()
        .unwrap();
    wait_applied(&all, applied);
    for n in &nodes {
        let got = contents(n);
        for (k, v) in &acked {
            assert_eq!(got.get(k), Some(v), "node {} lost acknowledged {k}", n.id);
        }
        assert_eq!(got, contents(&nodes[0]), "nodes {} and 1 differ", n.id);
    }
}

#[test]
fn a_node_joins_as_a_learner_is_promoted_and_removed() {
    let t = tempfile::tempdir().unwrap();
    let (nodes, _) = three(t.path());
    leader(&nodes.iter().collect::<Vec<_>>());
    for i in 0..20 {
        assert_eq!(
            call("PUT", &nodes[1].url(&format!("/kv/j{i}")), Some(b"v"), &[]).0,
            200
        );
    }
    let fourth = join_fourth(t.path(), &nodes[2], &[], |fourth| {
        // Not a cluster of its own: no leader until it is added.
        assert_eq!(status(fourth)["leader_id"], serde_json::Value::Null);
    });
    let (code, _, _) = call(
        "POST",
        &nodes[0].url("/cluster/members"),
        Some(br#"{"promote":{"id":4}}"#),
        &[],
    );
    assert_eq!(code, 200);
    let s = status(&nodes[0]);
    let voters: Vec<u64> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, [1, 2, 3, 4]);
    wait_applied(&[&fourth], s["applied_index"].as_u64().unwrap());
    assert_eq!(contents(&fourth).len(), 20);
    let (code, _, _) = call(
        "POST",
        &fourth.url("/cluster/members"),
        Some(br#"{"remove":{"id":4}}"#),
        &[],
    );
    assert_eq!(code, 200);
    let members = status(&nodes[0])["members"].as_array().unwrap().len();
    assert_eq!(members, 3);
    let (code, _, _) = call(
        "POST",
        &nodes[0].url("/cluster/members"),
        Some(br#"{"promote":{}}"#),
        &[],
    );
    assert_eq!(code, 400);
}

#[test]
fn a_single_node_serves_no_raft_and_no_cluster() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--port", &port.to_string(), "--working-dir"])
        .arg(t.path().join("data"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::raw(
        port,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert_eq!(call("POST", &url("/raft/append"), Some(b"{}"), &[]).0, 404);
    assert_eq!(call("GET", &url("/cluster"), None, &[]).0, 404);
    // A read may say how consistent it must be (a single node is both).
    assert_eq!(call("PUT", &url("/kv/a"), Some(b"1"), &[]).0, 200);
    assert_eq!(
        call("GET", &url("/kv/a?consistency=stale"), None, &[]).1,
        b"1"
    );
    assert_eq!(
        call("GET", &url("/kv/a?consistency=linearizable"), None, &[]).1,
        b"1"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_node_far_behind_is_sent_a_snapshot_over_http() {
    // Snapshots every 40 entries: the log before them is purged, so a node
    // added later can only catch up from a snapshot (streamed in chunks
    // through /raft/snapshot, installed by keel-raft's state machine).
    let t = tempfile::tempdir().unwrap();
    let (nodes, _) = three_with(t.path(), &["--snapshot-every", "40"]);
    leader(&nodes.iter().collect::<Vec<_>>());
    for i in 0..300 {
        let v = format!("value-{i}-{}", "x".repeat(i % 50));
        assert_eq!(
            call(
                "PUT",
                &nodes[i % 3].url(&format!("/kv/s{i:03}")),
                Some(v.as_bytes()),
                &[]
            )
            .0,
            200
        );
    }
    let fourth = join_fourth(t.path(), &nodes[0], &["--snapshot-every", "40"], |_| {});
    let applied = status(&nodes[0])["applied_index"].as_u64().unwrap();
    wait_applied(&[&fourth], applied);
    assert_eq!(contents(&fourth), contents(&nodes[0]));
    assert_eq!(contents(&fourth).len(), 300);
    // It caught up from a snapshot: its engine was switched by one.
    let sm = fourth.dir.join("data").join("sm");
    let current = std::fs::read_to_string(sm.join("CURRENT")).unwrap();
    assert!(current.starts_with("data-"), "{current}");
    assert!(std::fs::read_dir(sm.join("snapshots")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".snap")));
}

/// A Redis connection to `port`.
fn redis_on(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    client.get_connection().unwrap()
}

/// Runs a command; its reply, or the error's text.
fn redis_call(con: &mut redis::Connection, args: &[&str]) -> Result<redis::Value, String> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).map_err(|e| e.to_string())
}

fn bulk(s: &str) -> redis::Value {
    redis::Value::BulkString(s.as_bytes().to_vec())
}

/// Three nodes, each with a Redis port too, started with `extra`; the
/// nodes and their Redis ports.
fn three_with_resp(base: &Path, extra: &[&str]) -> (Vec<Node>, Vec<u16>) {
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let peers = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (0..3)
        .map(|i| {
            let resp = ports[3 + i].to_string();
            let args: Vec<&str> = ["--resp-port", &resp]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            Node::start(base, i as u64 + 1, ports[i], &peers, &args)
        })
        .collect();
    (nodes, ports[3..].to_vec())
}

/// A pipeline on a follower (connection `con`, whose key `a` holds
/// "19"): replies in order, each read sees the connection's own writes
/// before it (the first read's confirmation came before them); PING (run
/// on the event loop) does not overtake the writes before it.
fn pipeline_on_a_follower(con: &mut redis::Connection) {
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg("a").cmd("SET").arg("p").arg("1");
    pipe.cmd("GET").arg("p").cmd("PING");
    pipe.cmd("MSET").arg("p").arg("2").arg("q").arg("3");
    pipe.cmd("MGET").arg("p").arg("q").arg("none");
    pipe.cmd("EXISTS").arg("p").arg("none");
    let got: Vec<redis::Value> = pipe.query(con).unwrap();
    let expected = vec![
        bulk("19"),
        redis::Value::Okay,
        bulk("1"),
        redis::Value::SimpleString("PONG".into()),
        redis::Value::Okay,
        redis::Value::Array(vec![bulk("2"), bulk("3"), redis::Value::Nil]),
        redis::Value::Int(1),
    ];
    assert_eq!(got, expected);
}

/// The leader (`leader`, of three nodes) reports its two followers' lag,
/// not its own, in `/metrics` and `GET /cluster`.
fn check_followers_only(leader: &Node) {
    let (code, body, _) = call("GET", &leader.url("/metrics"), None, &[]);
    assert_eq!(code, 200);
    let m = String::from_utf8(body).unwrap();
    let own = format!(
        "keel_raft_replication_lag_entries{{follower=\"{}\"}}",
        leader.id
    );
    assert!(!m.contains(&own), "{m}");
    let replication = &status(leader)["replication"];
    assert_eq!(
        replication.as_object().map(|r| r.len()),
        Some(2),
        "{replication}"
    );
}

/// INFO on node `i` of a cluster led by node `l` with follower `f` (all
/// 0-based) reports its part in the cluster.
fn check_cluster_info(con: &mut redis::Connection, i: usize, l: usize, f: usize) {
    let Ok(redis::Value::BulkString(info)) = redis_call(con, &["INFO"]) else {
        panic!("INFO");
    };
    let info = String::from_utf8(info).unwrap();
    let role = if i == l {
        "role:Leader"
    } else {
        "role:Follower"
    };
    assert!(info.contains(role), "{info}");
    assert!(info.contains(&format!("leader_id:{}\r\n", l + 1)), "{info}");
    // Every node saw the first leader elected: at least one change.
    assert!(!info.contains("leader_changes:0\r\n"), "{info}");
    // Every node appended and applied entries.
    for line in ["raft_append_p99_ms:", "raft_apply_p50_ms:"] {
        assert!(info.contains(line), "{info}");
    }
    let lag = format!("follower_{}_lag_entries:", f + 1);
    assert_eq!(info.contains(&lag), i == l, "{info}");
    let own = format!("follower_{}_lag_entries:", i + 1);
    assert!(
        !info.contains(&own),
        "a node is not its own follower: {info}"
    );
}

#[test]
fn every_node_speaks_the_redis_protocol_through_raft() {
    let t = tempfile::tempdir().unwrap();
    let (nodes, resp) = three_with_resp(t.path(), &[]);
    let l = leader(&nodes.iter().collect::<Vec<_>>()) as usize - 1;
    let (f, g) = ((l + 1) % 3, (l + 2) % 3);
    let mut cons: Vec<redis::Connection> = resp.iter().map(|p| redis_on(*p)).collect();
    let ok = Ok(redis::Value::Okay);
    // Written through one follower, read at once through the other: its
    // read waits for the leader's read index, never answers stale.
    for i in 0..20 {
        let v = i.to_string();
        assert_eq!(redis_call(&mut cons[f], &["SET", "a", &v]), ok);
        let got = redis_call(&mut cons[g], &["GET", "a"]);
        assert_eq!(got, Ok(bulk(&v)), "stale read at {i}");
    }
    pipeline_on_a_follower(&mut cons[f]);
    // DEL counts what it deletes; a transaction's writes are one entry.
    let deleted = redis_call(&mut cons[g], &["DEL", "q", "none"]);
    assert_eq!(deleted, Ok(redis::Value::Int(1)));
    let mut tx = redis::pipe();
    tx.atomic().cmd("SET").arg("t").arg("x");
    tx.cmd("DEL").arg("p").cmd("GET").arg("t");
    let got: Vec<redis::Value> = tx.query(&mut cons[l]).unwrap();
    let want = vec![redis::Value::Okay, redis::Value::Int(1), bulk("x")];
    assert_eq!(got, want);
    assert_eq!(
        redis_call(&mut cons[f], &["GET", "p"]),
        Ok(redis::Value::Nil)
    );
    let size = redis_call(&mut cons[f], &["DBSIZE"]);
    assert_eq!(size, Ok(redis::Value::Int(2)));
    // Bad input is refused on every node and changes nothing.
    for c in cons.iter_mut() {
        let e = redis_call(c, &["SET", "k", ""]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = redis_call(c, &["SET", "k", "v", "NX"]).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
    }
    for (i, c) in cons.iter_mut().enumerate() {
        check_cluster_info(c, i, l, f);
    }
    check_followers_only(&nodes[l]);
    let applied = status(&nodes[l])["applied_index"].as_u64().unwrap();
    wait_applied(&nodes.iter().collect::<Vec<_>>(), applied);
    let want: BTreeMap<String, String> = [("a", "19"), ("t", "x")]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
    for n in &nodes {
        assert_eq!(contents(n), want, "node {}", n.id);
    }
}

#[test]
fn without_a_quorum_resp_clients_get_errors_that_say_what_happened() {
    let t = tempfile::tempdir().unwrap();
    let (mut nodes, resp) = three_with_resp(t.path(), &["--cluster-timeout", "1s"]);
    let l = leader(&nodes.iter().collect::<Vec<_>>()) as usize - 1;
    let mut con = redis_on(resp[l]);
    assert_eq!(
        redis_call(&mut con, &["SET", "a", "1"]),
        Ok(redis::Value::Okay)
    );
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != l {
            n.kill9();
        }
    }
    // The leader appends the first SET but cannot commit it: its outcome
    // is unknown. The pipeline's later writes are not tried (one timeout
    // for the pipeline, not one per write); the read cannot be confirmed.
    // (Raw: the redis crate turns a pipeline with errors into one error.)
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", resp[l])).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sent = Vec::new();
    for v in ["2", "3", "4"] {
        sent.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n{v}\r\n").as_bytes());
    }
    sent.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n");
    std::io::Write::write_all(&mut sock, &sent).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|b| **b == b'\n').count() < 5 {
        let n = std::io::Read::read(&mut sock, &mut buf).unwrap();
        assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    let codes: Vec<&str> = got.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        codes,
        ["-UNKNOWN", "-TRYAGAIN", "-TRYAGAIN", "-TRYAGAIN", "+PONG"],
        "{got}"
    );
    assert!(got.contains("not tried"), "{got}");
}

#[test]
fn a_node_whose_write_limits_differ_is_refused_rather_than_diverging() {
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small.toml");
    std::fs::write(&small, "max_value_len = 4096\n").unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let n1 = Node::start(t.path(), 1, ports[0], &peers, &[]);
    let n2 = Node::start(t.path(), 2, ports[1], &peers, &[]);
    let n3 = Node::start(
        t.path(),
        3,
        ports[2],
        &peers,
        &["--config", small.to_str().unwrap()],
    );
    // Nodes 1 and 2 agree and lead; node 3 would refuse at apply the value
    // they accept (over its 4096 bytes), so it must not take their log.
    let l = leader(&[&n1, &n2]);
    let leader = if l == 1 { &n1 } else { &n2 };
    let big = vec![b'v'; 5000];
    let (code, body, _) = call("PUT", &leader.url("/kv/big"), Some(&big), &[]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let applied = status(leader)["applied_index"].as_u64().unwrap();
    wait_applied(&[&n1, &n2], applied);
    std::thread::sleep(Duration::from_millis(500));
    let third = status(&n3)["applied_index"].as_u64().unwrap_or(0);
    assert!(third < applied, "node 3 applied {third} of {applied}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n3.log().contains("runs with the write limits") {
        assert!(
            Instant::now() < deadline,
            "node 3 said nothing: {}",
            n3.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Any node-to-node request with other limits: 409, before its body.
    let headers = [
        ("x-keel-cluster-secret", SECRET),
        ("x-keel-from", "9"),
        ("x-keel-limits", "max_key_len=1"),
    ];
    let (code, body, _) = call("POST", &n1.url("/raft/append"), Some(b"{}"), &headers);
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("same config"));
}
