//! keel in one page: open (or recover) a store in `./keel-data`, write,
//! read, batch, scan, checkpoint, and print what recovery found. Run it
//! twice: the second run recovers the first's writes.
//!
//! `cargo run --release -p keel --example quickstart [DIR]`

use keel::{Db, Options, WriteBatch};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "keel-data".into());
    let (db, report) = Db::open(&dir, Options::default())?;
    println!("opened {dir}: {report}");
    let runs = db
        .get("quickstart:runs")?
        .map(|v| String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0))
        .unwrap_or(0)
        + 1;

    let started = Instant::now();
    let n = 2000;
    for i in 0..n {
        // Each put returns once its log record is fdatasynced.
        db.put(
            format!("quickstart:item:{i:05}"),
            format!("run {runs}, item {i}"),
        )?;
    }
    let elapsed = started.elapsed();
    let mut batch = WriteBatch::new();
    batch
        .put("quickstart:runs", runs.to_string())
        .put("quickstart:last", format!("run {runs} wrote {n} items"))
        .delete("quickstart:item:00000");
    db.write(batch)?; // atomic: all of it or none after any crash

    println!(
        "wrote {n} durable puts in {elapsed:.2?} ({:.0}/s, one thread: each waits for its own fdatasync)",
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "quickstart:last = {:?}",
        db.get("quickstart:last")?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    let first = db.scan_prefix("quickstart:item:", 3)?;
    println!(
        "first items: {:?}",
        first
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    );
    let ck = db.checkpoint()?;
    let st = db.stats();
    println!(
        "checkpoint at LSN {} ({} log segments removed); {} keys, {} fdatasyncs, log segments now {}",
        ck.lsn, ck.segments_removed, st.keys, st.wal.syncs, st.log_segments
    );
    db.close()?;
    println!("closed; run again to see recovery pick up run {}", runs + 1);
    Ok(())
}
