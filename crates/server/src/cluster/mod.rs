//! A keel cluster node (issue 14): the HTTP API served on openraft, with
//! keel-raft's log store and state machine.
//!
//! - Writes (`PUT`/`DELETE /kv/{key}`, `DELETE /clear`, `POST /batch`) are
//!   proposed to the Raft log by the leader, concurrent ones together in
//!   one entry ([`keel_raft::Proposer`]), and answered once applied; a
//!   follower checks them and forwards them to the leader in batches
//!   ([`forwarder`]), answering each as the leader would. A write
//!   whose outcome is unknown (leadership lost mid-request, no quorum in
//!   time) is answered 503 saying so, never 200.
//! - Reads are linearizable and served from this node's own engine once
//!   confirmed ([`reads`], ReadIndex: the leader confirms it still leads; a
//!   follower asks the leader for its read index and waits until it has
//!   applied it). `?consistency=stale` reads the local copy at once.
//! - The Redis protocol ([`resp`]) goes through the same paths.
//! - Every answer names the leader in `X-Keel-Leader` when one is known.
//! - `/raft/*` carries openraft's RPCs between nodes, each with the
//!   cluster secret ([`network::SECRET_HEADER`]); without it: 401 whatever
//!   the path, before anything else is read.
//! - `GET /cluster`: node, leader, term, members, commit and applied index;
//!   `POST /cluster/members`: add a learner, promote it, remove a node.
//!
//! The cluster forms by itself: a node whose Raft state is empty
//! initializes it with the membership `--peers` gives (every node the same,
//! so their first entries are identical), and the first election makes a
//! leader once a majority is up.

pub mod forwarder;
pub mod network;
pub mod reads;
pub mod resp;

use crate::auth::AuthToken;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keel::op::Op;
use keel_raft::{
    Batcher, CommitIndex, EngineHandle, KeelLogStore, KeelStateMachine, ProposeError, Proposer,
    SnapshotReceiver, TypeConfig,
};
use keel_storage::Storage;
use network::{HttpNetwork, PeerClient, FORWARDED_HEADER, LIMITS_HEADER, SECRET_HEADER};
use openraft::error::RaftError;
use openraft::{BasicNode, ChangeMembers, Raft};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The header naming the leader on every answer of a cluster node.
pub const LEADER_HEADER: &str = "x-keel-leader";
/// On a 503 that is certain nothing was written (no leader, leadership
/// moved before the append, the leader could not be reached at all), this
/// header says so (`x-keel-outcome: not-written`): a client may retry at
/// once. A 503 without it is an unknown outcome.
pub const OUTCOME_HEADER: &str = "x-keel-outcome";

/// A 503 certain that nothing was written (see [`OUTCOME_HEADER`]).
pub fn not_written(why: &str) -> Response {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut()
        .insert(OUTCOME_HEADER, HeaderValue::from_static("not-written"));
    r
}
/// The largest body a node takes on `/raft/*` (from peers that gave the
/// secret: a batch of entries, a snapshot chunk).
const MAX_RAFT_BODY: usize = 256 << 20;

/// How a node is started.
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: u64,
    /// Every voter of a new cluster: id -> `host:port` of its HTTP API.
    pub peers: BTreeMap<u64, String>,
    /// The secret every node-to-node request carries.
    pub secret: String,
    /// The node's directory: `raft/` (the Raft log) and `sm/` (the engine).
    pub dir: PathBuf,
    /// The engine's options.
    pub options: keel::Options,
    /// How long a client request may wait for its write or read.
    pub request_timeout: Duration,
    /// Join an existing cluster (added with `POST /cluster/members`)
    /// instead of forming one from `peers`.
    pub join: bool,
    /// A snapshot is taken after this many entries; the log keeps a tenth
    /// of that (at most 10,000) before it, for followers a little behind.
    pub snapshot_every: u64,
}

/// Parses `--peers 1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} in {part:?} is not a node id (a number)"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("{addr:?} in {part:?} is not HOST:PORT"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is named twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

/// A running cluster node.
pub struct ClusterNode {
    /// This node's id.
    pub id: u64,
    /// openraft's handle.
    pub raft: Raft<TypeConfig>,
    /// The engine reads are served from.
    pub engine: EngineHandle,
    /// Where `/raft/snapshot` chunks go (elections held off meanwhile).
    snapshots: SnapshotReceiver,
    /// The commit index openraft reports to the log store.
    committed: CommitIndex,
    /// Gathers concurrent writes into entries.
    proposer: Arc<Proposer>,
    /// Gathers the writes a follower forwards into requests to the leader.
    forwarder: Arc<Batcher<forwarder::Outcome>>,
    /// Gathers concurrent linearizable reads into one confirmation.
    reads: Arc<Batcher<reads::Confirmed>>,
    /// Leader changes seen since the node started (`INFO`).
    leader_changes: Arc<AtomicU64>,
    secret: AuthToken,
    /// This node's write limits, as [`write_limits`] spells them.
    limits: String,
    /// Nodes already reported for limits that differ (warned once each).
    warned_limits: std::sync::Mutex<BTreeSet<u64>>,
    client: PeerClient,
    peers: BTreeMap<u64, String>,
    timeout: Duration,
}

/// Why a write was not acknowledged.
#[derive(Debug)]
pub enum WriteFailure {
    /// The engine refuses it (bad input); nothing changed.
    Refused(keel::Error),
    /// The engine refused it when applying (same limits on every node).
    RefusedAtApply(String),
    /// Certainly not written (why: no leader, or the node proposing it
    /// did not lead).
    NotWritten(String),
    /// It may or may not be applied.
    Unknown(String),
}

impl ClusterNode {
    /// Opens the node's log and engine under `config.dir` and starts Raft;
    /// a node with an empty Raft state initializes the cluster from
    /// `config.peers`. About 90 lines, most of them configuration (the
    /// log's, the engine's, openraft's), in the order a node starts.
    pub async fn start(
        config: ClusterConfig,
        storage: Arc<dyn Storage>,
    ) -> anyhow::Result<Arc<ClusterNode>> {
        use anyhow::Context;
        if !config.peers.contains_key(&config.node_id) {
            anyhow::bail!(
                "--peers does not name this node ({}): list every voter, this one included",
                config.node_id
            );
        }
        let secret = AuthToken::new(&config.secret).context("the cluster secret")?;
        let limits = write_limits(&config.options);
        let wal = keel_wal::WalOptions {
            sync: keel_wal::SyncPolicy::Always,
            ..keel_wal::WalOptions::default()
        };
        let log = KeelLogStore::open(Arc::clone(&storage), config.dir.join("raft"), wal)
            .context("opening the Raft log")?;
        let committed = log.commit_index();
        // The Raft log's fdatasync acknowledges every write; the engine
        // re-applies from its recovered log id what a crash took from it
        // (keel_raft::state_machine), so it needs no fdatasync of its own.
        let (sm, engine) = KeelStateMachine::open(
            storage,
            config.dir.join("sm"),
            config.options,
            keel::SyncPolicy::Never,
        )
        .context("opening the engine")?;
        let raft_config = openraft::Config {
            cluster_name: "keel".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: (config.snapshot_every / 10).min(10_000),
            ..openraft::Config::default()
        }
        .validate()
        .context("the Raft configuration")?;
        let client = PeerClient::new(&config.secret, config.node_id, &limits);
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            HttpNetwork::new(client.clone()),
            log,
            sm,
        )
        .await
        .context("starting Raft")?;
        let members: BTreeMap<u64, BasicNode> = config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        if raft
            .is_initialized()
            .await
            .context("reading the Raft state")?
        {
            tracing::info!("rejoining the cluster (its Raft state is on disk)");
        } else if config.join {
            tracing::info!(
                "waiting to be added to a cluster: POST /cluster/members {{\"add_learner\": {{\"id\": {}, ...}}}} on any member",
                config.node_id
            );
        } else {
            raft.initialize(members)
                .await
                .context("initializing the cluster")?;
            tracing::info!(
                "initialized a new cluster of {} voters; it elects a leader once a majority is up",
                config.peers.len()
            );
        }
        let node = Arc::new_cyclic(|me| ClusterNode {
            forwarder: forwarder::forwarder(me.clone()),
            reads: reads::confirmations(me.clone()),
            leader_changes: Arc::new(AtomicU64::new(0)),
            id: config.node_id,
            snapshots: SnapshotReceiver::new(raft.clone()),
            committed,
            proposer: Proposer::new(raft.clone(), config.request_timeout),
            raft,
            engine,
            secret,
            limits,
            warned_limits: std::sync::Mutex::new(BTreeSet::new()),
            client,
            peers: config.peers,
            timeout: config.request_timeout,
        });
        node.watch_leader();
        Ok(node)
    }

    /// Leader changes this node has seen since it started.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The HTTP address of node `id`: from the membership, else `--peers`.
    fn addr_of(&self, id: u64) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let found = m
            .nodes()
            .find(|(n, _)| **n == id)
            .map(|(_, node)| node.addr.clone());
        found.or_else(|| self.peers.get(&id).cloned())
    }

    /// Proposes `op` (through the leader, on a follower) and waits until
    /// it is applied.
    pub async fn write(&self, op: Op) -> Result<u64, WriteFailure> {
        self.engine
            .current()
            .check_write(&op)
            .map_err(WriteFailure::Refused)?;
        let started = std::time::Instant::now();
        let outcome = if self.leader() == Some(self.id) {
            match self.proposer.write(op.encode()).await {
                Ok(r) => match r.refused {
                    None => Ok(r.index),
                    Some(why) => Err(WriteFailure::RefusedAtApply(why)),
                },
                // Refused before proposing: not in any log (keel_raft::client
                // says why a refusal after proposing is not certain).
                Err(ProposeError::NotLeader { .. }) => Err(WriteFailure::NotWritten(
                    "this node was not the leader when the write came: nothing was written; retry"
                        .into(),
                )),
                Err(ProposeError::Unknown(why)) => Err(WriteFailure::Unknown(why)),
            }
        } else {
            match self.forwarder.submit(op.encode()).await {
                Some(forwarder::Outcome::Applied(index)) => Ok(index),
                Some(forwarder::Outcome::Refused(why)) => Err(WriteFailure::RefusedAtApply(why)),
                Some(forwarder::Outcome::NotWritten(why)) => Err(WriteFailure::NotWritten(why)),
                Some(forwarder::Outcome::Unknown(why)) => Err(WriteFailure::Unknown(why)),
                None => Err(WriteFailure::Unknown(
                    "the node stopped while forwarding the write".into(),
                )),
            }
        };
        metrics::histogram!("keel_raft_write_seconds").record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Refreshes the cluster's gauges for a scrape of `/metrics`: role,
    /// term, leader, log and applied index, and on the leader each
    /// follower's lag in entries.
    pub fn update_metrics(&self) {
        let m = self.raft.metrics().borrow().clone();
        for role in ["Leader", "Follower", "Candidate", "Learner", "Shutdown"] {
            let is = format!("{:?}", m.state) == role;
            metrics::gauge!("keel_raft_role", "role" => role).set(f64::from(u8::from(is)));
        }
        metrics::gauge!("keel_raft_term").set(m.current_term as f64);
        metrics::gauge!("keel_raft_leader_id").set(m.current_leader.map_or(-1.0, |l| l as f64));
        metrics::gauge!("keel_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("keel_raft_applied_index")
            .set(m.last_applied.map_or(0.0, |l| l.index as f64));
        for (id, _, lag) in follower_lags(&m) {
            metrics::gauge!("keel_raft_replication_lag_entries", "follower" => id.to_string())
                .set(lag as f64);
        }
    }

    /// Counts leader changes (`keel_raft_leader_changes_total`) as
    /// openraft reports them, until the node stops.
    fn watch_leader(self: &Arc<Self>) {
        let mut rx = self.raft.metrics();
        let changes = Arc::clone(&self.leader_changes);
        tokio::spawn(async move {
            let mut leader = rx.borrow().current_leader;
            while rx.changed().await.is_ok() {
                let now = rx.borrow().current_leader;
                if now != leader {
                    metrics::counter!("keel_raft_leader_changes_total").increment(1);
                    changes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(from = ?leader, to = ?now, "leader changed");
                    leader = now;
                }
            }
        });
    }

    /// 409 for a node-to-node request from a node whose write limits
    /// differ from this one's: the limits decide which writes the engine
    /// refuses when it applies an entry, so two such nodes would apply the
    /// same log to different states.
    fn refuse_other_limits(&self, req: &Request) -> Option<Response> {
        let theirs = req.headers().get(LIMITS_HEADER)?.to_str().unwrap_or("?");
        if theirs == self.limits {
            return None;
        }
        let from = req
            .headers()
            .get(network::FROM_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let why = format!(
            "node {} runs with the write limits {theirs}, this node ({}) with {}: every node of a cluster must have the same max_key_len, max_value_len, max_batch_bytes and allow_empty_values, or a write one applies another refuses and their copies diverge; give them the same config and restart the odd one",
            from.map_or_else(|| "?".into(), |f| f.to_string()),
            self.id,
            self.limits
        );
        let first = self
            .warned_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from.unwrap_or(0));
        if first {
            tracing::error!("refusing Raft requests: {why}");
        }
        Some(text(StatusCode::CONFLICT, why))
    }

    /// Whether the request's cluster secret is right.
    fn secret_ok(&self, req: &Request) -> bool {
        req.headers()
            .get(SECRET_HEADER)
            .is_some_and(|v| self.secret.matches(v.as_bytes()))
    }

    /// `GET /cluster`.
    fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let members: Vec<serde_json::Value> = m
            .membership_config
            .nodes()
            .map(|(id, node)| {
                let voter = m.membership_config.voter_ids().any(|v| v == *id);
                serde_json::json!({"id": id, "addr": node.addr, "voter": voter})
            })
            .collect();
        let replication = m.replication.is_some().then(|| {
            follower_lags(&m)
                .into_iter()
                .map(|(id, matched, lag)| {
                    let v = serde_json::json!({"matched": matched, "lag": lag});
                    (id.to_string(), v)
                })
                .collect::<serde_json::Map<_, _>>()
        });
        serde_json::json!({
            "node_id": self.id,
            "leader_id": m.current_leader,
            "role": format!("{:?}", m.state),
            "term": m.current_term,
            "members": members,
            // What was applied was committed; a node restarted learns the
            // commit index again from the leader.
            "commit_index": self.committed.get().max(m.last_applied.map(|l| l.index)),
            "applied_index": m.last_applied.map(|l| l.index),
            "last_log_index": m.last_log_index,
            "replication": replication,
        })
    }
}

/// The options that decide which writes an engine refuses, spelled the
/// same on every node that has them (compared on node-to-node requests).
pub fn write_limits(o: &keel::Options) -> String {
    format!(
        "max_key_len={},max_value_len={},max_batch_bytes={},allow_empty_values={}",
        o.max_key_len, o.max_value_len, o.max_batch_bytes, o.allow_empty_values
    )
}

/// On the leader, each follower's id, the last index known to match the
/// leader's log, and how many entries it is behind; elsewhere none.
/// (openraft's replication map holds the leader itself too: left out.)
pub fn follower_lags(m: &openraft::RaftMetrics<u64, BasicNode>) -> Vec<(u64, Option<u64>, u64)> {
    let Some(r) = &m.replication else {
        return Vec::new();
    };
    r.iter()
        .filter(|(id, _)| **id != m.id)
        .map(|(id, matched)| {
            let matched = matched.map(|l| l.index);
            let lag = m
                .last_log_index
                .unwrap_or(0)
                .saturating_sub(matched.unwrap_or(0));
            (*id, matched, lag)
        })
        .collect()
}

use crate::http::text;

/// The whole body of a request with `headers`, at most `limit` bytes.
///
/// A declared length over the limit is refused before a byte of the body is
/// read: a client that sent `Expect: 100-continue` is told at once (hyper
/// answers 100 only when the body is first read), and one that sends the
/// body anyway is not kept writing bytes that will be thrown away.
async fn read_all(
    headers: &header::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes (the largest value or batch the store takes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("reading the request: {e}"),
        )),
    }
}

/// What the node does with a request.
pub enum Routed {
    /// Answered here (forwarded, a Raft RPC, a cluster endpoint, a refusal).
    Done(Response),
    /// Served by the ordinary API here (its writes go through Raft).
    Local(Request),
}

fn is_read(method: &Method, path: &str) -> bool {
    (path == "/kv" || path.starts_with("/kv/")) && matches!(*method, Method::GET | Method::HEAD)
}

/// Whether the query asks for a stale read.
pub fn stale(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == "consistency=stale"))
}

/// Routes a request of a cluster node (module doc). `/raft/*` requests are
/// checked for the secret before anything else.
pub async fn route(node: &Arc<ClusterNode>, req: Request) -> Routed {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path.starts_with("/raft/") {
        if !node.secret_ok(&req) {
            return Routed::Done(text(
                StatusCode::UNAUTHORIZED,
                "a /raft/ request needs the cluster secret (x-keel-cluster-secret)",
            ));
        }
        if let Some(refused) = node.refuse_other_limits(&req) {
            return Routed::Done(refused);
        }
        return Routed::Done(rpc(node, &path, req).await);
    }
    if path == "/cluster" {
        return Routed::Done(match method {
            Method::GET => axum::Json(node.status()).into_response(),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        });
    }
    let members = path == "/cluster/members";
    let leader = node.leader();
    let here = leader == Some(node.id);
    if members && method != Method::POST {
        return Routed::Done(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    if members && here {
        return Routed::Done(change_members(node, req).await);
    }
    if is_read(&method, &path) {
        if stale(req.uri().query()) {
            return Routed::Local(req);
        }
        // Linearizable, from this node's copy once confirmed (reads.rs).
        return match node.read_barrier().await {
            Ok(()) => Routed::Local(req),
            Err(why) => Routed::Done(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}: nothing was read; retry, or read with ?consistency=stale"),
            )),
        };
    }
    // Writes too: a node's write path proposes them, or forwards them in
    // batches (forwarder), once the API here has checked them.
    if !members || here {
        return Routed::Local(req);
    }
    Routed::Done(forward(node, leader, req).await)
}

/// Sends `req` (a membership change, asked of a follower) to the leader and
/// returns its answer.
async fn forward(node: &ClusterNode, leader: Option<u64>, req: Request) -> Response {
    if req.headers().contains_key(FORWARDED_HEADER) {
        return not_written(
            "forwarded here, but this node is not the leader (leadership moved): nothing was done; retry",
        );
    }
    let Some(addr) = leader.and_then(|l| node.addr_of(l)) else {
        return not_written(
            "no leader is elected yet (or a majority is down): nothing was done; retry shortly",
        );
    };
    let (parts, body) = req.into_parts();
    // No larger than the leader takes (`change_members`): a client's
    // memory bound holds on the follower too.
    let body = match read_all(&parts.headers, body, MAX_MEMBERS_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut headers = vec![(
        header::HeaderName::from_static(FORWARDED_HEADER),
        HeaderValue::from_static("1"),
    )];
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(v) = parts.headers.get(&name) {
            headers.push((name, v.clone()));
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    match node
        .client
        .send(&addr, parts.method, &target, &headers, body, node.timeout)
        .await
    {
        Ok(answer) => {
            let mut resp = Response::new(Body::from(answer.body));
            *resp.status_mut() = answer.status;
            let names = [
                header::CONTENT_TYPE,
                header::WWW_AUTHENTICATE,
                header::HeaderName::from_static(OUTCOME_HEADER),
            ];
            for name in names {
                if let Some(v) = answer.headers.get(&name) {
                    resp.headers_mut().insert(name, v.clone());
                }
            }
            resp
        }
        Err(e @ network::PeerError::NotConnected { .. }) => not_written(&format!(
            "the leader could not be reached ({e}): nothing was sent to it; retry"
        )),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the leader did not answer ({e}): the write's outcome is unknown; read the key back before retrying"),
        ),
    }
}

/// `/raft/append`, `/raft/vote`, `/raft/snapshot`: openraft's RPCs;
/// `/raft/propose`: a follower's forwarded writes; `/raft/read-index`: a
/// follower's linearizable read.
async fn rpc(node: &ClusterNode, path: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_all(&parts.headers, body, MAX_RAFT_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    fn answer<T: serde::Serialize>(v: &T) -> Response {
        axum::Json(v).into_response()
    }
    let malformed = |e: serde_json::Error| {
        text(
            StatusCode::BAD_REQUEST,
            format!("malformed Raft request: {e}"),
        )
    };
    match path {
        "/raft/append" => match serde_json::from_slice(&body) {
            Ok(r) => answer(&node.raft.append_entries(r).await),
            Err(e) => malformed(e),
        },
        "/raft/vote" => match serde_json::from_slice(&body) {
            Ok(r) => answer(&node.raft.vote(r).await),
            Err(e) => malformed(e),
        },
        "/raft/snapshot" => match serde_json::from_slice(&body) {
            Ok(r) => answer(&node.snapshots.install_snapshot(r).await),
            Err(e) => malformed(e),
        },
        forwarder::PROPOSE_PATH => forwarder::handle_propose(node, &body).await,
        reads::READ_INDEX_PATH => reads::handle_read_index(node).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not a Raft RPC: /raft/append, /raft/vote, /raft/snapshot, /raft/propose, /raft/read-index",
        ),
    }
}

/// The largest body of `POST /cluster/members` (one change: an id and an
/// address).
const MAX_MEMBERS_BODY: usize = 64 << 10;

/// The body of `POST /cluster/members`: one change.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum MemberChange {
    /// Add a node that replicates but does not vote.
    AddLearner {
        /// Its id.
        id: u64,
        /// Its HTTP address (`host:port`).
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a node.
    Remove {
        /// Its id.
        id: u64,
    },
}

/// `POST /cluster/members` on the leader.
async fn change_members(node: &ClusterNode, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_all(&parts.headers, body, MAX_MEMBERS_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let change: MemberChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("malformed membership change ({e}); expected {{\"add_learner\":{{\"id\":4,\"addr\":\"127.0.0.1:7004\"}}}}, {{\"promote\":{{\"id\":4}}}} or {{\"remove\":{{\"id\":4}}}}"),
            )
        }
    };
    let result = match change {
        MemberChange::AddLearner { id, addr } => node
            .raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map(|r| r.log_id.index),
        MemberChange::Promote { id } => node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|r| r.log_id.index),
        MemberChange::Remove { id } => node
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map(|r| r.log_id.index),
    };
    match result {
        Ok(index) => axum::Json(serde_json::json!({"index": index, "cluster": node.status()}))
            .into_response(),
        Err(RaftError::APIError(e)) => text(
            StatusCode::BAD_REQUEST,
            format!("membership change refused: {e}"),
        ),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("membership change failed ({e}): its outcome is unknown; check GET /cluster"),
        ),
    }
}

/// Adds `X-Keel-Leader` to an answer when a leader is known.
pub fn name_leader(node: &ClusterNode, resp: &mut Response) {
    if let Some(l) = node.leader() {
        if let Ok(v) = HeaderValue::from_str(&l.to_string()) {
            resp.headers_mut().insert(LEADER_HEADER, v);
        }
    }
}
