//! A minimal RESP2 client for the torture clients: one command, one reply,
//! on a connection kept open between operations.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply, as far as the checker cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...` (OK, PONG).
    Simple(String),
    /// `-...`.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` with its bytes, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
}

/// Why a command has no reply.
#[derive(Debug)]
pub enum Failed {
    /// Could not connect: the command was not sent.
    NotSent,
    /// Sent (or maybe sent), then the connection broke or timed out.
    NoReply,
}

/// One connection.
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connects to the RESP port on loopback.
    pub fn connect(port: u16) -> Result<RespConn, Failed> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|_| Failed::NotSent)?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_nodelay(true).ok();
        Ok(RespConn {
            reader: BufReader::new(s),
        })
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, Failed> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            frame.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            frame.extend_from_slice(a);
            frame.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&frame)
            .map_err(|_| Failed::NoReply)?;
        self.read_reply().ok_or(Failed::NoReply)
    }

    fn read_reply(&mut self) -> Option<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).ok()?;
        if line.len() < 3 || !line.ends_with(b"\r\n") {
            return None;
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        match line[0] {
            b'+' => Some(Reply::Simple(body)),
            b'-' => Some(Reply::Error(body)),
            b':' => body.parse().ok().map(Reply::Integer),
            b'$' => {
                let n: i64 = body.parse().ok()?;
                if n < 0 {
                    return Some(Reply::Bulk(None));
                }
                let mut data = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut data).ok()?;
                data.truncate(n as usize);
                Some(Reply::Bulk(Some(data)))
            }
            _ => None,
        }
    }
}
