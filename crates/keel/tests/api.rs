//! The engine's API on real files: operations, limits, the directory lock,
//! checkpoints and what they let go of, fallback to an older checkpoint,
//! options files, and async use.

use keel::{Db, Error, Options, SyncPolicy, WriteBatch};
use std::sync::Arc;

fn small() -> Options {
    {
        let mut o = Options::default();
        o.segment_size = 8192;
        o.checkpoint_log_bytes = None;
        o
    }
}

/// [`small`], every key in memory: for the tests of checkpoint files.
fn in_memory() -> Options {
    let mut o = small();
    o.memtable_size = None;
    o
}

#[test]
fn put_get_delete_clear_batch_scan_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), small()).unwrap();
    db.put("b", "2").unwrap();
    db.put("a", "1").unwrap();
    db.put("c:x", "3").unwrap();
    db.put("c:y", vec![0u8, 255, 9]).unwrap();
    assert_eq!(db.get("a").unwrap(), Some(b"1".to_vec()));
    db.delete("a").unwrap();
    db.delete("a").unwrap(); // idempotent
    assert_eq!(db.get("a").unwrap(), None);
    let mut batch = WriteBatch::new();
    batch.put("d", "4").delete("b").put("e", "");
    db.write(batch).unwrap();
    assert_eq!(db.get("b").unwrap(), None);
    assert_eq!(db.get("e").unwrap(), Some(vec![]));
    let prefix = db.scan_prefix("c:", 10).unwrap();
    assert_eq!(prefix.len(), 2);
    assert_eq!(prefix[1], (b"c:y".to_vec(), vec![0u8, 255, 9]));
    let keys: Vec<_> = db.range("c:y".."e").map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"c:y".to_vec(), b"d".to_vec()]);
    assert_eq!(db.iter().take(2).count(), 2);
    let keys: Vec<_> = db.prefix("c:").map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"c:x".to_vec(), b"c:y".to_vec()]);
    // An iterator reads the state as it was when it was made.
    let before = db.iter();
    db.put("zz", "later").unwrap();
    assert_eq!(before.count(), 4);
    db.delete("zz").unwrap();
    db.close().unwrap();

    let (db, report) = Db::open(dir.path(), small()).unwrap();
    assert_eq!(db.len(), 4);
    assert_eq!(report.keys, 4);
    db.clear().unwrap();
    assert!(db.is_empty());
    db.close().unwrap();
    let (db, _) = Db::open(dir.path(), small()).unwrap();
    assert!(db.is_empty(), "clear is durable");
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = {
        let mut o = small();
        o.max_key_len = 16;
        o.max_value_len = 32;
        o.max_batch_bytes = 200;
        o
    };
    let (db, _) = Db::open(dir.path(), opts).unwrap();
    db.put("k", "v").unwrap();
    let lsn = db.stats().applied_lsn;
    let cases: Vec<(Error, &str)> = vec![
        (db.put("", "v").unwrap_err(), "empty"),
        (db.put("k".repeat(17), "v").unwrap_err(), "max_key_len"),
        (db.put("k", "v".repeat(33)).unwrap_err(), "max_value_len"),
        (db.delete("").unwrap_err(), "empty"),
        (
            db.write({
                let mut b = WriteBatch::new();
                b.put("ok", "fine").put("", "bad");
                b
            })
            .unwrap_err(),
            "empty",
        ),
        (
            db.write({
                let mut b = WriteBatch::new();
                for i in 0..10 {
                    b.put(format!("key{i}"), "v".repeat(30));
                }
                b
            })
            .unwrap_err(),
            "max_batch_bytes",
        ),
    ];
    let kinds: Vec<String> = cases
        .iter()
        .map(|(e, _)| {
            format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "EmptyKey",
            "KeyTooLong",
            "ValueTooLarge",
            "EmptyKey",
            "EmptyKey",
            "BatchTooLarge"
        ]
    );
    assert!(matches!(cases[1].0, Error::KeyTooLong { len: 17, max: 16 }));
    for (err, says) in cases {
        assert!(err.is_invalid_input(), "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    assert_eq!(
        db.stats().applied_lsn,
        lsn,
        "a refused write reached the log"
    );
    assert_eq!(
        db.get("ok").unwrap(),
        None,
        "part of a refused batch was applied"
    );
    assert_eq!(db.get("k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn empty_values_are_stored_unless_the_options_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), small()).unwrap();
    db.put("flag", "").unwrap();
    assert_eq!(db.get("flag").unwrap(), Some(Vec::new()));
    db.close().unwrap();
    let strict = {
        let mut o = small();
        o.allow_empty_values = false;
        o
    };
    let (db, _) = Db::open(dir.path(), strict).unwrap();
    assert_eq!(
        db.get("flag").unwrap(),
        Some(Vec::new()),
        "recovery refused old data"
    );
    assert!(matches!(db.put("other", ""), Err(Error::EmptyValue)));
    let mut b = WriteBatch::new();
    b.put("a", "1").put("b", "");
    assert!(matches!(db.write(b), Err(Error::EmptyValue)));
    assert_eq!(db.get("a").unwrap(), None);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), small()).unwrap();
    let err = Db::open(dir.path(), small())
        .err()
        .expect("second open refused");
    let msg = err.to_string();
    assert!(matches!(err, Error::Locked { .. }), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    drop(db);
    Db::open(dir.path(), small()).expect("open after the first closed");
}

#[test]
fn checkpoints_bound_the_log_and_keep_one_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), in_memory()).unwrap();
    for round in 0..3 {
        for i in 0..300 {
            db.put(format!("key{}", i % 50), format!("value {round} {i}"))
                .unwrap();
        }
        let out = db.checkpoint().unwrap();
        assert!(out.written);
        if round == 2 {
            assert!(out.segments_removed > 0, "old segments were not deleted");
            assert!(
                out.checkpoints_removed > 0,
                "old checkpoints were not deleted"
            );
        }
    }
    // A checkpoint with nothing new to cover writes nothing.
    assert!(!db.checkpoint().unwrap().written);
    let ckpts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ckpt"))
        .collect();
    assert_eq!(ckpts.len(), 2, "newest and one fallback: {ckpts:?}");
    db.put("tail", "after the checkpoint").unwrap();
    db.close().unwrap();
    let (db, report) = Db::open(dir.path(), in_memory()).unwrap();
    assert_eq!(report.records_replayed, 1);
    assert_eq!(db.len(), 51);
    assert_eq!(db.get("key49").unwrap(), Some(b"value 2 299".to_vec()));
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), in_memory()).unwrap();
    for i in 0..100 {
        db.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    db.checkpoint().unwrap();
    for i in 0..100 {
        db.put(format!("k{i}"), format!("w{i}")).unwrap();
    }
    let newest = db.checkpoint().unwrap();
    db.put("k0", "latest").unwrap();
    db.close().unwrap();
    let path = dir
        .path()
        .join(keel::layout::checkpoint_file_name(newest.lsn));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (db, report) = Db::open(dir.path(), in_memory()).unwrap();
    assert_eq!(report.damaged_checkpoints.len(), 1, "{report}");
    assert!(report.checkpoint.as_ref().unwrap().lsn < newest.lsn);
    assert!(report.to_string().contains("DAMAGED"));
    assert_eq!(db.get("k0").unwrap(), Some(b"latest".to_vec()));
    assert_eq!(db.get("k99").unwrap(), Some(b"w99".to_vec()));
}

#[test]
fn a_missing_log_after_the_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = {
        let mut o = small();
        o.segment_size = 4096;
        o
    };
    let (db, _) = Db::open(dir.path(), opts.clone()).unwrap();
    for i in 0..100 {
        db.put(format!("k{i}"), "x".repeat(50)).unwrap();
    }
    db.checkpoint().unwrap();
    for i in 0..100 {
        db.put(format!("k{i}"), "y".repeat(50)).unwrap();
    }
    db.close().unwrap();
    // Lose the checkpoint and the oldest segment: the log no longer starts
    // where any checkpoint ends.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ckpt") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    std::fs::remove_file(&segs[0]).unwrap();
    let err = Db::open(dir.path(), opts).err().expect("gap refused");
    assert!(matches!(err, Error::LogGap { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn automatic_checkpoints_follow_the_log_size_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let opts = {
        let mut o = Options::default();
        o.segment_size = 8192;
        o.checkpoint_log_bytes = Some(16 << 10);
        o
    };
    let (db, _) = Db::open(dir.path(), opts).unwrap();
    for i in 0..2000 {
        db.put(format!("k{}", i % 100), "x".repeat(40)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.stats().checkpoints_written < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = db.stats();
    assert!(
        st.log_segments < 30,
        "the log was not bounded: {} segments",
        st.log_segments
    );
}

#[test]
fn options_load_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    std::fs::write(&file, "sync = \"never\"\nmax_key_len = 10\n").unwrap();
    let o = Options::from_toml_file(&file).unwrap();
    assert_eq!(o.sync, SyncPolicy::Never);
    let (db, _) = Db::open(dir.path().join("data"), o).unwrap();
    assert!(db.put("elevenbytes", "v").is_err());
    std::fs::write(&file, "sync = 3\n").unwrap();
    let e = Options::from_toml_file(&file).unwrap_err();
    assert!(e.to_string().contains("keel.toml"), "{e}");
}

#[test]
fn async_writers_on_one_runtime_thread_share_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Db::open(dir.path(), small()).unwrap();
    let db = Arc::new(db);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let db = Arc::clone(&db);
                tokio::spawn(async move {
                    db.put_async(format!("k{i}"), format!("v{i}"))
                        .await
                        .unwrap();
                    // Read-your-writes once the future resolves.
                    assert_eq!(
                        db.get(format!("k{i}")).unwrap(),
                        Some(format!("v{i}").into_bytes())
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(db.len(), 200);
    assert!(
        db.stats().wal.syncs < 100,
        "{} fdatasyncs",
        db.stats().wal.syncs
    );
}

#[test]
fn automatic_checkpoints_follow_the_time_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let opts = {
        let mut o = small();
        o.checkpoint_interval = Some(std::time::Duration::from_millis(50));
        o
    };
    let (db, _) = Db::open(dir.path(), opts).unwrap();
    db.put("a", "1").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.stats().checkpoint_lsn != Some(1) {
        assert!(std::time::Instant::now() < deadline, "no timed checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // With nothing new written, later ticks write no new checkpoint.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(db.stats().checkpoints_written, 1);
}

#[test]
fn metadata_is_atomic_with_its_write_outlives_clear_and_survives_checkpoints_flushes_and_restore() {
    use keel::op::Op;
    use keel::restore::{restore, RestoreRequest, RestoreTarget};
    let named = |n: &str, v: &str| vec![(n.as_bytes().to_vec(), v.as_bytes().to_vec())];
    for opts in [small(), in_memory()] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        let (db, _) = Db::open(&data, opts.clone()).unwrap();
        let put = |k: &str| Some(Op::Put(k.as_bytes().to_vec(), b"v".to_vec()));
        db.write_with_metadata(put("a"), named("applied", "1"))
            .unwrap();
        db.write_with_metadata(None, named("members", "x,y"))
            .unwrap();
        // Metadata is not keys: reads, scans and the count never see it.
        assert_eq!(db.len(), 1);
        assert_eq!(db.iter().count(), 1);
        assert_eq!(db.get("applied").unwrap(), None);
        // A clear removes keys, never metadata.
        db.write_with_metadata(Some(Op::Clear), named("applied", "2"))
            .unwrap();
        assert!(db.is_empty());
        // Bad metadata and a write that breaks the key limits are refused
        // whole: nothing changes.
        let before = db.stats().applied_lsn;
        for (op, meta) in [
            (put("b"), named("", "empty name")),
            (put(""), named("applied", "3")),
            (None, vec![(vec![b'n'; 256], Vec::new())]),
        ] {
            let e = db.write_with_metadata(op, meta).unwrap_err();
            assert!(matches!(e, Error::BadMetadata(_) | Error::EmptyKey), "{e}");
        }
        let nested = Op::WithMetadata {
            metadata: named("x", "y"),
            op: None,
        };
        assert!(db.write_with_metadata(Some(nested), Vec::new()).is_err());
        assert_eq!(db.stats().applied_lsn, before);
        db.write_with_metadata(put("c"), named("applied", "4"))
            .unwrap();
        let want = keel::Metadata::from([
            (b"applied".to_vec(), b"4".to_vec()),
            (b"members".to_vec(), b"x,y".to_vec()),
        ]);
        assert_eq!(db.metadata(), want);
        // A checkpoint (a flush on tables) deletes the log that set it.
        db.checkpoint().unwrap();
        db.put("d", "after the checkpoint").unwrap();
        let backup = dir.path().join("backup");
        db.backup(&backup).unwrap();
        db.close().unwrap();
        let (db, report) = Db::open(&data, opts.clone()).unwrap();
        assert_eq!(db.metadata(), want, "{report}");
        assert_eq!(db.len(), 2);
        db.close().unwrap();
        let into = dir.path().join("restored");
        let req = RestoreRequest {
            backup: &backup,
            into: &into,
            archive_dir: None,
            source: None,
            target: RestoreTarget::Latest,
        };
        restore(Arc::new(keel::storage::FsStorage::new()), &req).unwrap();
        let (db, _) = Db::open(&into, opts).unwrap();
        assert_eq!(db.metadata(), want);
    }
}
