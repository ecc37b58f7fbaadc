//! Fuzz entry points of the server (`fuzz/`), also replayed on the committed
//! seed corpus by `cargo test`: HTTP requests through the router, raw
//! request bytes through hyper and the router, and RESP
//! byte streams through the parser and the commands.

mod harness;
mod http;
mod http_head;
mod resp;

pub use http::http_request;
pub use http_head::{http_head, FUZZ_TOKEN};
pub use resp::resp_stream;
