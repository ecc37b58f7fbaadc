//! The Redis protocol (RESP2) listener: `keel serve --resp-port P`.
//!
//! Same engine and durability as HTTP: a write's reply is sent only once the
//! write is durable under the sync policy. Pipelining: every complete
//! command read is executed in order and the replies are sent in order.
//!
//! - [`parser`]: the incremental command parser and its limits;
//! - [`frame`]: encoding replies;
//! - [`transport`]: plain TCP or TLS under one connection;
//! - [`command`]: what each command does and answers;
//! - [`event_loop`]: one thread that reads, executes, commits the turn's
//!   writes with one fdatasync, and replies (Redis's model, so the write
//!   path has no thread hand-off);
//! - [`remote`]: on a cluster node, what the event loop hands to Raft
//!   instead (`crate::cluster::resp` runs it).
//!
//! Commands: PING, ECHO, SET (plain; NX/XX/EX/PX answer a clear error), GET,
//! DEL, EXISTS, MSET (one atomic batch), MGET, FLUSHDB/FLUSHALL (durable
//! clear), DBSIZE, INFO, SELECT 0, QUIT, and what redis-cli and
//! redis-benchmark send at start: COMMAND (an empty reply), CONFIG GET,
//! HELLO (a clear NOPROTO error: only RESP2 is spoken), and MULTI / EXEC /
//! DISCARD ([`transaction`]: one atomic batch; WATCH is refused clearly).
//!
//! Errors: unknown commands and wrong arity get `-ERR` and the connection
//! stays usable (the frame boundary is known); a malformed frame or a bulk
//! string over the limit gets `-ERR Protocol error` and the connection is
//! closed (the boundary is lost). Nothing is stored by a refused command.

pub mod command;
pub mod event_loop;
pub mod frame;
pub mod parser;
pub mod remote;
pub mod transaction;
pub mod transport;

pub use event_loop::{RespConfig, RespServer};
pub use parser::{CommandParser, ProtocolError, RespLimits};
