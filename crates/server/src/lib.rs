//! The library half of the `keel` binary: the HTTP layer, the Redis
//! protocol listener, TLS and metrics, kept
//! apart from `main` so that fuzz targets and tests can drive the router
//! in-process. The binary (`src/main.rs`) adds `serve` and the tools.

#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod fuzzing;
pub mod guarded;
pub mod http;
pub mod http_server;
pub mod metrics;
pub mod refusal;
pub mod resp;
pub mod rfc3339;
pub mod tls;
