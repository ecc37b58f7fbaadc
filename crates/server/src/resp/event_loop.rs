//! The RESP listener's event loop: one thread that reads, executes, commits
//! and replies, as Redis does, with no thread hand-off on the write path.
//!
//! One turn of the loop:
//! 1. wait for readiness (epoll, through `mio`), accept new connections;
//! 2. for each ready connection, read what has arrived and execute every
//!    complete command in order; writes are queued in the log
//!    ([`Db::put_deferred`]) and their replies held back;
//! 3. commit the turn's writes with [`Db::commit_through`]: one write and,
//!    under `--sync always`, one fdatasync for all of them, done on this
//!    thread;
//! 4. send the replies (replacing those to writes with an error if the
//!    commit failed).
//!
//! Invariants:
//! - A reply to a write is sent only after the commit covering it returned
//!   `Ok` (durability rule 1): replies of a connection with a deferred write
//!   stay in its buffer until the turn's commit.
//! - A connection's commands run in the order sent, and a command that reads
//!   runs only once the connection's own earlier writes are committed (see
//!   [`can_run`]); replies go out in order.
//! - Input is parsed incrementally ([`CommandParser`]): each byte is
//!   examined a bounded number of times however slowly it arrives.
//! - Memory per connection is bounded: the command being read (parsed or
//!   not) by [`RespLimits::max_pending`]; unsent output by [`OUTPUT_HIGH_WATER`]
//!   (past it, the connection's input is not read until the client reads).
//! - Fair: at most [`READS_PER_TURN`] reads per connection per turn.
//!
//! Sockets are registered edge-triggered, so a connection that stopped
//! reading before its socket said `WouldBlock` is remembered as runnable.
//!
//! With a [`Remote`] (a cluster node), the commands that touch the store
//! are not run on this thread: a connection's consecutive ones (at most
//! [`HANDOFF_COMMANDS`] or [`HANDOFF_BYTES`]) are handed off together, and
//! the connection runs nothing more until their replies come back
//! ([`super::remote`]), so replies keep their order.

use super::command::{can_run, db_error, execute, Outcome};
use super::frame::error;
use super::parser::{CommandParser, RespLimits};
use super::remote::{Answers, Handoff, Remote};
use super::transaction::{self, Transaction};
use super::transport::Transport;
use crate::auth::{self, AuthToken, Gate};
use keel::Db;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per turn before others get their go.
pub const READS_PER_TURN: usize = 16;
/// Unsent reply bytes past which a connection's input waits.
pub const OUTPUT_HIGH_WATER: usize = 4 << 20;
/// Commands a connection hands off to the [`Remote`] at once, at most.
pub const HANDOFF_COMMANDS: usize = 512;
/// Argument bytes a connection hands off at once, at most (one command of
/// any size always goes).
pub const HANDOFF_BYTES: usize = 1 << 20;

/// A running RESP listener. [`shutdown`](Self::shutdown) (or drop) stops it.
pub struct RespServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl RespServer {
    /// Starts the event loop thread on `listener`.
    /// With `config.auth`, each connection must `AUTH` first (`crate::auth`).
    pub fn start(
        listener: std::net::TcpListener,
        db: Arc<Db>,
        config: RespConfig,
    ) -> io::Result<RespServer> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let limits = RespLimits::for_db(&db);
        let mut event_loop = EventLoop {
            poll,
            listener,
            db,
            limits,
            remote: config.remote,
            answers: Answers::new(Arc::clone(&waker)),
            next_id: 0,
            auth: config.auth,
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            live: 0,
            tls: config.tls,
            accept_retry: None,
            conns: Vec::new(),
            free: Vec::new(),
            runnable: VecDeque::new(),
            stop: Arc::clone(&stop),
            scratch: vec![0; READ_CHUNK],
        };
        let thread = std::thread::Builder::new()
            .name("keel-resp".into())
            .spawn(move || event_loop.run())?;
        Ok(RespServer {
            addr,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and reading; the turn under way finishes (its writes
    /// committed, its replies sent where the socket takes them).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RespServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Conn {
    /// The socket, with TLS when the listener has it.
    io: Transport,
    /// Bytes read; `inbuf[start..]` is not yet parsed.
    inbuf: Vec<u8>,
    start: usize,
    /// Where the parser is in the command being read.
    parser: CommandParser,
    /// A parsed command that waits for this turn's commit to run.
    held: Option<Vec<Vec<u8>>>,
    /// Replies; `out[sent..]` is not yet sent.
    out: Vec<u8>,
    sent: usize,
    /// Ranges of `out` holding replies to writes not yet committed.
    acks: Vec<(usize, usize)>,
    /// Edge-triggered: the socket may still hold unread bytes.
    may_read: bool,
    /// A complete command waits for this turn's commit.
    paused: bool,
    /// Input stopped being processed because too much output was unsent:
    /// run again once it has drained, whether or not the socket says more.
    backlog: bool,
    /// Close once `out` is sent.
    closing: bool,
    /// The socket failed: drop without sending.
    dead: bool,
    /// Queued in `runnable` already.
    queued: bool,
    /// Sent a good `AUTH` (meaningless without an auth token).
    authed: bool,
    /// Commands queued since `MULTI`.
    tx: Option<Transaction>,
    /// When bytes last arrived (for the idle timeout).
    last_active: Instant,
    /// Unique among the loop's connections (a slot is reused).
    id: u64,
    /// Commands gathered this turn for the [`Remote`], and their bytes.
    handoff: Vec<Handoff>,
    handoff_bytes: usize,
    /// Handed off commands not yet answered: run nothing more till then.
    waiting: bool,
    /// Handed off commands the remote gave back unrun (its replies passed
    /// the high water): handed off again, before anything else, once the
    /// client has read enough.
    resume: Vec<Handoff>,
}

impl Conn {
    /// A new connection over `io`, with id `id`.
    fn new(io: Transport, id: u64) -> Conn {
        Conn {
            io,
            inbuf: Vec::new(),
            start: 0,
            parser: CommandParser::new(),
            held: None,
            out: Vec::new(),
            sent: 0,
            acks: Vec::new(),
            may_read: true,
            paused: false,
            backlog: false,
            closing: false,
            dead: false,
            queued: false,
            authed: false,
            tx: None,
            last_active: Instant::now(),
            id,
            handoff: Vec::new(),
            handoff_bytes: 0,
            waiting: false,
            resume: Vec::new(),
        }
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Sends what the socket takes of `out` (and TLS records pending).
    fn flush(&mut self) {
        match self.io.flush_pending() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => self.dead = true,
        }
        while self.sent < self.out.len() && !self.dead {
            match self.io.write(&self.out[self.sent..]) {
                Ok(0) => self.dead = true,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            shrink(&mut self.out);
        }
    }

    /// Hands off again what the remote gave back unrun, once the client has
    /// read its replies below the high water. `true`: there was some (the
    /// connection runs nothing else until it is all answered).
    fn resumed(&mut self) -> bool {
        if self.resume.is_empty() {
            return false;
        }
        if self.unsent() <= OUTPUT_HIGH_WATER {
            for h in std::mem::take(&mut self.resume) {
                self.hand_off(h);
            }
        } else {
            self.backlog = true; // runnable again once the client has read
        }
        true
    }

    /// Adds a command to what this turn hands off.
    fn hand_off(&mut self, h: Handoff) {
        self.handoff_bytes += h.bytes();
        self.handoff.push(h);
    }

    /// Moves the replies written to `out` from `before` on behind the
    /// commands handed off this turn, if any (they must not overtake).
    fn keep_order(&mut self, before: usize) {
        if !self.handoff.is_empty() && self.out.len() > before {
            let reply = self.out.split_off(before);
            self.hand_off(Handoff::Reply(reply));
        }
    }

    /// Replaces the replies to uncommitted writes with `err` (the commit
    /// failed, so none of them is acknowledged).
    fn fail_acks(&mut self, err: &[u8]) {
        let mut out = Vec::with_capacity(self.out.len());
        let mut at = 0;
        for &(from, to) in &self.acks {
            out.extend_from_slice(&self.out[at..from]);
            out.extend_from_slice(err);
            at = to;
        }
        out.extend_from_slice(&self.out[at..]);
        self.out = out;
        self.acks.clear();
    }
}

struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    db: Arc<Db>,
    limits: RespLimits,
    /// Runs the commands that touch the store, on a cluster node.
    remote: Option<Arc<dyn Remote>>,
    /// Where the remote's replies come back.
    answers: Arc<Answers>,
    /// The next connection's id.
    next_id: u64,
    /// The token connections must `AUTH` with, if any.
    auth: Option<Arc<AuthToken>>,
    /// Connections open at most; more are told so and closed.
    max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    idle_timeout: Option<Duration>,
    /// Connections open now.
    live: usize,
    /// TLS, when the listener speaks only TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// `accept` failed (out of descriptors): try again at this time.
    accept_retry: Option<Instant>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections with work left that no event will announce.
    runnable: VecDeque<usize>,
    stop: Arc<AtomicBool>,
    /// Every read lands here first (one buffer for all connections).
    scratch: Vec<u8>,
}

/// How the RESP listener treats its clients.
#[derive(Clone, Default)]
pub struct RespConfig {
    /// The token connections must `AUTH` with, if any.
    pub auth: Option<Arc<AuthToken>>,
    /// Connections open at most (Redis's `maxclients`); a client over it gets
    /// `-ERR max number of clients reached` and is closed. 0: no limit.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (Redis's
    /// `timeout`); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Speak only TLS, with this configuration (`crate::tls`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Hand the commands that touch the store to this (a cluster node's
    /// Raft); `None`: run them on the loop's engine.
    pub remote: Option<Arc<dyn Remote>>,
}

/// How long to wait before accepting again after `accept` failed (out of
/// file descriptors): the pending clients stay in the kernel's backlog.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What one turn's commands amounted to.
#[derive(Default)]
struct Turn {
    /// Highest LSN of a deferred write.
    max_lsn: u64,
    /// Connections holding deferred replies.
    holding: Vec<usize>,
    writes: u64,
    reads: u64,
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.runnable.is_empty() {
                self.next_timer()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(
                    "RESP event loop: poll failed ({e}); the Redis protocol listener stops"
                );
                return;
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.deliver_answers(),
                    Token(t) => {
                        let Some(Some(c)) = self.conns.get_mut(t - FIRST_CONN) else {
                            continue;
                        };
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.may_read = true;
                        }
                        if ev.is_writable() {
                            c.flush();
                        }
                        self.mark_runnable(t - FIRST_CONN);
                    }
                }
            }
            if self.accept_retry.is_some_and(|t| Instant::now() >= t) {
                self.accept_retry = None;
                self.accept_all();
            }
            self.close_idle();
            self.turn();
        }
    }

    /// How long the poll may sleep: until the accept retry, or the next
    /// idle check (a tenth of the idle timeout, at least 10 ms).
    fn next_timer(&self) -> Option<Duration> {
        let retry = self
            .accept_retry
            .map(|t| t.saturating_duration_since(Instant::now()));
        let idle = self
            .idle_timeout
            .map(|d| (d / 10).max(Duration::from_millis(10)));
        match (retry, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes connections idle for longer than the idle timeout (nothing
    /// read, nothing waiting to be committed or sent).
    fn close_idle(&mut self) {
        let Some(limit) = self.idle_timeout else {
            return;
        };
        let now = Instant::now();
        for i in 0..self.conns.len() {
            let idle = self.conns[i].as_ref().is_some_and(|c| {
                now.duration_since(c.last_active) > limit
                    && c.acks.is_empty()
                    && !c.waiting
                    && c.unsent() == 0
            });
            if idle {
                self.close(i);
            }
        }
    }

    fn mark_runnable(&mut self, i: usize) {
        if let Some(Some(c)) = self.conns.get_mut(i) {
            if !c.queued {
                c.queued = true;
                self.runnable.push_back(i);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, peer)) => {
                    if self.max_connections > 0 && self.live >= self.max_connections {
                        // Best effort: the socket is new, its buffer empty.
                        // (In plain text even on a TLS port: no handshake
                        // is spent on a client that cannot stay.)
                        let _ = sock.write(b"-ERR max number of clients reached\r\n");
                        tracing::warn!(%peer, "RESP: max number of clients reached; connection refused");
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let i = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        Token(i + FIRST_CONN),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!("RESP: cannot watch a new connection ({e}); closing it");
                        self.free.push(i);
                        continue;
                    }
                    let io = match &self.tls {
                        None => Transport::plain(sock),
                        Some(config) => match Transport::tls(sock, Arc::clone(config)) {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::warn!(
                                    "RESP: cannot start TLS for a connection ({e}); closing it"
                                );
                                self.free.push(i);
                                continue;
                            }
                        },
                    };
                    self.conns[i] = Some(Conn::new(io, self.next_id));
                    self.next_id += 1;
                    self.live += 1;
                    self.mark_runnable(i);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, most likely: the connection
                    // waits in the backlog. Edge-triggered, the listener
                    // will not fire again for it, so retry on a timer.
                    tracing::warn!(
                        "RESP: accept failed ({e}); retrying in {ACCEPT_RETRY:?}; raise the open-files limit or lower --max-connections if this repeats"
                    );
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Steps 2-4 of the module doc for every runnable connection.
    fn turn(&mut self) {
        let mut turn = Turn::default();
        let ready: Vec<usize> = self.runnable.drain(..).collect();
        for &i in &ready {
            if let Some(Some(c)) = self.conns.get_mut(i) {
                c.queued = false;
                c.paused = false;
                let ctx = Ctx {
                    db: &self.db,
                    limits: &self.limits,
                    auth: self.auth.as_deref(),
                    remote: self.remote.as_deref(),
                };
                run_commands(&ctx, c, &mut self.scratch, &mut turn);
                if let (Some(remote), false) = (&self.remote, c.handoff.is_empty()) {
                    c.waiting = true;
                    c.paused = false;
                    c.handoff_bytes = 0;
                    let commands = std::mem::take(&mut c.handoff);
                    remote.run(commands, self.answers.reply_to(i, c.id));
                }
                if !c.acks.is_empty() {
                    turn.holding.push(i);
                } else {
                    // Nothing of it waits for the commit: answer now.
                    c.flush();
                }
            }
        }
        if turn.max_lsn > 0 {
            if let Err(e) = self.db.commit_through(turn.max_lsn) {
                let mut err = Vec::new();
                db_error(&mut err, &e);
                for &i in &turn.holding {
                    if let Some(Some(c)) = self.conns.get_mut(i) {
                        c.fail_acks(&err);
                    }
                }
            }
            for &i in &turn.holding {
                if let Some(Some(c)) = self.conns.get_mut(i) {
                    c.acks.clear();
                    c.flush();
                }
            }
        }
        if turn.writes > 0 {
            metrics::counter!("keel_writes_total").increment(turn.writes);
        }
        if turn.reads > 0 {
            metrics::counter!("keel_reads_total").increment(turn.reads);
        }
        // Paused connections go first next turn, so a DEL waiting for a
        // turn without pending writes gets one.
        for &i in &ready {
            let Some(Some(c)) = self.conns.get_mut(i) else {
                continue;
            };
            if c.dead || (c.closing && c.unsent() == 0 && !c.waiting && c.resume.is_empty()) {
                self.close(i);
                continue;
            }
            let blocked = c.unsent() > OUTPUT_HIGH_WATER;
            if c.waiting {
                // Runnable again when its answer comes (deliver_answers).
            } else if c.paused && !blocked {
                c.queued = true;
                self.runnable.push_front(i);
            } else if (c.may_read || c.backlog) && !c.closing && !blocked {
                self.mark_runnable(i);
            }
        }
    }

    /// Appends the remote's replies to their connections (those still
    /// open) and lets them run again.
    fn deliver_answers(&mut self) {
        for answer in self.answers.take() {
            let Some(Some(c)) = self.conns.get_mut(answer.conn) else {
                continue;
            };
            if c.id != answer.id {
                continue; // its connection closed; the slot is another's
            }
            let Some(replies) = answer.replies else {
                tracing::warn!(
                    "RESP: commands handed off stopped without an answer; closing their connection"
                );
                self.close(answer.conn);
                continue;
            };
            c.out.extend_from_slice(&replies);
            c.resume = answer.rest;
            c.waiting = false;
            c.last_active = Instant::now();
            c.flush();
            self.mark_runnable(answer.conn);
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut c) = self.conns[i].take() {
            self.live -= 1;
            let _ = self.poll.registry().deregister(&mut c.io.sock);
            c.io.close();
            self.free.push(i);
        }
    }
}

/// Gives back the memory of a buffer that once held a large request or
/// reply, so an idle connection keeps at most [`READ_CHUNK`] of it.
fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > 16 * READ_CHUNK && buf.len() <= READ_CHUNK {
        buf.shrink_to(READ_CHUNK);
    }
}

/// What every connection's commands run against.
struct Ctx<'a> {
    db: &'a Db,
    limits: &'a RespLimits,
    auth: Option<&'a AuthToken>,
    remote: Option<&'a dyn Remote>,
}

/// Runs one parsed command of `c` through the auth gate and the
/// transaction, or executes it. `Err(args)`: it must wait for this turn's
/// commit (it reads what a pending write may change); nothing ran.
fn run_one(
    ctx: &Ctx<'_>,
    c: &mut Conn,
    args: Vec<Vec<u8>>,
    turn: &mut Turn,
) -> Result<(), Vec<Vec<u8>>> {
    let before = c.out.len();
    if auth::resp_gate(ctx.auth, &mut c.authed, &args, &mut c.out) == Gate::Answered {
        c.keep_order(before);
        return Ok(());
    }
    if let Some(remote) = ctx.remote {
        hand_off(ctx.db, remote, c, args);
        return Ok(());
    }
    // EXEC reads and writes, like DEL: it waits until no write of any
    // connection is pending. While a transaction queues, nothing is read.
    let runnable = if args[0].eq_ignore_ascii_case(b"EXEC") {
        c.acks.is_empty() && turn.max_lsn == 0
    } else {
        c.tx.is_some() || can_run(&args, !c.acks.is_empty(), turn.max_lsn > 0)
    };
    if !runnable {
        return Err(args);
    }
    let before = c.out.len();
    let outcome = match transaction::intercept(&mut c.tx, ctx.db, &args, &mut c.out) {
        Some(o) => o,
        None => execute(ctx.db, args, &mut c.out),
    };
    match outcome {
        Outcome::Done => {}
        Outcome::Read => turn.reads += 1,
        Outcome::Deferred(lsn) => {
            c.acks.push((before, c.out.len()));
            turn.max_lsn = turn.max_lsn.max(lsn);
            turn.writes += 1;
        }
        Outcome::Close => c.closing = true,
    }
    Ok(())
}

/// With a [`Remote`]: adds `args` to what `c` hands off if it touches the
/// store (or is the `EXEC` of an open transaction), else runs it here.
fn hand_off(db: &Db, remote: &dyn Remote, c: &mut Conn, args: Vec<Vec<u8>>) {
    let before = c.out.len();
    if c.tx.is_some() && args[0].eq_ignore_ascii_case(b"EXEC") {
        let t = c.tx.take().expect("checked above");
        if let Some(queued) = transaction::queued_for_exec(t, &mut c.out) {
            c.hand_off(Handoff::Exec(queued));
        }
    } else if c.tx.is_none() && remote.takes(&args[0]) {
        c.hand_off(Handoff::Command(args));
    } else {
        // Neither reads nor writes the store (what the remote does not
        // take, and a transaction's queueing: its EXEC is handed off).
        let outcome = match transaction::intercept(&mut c.tx, db, &args, &mut c.out) {
            Some(o) => o,
            None => execute(db, args, &mut c.out),
        };
        if outcome == Outcome::Close {
            c.closing = true;
        }
    }
    c.keep_order(before);
}

/// The next complete command of `c`: the one held back for a commit, or
/// the next the parser finds in its input. `Ok(None)`: more input needed.
fn next_command(ctx: &Ctx<'_>, c: &mut Conn) -> Result<Option<Vec<Vec<u8>>>, super::ProtocolError> {
    if let Some(args) = c.held.take() {
        return Ok(Some(args));
    }
    let unauthenticated = ctx.auth.is_some() && !c.authed;
    c.parser
        .next(&c.inbuf, &mut c.start, ctx.limits, unauthenticated)
}

/// Executes every complete command `c` has buffered, while its unsent
/// output is below the high water. `false`: stop reading for now (a command
/// waits for this turn's commit, or the hand-off is full).
fn run_buffered(ctx: &Ctx<'_>, c: &mut Conn, turn: &mut Turn) -> bool {
    while !c.closing && c.unsent() <= OUTPUT_HIGH_WATER {
        if c.handoff.len() >= HANDOFF_COMMANDS || c.handoff_bytes >= HANDOFF_BYTES {
            return false; // the rest after the answer
        }
        match next_command(ctx, c) {
            Ok(Some(args)) => {
                if let Err(args) = run_one(ctx, c, args, turn) {
                    c.held = Some(args);
                    c.paused = true;
                    return false;
                }
            }
            Ok(None) => break,
            Err(why) => {
                tracing::info!("RESP: protocol error ({why}); closing the connection");
                let before = c.out.len();
                error(&mut c.out, &format!("ERR Protocol error: {why}"));
                c.keep_order(before);
                c.closing = true;
            }
        }
    }
    true
}

/// Reads and executes what connection `c` has, until it would block, is
/// paused for a commit, has read its share, or has too much unsent output.
fn run_commands(ctx: &Ctx<'_>, c: &mut Conn, scratch: &mut [u8], turn: &mut Turn) {
    let limits = ctx.limits;
    let mut reads = 0;
    c.backlog = false;
    if c.waiting || c.resumed() {
        return;
    }
    loop {
        if !run_buffered(ctx, c, turn) {
            return;
        }
        if c.unsent() > OUTPUT_HIGH_WATER {
            c.backlog = !c.closing;
            return;
        }
        if c.closing || !c.may_read {
            return;
        }
        if c.parser.held() + (c.inbuf.len() - c.start) > limits.max_pending {
            // Redis closes such a client silently; a line saying why costs
            // nothing and tells the operator which limit to raise.
            tracing::warn!(
                "RESP: closing a client that reached the query buffer limit ({} bytes)",
                limits.max_pending
            );
            let before = c.out.len();
            error(
                &mut c.out,
                "ERR Protocol error: query buffer limit reached (the command is larger than the largest batch)",
            );
            c.keep_order(before);
            c.closing = true;
            return;
        }
        if reads == READS_PER_TURN {
            return; // still `may_read`: runnable next turn
        }
        if c.start > 0 {
            c.inbuf.drain(..c.start);
            c.start = 0;
            shrink(&mut c.inbuf);
        }
        let got = c.io.read(scratch);
        reads += 1;
        match got {
            Ok(0) => {
                // The client closed its side: answer what was complete.
                c.may_read = false;
                c.closing = true;
            }
            Ok(n) => {
                c.last_active = Instant::now();
                c.inbuf.extend_from_slice(&scratch[..n]);
                // A short read emptied the socket; new bytes raise a new
                // edge (Linux signals every arrival), so skip the read that
                // would only say WouldBlock: one syscall less per request.
                if n < scratch.len() && c.io.drained_by_short_read() {
                    c.may_read = false;
                }
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => c.may_read = false,
                io::ErrorKind::Interrupted => {}
                _ => {
                    c.dead = true;
                    return;
                }
            },
        }
    }
}
