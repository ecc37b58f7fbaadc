//! keel-raft's parts that face a running Raft, on a one-node Raft (keel's
//! log and engine on simulated storage).
//!
//! `Proposer`: concurrent writes share entries and each gets its own
//! answer, a bad write is refused alone, a node that does not lead refuses
//! before proposing, and callers that stop waiting strand no one.
//! `SnapshotReceiver`: a transfer is installed whole, and chunks delivered
//! again after it ended cannot complete a file with a hole.

mod common;

use common::block_on;
use keel::op::Op;
use keel_raft::proposer::Applied;
use keel_raft::{KeelLogStore, KeelStateMachine, ProposeError, Proposer, TypeConfig};
use keel_storage::SimStorage;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, Raft, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A node alone has no one to call.
struct Nobody;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

// openraft's error type is large; its trait methods return it as is.
#[allow(clippy::result_large_err)]
fn unreachable<T, E: std::error::Error>() -> RpcResult<T, E> {
    let why = std::io::Error::other("a one-node test cluster has no peers");
    Err(RPCError::Unreachable(Unreachable::new(&why)))
}

impl RaftNetworkFactory<TypeConfig> for Nobody {
    type Network = Nobody;
    async fn new_client(&mut self, _: u64, _: &BasicNode) -> Nobody {
        Nobody
    }
}

impl RaftNetwork<TypeConfig> for Nobody {
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        unreachable()
    }
    async fn install_snapshot(
        &mut self,
        _: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        unreachable()
    }
    async fn vote(&mut self, _: VoteRequest<u64>, _: RPCOption) -> RpcResult<VoteResponse<u64>> {
        unreachable()
    }
}

/// A one-node Raft on simulated storage, led by itself once `init`.
async fn node(init: bool) -> (Raft<TypeConfig>, keel_raft::EngineHandle) {
    let storage: Arc<dyn keel_storage::Storage> = Arc::new(SimStorage::new(7));
    let log = KeelLogStore::open(Arc::clone(&storage), "/n/raft", Default::default()).unwrap();
    let (sm, engine) = KeelStateMachine::open(
        storage,
        "/n/sm",
        keel::Options::default(),
        keel::SyncPolicy::Never,
    )
    .unwrap();
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Config::default()
    };
    let raft = Raft::new(1, Arc::new(config.validate().unwrap()), Nobody, log, sm)
        .await
        .unwrap();
    if init {
        let members = BTreeMap::from([(1, BasicNode::new("n1"))]);
        raft.initialize(members).await.unwrap();
        raft.wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "leads")
            .await
            .unwrap();
    }
    (raft, engine)
}

fn put(k: usize) -> Vec<u8> {
    Op::Put(format!("k{k}").into_bytes(), format!("v{k}").into_bytes()).encode()
}

async fn many(
    proposer: &Arc<Proposer>,
    writes: Vec<Vec<u8>>,
) -> Vec<Result<Applied, ProposeError>> {
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|w| {
            let p = Arc::clone(proposer);
            tokio::spawn(async move { p.write(w).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn multi_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
    multi_thread(async {
        let (raft, engine) = node(true).await;
        let proposer = Proposer::new(raft.clone(), Duration::from_secs(10));
        let mut writes: Vec<Vec<u8>> = (0..200).map(put).collect();
        // Bad input the leader's checks would have refused, among good
        // writes: refused alone at apply.
        writes[57] = Op::Put(Vec::new(), b"v".to_vec()).encode();
        writes[123] = vec![99, 1, 2];
        let answers = many(&proposer, writes).await;
        let mut entries = BTreeSet::new();
        for (i, a) in answers.iter().enumerate() {
            let a = a.as_ref().unwrap_or_else(|e| panic!("write {i}: {e}"));
            entries.insert(a.index);
            assert_eq!(a.refused.is_some(), i == 57 || i == 123, "write {i}: {a:?}");
        }
        assert!(
            entries.len() < 200,
            "200 concurrent writes took {} entries: none were shared",
            entries.len()
        );
        let db = engine.current();
        for k in (0..200).filter(|k| ![57, 123].contains(k)) {
            assert_eq!(
                db.get(format!("k{k}")).unwrap(),
                Some(format!("v{k}").into_bytes())
            );
        }
        assert_eq!(db.len(), 198);
        raft.shutdown().await.unwrap();
    });
}

#[test]
fn a_node_that_does_not_lead_refuses_before_proposing() {
    block_on(async {
        let (raft, engine) = node(false).await;
        let proposer = Proposer::new(raft.clone(), Duration::from_secs(10));
        for a in many(&proposer, (0..5).map(put).collect()).await {
            assert!(matches!(a, Err(ProposeError::NotLeader { .. })), "{a:?}");
        }
        assert_eq!(engine.current().len(), 0);
        raft.shutdown().await.unwrap();
    });
}

#[test]
fn callers_that_stop_waiting_strand_no_one() {
    // One thread: the tasks run in the order they were spawned, so the
    // first caller of a round is the one whose write opened an entry.
    block_on(async {
        let (raft, engine) = node(true).await;
        let proposer = Proposer::new(raft.clone(), Duration::from_secs(10));
        // Rounds of writes, a third of whose callers (the first among
        // them) hang up at a different moment each round: before joining
        // the queue, while their entry is proposed, after it is applied.
        for round in 0..100u64 {
            let tasks: Vec<_> = (0..60)
                .map(|i| {
                    let p = Arc::clone(&proposer);
                    tokio::spawn(async move { p.write(put(i)).await })
                })
                .collect();
            for _ in 0..round % 5 {
                tokio::task::yield_now().await;
            }
            let mut waiting = Vec::new();
            for (i, t) in tasks.into_iter().enumerate() {
                if i % 3 == 0 {
                    t.abort();
                } else {
                    waiting.push((i, t));
                }
            }
            for (i, t) in waiting {
                let a = tokio::time::timeout(Duration::from_secs(10), t)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: write {i} was stranded"))
                    .unwrap();
                let a = a.unwrap_or_else(|e| panic!("round {round}: write {i}: {e}"));
                assert_eq!(a.refused, None);
            }
        }
        // And the proposer still takes writes.
        let a = proposer.write(put(1000)).await.unwrap();
        assert_eq!(a.refused, None);
        assert!(engine.current().get("k1000").unwrap().is_some());
        raft.shutdown().await.unwrap();
    });
}

/// A snapshot of an engine that applied `n` puts: its meta and bytes.
fn snapshot_bytes(n: u64) -> (keel_raft::SnapshotMeta, Vec<u8>) {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    let s = SimStorage::new(9);
    let (mut sm, _) = KeelStateMachine::open(
        Arc::new(s.clone()),
        "/src/sm",
        keel::Options::default(),
        keel::SyncPolicy::Never,
    )
    .unwrap();
    let entries = (1..=n).map(|i| keel_raft::Entry {
        log_id: keel_raft::LogId::new(CommittedLeaderId::new(1, 2), i),
        payload: EntryPayload::Normal(keel_raft::Command::one(put(i as usize))),
    });
    block_on(async {
        sm.apply(entries).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let bytes = s.read_file(snap.snapshot.path()).unwrap();
        (snap.meta, bytes)
    })
}

#[test]
fn a_snapshot_transfer_is_installed_whole_and_stale_chunks_cannot_complete_another() {
    use keel_raft::SnapshotReceiver;
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::InstallSnapshotRequest;
    let (meta, bytes) = snapshot_bytes(40);
    let chunks: Vec<(u64, Vec<u8>)> = bytes
        .chunks(1000)
        .enumerate()
        .map(|(i, c)| (i as u64 * 1000, c.to_vec()))
        .collect();
    assert!(chunks.len() > 3);
    block_on(async {
        let (raft, engine) = node(false).await;
        let receiver = SnapshotReceiver::new(raft.clone());
        let send = |(offset, data): &(u64, Vec<u8>)| {
            let req = InstallSnapshotRequest {
                vote: openraft::Vote::new_committed(1, 2),
                meta: meta.clone(),
                offset: *offset,
                done: *offset + data.len() as u64 == bytes.len() as u64,
                data: data.clone(),
            };
            receiver.install_snapshot(req)
        };
        let mismatch = |r: Result<_, RaftError<u64, InstallSnapshotError>>| {
            matches!(
                r,
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                    _
                )))
            )
        };
        // A chunk past the start of a transfer that never began: refused.
        assert!(mismatch(send(&chunks[2]).await));
        // The whole transfer, a chunk sent twice on the way: installed.
        send(&chunks[0]).await.unwrap();
        send(&chunks[1]).await.unwrap();
        send(&chunks[1]).await.unwrap();
        // A gap: refused, and the transfer goes on from where it was.
        assert!(mismatch(send(&chunks[3]).await));
        for c in &chunks[2..] {
            send(c).await.unwrap();
        }
        raft.wait(Some(Duration::from_secs(10)))
            .snapshot(meta.last_log_id.unwrap(), "installed")
            .await
            .unwrap();
        assert_eq!(engine.current().len(), 40);
        // Delivered again after the end: the first chunk starts a new
        // transfer, and the stale last chunk cannot complete it.
        send(&chunks[0]).await.unwrap();
        assert!(mismatch(send(chunks.last().unwrap()).await));
        // The node is still up and serving.
        assert_ne!(raft.metrics().borrow().state, ServerState::Shutdown);
        assert!(raft.metrics().borrow().running_state.is_ok());
        assert_eq!(engine.current().len(), 40);
        raft.shutdown().await.unwrap();
    });
}
