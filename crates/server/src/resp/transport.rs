//! A RESP connection's byte stream: plain TCP, or TLS that the event loop
//! drives by hand over the non-blocking socket (rustls's `ServerConnection`
//! holds the protocol state; this moves its records to and from the socket).
//!
//! Both read and write like a non-blocking socket: `WouldBlock` when the
//! socket has nothing more (or takes nothing more), `Ok(0)` on read when the
//! client closed. With TLS, a short read does not mean the socket is drained
//! (rustls takes records a piece at a time): see [`Transport::drained_by_short_read`].
//! A client that sends plain text to a TLS listener is told so in plain
//! text and the read fails, so the connection closes.

use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, Read, Write};
use std::sync::Arc;

/// What a Redis client that sent plain text to the TLS port is told.
const PLAIN_RESP: &[u8] =
    b"-ERR this port speaks TLS only: connect with TLS (redis-cli --tls --cacert CA.pem)\r\n";

/// One connection's transport.
pub struct Transport {
    /// The socket (registered with the event loop's poll).
    pub sock: TcpStream,
    tls: Option<Box<ServerConnection>>,
    /// The first byte was checked to open a TLS handshake.
    first_byte_checked: bool,
}

impl Transport {
    /// Plain TCP.
    pub fn plain(sock: TcpStream) -> Transport {
        Transport {
            sock,
            tls: None,
            first_byte_checked: true,
        }
    }

    /// TLS with `config`: the handshake happens as the client's bytes are
    /// read.
    pub fn tls(
        sock: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<Transport, rustls::Error> {
        Ok(Transport {
            sock,
            tls: Some(Box::new(ServerConnection::new(config)?)),
            first_byte_checked: false,
        })
    }

    /// Whether a read shorter than the buffer means the socket is empty
    /// (plain TCP), so the event loop may wait for the next edge without
    /// asking again. Not so with TLS.
    pub fn drained_by_short_read(&self) -> bool {
        self.tls.is_none()
    }

    /// Reads plain bytes (decrypted with TLS).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.sock.read(buf);
        }
        if !self.first_byte_checked {
            self.check_first_byte()?;
        }
        let Transport { sock, tls, .. } = self;
        let tls = tls.as_mut().expect("checked above");
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: for a command stream (no
                // length to cut short) this is an ordinary end.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            let got = tls.read_tls(sock)?;
            if let Err(e) = tls.process_new_packets() {
                // Send the alert rustls prepared, then fail the connection.
                let _ = flush_records(tls, sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake replies go out at once.
            match flush_records(tls, sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if got == 0 {
                // The socket is at its end: what rustls holds, then EOF.
                return match tls.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(_) => Ok(0),
                };
            }
        }
    }

    /// A TLS listener's first byte must open a handshake; plain text (a
    /// Redis client without `--tls`) is answered in plain text and refused.
    fn check_first_byte(&mut self) -> io::Result<()> {
        let mut first = [0u8; 1];
        match self.sock.peek(&mut first)? {
            0 => return Ok(()), // closed: the read says so
            _ if first[0] == crate::tls::HANDSHAKE_RECORD => {}
            _ => {
                // Best effort: the socket's buffer is empty this early.
                let _ = self.sock.write(PLAIN_RESP);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "plain text on the TLS port",
                ));
            }
        }
        self.first_byte_checked = true;
        Ok(())
    }

    /// Writes plain bytes (encrypted with TLS). `WouldBlock` while the
    /// socket takes nothing, or while a handshake has not finished and
    /// rustls holds all it will.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Transport { sock, tls, .. } = self;
        let Some(tls) = tls.as_mut() else {
            return sock.write(buf);
        };
        flush_records(tls, sock)?;
        let n = tls.writer().write(buf)?;
        match flush_records(tls, sock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends the TLS records rustls holds (handshake messages, alerts,
    /// encrypted replies). `WouldBlock` if some remain.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(tls) => flush_records(tls, &mut self.sock),
            None => Ok(()),
        }
    }

    /// Ends the connection: a TLS close_notify (best effort), then the
    /// socket's shutdown.
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = flush_records(tls, &mut self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

fn flush_records(tls: &mut ServerConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
