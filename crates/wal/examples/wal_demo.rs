//! Opens (or recovers) a write-ahead log in `./keel-data/wal`, appends records
//! from several threads with group commit, and prints what recovery found and
//! what the appends cost. Run it twice: the second run recovers the first's
//! records.
//!
//! `cargo run --release -p keel-wal --example wal_demo [DIR]`

use keel_storage::FsStorage;
use keel_wal::{Wal, WalOptions};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "keel-data/wal".to_string());
    let opts = WalOptions {
        segment_size: 8 << 20,
        ..WalOptions::default()
    };
    let mut records = 0u64;
    let (wal, report) =
        Wal::open_with_replay(Arc::new(FsStorage::new()), &dir, opts, 1, |_| records += 1)?;
    println!("opened {dir}: {report}");
    let wal = Arc::new(wal);
    let threads = 8;
    let per_thread = 500;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let payload = format!("thread {t} record {i}: {}", "x".repeat(64));
                    wal.append(payload.as_bytes()).expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("appender thread");
    }
    let elapsed = started.elapsed();
    let stats = wal.stats();
    let n = threads * per_thread;
    println!(
        "appended {n} durable records from {threads} threads in {elapsed:.2?}: {:.0} records/s, {} fdatasyncs ({:.1} records per fdatasync); log now ends at LSN {}",
        n as f64 / elapsed.as_secs_f64(),
        stats.syncs,
        n as f64 / stats.syncs.max(1) as f64,
        wal.next_lsn() - 1
    );
    Arc::into_inner(wal).expect("threads joined").close()?;
    Ok(())
}
