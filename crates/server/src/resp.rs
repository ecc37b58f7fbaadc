//! The Redis protocol (RESP2) listener: `keel serve --resp-port P`.
//!
//! Same engine and durability as HTTP: a write's reply is sent only once the
//! write is durable under the sync policy. Pipelining: every complete frame
//! in the read buffer is executed in order and the replies written in order,
//! then flushed together.
//!
//! Commands: PING, ECHO, SET (plain; NX/XX/EX/PX answer a clear error), GET,
//! DEL, EXISTS, MSET (one atomic batch), MGET, FLUSHDB/FLUSHALL (durable
//! clear), DBSIZE, INFO, SELECT 0, QUIT, and what redis-cli and
//! redis-benchmark send at start: COMMAND (an empty reply), CONFIG GET,
//! HELLO (a clear NOPROTO error: only RESP2 is spoken).
//!
//! Errors: unknown commands and wrong arity get `-ERR` and the connection
//! stays usable (the frame boundary is known); a malformed frame or a bulk
//! string over the limit gets `-ERR Protocol error` and the connection is
//! closed (the boundary is lost). Nothing is stored by a refused command.

use keel::{Db, WriteBatch};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Longest bulk string accepted.
    pub max_bulk: usize,
    /// Most arguments in one command.
    pub max_args: usize,
    /// Most unparsed bytes buffered for one connection.
    pub max_pending: usize,
}

impl RespLimits {
    /// Limits that fit the store's options.
    pub fn for_db(db: &Db) -> Self {
        let o = db.options();
        RespLimits {
            max_bulk: o.max_value_len.max(o.max_key_len),
            max_args: 1 << 20,
            max_pending: o.max_batch_bytes.saturating_add(1 << 20),
        }
    }
}

/// Why a frame could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not enough bytes yet.
    Incomplete,
    /// The bytes are not RESP (or over a limit): the connection must close.
    Protocol(String),
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn parse_int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses one command (an array of bulk strings, or an inline line) from
/// the start of `buf`: the arguments and the bytes consumed.
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Result<(Vec<Vec<u8>>, usize), FrameError> {
    let Some(&first) = buf.first() else {
        return Err(FrameError::Incomplete);
    };
    if first != b'*' {
        // Inline command (telnet, redis-cli in some modes): one line.
        let Some(end) = find_crlf(buf, 0).or_else(|| buf.iter().position(|&b| b == b'\n')) else {
            if buf.len() > 64 * 1024 {
                return Err(FrameError::Protocol("too big inline request".into()));
            }
            return Err(FrameError::Incomplete);
        };
        let line = &buf[..end];
        let consumed = if buf.get(end) == Some(&b'\r') {
            end + 2
        } else {
            end + 1
        };
        let args = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Ok((args, consumed));
    }
    let end = find_crlf(buf, 1).ok_or(FrameError::Incomplete)?;
    let n = parse_int(&buf[1..end])
        .ok_or_else(|| FrameError::Protocol("invalid multibulk length".into()))?;
    if n < 0 || n as usize > limits.max_args {
        return Err(FrameError::Protocol("invalid multibulk length".into()));
    }
    let mut pos = end + 2;
    let mut args = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        match buf.get(pos) {
            None => return Err(FrameError::Incomplete),
            Some(b'$') => {}
            Some(&c) => {
                return Err(FrameError::Protocol(format!(
                    "expected '$', got '{}'",
                    char::from(c).escape_default()
                )))
            }
        }
        let end = find_crlf(buf, pos + 1).ok_or(FrameError::Incomplete)?;
        let len = parse_int(&buf[pos + 1..end])
            .ok_or_else(|| FrameError::Protocol("invalid bulk length".into()))?;
        if len < 0 || len as usize > limits.max_bulk {
            return Err(FrameError::Protocol("invalid bulk length".into()));
        }
        let start = end + 2;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Err(FrameError::Incomplete);
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(FrameError::Protocol(
                "bulk string not followed by CRLF".into(),
            ));
        }
        args.push(buf[start..stop].to_vec());
        pos = stop + 2;
    }
    Ok((args, pos))
}

fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn error(out: &mut Vec<u8>, s: &str) {
    out.push(b'-');
    // An error line must not contain CR or LF.
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn integer(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
}

fn bulk(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn array_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(format!("*{n}\r\n").as_bytes());
}

fn db_error(out: &mut Vec<u8>, e: keel::Error) {
    if e.is_stopped() {
        error(out, &format!("ERR the log is stopped and refuses writes ({e}); reads still work; restart the server"));
    } else {
        error(out, &format!("ERR {e}"));
    }
}

/// Whether the connection should close after this command.
enum After {
    Continue,
    Close,
}

async fn execute(db: &Db, args: Vec<Vec<u8>>, out: &mut Vec<u8>) -> After {
    let Some(name) = args.first() else {
        return After::Continue;
    };
    let cmd = String::from_utf8_lossy(name).to_ascii_uppercase();
    let argc = args.len();
    let arity = |out: &mut Vec<u8>| {
        error(
            out,
            &format!(
                "ERR wrong number of arguments for '{}' command",
                cmd.to_ascii_lowercase()
            ),
        );
    };
    match cmd.as_str() {
        "PING" => match argc {
            1 => simple(out, "PONG"),
            2 => bulk(out, Some(&args[1])),
            _ => arity(out),
        },
        "ECHO" if argc == 2 => bulk(out, Some(&args[1])),
        "QUIT" => {
            simple(out, "OK");
            return After::Close;
        }
        "SELECT" if argc == 2 => {
            if args[1] == b"0" {
                simple(out, "OK")
            } else {
                error(out, "ERR DB index is out of range (keel has one database, 0)")
            }
        }
        "SET" if argc == 3 => match db.put_async(&args[1], &args[2]).await {
            Ok(_) => simple(out, "OK"),
            Err(e) => db_error(out, e),
        },
        "SET" if argc > 3 => error(out, "ERR syntax error: SET options (NX, XX, EX, PX, KEEPTTL, GET) are not supported by keel; use plain SET key value"),
        "GET" if argc == 2 => match db.get(&args[1]) {
            Ok(v) => bulk(out, v.as_deref()),
            Err(e) => db_error(out, e),
        },
        "DEL" if argc >= 2 => {
            let mut present = 0;
            let mut batch = WriteBatch::new();
            for k in &args[1..] {
                if matches!(db.get(k), Ok(Some(_))) {
                    present += 1;
                }
                batch.delete(k.clone());
            }
            match db.write_async(batch).await {
                Ok(_) => integer(out, present),
                Err(e) => db_error(out, e),
            }
        }
        "EXISTS" if argc >= 2 => {
            let n = args[1..]
                .iter()
                .filter(|k| matches!(db.get(k), Ok(Some(_))))
                .count();
            integer(out, n as i64)
        }
        "MSET" if argc >= 3 && argc % 2 == 1 => {
            let mut batch = WriteBatch::new();
            for pair in args[1..].chunks(2) {
                batch.put(pair[0].clone(), pair[1].clone());
            }
            match db.write_async(batch).await {
                Ok(_) => simple(out, "OK"),
                Err(e) => db_error(out, e),
            }
        }
        "MGET" if argc >= 2 => {
            array_len(out, argc - 1);
            for k in &args[1..] {
                bulk(out, db.get(k).ok().flatten().as_deref());
            }
        }
        "FLUSHDB" | "FLUSHALL" if argc <= 2 => match db.clear_async().await {
            Ok(_) => simple(out, "OK"),
            Err(e) => db_error(out, e),
        },
        "DBSIZE" if argc == 1 => integer(out, db.len() as i64),
        "INFO" => {
            let st = db.stats();
            let text = format!(
                "# Server\r\nkeel_version:{}\r\n# Keyspace\r\ndb0:keys={}\r\n# Persistence\r\nsync_policy:{:?}\r\napplied_lsn:{}\r\ndurable_lsn:{}\r\nwal_fsyncs:{}\r\nwal_appends:{}\r\nwal_bytes_written:{}\r\nwal_segments:{}\r\ncheckpoint_lsn:{}\r\nstopped:{}\r\nlast_recovery:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                st.keys,
                db.options().sync,
                st.applied_lsn,
                st.durable_lsn,
                st.wal.syncs,
                st.wal.appends,
                st.wal.bytes_written,
                st.log_segments,
                st.checkpoint_lsn.unwrap_or(0),
                st.stopped,
                st.recovery.to_string().replace(['\r', '\n'], " ")
            );
            bulk(out, Some(text.as_bytes()))
        }
        "COMMAND" => array_len(out, 0),
        "CONFIG" if argc == 3 && args[1].eq_ignore_ascii_case(b"GET") => {
            let param = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
            let value = match param.as_str() {
                "save" => Some(""),
                "appendonly" => Some("yes"),
                "appendfsync" => Some(match db.options().sync {
                    keel::SyncPolicy::Always => "always",
                    keel::SyncPolicy::Interval(_) => "everysec",
                    keel::SyncPolicy::Never => "no",
                }),
                "databases" => Some("1"),
                _ => None,
            };
            match value {
                Some(v) => {
                    array_len(out, 2);
                    bulk(out, Some(param.as_bytes()));
                    bulk(out, Some(v.as_bytes()));
                }
                None => array_len(out, 0),
            }
        }
        "HELLO" => error(out, "NOPROTO keel speaks RESP2 only; HELLO is not supported"),
        "ECHO" | "SELECT" | "SET" | "GET" | "DEL" | "EXISTS" | "MSET" | "MGET" | "FLUSHDB"
        | "FLUSHALL" | "DBSIZE" | "CONFIG" => arity(out),
        _ => {
            let preview: Vec<String> = args[1..]
                .iter()
                .take(3)
                .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(32)])))
                .collect();
            error(
                out,
                &format!(
                    "ERR unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(&name[..name.len().min(64)]),
                    preview.join(" ")
                ),
            )
        }
    }
    After::Continue
}

async fn connection(mut sock: TcpStream, db: Arc<Db>, limits: RespLimits) {
    let _ = sock.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        let mut close = false;
        loop {
            match parse_command(&buf[consumed..], &limits) {
                Ok((args, used)) => {
                    consumed += used;
                    if let After::Close = execute(&db, args, &mut out).await {
                        close = true;
                        break;
                    }
                }
                Err(FrameError::Incomplete) => break,
                Err(FrameError::Protocol(why)) => {
                    error(&mut out, &format!("ERR Protocol error: {why}"));
                    close = true;
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if !close && buf.len() > limits.max_pending {
            error(
                &mut out,
                "ERR Protocol error: too many pending bytes on this connection",
            );
            close = true;
        }
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = sock.shutdown().await;
            return;
        }
    }
}

/// Accepts RESP connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    db: Arc<Db>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = RespLimits::for_db(&db);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                if let Ok((sock, _)) = accepted {
                    tokio::spawn(connection(sock, Arc::clone(&db), limits));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RespLimits = RespLimits {
        max_bulk: 16,
        max_args: 8,
        max_pending: 1024,
    };

    #[test]
    fn parses_arrays_inline_and_pipelines() {
        let b = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = parse_command(b, &L).unwrap();
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        let (args, _) = parse_command(&b[used..], &L).unwrap();
        assert_eq!(args, vec![b"PING".to_vec()]);
        assert_eq!(
            parse_command(b"PING\r\n", &L).unwrap().0,
            vec![b"PING".to_vec()]
        );
        assert_eq!(
            parse_command(b"SET a  b\n", &L).unwrap(),
            (vec![b"SET".to_vec(), b"a".to_vec(), b"b".to_vec()], 9)
        );
    }

    #[test]
    fn partial_frames_wait_and_bad_frames_are_protocol_errors() {
        let b = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for cut in 0..b.len() {
            assert_eq!(
                parse_command(&b[..cut], &L),
                Err(FrameError::Incomplete),
                "cut {cut}"
            );
        }
        assert!(matches!(
            parse_command(b"*1\r\n$99\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*-5\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n:1\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*1\r\n$1\r\nabc\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*x\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
        assert!(matches!(
            parse_command(b"*99\r\n", &L),
            Err(FrameError::Protocol(_))
        ));
    }
}
