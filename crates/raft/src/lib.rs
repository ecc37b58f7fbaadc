//! keel-raft: keel's parts as the storage of a Raft node run by
//! [openraft](https://docs.rs/openraft/0.9.25) (issue 14: replication on an
//! existing consensus engine, never a home-made protocol).
//!
//! - [`KeelLogStore`]: the Raft log on keel's write-ahead log. Entry `i` is
//!   a log record (its term, leader, index and payload in the record's
//!   payload, [`entry_codec`]); an append is acknowledged to openraft only
//!   once fdatasynced (group commit batches it with others), a conflicting
//!   suffix is removed with [`keel_wal::Wal::truncate_after`], a purge is
//!   [`keel_wal::Wal::truncate_before`].
//! - [`RaftMeta`]: the vote and the last purged log id, in one small file
//!   replaced durably (temp file, fsync, rename, directory fsync).
//! - [`KeelStateMachine`]: keel's engine as the state machine; each entry
//!   applied is one engine record that also sets the applied log id in the
//!   engine's metadata; a snapshot is an engine backup packed into one file
//!   ([`snapshot`]), installed by a restore and a durable switch.
//! - [`propose`]: a client's write, with what its failure says about it
//!   (certainly not written, or unknown); [`Proposer`]: concurrent writes
//!   gathered into one entry; [`SnapshotReceiver`]: a follower
//!   fed a snapshot holds its elections off while the chunks come.
//!
//! The byte layouts are in docs/FORMAT.md ("Raft log", "Raft state
//! machine").

#![warn(missing_docs)]

pub mod batcher;
pub mod client;
pub mod entry_cache;
pub mod entry_codec;
pub mod log_store;
pub mod meta;
pub mod proposer;
pub mod snapshot;
pub mod snapshot_receiver;
pub mod state_machine;

pub use batcher::Batcher;
pub use client::{propose, ProposeError};
pub use log_store::{AppendsInFlight, CommitIndex, KeelLogReader, KeelLogStore, LogStoreError};
pub use meta::RaftMeta;
pub use proposer::Proposer;
pub use snapshot::SnapshotFile;
pub use snapshot_receiver::SnapshotReceiver;
pub use state_machine::{EngineHandle, KeelStateMachine, StateMachineError};

use serde::{Deserialize, Serialize};

/// Clients' writes replicated as one entry: encoded keel writes, opaque to
/// the log. They are applied in order, each on its own: one refused at
/// apply leaves the others ([`Proposer`] gathers concurrent writes into one
/// entry, so a write does not wait on a Raft round of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The writes, each as `keel::op::Op::encode` gives it.
    pub writes: Vec<Vec<u8>>,
}

impl Command {
    /// An entry holding the one write `write`.
    pub fn one(write: Vec<u8>) -> Command {
        Command {
            writes: vec![write],
        }
    }
}

/// What applying a [`Command`] gave.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The log index the command was applied at.
    pub index: u64,
    /// One per write, in order: why the engine refused it (bad input:
    /// nothing of it changed), or `None` if it was applied.
    pub refused: Vec<Option<String>>,
}

openraft::declare_raft_types!(
    /// keel's Raft types: node ids are `u64`, nodes are addresses.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = SnapshotFile,
);

/// A snapshot's meta (last log id, membership, id).
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;

/// An entry of keel's Raft log.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index).
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// openraft's storage error, as keel's stores return it.
pub type StorageError = openraft::StorageError<u64>;
