//! openraft's own storage test suite (`openraft::testing::Suite`) against
//! keel's Raft log store on simulated storage.
//!
//! The suite tests a log store and a state machine together. The state
//! machine here is a small in-memory fixture (a map of applied commands,
//! the last applied log id and membership, and JSON snapshots), there only
//! so that the suite's log checks run; keel's engine as the state machine
//! is the next slice of issue 14 and will run the same suite.

use keel_raft::{Command, CommandResult, Entry, KeelLogStore, LogId, StorageError, TypeConfig};
use keel_storage::SimStorage;
use keel_wal::WalOptions;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

type Membership = StoredMembership<u64, openraft::BasicNode>;

/// What the fixture state machine holds; also its snapshot, as JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId>,
    membership: Membership,
    commands: BTreeMap<u64, Vec<u8>>,
}

/// The last snapshot built or installed, shared with the builders.
type SnapshotSlot = Arc<Mutex<Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>>>;

#[derive(Default)]
struct FixtureStateMachine {
    applied: Applied,
    snapshot: SnapshotSlot,
    built: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for FixtureStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = serde_json::to_vec(&self.applied)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.built += 1;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("fixture-{}", self.built),
        };
        *self.snapshot.lock().unwrap() = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for FixtureStateMachine {
    type SnapshotBuilder = FixtureStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.applied.last, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            self.applied.last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(Command(c)) => {
                    self.applied.commands.insert(e.log_id.index, c);
                }
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            out.push(CommandResult {
                index: e.log_id.index,
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.built += 1;
        FixtureStateMachine {
            applied: self.applied.clone(),
            snapshot: Arc::clone(&self.snapshot),
            built: self.built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        *self.snapshot.lock().unwrap() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .snapshot
            .lock()
            .unwrap()
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}

/// A fresh log store on a fresh simulated disk for each test of the suite.
struct Builder;

impl StoreBuilder<TypeConfig, KeelLogStore, FixtureStateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), KeelLogStore, FixtureStateMachine), StorageError> {
        let s = SimStorage::new(7);
        let opts = WalOptions {
            segment_size: 4096,
            ..WalOptions::default()
        };
        let store = KeelLogStore::open(Arc::new(s), "/node/raft", opts)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(((), store, FixtureStateMachine::default()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_keels_log() {
    Suite::test_all(Builder).unwrap();
}
