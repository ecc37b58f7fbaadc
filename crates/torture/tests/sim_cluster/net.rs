//! The simulated network between the nodes: every Raft RPC goes through
//! [`SimNet::call`], which draws its fate from the seed. A request may be
//! lost (the sender waits out its deadline), delayed on the way there and
//! back (so RPCs overtake each other), delivered with its answer lost (it
//! took effect, the sender cannot know), or cut by a partition; a node that
//! is down refuses at once. Time is tokio's paused clock: a delay costs no
//! wall time, and [`SimNet::hold_clock_for_disks`] keeps the clock still
//! while a node's log syncs on a thread the runtime cannot see.

use keel_raft::{AppendsInFlight, EngineHandle, Proposer, SnapshotReceiver, TypeConfig};
use keel_storage::rng::SplitMix64;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How the network behaves now; the nemesis changes it during a run.
#[derive(Clone, Copy, Debug)]
pub struct Weather {
    /// Requests lost, per thousand.
    pub loss_per_mille: u64,
    /// Answers lost (after the request took effect), per thousand.
    pub reply_loss_per_mille: u64,
    /// The longest delay one way.
    pub max_delay_ms: u64,
}

impl Weather {
    /// No loss, up to 2 ms each way.
    pub const CALM: Weather = Weather {
        loss_per_mille: 0,
        reply_loss_per_mille: 0,
        max_delay_ms: 2,
    };
}

/// The longest wall time one log sync may take before the run counts it as
/// stuck (a sync on simulated storage takes microseconds).
pub const SYNC_LIMIT: Duration = Duration::from_secs(10);

/// What a running node offers: its Raft handle and its engine.
#[derive(Clone)]
pub struct Endpoint {
    pub raft: Raft<TypeConfig>,
    pub engine: EngineHandle,
    /// Snapshot chunks go through it, as on `/raft/snapshot`.
    pub snapshots: SnapshotReceiver,
    /// Writes go through it, as in `keel serve`.
    pub proposer: Arc<Proposer>,
}

struct State {
    rng: SplitMix64,
    up: BTreeMap<u64, Endpoint>,
    /// Each node's Raft log appends waiting for their fdatasync.
    disks: BTreeMap<u64, AppendsInFlight>,
    /// (from, to): everything sent from `from` to `to` is lost.
    cut: BTreeSet<(u64, u64)>,
    weather: Weather,
    /// A node whose log sync never ended (the clock was let go).
    stuck: Option<u64>,
    /// Where the run is (simulated time, each node's state), for a run
    /// that does not end.
    progress: String,
    /// RPCs sent, and those lost (either way, or cut).
    sent: u64,
    lost: u64,
}

/// The network every node of one simulated cluster shares.
pub struct SimNet {
    state: Mutex<State>,
}

/// Counts of what the network did.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
}

struct Fate {
    there: Duration,
    back: Duration,
    lost: bool,
    reply_lost: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("simulated network: {0}")]
struct SimNetError(String);

impl SimNet {
    pub fn new(seed: u64) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State {
                rng: SplitMix64::new(seed),
                up: BTreeMap::new(),
                disks: BTreeMap::new(),
                stuck: None,
                progress: String::new(),
                cut: BTreeSet::new(),
                weather: Weather::CALM,
                sent: 0,
                lost: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn set_up(&self, id: u64, endpoint: Endpoint) {
        self.lock().up.insert(id, endpoint);
    }

    /// Takes node `id` off the network; its log no longer holds the clock
    /// (a crashed node's syncs fail on its frozen disk, or never end).
    pub fn set_down(&self, id: u64) {
        let mut st = self.lock();
        st.up.remove(&id);
        st.disks.remove(&id);
    }

    /// Node `id`'s Raft log (a new one at each start).
    pub fn set_disk(&self, id: u64, appends: AppendsInFlight) {
        self.lock().disks.insert(id, appends);
    }

    /// A running node whose log is syncing an append now.
    pub fn disk_busy(&self) -> Option<u64> {
        let st = self.lock();
        st.disks
            .iter()
            .find(|(_, a)| a.get() > 0)
            .map(|(id, _)| *id)
    }

    /// A node whose log sync did not end within [`SYNC_LIMIT`] of wall
    /// time, if one did not.
    pub fn stuck(&self) -> Option<u64> {
        self.lock().stuck
    }

    pub fn set_progress(&self, p: String) {
        self.lock().progress = p;
    }

    pub fn progress(&self) -> String {
        self.lock().progress.clone()
    }

    /// Node `id`, if it is running.
    pub fn endpoint(&self, id: u64) -> Option<Endpoint> {
        self.lock().up.get(&id).cloned()
    }

    pub fn set_weather(&self, w: Weather) {
        self.lock().weather = w;
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&self, side: &BTreeSet<u64>, all: &[u64]) {
        let mut st = self.lock();
        for &a in side {
            for &b in all.iter().filter(|b| !side.contains(b)) {
                st.cut.insert((a, b));
                st.cut.insert((b, a));
            }
        }
    }

    /// Cuts one direction only: `from` can no longer reach `to`.
    pub fn cut_one_way(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
    }

    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn stats(&self) -> NetStats {
        let st = self.lock();
        NetStats {
            sent: st.sent,
            lost: st.lost,
        }
    }

    fn fate(&self, from: u64, to: u64) -> Fate {
        let mut st = self.lock();
        let w = st.weather;
        st.sent += 1;
        let delay = |st: &mut State| Duration::from_micros(st.rng.below(w.max_delay_ms * 1000 + 1));
        let there = delay(&mut st);
        let back = delay(&mut st);
        let cut = st.cut.contains(&(from, to));
        let lost = cut || st.rng.below(1000) < w.loss_per_mille;
        let reply_lost = st.rng.below(1000) < w.reply_loss_per_mille;
        st.lost += u64::from(lost || reply_lost);
        Fate {
            there,
            back,
            lost,
            reply_lost,
        }
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.lock().cut.contains(&(from, to))
    }

    /// Keeps the paused clock still while a log syncs (on a thread of its
    /// own, which the runtime cannot see: an idle runtime would jump its
    /// clock to the next timer, and every sync would look as slow as the
    /// nearest timeout); otherwise lets it run, 200 µs at most at a time,
    /// so a sync that starts costs at most that.
    /// A sync that has not ended within [`SYNC_LIMIT`] of wall time is
    /// recorded as stuck and the clock let go, so the run ends and fails
    /// instead of spinning forever.
    pub async fn hold_clock_for_disks(self: Arc<Self>) {
        let mut busy_since: Option<std::time::Instant> = None;
        loop {
            match self.disk_busy() {
                Some(id) => {
                    let since = *busy_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > SYNC_LIMIT {
                        self.lock().stuck = Some(id);
                        return;
                    }
                    std::thread::yield_now();
                    tokio::task::yield_now().await;
                }
                None => {
                    busy_since = None;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
    }

    /// Sends one RPC from `from` to `to` and waits for its answer, at most
    /// `ttl`: `f` is the target node's handler.
    async fn call<T, E, F, Fut>(
        &self,
        from: u64,
        to: u64,
        ttl: Duration,
        f: F,
    ) -> Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error,
        F: FnOnce(Endpoint) -> Fut,
        Fut: Future<Output = Result<T, RaftError<u64, E>>>,
    {
        let unreachable = |why: &str| {
            RPCError::Unreachable(Unreachable::new(&SimNetError(format!(
                "{from} -> {to}: {why}"
            ))))
        };
        let fate = self.fate(from, to);
        // Even a refusal takes a moment: with the clock paused, an RPC that
        // failed in no time would let a retry loop spin without time passing.
        tokio::time::sleep(fate.there.max(Duration::from_micros(100))).await;
        let Some(target) = self.endpoint(to) else {
            return Err(unreachable("node is down"));
        };
        let exchange = async {
            if fate.lost {
                return std::future::pending().await;
            }
            let answer = f(target).await;
            tokio::time::sleep(fate.back).await;
            if fate.reply_lost || self.is_cut(to, from) {
                return std::future::pending().await;
            }
            answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(unreachable("no answer in time")),
        }
    }
}

/// openraft's view of the network from one node.
#[derive(Clone)]
pub struct SimNetwork {
    pub net: Arc<SimNet>,
    pub from: u64,
}

/// One node's connection to another.
pub struct SimConnection {
    net: Arc<SimNet>,
    from: u64,
    to: u64,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimConnection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> SimConnection {
        SimConnection {
            net: Arc::clone(&self.net),
            from: self.from,
            to: target,
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.net
            .call(self.from, self.to, option.hard_ttl(), |ep| async move {
                ep.raft.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.net
            .call(self.from, self.to, option.hard_ttl(), |ep| async move {
                ep.snapshots.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.net
            .call(self.from, self.to, option.hard_ttl(), |r| async move {
                r.raft.vote(rpc).await
            })
            .await
    }
}
