//! keel: a crash-safe embedded key-value store.
//!
//! Every mutation is appended to a checksummed write-ahead log
//! ([`keel_wal`]) and made durable before the call returns (under the
//! default [`SyncPolicy::Always`]); after a crash, [`Db::open`] loads the
//! newest valid checkpoint and replays the log after it, and comes back with
//! every acknowledged write and nothing else.
//!
//! ```
//! use keel::{Db, Options, WriteBatch};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (db, report) = Db::open(dir.path(), Options::default()).unwrap();
//! println!("{report}");
//! db.put("user:1", "ada").unwrap();           // durable when this returns
//! let mut batch = WriteBatch::new();
//! batch.put("user:2", "grace").delete("user:1");
//! db.write(batch).unwrap();                   // all of it or none, after any crash
//! assert_eq!(db.get("user:2").unwrap(), Some(b"grace".to_vec()));
//! assert_eq!(db.get("user:1").unwrap(), None);
//! db.close().unwrap();
//!
//! let (db, report) = Db::open(dir.path(), Options::default()).unwrap();
//! assert_eq!(report.records_replayed, 2);
//! assert_eq!(db.scan_prefix("user:", 10).unwrap().len(), 1);
//! ```

#![warn(missing_docs)]

pub mod backup;
pub mod checkpoint;
mod db;
pub mod error;
pub mod fuzzing;
pub mod inspect;
pub mod key;
mod keyspace;
mod layers;
pub mod layout;
pub mod lsm;
pub mod malloc;
pub mod manifest;
mod memtable;
pub mod metadata;
mod on_tables;
pub mod op;
pub mod options;
mod poison;
mod range;
pub mod recovery;
pub mod restore;
pub mod table;

pub use db::{CheckpointOutcome, Db, DbBuilder, Deferred, Stats, WriteBatch};
pub use error::{Error, Result};
pub use keel_storage as storage;
pub use keel_wal as wal;
pub use keel_wal::{RecoveryMode, SyncPolicy};
pub use metadata::Metadata;
pub use on_tables::TablesStats;
pub use options::{parse_duration, parse_size, parse_sync, Options};
pub use range::Range;
pub use recovery::{CheckpointUsed, RecoveryReport, TablesUsed};
