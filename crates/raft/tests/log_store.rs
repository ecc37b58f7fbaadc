//! keel's Raft log store on its own: entries read back across reopens,
//! a conflicting suffix is replaced, a purge hides entries durably and a
//! purge past the end starts a new generation, options that could lose an
//! acknowledged entry are refused, and a crash at any storage operation of
//! a run of appends, votes, truncations and purges leaves a state that the
//! acknowledged operations allow: nothing acknowledged lost, a vote never
//! going back, a truncated entry never coming back.

mod common;

use common::block_on;
use keel_raft::{Command, Entry, KeelLogStore, LogId, Vote};
use keel_storage::{CrashMode, Fault, FaultKind, FaultOp, SimStorage, Storage};
use keel_wal::{RecoveryMode, SyncPolicy, WalOptions};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, LogState};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DIR: &str = "/node/raft";

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        ..WalOptions::default()
    }
}

fn sim(seed: u64) -> SimStorage {
    SimStorage::new(seed)
}

fn open(s: &SimStorage) -> KeelLogStore {
    KeelLogStore::open(Arc::new(s.clone()), DIR, opts()).unwrap()
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::one(
            format!(
                "t{term}-i{index}-{}",
                "x".repeat(200 + (index % 40) as usize)
            )
            .into_bytes(),
        )),
    }
}

async fn all(store: &mut KeelLogStore) -> Vec<Entry> {
    store.try_get_log_entries(0..).await.unwrap()
}

async fn state(store: &mut KeelLogStore) -> LogState<keel_raft::TypeConfig> {
    store.get_log_state().await.unwrap()
}

#[test]
fn entries_read_back_across_a_reopen_and_the_log_state_follows() {
    block_on(async {
        let s = sim(1);
        let mut store = open(&s);
        assert_eq!(state(&mut store).await.last_log_id, None);
        let want: Vec<Entry> = (0..=120).map(|i| command(1 + i / 50, i)).collect();
        for batch in want.chunks(7) {
            store.blocking_append(batch.to_vec()).await.unwrap();
        }
        assert_eq!(all(&mut store).await, want);
        let mut reader = store.get_log_reader().await;
        assert_eq!(
            reader.try_get_log_entries(30..=32).await.unwrap(),
            want[30..=32]
        );
        assert_eq!(reader.try_get_log_entries(200..).await.unwrap(), vec![]);
        drop(store);
        let mut store = open(&s);
        assert_eq!(all(&mut store).await, want);
        assert_eq!(
            state(&mut store).await,
            LogState {
                last_purged_log_id: None,
                last_log_id: Some(log_id(3, 120)),
            }
        );
        // An entry that does not follow the last is refused.
        assert!(store.blocking_append([command(3, 122)]).await.is_err());
    });
}

#[test]
fn a_conflicting_suffix_is_replaced_and_stays_replaced_after_a_reopen() {
    block_on(async {
        let s = sim(2);
        let mut store = open(&s);
        let old: Vec<Entry> = (0..=60).map(|i| command(1, i)).collect();
        store.blocking_append(old.clone()).await.unwrap();
        store.truncate(log_id(1, 41)).await.unwrap();
        assert_eq!(state(&mut store).await.last_log_id, Some(log_id(1, 40)));
        let new: Vec<Entry> = (41..=50).map(|i| command(2, i)).collect();
        store.blocking_append(new.clone()).await.unwrap();
        drop(store);
        let mut store = open(&s);
        let want: Vec<Entry> = old[..=40].iter().cloned().chain(new).collect();
        assert_eq!(all(&mut store).await, want);
        // Everything, from the first entry.
        store.truncate(log_id(1, 0)).await.unwrap();
        assert_eq!(all(&mut store).await, vec![]);
        assert_eq!(state(&mut store).await.last_log_id, None);
        store.blocking_append([command(3, 0)]).await.unwrap();
        drop(store);
        assert_eq!(all(&mut open(&s)).await, vec![command(3, 0)]);
    });
}

#[test]
fn a_purge_hides_entries_durably_and_one_past_the_end_starts_a_new_generation() {
    block_on(async {
        let s = sim(3);
        let mut store = open(&s);
        let old: Vec<Entry> = (0..=100).map(|i| command(1, i)).collect();
        store.blocking_append(old.clone()).await.unwrap();
        store.purge(log_id(1, 70)).await.unwrap();
        assert_eq!(all(&mut store).await, old[71..]);
        // Replication asking for a range that begins below the purge
        // point gets nothing, never the entries after a hole; asking
        // from the purge point on gets them.
        let mut reader = store.get_log_reader().await;
        assert_eq!(
            reader.limited_get_log_entries(60, 80).await.unwrap(),
            vec![]
        );
        assert_eq!(store.limited_get_log_entries(60, 80).await.unwrap(), vec![]);
        assert_eq!(
            reader.limited_get_log_entries(71, 80).await.unwrap(),
            old[71..80]
        );
        // (Where a gap is allowed, the entries that remain.)
        assert_eq!(
            reader.try_get_log_entries(60..80).await.unwrap(),
            old[71..80]
        );
        drop(store);
        let mut store = open(&s);
        assert_eq!(all(&mut store).await, old[71..]);
        assert_eq!(
            state(&mut store).await,
            LogState {
                last_purged_log_id: Some(log_id(1, 70)),
                last_log_id: Some(log_id(1, 100)),
            }
        );
        // A snapshot installed ahead of the log: purge past the end.
        store.purge(log_id(2, 500)).await.unwrap();
        assert_eq!(
            state(&mut store).await,
            LogState {
                last_purged_log_id: Some(log_id(2, 500)),
                last_log_id: Some(log_id(2, 500)),
            }
        );
        assert_eq!(all(&mut store).await, vec![]);
        // An entry at or below the purge point changes nothing.
        store.blocking_append([command(2, 101)]).await.unwrap();
        assert_eq!(all(&mut store).await, vec![]);
        let new: Vec<Entry> = (501..=520).map(|i| command(2, i)).collect();
        store.blocking_append(new.clone()).await.unwrap();
        assert_eq!(store.meta().generation, 1);
        drop(store);
        let mut store = open(&s);
        assert_eq!(all(&mut store).await, new);
        // The old generation's segments are gone.
        assert_eq!(
            s.list(Path::new("/node/raft/log-0")).unwrap(),
            Vec::<String>::new()
        );
    });
}

/// A store opened again hands back its vote uncommitted: the same term and
/// candidate (never a second vote in a term), but a node that led must win
/// an election again (`keel_raft::log_store`'s module doc says why).
#[test]
fn a_reopened_store_hands_back_its_vote_uncommitted() {
    block_on(async {
        let s = sim(4);
        let mut store = open(&s);
        store.save_vote(&Vote::new_committed(5, 2)).await.unwrap();
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(5, 2))
        );
        drop(store);
        let s = s.crash_with(CrashMode::DropUnsynced);
        let mut store = open(&s);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
        store.save_vote(&Vote::new(6, 3)).await.unwrap();
        drop(store);
        let mut store = open(&s.crash_with(CrashMode::DropUnsynced));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(6, 3)));
    });
}

/// The commit index openraft reports is kept in memory for `GET /cluster`
/// (never going back), and not across a reopen: openraft learns it again.
#[test]
fn the_commit_index_is_reported_and_not_kept_across_a_reopen() {
    block_on(async {
        let s = sim(5);
        let mut store = open(&s);
        let committed = store.commit_index();
        assert_eq!(committed.get(), None);
        store.save_committed(Some(log_id(1, 7))).await.unwrap();
        assert_eq!(committed.get(), Some(7));
        store.save_committed(Some(log_id(1, 3))).await.unwrap();
        assert_eq!(committed.get(), Some(7));
        assert_eq!(store.read_committed().await.unwrap(), None);
        drop(store);
        assert_eq!(open(&s).commit_index().get(), None);
    });
}

#[test]
fn options_that_could_lose_an_acknowledged_entry_are_refused() {
    let s = sim(4);
    for (o, why) in [
        (
            WalOptions {
                sync: SyncPolicy::Interval(Duration::from_millis(10)),
                ..opts()
            },
            "sync = always",
        ),
        (
            WalOptions {
                recovery: RecoveryMode::PointInTime,
                ..opts()
            },
            "PointInTime",
        ),
        (
            WalOptions {
                recovery: RecoveryMode::SkipAnyCorruptedRecords,
                ..opts()
            },
            "SkipAnyCorruptedRecords",
        ),
    ] {
        match KeelLogStore::open(Arc::new(s.clone()), DIR, o) {
            Err(e) => assert!(e.to_string().contains(why), "{e}"),
            Ok(_) => panic!("{why}: accepted"),
        }
    }
}

/// One step of the crash scenario.
#[derive(Clone, Debug)]
enum Step {
    Append(Vec<Entry>),
    Vote(Vote),
    Truncate(u64),
    Purge(LogId),
}

/// The state a store shows: its entries, its vote, its purge point.
type Shown = (Vec<Entry>, Option<Vote>, Option<LogId>);

fn scenario() -> Vec<Step> {
    let mut steps = Vec::new();
    for b in 0..6 {
        steps.push(Step::Append(
            (b * 5..b * 5 + 5).map(|i| command(1, i)).collect(),
        ));
    }
    steps.push(Step::Vote(Vote::new(2, 2)));
    steps.push(Step::Truncate(22));
    steps.push(Step::Append((22..27).map(|i| command(2, i)).collect()));
    steps.push(Step::Vote(Vote::new_committed(2, 2)));
    // Drops the first segment (entries 0 to 13) and hides 14 and 15.
    steps.push(Step::Purge(log_id(1, 15)));
    steps.push(Step::Purge(log_id(2, 40)));
    steps.push(Step::Append((41..44).map(|i| command(3, i)).collect()));
    steps.push(Step::Vote(Vote::new(3, 1)));
    steps
}

/// What a reopened store shows after the first `n` steps: its vote
/// uncommitted (a restarted node never resumes as the leader it was).
fn model(steps: &[Step]) -> Shown {
    let (mut entries, mut vote, mut purged): Shown = (Vec::new(), None, None);
    for s in steps {
        match s {
            Step::Append(es) => entries.extend(es.iter().cloned()),
            Step::Vote(v) => vote = Some(Vote::new(v.leader_id.term, v.leader_id.node_id)),
            Step::Truncate(i) => entries.retain(|e| e.log_id.index < *i),
            Step::Purge(p) => {
                entries.retain(|e| e.log_id.index > p.index);
                purged = Some(*p);
            }
        }
    }
    (entries, vote, purged)
}

async fn run(store: &mut KeelLogStore, step: &Step) -> bool {
    match step {
        Step::Append(es) => store.blocking_append(es.clone()).await.is_ok(),
        Step::Vote(v) => store.save_vote(v).await.is_ok(),
        Step::Truncate(i) => store.truncate(log_id(0, *i)).await.is_ok(),
        Step::Purge(p) => store.purge(*p).await.is_ok(),
    }
}

async fn shown(store: &mut KeelLogStore) -> Shown {
    (
        all(store).await,
        store.read_vote().await.unwrap(),
        state(store).await.last_purged_log_id,
    )
}

/// Power loss at every storage operation of the scenario: the store opens,
/// and shows the state after every step acknowledged, or after the one in
/// flight too, or (that one an append) with a prefix of its entries, or
/// (a truncation) cut between where the log ended and the truncation
/// point.
#[test]
fn a_crash_at_any_storage_operation_leaves_a_state_the_acknowledged_steps_allow() {
    let steps = scenario();
    let mut crashed = 0;
    for nth in 1..2000u64 {
        let s = sim(10);
        let acked = block_on(async {
            let mut store = open(&s);
            s.inject(Fault {
                op: FaultOp::Any,
                nth,
                persistent: false,
                kind: FaultKind::Crash,
            });
            let mut acked = 0;
            for step in &steps {
                if !run(&mut store, step).await {
                    break;
                }
                acked += 1;
            }
            acked
        });
        let done = !s.is_frozen();
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepAll,
            CrashMode::Random,
        ] {
            let after = s.crash_with(mode);
            let got = block_on(async {
                let mut store = KeelLogStore::open(Arc::new(after.clone()), DIR, opts())
                    .unwrap_or_else(|e| panic!("crash at op {nth} ({mode:?}): {e}"));
                shown(&mut store).await
            });
            let before = model(&steps[..acked]);
            let with_next = model(&steps[..(acked + 1).min(steps.len())]);
            let partial = match steps.get(acked) {
                Some(Step::Append(es)) => (0..es.len()).any(|k| {
                    let mut m = before.clone();
                    m.0.extend(es[..k].iter().cloned());
                    m == got
                }),
                // An unfinished truncation leaves the log cut anywhere
                // between where it was and the truncation point (later
                // segments go newest first).
                Some(Step::Truncate(_)) => {
                    got.1 == before.1
                        && got.2 == before.2
                        && got.0.len() >= with_next.0.len()
                        && before.0.starts_with(&got.0)
                }
                _ => false,
            };
            assert!(
                got == before || got == with_next || partial,
                "crash at op {nth} ({mode:?}) after {acked} steps: {:?} vote {:?} purged {:?}",
                got.0.iter().map(|e| e.log_id).collect::<Vec<_>>(),
                got.1,
                got.2
            );
        }
        if done {
            assert_eq!(acked, steps.len());
            break;
        }
        crashed += 1;
    }
    assert!(crashed >= 30, "only {crashed} crash points");
}

#[test]
fn an_empty_log_begins_at_any_index_and_entries_below_the_purge_point_change_nothing() {
    block_on(async {
        let s = sim(5);
        let mut store = open(&s);
        // A follower's first entries may start anywhere.
        let first: Vec<Entry> = (7..=9).map(|i| command(1, i)).collect();
        store.blocking_append(first.clone()).await.unwrap();
        assert_eq!(all(&mut store).await, first);
        drop(store);
        let mut store = open(&s);
        assert_eq!(all(&mut store).await, first);
        store.purge(log_id(1, 8)).await.unwrap();
        // Entry 8 again (a leader's retry): already compacted, ignored;
        // entry 10 follows 9.
        store
            .blocking_append([command(1, 8), command(1, 10)])
            .await
            .unwrap();
        assert_eq!(all(&mut store).await, vec![command(1, 9), command(1, 10)]);
        // A gap after entries is refused.
        assert!(store.blocking_append([command(1, 12)]).await.is_err());
    });
}
