//! `keel`: the server and the command-line tools, thin over the engine.
//!
//! - `keel serve`: the HTTP API on a data directory;
//! - `keel dump | verify | repair PATH`: inspect, check and repair a data
//!   directory, a log directory or one file, without a server running.

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel: {e:#}");
            ExitCode::FAILURE
        }
    }
}
