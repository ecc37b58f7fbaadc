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
//!
//! Replies are bounded as on a single node: a remote stops once its
//! replies pass [`OUTPUT_HIGH_WATER`](super::event_loop::OUTPUT_HIGH_WATER)
//! and gives back the commands it did
//! not run ([`Reply::send_part`]); the loop hands them off again once the
//! client has read its replies down below that.

use mio::Waker;
use std::sync::{Arc, Mutex};

/// Runs the commands the event loop hands off.
pub trait Remote: Send + Sync {
    /// Whether command `name` (as sent, any case) must be handed off.
    fn takes(&self, name: &[u8]) -> bool;

    /// Runs `commands` one after another and gives their replies, in order,
    /// to `done` (on any thread, once; never before the writes among them
    /// are acknowledged or refused). Once the replies pass
    /// [`OUTPUT_HIGH_WATER`](super::event_loop::OUTPUT_HIGH_WATER) it should
    /// stop and give back the commands not run ([`Reply::send_part`]).
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
    pub fn send(self, replies: Vec<u8>) {
        self.send_part(replies, Vec::new());
    }

    /// Gives back the replies to the first commands and the commands not
    /// run (`rest`, in order), which the loop hands off again once the
    /// client has read enough.
    pub fn send_part(mut self, replies: Vec<u8>, rest: Vec<Handoff>) {
        self.sent = true;
        self.deliver(Some(replies), rest);
    }

    fn deliver(&self, replies: Option<Vec<u8>>, rest: Vec<Handoff>) {
        let mut done = self.answers.done.lock().unwrap_or_else(|p| p.into_inner());
        done.push(Answer {
            conn: self.conn,
            id: self.id,
            replies,
            rest,
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
            self.deliver(None, Vec::new());
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
    /// The commands not run, to hand off again.
    pub rest: Vec<Handoff>,
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

#[cfg(test)]
mod tests {
    //! The event loop with a remote that answers later, on its own thread.

    use super::*;
    use crate::resp::{RespConfig, RespServer};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Takes GET; answers each with the key as a bulk string after
    /// `delay` (a key starting `big`: the key [`BIG`] times), or drops the
    /// reply unsent for key `drop`; stops past the high water, as a remote
    /// must. Records the size of every hand-off.
    struct Later {
        delay: Duration,
        sizes: Mutex<Vec<usize>>,
        /// GETs answered.
        answered: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Remote for Later {
        fn takes(&self, name: &[u8]) -> bool {
            name.eq_ignore_ascii_case(b"GET")
        }

        fn run(&self, commands: Vec<Handoff>, done: Reply) {
            self.sizes.lock().unwrap().push(commands.len());
            let delay = self.delay;
            let answered = Arc::clone(&self.answered);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let mut out = Vec::new();
                let mut commands = commands.into_iter();
                while out.len() <= crate::resp::event_loop::OUTPUT_HIGH_WATER {
                    match commands.next() {
                        Some(Handoff::Command(args)) if args[1] == b"drop" => return, // done dropped
                        Some(Handoff::Command(args)) if args[1].starts_with(b"big") => {
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            crate::resp::frame::bulk(&mut out, Some(&args[1].repeat(BIG)))
                        }
                        Some(Handoff::Command(args)) => {
                            crate::resp::frame::bulk(&mut out, Some(&args[1]))
                        }
                        Some(Handoff::Reply(r)) => out.extend_from_slice(&r),
                        Some(Handoff::Exec(_)) => unreachable!("no MULTI in these tests"),
                        None => break,
                    }
                }
                done.send_part(out, commands.collect());
            });
        }
    }

    /// A `bigN` key's reply is the key this many times (1 MiB for `big0`).
    const BIG: usize = (1 << 20) / 4;

    fn serve(delay: Duration) -> (RespServer, Arc<Later>, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        let (db, _) = keel::Db::open(t.path(), keel::Options::default()).unwrap();
        let later = Arc::new(Later {
            delay,
            sizes: Mutex::new(Vec::new()),
            answered: Arc::default(),
        });
        let config = RespConfig {
            remote: Some(Arc::clone(&later) as Arc<dyn Remote>),
            ..RespConfig::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = RespServer::start(listener, Arc::new(db), config).unwrap();
        (server, later, t)
    }

    fn connect(server: &RespServer) -> TcpStream {
        let s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Reads until `want` bytes came (or the connection closed).
    fn read_n(s: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        let mut at = 0;
        while at < want {
            match s.read(&mut got[at..]).unwrap() {
                0 => break,
                n => at += n,
            }
        }
        got.truncate(at);
        got
    }

    fn get(key: &str) -> String {
        format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len())
    }

    #[test]
    fn replies_keep_their_order_and_a_hand_off_is_bounded() {
        let (server, later, _t) = serve(Duration::from_millis(20));
        let mut s = connect(&server);
        // A PING after a handed-off GET is answered after it, not before.
        let sent = format!("{}*1\r\n$4\r\nPING\r\n{}", get("a"), get("b"));
        s.write_all(sent.as_bytes()).unwrap();
        let want = b"$1\r\na\r\n+PONG\r\n$1\r\nb\r\n";
        assert_eq!(read_n(&mut s, want.len()), want);
        // 1,200 pipelined GETs: every reply, in order, in hand-offs of at
        // most HANDOFF_COMMANDS.
        let keys: Vec<String> = (0..1200).map(|i| format!("k{i:04}")).collect();
        let sent: String = keys.iter().map(|k| get(k)).collect();
        s.write_all(sent.as_bytes()).unwrap();
        let want: String = keys.iter().map(|k| format!("$5\r\n{k}\r\n")).collect();
        let got = read_n(&mut s, want.len());
        assert_eq!(String::from_utf8_lossy(&got), want);
        let sizes = later.sizes.lock().unwrap().clone();
        let max = crate::resp::event_loop::HANDOFF_COMMANDS;
        assert!(sizes.iter().all(|n| *n <= max), "{sizes:?}");
        // The first: GET a, PING's reply behind it, GET b.
        assert_eq!(sizes[0], 3, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 3 + 1200, "{sizes:?}");
    }

    #[test]
    fn replies_past_the_high_water_wait_for_the_client_to_read() {
        let (server, later, _t) = serve(Duration::ZERO);
        let mut s = connect(&server);
        // 24 GETs of 1 MiB each, pipelined: the remote stops past 4 MiB
        // and the loop hands the rest off again as the client reads.
        let keys: Vec<String> = (0..24).map(|i| format!("big{i:x}")).collect();
        let sent: String = keys.iter().map(|k| get(k)).collect();
        s.write_all(sent.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Unread, at most the high water stays in the server (and what the
        // kernel's socket buffers took): not all 24 MiB.
        let before = later.answered.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            before < keys.len(),
            "all {before} answered before the client read"
        );
        for k in &keys {
            let value = k.repeat(BIG);
            let want = format!("${}\r\n{value}\r\n", value.len());
            let got = read_n(&mut s, want.len());
            assert!(got == want.as_bytes(), "reply to {k} differs");
        }
        let sizes = later.sizes.lock().unwrap().clone();
        assert_eq!(sizes[0], 24, "{sizes:?}");
        assert!(sizes.len() >= 4, "not bounded: {sizes:?}");
        assert_eq!(later.answered.load(std::sync::atomic::Ordering::SeqCst), 24);
    }

    #[test]
    fn a_late_answer_reaches_only_its_connection_and_a_lost_one_closes() {
        let (server, _later, _t) = serve(Duration::from_millis(300));
        // A hangs up while its GET is out: A stays open until the answer
        // (its half-closed client may still read), B is served meanwhile.
        let mut a = connect(&server);
        a.write_all(get("secret").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(a);
        std::thread::sleep(Duration::from_millis(50));
        let mut b = connect(&server);
        b.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(read_n(&mut b, 7), b"+PONG\r\n");
        // After A's answer came back, B got nothing of it.
        std::thread::sleep(Duration::from_millis(500));
        b.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut more = [0u8; 64];
        match b.read(&mut more) {
            Ok(n) => panic!("B got {:?}", String::from_utf8_lossy(&more[..n])),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            ),
        }
        // A hand-off that is never answered closes its connection.
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        b.write_all(get("drop").as_bytes()).unwrap();
        assert_eq!(read_n(&mut b, 1), b"", "the connection stayed open");
    }
}
