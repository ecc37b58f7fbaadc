//! Commands the event loop hands off: on a cluster node, every command that
//! touches the store goes through Raft ([`crate::cluster::resp`]), which
//! takes longer than one turn of the loop and must not block it.
//!
//! The event loop gathers a connection's consecutive commands that a
//! [`Remote`] [`takes`](Remote::takes) into one list, hands the list over,
//! and reads nothing more of that connection until the answer comes back
//! (so replies stay in the order the commands were sent, and a command
//! never runs before the connection's earlier writes are done). The answer
//! (the replies, in order) is queued in [`Answers`] and the loop is woken.

use mio::Waker;
use std::sync::{Arc, Mutex};

/// Runs the commands the event loop hands off.
pub trait Remote: Send + Sync {
    /// Whether command `name` (as sent, any case) must be handed off.
    fn takes(&self, name: &[u8]) -> bool;

    /// Runs `commands` one after another and gives their replies, in order,
    /// to `done` (on any thread, once; never before the writes among them
    /// are acknowledged or refused).
    fn run(&self, commands: Vec<Handoff>, done: Reply);
}

/// One command handed off.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff {
    /// A command, its name first.
    Command(Vec<Vec<u8>>),
    /// `EXEC` of a transaction that queued these commands (each checked
    /// when queued: a known command of the right arity).
    Exec(Vec<Vec<Vec<u8>>>),
    /// A reply made on the event loop (a command that needs no store, a
    /// protocol error) to a command after handed off ones: it goes out, as
    /// is, after theirs.
    Reply(Vec<u8>),
}

impl Handoff {
    /// Bytes of arguments it holds (to bound what a connection hands off).
    pub fn bytes(&self) -> usize {
        let len = |args: &Vec<Vec<u8>>| args.iter().map(Vec::len).sum::<usize>();
        match self {
            Handoff::Command(args) => len(args),
            Handoff::Exec(queued) => queued.iter().map(len).sum(),
            Handoff::Reply(reply) => reply.len(),
        }
    }
}

/// Where one hand-off's replies go: the connection it came from, and the
/// loop to wake. Dropped unsent (the task running the commands panicked,
/// or the runtime stopped), it closes the connection: its client would
/// otherwise wait for replies forever.
pub struct Reply {
    answers: Arc<Answers>,
    conn: usize,
    id: u64,
    sent: bool,
}

impl Reply {
    /// Gives the replies back to the event loop and wakes it.
    pub fn send(mut self, replies: Vec<u8>) {
        self.sent = true;
        self.deliver(Some(replies));
    }

    fn deliver(&self, replies: Option<Vec<u8>>) {
        let mut done = self.answers.done.lock().unwrap_or_else(|p| p.into_inner());
        done.push(Answer {
            conn: self.conn,
            id: self.id,
            replies,
        });
        drop(done);
        // A failed wake leaves the answer queued until the loop's next
        // event; it cannot fail short of the poll itself failing.
        let _ = self.answers.waker.wake();
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            self.deliver(None);
        }
    }
}

/// One hand-off's replies.
pub struct Answer {
    /// The connection's slot.
    pub conn: usize,
    /// The connection's id: a slot reused by a later connection is not it.
    pub id: u64,
    /// The replies, in order; `None`: none will come, close the connection.
    pub replies: Option<Vec<u8>>,
}

/// Answers waiting for the event loop.
pub struct Answers {
    done: Mutex<Vec<Answer>>,
    waker: Arc<Waker>,
}

impl Answers {
    /// Answers that wake the loop through `waker`.
    pub fn new(waker: Arc<Waker>) -> Arc<Answers> {
        Arc::new(Answers {
            done: Mutex::new(Vec::new()),
            waker,
        })
    }

    /// Where connection `conn` (with id `id`)'s next hand-off replies go.
    pub fn reply_to(self: &Arc<Self>, conn: usize, id: u64) -> Reply {
        Reply {
            answers: Arc::clone(self),
            conn,
            id,
            sent: false,
        }
    }

    /// The answers that came since the last call.
    pub fn take(&self) -> Vec<Answer> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
