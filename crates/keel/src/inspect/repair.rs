//! [`Repair`]: cut a damaged log back to its last valid record, never
//! destroying a byte (point-in-time recovery saves what it cuts beside the
//! log as `*.cut-at-N` and `*.dropped`), never racing a running store (it
//! holds the store's lock from plan to cut), and never cutting records that
//! the newest sound checkpoint needs the log to follow. On tables it also
//! replaces every damaged live table by what of it still reads back, the
//! damaged file moved aside (`super::salvage`), before the log.

use super::salvage::{find_damaged, replace_damaged, DamagedTable};
use super::{Target, ANY_RECORD_SIZE};
use crate::error::{Error, Result};
use crate::layout::DataDir;
use crate::recovery::choose_checkpoint;
use keel_storage::{LockGuard, Storage};
use keel_wal::{RecoveryMode, RecoveryReport, Wal, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A planned repair: what it would cut, with the store's lock held.
pub struct Repair {
    storage: Arc<dyn Storage>,
    log_dir: PathBuf,
    checkpoint_lsn: Option<u64>,
    plan: RecoveryReport,
    /// The data directory (none when only a log directory was given).
    data_dir: Option<DataDir>,
    /// Live tables that do not read back whole.
    tables: Vec<DamagedTable>,
    _lock: Option<LockGuard>,
}

impl Repair {
    /// Takes the store's lock (failing with [`Error::Locked`] while a server
    /// has it open) and works out, without changing anything, what a repair
    /// would cut. Damage among records the newest sound checkpoint holds
    /// needs no repair; damage that would leave the log behind that
    /// checkpoint is refused ([`Error::RepairBehindCheckpoint`]).
    pub fn prepare(storage: Arc<dyn Storage>, target: &Target) -> Result<Repair> {
        let log_dir = match target {
            Target::DataDir(_) | Target::LogDir(_) => target.log_dir(),
            Target::Segment(_) | Target::Checkpoint(_) | Target::Table(_) | Target::Manifest(_) => {
                None
            }
        };
        let Some(log_dir) = log_dir else {
            return Err(Error::RepairNeedsDirectory);
        };
        let data_dir = target.data_dir(&*storage);
        let lock = match &data_dir {
            Some(d) => Some(d.lock(&*storage, "keel repair")?),
            None => None,
        };
        // On tables, the manifest's log start plays the checkpoint's part:
        // records below it are in tables, the log must go on from it.
        let mut tables = Vec::new();
        let checkpoint_lsn = match &data_dir {
            Some(d) => match super::verify::manifest_state(&*storage, d)? {
                Some(state) => {
                    tables = find_damaged(&*storage, d, &state)?;
                    Some(state.log_start - 1).filter(|b| *b > 0)
                }
                None => {
                    let choice = choose_checkpoint(&*storage, d, usize::MAX, usize::MAX)?;
                    choice.base.map(|(used, _, _)| used.lsn)
                }
            },
            None => None,
        };
        let from = checkpoint_lsn.map_or(1, |n| n + 1);
        let plan = Wal::read_dir(&*storage, &log_dir, &options(), from, |_| {})?;
        let repair = Repair {
            storage,
            log_dir,
            checkpoint_lsn,
            plan,
            data_dir,
            tables,
            _lock: lock,
        };
        if repair.log_is_damaged() && repair.plan.last_lsn + 1 < from {
            return Err(Error::RepairBehindCheckpoint {
                damage_lsn: repair.plan.last_lsn + 1,
                checkpoint_lsn: from - 1,
            });
        }
        Ok(repair)
    }

    /// What the repair would do: the torn tail it would cut, or the damage
    /// it would stop at and the files it would set aside.
    pub fn plan(&self) -> &RecoveryReport {
        &self.plan
    }

    /// The log directory repaired.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The data directory repaired (none when a log directory was given).
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_ref().map(DataDir::root)
    }

    /// The LSN of the newest sound checkpoint, if any.
    pub fn checkpoint_lsn(&self) -> Option<u64> {
        self.checkpoint_lsn
    }

    /// The live tables that do not read back whole, and what the repair
    /// keeps and loses of each.
    pub fn damaged_tables(&self) -> &[DamagedTable] {
        &self.tables
    }

    /// Whether anything would be changed: a table replaced, or the log cut.
    pub fn is_needed(&self) -> bool {
        !self.tables.is_empty() || self.log_is_damaged()
    }

    fn log_is_damaged(&self) -> bool {
        self.plan.torn_tail.is_some() || self.plan.set_aside.is_some()
    }

    /// Replaces the damaged tables as planned (each moved aside, what reads
    /// back of it kept), then cuts the log as planned, saving what it cuts,
    /// and syncs it. Returns what the log's recovery did.
    pub fn apply(self) -> Result<RecoveryReport> {
        if let Some(d) = &self.data_dir {
            replace_damaged(&self.storage, d, &self.tables)?;
        }
        let from = self.checkpoint_lsn.map_or(1, |n| n + 1);
        let (wal, report) =
            Wal::open_with_replay(self.storage, &self.log_dir, options(), from, |_| {})?;
        wal.close()?;
        Ok(report)
    }
}

/// What the repair will do, for a person to confirm: the LSN the log is
/// valid to, the torn tail it cuts, the damage it stops at and where every
/// byte after it goes.
impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plan = &self.plan;
        for t in &self.tables {
            write!(f, "{t}")?;
        }
        writeln!(
            f,
            "{}: the log is valid up to LSN {}.",
            self.log_dir.display(),
            plan.last_lsn
        )?;
        if let Some(t) = &plan.torn_tail {
            writeln!(
                f,
                "  will cut {} bytes at {} offset {} ({}); they were never acknowledged",
                t.bytes_cut,
                t.damage.segment.display(),
                t.damage.offset,
                t.damage.kind
            )?;
        }
        if let Some(s) = &plan.set_aside {
            writeln!(f, "  damage: {}", s.damage)?;
            writeln!(f, "  everything after it is moved aside (not deleted) to:")?;
            for p in &s.saved_to {
                writeln!(f, "    {}", p.display())?;
            }
        }
        Ok(())
    }
}

/// Point-in-time recovery: stop at the first damage, set the rest aside.
fn options() -> WalOptions {
    WalOptions {
        recovery: RecoveryMode::PointInTime,
        max_record_size: ANY_RECORD_SIZE,
        ..WalOptions::default()
    }
}
