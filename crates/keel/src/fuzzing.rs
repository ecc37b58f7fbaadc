//! Entry points for fuzzing (`fuzz/`), also replayed on a committed seed
//! corpus by `cargo test`. Each panics only when an invariant breaks.

use crate::checkpoint;
use crate::op::{BatchOp, Op};
use crate::{Db, Options, WriteBatch};
use keel_storage::{CrashMode, SimStorage, Storage};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Operation decoding: what decodes re-encodes to exactly the same bytes.
pub fn op_decoding(data: &[u8]) {
    if let Ok(op) = Op::decode(data) {
        assert_eq!(
            op.encode(),
            data,
            "an operation does not re-encode identically"
        );
    }
}

/// Checkpoint decoding: never panics; what decodes, written again and read
/// back, is the same state. (Byte identity is not required: a file may split
/// entries into blocks differently from the writer and still be valid.)
pub fn checkpoint_decoding(data: &[u8]) {
    let Ok((header, tree, metadata)) = checkpoint::decode(data, 1024, 1 << 16) else {
        return;
    };
    let s = SimStorage::new(0);
    let dir = crate::layout::DataDir::new("/fuzz");
    keel_storage::create_dir_durable(&s, dir.root()).expect("sim dir");
    let path = dir.checkpoint(header.lsn);
    checkpoint::write(&s, &path, header.lsn, &tree, &metadata, None).expect("sim write");
    let back = checkpoint::read(&s, &path, 1024, 1 << 16).expect("re-read");
    assert_eq!(
        back,
        (header, tree, metadata),
        "a checkpoint does not round-trip"
    );
}

/// Manifest record decoding: never panics; what decodes re-encodes to a
/// record that decodes to the same edit; applying it to an empty or a
/// populated state never panics.
pub fn manifest_decoding(data: &[u8]) {
    use crate::manifest::{VersionEdit, VersionState};
    let Ok(edit) = VersionEdit::decode(data) else {
        return;
    };
    assert_eq!(
        VersionEdit::decode(&edit.encode()),
        Ok(edit.clone()),
        "a manifest edit does not round-trip"
    );
    let empty = VersionState::default();
    if let Ok(after) = empty.apply(&edit) {
        let _ = after.apply(&edit);
        assert_eq!(
            empty.apply(&after.snapshot()),
            Ok(after.clone()),
            "a snapshot does not recreate its state"
        );
    }
}

/// Table decoding: any bytes as a table file. Never panics; a table that
/// opens and verifies iterates in strictly increasing key order, and
/// `get` of each key it lists answers that key's entry; a table that opens
/// answers `get` with an entry, nothing, or an error, never a panic.
pub fn table_decoding(data: &[u8]) {
    use crate::table::Table;
    use keel_storage::OpenMode;
    let s = SimStorage::new(0);
    let path = std::path::Path::new("/fuzz/t.sst");
    keel_storage::create_dir_durable(&s, std::path::Path::new("/fuzz")).expect("sim dir");
    let f = s.open(path, OpenMode::CreateNew).expect("sim create");
    f.write_at(data, 0).expect("sim write");
    let Ok(table) = Table::open(f, path) else {
        return;
    };
    let _ = table.get(b"a");
    let _ = table.iter_from(b"m").count();
    if table.verify().is_err() {
        return;
    }
    let entries: Vec<_> = table
        .iter_from(&[])
        .collect::<Result<_, _>>()
        .expect("a verified table iterates");
    assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "a verified table's keys are not strictly increasing"
    );
    assert_eq!(entries.len() as u64, table.properties().entries);
    for (k, e) in &entries {
        assert_eq!(
            table.get(k).expect("a verified table reads"),
            Some(e.clone()),
            "get disagrees with iteration"
        );
    }
}

/// An engine operation sequence on simulated storage, with crashes, diffed
/// against a model. One writer under `SyncPolicy::Always`, so after any
/// crash the store must hold exactly the model (every write acknowledged,
/// none in flight).
///
/// About 80 lines: one interpreter loop over the fuzz input, whose arms
/// (operation, checkpoint, crash) share the store, the model and the storage.
pub fn engine_ops(data: &[u8]) {
    let s0 = SimStorage::new(data.len() as u64);
    let dir = PathBuf::from("/fuzz");
    keel_storage::create_dir_durable(&s0, &dir).expect("sim dir");
    let opts = Options {
        segment_size: 4096,
        checkpoint_log_bytes: Some(2048),
        checkpoint_bytes_per_sec: None,
        ..Options::default()
    };
    let mut storage = s0;
    let open = |s: &SimStorage| {
        Db::builder(&dir)
            .options(opts.clone())
            .storage(Arc::new(s.clone()))
            .open()
            .expect("recovery after a crash must succeed")
            .0
    };
    let mut db = open(&storage);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut bytes = data.iter().copied();
    let mut n = 0u32;
    while let Some(b) = bytes.next() {
        n += 1;
        if n > 300 {
            break;
        }
        let mut next = || bytes.next().unwrap_or(0);
        let key = |x: u8| vec![b'k', b'0' + x % 8];
        match b % 8 {
            0..=2 => {
                let (k, v) = (key(next()), format!("v{n}").into_bytes());
                db.put(&k, &v).expect("put");
                model.insert(k, v);
            }
            3 => {
                let k = key(next());
                db.delete(&k).expect("delete");
                model.remove(&k);
            }
            4 => {
                let (k1, k2) = (key(next()), key(next()));
                let mut wb = WriteBatch::new();
                wb.put(k1.clone(), format!("b{n}")).delete(k2.clone());
                db.write(wb).expect("batch");
                for op in [
                    BatchOp::Put(k1, format!("b{n}").into_bytes()),
                    BatchOp::Delete(k2),
                ] {
                    match op {
                        BatchOp::Put(k, v) => model.insert(k, v),
                        BatchOp::Delete(k) => model.remove(&k),
                    };
                }
            }
            5 => {
                db.clear().expect("clear");
                model.clear();
            }
            6 => {
                db.checkpoint().expect("checkpoint");
            }
            _ => {
                let mode = match next() % 4 {
                    0 => CrashMode::DropUnsynced,
                    1 => CrashMode::Torn,
                    2 => CrashMode::Reorder,
                    _ => CrashMode::Random,
                };
                drop(db);
                storage = storage.crash_with(mode);
                db = open(&storage);
            }
        }
        let state: BTreeMap<Vec<u8>, Vec<u8>> = db.iter().collect();
        assert_eq!(
            state, model,
            "the store differs from the model after op {n}"
        );
    }
}
