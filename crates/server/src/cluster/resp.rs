//! The Redis protocol on a cluster node: the commands the RESP event loop
//! hands off ([`crate::resp::remote`]), run through Raft.
//!
//! - Writes (`SET`, `MSET`, `DEL`, `FLUSHALL`/`FLUSHDB`, a transaction's
//!   `EXEC`) go to [`ClusterNode::write`]: proposed on the leader,
//!   forwarded by a follower; answered `+OK` once applied.
//! - Reads (`GET`, `MGET`, `EXISTS`, `DBSIZE`) are linearizable, served
//!   from this node's engine after a confirmation ([`super::reads`]); the
//!   commands of one hand-off (sent before it started) share one.
//! - A connection's commands run one after another: a read after the
//!   connection's own write waits until this node has applied it.
//! - Time per hand-off is bounded by about one timeout, not one per
//!   command: after a write with an unknown outcome the hand-off's later
//!   writes are not tried (`-TRYAGAIN`), and a failed read confirmation
//!   fails its later reads at once.
//!
//! Errors, one word first as Redis's are: `-ERR` a refused command
//! (nothing written); `-TRYAGAIN` nothing was written or read (no leader,
//! leadership moved, no quorum to confirm a read): retry; `-UNKNOWN` the
//! write's outcome is unknown (leader lost mid-request): it may or may not
//! be applied, read it back before retrying.
//!
//! Not atomic in a cluster, unlike on a single node: `DEL`'s count (read
//! before the delete is proposed) and a transaction's reads (read before
//! its batch is proposed) may miss a write another client makes in
//! between. What is stored is always right; `EXEC`'s writes apply as one
//! entry, all or none.

use super::reads::Confirmed;
use super::{ClusterNode, WriteFailure};
use crate::resp::command::{
    config_get, db_error, flush_mode_ok, info_text, upper_name, wrong_arity, SET_OPTIONS,
};
use crate::resp::event_loop::OUTPUT_HIGH_WATER;
use crate::resp::frame::{array_len, bulk, error, integer, simple};
use crate::resp::remote::{Handoff, Remote, Reply};
use crate::resp::transaction;
use keel::op::{BatchOp, Op};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// The commands a cluster node runs through Raft (everything that reads or
/// writes the store, and what reports on it).
const TAKEN: [&[u8]; 11] = [
    b"SET",
    b"MSET",
    b"DEL",
    b"FLUSHDB",
    b"FLUSHALL",
    b"GET",
    b"MGET",
    b"EXISTS",
    b"DBSIZE",
    b"INFO",
    b"CONFIG",
];

/// Runs handed-off commands on a cluster node, on its async runtime.
pub struct ClusterCommands {
    node: Arc<ClusterNode>,
    runtime: tokio::runtime::Handle,
    /// For `INFO`'s append and apply latencies.
    metrics: Option<PrometheusHandle>,
}

impl ClusterCommands {
    /// Commands for `node`, run on `runtime`; `INFO` reads latencies from
    /// `metrics`, if given.
    pub fn new(
        node: Arc<ClusterNode>,
        runtime: tokio::runtime::Handle,
        metrics: Option<PrometheusHandle>,
    ) -> Arc<ClusterCommands> {
        Arc::new(ClusterCommands {
            node,
            runtime,
            metrics,
        })
    }
}

impl Remote for ClusterCommands {
    fn takes(&self, name: &[u8]) -> bool {
        TAKEN.iter().any(|c| name.eq_ignore_ascii_case(c))
    }

    fn run(&self, commands: Vec<Handoff>, done: Reply) {
        let node = Arc::clone(&self.node);
        let metrics = self.metrics.clone();
        self.runtime.spawn(async move {
            let mut session = Session {
                node: &node,
                metrics: metrics.as_ref(),
                confirmed: None,
                applied_write: None,
                unknown_write: false,
            };
            let mut out = Vec::new();
            let mut commands = commands.into_iter();
            // Replies past the high water wait for the client to read
            // them: the commands left go back to the loop (remote.rs).
            while out.len() <= OUTPUT_HIGH_WATER {
                match commands.next() {
                    Some(Handoff::Command(args)) => session.command(args, &mut out).await,
                    Some(Handoff::Exec(queued)) => session.exec(&queued, &mut out).await,
                    Some(Handoff::Reply(reply)) => out.extend_from_slice(&reply),
                    None => break,
                }
            }
            done.send_part(out, commands.collect());
        });
    }
}

/// One hand-off's commands, run in order.
struct Session<'a> {
    node: &'a ClusterNode,
    metrics: Option<&'a PrometheusHandle>,
    /// The read confirmation made during this hand-off, if one was (after
    /// every one of its commands came in, so it serves them all; one that
    /// failed fails the hand-off's later reads at once, rather than each
    /// waiting out the timeout again).
    confirmed: Option<Confirmed>,
    /// The last write of this hand-off acknowledged, by log index: later
    /// reads wait until this node has applied it.
    applied_write: Option<u64>,
    /// A write of this hand-off has an unknown outcome (it waited out the
    /// timeout, or the leader was lost): the later ones are not tried, so a
    /// pipeline costs one timeout, not one per write.
    unknown_write: bool,
}

impl Session<'_> {
    /// Runs one command (module doc). One arm per command, as
    /// [`crate::resp::command::execute`] has.
    async fn command(&mut self, args: Vec<Vec<u8>>, out: &mut Vec<u8>) {
        let mut buf = [0u8; 16];
        let cmd = upper_name(&args[0], &mut buf).to_vec();
        let argc = args.len();
        match cmd.as_slice() {
            b"SET" if argc == 3 => {
                let mut it = args.into_iter().skip(1);
                let (k, v) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                self.write(Op::Put(k, v), out, |o| simple(o, "OK")).await;
            }
            b"SET" if argc > 3 => error(out, SET_OPTIONS),
            b"MSET" if argc >= 3 && argc % 2 == 1 => {
                let mut ops = Vec::with_capacity(argc / 2);
                let mut it = args.into_iter().skip(1);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    ops.push(BatchOp::Put(k, v));
                }
                self.write(Op::Batch(ops), out, |o| simple(o, "OK")).await;
            }
            b"DEL" if argc >= 2 => self.delete(&args[1..], out).await,
            b"FLUSHDB" | b"FLUSHALL" if argc <= 2 && flush_mode_ok(&args) => {
                self.write(Op::Clear, out, |o| simple(o, "OK")).await;
            }
            b"FLUSHDB" | b"FLUSHALL" if argc <= 2 => error(out, "ERR syntax error"),
            b"GET" if argc == 2 => {
                if let Some(db) = self.readable(out).await {
                    match db.get(&args[1]) {
                        Ok(v) => bulk(out, v.as_deref()),
                        Err(e) => db_error(out, &e),
                    }
                }
            }
            b"MGET" if argc >= 2 => {
                if let Some(db) = self.readable(out).await {
                    array_len(out, argc - 1);
                    for k in &args[1..] {
                        bulk(out, db.get(k).ok().flatten().as_deref());
                    }
                }
            }
            b"EXISTS" if argc >= 2 => {
                if let Some(db) = self.readable(out).await {
                    let n = args[1..]
                        .iter()
                        .filter(|k| matches!(db.get(k), Ok(Some(_))));
                    integer(out, n.count() as i64);
                }
            }
            b"DBSIZE" if argc == 1 => {
                if let Some(db) = self.readable(out).await {
                    integer(out, db.len() as i64);
                }
            }
            b"INFO" => bulk(out, Some(self.info().as_bytes())),
            b"CONFIG" if argc == 3 && args[1].eq_ignore_ascii_case(b"GET") => {
                // Every write is acknowledged after the Raft log's fdatasync.
                config_get(keel::SyncPolicy::Always, &args[2], out);
            }
            _ => wrong_arity(out, &cmd),
        }
        if matches!(
            cmd.as_slice(),
            b"SET" | b"MSET" | b"DEL" | b"FLUSHDB" | b"FLUSHALL"
        ) {
            metrics::counter!("keel_writes_total").increment(1);
        } else if matches!(cmd.as_slice(), b"GET" | b"MGET" | b"EXISTS" | b"DBSIZE") {
            metrics::counter!("keel_reads_total").increment(1);
        }
    }

    /// `DEL`: counts the keys present (a linearizable read), then deletes
    /// them all in one entry.
    async fn delete(&mut self, keys: &[Vec<u8>], out: &mut Vec<u8>) {
        let mut reply = Vec::new();
        let Some(db) = self.readable(&mut reply).await else {
            out.extend_from_slice(&reply);
            return;
        };
        let present = keys
            .iter()
            .filter(|k| matches!(db.get(k), Ok(Some(_))))
            .count();
        let ops = keys.iter().map(|k| BatchOp::Delete(k.clone())).collect();
        self.write(Op::Batch(ops), out, |o| integer(o, present as i64))
            .await;
    }

    /// `EXEC`: the transaction's replies over this node's engine (after a
    /// confirmation, if it reads), then its writes as one entry.
    async fn exec(&mut self, queued: &[Vec<Vec<u8>>], out: &mut Vec<u8>) {
        let blind = queued.iter().all(|args| {
            [&b"SET"[..], b"MSET", b"PING", b"ECHO"]
                .iter()
                .any(|c| args[0].eq_ignore_ascii_case(c))
        });
        let db = if blind {
            self.node.engine.current() // nothing is read
        } else {
            let mut reply = Vec::new();
            let Some(db) = self.readable(&mut reply).await else {
                out.extend_from_slice(&reply);
                return;
            };
            db
        };
        let (replies, batch) = transaction::plan(&db, queued);
        if batch.is_empty() {
            out.extend_from_slice(&replies);
            return;
        }
        let op = Op::Batch(batch.into_ops());
        match self.propose(op).await {
            Ok(index) => {
                self.applied_write = Some(index);
                out.extend_from_slice(&replies);
            }
            Err(WriteFailure::Refused(e)) => {
                transaction::aborted(out, &crate::refusal::message(&e))
            }
            Err(WriteFailure::RefusedAtApply(why)) => transaction::aborted(out, &why),
            Err(f) => write_failed(out, f),
        }
    }

    /// Proposes `op`; on success writes `ok`'s reply, else the failure's.
    async fn write(&mut self, op: Op, out: &mut Vec<u8>, ok: impl FnOnce(&mut Vec<u8>)) {
        match self.propose(op).await {
            Ok(index) => {
                self.applied_write = Some(index);
                ok(out);
            }
            Err(f) => write_failed(out, f),
        }
    }

    /// Proposes `op` through the node, unless an earlier write of this
    /// hand-off has an unknown outcome.
    async fn propose(&mut self, op: Op) -> Result<u64, WriteFailure> {
        if self.unknown_write {
            return Err(WriteFailure::NotWritten(
                "not tried: an earlier write of this pipeline has an unknown outcome".into(),
            ));
        }
        let r = self.node.write(op).await;
        self.unknown_write = matches!(r, Err(WriteFailure::Unknown(_)));
        r
    }

    /// The engine to read, once a read here is linearizable; `None` after
    /// writing the error reply if it cannot be.
    async fn readable(&mut self, out: &mut Vec<u8>) -> Option<Arc<keel::Db>> {
        if self.confirmed.is_none() {
            self.confirmed = Some(self.node.read_barrier().await);
        }
        if let Some(Err(why)) = &self.confirmed {
            error(out, &format!("TRYAGAIN {why}: nothing was read; retry"));
            return None;
        }
        if let Err(why) = self.node.wait_applied(self.applied_write).await {
            error(out, &format!("TRYAGAIN {why}: nothing was read; retry"));
            // As a failed confirmation: the hand-off's later reads fail at once.
            self.confirmed = Some(Err(why));
            return None;
        }
        Some(self.node.engine.current())
    }

    /// `INFO`: the engine's sections, then `# Cluster`.
    fn info(&self) -> String {
        let db = self.node.engine.current();
        let mut text = info_text(&db, "Always (the Raft log's)");
        let m = self.node.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        text += &format!(
            "# Cluster\r\nnode_id:{}\r\nrole:{:?}\r\nterm:{}\r\nleader_id:{}\r\nleader_changes:{}\r\nlast_log_index:{}\r\napplied_index:{}\r\n",
            self.node.id,
            m.state,
            m.current_term,
            m.current_leader.map_or_else(|| "none".into(), |l| l.to_string()),
            self.node.leader_changes(),
            m.last_log_index.unwrap_or(0),
            applied,
        );
        for (id, _, lag) in super::follower_lags(&m) {
            text += &format!("follower_{id}_lag_entries:{lag}\r\n");
        }
        let rendered = self.metrics.map(|h| h.render()).unwrap_or_default();
        for (what, name) in [
            ("append", "keel_raft_append_seconds"),
            ("apply", "keel_raft_apply_seconds"),
        ] {
            if let Some((p50, p99)) = crate::metrics::quantiles(&rendered, name) {
                text += &format!(
                    "raft_{what}_p50_ms:{:.3}\r\nraft_{what}_p99_ms:{:.3}\r\n",
                    p50 * 1e3,
                    p99 * 1e3
                );
            }
        }
        text
    }
}

/// The reply to a write that was not acknowledged (module doc).
fn write_failed(out: &mut Vec<u8>, f: WriteFailure) {
    match f {
        WriteFailure::Refused(e) => db_error(out, &e),
        WriteFailure::RefusedAtApply(why) => error(out, &format!("ERR {why}")),
        WriteFailure::NotWritten(why) => error(out, &format!("TRYAGAIN {why}")),
        WriteFailure::Unknown(why) => error(
            out,
            &format!("UNKNOWN the write's outcome is unknown ({why}): it may or may not be applied; read the key back before retrying"),
        ),
    }
}
