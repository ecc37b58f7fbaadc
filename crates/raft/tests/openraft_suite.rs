//! openraft's own storage test suite (`openraft::testing::Suite`) against
//! keel's Raft log store and keel's engine as the state machine, on
//! simulated storage: once with the engine on tables, once with every key
//! in memory (checkpoints).

use keel_raft::{KeelLogStore, KeelStateMachine, StorageError, TypeConfig};
use keel_storage::SimStorage;
use keel_wal::WalOptions;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;
use std::sync::Arc;

/// A fresh node (log store and engine) on a fresh simulated disk for each
/// test of the suite.
struct Builder {
    memtable_size: Option<u64>,
}

impl StoreBuilder<TypeConfig, KeelLogStore, KeelStateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), KeelLogStore, KeelStateMachine), StorageError> {
        let s: Arc<SimStorage> = Arc::new(SimStorage::new(7));
        let opts = WalOptions {
            segment_size: 4096,
            ..WalOptions::default()
        };
        let store = KeelLogStore::open(s.clone(), "/node/raft", opts)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut engine = keel::Options::default();
        engine.segment_size = 8192;
        engine.memtable_size = self.memtable_size;
        let (sm, _) = KeelStateMachine::open(s, "/node/sm", engine, keel::SyncPolicy::Never)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(((), store, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_keels_log_and_engine_on_tables() {
    Suite::test_all(Builder {
        memtable_size: Some(keel::options::MIN_MEMTABLE_SIZE),
    })
    .unwrap();
}

#[test]
fn openraft_storage_suite_passes_on_keels_log_and_engine_in_memory() {
    Suite::test_all(Builder {
        memtable_size: None,
    })
    .unwrap();
}
