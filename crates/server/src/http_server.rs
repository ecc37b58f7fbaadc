//! Serving the HTTP API's connections: hyper's HTTP/1 server over any
//! listener (plain, or TLS), with a deadline on request heads and a
//! graceful shutdown that has its own deadline.
//!
//! keel drives hyper itself rather than through `axum::serve` for one
//! setting that needs a timer: `header_read_timeout`. A client must send a
//! whole request head within it, however it spaces its bytes; the idle
//! timeout alone (`crate::guarded`) cannot stop a client that sends a
//! header byte every few seconds (slowloris), which would otherwise hold its
//! connection for ever.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;

/// How the HTTP listener treats its connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpServeConfig {
    /// A request head must arrive whole within this; `None`: no limit.
    pub header_timeout: Option<Duration>,
    /// After `stop`: how long requests under way may take to finish before
    /// the connections still open are abandoned.
    pub grace: Duration,
}

/// Serves `app` on `listener` until `stop` completes; then stops accepting,
/// lets requests under way finish within `config.grace`, and returns.
/// Connections still open after that are left to the caller's runtime to
/// drop (their tasks are cancelled with it).
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    stop: impl Future<Output = ()>,
    config: HttpServeConfig,
) where
    L: axum::serve::Listener,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            (io, _peer) = listener.accept() => {
                let service = TowerToHyperService::new(app.clone());
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("HTTP connection ended: {e}");
                    }
                });
            }
            () = &mut stop => break,
        }
    }
    // Stop accepting: the listening socket closes now.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(config.grace) => {
            tracing::warn!(
                "shutdown: connections still open {:?} after the signal (half-sent requests); closing them",
                config.grace
            );
        }
    }
}
