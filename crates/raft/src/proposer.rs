//! [`Proposer`]: concurrent clients' writes gathered into one Raft entry.
//!
//! Each entry costs a message through openraft's core, a log record, its
//! share of the replication messages, an apply and an answer, every one
//! of them a hand-off between threads. Under many clients those hand-offs,
//! not the fdatasync, bound a cluster's writes (docs/BENCHMARKS.md). So
//! writes are gathered by a [`Batcher`] and each batch goes out as one
//! entry ([`crate::Command`]).
//!
//! Outcomes are [`crate::propose`]'s, for every write of the entry: not
//! written when this node did not lead before proposing, unknown after.
//! Each write gets its own answer: one refused at apply (bad input) leaves
//! the others written.

use crate::batcher::Batcher;
use crate::client::{propose, ProposeError};
use crate::{Command, TypeConfig};
use openraft::Raft;
use std::sync::Arc;
use std::time::Duration;

/// A write that was applied (or refused at apply, with nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The index of the entry that carried it.
    pub index: u64,
    /// Why the engine refused it, if it did.
    pub refused: Option<String>,
}

/// What proposing one write gave.
pub type Proposed = Result<Applied, ProposeError>;

/// Gathers writes into entries and proposes them on a Raft node (module
/// doc).
pub struct Proposer {
    batcher: Arc<Batcher<Proposed>>,
}

impl Proposer {
    /// A proposer on `raft`; an entry not applied within `deadline` leaves
    /// its writes' outcome unknown.
    pub fn new(raft: Raft<TypeConfig>, deadline: Duration) -> Arc<Proposer> {
        let batcher = Batcher::new(Arc::new(move |writes: Vec<Vec<u8>>| {
            let raft = raft.clone();
            Box::pin(async move { propose_entry(&raft, writes, deadline).await })
        }));
        Arc::new(Proposer { batcher })
    }

    /// Proposes `write` (an encoded keel write) and waits until it is
    /// applied.
    pub async fn write(&self, write: Vec<u8>) -> Proposed {
        self.batcher.submit(write).await.unwrap_or_else(stopped)
    }

    /// Proposes `writes` together (a follower's forwarded batch) and waits
    /// until they are applied: one answer per write, in order.
    pub async fn write_all(&self, writes: Vec<Vec<u8>>) -> Vec<Proposed> {
        let answers = self.batcher.submit_all(writes).await;
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(stopped))
            .collect()
    }
}

fn stopped() -> Proposed {
    Err(ProposeError::Unknown(
        "the node stopped while the write was being proposed".into(),
    ))
}

/// Proposes `writes` as one entry: one answer per write.
async fn propose_entry(
    raft: &Raft<TypeConfig>,
    writes: Vec<Vec<u8>>,
    deadline: Duration,
) -> Vec<Proposed> {
    let n = writes.len();
    metrics::histogram!("keel_raft_writes_per_entry").record(n as f64);
    match propose(raft, Command { writes }, deadline).await {
        Ok(r) => (0..n)
            .map(|i| {
                Ok(Applied {
                    index: r.log_id.index,
                    // Invariant: the state machine answers one result per
                    // write of the entry.
                    refused: r.data.refused.get(i).cloned().flatten(),
                })
            })
            .collect(),
        Err(e) => vec![Err(e); n],
    }
}
