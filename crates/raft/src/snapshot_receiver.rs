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
//!
//! It also keeps a transfer whole. openraft 0.9 writes a chunk at its
//! offset without checking that the bytes before it arrived in this
//! transfer: a chunk delayed in the network and delivered again after a
//! transfer ended (an offset 0 starts a new file, then a stale last chunk
//! completes it) made the node install a file with a hole, fail, and stop
//! (the simulated cluster found it). So a chunk is handed on only if it
//! starts at 0 or at or before the end of what this transfer has received;
//! any other is refused as a mismatch, and the leader starts over.

use crate::TypeConfig;
use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{Raft, SnapshotSegmentId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The transfer under way: its snapshot id and how many bytes from the
/// start it has received.
type Transfer = Option<(String, u64)>;

/// Feeds snapshot chunks to one node.
#[derive(Clone)]
pub struct SnapshotReceiver {
    raft: Raft<TypeConfig>,
    /// How long after a chunk elections stay off.
    hold: Duration,
    /// Chunks seen so far; a release is due only if none came since.
    chunks: Arc<AtomicU64>,
    /// One chunk at a time, and the transfer they belong to.
    transfer: Arc<tokio::sync::Mutex<Transfer>>,
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
            transfer: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Hands one chunk to openraft; while chunks from a leader this node
    /// accepts keep coming, the node does not start elections.
    pub async fn install_snapshot(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let (vote, done) = (req.vote, req.done);
        let mut transfer = self.transfer.lock().await;
        let (id, offset) = (req.meta.snapshot_id.clone(), req.offset);
        let end = offset + req.data.len() as u64;
        let contiguous = offset == 0
            || matches!(&*transfer, Some((t, received)) if *t == id && offset <= *received);
        if !contiguous {
            let expect = match &*transfer {
                Some((t, received)) if *t == id => *received,
                _ => 0,
            };
            let mismatch = SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: id.clone(),
                    offset: expect,
                },
                got: SnapshotSegmentId { id, offset },
            };
            return Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                mismatch,
            )));
        }
        let answer = self.raft.install_snapshot(req).await;
        // openraft answers with this node's vote; a sender whose vote is
        // not at least as new was refused.
        let accepted = matches!(&answer, Ok(r) if vote >= r.vote);
        if accepted {
            *transfer = match transfer.take() {
                _ if done => None,
                Some((t, received)) if t == id && offset > 0 => Some((t, received.max(end))),
                _ => Some((id, end)),
            };
        }
        drop(transfer);
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
