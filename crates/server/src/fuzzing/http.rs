//! Fuzz entry point for HTTP request handling, also replayed on a
//! committed seed corpus by `cargo test`: any method, path and body, through
//! the real router into a store on simulated storage. Invariants: no panic,
//! every answer a valid status, and a PUT answered 200 is read back byte for
//! byte.

use super::harness::Harness;
use crate::http::router;
use axum::body::Body;
use axum::http::{Method, Request};
use std::sync::OnceLock;
use tower::ServiceExt;

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::new(None))
}

/// First byte: method; then the path up to the first newline; then the body.
pub fn http_request(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = [
        Method::GET,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ][m as usize % 7]
        .clone();
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (path, body) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let h = harness();
    let send = |method: Method, body: Vec<u8>| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .ok()?;
        h.rt.block_on(async {
            let resp = router(h.state.clone()).oneshot(req).await.ok()?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .ok()?;
            Some((status, bytes))
        })
    };
    let Some((status, _)) = send(method.clone(), body.to_vec()) else {
        return; // not a valid URI: hyper would never route it
    };
    assert!(status.as_u16() >= 200 && status.as_u16() < 600);
    if method == Method::PUT && status.is_success() && path.starts_with("/kv/") {
        let (st, got) = send(Method::GET, vec![]).expect("GET after PUT");
        assert!(st.is_success(), "a stored value could not be read back");
        assert_eq!(&got[..], body, "a stored value came back different");
    }
}
