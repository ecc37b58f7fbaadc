//! A follower's writes, forwarded to the leader in batches.
//!
//! A write that comes to a follower is checked there (the same limits as
//! the leader's), then joins a [`Batcher`]: the writes that come while two
//! batches are out go together in one `POST /raft/propose` to the leader
//! (the cluster secret, like every `/raft/` request; the body is the
//! writes as in a Raft entry of several writes, docs/FORMAT.md). The
//! leader proposes them together ([`keel_raft::Proposer::write_all`]) and
//! answers one [`Outcome`] per write, in order, as JSON. So under load a
//! follower sends one request per batch, not one per client request.
//!
//! What a failure means for each write of the batch: the leader could not
//! be reached, or refused the request whole (4xx): nothing was proposed,
//! not written; no answer in time, a cut answer, a 5xx: unknown.

use super::network::PeerError;
use super::ClusterNode;
use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, StatusCode};
use keel::op::Op;
use keel_raft::entry_codec::{decode_writes, encode_writes};
use keel_raft::{Batcher, ProposeError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Weak};

/// The path a follower sends its batches to.
pub const PROPOSE_PATH: &str = "/raft/propose";

/// What became of one forwarded write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Applied in the entry at this index.
    Applied(u64),
    /// Bad input, refused by the leader's checks or at apply: nothing of
    /// it changed.
    Refused(String),
    /// Certainly not written (why).
    NotWritten(String),
    /// May or may not be applied (why).
    Unknown(String),
}

/// A batcher that forwards to the leader `node` knows of at send time.
pub fn forwarder(node: Weak<ClusterNode>) -> Arc<Batcher<Outcome>> {
    Batcher::new(Arc::new(move |writes: Vec<Vec<u8>>| {
        let node = node.clone();
        Box::pin(async move {
            let n = writes.len();
            match node.upgrade() {
                Some(node) => send(&node, writes).await,
                None => {
                    vec![Outcome::NotWritten("this node is stopping: nothing was sent".into()); n]
                }
            }
        })
    }))
}

/// Sends `writes` to the leader (or proposes them here, if this node has
/// become the leader meanwhile).
async fn send(node: &ClusterNode, writes: Vec<Vec<u8>>) -> Vec<Outcome> {
    let n = writes.len();
    metrics::histogram!("keel_raft_forwarded_writes_per_request").record(n as f64);
    let leader = node.leader();
    if leader == Some(node.id) {
        return propose_here(node, writes).await;
    }
    let Some(addr) = leader.and_then(|l| node.addr_of(l)) else {
        return vec![
            Outcome::NotWritten(
                "no leader is elected yet (or a majority is down): nothing was written; retry shortly"
                    .into()
            );
            n
        ];
    };
    let headers = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    )];
    let body = Bytes::from(encode_writes(&writes));
    let sent = node
        .client
        .send(
            &addr,
            Method::POST,
            PROPOSE_PATH,
            &headers,
            body,
            node.timeout,
        )
        .await;
    let answer = match sent {
        Ok(a) => a,
        Err(e @ PeerError::NotConnected { .. }) => {
            let why =
                format!("the leader could not be reached ({e}): nothing was sent to it; retry");
            return vec![Outcome::NotWritten(why); n];
        }
        Err(e) => {
            let why = format!("the leader did not answer ({e})");
            return vec![Outcome::Unknown(why); n];
        }
    };
    let said = String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]).into_owned();
    if answer.status.is_client_error() {
        let why = format!(
            "the leader refused the forwarded writes ({}: {said}): nothing was written",
            answer.status
        );
        return vec![Outcome::NotWritten(why); n];
    }
    let outcomes: Option<Vec<Outcome>> = (answer.status == StatusCode::OK)
        .then(|| serde_json::from_slice(&answer.body).ok())
        .flatten();
    match outcomes {
        Some(o) if o.len() == n => o,
        _ => {
            let why = format!("the leader's answer to the forwarded writes is not one outcome per write ({}: {said})", answer.status);
            vec![Outcome::Unknown(why); n]
        }
    }
}

/// Checks `writes` and proposes those that pass, together.
async fn propose_here(node: &ClusterNode, writes: Vec<Vec<u8>>) -> Vec<Outcome> {
    let db = node.engine.current();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(writes.len());
    let mut passed = Vec::new();
    for w in writes {
        let checked = Op::decode(&w)
            .map_err(|e| format!("not a keel write: {e}"))
            .and_then(|op| db.check_write(&op).map_err(|e| e.to_string()));
        match checked {
            Ok(()) => {
                outcomes.push(None);
                passed.push(w);
            }
            Err(why) => outcomes.push(Some(Outcome::Refused(why))),
        }
    }
    let mut proposed = node.proposer.write_all(passed).await.into_iter();
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| match proposed.next() {
                Some(Ok(a)) => match a.refused {
                    None => Outcome::Applied(a.index),
                    Some(why) => Outcome::Refused(why),
                },
                Some(Err(ProposeError::NotLeader { .. })) => Outcome::NotWritten(
                    "the node the write was forwarded to was not the leader: nothing was written; retry".into(),
                ),
                Some(Err(ProposeError::Unknown(why))) => Outcome::Unknown(why),
                // Invariant: write_all answers once per write.
                None => Outcome::Unknown("no answer from the proposer".into()),
            })
        })
        .collect()
}

/// `POST /raft/propose` (the secret already checked): a follower's batch.
pub async fn handle_propose(node: &ClusterNode, body: &[u8]) -> axum::response::Response {
    use axum::response::IntoResponse;
    match decode_writes(body) {
        Ok(writes) => axum::Json(propose_here(node, writes).await).into_response(),
        Err(e) => super::text(
            StatusCode::BAD_REQUEST,
            format!("malformed forwarded writes: {e}"),
        ),
    }
}
