//! Durable writes, embedded, side by side in one run: keel's `Db` against
//! fjall and redb doing the same work.
//!
//! The work: N threads, each putting 100-byte values under random keys (out
//! of a million), and every put durable before it returns:
//! - keel: `Db::put` with `SyncPolicy::Always` (the default: fdatasync,
//!   shared by concurrent writers through group commit);
//! - fjall 3: `Keyspace::insert`, then `Database::persist(SyncData)`
//!   (fjall's default does not sync; this is its durable mode);
//! - redb 4: one write transaction per put, committed with its default
//!   `Durability::Immediate`.
//!
//! Each point runs for a fixed time; the three stores take turns (the one
//! that goes first rotates), three times per point, and the table shows
//! medians: ops/s, p50 and p99 latency, and keel's ratio to each peer. The
//! stores live in scratch directories under `target/` (the real disk).
//!
//! Run: `cargo bench -p keel-bench --bench embedded` (`-- --quick` for a
//! short run).

use keel_bench::{loadavg, median};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const THREADS: [usize; 4] = [1, 4, 16, 64];
const REPEATS: usize = 3;
const VALUE_LEN: usize = 100;
const KEYS: u64 = 1_000_000;

/// One store under test: a durable put.
trait Store: Send + Sync {
    fn name(&self) -> &'static str;
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
}

struct Keel(keel::Db);

impl Store for Keel {
    fn name(&self) -> &'static str {
        "keel"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.0.put(key, value)?;
        Ok(())
    }
}

struct Fjall {
    db: fjall::Database,
    items: fjall::Keyspace,
}

impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.items.insert(key, value)?;
        self.db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }
}

struct Redb(redb::Database);

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let tx = self.0.begin_write()?; // Durability::Immediate by default
        {
            let mut t = tx.open_table(TABLE)?;
            t.insert(key, value)?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn open_all(root: &Path) -> anyhow::Result<Vec<Box<dyn Store>>> {
    let (db, _) = keel::Db::open(root.join("keel"), keel::Options::default())?;
    let fdb = fjall::Database::builder(root.join("fjall")).open()?;
    let items = fdb.keyspace("kv", fjall::KeyspaceCreateOptions::default)?;
    let rdb = redb::Database::create(root.join("redb.redb"))?;
    Ok(vec![
        Box::new(Keel(db)),
        Box::new(Fjall { db: fdb, items }),
        Box::new(Redb(rdb)),
    ])
}

struct Point {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `threads` writers for `time` against `store`.
fn run(store: &dyn Store, threads: usize, time: Duration, seed: u64) -> anyhow::Result<Point> {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let (lat, elapsed) = std::thread::scope(|s| -> anyhow::Result<_> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, start) = (&stop, &start);
                s.spawn(move || -> anyhow::Result<Vec<u32>> {
                    let mut rng = (seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
                    let value = vec![b'v'; VALUE_LEN];
                    let mut lat = Vec::with_capacity(1 << 16);
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let key = format!("key:{:08}", rng % KEYS);
                        let t0 = Instant::now();
                        store.put(key.as_bytes(), &value)?;
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(lat)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().expect("writer thread")?);
        }
        Ok((all, t0.elapsed()))
    })?;
    let mut lat = lat;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64;
    Ok(Point {
        ops_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let time = Duration::from_millis(if quick { 500 } else { 2000 });
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target)?;
    let scratch = tempfile::tempdir_in(&target)?;
    let stores = open_all(scratch.path())?;
    println!(
        "Durable puts, 100-byte values, random keys of {KEYS}; {} s per point, median of {REPEATS}, stores in turn (load average {})",
        time.as_secs_f64(),
        loadavg()
    );
    println!(
        "{:>7} | {:>24} | {:>24} | {:>24} | {:>10} {:>10}",
        "threads",
        "keel ops/s p50/p99 us",
        "fjall ops/s p50/p99 us",
        "redb ops/s p50/p99 us",
        "keel/fjall",
        "keel/redb"
    );
    for threads in THREADS {
        let mut points: Vec<Vec<Point>> = (0..stores.len()).map(|_| Vec::new()).collect();
        for rep in 0..REPEATS {
            for i in 0..stores.len() {
                let s = (i + rep) % stores.len();
                let seed = (rep * 31 + threads) as u64;
                points[s].push(run(&*stores[s], threads, time, seed)?);
            }
        }
        let med: Vec<(f64, f64, f64)> = points
            .iter()
            .map(|ps| {
                (
                    median(ps.iter().map(|p| p.ops_per_sec).collect()),
                    median(ps.iter().map(|p| p.p50_us).collect()),
                    median(ps.iter().map(|p| p.p99_us).collect()),
                )
            })
            .collect();
        let cell = |m: (f64, f64, f64)| format!("{:>8.0} {:>6.0}/{:<6.0}", m.0, m.1, m.2);
        println!(
            "{threads:>7} | {:>24} | {:>24} | {:>24} | {:>9.2}x {:>9.2}x",
            cell(med[0]),
            cell(med[1]),
            cell(med[2]),
            med[0].0 / med[1].0,
            med[0].0 / med[2].0
        );
        assert_eq!(stores[0].name(), "keel");
    }
    println!("(load average after: {})", loadavg());
    Ok(())
}
