//! The simulated clients and the history they record. Each client puts
//! unique values, deletes and reads a few keys through whichever node it
//! believes leads (openraft's `client_write`, and `ensure_linearizable`
//! then a read of that node's engine, as `keel serve` does). Outcomes are
//! classified as `keel serve` does ([`keel_raft::propose`]): acknowledged,
//! certainly not written (refused before proposing), or unknown (no answer
//! in time, the lead changed, the node crashed), and
//! recorded with a logical clock that orders every call and return as they
//! happened on the one runtime thread.

use crate::net::SimNet;
use keel::op::Op;
use keel_raft::{ProposeError, Proposer};
use keel_storage::rng::SplitMix64;
use keel_torture::linearizability::{self, Action};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The keys the clients share (few, so operations overlap).
pub const KEYS: u64 = 3;

/// Every completed or unknown operation, per key, on one logical clock.
#[derive(Default)]
pub struct Recorder {
    clock: AtomicU64,
    ops: Mutex<BTreeMap<String, Vec<linearizability::Op>>>,
    /// Unknown operations, closed at the end of the run.
    pending: Mutex<Vec<(String, linearizability::Op)>>,
    /// What each operation went through (node, log index), by call time,
    /// and the nemesis' actions, for the dump of a failed seed.
    notes: Mutex<BTreeMap<u64, String>>,
    pub acknowledged: AtomicU64,
    pub not_written: AtomicU64,
    pub unknown: AtomicU64,
    pub reads: AtomicU64,
}

impl Recorder {
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Notes what happened at time `t` (an operation's call, or a fault).
    pub fn note(&self, t: u64, what: String) {
        self.notes.lock().unwrap().insert(t, what);
    }

    /// Every note, in time order.
    pub fn notes(&self) -> BTreeMap<u64, String> {
        self.notes.lock().unwrap().clone()
    }

    fn record(&self, key: &str, call: u64, action: Action) {
        let op = linearizability::Op {
            call,
            ret: self.tick(),
            action,
            unknown: false,
        };
        self.ops
            .lock()
            .unwrap()
            .entry(key.into())
            .or_default()
            .push(op);
    }

    fn record_unknown(&self, key: &str, call: u64, action: Action) {
        let op = linearizability::Op {
            call,
            ret: u64::MAX,
            action,
            unknown: true,
        };
        self.pending.lock().unwrap().push((key.into(), op));
        self.unknown.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a final read of `key` that saw `value`, after every other
    /// operation returned.
    pub fn final_read(&self, key: &str, value: Option<String>) {
        let call = self.tick();
        self.record(key, call, Action::Read(value));
    }

    /// The history per key, unknown operations' windows closed now: they
    /// may have taken effect any time up to here, or never.
    pub fn close(&self) -> BTreeMap<String, Vec<linearizability::Op>> {
        let now = self.tick();
        let mut ops = self.ops.lock().unwrap().clone();
        for (key, mut op) in self.pending.lock().unwrap().drain(..) {
            op.ret = now;
            ops.entry(key).or_default().push(op);
        }
        ops
    }
}

pub fn key_name(k: u64) -> String {
    format!("k{k}")
}

/// What a write's outcome says about whether it is in the log.
enum Written {
    /// At this log id.
    Yes(String),
    No(Option<u64>),
    Unknown(String),
}

/// Proposes as `keel serve` does ([`keel_raft::Proposer`]: concurrent
/// writes share an entry).
async fn write(proposer: &Arc<Proposer>, op: Op) -> Written {
    match proposer.write(op.encode()).await {
        Ok(r) if r.refused.is_none() => Written::Yes(format!("index {}", r.index)),
        Ok(r) => panic!("a valid write was refused at apply: {:?}", r.refused),
        Err(ProposeError::NotLeader { leader }) => Written::No(leader),
        Err(ProposeError::Unknown(why)) => Written::Unknown(why),
    }
}

/// One client: operations until `stop`, a few milliseconds apart.
pub async fn run_client(
    id: u64,
    seed: u64,
    net: Arc<SimNet>,
    members: Vec<u64>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = SplitMix64::new(seed);
    let mut leader: Option<u64> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_micros(500 + rng.below(5_000))).await;
        let node = match leader {
            Some(l) if rng.below(10) > 0 => l,
            _ => members[rng.below(members.len() as u64) as usize],
        };
        let Some(ep) = net.endpoint(node) else {
            leader = None;
            continue;
        };
        let key = key_name(rng.below(KEYS));
        let dice = rng.below(10);
        let call = rec.tick();
        if dice < 4 {
            // Bounded as `keel serve` bounds it: a node that led when it
            // took the read index may never apply up to it.
            let confirmed =
                tokio::time::timeout(Duration::from_secs(2), ep.raft.ensure_linearizable()).await;
            match confirmed {
                Ok(Ok(_)) => {
                    let engine = ep.engine.current();
                    let applied =
                        keel_raft::state_machine::applied_of(&engine.metadata()).map(|(id, _)| id);
                    rec.note(
                        call,
                        format!("read on node {node}, engine applied {applied:?}"),
                    );
                    let v = engine.get(&key).expect("a read of the engine");
                    let v = v.map(|v| String::from_utf8(v).expect("values are text"));
                    rec.record(&key, call, Action::Read(v));
                    rec.reads.fetch_add(1, Ordering::Relaxed);
                    leader = Some(node);
                }
                Ok(Err(_)) | Err(_) => leader = ep.raft.metrics().borrow().current_leader,
            }
            continue;
        }
        n += 1;
        let (op, value) = if dice < 5 {
            (Op::Delete(key.clone().into_bytes()), None)
        } else {
            let v = format!("c{id}.{n}");
            (
                Op::Put(key.clone().into_bytes(), v.clone().into_bytes()),
                Some(v),
            )
        };
        match write(&ep.proposer, op).await {
            Written::Yes(at) => {
                rec.note(call, format!("write on node {node}, applied at {at}"));
                rec.record(&key, call, Action::Write(value));
                rec.acknowledged.fetch_add(1, Ordering::Relaxed);
                leader = Some(node);
            }
            Written::No(hint) => {
                rec.not_written.fetch_add(1, Ordering::Relaxed);
                leader = hint;
            }
            Written::Unknown(why) => {
                rec.note(call, format!("write on node {node}: {why}"));
                rec.record_unknown(&key, call, Action::Write(value));
                leader = None;
            }
        }
    }
}
