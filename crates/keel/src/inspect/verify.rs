//! [`verify`]: every checksum of every checkpoint and log record, LSN
//! continuity, and the judgment an open applies (`crate::recovery`): a
//! target is sound only if it opens and every byte in it verifies.

use super::{Target, ANY_RECORD_SIZE};
use crate::checkpoint::{self, CheckpointError, CheckpointHeader};
use crate::error::{Error, Result};
use crate::layout::{table_file_name, DataDir, MANIFEST_DIR, TABLES_DIR};
use crate::op::Op;
use crate::recovery::{check_continuity, choose_checkpoint, CheckpointChoice};
use keel_storage::Storage;
use keel_wal::{Damage, RecoveryMode, Wal, WalError, WalOptions};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What [`verify`] found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Each checkpoint checked (newest first), with its header or why not.
    pub checkpoints: Vec<(
        PathBuf,
        std::result::Result<CheckpointHeader, CheckpointError>,
    )>,
    /// The log, when it could be read through (even if damaged below the
    /// newest checkpoint).
    pub log: Option<LogSummary>,
    /// Each table checked, with its properties when every block verified.
    pub tables: Vec<(PathBuf, Option<crate::table::Properties>)>,
    /// The manifest checked: its directory and the state its edits make.
    pub manifest: Option<(PathBuf, crate::manifest::VersionState)>,
    /// Everything wrong, each with what it means for an open.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    fn empty() -> VerifyReport {
        VerifyReport {
            checkpoints: Vec::new(),
            log: None,
            tables: Vec::new(),
            manifest: None,
            problems: Vec::new(),
        }
    }

    /// Whether nothing is wrong.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A log that reads through.
#[derive(Clone, Debug)]
pub struct LogSummary {
    /// The log directory.
    pub dir: PathBuf,
    /// What reading it found.
    pub report: keel_wal::RecoveryReport,
}

/// Something [`verify`] found wrong. `Display` says what an open does
/// about it and what the operator can do.
#[derive(Debug)]
pub enum Problem {
    /// A checkpoint does not verify.
    CheckpointDamaged {
        /// The file.
        path: PathBuf,
        /// Why.
        why: CheckpointError,
    },
    /// The log ends in a torn write (never acknowledged): an open cuts it.
    TornTail {
        /// The log directory.
        dir: PathBuf,
        /// Where.
        damage: Damage,
    },
    /// The log is damaged where recovery needs it: an open refuses.
    Corrupt {
        /// The log directory.
        dir: PathBuf,
        /// Where.
        damage: Damage,
    },
    /// Damage among records the newest sound checkpoint holds: an open
    /// steps over it.
    CoveredDamage {
        /// The log directory.
        dir: PathBuf,
        /// Where.
        damage: Damage,
        /// The checkpoint that holds those records.
        checkpoint_lsn: u64,
    },
    /// Records that verify but are not keel operations: an open refuses.
    NotOperations {
        /// The log directory.
        dir: PathBuf,
        /// How many.
        count: u64,
        /// The first one's LSN.
        first_lsn: u64,
    },
    /// The store would not open: the log does not continue the newest sound
    /// checkpoint (records are missing).
    WillNotOpen(Error),
    /// A table does not verify (nothing in a damaged block can be trusted).
    TableDamaged(crate::table::TableError),
    /// The manifest's log is damaged, or an edit does not apply.
    ManifestInvalid {
        /// The manifest directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::CheckpointDamaged { path, why } => {
                write!(f, "checkpoint {}: DAMAGED: {why}", path.display())
            }
            Problem::TornTail { dir, damage } => write!(
                f,
                "log {}: DAMAGED: torn tail: {damage}. Nothing after it was ever acknowledged; the next open cuts it (and `keel repair` cuts it now, saving the bytes)",
                dir.display()
            ),
            Problem::Corrupt { dir, damage } => write!(
                f,
                "log {}: DAMAGED: {damage}. `keel repair` cuts the log back to the record before it, setting the rest aside",
                dir.display()
            ),
            Problem::CoveredDamage {
                dir,
                damage,
                checkpoint_lsn,
            } => write!(
                f,
                "log {}: DAMAGED: {damage}. Recovery is not affected: the checkpoint (on tables, the tables) up to LSN {checkpoint_lsn} holds these records",
                dir.display()
            ),
            Problem::NotOperations {
                dir,
                count,
                first_lsn,
            } => write!(
                f,
                "log {}: {count} records are not keel operations (first at LSN {first_lsn})",
                dir.display()
            ),
            Problem::WillNotOpen(e) => write!(f, "the store will not open: {e}"),
            Problem::TableDamaged(e) => write!(f, "DAMAGED: {e}"),
            Problem::ManifestInvalid { dir, why } => {
                write!(f, "manifest {}: DAMAGED: {why}", dir.display())
            }
        }
    }
}

/// Checks `target` without changing anything.
pub fn verify(storage: &dyn Storage, target: &Target) -> Result<VerifyReport> {
    let mut report = VerifyReport::empty();
    let mut base_lsn = 0;
    let mut passed_over = Vec::new();
    let mut unknown_log_start = false;
    match target {
        Target::Checkpoint(p) => {
            let header = checkpoint::read(storage, p, usize::MAX, usize::MAX).map(|(h, _, _)| h);
            report.checkpoints.push((p.clone(), header));
        }
        Target::DataDir(d) => match verify_tables(storage, d, &mut report)? {
            Some(Some(log_start)) => base_lsn = log_start - 1,
            // A damaged manifest: the log is read for itself.
            Some(None) => unknown_log_start = true,
            None => {
                let choice = choose_checkpoint(storage, d, usize::MAX, usize::MAX)?;
                base_lsn = choice.base_lsn();
                passed_over.clone_from(&choice.damaged);
                report.checkpoints = checked_checkpoints(storage, d, choice)?;
            }
        },
        Target::Table(p) => verify_table(storage, p, &mut report)?,
        Target::Manifest(dir) => verify_manifest(storage, dir, &mut report)?,
        Target::LogDir(_) | Target::Segment(_) => {}
    }
    for (path, header) in &report.checkpoints {
        if let Err(why) = header {
            report.problems.push(Problem::CheckpointDamaged {
                path: path.clone(),
                why: why.clone(),
            });
        }
    }
    // Only a whole data directory can be judged as an open would: a log
    // directory or segment alone is checked for itself.
    let whole_store = matches!(target, Target::DataDir(_)) && !unknown_log_start;
    if let Some(dir) = target.log_dir() {
        let continuity = whole_store.then_some(passed_over.as_slice());
        verify_log(storage, &dir, base_lsn, continuity, &mut report)?;
    }
    Ok(report)
}

/// For a store on tables, the state its manifest's edits make, read without
/// changing anything: `Ok(None)` for a store that is not on tables (no
/// manifest, or one still empty); an error if the manifest is damaged.
pub(crate) fn manifest_state(
    storage: &dyn Storage,
    d: &DataDir,
) -> Result<Option<crate::manifest::VersionState>> {
    let manifest_dir = d.root().join(MANIFEST_DIR);
    if storage.list(&manifest_dir).is_err() {
        return Ok(None);
    }
    let mut report = VerifyReport::empty();
    verify_manifest(storage, &manifest_dir, &mut report)?;
    match (report.manifest, report.problems.pop()) {
        (Some((_, s)), _) if s.log_start == 1 && s.live().next().is_none() => Ok(None),
        (Some((_, s)), _) => Ok(Some(s)),
        (None, problem) => Err(Error::ManifestDamaged {
            dir: manifest_dir,
            why: problem.map_or("it cannot be read".into(), |p| p.to_string()),
        }),
    }
}

/// Reads every block of the table at `p`.
fn verify_table(storage: &dyn Storage, p: &Path, report: &mut VerifyReport) -> Result<()> {
    let checked = storage
        .open(p, keel_storage::OpenMode::Read)
        .map_err(|e| Error::io("opening", p, e))
        .map(|file| {
            crate::table::Table::open(file, p).and_then(|t| {
                t.verify()?;
                Ok(t.properties().clone())
            })
        })?;
    match checked {
        Ok(props) => report.tables.push((p.to_path_buf(), Some(props))),
        Err(e) => {
            report.tables.push((p.to_path_buf(), None));
            report.problems.push(Problem::TableDamaged(e));
        }
    }
    Ok(())
}

/// A store kept on tables: its manifest, then every live table it names
/// (each block read; a missing one means the store will not open). Returns
/// the log start the log must continue from, or `None` when the store is
/// not on tables (no manifest, or one still empty: an open would upgrade
/// its checkpoint), to be checked as a checkpoint store; `Some(None)` when
/// the manifest is damaged (where the log must start is unknown).
fn verify_tables(
    storage: &dyn Storage,
    d: &DataDir,
    report: &mut VerifyReport,
) -> Result<Option<Option<u64>>> {
    let manifest_dir = d.root().join(MANIFEST_DIR);
    if storage.list(&manifest_dir).is_err() {
        return Ok(None);
    }
    verify_manifest(storage, &manifest_dir, report)?;
    let Some((_, state)) = report.manifest.clone() else {
        // The manifest itself is damaged: the store will not open, and
        // which tables and log start it means is unknown.
        return Ok(Some(None));
    };
    if state.log_start == 1 && state.live().next().is_none() {
        return Ok(None);
    }
    let tables_dir = d.root().join(TABLES_DIR);
    for meta in state.live() {
        let path = tables_dir.join(table_file_name(meta.number));
        let exists = storage
            .exists(&path)
            .map_err(|e| Error::io("checking for a table", &path, e))?;
        if exists {
            verify_table(storage, &path, report)?;
        } else {
            report.problems.push(Problem::WillNotOpen(Error::Tables(
                crate::lsm::LsmError::MissingTable {
                    number: meta.number,
                    path,
                },
            )));
        }
    }
    Ok(Some(Some(state.log_start)))
}

/// Every checkpoint, newest first: the base and the damaged newer ones as
/// the open's choice found them, every older one read and verified too (an
/// open needs only the base, but verify checks every byte).
fn checked_checkpoints(
    storage: &dyn Storage,
    dir: &DataDir,
    choice: CheckpointChoice,
) -> Result<
    Vec<(
        PathBuf,
        std::result::Result<CheckpointHeader, CheckpointError>,
    )>,
> {
    let (all, _) = dir.list_checkpoints(storage)?;
    let mut known: HashMap<PathBuf, std::result::Result<CheckpointHeader, CheckpointError>> =
        choice
            .damaged
            .into_iter()
            .map(|(p, why)| (p, Err(why)))
            .collect();
    if let Some((used, _, metadata)) = choice.base {
        let header = CheckpointHeader {
            lsn: used.lsn,
            count: used.entries,
            metadata: !metadata.is_empty(),
        };
        known.insert(used.path, Ok(header));
    }
    Ok(all
        .into_iter()
        .map(|(_, path)| {
            let header = known.remove(&path).unwrap_or_else(|| {
                checkpoint::read(storage, &path, usize::MAX, usize::MAX).map(|(h, _, _)| h)
            });
            (path, header)
        })
        .collect())
}

/// Reads the whole log (in absolute-consistency mode: even a torn tail is
/// reported), checks every record decodes, and (given the checkpoints an
/// open passed over, for a whole store) applies an open's continuity
/// judgment against the checkpoint at `base_lsn`.
fn verify_log(
    storage: &dyn Storage,
    dir: &Path,
    base_lsn: u64,
    continuity: Option<&[(PathBuf, CheckpointError)]>,
    report: &mut VerifyReport,
) -> Result<()> {
    let opts = WalOptions {
        recovery: RecoveryMode::AbsoluteConsistency,
        max_record_size: ANY_RECORD_SIZE,
        // An open starts an empty log right after the checkpoint.
        start_lsn: base_lsn + 1,
        ..WalOptions::default()
    };
    if storage.list(dir).is_err() {
        // No log at all: an open starts one after the checkpoint.
        return Ok(());
    }
    let mut bad = 0u64;
    let mut first_bad = None;
    // Records the base checkpoint holds are not needed for recovery: damage
    // among them is reported, but does not stop the read.
    let read = Wal::read_dir(storage, dir, &opts, base_lsn + 1, |record| {
        if Op::decode(record.payload).is_err() {
            bad += 1;
            first_bad.get_or_insert(record.lsn);
        }
    });
    let dir = dir.to_path_buf();
    let log = match read {
        Ok(log) => log,
        Err(WalError::TornTailRefused(damage)) => {
            report.problems.push(Problem::TornTail {
                dir,
                damage: *damage,
            });
            return Ok(());
        }
        Err(WalError::Corrupt(damage)) => {
            report.problems.push(Problem::Corrupt {
                dir,
                damage: *damage,
            });
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    for damage in &log.covered_damage {
        report.problems.push(Problem::CoveredDamage {
            dir: dir.clone(),
            damage: damage.clone(),
            checkpoint_lsn: base_lsn,
        });
    }
    if let Some(first_lsn) = first_bad {
        report.problems.push(Problem::NotOperations {
            dir: dir.clone(),
            count: bad,
            first_lsn,
        });
    }
    if let Some(passed_over) = continuity {
        if let Err(e) = check_continuity(&dir, base_lsn, passed_over, log.first_lsn, log.last_lsn) {
            report.problems.push(Problem::WillNotOpen(e));
        }
    }
    report.log = Some(LogSummary { dir, report: log });
    Ok(())
}

/// Reads a manifest's log (every checksum, in absolute-consistency mode) and
/// replays its edits from the last snapshot as an open would.
fn verify_manifest(storage: &dyn Storage, dir: &Path, report: &mut VerifyReport) -> Result<()> {
    // The judgment `Manifest::open` applies: a torn tail (an edit whose
    // append a crash cut short) is no damage, the open cuts it. Nothing
    // acted on that edit: its flush or compaction had not returned, so
    // the log below it and the tables it removed are all still there.
    // Damage before the tail is refused, as the open refuses it.
    let opts = WalOptions {
        recovery: RecoveryMode::TolerateCorruptedTail,
        max_record_size: ANY_RECORD_SIZE,
        ..WalOptions::default()
    };
    let mut records = Vec::new();
    let read = Wal::read_dir(storage, dir, &opts, 1, |record| {
        let edit = crate::manifest::VersionEdit::decode(record.payload);
        records.push((record.lsn, edit));
    });
    let problem = |why: String| Problem::ManifestInvalid {
        dir: dir.to_path_buf(),
        why,
    };
    match read {
        Ok(_) => {}
        Err(WalError::TornTailRefused(d)) | Err(WalError::Corrupt(d)) => {
            report.problems.push(problem(d.to_string()));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let start = records
        .iter()
        .rposition(|(_, e)| e.as_ref().is_ok_and(|e| e.snapshot));
    let mut state = crate::manifest::VersionState::default();
    for (lsn, edit) in &records[start.unwrap_or(0)..] {
        let applied = edit
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|e| state.apply(e).map_err(|e| e.to_string()));
        match applied {
            Ok(next) => state = next,
            Err(why) => {
                report
                    .problems
                    .push(problem(format!("the record at LSN {lsn}: {why}")));
                return Ok(());
            }
        }
    }
    if start.is_none() && !records.is_empty() {
        report.problems.push(problem(
            "no snapshot record: the manifest's start is missing".into(),
        ));
        return Ok(());
    }
    report.manifest = Some((dir.to_path_buf(), state));
    Ok(())
}
