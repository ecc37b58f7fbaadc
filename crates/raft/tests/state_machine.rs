//! keel's engine as openraft's state machine, on its own: entries applied
//! with their log id, refused writes applied as no-ops with the reason, an
//! engine that lost its unsynced tail re-applied to the same state, a
//! snapshot built on one node and installed on another, damage to a
//! snapshot file refused, and power loss at every storage operation of an
//! install leaving the old state or the new one, never a mix.

mod common;

use common::block_on;
use keel::op::{BatchOp, Op};
use keel_raft::state_machine::APPLIED;
use keel_raft::{Command, Entry, KeelStateMachine, LogId, SnapshotMeta};
use keel_storage::{CrashMode, Fault, FaultKind, FaultOp, OpenMode, SimStorage, Storage};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

const DIR: &str = "/node/sm";

fn options(tables: bool) -> keel::Options {
    let mut o = keel::Options::default();
    o.segment_size = 8192;
    o.memtable_size = tables.then_some(keel::options::MIN_MEMTABLE_SIZE);
    o
}

fn open(s: &SimStorage, tables: bool) -> KeelStateMachine {
    KeelStateMachine::open(
        Arc::new(s.clone()),
        DIR,
        options(tables),
        keel::SyncPolicy::Never,
    )
    .unwrap()
    .0
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1 + index / 50, 1), index)
}

/// Entry `i`: a put of `k{i % 7}`, a delete every fifth, a batch every
/// eleventh, a clear at 40.
fn op(i: u64) -> Op {
    let key = |j: u64| format!("k{}", j % 7).into_bytes();
    match i {
        40 => Op::Clear,
        _ if i.is_multiple_of(11) => Op::Batch(vec![
            BatchOp::Put(key(i), format!("b{i}").into_bytes()),
            BatchOp::Delete(key(i + 1)),
        ]),
        _ if i.is_multiple_of(5) => Op::Delete(key(i)),
        _ => Op::Put(key(i), format!("v{i}").into_bytes()),
    }
}

fn entry(i: u64) -> Entry {
    Entry {
        log_id: log_id(i),
        payload: EntryPayload::Normal(Command::one(op(i).encode())),
    }
}

fn membership_entry(i: u64) -> Entry {
    let nodes = BTreeMap::from([(1, openraft::BasicNode::new("127.0.0.1:7001"))]);
    Entry {
        log_id: log_id(i),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], nodes)),
    }
}

/// The keys after entries `1..=n`.
fn model(n: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for i in 1..=n {
        match op(i) {
            Op::Put(k, v) => {
                m.insert(k, v);
            }
            Op::Delete(k) => {
                m.remove(&k);
            }
            Op::Clear => m.clear(),
            Op::Batch(ops) => {
                for o in ops {
                    match o {
                        BatchOp::Put(k, v) => {
                            m.insert(k, v);
                        }
                        BatchOp::Delete(k) => {
                            m.remove(&k);
                        }
                    }
                }
            }
            Op::WithMetadata { .. } => unreachable!(),
        }
    }
    m
}

fn keys(sm: &KeelStateMachine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    sm.engine().iter().collect()
}

fn applied(sm: &mut KeelStateMachine) -> Option<u64> {
    block_on(sm.applied_state()).unwrap().0.map(|l| l.index)
}

#[test]
fn entries_apply_with_their_log_id_and_refused_writes_apply_as_no_ops() {
    let s = SimStorage::new(1);
    let mut sm = open(&s, true);
    let results = block_on(sm.apply((1..=30).map(entry))).unwrap();
    assert_eq!(results.len(), 30);
    assert!(results.iter().all(|r| r.refused == [None]));
    assert_eq!(keys(&sm), model(30));
    assert_eq!(applied(&mut sm), Some(30));
    // A command that is not a keel write, and one the engine refuses (an
    // empty key): applied, nothing changed, the reason returned.
    let bad = [
        Entry {
            log_id: log_id(31),
            payload: EntryPayload::Normal(Command::one(vec![99, 1, 2])),
        },
        Entry {
            log_id: log_id(32),
            payload: EntryPayload::Normal(Command::one(
                Op::Put(Vec::new(), b"v".to_vec()).encode(),
            )),
        },
        membership_entry(33),
        Entry {
            log_id: log_id(34),
            payload: EntryPayload::Blank,
        },
    ];
    let results = block_on(sm.apply(bad)).unwrap();
    assert!(results[0].refused[0]
        .as_deref()
        .unwrap()
        .contains("not a keel write"));
    assert!(results[1].refused[0].as_deref().unwrap().contains("key"));
    assert!(results[2].refused.is_empty() && results[3].refused.is_empty());
    assert_eq!(keys(&sm), model(30));
    let (last, membership) = block_on(sm.applied_state()).unwrap();
    assert_eq!(last, Some(log_id(34)));
    assert_eq!(membership.log_id(), &Some(log_id(33)));
    // The metadata is not a key.
    assert_eq!(sm.engine().get(APPLIED).unwrap(), None);
}

#[test]
fn an_engine_that_lost_its_unsynced_tail_re_applies_to_the_same_state() {
    for tables in [true, false] {
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepAll] {
            let s = SimStorage::new(2);
            let mut sm = open(&s, tables);
            for chunk in (1..=120u64).collect::<Vec<_>>().chunks(9) {
                block_on(sm.apply(chunk.iter().map(|&i| entry(i)))).unwrap();
            }
            let s = s.crash_with(mode);
            drop(sm);
            let mut sm = open(&s, tables);
            let from = applied(&mut sm).unwrap_or(0);
            assert!(from <= 120);
            // What the engine holds is exactly what its log id says.
            assert_eq!(keys(&sm), model(from), "tables {tables}, {mode:?}");
            // openraft re-applies the entries after it from the Raft log.
            block_on(sm.apply((from + 1..=120).map(entry))).unwrap();
            assert_eq!(keys(&sm), model(120));
            assert_eq!(applied(&mut sm), Some(120));
        }
    }
}

/// Entries of several writes: entry `e` (from 1) holds the next
/// `SIZES[e % 6]` writes of `op`'s sequence; `(entry, first write, last
/// write)` for writes `1..=n`.
fn multi_entries(n: u64) -> Vec<(Entry, u64, u64)> {
    const SIZES: [u64; 6] = [3, 1, 5, 2, 7, 4];
    let mut out = Vec::new();
    let mut next = 1;
    let mut e = 1;
    while next <= n {
        let last = (next + SIZES[(e % 6) as usize] - 1).min(n);
        let writes = (next..=last).map(|i| op(i).encode()).collect();
        let entry = Entry {
            log_id: log_id(e),
            payload: EntryPayload::Normal(Command { writes }),
        };
        out.push((entry, next, last));
        next = last + 1;
        e += 1;
    }
    out
}

#[test]
fn an_entry_of_several_writes_applies_each_on_its_own() {
    let s = SimStorage::new(11);
    let mut sm = open(&s, false);
    let entries = multi_entries(60);
    let results = block_on(sm.apply(entries.iter().map(|(e, _, _)| e.clone()))).unwrap();
    for (r, (e, first, last)) in results.iter().zip(&entries) {
        assert_eq!(r.index, e.log_id.index);
        assert_eq!(r.refused, vec![None; (last - first + 1) as usize]);
    }
    assert_eq!(keys(&sm), model(60));
    // A bad write between good ones: refused alone, the others applied.
    let next = entries.len() as u64 + 1;
    let mixed = Entry {
        log_id: log_id(next),
        payload: EntryPayload::Normal(Command {
            writes: vec![
                Op::Put(b"x".to_vec(), b"1".to_vec()).encode(),
                Op::Put(Vec::new(), b"v".to_vec()).encode(),
                vec![99],
                Op::Put(b"y".to_vec(), b"2".to_vec()).encode(),
                Op::Put(vec![b'k'; 1 << 20], b"3".to_vec()).encode(),
            ],
        }),
    };
    let r = block_on(sm.apply([mixed])).unwrap();
    let refused: Vec<bool> = r[0].refused.iter().map(Option::is_some).collect();
    assert_eq!(refused, [false, true, true, false, true]);
    let mut want = model(60);
    want.insert(b"x".to_vec(), b"1".to_vec());
    want.insert(b"y".to_vec(), b"2".to_vec());
    assert_eq!(keys(&sm), want);
    assert_eq!(applied(&mut sm), Some(next));
}

#[test]
fn a_crash_inside_an_entry_of_several_writes_neither_loses_nor_repeats_a_write() {
    let entries = multi_entries(150);
    let mut partial = 0;
    for seed in 0..60u64 {
        let tables = seed % 2 == 0;
        let s = SimStorage::new(100 + seed);
        let mut sm = open(&s, tables);
        for chunk in entries.chunks(4) {
            block_on(sm.apply(chunk.iter().map(|(e, _, _)| e.clone()))).unwrap();
        }
        let lsn = sm.engine().stats().applied_lsn;
        let mode = [CrashMode::Torn, CrashMode::Prefix, CrashMode::Random][seed as usize % 3];
        let s = s.crash_with(mode);
        drop(sm);
        let mut sm = open(&s, tables);
        let from = applied(&mut sm).unwrap_or(0);
        // The engine holds the entries up to its log id and perhaps the
        // first writes of the next one: a prefix of the writes.
        let held = keys(&sm);
        let done = if from == 0 {
            0
        } else {
            entries[from as usize - 1].2
        };
        let upto = entries.get(from as usize).map_or(done, |e| e.2 - 1);
        let k = (done..=upto).find(|&k| model(k) == held);
        let k = k.unwrap_or_else(|| panic!("seed {seed}: not a prefix of the writes"));
        if k > done {
            partial += 1;
        }
        // openraft applies the entries after its log id again; the writes
        // the engine holds are not written a second time.
        let rest = entries[from as usize..].iter().map(|(e, _, _)| e.clone());
        block_on(sm.apply(rest)).unwrap();
        assert_eq!(keys(&sm), model(150), "seed {seed}");
        assert_eq!(applied(&mut sm), Some(entries.len() as u64));
        assert_eq!(
            sm.engine().stats().applied_lsn,
            lsn,
            "seed {seed}: as many engine records as without the crash"
        );
    }
    assert!(partial >= 5, "only {partial} crashes fell inside an entry");
}

/// Builds a snapshot on a node that applied `1..=n`; returns its meta and
/// bytes.
fn snapshot_of(n: u64, tables: bool) -> (SnapshotMeta, Vec<u8>) {
    let s = SimStorage::new(3);
    let mut sm = open(&s, tables);
    block_on(sm.apply((1..=n).map(entry))).unwrap();
    let mut builder = block_on(sm.get_snapshot_builder());
    let snap = block_on(builder.build_snapshot()).unwrap();
    let bytes = s.read_file(snap.snapshot.path()).unwrap();
    (snap.meta, bytes)
}

/// Installs `bytes` as a received snapshot.
fn install(sm: &mut KeelStateMachine, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), String> {
    block_on(async {
        let file = sm
            .begin_receiving_snapshot()
            .await
            .map_err(|e| e.to_string())?;
        file.file().write_at(bytes, 0).map_err(|e| e.to_string())?;
        sm.install_snapshot(meta, file)
            .await
            .map_err(|e| e.to_string())
    })
}

#[test]
fn a_snapshot_built_on_one_node_installs_on_another_and_survives_a_restart() {
    for tables in [true, false] {
        let (meta, bytes) = snapshot_of(90, tables);
        assert_eq!(meta.last_log_id, Some(log_id(90)));
        let s = SimStorage::new(4);
        let mut sm = open(&s, tables);
        block_on(sm.apply((1..=10).map(entry))).unwrap();
        install(&mut sm, &meta, &bytes).unwrap();
        assert_eq!(keys(&sm), model(90));
        assert_eq!(applied(&mut sm), Some(90));
        let current = block_on(sm.get_current_snapshot()).unwrap().unwrap();
        assert_eq!(current.meta, meta);
        // Applying goes on from there, and a restart keeps all of it.
        block_on(sm.apply((91..=100).map(entry))).unwrap();
        drop(sm);
        let mut sm = open(&s.crash_with(CrashMode::KeepAll), tables);
        assert_eq!(keys(&sm), model(100));
        assert_eq!(applied(&mut sm), Some(100));
    }
}

#[test]
fn snapshots_are_built_and_installed_again_after_restarts() {
    // Work directories of an earlier run stay (emptied): names must not
    // collide with them (found by keel-torture --cluster).
    let (meta, bytes) = snapshot_of(30, true);
    let s = SimStorage::new(8);
    for round in 0..3u64 {
        let mut sm = open(&s, true);
        let from = applied(&mut sm).unwrap_or(0);
        block_on(sm.apply((from + 1..=from + 10).map(entry))).unwrap();
        let mut builder = block_on(sm.get_snapshot_builder());
        let snap = block_on(builder.build_snapshot()).unwrap();
        assert_eq!(
            snap.meta.last_log_id,
            Some(log_id(from + 10)),
            "round {round}"
        );
        if round == 1 {
            install(&mut sm, &meta, &bytes).unwrap();
            assert_eq!(keys(&sm), model(30));
        }
        drop(sm);
    }
}

#[test]
fn a_damaged_or_cut_snapshot_is_refused_and_changes_nothing() {
    let (meta, bytes) = snapshot_of(30, true);
    let s = SimStorage::new(5);
    let mut sm = open(&s, true);
    block_on(sm.apply((1..=5).map(entry))).unwrap();
    // Bytes flipped across the file (a whole-file check covers every byte;
    // a sample keeps the test short: the file holds a preallocated
    // manifest segment), and cuts.
    let mut refused = 0;
    let sample = (0..64)
        .chain((0..400).map(|i| i * bytes.len() / 400))
        .chain(bytes.len() - 40..bytes.len());
    for at in sample {
        let mut d = bytes.clone();
        d[at] ^= 0x10;
        assert!(
            install(&mut sm, &meta, &d).is_err(),
            "flip at {at} accepted"
        );
        refused += 1;
    }
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(install(&mut sm, &meta, &bytes[..cut]).is_err());
        refused += 1;
    }
    assert!(refused > 10);
    assert_eq!(keys(&sm), model(5));
    assert_eq!(applied(&mut sm), Some(5));
    // Another snapshot's meta than the one the file holds.
    let mut other = meta.clone();
    other.last_log_id = Some(log_id(29));
    assert!(install(&mut sm, &other, &bytes).is_err());
    install(&mut sm, &meta, &bytes).unwrap();
    assert_eq!(keys(&sm), model(30));
}

#[test]
fn a_snapshot_naming_a_file_outside_a_backup_is_refused() {
    // A well-formed snapshot (FORMAT.md "Raft snapshot file") whose one
    // file is `../escape`.
    let meta = SnapshotMeta::default();
    let json = serde_json::to_vec(&meta).unwrap();
    let mut b = b"KEELSNAP".to_vec();
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(&json);
    let name = b"../escape";
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'x');
    b.extend_from_slice(&crc32c::crc32c(b"x").to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(b"KEELSEND");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    let s = SimStorage::new(6);
    let f = s.open(Path::new("/snap"), OpenMode::CreateNew).unwrap();
    f.write_at(&b, 0).unwrap();
    let e = keel_raft::snapshot::unpack(&s, &*f, Path::new("/snap"), Path::new("/u"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not one of a backup's"), "{e}");
    assert!(!s.exists(Path::new("/escape")).unwrap());
}

#[test]
fn power_loss_at_every_storage_operation_of_an_install_leaves_old_or_new() {
    let (meta, bytes) = snapshot_of(60, true);
    let (mut old, mut new, mut ops) = (0, 0, 0);
    for mode in [CrashMode::DropUnsynced, CrashMode::KeepAll, CrashMode::Torn] {
        for nth in 1.. {
            let s = SimStorage::new(7);
            let mut sm = open(&s, true);
            block_on(sm.apply((1..=20).map(entry))).unwrap();
            s.inject(Fault {
                op: FaultOp::Any,
                nth,
                persistent: false,
                kind: FaultKind::Crash,
            });
            let result = install(&mut sm, &meta, &bytes);
            let crashed = s.is_frozen();
            drop(sm);
            let mut sm = open(&s.crash_with(mode), true);
            // Before the install the engine (SyncPolicy::Never) may have
            // lost an unsynced tail: any prefix consistent with its log id.
            match applied(&mut sm) {
                Some(60) => {
                    assert_eq!(keys(&sm), model(60), "{mode:?} op {nth}");
                    // With the snapshot it came from: the log it covers
                    // may be gone.
                    let current = block_on(sm.get_current_snapshot()).unwrap();
                    assert_eq!(
                        current.map(|c| c.meta),
                        Some(meta.clone()),
                        "{mode:?} op {nth}: the new engine without its snapshot"
                    );
                    new += 1;
                }
                before if before.unwrap_or(0) <= 20 => {
                    assert!(
                        crashed,
                        "{mode:?} op {nth}: the install returned {result:?} and was lost"
                    );
                    assert_eq!(keys(&sm), model(before.unwrap_or(0)));
                    old += 1;
                }
                other => panic!("{mode:?} op {nth}: applied {other:?}"),
            }
            // The node goes on either way.
            let from = applied(&mut sm).unwrap_or(0);
            block_on(sm.apply((from + 1..=from + 3).map(entry))).unwrap();
            if !crashed {
                assert!(result.is_ok());
                ops = ops.max(nth);
                break;
            }
        }
    }
    println!("install: {ops} storage operations; power loss left the old state {old} times, the new {new}");
    assert!(old > 0 && new > 0);
}
