//! Proxies the cluster torture puts between the nodes, so it can cut the
//! links between chosen nodes (a network partition) without touching the
//! machine's firewall.
//!
//! Each node gets a proxy port, and `--peers` names the proxies: every
//! node-to-node request (Raft RPCs, forwarded client requests) goes to the
//! target's proxy. A node's requests carry its id (`x-keel-from`), and one
//! connection of a node's pooled client only ever carries that node's
//! requests, so the proxy reads the first request's head, learns the
//! sender, and then copies bytes both ways. Cutting a link closes every
//! connection that crosses it and refuses new ones (closed after the head:
//! the sender sees a reset, as after a real partition's timeout, only
//! sooner). Clients of the harness talk to the nodes' own ports.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest request head read to find the sender.
const MAX_HEAD: usize = 64 << 10;

/// One proxied connection: its link and both sockets.
struct Link {
    from: u64,
    to: u64,
    sockets: [TcpStream; 2],
    done: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    /// (from, to): requests from `from` to `to` are refused.
    cut: Mutex<BTreeSet<(u64, u64)>>,
    links: Mutex<Vec<Link>>,
    stop: AtomicBool,
}

impl State {
    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }
}

/// One proxy per node.
pub struct LinkProxies {
    state: Arc<State>,
    /// Each node's proxy port, in node order.
    pub ports: Vec<u16>,
}

impl LinkProxies {
    /// Starts a proxy for each `(node id, node's own port)`.
    pub fn start(nodes: &[(u64, u16)]) -> anyhow::Result<LinkProxies> {
        let state = Arc::new(State::default());
        let mut ports = Vec::new();
        for &(id, port) in nodes {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            ports.push(listener.local_addr()?.port());
            let st = Arc::clone(&state);
            std::thread::spawn(move || accept_loop(listener, id, port, st));
        }
        Ok(LinkProxies { state, ports })
    }

    /// Cuts every link between `node` and the others, both ways, closing
    /// the connections that cross them.
    pub fn isolate(&self, node: u64, all: &[u64]) {
        {
            let mut cut = self.state.cut.lock().unwrap();
            for &other in all.iter().filter(|&&o| o != node) {
                cut.insert((node, other));
                cut.insert((other, node));
            }
        }
        let links = self.state.links.lock().unwrap();
        for l in links.iter().filter(|l| self.state.is_cut(l.from, l.to)) {
            for s in &l.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.state.cut.lock().unwrap().clear();
    }
}

impl Drop for LinkProxies {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for l in self.state.links.lock().unwrap().iter() {
            for s in &l.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, to: u64, port: u16, state: Arc<State>) {
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let st = Arc::clone(&state);
                std::thread::spawn(move || {
                    let _ = relay(conn, to, port, &st);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The sender named in a request head (`x-keel-from`), 0 if none.
fn sender(head: &[u8]) -> u64 {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("x-keel-from"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads the first request's head, then copies both ways until either
/// side closes (or the link is cut).
fn relay(mut conn: TcpStream, to: u64, port: u16, state: &State) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let from = sender(&head);
    if state.is_cut(from, to) {
        return conn.shutdown(Shutdown::Both);
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", port))?;
    upstream.set_nodelay(true)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(None)?;
    upstream.write_all(&head)?;
    let done = Arc::new(AtomicBool::new(false));
    {
        let mut links = state.links.lock().unwrap();
        links.retain(|l| !l.done.load(Ordering::SeqCst));
        links.push(Link {
            from,
            to,
            sockets: [conn.try_clone()?, upstream.try_clone()?],
            done: Arc::clone(&done),
        });
    }
    // A cut between the check and the registration above is caught here.
    if state.is_cut(from, to) {
        let _ = upstream.shutdown(Shutdown::Both);
        return conn.shutdown(Shutdown::Both);
    }
    let (mut back_from, mut back_to) = (upstream.try_clone()?, conn.try_clone()?);
    let answers = std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
        let _ = back_to.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut conn, &mut upstream);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = answers.join();
    done.store(true, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sender_is_read_from_the_request_head() {
        let head = b"POST /raft/append HTTP/1.1\r\nhost: x\r\nX-Keel-From: 3\r\n\r\n";
        assert_eq!(sender(head), 3);
        assert_eq!(sender(b"GET / HTTP/1.1\r\n\r\n"), 0);
    }

    /// A cut link closes its open connection and refuses new ones; a
    /// healed one carries requests again.
    #[test]
    fn a_cut_link_closes_and_refuses_connections_until_healed() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in server.incoming() {
                let mut conn = conn.unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(b"ok").is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxies = LinkProxies::start(&[(2, port)]).unwrap();
        let request = b"POST /raft/vote HTTP/1.1\r\nx-keel-from: 1\r\n\r\n";
        let ask = |c: &mut TcpStream| -> bool {
            let mut buf = [0u8; 2];
            c.write_all(request).is_ok() && c.read_exact(&mut buf).is_ok()
        };
        let connect = || {
            let c = TcpStream::connect(("127.0.0.1", proxies.ports[0])).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        };
        let mut open = connect();
        assert!(ask(&mut open));
        proxies.isolate(2, &[1, 2, 3]);
        assert!(!ask(&mut open), "the open connection must be closed");
        assert!(!ask(&mut connect()), "a new one must be refused");
        proxies.heal();
        assert!(ask(&mut connect()));
    }
}
