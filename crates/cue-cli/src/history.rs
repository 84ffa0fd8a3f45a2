//! `cue history`, `cue show --at` and `cue sync restore --at` (docs/reference.md §1.5):
//! read from the store, with or without a running daemon.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use cue_daemon::driver;
use cue_daemon::workspace::Workspace;

/// `cue history PATH [--json]`: newest first.
pub fn history(root: &Path, rel: &str, json: bool) -> anyhow::Result<ExitCode> {
    let ws = Workspace::open(root)?;
    let versions = driver::history(&ws, rel).map_err(|e| anyhow!(e))?;
    if json {
        let out: Vec<serde_json::Value> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "rev": v.rev,
                    "time": cue_daemon::control::rfc3339(v.time_ms),
                    "device": v.device,
                    "lines_added": v.added,
                    "lines_removed": v.removed,
                    "frontmatter_changed": v.frontmatter,
                    "size": v.size,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let zone = jiff::tz::TimeZone::system();
    let mut out = std::io::stdout().lock();
    for v in &versions {
        let mut what = format!("+{} -{} lines", v.added, v.removed);
        if !v.frontmatter.is_empty() {
            what.push_str(&format!("; frontmatter: {}", v.frontmatter.join(", ")));
        }
        writeln!(
            out,
            "{}  {}  {:<16}  {what}",
            v.rev,
            crate::local_time(v.time_ms, &zone),
            v.device
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `cue show PATH --at REV`: the version's bytes on stdout, as they were.
pub fn show(root: &Path, rel: &str, rev: &str) -> anyhow::Result<ExitCode> {
    let ws = Workspace::open(root)?;
    let bytes = driver::version(&ws, rel, rev).map_err(|e| anyhow!(e))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `cue sync restore PATH --at REV`: the version written over the file, which the
/// daemon (now, or at its next start) takes in as a new edit, synced like any edit.
/// Refused while the file holds changes cue has not taken in yet, which it would lose.
pub fn restore_at(root: &Path, rel: &str, rev: &str) -> anyhow::Result<ExitCode> {
    let ws = Workspace::open(root)?;
    let bytes = driver::version(&ws, rel, rev).map_err(|e| anyhow!(e))?;
    let path = root.join(rel);
    let on_disk = std::fs::read(&path).ok();
    if on_disk != driver::current(&ws, rel) {
        bail!(
            "{rel} has changes that cue has not taken in yet (is the daemon running? `cue sync start`); \
             restoring now would lose them: try again once `cue sync status` shows nothing pending"
        );
    }
    // Written beside it and renamed over it: an editor or the watcher never sees half.
    let tmp = path.with_file_name(format!(
        ".{}.cue-restore-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, &bytes)?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    println!("Restored {rel} to version {rev}, as a new edit.");
    Ok(ExitCode::SUCCESS)
}
