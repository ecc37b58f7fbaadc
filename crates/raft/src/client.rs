//! Proposing a client's write, and what a failure says about it.
//!
//! openraft answers `ForwardToLeader` in two cases that look the same: the
//! node was not the leader when the write came (nothing was appended), or
//! the node appended it, lost the lead, and removed the entry from its own
//! log as a conflicting suffix. The second does not mean the entry is gone
//! everywhere: another node may hold a copy, be elected (in a cluster of
//! five, without the votes of the node that removed it) and commit it. So a
//! write counts as certainly not written only when this node refused it
//! before proposing (its own state said it does not lead); any failure
//! after proposing leaves the outcome unknown.

use crate::{Command, TypeConfig};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{Raft, ServerState};
use std::time::Duration;

/// Why a proposed write has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Not proposed: this node does not lead. Nothing was written.
    #[error("this node is not the leader (the leader is {leader:?}): nothing was written")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u64>,
    },
    /// Proposed, then no answer: the lead changed, the node stopped or the
    /// deadline passed. The write may be committed later, or never.
    #[error("the write's outcome is unknown: {0}")]
    Unknown(String),
}

/// Proposes `command` on `raft` and waits, at most `deadline`, until it is
/// applied.
pub async fn propose(
    raft: &Raft<TypeConfig>,
    command: Command,
    deadline: Duration,
) -> Result<ClientWriteResponse<TypeConfig>, ProposeError> {
    {
        let m = raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader {
            return Err(ProposeError::NotLeader {
                leader: m.current_leader,
            });
        }
    }
    match tokio::time::timeout(deadline, raft.client_write(command)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ProposeError::Unknown(format!(
                "this node stopped leading (the leader is now {:?}) while the write was in flight",
                f.leader_id
            )))
        }
        Ok(Err(e)) => Err(ProposeError::Unknown(e.to_string())),
        Err(_) => Err(ProposeError::Unknown(format!(
            "not applied within {deadline:?} (no quorum?)"
        ))),
    }
}
