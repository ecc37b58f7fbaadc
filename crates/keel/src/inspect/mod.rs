//! Dump, verify and repair of a whole data directory, as library functions
//! (LevelDB's `DumpFile`/`RepairDB`, etcd's `wal.Verify`/`Repair`), so that
//! the `keel` command-line tools only parse arguments and print.
//!
//! - [`Target::resolve`] says what a path is: a data directory, a log
//!   directory, one segment or one checkpoint, or none of keel's;
//! - [`dump`] walks every checkpoint header and log record, continuing past
//!   damage and marking it;
//! - [`verify`] applies the judgment [`Db::open`](crate::Db::open) applies
//!   (`crate::recovery`), so it says "sound" only of a store that opens and
//!   loses nothing;
//! - [`Repair`] holds the store's lock, shows what it would cut, and cuts the
//!   log back to its last valid record, saving every cut byte beside it; on
//!   tables, it first replaces each damaged table by what of it still reads
//!   back ([`DamagedTable`]), moving the damaged file aside.
//!
//! All of it reads through the storage trait, and only [`Repair::apply`]
//! changes anything.

mod dump;
mod repair;
mod salvage;
mod target;
mod verify;

pub use dump::{dump, DumpDamage, DumpEvent};
pub use repair::Repair;
pub use salvage::{DamagedTable, LostKeys};
pub use target::Target;
pub use verify::{verify, LogSummary, Problem, VerifyReport};

/// Records as large as the format allows: the tools read logs written with
/// any `max_batch_bytes`.
const ANY_RECORD_SIZE: u32 = keel_wal::format::MAX_RECORD_LEN_LIMIT;
