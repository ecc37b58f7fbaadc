//! The HTTP API. One handler routes on method and raw path, so that keys can
//! be any percent-encoded bytes and every status and body is exactly as
//! documented (each error body ends with a newline):
//!
//! | request | answer |
//! |---|---|
//! | `PUT /kv/{key}`, body = value | 200 `OK` once durable; empty body: 400 `value cannot be empty` |
//! | `GET /kv/{key}` | 200 with the raw value; 404 `key not found` (`HEAD`: the same, no body) |
//! | `/kv/{key}?anything` | 400: a key URL takes no query string (`?` in a key is `%3F`) |
//! | a request target over 65,534 bytes | 414, empty body (hyper's limit, not configurable): longer keys go over `/batch` and RESP |
//! | a write with a foreign `Origin` or a cross-site `Sec-Fetch-Site` | 403, nothing changed |
//! | `DELETE /kv/{key}` | 200 `OK`, also when missing |
//! | `/kv/` (PUT, GET, DELETE) | 400 `key cannot be empty` |
//! | `DELETE /clear` | 200 `OK`, every key removed durably |
//! | other methods on `/kv/{key}`, `/clear` | 405 `method not allowed` |
//! | key or value over the limit | 413 naming the limit; nothing stored |
//! | after a failed fsync | writes 503, reads go on |
//!
//! With an auth token (`crate::auth`) every endpoint but `/health` answers
//! 401 without `Authorization: Bearer <token>`.
//!
//! Also `GET /health`, `GET /metrics`, `POST /admin/checkpoint`,
//! `POST /admin/backup` (`{"dest": "/absolute/new/dir"}`),
//! `GET /kv?prefix=..&limit=..` and `POST /batch`.
//!
//! Writes go through `Db::put_async` and friends: the record is queued in
//! the log under its lock, the log's flush thread writes and fdatasyncs,
//! and the task is woken. Doing the write and fdatasync on the runtime's
//! worker instead (`block_in_place(|| db.put(..))`, the RESP loop's way) was
//! measured side by side (docs/BENCHMARKS.md, "The HTTP write path"): 1.12x
//! at one client but 0.54x at 16 and 0.48x at 64, because every blocked
//! worker hands its core to a new thread. So HTTP keeps the flush thread.

use crate::auth::AuthToken;
use crate::cluster::{ClusterNode, Routed, WriteFailure};
use crate::refusal::{self, Refusal};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use keel::op::{BatchOp, Op};
use keel::{Db, WriteBatch};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use std::sync::Arc;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: Arc<Db>,
    /// The metrics exporter.
    pub metrics: PrometheusHandle,
    /// When set, every endpoint but `/health` needs `Authorization: Bearer`.
    pub auth: Option<Arc<AuthToken>>,
    /// Set on a cluster node (`crate::cluster`): writes go through Raft,
    /// reads are linearizable, `db` is only the engine it started with.
    pub cluster: Option<Arc<ClusterNode>>,
}

impl AppState {
    /// The engine to read now (a cluster node's changes when it installs a
    /// snapshot).
    pub fn engine(&self) -> Arc<Db> {
        match &self.cluster {
            Some(c) => c.engine.current(),
            None => Arc::clone(&self.db),
        }
    }
}

/// The router: everything goes through one handler, `handle`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// A text answer, ending with a newline.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn ok() -> Response {
    text(StatusCode::OK, "OK")
}

fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Maps an engine error to a status and a message that says what to do.
fn error_response(e: keel::Error) -> Response {
    let status = match refusal::classify(&e) {
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, refusal::message(&e))
}

/// Percent-decodes a path segment into bytes; `None` when malformed.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

async fn handle(State(st): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/raft/") && st.cluster.is_none() {
        return text(
            StatusCode::NOT_FOUND,
            "not a cluster node: /raft/ is served only by `keel serve --node-id`",
        );
    }
    let Some(node) = st.cluster.clone() else {
        return handle_local(&st, &st.db, req).await;
    };
    // The cluster secret of /raft/ is checked first, whatever the path.
    let mut resp = if path.starts_with("/raft/") {
        match crate::cluster::route(&node, req).await {
            Routed::Done(r) => r,
            Routed::Local(_) => unreachable!("route answers every /raft/ request"),
        }
    } else if let Some(refused) = refuse_unauthenticated(&st, &req) {
        refused
    } else if let Some(refused) = refuse_cross_site_write(&req) {
        // Here, before a follower forwards it: the forwarded request does
        // not carry the browser's Origin and Sec-Fetch-Site.
        refused
    } else {
        match crate::cluster::route(&node, req).await {
            Routed::Done(r) => r,
            Routed::Local(req) => handle_local(&st, &st.engine(), req).await,
        }
    };
    crate::cluster::name_leader(&node, &mut resp);
    resp
}

/// 401 for a request without the auth token (when one is set), but for
/// `/health`.
fn refuse_unauthenticated(st: &AppState, req: &Request) -> Option<Response> {
    let token = st.auth.as_ref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    (req.uri().path() != "/health" && !token.allows_header(given)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "authentication required: send Authorization: Bearer <token>\n",
        )
            .into_response()
    })
}

/// The API on this node's engine `db` (writes through Raft on a cluster
/// node).
async fn handle_local(st: &AppState, db: &Arc<Db>, req: Request) -> Response {
    let method = req.method().clone();
    if let Some(refused) = refuse_cross_site_write(&req) {
        return refused;
    }
    let path = req.uri().path().to_string();
    if let Some(refused) = refuse_unauthenticated(st, &req) {
        return refused;
    }
    let query = req.uri().query().map(str::to_string);
    match path.as_str() {
        "/health" => match method {
            Method::GET => text(StatusCode::OK, "ok"),
            _ => method_not_allowed(),
        },
        "/metrics" => match method {
            Method::GET => {
                if let Some(node) = &st.cluster {
                    node.update_metrics();
                }
                (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                crate::metrics::render(&st.metrics, db),
            )
                .into_response()
            }
            _ => method_not_allowed(),
        },
        "/clear" => match method {
            Method::DELETE => match write(st, db, Op::Clear).await {
                Ok(_) => ok(),
                Err(r) => r,
            },
            _ => method_not_allowed(),
        },
        "/admin/checkpoint" => match method {
            Method::POST => {
                let db = Arc::clone(db);
                match tokio::task::spawn_blocking(move || db.checkpoint()).await {
                    Ok(Ok(c)) => json(
                        StatusCode::OK,
                        serde_json::json!({"lsn": c.lsn, "written": c.written,
                            "segments_removed": c.segments_removed}),
                    ),
                    Ok(Err(e)) => error_response(e),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("checkpoint task failed: {e}")),
                }
            }
            _ => method_not_allowed(),
        },
        "/admin/backup" => match method {
            Method::POST if !is_json(&req) => text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "POST /admin/backup needs Content-Type: application/json",
            ),
            Method::POST => backup(db, req).await,
            _ => method_not_allowed(),
        },
        "/kv" => match method {
            Method::GET => list(db, query.as_deref()),
            _ => method_not_allowed(),
        },
        "/batch" => match method {
            Method::POST if !is_json(&req) => text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "POST /batch needs Content-Type: application/json",
            ),
            Method::POST => batch(st, db, req).await,
            _ => method_not_allowed(),
        },
        p if p.starts_with("/kv/") => {
            let raw = p["/kv/".len()..].to_string();
            key_request(st, db, method, &raw, req).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found: the API is /kv/{key}, /kv?prefix=, /batch, /clear, /health, /metrics, /admin/checkpoint, /admin/backup"),
    }
}

/// A write that a browser sent on behalf of another site (cross-site
/// request forgery: any web page can make a browser send a form POST or a
/// `text/plain` body to 127.0.0.1): refused with 403 before it is read.
/// Browsers say where a request comes from in `Sec-Fetch-Site` and
/// `Origin`; clients that are not browsers send neither, and pass.
fn refuse_cross_site_write(req: &Request) -> Option<Response> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let headers = req.headers();
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let site = value(header::HeaderName::from_static("sec-fetch-site"));
    let cross_site = site.is_some_and(|s| s != "same-origin" && s != "none");
    let foreign_origin = value(header::ORIGIN).is_some_and(|origin| {
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        value(header::HOST).is_none_or(|host| !authority.eq_ignore_ascii_case(host))
    });
    (cross_site || foreign_origin).then(|| {
        tracing::warn!(
            origin = value(header::ORIGIN).unwrap_or("-"),
            fetch_site = site.unwrap_or("-"),
            "cross-site write refused"
        );
        text(
            StatusCode::FORBIDDEN,
            "cross-site write refused: a browser sent this request on behalf of another site (its Origin or Sec-Fetch-Site says so)",
        )
    })
}

/// Whether the body is declared JSON. Requiring it on JSON endpoints makes
/// a browser ask first (a CORS preflight, which keel never grants) instead
/// of sending a cross-site `text/plain` body straight through.
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// `GET`, `PUT` or `DELETE /kv/{raw}` (`raw` still percent-encoded).
/// Applies a write: on this engine, or through Raft on a cluster node.
async fn write(st: &AppState, db: &Db, op: Op) -> Result<u64, Response> {
    let Some(node) = &st.cluster else {
        let done = match op {
            Op::Put(k, v) => db.put_async(k, v).await,
            Op::Delete(k) => db.delete_async(k).await,
            Op::Clear => db.clear_async().await,
            Op::Batch(ops) => {
                let mut b = WriteBatch::new();
                for o in ops {
                    match o {
                        BatchOp::Put(k, v) => b.put(k, v),
                        BatchOp::Delete(k) => b.delete(k),
                    };
                }
                db.write_async(b).await
            }
            Op::WithMetadata { .. } => unreachable!("the API writes no metadata"),
        };
        return done.map_err(error_response);
    };
    node.write(op).await.map_err(|f| match f {
        WriteFailure::Refused(e) => error_response(e),
        WriteFailure::RefusedAtApply(why) => text(StatusCode::BAD_REQUEST, why),
        WriteFailure::NotWritten(why) => crate::cluster::not_written(&why),
        WriteFailure::Unknown(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the write's outcome is unknown ({why}): it may or may not be applied; read it back before retrying"),
        ),
    })
}

async fn key_request(st: &AppState, db: &Db, method: Method, raw: &str, req: Request) -> Response {
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return method_not_allowed();
    }
    if req.uri().query().is_some_and(|q| !consistency_only(q)) {
        // `/kv/a?b=c` would otherwise quietly name the key `a`.
        return text(
            StatusCode::BAD_REQUEST,
            "a key URL takes no query string: percent-encode '?' in keys as %3F",
        );
    }
    if raw.is_empty() {
        return text(StatusCode::BAD_REQUEST, "key cannot be empty");
    }
    let Some(key) = percent_decode(raw) else {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed percent-encoding in key: '%' must be followed by two hex digits",
        );
    };
    let max_key = db.options().max_key_len;
    if key.len() > max_key {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "key too large: {} bytes, the limit is {max_key} bytes",
                key.len()
            ),
        );
    }
    let written = match method {
        // HEAD: the same answer as GET; hyper sends no body with it.
        Method::GET | Method::HEAD => {
            metrics::counter!("keel_reads_total").increment(1);
            return match db.get(&key) {
                Ok(Some(v)) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    v,
                )
                    .into_response(),
                Ok(None) => text(StatusCode::NOT_FOUND, "key not found"),
                Err(e) => error_response(e),
            };
        }
        Method::DELETE => {
            metrics::counter!("keel_writes_total").increment(1);
            write(st, db, Op::Delete(key)).await
        }
        _ => {
            let value = match read_body(req, db.options().max_value_len, "value").await {
                Ok(v) => v,
                Err(r) => return r,
            };
            metrics::counter!("keel_writes_total").increment(1);
            write(st, db, Op::Put(key, value.to_vec())).await
        }
    };
    match written {
        Ok(_) => ok(),
        Err(r) => r,
    }
}

/// Whether a query string only says how consistent a read must be
/// (`consistency=stale` or `consistency=linearizable`; a single node is
/// always both).
fn consistency_only(query: &str) -> bool {
    matches!(query, "consistency=stale" | "consistency=linearizable")
}

/// Reads a body of at most `limit` bytes; over it: 413 naming the limit.
async fn read_body(req: Request, limit: usize, what: &str) -> Result<Bytes, Response> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} too large: the limit is {limit} bytes"),
        )
    };
    // A declared length over the limit is refused before the body is read,
    // so a client that sent `Expect: 100-continue` is told at once instead
    // of being invited to send it (hyper answers 100 only when the body is
    // first read).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let over_limit = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if over_limit {
                Err(too_large())
            } else {
                Err(text(
                    StatusCode::BAD_REQUEST,
                    "could not read the request body (the client closed it or sent a malformed chunk)",
                ))
            }
        }
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut body = v.to_string();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn bytes_field(obj: &mut serde_json::Map<String, serde_json::Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(name.into(), s.into()),
        Err(_) => obj.insert(
            format!("{name}_hex"),
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
                .into(),
        ),
    };
}

fn list(db: &Db, query: Option<&str>) -> Response {
    let mut prefix = Vec::new();
    let mut limit = 100usize;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(&v.replace('+', " ")) else {
            return text(
                StatusCode::BAD_REQUEST,
                "malformed percent-encoding in query",
            );
        };
        match k {
            "prefix" => prefix = v,
            "limit" => match std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                Some(n) if n <= 10_000 => limit = n,
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "limit must be a number from 0 to 10000",
                    )
                }
            },
            // A cluster node routes on it (`crate::cluster`).
            "consistency" if consistency_only(pair) => {}
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {other:?}: use prefix, limit and consistency (stale or linearizable)"),
                )
            }
        }
    }
    match db.scan_prefix(&prefix, limit) {
        Ok(items) => {
            let items: Vec<serde_json::Value> = items
                .iter()
                .map(|(k, v)| {
                    let mut o = serde_json::Map::new();
                    bytes_field(&mut o, "key", k);
                    bytes_field(&mut o, "value", v);
                    serde_json::Value::Object(o)
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"count": items.len(), "items": items}),
            )
        }
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    ops: Vec<BatchItem>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum BatchItem {
    Put { key: String, value: String },
    Delete { key: String },
}

/// The body of `POST /admin/backup`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// Where the backup goes: an absolute path that does not exist yet.
    dest: std::path::PathBuf,
}

/// `POST /admin/backup {"dest": "/path"}`: an online backup
/// ([`Db::backup`]) on a blocking thread; writes go on meanwhile.
async fn backup(db: &Arc<Db>, req: Request) -> Response {
    let bytes = match read_body(req, 64 << 10, "backup request").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let dest = match serde_json::from_slice::<BackupRequest>(&bytes) {
        Ok(r) if r.dest.is_absolute() => r.dest,
        Ok(_) => return text(StatusCode::BAD_REQUEST, "dest must be an absolute path (the server's working directory is not the client's)"),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("malformed backup request ({e}); expected {{\"dest\":\"/absolute/path/that/does/not/exist\"}}"),
            )
        }
    };
    let db = Arc::clone(db);
    match tokio::task::spawn_blocking(move || db.backup(dest)).await {
        Ok(Ok(r)) => json(
            StatusCode::OK,
            serde_json::json!({"dir": r.dir, "lsn": r.marker.lsn, "time_us": r.marker.time_us,
                "files_linked": r.files_linked, "files_copied": r.files_copied,
                "bytes_copied": r.bytes_copied, "seconds": r.duration.as_secs_f64()}),
        ),
        Ok(Err(e @ keel::Error::BackupDestinationExists { .. })) => {
            text(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "backup failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("backup failed: {e}"),
            )
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backup task failed: {e}"),
        ),
    }
}

async fn batch(st: &AppState, db: &Db, req: Request) -> Response {
    let limit = db.options().max_batch_bytes;
    let bytes = match read_body(req, limit, "batch").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: BatchRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("malformed batch ({e}); expected {{\"ops\":[{{\"op\":\"put\",\"key\":\"k\",\"value\":\"v\"}},{{\"op\":\"delete\",\"key\":\"k\"}}]}}"),
            )
        }
    };
    let ops = req
        .ops
        .into_iter()
        .map(|item| match item {
            BatchItem::Put { key, value } => BatchOp::Put(key.into_bytes(), value.into_bytes()),
            BatchItem::Delete { key } => BatchOp::Delete(key.into_bytes()),
        })
        .collect();
    metrics::counter!("keel_writes_total").increment(1);
    // `lsn`: the engine's LSN, or on a cluster node the Raft log index.
    match write(st, db, Op::Batch(ops)).await {
        Ok(lsn) => json(StatusCode::OK, serde_json::json!({"lsn": lsn})),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%20b").unwrap(), b"a b");
        assert_eq!(percent_decode("%ff%00").unwrap(), vec![0xff, 0]);
        assert_eq!(percent_decode("caf%C3%A9").unwrap(), "café".as_bytes());
        assert!(percent_decode("%").is_none());
        assert!(percent_decode("%4").is_none());
        assert!(percent_decode("%zz").is_none());
    }
}
