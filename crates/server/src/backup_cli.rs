//! `keel backup` and `keel restore`: argument handling and printing over
//! `keel::backup` and `keel::restore`, which do the work.

use anyhow::{bail, Context};
use keel::restore::{restore, RestoreRequest, RestoreStop, RestoreTarget};
use keel::storage::FsStorage;
use keel::{Db, Options};
use keel_server::config::ConfigFile;
use keel_server::rfc3339;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// `keel backup DATA_DIR DEST [--config FILE]`: opens the store (which no
/// server may hold: a running server backs up with `POST /admin/backup`),
/// backs it up, closes it.
pub fn backup(data_dir: &Path, dest: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let opts = match config {
        Some(c) => ConfigFile::load(c)?.options,
        None => {
            // Without the store's config its archive_dir is unknown: nothing
            // may delete a log segment (a flush or checkpoint would, without
            // archiving it), so no flush or checkpoint runs while the store
            // is open here. A store kept in memory opens so, not upgraded.
            let mut o = Options::default();
            o.checkpoint_log_bytes = None;
            o.checkpoint_interval = None;
            let manifest = data_dir.join(keel::layout::MANIFEST_DIR);
            let on_tables = keel::storage::Storage::exists(&FsStorage::new(), &manifest)
                .with_context(|| format!("checking for {}", manifest.display()))?;
            o.memtable_size = on_tables.then_some(u64::MAX / 4);
            o
        }
    };
    let (db, _) = Db::open(data_dir, opts).map_err(|e| match e {
        keel::Error::Locked { .. } => anyhow::anyhow!(
            "{e}\nA running server backs up with POST /admin/backup {{\"dest\": \"/absolute/path\"}}"
        ),
        e => e.into(),
    })?;
    let report = db.backup(dest)?;
    db.close()?;
    println!(
        "{report}; LSN {} was committed at {}",
        report.marker.lsn,
        rfc3339::format_us(report.marker.time_us)
    );
    Ok(ExitCode::SUCCESS)
}

/// The arguments of `keel restore`.
pub struct RestoreArgs<'a> {
    pub backup: &'a Path,
    pub into: &'a Path,
    pub archive_dir: Option<&'a Path>,
    pub source: Option<&'a Path>,
    pub to_lsn: Option<u64>,
    pub to_time: Option<&'a str>,
    pub latest: bool,
}

/// `keel restore BACKUP --into NEW_DIR [--archive-dir DIR] [--source
/// DATA_DIR] [--to-lsn N | --to-time RFC3339 | --latest]`.
pub fn restore_cmd(a: &RestoreArgs<'_>) -> anyhow::Result<ExitCode> {
    let target = match (a.to_lsn, a.to_time, a.latest) {
        (Some(n), None, false) => RestoreTarget::Lsn(n),
        (None, Some(t), false) => RestoreTarget::Time(
            rfc3339::parse_us(t).map_err(anyhow::Error::msg).context("--to-time")?,
        ),
        (None, None, true) => RestoreTarget::Latest,
        (None, None, false) if a.archive_dir.is_none() && a.source.is_none() => {
            // The backup as it is.
            let marker = keel::restore::check_backup(&FsStorage::new(), a.backup)?;
            RestoreTarget::Lsn(marker.lsn)
        }
        (None, None, false) => bail!(
            "say where to stop replaying the archive and the source's log: --to-lsn N, --to-time 2026-12-03T06:41:02Z, or --latest"
        ),
        _ => bail!("give one of --to-lsn, --to-time and --latest"),
    };
    let req = RestoreRequest {
        backup: a.backup,
        into: a.into,
        archive_dir: a.archive_dir,
        source: a.source,
        target,
    };
    let r = restore(Arc::new(FsStorage::new()), &req)?;
    let why = match r.stop {
        RestoreStop::TargetReached => "the target was reached".to_string(),
        RestoreStop::LogRanOut { next_lsn } => format!(
            "the log ran out: no segment in the archive or the source's log holds LSN {next_lsn}"
        ),
        RestoreStop::TornTail { lsn } => {
            format!("the source's log ends in a torn write at LSN {lsn} (never acknowledged)")
        }
    };
    println!(
        "restored {} into {}: LSN {} (committed {}), {} records replayed after the backup's LSN {} from {} segments; stopped because {why}",
        a.backup.display(),
        a.into.display(),
        r.reached_lsn,
        rfc3339::format_us(r.reached_time_us),
        r.records_after_backup,
        r.backup_lsn,
        r.segments_copied
    );
    println!(
        "read and checked {} bytes of log in {:.2?}; copied in {:.2?}; opened (records applied) in {:.2?}",
        r.log_bytes_scanned, r.plan_duration, r.copy_duration, r.open_duration
    );
    Ok(ExitCode::SUCCESS)
}
