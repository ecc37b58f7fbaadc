//! The store's log archive (`archive_dir`): every log record the store lets
//! go of is first in the archive, on tables and in memory, and an archive
//! that would be the log itself is refused.

use keel::op::Op;
use keel::storage::SimStorage;
use keel::{Db, Options};
use keel_wal::archive::archived_segments;
use keel_wal::inspect::inspect_segment;
use std::path::PathBuf;
use std::sync::Arc;

fn open(s: &SimStorage, opts: &Options) -> keel::Result<Db> {
    Ok(Db::builder("/db")
        .options(opts.clone())
        .storage(Arc::new(s.clone()))
        .open()?
        .0)
}

fn options(on_tables: bool) -> Options {
    let mut o = Options::default();
    o.memtable_size = on_tables.then_some(16 << 10);
    o.segment_size = 4096;
    o.checkpoint_log_bytes = None;
    o.checkpoint_bytes_per_sec = None;
    o.archive_dir = Some(PathBuf::from("/archive"));
    o
}

/// Every record of the archive and then of the log, as (LSN, op).
fn archive_then_log(s: &SimStorage) -> Vec<(u64, Op)> {
    let mut out: Vec<(u64, Op)> = Vec::new();
    let mut files: Vec<PathBuf> = archived_segments(s, "/archive".as_ref())
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.extend(keel_wal::inspect::segment_files(s, "/db/wal".as_ref()).unwrap());
    for f in files {
        inspect_segment(s, &f, 1 << 30, false, |r, _| {
            if out.last().is_none_or(|(l, _)| *l < r.lsn) {
                out.push((r.lsn, Op::decode(r.payload).unwrap()));
            }
        })
        .unwrap();
    }
    out
}

#[test]
fn every_record_the_store_lets_go_of_is_in_the_archive() {
    for on_tables in [true, false] {
        let s = SimStorage::new(1);
        let db = open(&s, &options(on_tables)).unwrap();
        let mut written = Vec::new();
        for i in 0..1500u32 {
            let (k, v) = (
                format!("key{:04}", i % 400),
                format!("value-{i}-{}", "v".repeat(40)),
            );
            db.put(&k, &v).unwrap();
            written.push(Op::Put(k.into_bytes(), v.into_bytes()));
            if i % 500 == 499 {
                db.checkpoint().unwrap();
            }
        }
        let stats = db.stats();
        assert!(stats.wal.segments_archived >= 10, "{:?}", stats.wal);
        assert_eq!(stats.wal.archive_failures, 0);
        db.close().unwrap();
        let all = archive_then_log(&s);
        let lsns: Vec<u64> = all.iter().map(|r| r.0).collect();
        assert_eq!(lsns.first(), Some(&1), "on tables: {on_tables}");
        assert!(
            lsns.windows(2).all(|w| w[1] == w[0] + 1),
            "no gap between archive and log"
        );
        let ops: Vec<Op> = all.into_iter().map(|r| r.1).collect();
        assert!(
            ops == written,
            "on tables: {on_tables}: the archive and the log hold every write in order"
        );
    }
}

#[test]
fn an_archive_in_the_log_directory_is_refused() {
    let s = SimStorage::new(2);
    for dir in ["/db", "/db/wal"] {
        let mut o = options(true);
        o.archive_dir = Some(PathBuf::from(dir));
        let e = open(&s, &o).err().expect("refused").to_string();
        assert!(
            e.contains("archive_dir") && e.contains("directory of its own"),
            "{e}"
        );
    }
}

#[test]
fn archive_options_read_from_toml() {
    let o = Options::from_toml(
        "archive_dir = \"/mnt/archive\"\narchive_retention_age = \"7d\"\narchive_retention_bytes = \"10GiB\"\nwal_compression = \"snappy\"\n",
    )
    .unwrap();
    assert_eq!(o.archive_dir, Some(PathBuf::from("/mnt/archive")));
    assert_eq!(
        o.archive_retention_age,
        Some(std::time::Duration::from_secs(7 * 86_400))
    );
    assert_eq!(o.archive_retention_bytes, Some(10 << 30));
    assert_eq!(o.wal_compression, keel_wal::Compression::Snappy);
    let e = Options::from_toml("wal_compression = \"lz4\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("snappy"), "{e}");
}
