//! One simulated node: keel's Raft log and engine on its own simulated disk
//! ([`SimStorage`]), run by openraft over the simulated network. A crash is
//! a power loss: the node leaves the network, its disk freezes (whatever
//! the node still tries to write fails) and keeps only what the crash mode
//! lets survive of the unsynced writes; a restart opens a new node on what
//! is left.

use crate::net::{Endpoint, SimNet, SimNetwork};
use keel_raft::{KeelLogStore, KeelStateMachine, Proposer, SnapshotReceiver, TypeConfig};
use keel_storage::{CrashMode, SimStorage};
use openraft::{BasicNode, Config, Raft};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct SimNode {
    pub id: u64,
    disk: SimStorage,
    raft: Option<Raft<TypeConfig>>,
    /// The engine on tables (flushes, compactions) or in memory.
    tables: bool,
}

/// The Raft timing of the simulation: a snapshot every 40 entries keeping
/// 10, chunks of 4 KiB, so installs (several chunks) happen in most runs.
pub fn raft_config() -> Arc<Config> {
    let c = Config {
        cluster_name: "sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 10,
        snapshot_max_chunk_size: 4096,
        ..Config::default()
    };
    Arc::new(c.validate().expect("a valid Raft configuration"))
}

impl SimNode {
    pub fn new(id: u64, seed: u64, tables: bool) -> SimNode {
        SimNode {
            id,
            disk: SimStorage::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            raft: None,
            tables,
        }
    }

    pub fn is_up(&self) -> bool {
        self.raft.is_some()
    }

    /// Opens the node on its disk and joins the network; a node that never
    /// initialized the cluster does it now (every node the same way, as
    /// `keel serve` does).
    pub async fn start(&mut self, net: &Arc<SimNet>, members: &[u64]) -> Result<(), String> {
        let storage: Arc<dyn keel_storage::Storage> = Arc::new(self.disk.clone());
        let wal = keel_wal::WalOptions {
            segment_size: 64 << 10,
            ..keel_wal::WalOptions::default()
        };
        let log = KeelLogStore::open(Arc::clone(&storage), "/node/raft", wal)
            .map_err(|e| format!("node {}: opening the Raft log: {e}", self.id))?;
        net.set_disk(self.id, log.appends_in_flight());
        let mut options = keel::Options::default();
        options.segment_size = 64 << 10;
        options.memtable_size = self.tables.then_some(keel::options::MIN_MEMTABLE_SIZE);
        let (sm, engine) =
            KeelStateMachine::open(storage, "/node/sm", options, keel::SyncPolicy::Never)
                .map_err(|e| format!("node {}: opening the engine: {e}", self.id))?;
        let network = SimNetwork {
            net: Arc::clone(net),
            from: self.id,
        };
        let raft = Raft::new(self.id, raft_config(), network, log, sm)
            .await
            .map_err(|e| format!("node {}: starting Raft: {e}", self.id))?;
        if !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let nodes: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|&m| (m, BasicNode::new(format!("node-{m}"))))
                .collect();
            raft.initialize(nodes)
                .await
                .map_err(|e| format!("node {}: initializing: {e}", self.id))?;
        }
        net.set_up(
            self.id,
            Endpoint {
                raft: raft.clone(),
                engine,
                snapshots: SnapshotReceiver::new(raft.clone()),
                proposer: Proposer::new(raft.clone(), Duration::from_secs(2)),
            },
        );
        self.raft = Some(raft);
        Ok(())
    }

    /// Power loss: off the network, the disk frozen and cut back to what
    /// `mode` keeps, the node's tasks stopped.
    pub async fn crash(&mut self, net: &SimNet, mode: CrashMode) {
        net.set_down(self.id);
        self.disk = self.disk.crash_with(mode);
        if let Some(raft) = self.raft.take() {
            let _ = raft.shutdown().await;
        }
    }
}
