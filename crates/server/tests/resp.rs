//! The Redis protocol listener of the real binary, with a raw client (exact
//! replies, pipelining, protocol errors), the `redis` crate, and redis-cli
//! when it is installed.

mod common;

use common::*;
use keel_server::resp::frame::{encode_command, reply_len};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

struct Resp {
    _t: tempfile::TempDir,
    server: Server,
    port: u16,
}

/// `keel serve` on `dir` with the RESP listener on a port of its own, the
/// environment `env` and the extra flags: (server, RESP port).
fn serve_resp(dir: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> (Server, u16) {
    let cfg = config(dir, "");
    let port = free_port();
    let p = port.to_string();
    let mut args = vec!["--resp-port", p.as_str()];
    args.extend_from_slice(extra);
    (Server::start_with(dir, &cfg, env, &args), port)
}

fn start_resp(t: tempfile::TempDir) -> Resp {
    let (server, port) = serve_resp(t.path(), &[], &[]);
    Resp {
        _t: t,
        server,
        port,
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    encode_command(args)
}

/// Reads exactly one reply (any RESP2 type) and returns its raw bytes.
fn read_reply(s: &mut TcpStream, pending: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some(n) = reply_len(pending) {
            return pending.drain(..n).collect();
        }
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed while waiting for a reply");
        pending.extend_from_slice(&buf[..n]);
    }
}

fn ask(s: &mut TcpStream, args: &[&[u8]]) -> Vec<u8> {
    s.write_all(&cmd(args)).unwrap();
    read_reply(s, &mut Vec::new())
}

#[test]
fn commands_answer_exactly_like_redis() {
    let r = start_resp(tempfile::tempdir().unwrap());
    let mut s = connect(r.port);
    assert_eq!(ask(&mut s, &[b"PING"]), b"+PONG\r\n");
    assert_eq!(ask(&mut s, &[b"ping", b"hi"]), b"$2\r\nhi\r\n");
    assert_eq!(ask(&mut s, &[b"ECHO", b"x y"]), b"$3\r\nx y\r\n");
    assert_eq!(ask(&mut s, &[b"SET", b"k", b"v\r\n\x00bin"]), b"+OK\r\n");
    assert_eq!(ask(&mut s, &[b"GET", b"k"]), b"$7\r\nv\r\n\x00bin\r\n");
    assert_eq!(ask(&mut s, &[b"GET", b"missing"]), b"$-1\r\n");
    assert_eq!(ask(&mut s, &[b"MSET", b"a", b"1", b"b", b"2"]), b"+OK\r\n");
    assert_eq!(
        ask(&mut s, &[b"MGET", b"a", b"nope", b"b"]),
        b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"
    );
    assert_eq!(ask(&mut s, &[b"EXISTS", b"a", b"b", b"nope"]), b":2\r\n");
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":3\r\n");
    assert_eq!(ask(&mut s, &[b"DEL", b"a", b"nope"]), b":1\r\n");
    assert_eq!(ask(&mut s, &[b"SELECT", b"0"]), b"+OK\r\n");
    assert!(ask(&mut s, &[b"SELECT", b"1"]).starts_with(b"-ERR"));
    assert_eq!(ask(&mut s, &[b"COMMAND", b"DOCS"]), b"*0\r\n");
    assert_eq!(
        ask(&mut s, &[b"CONFIG", b"GET", b"appendonly"]),
        b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    );
    assert!(String::from_utf8(ask(&mut s, &[b"INFO"]))
        .unwrap()
        .contains("db0:keys=2"));
    assert!(ask(&mut s, &[b"HELLO", b"3"]).starts_with(b"-NOPROTO"));
    // Errors keep the connection usable and store nothing.
    let e = ask(&mut s, &[b"SET", b"x", b"1", b"EX", b"10"]);
    assert!(
        e.starts_with(b"-ERR syntax error"),
        "{}",
        String::from_utf8_lossy(&e)
    );
    assert_eq!(ask(&mut s, &[b"GET", b"x"]), b"$-1\r\n");
    let e = ask(&mut s, &[b"GET"]);
    assert_eq!(e, b"-ERR wrong number of arguments for 'get' command\r\n");
    let e = ask(&mut s, &[b"NOSUCH", b"arg"]);
    assert!(
        e.starts_with(b"-ERR unknown command 'NOSUCH'"),
        "{}",
        String::from_utf8_lossy(&e)
    );
    assert_eq!(ask(&mut s, &[b"FLUSHALL"]), b"+OK\r\n");
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":0\r\n");
    assert_eq!(ask(&mut s, &[b"QUIT"]), b"+OK\r\n");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "QUIT did not close");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let r = start_resp(tempfile::tempdir().unwrap());
    let mut s = connect(r.port);
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend(cmd(&[
            b"SET",
            format!("p{i}").as_bytes(),
            format!("{i}").as_bytes(),
        ]));
    }
    batch.extend(cmd(&[b"GET", b"p499"]));
    batch.extend(b"PING\r\n"); // inline
    s.write_all(&batch).unwrap();
    let mut pending = Vec::new();
    for _ in 0..500 {
        assert_eq!(read_reply(&mut s, &mut pending), b"+OK\r\n");
    }
    assert_eq!(read_reply(&mut s, &mut pending), b"$3\r\n499\r\n");
    assert_eq!(read_reply(&mut s, &mut pending), b"+PONG\r\n");
}

#[test]
fn a_pipeline_reads_its_own_writes_in_order() {
    let r = start_resp(tempfile::tempdir().unwrap());
    let mut s = connect(r.port);
    let steps: [(&[&[u8]], &[u8]); 10] = [
        (&[b"SET", b"k", b"1"], b"+OK\r\n"),
        (&[b"GET", b"k"], b"$1\r\n1\r\n"),
        (&[b"SET", b"k", b"2"], b"+OK\r\n"),
        (&[b"MSET", b"k", b"3", b"j", b"4"], b"+OK\r\n"),
        (&[b"MGET", b"k", b"j"], b"*2\r\n$1\r\n3\r\n$1\r\n4\r\n"),
        (&[b"DEL", b"k", b"j", b"none"], b":2\r\n"),
        (&[b"EXISTS", b"k", b"j"], b":0\r\n"),
        (&[b"SET", b"z", b"9"], b"+OK\r\n"),
        (&[b"FLUSHDB"], b"+OK\r\n"),
        (&[b"DBSIZE"], b":0\r\n"),
    ];
    let mut pipeline = Vec::new();
    for (c, _) in &steps {
        pipeline.extend(cmd(c));
    }
    s.write_all(&pipeline).unwrap();
    let mut pending = Vec::new();
    for (c, want) in &steps {
        let got = read_reply(&mut s, &mut pending);
        assert_eq!(
            got,
            *want,
            "{:?}: got {}",
            String::from_utf8_lossy(&c.concat()),
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn many_clients_each_see_their_own_writes_and_del_counts_agree() {
    let r = start_resp(tempfile::tempdir().unwrap());
    let port = r.port;
    let hs: Vec<_> = (0..16)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(port);
                for i in 0..60 {
                    let k = format!("c{c}");
                    let v = format!("{i}");
                    // Pipelined: write, read back, delete, delete again.
                    let mut p = cmd(&[b"SET", k.as_bytes(), v.as_bytes()]);
                    p.extend(cmd(&[b"GET", k.as_bytes()]));
                    p.extend(cmd(&[b"DEL", k.as_bytes()]));
                    p.extend(cmd(&[b"DEL", k.as_bytes()]));
                    s.write_all(&p).unwrap();
                    let mut pending = Vec::new();
                    assert_eq!(read_reply(&mut s, &mut pending), b"+OK\r\n");
                    let want = format!("${}\r\n{v}\r\n", v.len());
                    assert_eq!(read_reply(&mut s, &mut pending), want.as_bytes());
                    assert_eq!(read_reply(&mut s, &mut pending), b":1\r\n");
                    assert_eq!(read_reply(&mut s, &mut pending), b":0\r\n");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let mut s = connect(port);
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn a_client_that_does_not_read_is_held_back_and_served_in_full() {
    let r = start_resp(tempfile::tempdir().unwrap());
    let mut s = connect(r.port);
    let value = vec![b'x'; 4096];
    assert_eq!(ask(&mut s, &[b"SET", b"big", &value]), b"+OK\r\n");
    // One write of 2,000 GETs (52 KB in, 8 MB out): the server reads it at
    // once, stops executing at its output limit with complete commands
    // left, and must resume them as the client drains, though the socket
    // brings nothing new.
    let burst = cmd(&[b"GET", b"big"]).repeat(2000);
    s.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let want = format!("${}\r\n", value.len());
    let mut pending = Vec::new();
    for i in 0..2000 {
        let got = read_reply(&mut s, &mut pending);
        assert!(
            got.starts_with(want.as_bytes()) && got.len() == want.len() + value.len() + 2,
            "burst reply {i}"
        );
    }
    // About 40 MiB of replies requested before reading any: the server
    // must stop reading this client rather than buffer without bound, and
    // still answer every request once the client reads.
    let n = 10_000;
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let one = cmd(&[b"GET", b"big"]);
            for _ in 0..n {
                w.write_all(&one).unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut other = connect(r.port);
    assert_eq!(
        ask(&mut other, &[b"PING"]),
        b"+PONG\r\n",
        "one stalled client blocked another"
    );
    for i in 0..n {
        let got = read_reply(&mut s, &mut pending);
        assert!(
            got.starts_with(want.as_bytes()) && got.len() == want.len() + value.len() + 2,
            "reply {i}"
        );
    }
    writer.join().unwrap();
}

#[test]
fn a_failed_fsync_answers_writes_with_an_error_and_reads_go_on() {
    let t = tempfile::tempdir().unwrap();
    let (_server, port) = serve_resp(t.path(), &[("KEEL_FAULT", "sync:40:eio")], &[]);
    let mut s = connect(port);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let reply = ask(&mut s, &[b"SET", format!("k{i}").as_bytes(), b"v"]);
        if reply == b"+OK\r\n" {
            acked.push(i);
        } else {
            refused = Some(String::from_utf8_lossy(&reply).into_owned());
            break;
        }
    }
    let msg = refused.expect("the injected fsync failure never surfaced");
    assert!(
        msg.starts_with("-ERR") && msg.contains("stopped") && msg.contains("restart"),
        "{msg}"
    );
    // Later writes are refused at once, pipelined or not; reads go on.
    let mut p = cmd(&[b"SET", b"after", b"v"]);
    p.extend(cmd(&[b"MSET", b"a", b"1"]));
    p.extend(cmd(&[b"GET", b"k0"]));
    s.write_all(&p).unwrap();
    let mut pending = Vec::new();
    assert!(read_reply(&mut s, &mut pending).starts_with(b"-ERR the log is stopped"));
    assert!(read_reply(&mut s, &mut pending).starts_with(b"-ERR the log is stopped"));
    assert_eq!(read_reply(&mut s, &mut pending), b"$1\r\nv\r\n");
    for i in &acked {
        assert_eq!(
            ask(&mut s, &[b"GET", format!("k{i}").as_bytes()]),
            b"$1\r\nv\r\n"
        );
    }
}

#[test]
fn sigterm_with_open_resp_connections_exits_cleanly_and_keeps_the_writes() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "sync = \"interval:1h\"\n");
    let port = free_port();
    let mut server = Server::start_with(t.path(), &cfg, &[], &["--resp-port", &port.to_string()]);
    let mut s = connect(port);
    for i in 0..50 {
        assert_eq!(
            ask(&mut s, &[b"SET", format!("k{i}").as_bytes(), b"v"]),
            b"+OK\r\n"
        );
    }
    let st = server.term();
    assert!(st.success(), "exit status {st:?}: {}", server.stderr());
    assert!(
        server.stderr().contains("stopped cleanly"),
        "{}",
        server.stderr()
    );
    let port = free_port();
    let _server = Server::start_with(t.path(), &cfg, &[], &["--resp-port", &port.to_string()]);
    let mut s = connect(port);
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":50\r\n");
}

#[test]
fn malformed_or_oversized_frames_close_the_connection_and_store_nothing() {
    let r = start_resp(tempfile::tempdir().unwrap());
    for bad in [
        &b"*1\r\n$99999999999\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n:5\r\n",
        b"*1\r\n$3\r\nGETX\r\n",
        b"*1\r\n$-1\r\n",
    ] {
        let mut s = connect(r.port);
        s.write_all(bad).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("-ERR Protocol error"), "{bad:?}: {out}");
    }
    let mut s = connect(r.port);
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn an_http_request_on_the_resp_port_is_closed_unexecuted() {
    let r = start_resp(tempfile::tempdir().unwrap());
    // What a web page can make a browser send to 127.0.0.1:<resp port>.
    let attack = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\nSET pwned 1\r\nFLUSHALL\r\n";
    let mut s = connect(r.port);
    s.write_all(attack).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let mut s = connect(r.port);
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":0\r\n");
    // Inline commands parse quotes as Redis does.
    s.write_all(b"SET \"a b\" \"c d\"\r\n").unwrap();
    assert_eq!(read_reply(&mut s, &mut Vec::new()), b"+OK\r\n");
    assert_eq!(ask(&mut s, &[b"GET", b"a b"]), b"$3\r\nc d\r\n");
    assert_eq!(
        ask(&mut s, &[b"FLUSHALL", b"BOGUS"]),
        b"-ERR syntax error\r\n"
    );
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":1\r\n");
}

#[test]
fn with_a_token_a_connection_must_auth_first() {
    let t = tempfile::tempdir().unwrap();
    let (_server, port) = serve_resp(
        t.path(),
        &[("KEEL_AUTH_TOKEN", "resp-token-0123456789")],
        &[],
    );
    let mut s = connect(port);
    assert_eq!(
        ask(&mut s, &[b"SET", b"k", b"v"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert!(ask(&mut s, &[b"AUTH", b"wrong"]).starts_with(b"-WRONGPASS"));
    assert_eq!(
        ask(&mut s, &[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        ask(&mut s, &[b"AUTH", b"default", b"resp-token-0123456789"]),
        b"+OK\r\n"
    );
    assert_eq!(ask(&mut s, &[b"SET", b"k", b"v"]), b"+OK\r\n");
    // The redis crate with the password in its URL, as applications do.
    let client =
        redis::Client::open(format!("redis://:resp-token-0123456789@127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    let mut other = connect(port);
    assert_eq!(
        ask(&mut other, &[b"DBSIZE"]),
        b"-NOAUTH Authentication required.\r\n"
    );
}

#[test]
fn multi_exec_applies_as_one_batch_and_survives_sigkill() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let mut r = start_resp(t);
    let mut s = connect(r.port);
    assert_eq!(ask(&mut s, &[b"MULTI"]), b"+OK\r\n");
    assert_eq!(ask(&mut s, &[b"SET", b"a", b"1"]), b"+QUEUED\r\n");
    assert_eq!(ask(&mut s, &[b"SET", b"b", b"2"]), b"+QUEUED\r\n");
    assert_eq!(ask(&mut s, &[b"GET", b"a"]), b"+QUEUED\r\n");
    assert_eq!(ask(&mut s, &[b"EXEC"]), b"*3\r\n+OK\r\n+OK\r\n$1\r\n1\r\n");
    assert!(ask(&mut s, &[b"WATCH", b"a"]).starts_with(b"-ERR WATCH is not supported"));
    r.server.kill9();
    let (_server, port) = serve_resp(&dir, &[], &[]);
    let mut s = connect(port);
    assert_eq!(
        ask(&mut s, &[b"MGET", b"a", b"b"]),
        b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n"
    );
}

#[test]
fn acknowledged_sets_survive_sigkill() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let mut r = start_resp(t);
    let port = r.port;
    let hs: Vec<_> = (0..10)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(port);
                for i in 0..100 {
                    let reply = ask(&mut s, &[b"SET", format!("c{c}-{i}").as_bytes(), b"v"]);
                    assert_eq!(reply, b"+OK\r\n");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    r.server.kill9();
    let (_server, port) = serve_resp(&dir, &[], &[]);
    let mut s = connect(port);
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), b":1000\r\n");
}

#[test]
fn the_redis_crate_client_works() {
    let r = start_resp(tempfile::tempdir().unwrap());
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", r.port)).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("name")
        .arg("keel")
        .query(&mut con)
        .unwrap();
    let v: String = redis::cmd("GET").arg("name").query(&mut con).unwrap();
    assert_eq!(v, "keel");
    let _: () = redis::cmd("MSET")
        .arg("a")
        .arg(1)
        .arg("b")
        .arg(2)
        .query(&mut con)
        .unwrap();
    let v: Vec<Option<i64>> = redis::cmd("MGET")
        .arg("a")
        .arg("b")
        .arg("c")
        .query(&mut con)
        .unwrap();
    assert_eq!(v, vec![Some(1), Some(2), None]);
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    pipe.cmd("DBSIZE");
    let (n,): (i64,) = pipe.query(&mut con).unwrap();
    assert_eq!(n, 53);
    let deleted: i64 = redis::cmd("DEL").arg("a").arg("b").query(&mut con).unwrap();
    assert_eq!(deleted, 2);
}

#[test]
fn redis_cli_works_when_installed() {
    let Ok(out) = std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
    else {
        println!("redis-cli not installed (Debian package redis-tools): skipped");
        return;
    };
    assert!(out.status.success());
    let r = start_resp(tempfile::tempdir().unwrap());
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &r.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello world");
    assert_eq!(cli(&["DBSIZE"]), "1");
    assert!(cli(&["INFO"]).contains("keel_version"));
    let _ = &r.server;
}

#[test]
fn connections_are_capped_and_idle_ones_closed_on_both_listeners() {
    let t = tempfile::tempdir().unwrap();
    let (server, port) = serve_resp(
        t.path(),
        &[],
        &["--max-connections", "3", "--idle-timeout", "400ms"],
    );
    for (listener, over) in [
        (port, &b"-ERR max number of clients reached"[..]),
        (server.port, b"HTTP/1.1 503"),
    ] {
        let idle: Vec<TcpStream> = (0..3).map(|_| connect(listener)).collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = connect(listener);
        let mut got = Vec::new();
        extra.read_to_end(&mut got).unwrap();
        assert!(got.starts_with(over), "{}", String::from_utf8_lossy(&got));
        // Idle past the timeout: closed by the server, room again.
        for mut c in idle {
            let mut b = Vec::new();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(
                c.read_to_end(&mut b).unwrap(),
                0,
                "an idle connection was kept"
            );
        }
    }
    let mut s = connect(port);
    assert_eq!(ask(&mut s, &[b"PING"]), b"+PONG\r\n");
    let (st, _) = raw(
        server.port,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(st, 200);
}

#[test]
fn accept_resumes_after_running_out_of_descriptors() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "");
    let (http, resp) = (free_port(), free_port());
    // A cap above the open-files limit, so accept itself runs out.
    let script = format!(
        "ulimit -n 96 && exec '{BIN}' serve --port {http} --resp-port {resp} --max-connections 1000 --working-dir '{}' --config '{}'",
        t.path().join("data").display(),
        cfg.display()
    );
    let mut child = std::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while raw(
        http,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // More clients than descriptors: the last ones wait in the backlog.
    let mut many: Vec<TcpStream> = (0..150).map(|_| connect(resp)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut s = many.pop().unwrap();
    drop(many);
    // Descriptors are free again, and no new client arrives (a new arrival
    // would wake the edge-triggered listener by itself): the one left
    // waiting in the backlog must be accepted and served.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ask(&mut s, &[b"SET", b"k", b"v"]), b"+OK\r\n");
    assert_eq!(ask(&mut s, &[b"GET", b"k"]), b"$1\r\nv\r\n");
    let _ = child.kill();
    let _ = child.wait();
}

/// User plus system CPU time of process `pid` so far (Linux `/proc`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    let ticks = rustix::param::clock_ticks_per_second();
    Duration::from_millis((f[0] + f[1]) * 1000 / ticks)
}

#[test]
fn a_large_command_sent_slowly_costs_what_it_costs_sent_at_once() {
    // An 8 MB MSET dripped in 2 KiB reads: re-parsing the buffered command
    // on every read (as once done) scans about 16 GB, many seconds of CPU;
    // the incremental parser takes each byte once. CPU time, not wall time,
    // so a loaded machine does not make it flaky. Here: 0.7 s, most of it
    // the MSET itself; 10 s with the old parser.
    let r = start_resp(tempfile::tempdir().unwrap());
    let pid = r.server.child.as_ref().unwrap().id();
    let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
    for i in 0..400_000u32 {
        args.push(format!("key:{i:08}").into_bytes());
        args.push(b"v".to_vec());
    }
    let wire = encode_command(&args);
    assert!(wire.len() > 8_000_000);
    let mut other = connect(r.port);
    let before = cpu_time(pid);
    let mut s = connect(r.port);
    s.set_nodelay(true).unwrap();
    for (n, chunk) in wire.chunks(2048).enumerate() {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_micros(150));
        if n % 1000 == 0 {
            assert_eq!(ask(&mut other, &[b"PING"]), b"+PONG\r\n");
        }
    }
    assert_eq!(read_reply(&mut s, &mut Vec::new()), b"+OK\r\n");
    let spent = cpu_time(pid) - before;
    eprintln!("server CPU for an 8 MB MSET in 2 KiB reads: {spent:?}");
    assert_eq!(ask(&mut other, &[b"DBSIZE"]), b":400000\r\n");
    assert!(
        spent < Duration::from_secs(3),
        "the server spent {spent:?} of CPU on one slowly sent command"
    );
}

/// `--memtable-size 64KiB`: writes flush into tables and compact; INFO's
/// `# Tables` section and `/metrics` show the levels; DBSIZE stays exact;
/// after kill -9 every acknowledged write is read back.
#[test]
fn a_store_on_tables_serves_flushes_compacts_and_survives_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let flags = ["--memtable-size", "64KiB", "--cache-size", "1MiB"];
    let (mut server, port) = serve_resp(t.path(), &[], &flags);
    let mut s = connect(port);
    let value = vec![b'v'; 200];
    for round in 0..4u32 {
        let mut pipeline = Vec::new();
        for i in 0..1000u32 {
            let key = format!("key:{:05}", (i * 7 + round * 13) % 3000);
            pipeline.extend(cmd(&[b"SET", key.as_bytes(), &value]));
        }
        s.write_all(&pipeline).unwrap();
        let mut pending = Vec::new();
        for _ in 0..1000 {
            assert_eq!(read_reply(&mut s, &mut pending), b"+OK\r\n");
        }
    }
    assert_eq!(
        ask(&mut s, &[b"DEL", b"key:00000", b"key:00001"]),
        b":2\r\n"
    );
    // Flushes run in the background: wait for the last frozen memtable
    // (the writes above are acknowledged; their flush may still run).
    let mut info = String::new();
    for _ in 0..200 {
        info = String::from_utf8(ask(&mut s, &[b"INFO"])).unwrap();
        if info.contains("frozen_memtables:0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(info.contains("# Tables"), "{info}");
    assert!(info.contains("key_count:exact"), "{info}");
    let flushes: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("flushes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(flushes >= 5, "{info}");
    assert!(info.contains("level1:tables="), "{info}");
    let (_, metrics) = raw(
        server.port,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    for name in [
        "keel_level_tables{level=\"0\"}",
        "keel_memtable_bytes",
        "keel_write_amplification",
        "keel_block_cache_hit_ratio",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    let keys = ask(&mut s, &[b"DBSIZE"]);
    let distinct = (0..4u32)
        .flat_map(|r| (0..1000u32).map(move |i| (i * 7 + r * 13) % 3000))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(keys, format!(":{}\r\n", distinct - 2).into_bytes());
    server.kill9();
    let cfg = config(t.path(), "");
    server = Server::start_with(
        t.path(),
        &cfg,
        &[],
        &[&["--resp-port", &port.to_string()], &flags[..]].concat(),
    );
    let mut s = connect(port);
    assert_eq!(ask(&mut s, &[b"DBSIZE"]), keys);
    assert_eq!(ask(&mut s, &[b"EXISTS", b"key:00000"]), b":0\r\n");
    let got = ask(&mut s, &[b"GET", b"key:00007"]);
    assert!(got.ends_with(&[&value[..], b"\r\n"].concat()), "{got:?}");
    drop(server);
}
