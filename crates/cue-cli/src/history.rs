//! `cue history`, `cue show --at` and `cue sync restore --at` (docs/reference.md §1.5):
//! read from the store, with or without a running daemon.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use cue_daemon::driver;
use cue_daemon::workspace::Workspace;

use crate::status_view::printable;

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
                    "mode_changed": v.exec.map(exec_word),
                    "size": v.size,
                    "summary": summary(v),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let zone = jiff::tz::TimeZone::system();
    let mut out = std::io::stdout().lock();
    for v in &versions {
        writeln!(
            out,
            "{}  {}  {:<16}  {}",
            v.rev,
            crate::local_time(v.time_ms, &zone),
            printable(&v.device),
            printable(&summary(v))
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a version changed, in words: `+3 -1 lines; frontmatter: tags; +x`.
fn summary(v: &cue_core::Version) -> String {
    let mut what = format!("+{} -{} lines", v.added, v.removed);
    if !v.frontmatter.is_empty() {
        what.push_str(&format!("; frontmatter: {}", v.frontmatter.join(", ")));
    }
    if let Some(exec) = v.exec {
        what.push_str(&format!("; {}", exec_word(exec)));
    }
    what
}

/// How a change of the executable bit is said: as `chmod` says it.
fn exec_word(exec: bool) -> &'static str {
    if exec { "+x" } else { "-x" }
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
    let (bytes, current) = driver::version_and_current(&ws, rel, rev).map_err(|e| anyhow!(e))?;
    let path = root.join(rel);
    let on_disk = std::fs::read(&path).ok();
    if on_disk != current {
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
    // Content is restored, not the mode: the file keeps its own (its executable bit is
    // synced, and a new file's mode would take it away everywhere).
    if let Ok(meta) = std::fs::metadata(&path)
        && let Err(e) = std::fs::set_permissions(&tmp, meta.permissions())
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    println!("Restored {rel} to version {rev}, as a new edit.");
    Ok(ExitCode::SUCCESS)
}

/// `cue export --automerge DIR`: `files/PATH.automerge` for each synced file, the index
/// as `index.automerge`, and `manifest.json` (path, file id, kind, size, SHA-256 of the
/// content) into DIR, which must be empty or absent (docs/schema.md).
pub fn export(root: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    use sha2::Digest;
    let ws = Workspace::open(root)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: export into a new or empty folder",
            dir.display()
        );
    }
    let (files, index) = driver::export(&ws).map_err(|e| anyhow!(e))?;
    std::fs::create_dir_all(dir.join("files"))?;
    let mut manifest = Vec::with_capacity(files.len());
    for f in &files {
        let target = dir.join("files").join(format!("{}.automerge", f.path));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &f.document)?;
        manifest.push(serde_json::json!({
            "path": f.path,
            "document": format!("files/{}.automerge", f.path),
            "file_id": f.file.to_string(),
            "kind": if std::str::from_utf8(&f.content).is_ok() { "text" } else { "binary" },
            "size": f.content.len(),
            "sha256": hex::encode(sha2::Sha256::digest(&f.content)),
        }));
    }
    std::fs::write(dir.join("index.automerge"), &index)?;
    let doc = serde_json::json!({
        "schema_version": 1,
        "workspace_id": ws.workspace_id(),
        "index": "index.automerge",
        "files": manifest,
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&doc)?)?;
    println!(
        "Exported {} to {} (docs/schema.md describes the documents).",
        crate::status_view::plural(files.len() as u64, "file", "files"),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
