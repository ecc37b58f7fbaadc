//! Linearizable reads served from this node's own engine (ReadIndex, as
//! the Raft thesis §6.4 describes and etcd does), over HTTP and the Redis
//! protocol.
//!
//! Before a read, the node learns an index that covers every write
//! acknowledged before the read came in, and waits until its engine has
//! applied it:
//! - on the leader, `ensure_linearizable` (a heartbeat round confirms it
//!   still leads; the index is its commit index);
//! - on a follower, the leader is asked for that index
//!   (`POST /raft/read-index`, with the cluster secret), then the follower
//!   waits for its own applied index to reach it. Entries are applied only
//!   once committed, and a committed entry is the same on every node, so
//!   the follower's engine then holds everything the leader's did.
//!
//! Reads that come while a confirmation is under way wait for the next
//! one and share it ([`keel_raft::Batcher`]): a confirmation starts after
//! every read it serves came in, which is what makes sharing it correct.

use super::{network::PeerError, ClusterNode};
use crate::http::text;
use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_raft::Batcher;
use std::sync::{Arc, Weak};

/// Where a follower asks the leader for the index a read must wait for.
pub const READ_INDEX_PATH: &str = "/raft/read-index";

/// A confirmation's outcome: `Err(why)` if the read cannot be served now.
pub type Confirmed = Result<(), String>;

/// The batcher of confirmations: every read queued meanwhile shares one.
pub fn confirmations(node: Weak<ClusterNode>) -> Arc<Batcher<Confirmed>> {
    Batcher::new(Arc::new(move |reads: Vec<Vec<u8>>| {
        let node = node.clone();
        Box::pin(async move {
            let confirmed = match node.upgrade() {
                Some(node) => confirm(&node).await,
                None => Err("the node is stopping".into()),
            };
            vec![confirmed; reads.len()]
        })
    }))
}

/// One confirmation (module doc).
async fn confirm(node: &ClusterNode) -> Confirmed {
    let leader = node.leader();
    if leader == Some(node.id) {
        return match tokio::time::timeout(node.timeout, node.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot confirm this node still leads ({e})")),
            Err(_) => Err("no quorum confirmed the leader in time".into()),
        };
    }
    let Some(addr) = leader.and_then(|l| node.addr_of(l)) else {
        return Err("no leader is elected yet (or a majority is down)".into());
    };
    let headers = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    )];
    let answer = node
        .client
        .send(
            &addr,
            Method::POST,
            READ_INDEX_PATH,
            &headers,
            Bytes::new(),
            node.timeout,
        )
        .await
        .map_err(|e: PeerError| format!("the leader did not answer ({e})"))?;
    if answer.status != StatusCode::OK {
        let said = String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]);
        return Err(format!(
            "the leader could not confirm ({}: {said})",
            answer.status
        ));
    }
    let index: ReadIndex = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("the leader's read index is malformed ({e})"))?;
    node.wait_applied(index.index).await
}

/// The leader's answer to `POST /raft/read-index`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReadIndex {
    /// The log index a read must wait for (`None`: nothing committed yet).
    index: Option<u64>,
}

/// `POST /raft/read-index` on the leader: confirms it still leads and
/// answers the index a follower's read must wait for.
pub async fn handle_read_index(node: &ClusterNode) -> Response {
    match tokio::time::timeout(node.timeout, node.raft.get_read_log_id()).await {
        Ok(Ok((read, _applied))) => axum::Json(ReadIndex {
            index: read.map(|l| l.index),
        })
        .into_response(),
        Ok(Err(e)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot confirm this node leads ({e})"),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no quorum confirmed the leader in time",
        ),
    }
}

impl ClusterNode {
    /// Waits until a read here would be linearizable (module doc).
    pub async fn read_barrier(&self) -> Confirmed {
        let confirmed = self.reads.submit(Vec::new()).await;
        confirmed.unwrap_or_else(|| Err("the node stopped while confirming a read".into()))
    }

    /// Waits until this node's engine has applied log index `index` (at
    /// most the request timeout).
    pub async fn wait_applied(&self, index: Option<u64>) -> Confirmed {
        let Some(index) = index else {
            return Ok(());
        };
        self.raft
            .wait(Some(self.timeout))
            .applied_index_at_least(Some(index), "a linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| format!("this node did not catch up with the leader in time ({e})"))
    }
}
