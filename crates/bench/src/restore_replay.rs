//! `restore-replay`: how fast `keel restore` replays an archived log
//! (issue 13: 1 GB/s or more from the page cache).
//!
//! Fills a store on the real disk with `--gib` GiB of 1 KiB values (sync
//! `never`: the fill is not what is measured) with its log archived and a
//! backup taken first, closes it, then restores the backup to the latest
//! record from the archive and the store's own log, `--runs` times (the
//! segments are in the page cache after the first read). It prints, per
//! run, the bytes of log read and checked while planning (every record's
//! checksum, LSN and time: the replay of the archive) and the time of each
//! phase; the figures are medians.
//!
//!     cargo run --release -p keel-bench --bin restore-replay [-- --gib 1 --runs 3]

use keel::restore::{restore, RestoreRequest, RestoreTarget};
use keel::{Db, Options, SyncPolicy};
use keel_bench::{arg, loadavg, median};
use std::sync::Arc;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let gib: f64 = arg("--gib", 1.0);
    let runs: usize = arg("--runs", 3);
    let tmp = tempfile::tempdir_in(".")?;
    let p = |n: &str| tmp.path().join(n);
    let mut opts = Options::default();
    opts.sync = SyncPolicy::Never;
    opts.archive_dir = Some(p("archive"));
    let (db, _) = Db::open(p("db"), opts)?;
    db.put("first", "write")?;
    db.backup(p("backup"))?;
    let n = (gib * (1u64 << 30) as f64 / 1024.0) as u64;
    let mut value = vec![0u8; 1000];
    let mut rng = keel::storage::rng::SplitMix64::new(9);
    let t = Instant::now();
    for i in 0..n {
        rng.fill(&mut value);
        db.put(format!("key{:012}", i), &value)?;
    }
    let stats = db.stats();
    db.close()?;
    println!(
        "filled {n} puts in {:.1?} ({} segments archived); load {}",
        t.elapsed(),
        stats.wal.segments_archived,
        loadavg()
    );
    let storage: Arc<dyn keel::storage::Storage> = Arc::new(keel::storage::FsStorage::new());
    let (mut plan, mut copy, mut open) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let into = p(&format!("restored-{run}"));
        let req = RestoreRequest {
            backup: &p("backup"),
            into: &into,
            archive_dir: Some(&p("archive")),
            source: Some(&p("db")),
            target: RestoreTarget::Latest,
        };
        let r = restore(Arc::clone(&storage), &req)?;
        let gb = r.log_bytes_scanned as f64 / 1e9;
        println!(
            "run {run}: LSN {} reached, {} records from {} segments; read and checked {:.2} GB in {:.2?} ({:.2} GB/s); copied in {:.2?}; opened (records applied) in {:.2?}",
            r.reached_lsn,
            r.records_after_backup,
            r.segments_copied,
            gb,
            r.plan_duration,
            gb / r.plan_duration.as_secs_f64(),
            r.copy_duration,
            r.open_duration
        );
        plan.push(gb / r.plan_duration.as_secs_f64());
        copy.push(gb / r.copy_duration.as_secs_f64());
        open.push(gb / r.open_duration.as_secs_f64());
        std::fs::remove_dir_all(&into)?;
    }
    println!(
        "median of {runs}: archive replay (read + check) {:.2} GB/s, copy {:.2} GB/s, open (apply) {:.2} GB/s; load {}",
        median(plan),
        median(copy),
        median(open),
        loadavg()
    );
    Ok(())
}
