//! `keel dump | verify | repair`: argument handling and printing over
//! `keel::inspect`, which does the work (and knows the data directory).
//!
//! Exit codes: 0 done (verify: sound), 1 damaged or failed, 2 the path is
//! not a keel store or file.

use anyhow::bail;
use keel::inspect::{self, DumpDamage, DumpEvent, Repair, Target};
use keel::op::{preview, BatchOp, Op};
use keel::storage::{FsStorage, Storage};
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Says what `path` is, or prints why it is none of keel's (exit code 2).
fn resolve(storage: &dyn Storage, path: &Path) -> anyhow::Result<Result<Target, ExitCode>> {
    match Target::resolve(storage, path) {
        Ok(t) => Ok(Ok(t)),
        Err(e @ (keel::Error::NotAStore { .. } | keel::Error::NotAKeelFile { .. })) => {
            eprintln!("keel: {e}");
            Ok(Err(ExitCode::from(2)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The JSON fields of an operation (a batch lists its entries).
fn describe_json(op: &Op, o: &mut serde_json::Value) {
    let entry = |o: &mut serde_json::Value, kind: &str, k: &[u8], v: Option<&[u8]>| {
        o["op"] = kind.into();
        o["key"] = String::from_utf8_lossy(k).into();
        if let Some(v) = v {
            o["value_preview"] = preview(v).into();
            o["value_len"] = v.len().into();
        }
    };
    match op {
        Op::Put(k, v) => entry(o, "put", k, Some(v)),
        Op::Delete(k) => entry(o, "delete", k, None),
        Op::Clear => o["op"] = "clear".into(),
        Op::Batch(ops) => {
            o["op"] = "batch".into();
            let entries: Vec<serde_json::Value> = ops
                .iter()
                .map(|b| {
                    let mut e = serde_json::json!({});
                    match b {
                        BatchOp::Put(k, v) => entry(&mut e, "put", k, Some(v)),
                        BatchOp::Delete(k) => entry(&mut e, "delete", k, None),
                    }
                    e
                })
                .collect();
            o["entries"] = entries.into();
        }
        Op::WithMetadata { metadata, op } => {
            // The change's fields, then the metadata it sets beside them.
            match op {
                Some(op) => describe_json(op, o),
                None => o["op"] = "metadata".into(),
            }
            let set: serde_json::Map<String, serde_json::Value> = metadata
                .iter()
                .map(|(n, v)| {
                    let value =
                        serde_json::json!({"value_preview": preview(v), "value_len": v.len()});
                    (String::from_utf8_lossy(n).into_owned(), value)
                })
                .collect();
            o["metadata"] = set.into();
        }
    }
}

fn damage_text(d: &DumpDamage) -> (u64, Option<u64>, String) {
    match d {
        DumpDamage::Header(e) => (0, None, format!("bad segment header ({e})")),
        DumpDamage::Record(d) => (
            d.offset,
            Some(d.lsn),
            format!(
                "{} at LSN {} ({})",
                d.kind,
                d.lsn,
                if d.proven_synced {
                    "a later record proves it was synced: corruption"
                } else {
                    "nothing proves it was synced: a torn write if this is the last segment"
                }
            ),
        ),
    }
}

/// One dump event as a line of text or JSON.
fn dump_line(event: &DumpEvent<'_>, json: bool) -> Option<String> {
    let name = |p: &Path| {
        p.file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned())
    };
    Some(match event {
        DumpEvent::Segment { .. } => return None,
        DumpEvent::Checkpoint { path, bytes, header } => match (header, json) {
            (Ok(h), true) => serde_json::json!({"type": "checkpoint", "path": path, "lsn": h.lsn, "entries": h.count, "bytes": bytes}).to_string(),
            (Ok(h), false) => format!("checkpoint {}: LSN {}, {} entries, {bytes} bytes", path.display(), h.lsn, h.count),
            (Err(why), true) => serde_json::json!({"type": "checkpoint", "path": path, "error": why.to_string()}).to_string(),
            (Err(why), false) => format!("checkpoint {}: BAD HEADER ({why})", path.display()),
        },
        DumpEvent::Record { lsn, segment, offset, len, time_us, compression, dictionary, stored_len, op } => {
            let seg = name(segment);
            let time = keel_server::rfc3339::format_us(*time_us);
            let stored = match compression {
                keel_wal::Compression::None => String::new(),
                c if *dictionary => format!("  [{c} with the segment's dictionary: {len} bytes stored in {stored_len}]"),
                c => format!("  [{c}: {len} bytes stored in {stored_len}]"),
            };
            let mut o = serde_json::json!({"type": "record", "lsn": lsn, "time": time, "time_us": time_us, "segment": seg, "offset": offset});
            if *compression != keel_wal::Compression::None {
                o["compression"] = compression.name().into();
                o["stored_bytes"] = (*stored_len).into();
                if *dictionary {
                    o["dictionary"] = true.into();
                }
            }
            match (op, json) {
                (Ok(op), true) => {
                    describe_json(op, &mut o);
                    o.to_string()
                }
                (Ok(op), false) => format!("LSN {lsn:>8}  {time}  {seg} @{offset:<10} {op}{stored}"),
                (Err(e), true) => {
                    o["op"] = "unknown".into();
                    o["error"] = e.to_string().into();
                    o["bytes"] = (*len).into();
                    o.to_string()
                }
                (Err(e), false) => format!("LSN {lsn:>8}  {time}  {seg} @{offset:<10} not a keel operation ({e}), {len} bytes{stored}"),
            }
        }
        DumpEvent::Manifest { log_start, live_keys, levels } => {
            if json {
                serde_json::json!({"type": "manifest", "log_start": log_start, "live_keys": live_keys, "levels": levels}).to_string()
            } else {
                let shape: Vec<String> = levels
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| *n > 0)
                    .map(|(l, (n, bytes))| format!("L{l} {n} tables {bytes} bytes"))
                    .collect();
                let keys = match live_keys {
                    Some(n) => format!("{n} keys live"),
                    None => "keys not counted: written with exact_key_count off".into(),
                };
                format!("tables: {} ({keys} as of LSN {}); the log is needed from LSN {log_start}, the records before it are in tables", shape.join(", "), log_start - 1)
            }
        }
        DumpEvent::Edit { lsn, edit } => match (edit, json) {
            (Ok(e), true) => serde_json::json!({"type": "edit", "lsn": lsn, "edit": e.to_string()}).to_string(),
            (Ok(e), false) => format!("LSN {lsn:>8}  {e}"),
            (Err(why), true) => serde_json::json!({"type": "edit", "lsn": lsn, "error": why.to_string()}).to_string(),
            (Err(why), false) => format!("LSN {lsn:>8}  not a manifest edit ({why})"),
        },
        DumpEvent::Table { path, props } => match (props, json) {
            (Ok(p), true) => serde_json::json!({"type": "table", "path": path, "entries": p.entries, "tombstones": p.tombstones, "data_blocks": p.data_blocks, "min_lsn": p.min_lsn, "max_lsn": p.max_lsn}).to_string(),
            (Ok(p), false) => format!("table {}: {} entries ({} tombstones) in {} blocks, LSN {}..={}", path.display(), p.entries, p.tombstones, p.data_blocks, p.min_lsn, p.max_lsn),
            (Err(why), true) => serde_json::json!({"type": "table", "path": path, "error": why.to_string()}).to_string(),
            (Err(why), false) => format!("table {}: UNREADABLE ({why})", path.display()),
        },
        DumpEvent::TableEntry { key, entry } => {
            let k = keel::op::preview(key);
            match (entry, json) {
                (keel::table::Entry::Put(v), true) => serde_json::json!({"type": "entry", "key": String::from_utf8_lossy(key), "value_len": v.len()}).to_string(),
                (keel::table::Entry::Put(v), false) => format!("PUT    {k} = {} ({} bytes)", keel::op::preview(v), v.len()),
                (keel::table::Entry::Tombstone, true) => serde_json::json!({"type": "entry", "key": String::from_utf8_lossy(key), "tombstone": true}).to_string(),
                (keel::table::Entry::Tombstone, false) => format!("DELETE {k}"),
            }
        }
        DumpEvent::TableDamage { path, why } => {
            if json {
                serde_json::json!({"type": "damage", "path": path, "what": why.to_string()}).to_string()
            } else {
                format!("DAMAGE   {why} ({})", path.display())
            }
        }
        DumpEvent::Damage { segment, damage } => {
            let (offset, lsn, what) = damage_text(damage);
            let seg = name(segment);
            if json {
                serde_json::json!({"type": "damage", "segment": seg, "offset": offset, "lsn": lsn, "what": what}).to_string()
            } else {
                format!("DAMAGE   {seg} @{offset}: {what}")
            }
        }
    })
}

fn progress_bar(what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} segments")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// `keel dump PATH [--from LSN] [--json]`.
pub fn dump(path: &Path, from: u64, json: bool) -> anyhow::Result<ExitCode> {
    let fs = FsStorage::new();
    let target = match resolve(&fs, path)? {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let bar = progress_bar("dumping");
    let mut write_error = None;
    let damaged = inspect::dump(&fs, &target, from, &mut |event| {
        if let DumpEvent::Segment { index, total, .. } = event {
            bar.set_length(total as u64);
            bar.set_position(index as u64);
        }
        match dump_line(&event, json).map(|line| writeln!(out, "{line}")) {
            Some(Err(e)) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    })?;
    bar.finish_and_clear();
    match write_error {
        // The reader went away (`keel dump | head`): not an error.
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Some(e) => return Err(e.into()),
        None => {}
    }
    if damaged && !json {
        eprintln!("keel: damage found; `keel verify` explains it, `keel repair` cuts it");
    }
    Ok(ExitCode::SUCCESS)
}

/// `keel verify PATH`: exit 0 when sound, 1 when damaged, 2 when not keel's.
pub fn verify(path: &Path) -> anyhow::Result<ExitCode> {
    let fs = FsStorage::new();
    let target = match resolve(&fs, path)? {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let backup = match &target {
        Target::DataDir(d) => Some(keel::backup::backup_state(&fs, d.root())?),
        _ => None,
    };
    match &backup {
        Some(keel::backup::BackupState::Incomplete) => {
            println!(
                "{}: an INCOMPLETE backup (it holds {}: interrupted before it was marked complete); never restore it",
                path.display(),
                keel::backup::BACKUP_IN_PROGRESS
            );
            println!("DAMAGED");
            return Ok(ExitCode::from(1));
        }
        Some(keel::backup::BackupState::Complete(m)) => println!(
            "backup {}: marked complete at LSN {} (committed {})",
            path.display(),
            m.lsn,
            keel_server::rfc3339::format_us(m.time_us)
        ),
        _ => {}
    }
    let report = inspect::verify(&fs, &target)?;
    if let Some(keel::backup::BackupState::Complete(m)) = &backup {
        // The backup holds exactly the records up to its LSN.
        let last = match (&report.log, &report.manifest) {
            (Some(log), _) if log.report.last_lsn > 0 => log.report.last_lsn,
            (_, Some((_, state))) => state.log_start - 1,
            _ => report
                .checkpoints
                .iter()
                .filter_map(|(_, h)| h.as_ref().ok())
                .map(|h| h.lsn)
                .max()
                .unwrap_or(0),
        };
        if last != m.lsn {
            println!(
                "backup {}: its files end at LSN {last}, not at the LSN {} its marker names",
                path.display(),
                m.lsn
            );
            println!("DAMAGED");
            return Ok(ExitCode::from(1));
        }
    }
    for (p, header) in &report.checkpoints {
        if let Ok(h) = header {
            let (lsn, n) = (h.lsn, h.count);
            println!("checkpoint {}: sound (LSN {lsn}, {n} entries)", p.display());
        }
    }
    for (p, props) in &report.tables {
        if let Some(t) = props {
            println!(
                "table {}: sound ({} entries, {} tombstones, {} blocks, every checksum verified)",
                p.display(),
                t.entries,
                t.tombstones,
                t.data_blocks
            );
        }
    }
    if let Some((dir, state)) = &report.manifest {
        let per_level: Vec<String> = state
            .levels
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(l, t)| format!("L{l}: {}", t.len()))
            .collect();
        println!(
            "manifest {}: every edit verified and applied; log start {}, next table {}, live tables [{}]",
            dir.display(),
            state.log_start,
            state.next_table,
            per_level.join(", ")
        );
    }
    if let Some(log) = &report.log {
        let r = &log.report;
        println!(
            "log {}: {} segments, {} records, LSN {}..={}, every checksum verified, LSNs continuous",
            log.dir.display(),
            r.segments,
            r.records_read,
            r.first_lsn,
            r.last_lsn
        );
    }
    for problem in &report.problems {
        println!("{problem}");
    }
    if report.is_sound() {
        println!("sound");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("DAMAGED");
        Ok(ExitCode::from(1))
    }
}

/// `keel repair PATH [--yes]`.
pub fn repair(path: &Path, yes: bool) -> anyhow::Result<ExitCode> {
    let fs = Arc::new(FsStorage::new());
    let target = match resolve(&*fs, path)? {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let repair = Repair::prepare(fs, &target)?;
    let (dir, plan) = (repair.log_dir().display().to_string(), repair.plan());
    if !repair.is_needed() {
        for d in &plan.covered_damage {
            let lsn = repair.checkpoint_lsn().unwrap_or(0);
            println!("{dir}: damage in records the checkpoint at LSN {lsn} holds ({d}); the store opens as it is");
        }
        println!("{dir}: nothing to repair ({} records)", plan.records_read);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{repair}");
    let question = if repair.damaged_tables().is_empty() {
        format!("Cut the log back to LSN {}?", plan.last_lsn)
    } else {
        format!(
            "Replace the damaged tables as above and cut the log back to LSN {}?",
            plan.last_lsn
        )
    };
    if !yes && !confirm(&question)? {
        println!("nothing changed");
        return Ok(ExitCode::from(1));
    }
    let data_dir = repair.data_dir().map(Path::to_path_buf);
    let tables: Vec<_> = repair
        .damaged_tables()
        .iter()
        .map(|t| {
            (
                t.path.clone(),
                t.present,
                t.moved_to(data_dir.as_deref().unwrap_or(Path::new(""))),
            )
        })
        .collect();
    let report = repair.apply()?;
    for (path, present, moved_to) in tables {
        if present {
            println!("moved {} to {}", path.display(), moved_to.display());
        } else {
            println!(
                "dropped the missing table {} from the manifest",
                path.display()
            );
        }
    }
    println!("repaired: {report}");
    if let Some(p) = report.torn_tail.as_ref().and_then(|t| t.saved_to.as_ref()) {
        println!("cut bytes saved to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks `question` on the terminal; refuses without one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not changing anything without confirmation: run again with --yes");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
