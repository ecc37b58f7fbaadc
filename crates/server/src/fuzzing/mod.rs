//! Fuzz entry points of the server (`fuzz/`), also replayed on the committed
//! seed corpus by `cargo test`: HTTP requests through the router, and RESP
//! byte streams through the parser and the commands.

mod http;
mod resp;

pub use http::http_request;
pub use resp::resp_stream;
