//! `keel dump | verify | repair`: work on a data directory, a log directory
//! or one file, never needing (and never racing) a running server.
//!
//! - dump continues past damage and marks it, like etcd-dump-logs;
//! - verify checks everything and exits 0 when sound, 1 when damaged;
//! - repair shows what it will cut, asks, then recovers in point-in-time
//!   mode, which saves every cut byte beside the log (`*.cut-at-N`,
//!   `*.dropped`) instead of deleting it.

use anyhow::{bail, Context};
use keel::checkpoint;
use keel::op::{BatchOp, Op};
use keel_storage::{FsStorage, Storage};
use keel_wal::inspect::{inspect_segment, segment_files};
use keel_wal::{RecoveryMode, Wal, WalError, WalOptions};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a PATH argument names.
enum Target {
    /// A store: checkpoints here, the log in `wal/`.
    DataDir(PathBuf),
    /// A log directory.
    WalDir(PathBuf),
    /// One segment file.
    Segment(PathBuf),
    /// One checkpoint file.
    Checkpoint(PathBuf),
}

fn resolve(path: &Path) -> anyhow::Result<Target> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if keel_wal::segment::parse_segment_name(name).is_some() {
            return Ok(Target::Segment(path.to_path_buf()));
        }
        if checkpoint::parse_checkpoint_name(name).is_some() {
            return Ok(Target::Checkpoint(path.to_path_buf()));
        }
        bail!(
            "{} is neither a segment (NNNNNNNNNNNNNNNNNNNN.wal) nor a checkpoint (checkpoint-N.ckpt)",
            path.display()
        );
    }
    if path.join("wal").is_dir() {
        return Ok(Target::DataDir(path.to_path_buf()));
    }
    Ok(Target::WalDir(path.to_path_buf()))
}

fn wal_dir_of(t: &Target) -> Option<PathBuf> {
    match t {
        Target::DataDir(d) => Some(d.join("wal")),
        Target::WalDir(d) => Some(d.clone()),
        _ => None,
    }
}

fn preview(b: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&b[..b.len().min(48)])
        .chars()
        .flat_map(char::escape_default)
        .collect();
    if b.len() > 48 {
        format!("{s}...")
    } else {
        s
    }
}

fn describe(op: &Op) -> (String, Vec<serde_json::Value>, String) {
    let entry = |kind: &str, k: &[u8], v: Option<&[u8]>| {
        let mut o = serde_json::json!({"op": kind, "key": String::from_utf8_lossy(k)});
        if let Some(v) = v {
            o["value_preview"] = preview(v).into();
            o["value_len"] = v.len().into();
        }
        o
    };
    match op {
        Op::Put(k, v) => (
            "put".into(),
            vec![entry("put", k, Some(v))],
            format!(
                "put key=\"{}\" value=\"{}\" ({} bytes)",
                preview(k),
                preview(v),
                v.len()
            ),
        ),
        Op::Delete(k) => (
            "delete".into(),
            vec![entry("delete", k, None)],
            format!("delete key=\"{}\"", preview(k)),
        ),
        Op::Clear => ("clear".into(), vec![], "clear".into()),
        Op::Batch(ops) => {
            let entries: Vec<_> = ops
                .iter()
                .map(|o| match o {
                    BatchOp::Put(k, v) => entry("put", k, Some(v)),
                    BatchOp::Delete(k) => entry("delete", k, None),
                })
                .collect();
            let text = ops
                .iter()
                .map(|o| match o {
                    BatchOp::Put(k, v) => format!("put \"{}\"=\"{}\"", preview(k), preview(v)),
                    BatchOp::Delete(k) => format!("delete \"{}\"", preview(k)),
                })
                .collect::<Vec<_>>()
                .join(", ");
            (
                "batch".into(),
                entries,
                format!("batch of {}: {text}", ops.len()),
            )
        }
    }
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    if len > 1 && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(len as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} segments")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// `keel dump PATH [--from LSN] [--json]`.
pub fn dump(path: &Path, from: u64, as_json: bool) -> anyhow::Result<ExitCode> {
    let fs = FsStorage::new();
    let target = resolve(path)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut checkpoints = Vec::new();
    if let Target::DataDir(d) = &target {
        checkpoints = checkpoint::list(&fs, d)?.0;
        checkpoints.reverse();
    }
    if let Target::Checkpoint(p) = &target {
        let lsn =
            checkpoint::parse_checkpoint_name(p.file_name().and_then(|n| n.to_str()).unwrap_or(""))
                .unwrap_or(0);
        checkpoints.push((lsn, p.clone()));
    }
    for (_, p) in &checkpoints {
        // Through the storage trait, like every other read of keel's files.
        let file = fs
            .open(p, keel_storage::OpenMode::Read)
            .with_context(|| format!("opening {}", p.display()))?;
        let size = file
            .len()
            .with_context(|| format!("reading {}", p.display()))?;
        let mut head = vec![0u8; 64];
        let n = file
            .read_at(&mut head, 0)
            .with_context(|| format!("reading {}", p.display()))?;
        head.truncate(n);
        // Header checks only; pad so the length check passes for the header.
        head.resize(64, 0);
        match checkpoint::decode_header(&head) {
            Ok(h) if as_json => writeln!(
                out,
                "{}",
                serde_json::json!({"type": "checkpoint", "path": p, "lsn": h.lsn, "entries": h.count, "bytes": size})
            )?,
            Ok(h) => writeln!(
                out,
                "checkpoint {}: LSN {}, {} entries, {} bytes",
                p.display(),
                h.lsn,
                h.count,
                size
            )?,
            Err(why) if as_json => writeln!(
                out,
                "{}",
                serde_json::json!({"type": "checkpoint", "path": p, "error": why})
            )?,
            Err(why) => writeln!(out, "checkpoint {}: BAD HEADER ({why})", p.display())?,
        }
    }
    let segments = match (&target, wal_dir_of(&target)) {
        (Target::Segment(p), _) => vec![p.clone()],
        (_, Some(w)) if w.is_dir() => segment_files(&fs, &w)?,
        _ => vec![],
    };
    let bar = progress(segments.len(), "dumping");
    let mut damaged = false;
    for seg in &segments {
        let name = seg
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let mut write_err = None;
        let summary = inspect_segment(&fs, seg, u32::MAX - 64, true, |lsn, offset, payload| {
            if lsn < from || write_err.is_some() {
                return;
            }
            let r = match Op::decode(payload) {
                Ok(op) => {
                    let (kind, entries, text) = describe(&op);
                    if as_json {
                        let mut o = serde_json::json!({"type": "record", "lsn": lsn, "segment": name, "offset": offset, "op": kind});
                        match op {
                            Op::Batch(_) => o["entries"] = entries.into(),
                            _ => {
                                if let Some(e) = entries.into_iter().next() {
                                    for (k, v) in e.as_object().into_iter().flatten() {
                                        if k != "op" {
                                            o[k] = v.clone();
                                        }
                                    }
                                }
                            }
                        }
                        writeln!(out, "{o}")
                    } else {
                        writeln!(out, "LSN {lsn:>8}  {name} @{offset:<10} {text}")
                    }
                }
                Err(e) if as_json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": "record", "lsn": lsn, "segment": name, "offset": offset, "op": "unknown", "error": e.0, "bytes": payload.len()})
                ),
                Err(e) => writeln!(
                    out,
                    "LSN {lsn:>8}  {name} @{offset:<10} not a keel operation ({e}), {} bytes",
                    payload.len()
                ),
            };
            if let Err(e) = r {
                write_err = Some(e);
            }
        })?;
        if let Some(e) = write_err {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
        if let Err(why) = &summary.header {
            damaged = true;
            if as_json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": "damage", "segment": name, "offset": 0, "what": format!("bad segment header: {why}")})
                )?;
            } else {
                writeln!(out, "DAMAGE   {name} @0: bad segment header ({why})")?;
            }
        }
        for d in &summary.damage {
            damaged = true;
            let what = format!(
                "{} at LSN {} ({})",
                d.kind,
                d.lsn,
                if d.proven_synced {
                    "a later record proves it was synced: corruption"
                } else {
                    "nothing proves it was synced: a torn write if this is the last segment"
                }
            );
            if as_json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": "damage", "segment": name, "offset": d.offset, "lsn": d.lsn, "what": what})
                )?;
            } else {
                writeln!(out, "DAMAGE   {name} @{}: {what}", d.offset)?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if damaged && !as_json {
        eprintln!("keel: damage found; `keel verify` explains it, `keel repair` cuts it");
    }
    Ok(ExitCode::SUCCESS)
}

/// `keel verify PATH`: exit 0 when sound, 1 when damaged.
pub fn verify(path: &Path) -> anyhow::Result<ExitCode> {
    let fs = FsStorage::new();
    let target = resolve(path)?;
    let mut sound = true;
    let mut newest_valid: Option<u64> = None;
    if let Target::DataDir(d) | Target::Checkpoint(d) = &target {
        let list = match &target {
            Target::DataDir(_) => checkpoint::list(&fs, d)?.0,
            _ => vec![(0, d.clone())],
        };
        for (_, p) in list {
            match checkpoint::read(&fs, &p, usize::MAX, usize::MAX) {
                Ok((h, _)) => {
                    println!(
                        "checkpoint {}: sound (LSN {}, {} entries)",
                        p.display(),
                        h.lsn,
                        h.count
                    );
                    newest_valid = newest_valid.max(Some(h.lsn));
                }
                Err(why) => {
                    sound = false;
                    println!("checkpoint {}: DAMAGED: {why}", p.display());
                }
            }
        }
    }
    let wal_dir = match &target {
        Target::Segment(p) => p.parent().map(Path::to_path_buf),
        t => wal_dir_of(t),
    };
    if let Some(w) = wal_dir.filter(|w| w.is_dir()) {
        let opts = WalOptions {
            recovery: RecoveryMode::AbsoluteConsistency,
            max_record_size: u32::MAX - 64,
            ..WalOptions::default()
        };
        let segments = segment_files(&fs, &w)?.len();
        let bar = progress(segments, "verifying");
        let mut bad_ops = 0u64;
        let mut first_bad = None;
        // Records a sound checkpoint holds are not needed for recovery:
        // damage among them is reported below, but does not stop the scan.
        let from = newest_valid.map_or(1, |n| n + 1);
        let result = Wal::read_dir(&fs, &w, &opts, from, |lsn, payload| {
            if Op::decode(payload).is_err() {
                bad_ops += 1;
                first_bad.get_or_insert(lsn);
            }
        });
        bar.finish_and_clear();
        match result {
            Ok(report) => {
                println!(
                    "log {}: sound: {} segments, {} records, LSN {}..={}, every checksum verified, LSNs continuous",
                    w.display(),
                    report.segments,
                    report.records_read,
                    report.first_lsn,
                    report.last_lsn
                );
                for d in &report.covered_damage {
                    sound = false;
                    println!(
                        "log {}: DAMAGED: {d}. Recovery is not affected: the checkpoint at LSN {} holds these records",
                        w.display(),
                        from - 1
                    );
                }
                if bad_ops > 0 {
                    sound = false;
                    println!(
                        "log {}: {bad_ops} records are not keel operations (first at LSN {})",
                        w.display(),
                        first_bad.unwrap_or(0)
                    );
                }
                if let Some(n) = newest_valid {
                    if report.first_lsn > n + 1 || report.last_lsn < n {
                        sound = false;
                        println!(
                            "log {}: DAMAGED: it holds LSN {}..={}, which does not continue the newest sound checkpoint (LSN {n})",
                            w.display(),
                            report.first_lsn,
                            report.last_lsn
                        );
                    }
                }
            }
            Err(WalError::TornTailRefused(d)) => {
                sound = false;
                println!(
                    "log {}: DAMAGED: torn tail: {d}. Nothing after it was ever acknowledged; the next open cuts it (and `keel repair` cuts it now, saving the bytes)",
                    w.display()
                );
            }
            Err(WalError::Corrupt(d)) => {
                sound = false;
                println!(
                    "log {}: DAMAGED: {d}. `keel repair` cuts the log back to the record before it, setting the rest aside",
                    w.display()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    if sound {
        println!("sound");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("DAMAGED");
        Ok(ExitCode::from(1))
    }
}

/// `keel repair PATH [--yes]`.
pub fn repair(path: &Path, yes: bool) -> anyhow::Result<ExitCode> {
    let fs = FsStorage::new();
    let target = resolve(path)?;
    let Some(wal_dir) = wal_dir_of(&target) else {
        bail!("repair works on a data directory or a log directory, not on one file");
    };
    // Never race a running server: take the store's lock.
    let data_dir = match &target {
        Target::DataDir(d) => Some(d.clone()),
        _ => wal_dir
            .parent()
            .filter(|p| p.join("LOCK").exists())
            .map(Path::to_path_buf),
    };
    let _lock = match &data_dir {
        Some(d) => Some(
            fs.lock_exclusive(
                &d.join("LOCK"),
                &format!("keel repair, pid {}", std::process::id()),
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} is in use ({e}); stop the server before repairing",
                    d.display()
                )
            })?,
        ),
        None => None,
    };
    let opts = WalOptions {
        recovery: RecoveryMode::PointInTime,
        max_record_size: u32::MAX - 64,
        ..WalOptions::default()
    };
    // Never cut records that the newest sound checkpoint depends on being
    // followed by: damage below it is not in the way of recovery.
    let mut newest_checkpoint = None;
    if let Some(d) = &data_dir {
        for (lsn, p) in checkpoint::list(&fs, d)?.0 {
            if checkpoint::read(&fs, &p, usize::MAX, usize::MAX).is_ok() {
                newest_checkpoint = Some(lsn);
                break;
            }
        }
    }
    let from = newest_checkpoint.map_or(1, |n| n + 1);
    let plan = Wal::read_dir(&fs, &wal_dir, &opts, from, |_, _| {})?;
    if plan.torn_tail.is_none() && plan.set_aside.is_none() {
        for d in &plan.covered_damage {
            println!(
                "{}: damage in records the checkpoint at LSN {} holds ({d}); the store opens as it is",
                wal_dir.display(),
                from - 1
            );
        }
        println!(
            "{}: nothing to repair ({} records)",
            wal_dir.display(),
            plan.records_read
        );
        return Ok(ExitCode::SUCCESS);
    }
    if plan.last_lsn < from - 1 {
        bail!(
            "the damage is at LSN {}, before the newest checkpoint (LSN {}), and nothing after it verifies; cutting there would leave the log behind the checkpoint. Keep the data as it is and restore the log from a backup",
            plan.last_lsn + 1,
            from - 1
        );
    }
    println!(
        "{}: the log is valid up to LSN {}.",
        wal_dir.display(),
        plan.last_lsn
    );
    if let Some(t) = &plan.torn_tail {
        println!(
            "  will cut {} bytes at {} offset {} ({}); they were never acknowledged",
            t.bytes_cut,
            t.damage.segment.display(),
            t.damage.offset,
            t.damage.kind
        );
    }
    if let Some(s) = &plan.set_aside {
        println!("  damage: {}", s.damage);
        println!("  everything after it is moved aside (not deleted) to:");
        for p in &s.saved_to {
            println!("    {}", p.display());
        }
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not cutting anything without confirmation: run again with --yes");
        }
        print!("Cut the log back to LSN {}? [y/N] ", plan.last_lsn);
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(ExitCode::from(1));
        }
    }
    let (wal, report) =
        Wal::open_with_replay(std::sync::Arc::new(fs), &wal_dir, opts, from, |_, _| {})?;
    wal.close()?;
    println!("repaired: {report}");
    if let Some(t) = &report.torn_tail {
        if let Some(p) = &t.saved_to {
            println!("cut bytes saved to {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
