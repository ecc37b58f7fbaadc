//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use keel_storage::{SimStorage, Storage};
use keel_wal::{RecoveryReport, Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn dir() -> PathBuf {
    PathBuf::from("/keel/wal")
}

pub fn sim(seed: u64) -> SimStorage {
    let s = SimStorage::new(seed);
    keel_storage::create_dir_durable(&s, &dir()).unwrap();
    s
}

/// Small segments so rotation happens often.
pub fn small_opts() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        ..WalOptions::default()
    }
}

pub type Records = Vec<(u64, Vec<u8>)>;

/// What a crash may leave of unsynced writes: none, all, or some of them.
pub const CRASH_MODES: [keel_storage::CrashMode; 3] = [
    keel_storage::CrashMode::DropUnsynced,
    keel_storage::CrashMode::KeepAll,
    keel_storage::CrashMode::Random,
];

/// Opens the log in [`dir`] and returns it with every record it replayed.
pub fn open(
    storage: &SimStorage,
    opts: &WalOptions,
) -> Result<(Wal, RecoveryReport, Records), WalError> {
    open_at(storage, &dir(), opts)
}

pub fn open_at(
    storage: &dyn StorageClone,
    dir: &Path,
    opts: &WalOptions,
) -> Result<(Wal, RecoveryReport, Records), WalError> {
    let mut records = Vec::new();
    let (wal, report) = Wal::open_with_replay(storage.arc(), dir, opts.clone(), 1, |r| {
        records.push((r.lsn, r.payload.to_vec()))
    })?;
    Ok((wal, report, records))
}

/// Lets helpers take any storage and hand the log an `Arc`.
pub trait StorageClone {
    fn arc(&self) -> Arc<dyn Storage>;
}

impl StorageClone for SimStorage {
    fn arc(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }
}

impl StorageClone for keel_storage::FsStorage {
    fn arc(&self) -> Arc<dyn Storage> {
        Arc::new(*self)
    }
}

/// Segment files in the log directory, sorted.
pub fn segment_files(storage: &SimStorage) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = storage
        .list(&dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .map(|n| dir().join(n))
        .collect();
    names.sort();
    names
}

pub fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "p".repeat((i % 37 + 40) as usize)).into_bytes()
}
