//! keel-wal: a crash-safe write-ahead log of opaque records.
//!
//! Records are appended to segment files, each record with its LSN and a
//! CRC32C; [`Wal::append`] returns once the record is durable under the
//! [`SyncPolicy`] (by default: fdatasynced, with concurrent appenders sharing
//! one fdatasync). [`Wal::open`] recovers the log: it tells a torn tail (cut
//! and reported) from damage in the middle (refused, naming segment, offset
//! and LSN). All I/O goes through the `keel_storage::Storage` trait, so every rule here is
//! tested on `keel_storage::SimStorage`, which loses unsynced data and injects faults.
//!
//! The byte layout is specified in `docs/FORMAT.md`.
//!
//! ```
//! use keel_storage::FsStorage;
//! use keel_wal::{Wal, WalOptions};
//! use std::sync::Arc;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let opts = WalOptions { segment_size: 1 << 20, ..WalOptions::default() };
//! let (wal, report) = Wal::open(Arc::new(FsStorage::new()), dir.path(), opts.clone()).unwrap();
//! assert_eq!(report.records_read, 0);
//! let lsn = wal.append(b"hello").unwrap(); // durable when this returns
//! assert_eq!(lsn, 1);
//! wal.close().unwrap();
//!
//! let mut seen = Vec::new();
//! let (_wal, report) = Wal::open_with_replay(
//!     Arc::new(FsStorage::new()), dir.path(), opts, 1,
//!     |record| seen.push((record.lsn, record.payload.to_vec())),
//! ).unwrap();
//! assert_eq!(seen, vec![(1, b"hello".to_vec())]);
//! assert!(report.torn_tail.is_none());
//! ```

#![warn(missing_docs)]

pub mod archive;
pub mod compression;
pub mod dictionary;
pub mod error;
pub mod format;
pub mod fuzzing;
pub mod inspect;
pub mod options;
mod reader;
pub mod recovery;
pub mod segment;
mod wal;

pub use archive::ArchiveOptions;
pub use compression::Compression;
pub use error::{Damage, DamageKind, Result, StopCause, WalError};
pub use options::{Clock, RecoveryMode, SyncPolicy, WalOptions};
pub use reader::Record;
pub use recovery::{RecoveryReport, SetAside, TornTail};
pub use wal::{AppendFuture, LogPin, SuffixTruncation, Wal, WalStats};
