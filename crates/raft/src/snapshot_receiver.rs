//! [`SnapshotReceiver`]: a follower receiving the leader's snapshot holds
//! its elections off while the chunks keep coming.
//!
//! openraft 0.9 sends a follower its heartbeats on the same stream as its
//! snapshot, and the chunks it receives do not tell the follower's core
//! that a leader is alive. A transfer longer than the election timeout
//! (a large engine, a slow link) would make the follower start an election
//! with a higher term; 0.9 has no pre-vote, so the leader steps down, the
//! transfer is abandoned, and the next leader starts it over: the follower
//! never catches up and the cluster keeps electing. (The in-process
//! simulated cluster found this with many small chunks.) So each accepted
//! chunk turns the node's elections off until the last chunk, or until no
//! chunk has come for the longest election timeout, whichever is first.

use crate::TypeConfig;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::Raft;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Feeds snapshot chunks to one node.
#[derive(Clone)]
pub struct SnapshotReceiver {
    raft: Raft<TypeConfig>,
    /// How long after a chunk elections stay off.
    hold: Duration,
    /// Chunks seen so far; a release is due only if none came since.
    chunks: Arc<AtomicU64>,
}

impl SnapshotReceiver {
    /// A receiver for `raft`, holding elections off for its longest
    /// election timeout after each chunk.
    pub fn new(raft: Raft<TypeConfig>) -> SnapshotReceiver {
        let hold = Duration::from_millis(raft.config().election_timeout_max);
        SnapshotReceiver {
            raft,
            hold,
            chunks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands one chunk to openraft; while chunks from a leader this node
    /// accepts keep coming, the node does not start elections.
    pub async fn install_snapshot(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let (vote, done) = (req.vote, req.done);
        let answer = self.raft.install_snapshot(req).await;
        // openraft answers with this node's vote; a sender whose vote is
        // not at least as new was refused.
        let accepted = matches!(&answer, Ok(r) if vote >= r.vote);
        let n = self.chunks.fetch_add(1, Ordering::SeqCst) + 1;
        if accepted && !done {
            self.raft.runtime_config().elect(false);
            let (raft, chunks, hold) = (self.raft.clone(), Arc::clone(&self.chunks), self.hold);
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if chunks.load(Ordering::SeqCst) == n {
                    raft.runtime_config().elect(true);
                }
            });
        } else {
            self.raft.runtime_config().elect(true);
        }
        answer
    }
}
