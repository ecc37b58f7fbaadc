//! The outgoing side of a cluster node: openraft's RPCs to the other nodes
//! ([`HttpNetwork`]), and requests forwarded to the leader, over HTTP/1.1
//! with hyper's pooled client. Every request carries the cluster secret
//! ([`SECRET_HEADER`]) and has a deadline: a peer that does not answer in
//! time is unreachable (openraft backs off and retries), never a request
//! that hangs.
//!
//! openraft's request and response types travel as JSON (its `serde`
//! feature): `POST /raft/append`, `/raft/vote`, `/raft/snapshot`, each
//! answered with `{"Ok": ...}` or `{"Err": ...}` (the remote node's
//! `RaftError`).

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keel_raft::TypeConfig;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The header that carries the cluster secret on every node-to-node request.
pub const SECRET_HEADER: &str = "x-keel-cluster-secret";
/// The id of the node that sent a node-to-node request (for logs, and for a
/// test harness's proxy that cuts links between chosen nodes).
pub const FROM_HEADER: &str = "x-keel-from";
/// The sender's write limits ([`super::write_limits`]) on every node-to-node
/// request: a node whose limits differ refuses it (409), so two nodes
/// that would refuse different writes never share a log.
pub const LIMITS_HEADER: &str = "x-keel-limits";
/// Set on a request one node forwarded to another, so it is never
/// forwarded twice.
pub const FORWARDED_HEADER: &str = "x-keel-forwarded";
/// The largest answer read from a peer.
const MAX_ANSWER: usize = 256 << 20;

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No answer within the deadline.
    #[error("no answer from {addr} within {after:?}")]
    Timeout {
        /// The peer.
        addr: String,
        /// The deadline.
        after: Duration,
    },
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to {addr}: {why}")]
    NotConnected {
        /// The peer.
        addr: String,
        /// What went wrong.
        why: String,
    },
    /// The connection failed, or the answer was cut.
    #[error("request to {addr} failed: {why}")]
    Failed {
        /// The peer.
        addr: String,
        /// What went wrong.
        why: String,
    },
    /// The peer answered with an error status.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// The peer.
        addr: String,
        /// Its status.
        status: StatusCode,
        /// Its body (the start of it).
        body: String,
    },
}

/// An answer read whole.
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: hyper::HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// HTTP to the other nodes, with the cluster secret and this node's id.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpConnector, Full<Bytes>>,
    secret: Arc<str>,
    from: u64,
    limits: Arc<str>,
}

impl PeerClient {
    /// A client of node `from` sending `secret` and its write `limits`
    /// with every request.
    pub fn new(secret: &str, from: u64, limits: &str) -> PeerClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        PeerClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            secret: Arc::from(secret),
            from,
            limits: Arc::from(limits),
        }
    }

    /// Sends a request to `addr` (`host:port`) and reads the answer whole,
    /// all within `timeout`.
    pub async fn send(
        &self,
        addr: &str,
        method: Method,
        path_and_query: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, PeerError> {
        let failed = |why: String| PeerError::Failed {
            addr: addr.to_string(),
            why,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path_and_query}"))
            .header(SECRET_HEADER, &*self.secret)
            .header(FROM_HEADER, self.from)
            .header(LIMITS_HEADER, &*self.limits);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    PeerError::NotConnected {
                        addr: addr.to_string(),
                        why: e.to_string(),
                    }
                } else {
                    failed(e.to_string())
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout {
                addr: addr.to_string(),
                after: timeout,
            })?
    }

    /// `POST path` with `body` as JSON; the answer parsed as `Result<T, E>`.
    async fn rpc<Req: Serialize, T: DeserializeOwned, E: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Result<T, E>, PeerError> {
        let json = serde_json::to_vec(body).expect("a Raft request serialises");
        let content_type = (
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        let answer = self
            .send(
                addr,
                Method::POST,
                path,
                &[content_type],
                json.into(),
                timeout,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(PeerError::Status {
                addr: addr.to_string(),
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
                    .into_owned(),
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| PeerError::Failed {
            addr: addr.to_string(),
            why: format!("an answer that does not parse: {e}"),
        })
    }
}

/// openraft's network: one [`HttpPeer`] per other node.
#[derive(Clone)]
pub struct HttpNetwork {
    client: PeerClient,
}

impl HttpNetwork {
    /// Over `client`.
    pub fn new(client: PeerClient) -> HttpNetwork {
        HttpNetwork { client }
    }
}

/// The connection to one node.
pub struct HttpPeer {
    client: PeerClient,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl HttpPeer {
    async fn call<Req: Serialize, T: DeserializeOwned, E>(
        &self,
        path: &str,
        body: &Req,
        option: &RPCOption,
    ) -> RpcResult<T, E>
    where
        E: std::error::Error + DeserializeOwned,
    {
        match self
            .client
            .rpc::<Req, T, RaftError<u64, E>>(&self.addr, path, body, option.hard_ttl())
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            // A peer that did not answer (or refused the connection) is
            // retried after a backoff; a garbled answer at once.
            Err(
                e @ (PeerError::Timeout { .. }
                | PeerError::Failed { .. }
                | PeerError::NotConnected { .. }),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e @ PeerError::Status { .. }) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for HttpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}
