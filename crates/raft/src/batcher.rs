//! [`Batcher`]: concurrent writes gathered into batches sent one call each.
//!
//! A write joins a queue. While fewer than [`MAX_IN_FLIGHT`] batches are
//! out, the write that comes takes the queue (itself and whatever waited)
//! out as a batch; otherwise it waits, and the batch that comes back next
//! takes the queue with it. A batch holds at most [`MAX_WRITES`] writes or
//! [`MAX_BYTES`] bytes (one write always fits), so a lone write goes out
//! at once, alone, and under load each call carries what came meanwhile.
//!
//! Batches are sent on tasks of their own: a caller that stops waiting (a
//! client that hung up) never strands the writes that joined its batch.
//! The leader gathers writes into Raft entries with it
//! ([`crate::Proposer`]); a follower gathers the writes it forwards to the
//! leader into one request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Batches out at once; the writes that come meanwhile wait and go
/// together in the next.
pub const MAX_IN_FLIGHT: usize = 2;
/// The most writes in one batch.
pub const MAX_WRITES: usize = 512;
/// The most bytes of writes in one batch (one write always fits).
pub const MAX_BYTES: usize = 1 << 20;

/// Sends a batch: one answer per write, in order.
pub type SendBatch<R> =
    Arc<dyn Fn(Vec<Vec<u8>>) -> Pin<Box<dyn Future<Output = Vec<R>> + Send>> + Send + Sync>;

struct Queue<R> {
    writes: Vec<Vec<u8>>,
    answers: Vec<oneshot::Sender<R>>,
    bytes: usize,
    in_flight: usize,
}

impl<R> Queue<R> {
    /// The writes for the next batch, at most the limits' worth.
    fn take(&mut self) -> (Vec<Vec<u8>>, Vec<oneshot::Sender<R>>) {
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

/// Gathers writes into batches and sends them (module doc).
pub struct Batcher<R> {
    send: SendBatch<R>,
    queue: Mutex<Queue<R>>,
}

impl<R: Send + 'static> Batcher<R> {
    /// A batcher whose batches go to `send`.
    pub fn new(send: SendBatch<R>) -> Arc<Batcher<R>> {
        Arc::new(Batcher {
            send,
            queue: Mutex::new(Queue {
                writes: Vec::new(),
                answers: Vec::new(),
                bytes: 0,
                in_flight: 0,
            }),
        })
    }

    /// Sends `write` in a batch and waits for its answer; `None` if the
    /// batch's sender gave no answer for it (it stopped: the runtime is
    /// shutting down, or it panicked).
    pub async fn submit(self: &Arc<Self>, write: Vec<u8>) -> Option<R> {
        let answered = self.enqueue(vec![write]);
        answered.into_iter().next()?.await.ok()
    }

    /// Sends `writes` (together, as far as the limits let them) and waits
    /// for their answers, in order; `None` as in [`Batcher::submit`].
    pub async fn submit_all(self: &Arc<Self>, writes: Vec<Vec<u8>>) -> Vec<Option<R>> {
        let mut out = Vec::with_capacity(writes.len());
        for answered in self.enqueue(writes) {
            out.push(answered.await.ok());
        }
        out
    }

    /// Queues `writes` at once, and sends the queue if a batch may go out.
    fn enqueue(self: &Arc<Self>, writes: Vec<Vec<u8>>) -> Vec<oneshot::Receiver<R>> {
        let mut receivers = Vec::with_capacity(writes.len());
        let batch = {
            let mut q = self.queue.lock().expect("the batcher's queue lock");
            for write in writes {
                let (answer, answered) = oneshot::channel();
                q.bytes += write.len();
                q.writes.push(write);
                q.answers.push(answer);
                receivers.push(answered);
            }
            if q.in_flight < MAX_IN_FLIGHT && !q.writes.is_empty() {
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
        receivers
    }

    /// Sends `batch`, answers its writes, and goes on with what queued
    /// meanwhile until the queue is empty.
    async fn run(self: Arc<Self>, mut batch: (Vec<Vec<u8>>, Vec<oneshot::Sender<R>>)) {
        // If sending panics, the slot is given back all the same (the
        // batch's callers get no answer): later writes still go out.
        let mut slot = Slot {
            batcher: &self,
            held: true,
        };
        loop {
            let (writes, answers) = batch;
            let results = (self.send)(writes).await;
            for (answer, result) in answers.into_iter().zip(results) {
                // The caller may have stopped waiting; nothing to do then.
                let _ = answer.send(result);
            }
            let mut q = self.queue.lock().expect("the batcher's queue lock");
            if q.writes.is_empty() {
                q.in_flight -= 1;
                slot.held = false;
                return;
            }
            batch = q.take();
        }
    }
}

/// A batch slot held by a running batch.
struct Slot<'a, R> {
    batcher: &'a Batcher<R>,
    held: bool,
}

impl<R> Drop for Slot<'_, R> {
    fn drop(&mut self) {
        if self.held {
            let mut q = self
                .batcher
                .queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            q.in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn queue(lens: &[usize]) -> Queue<()> {
        let mut q = Queue {
            writes: Vec::new(),
            answers: Vec::new(),
            bytes: 0,
            in_flight: 0,
        };
        for &len in lens {
            q.writes.push(vec![0; len]);
            q.answers.push(oneshot::channel().0);
            q.bytes += len;
        }
        q
    }

    #[test]
    fn a_sender_that_panics_gives_its_slot_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b: Arc<Batcher<usize>> = Batcher::new(Arc::new(|writes: Vec<Vec<u8>>| {
                Box::pin(async move {
                    assert!(writes[0] != b"boom", "a bug in a sender");
                    writes.iter().map(Vec::len).collect::<Vec<usize>>()
                })
            }));
            let ten_s = Duration::from_secs(10);
            // More panics than slots: a slot kept by each would strand the
            // writes after them.
            for i in 0..MAX_IN_FLIGHT + 2 {
                let boom = tokio::time::timeout(ten_s, b.submit(b"boom".to_vec())).await;
                assert_eq!(boom, Ok(None), "panic {i} is stranded");
            }
            let after = tokio::time::timeout(ten_s, b.submit(b"abc".to_vec())).await;
            assert_eq!(after, Ok(Some(3)), "a write after the panics is stranded");
            assert_eq!(
                b.submit_all(vec![b"a".to_vec(), b"bb".to_vec()]).await,
                [Some(1), Some(2)]
            );
        });
    }

    #[test]
    fn a_batch_takes_what_fits_and_leaves_the_rest_in_order() {
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
