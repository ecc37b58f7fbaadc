//! `keel`: the server and the command-line tools, thin over the engine.
//!
//! - `keel serve`: the HTTP API on a data directory;
//! - `keel dump | verify | repair PATH`: inspect, check and repair a data
//!   directory, a log directory or one file, without a server running.

mod backup_cli;
mod serve;
mod tools;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "keel", version, about = "keel: a crash-safe key-value store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API on a data directory (recovering it first).
    // Boxed: its many flags make it far larger than the other commands.
    Serve(Box<serve::ServeArgs>),
    /// Print every log record (LSN, operation, key, value preview, offset)
    /// and the headers of checkpoints. Continues past damage, marking it.
    Dump {
        /// A data directory, a log directory, a segment or a checkpoint file.
        path: PathBuf,
        /// Only records with LSN >= this.
        #[arg(long)]
        from: Option<u64>,
        /// One JSON object per line, for machines.
        #[arg(long)]
        json: bool,
    },
    /// Check every checksum, LSN continuity and every checkpoint. Exit 0
    /// when sound, 1 when damaged (naming segment, offset and LSN).
    Verify {
        /// A data directory or a log directory.
        path: PathBuf,
    },
    /// Cut a damaged log back to its last valid record, after showing what
    /// will be cut and asking. Cut bytes are saved beside the log.
    Repair {
        /// A data directory or a log directory.
        path: PathBuf,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Back up a store no server holds (a running server: POST
    /// /admin/backup) into DEST, a directory that must not exist: consistent
    /// at one LSN, tables linked where possible, marked complete last.
    Backup {
        /// The data directory.
        data_dir: PathBuf,
        /// The new backup directory.
        dest: PathBuf,
        /// The store's config file (its options, archive_dir included).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Restore a backup into a new data directory, then replay the log
    /// archive and a stopped store's log up to a point in time.
    Restore {
        /// A complete backup directory.
        backup: PathBuf,
        /// The new data directory (must not exist).
        #[arg(long)]
        into: PathBuf,
        /// A log archive (`archive_dir`) to replay.
        #[arg(long)]
        archive_dir: Option<PathBuf>,
        /// A stopped data directory whose log is replayed after the
        /// archive (read only, never changed).
        #[arg(long)]
        source: Option<PathBuf>,
        /// Stop after the record with this LSN.
        #[arg(long, conflicts_with_all = ["to_time", "latest"])]
        to_lsn: Option<u64>,
        /// Stop after the last record committed at or before this time
        /// (RFC 3339, e.g. 2026-12-03T06:41:02Z).
        #[arg(long, conflicts_with = "latest")]
        to_time: Option<String>,
        /// Replay everything the archive and the source hold.
        #[arg(long)]
        latest: bool,
    },
}

fn main() -> ExitCode {
    // Before any thread exists: two malloc arenas, not one per thread.
    keel::malloc::limit_arenas();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(args) => serve::run(*args).map(|()| ExitCode::SUCCESS),
        Cmd::Dump { path, from, json } => tools::dump(&path, from.unwrap_or(0), json),
        Cmd::Verify { path } => tools::verify(&path),
        Cmd::Repair { path, yes } => tools::repair(&path, yes),
        Cmd::Backup {
            data_dir,
            dest,
            config,
        } => backup_cli::backup(&data_dir, &dest, config.as_deref()),
        Cmd::Restore {
            backup,
            into,
            archive_dir,
            source,
            to_lsn,
            to_time,
            latest,
        } => backup_cli::restore_cmd(&backup_cli::RestoreArgs {
            backup: &backup,
            into: &into,
            archive_dir: archive_dir.as_deref(),
            source: source.as_deref(),
            to_lsn,
            to_time: to_time.as_deref(),
            latest,
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
