//! Fuzz entry point for HTTP request heads: any bytes as one client's
//! connection, through hyper's HTTP/1 server and keel's router, with an
//! auth token set. Where `http_request` builds well-formed requests, this
//! one reaches what the wire can carry: malformed request lines, odd
//! header names and values, `Content-Length`, `Transfer-Encoding`,
//! `Expect`, `Origin`, several requests on one connection.
//!
//! Invariants:
//! - no panic, and the connection ends (hyper never waits once the client
//!   has closed);
//! - whatever is sent back is HTTP responses (it starts with an HTTP/1.1
//!   or, to an HTTP/1.0 request, HTTP/1.0 status line);
//! - nothing changes in the store unless the bytes carry the token: no
//!   header trick gets a write past authentication.

use super::harness::Harness;
use crate::http::router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use keel::Db;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token the harness's server requires.
pub const FUZZ_TOKEN: &str = "fuzz-token-7c1d";

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::new(Some(FUZZ_TOKEN)))
}

fn contents(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// Serves `data` as everything one client sends, then closes its side:
/// what the server sent back.
fn serve(data: &[u8]) -> Vec<u8> {
    let h = harness();
    let service = TowerToHyperService::new(router(h.state.clone()));
    h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let conn = tokio::spawn(async move {
            // half_close: the client closing its side after the request
            // still gets the response, as a client that shut down its
            // write half would.
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        // The duplex holds it all, so the write never waits on the server.
        client.write_all(data).await.expect("duplex write");
        client.shutdown().await.expect("duplex shutdown");
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        conn.await.expect("the connection task panicked");
        out
    })
}

/// Feeds `data` as everything one client sends; checks the invariants.
pub fn http_head(data: &[u8]) {
    let h = harness();
    let before = contents(&h.state.db);
    let out = serve(data);
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    let carries_token = data
        .windows(FUZZ_TOKEN.len())
        .any(|w| w == FUZZ_TOKEN.as_bytes());
    if !carries_token {
        assert!(
            contents(&h.state.db) == before,
            "the store changed without the token"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_writes_with_the_token_and_refuses_without() {
        let put = |token: &str, v: &str| {
            serve(format!("PUT /kv/harness HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 1\r\n\r\n{v}").as_bytes())
        };
        let ok = put(FUZZ_TOKEN, "1");
        assert!(
            ok.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&ok)
        );
        assert!(put("wrong", "2").starts_with(b"HTTP/1.1 401"));
        let got = harness().state.db.get(b"harness").unwrap();
        assert_eq!(got.as_deref(), Some(&b"1"[..]));
    }
}
