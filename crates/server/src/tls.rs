//! TLS for both listeners (`keel serve --tls-cert PEM --tls-key PEM`):
//! loading the certificate chain and key, and the HTTP listener's
//! handshakes ([`TlsListener`]). The RESP event loop drives its own
//! non-blocking `rustls::ServerConnection`s (`resp::event_loop`).
//!
//! With TLS on, a listener speaks nothing else: a client that sends plain
//! text (its first byte is not a TLS handshake record) is told so in plain
//! text, in its own protocol, and closed. A handshake is bounded in time
//! like any idle connection, and counts against the connection limit, so
//! clients that open connections and never finish a handshake cannot pile
//! up.

use crate::guarded::{GuardedListener, GuardedStream};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// How long a handshake may take when no idle timeout is set.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("cannot read a certificate chain from {path}: {why}; give a PEM file with the server certificate first, then its intermediates")]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("cannot read a private key from {path}: {why}; give a PEM file with one PKCS#8, PKCS#1 or SEC1 private key")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the pair (the key does not match the certificate, or
    /// an unsupported algorithm).
    #[error("the certificate and key cannot be used together: {0}; check that the key is the certificate's")]
    Config(#[from] rustls::Error),
}

/// The server's TLS configuration from a PEM certificate chain and a PEM
/// private key; `alpn` is the protocol names offered (`http/1.1` for HTTP,
/// none for RESP).
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs_err = |why: String| TlsError::Certificates {
        path: cert.to_path_buf(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| certs_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| certs_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(certs_err("no CERTIFICATE block in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// What an HTTP client that sent plain text to the TLS port is told.
const PLAIN_HTTP: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 58\r\nConnection: close\r\n\r\nthis port speaks TLS only: connect with https:// instead\n";

/// Handshakes done, waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// The HTTP listener with TLS: accepts through a [`GuardedListener`]
/// (connection limit, idle timeout), handshakes each connection in its own
/// task (one slow client does not hold up the others), and hands the server
/// the connections whose handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<GuardedStream>, SocketAddr)>,
    addr: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `inner`; a handshake must finish within
    /// `handshake_timeout`.
    pub fn new(
        mut inner: GuardedListener,
        config: Arc<ServerConfig>,
        handshake_timeout: Duration,
    ) -> io::Result<TlsListener> {
        let addr = axum::serve::Listener::local_addr(&inner)?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = axum::serve::Listener::accept(&mut inner).await;
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let done =
                        tokio::time::timeout(handshake_timeout, handshake(acceptor, stream, peer))
                            .await;
                    match done {
                        Ok(Some(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(None) => {}
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out; connection closed")
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            addr,
            acceptor_task,
        })
    }
}

/// One connection's handshake; `None` if it failed (logged).
async fn handshake(
    acceptor: TlsAcceptor,
    mut stream: GuardedStream,
    peer: SocketAddr,
) -> Option<TlsStream<GuardedStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == HANDSHAKE_RECORD => {}
        Ok(1) => {
            tracing::info!(%peer, "plain text on the TLS port; refused");
            let _ = stream.write_all(PLAIN_HTTP).await;
            let _ = stream.shutdown().await;
            return None;
        }
        _ => return None, // closed before sending anything
    }
    match acceptor.accept(stream).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            None
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stop accepting when the server lets go of its listener (shutdown).
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<GuardedStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor task ended (only when aborted): accept no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
