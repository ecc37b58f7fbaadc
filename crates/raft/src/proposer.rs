//! [`Proposer`]: concurrent clients' writes gathered into one Raft entry.
//!
//! Each entry costs a message through openraft's core, a log record, its
//! share of the replication messages, an apply and an answer, every one
//! of them a hand-off between threads. Under many clients those hand-offs,
//! not the fdatasync, bound a cluster's writes (docs/BENCHMARKS.md). So a
//! write joins a queue, and the queue goes out as one entry
//! ([`crate::Command`]): while [`MAX_IN_FLIGHT`] entries are being proposed,
//! the writes that come wait for the next, which carries all of them (at
//! most [`MAX_WRITES`] writes or [`MAX_BYTES`] bytes, one write always
//! fits). A lone client's write goes out at once, alone.
//!
//! Outcomes are [`crate::propose`]'s, for every write of the entry: not
//! written when this node did not lead before proposing, unknown after.
//! Each write gets its own answer: one refused at apply (bad input) leaves
//! the others written.
//!
//! Proposals run on tasks of their own, so a caller that stops waiting (a
//! client that hung up) never strands the writes that joined its entry.

use crate::client::{propose, ProposeError};
use crate::{Command, TypeConfig};
use openraft::Raft;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Entries being proposed at once; the writes that come meanwhile wait and
/// go together in the next.
pub const MAX_IN_FLIGHT: usize = 2;
/// The most writes in one entry.
pub const MAX_WRITES: usize = 512;
/// The most bytes of writes in one entry (one write always fits).
pub const MAX_BYTES: usize = 1 << 20;

/// A write that was applied (or refused at apply, with nothing changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The index of the entry that carried it.
    pub index: u64,
    /// Why the engine refused it, if it did.
    pub refused: Option<String>,
}

type Answer = oneshot::Sender<Result<Applied, ProposeError>>;

#[derive(Default)]
struct Queue {
    writes: Vec<Vec<u8>>,
    answers: Vec<Answer>,
    bytes: usize,
    in_flight: usize,
}

impl Queue {
    /// The writes for the next entry, at most the limits' worth.
    fn take(&mut self) -> (Vec<Vec<u8>>, Vec<Answer>) {
        let mut n = 0;
        let mut bytes = 0;
        while n < self.writes.len() && n < MAX_WRITES {
            let len = self.writes[n].len();
            if n > 0 && bytes + len > MAX_BYTES {
                break;
            }
            bytes += len;
            n += 1;
        }
        self.bytes -= bytes;
        let rest_w = self.writes.split_off(n);
        let rest_a = self.answers.split_off(n);
        (
            std::mem::replace(&mut self.writes, rest_w),
            std::mem::replace(&mut self.answers, rest_a),
        )
    }
}

/// Gathers writes into entries and proposes them on a Raft node (module
/// doc).
pub struct Proposer {
    raft: Raft<TypeConfig>,
    deadline: Duration,
    queue: Mutex<Queue>,
}

impl Proposer {
    /// A proposer on `raft`; an entry not applied within `deadline` leaves
    /// its writes' outcome unknown.
    pub fn new(raft: Raft<TypeConfig>, deadline: Duration) -> Arc<Proposer> {
        Arc::new(Proposer {
            raft,
            deadline,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Proposes `write` (an encoded keel write) and waits until it is
    /// applied.
    pub async fn write(self: &Arc<Self>, write: Vec<u8>) -> Result<Applied, ProposeError> {
        let (answer, answered) = oneshot::channel();
        let batch = {
            let mut q = self.queue.lock().expect("the proposer's queue lock");
            q.bytes += write.len();
            q.writes.push(write);
            q.answers.push(answer);
            if q.in_flight < MAX_IN_FLIGHT {
                q.in_flight += 1;
                Some(q.take())
            } else {
                None
            }
        };
        if let Some(batch) = batch {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run(batch).await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(ProposeError::Unknown(
                "the node stopped while the write was being proposed".into(),
            ))
        })
    }

    /// Proposes `batch`, answers its writes, and goes on with what queued
    /// meanwhile until the queue is empty.
    async fn run(self: Arc<Self>, mut batch: (Vec<Vec<u8>>, Vec<Answer>)) {
        loop {
            let (writes, answers) = batch;
            let n = writes.len();
            metrics::histogram!("keel_raft_writes_per_entry").record(n as f64);
            let outcome = propose(&self.raft, Command { writes }, self.deadline).await;
            for (i, answer) in answers.into_iter().enumerate() {
                let result = match &outcome {
                    Ok(r) => Ok(Applied {
                        index: r.log_id.index,
                        // Invariant: the state machine answers one result
                        // per write of the entry.
                        refused: r.data.refused.get(i).cloned().flatten(),
                    }),
                    Err(e) => Err(e.clone()),
                };
                // The caller may have stopped waiting; nothing to do then.
                let _ = answer.send(result);
            }
            let mut q = self.queue.lock().expect("the proposer's queue lock");
            if q.writes.is_empty() {
                q.in_flight -= 1;
                return;
            }
            batch = q.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lens: &[usize]) -> Queue {
        let mut q = Queue::default();
        for &len in lens {
            q.writes.push(vec![0; len]);
            q.answers.push(oneshot::channel().0);
            q.bytes += len;
        }
        q
    }

    #[test]
    fn an_entry_takes_what_fits_and_leaves_the_rest_in_order() {
        let mut q = queue(&[MAX_BYTES / 2, MAX_BYTES / 2, 1]);
        let (w, a) = q.take();
        assert_eq!((w.len(), a.len()), (2, 2));
        assert_eq!((q.writes.len(), q.answers.len(), q.bytes), (1, 1, 1));
        let mut q = queue(&[MAX_BYTES * 2, 1]);
        assert_eq!(q.take().0.len(), 1, "one write always fits");
        assert_eq!(q.bytes, 1);
        let mut q = queue(&vec![1; MAX_WRITES + 3]);
        assert_eq!(q.take().0.len(), MAX_WRITES);
        assert_eq!(q.writes.len(), 3);
        assert_eq!(q.bytes, 3);
    }
}
