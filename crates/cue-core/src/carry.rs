//! Carrying out the engine's effects, and the start-up scan: the rules every driver
//! follows, written once.
//!
//! The engine decides; a driver (the daemon, the simulation) does the IO. What a driver
//! does with the effects is not a detail of the driver: the order of persistence, files
//! and messages, a write refused because the user saved meanwhile (fed back as
//! [`Input::WriteRefused`], at most [`MAX_FEEDBACK_DEPTH`] deep), a removal that empties
//! folders, and the start-up comparison of the folder with what the engine believes is
//! there (with renames told from the content) decide whether an edit survives. So they
//! live here, against a [`Host`] that the daemon implements over its store and folder and
//! the simulation over maps in memory. The simulation thus runs the daemon's rules.
//!
//! Still no IO here: a [`Host`] is an interface, called synchronously.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::engine::{Activity, DocStore, Effect, Engine, Input, Persist};
use crate::ids::{ContentHash, DeviceId};

/// A message the engine wants sent: to one device, or to every peer (`None`).
pub type Outgoing = (Option<DeviceId>, Vec<u8>);

/// `WriteRefused` feedback deeper than this means the disk keeps changing under us (a
/// program appending every few milliseconds): what the disk held is still merged, but the
/// files are written again only at the engine's next tick ([`Input::WriteDeferred`]).
pub const MAX_FEEDBACK_DEPTH: usize = 8;

/// The mass-deletion guard trips when a workspace of at least this many files...
pub const GUARD_MIN_FILES: usize = 20;

/// ...loses more than half of them at once (see docs/reference.md §3.3).
pub fn too_many_missing(known: usize, missing: usize) -> bool {
    known >= GUARD_MIN_FILES && missing * 2 > known
}

/// The start-up scan feeds the engine at most this many files (or bytes) at a time:
/// enough that settling the workspace once a batch costs little, few enough that the
/// progress bar moves and memory stays bounded.
pub const SCAN_BATCH_FILES: usize = 64;
pub const SCAN_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Inputs gathered from one batch of watcher events, to be handled in one settle and one
/// transaction (a `cp -r` of 3,000 files was 3,000 settles of the whole workspace, 3,000
/// commits and 3,000 messages), at most [`SCAN_BATCH_FILES`] inputs or
/// [`SCAN_BATCH_BYTES`] at a time, as the start-up scan feeds them. The daemon's driver
/// and the simulation gather with it alike: an event that looks at what the engine knows
/// of a path (a removal, a rename) about a path gathered ([`Gathered::touches`]) has what
/// is gathered handled first.
#[derive(Debug, Default)]
pub struct Gathered {
    inputs: Vec<Input>,
    bytes: usize,
    /// The paths the inputs are about: an event about one of them (or a folder of one)
    /// needs the engine to know them first.
    paths: BTreeSet<String>,
}

impl Gathered {
    /// Adds an input; true when the gathering is full and is to be handled now
    /// ([`Gathered::take`]).
    pub fn push(&mut self, input: Input) -> bool {
        let (path, bytes) = match &input {
            Input::FileChanged { path, content, .. } => (Some(path), content.len()),
            Input::FileRemoved { path }
            | Input::FileTooLarge { path, .. }
            | Input::UnsyncableFile { path, .. } => (Some(path), 0),
            Input::FileRenamed { to, content, .. } => (Some(to), content.len()),
            _ => (None, 0),
        };
        if let Some(p) = path {
            self.paths.insert(p.clone());
        }
        if let Input::FileRenamed { from, .. } = &input {
            self.paths.insert(from.clone());
        }
        self.bytes += bytes;
        self.inputs.push(input);
        self.inputs.len() >= SCAN_BATCH_FILES || self.bytes >= SCAN_BATCH_BYTES
    }

    /// Does an event about `path` (a file or a folder) depend on what is gathered?
    pub fn touches(&self, path: &str) -> bool {
        let below = format!("{path}/");
        self.paths.contains(path)
            || self
                .paths
                .range(below.clone()..)
                .next()
                .is_some_and(|p| p.starts_with(&below))
    }

    /// What is gathered so far, to be handled; the gathering goes on, empty.
    pub fn take(&mut self) -> Vec<Input> {
        std::mem::take(self).inputs
    }
}

/// What a conditional write or removal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The disk did not hold what was expected; nothing was changed.
    Unexpected,
    /// Done, but the file replaced or removed was written to in the instant between the
    /// check and the replacement (a program appending to it): what it held then, and
    /// whether it was executable. Fed back as [`Input::ReplacedEdit`].
    DoneOverEdit(Vec<u8>, bool),
}

/// One file write the engine asked for: `bytes` at `path`, executable or not (`exec`,
/// see [`Effect::WriteFile`]), if the disk holds `expect` there (`None`: nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub path: String,
    pub bytes: Vec<u8>,
    pub exec: bool,
    pub expect: Option<ContentHash>,
}

/// What a driver provides: a store to make the engine's output durable, and a folder.
pub trait Host: DocStore {
    /// An error that stops the driver (the store failing). A file that cannot be written
    /// is not one: it is reported through [`Host::write_failed`] and the rest goes on.
    type Error;
    /// Why one file operation failed.
    type DiskError: std::fmt::Display;

    /// Commits a batch's persistence and activities in one transaction, with the file
    /// effects about to be carried out (so a crash between the two can be finished at the
    /// next start). Called before any file of the batch is touched or any of its messages
    /// is sent: a change a peer has seen is never lost in a crash.
    ///
    /// `durable`: the commit must survive a power cut before this returns. It is `false`
    /// only for a batch that sends nothing, touches no file and holds no document data
    /// ([`Persist::holds_document_data`]): a peer's confirmation, say. Such a commit must
    /// survive the daemon's crash (a kill -9) but may wait for the next durable commit to
    /// reach the disk: losing it to a power cut loses nothing anyone has seen.
    fn commit(
        &mut self,
        persists: Vec<Persist>,
        activities: Vec<Activity>,
        files: &[Effect],
        durable: bool,
    ) -> Result<(), Self::Error>;

    /// The batch's file effects were carried out (successfully or not).
    fn files_done(&mut self, _files: &[Effect]) {}

    /// Writes `bytes` at `path` if the disk holds `expect` there (a hash of the bytes
    /// and the executable bit, [`crate::file_hash`]), atomically. `exec` sets or clears
    /// the executable bits and leaves every other mode bit as it was.
    fn write_if(
        &mut self,
        path: &str,
        bytes: &[u8],
        exec: bool,
        expect: Option<ContentHash>,
    ) -> Result<Outcome, Self::DiskError>;

    /// Several writes at once, in order; one result each. A host that can make many files
    /// durable together (one `syncfs` rather than an `fsync` each) does so here.
    fn write_many(&mut self, writes: &[Write]) -> Vec<Result<Outcome, Self::DiskError>> {
        writes
            .iter()
            .map(|w| self.write_if(&w.path, &w.bytes, w.exec, w.expect))
            .collect()
    }

    /// Removes `path` if it holds `expect`; `Ok(None)` when nothing is there.
    fn remove_if(
        &mut self,
        path: &str,
        expect: ContentHash,
    ) -> Result<Option<Outcome>, Self::DiskError>;

    /// Removes the folder `dir` if it is empty; whether it did.
    fn remove_empty_dir(&mut self, dir: &str) -> bool;

    /// The content of the regular file at `path` and whether it is executable
    /// ([`crate::is_exec`]); `None` when there is none (nothing, a folder, a link).
    fn read_file(&mut self, path: &str) -> Result<Option<(Vec<u8>, bool)>, Self::DiskError>;

    /// Whether anything at all is at `path`.
    fn exists(&mut self, path: &str) -> Result<bool, Self::DiskError>;

    /// A file was written (the daemon looks at it once more after its watcher's window).
    fn written(&mut self, _path: &str) {}

    /// A file could not be written or removed: the host logs and counts it. The engine
    /// is told too ([`Input::WriteFailed`]): it takes its belief back and lists the file;
    /// a write that failed is never taken for a deletion.
    fn write_failed(&mut self, path: &str, error: &Self::DiskError);

    /// What the carry-out tells the engine of its effects (a write refused, one made over
    /// a program's write, ...), as it is fed: for a debug log.
    fn feedback(&mut self, _input: &Input) {}

    /// The disk kept changing under [`MAX_FEEDBACK_DEPTH`] refused writes in a row: these
    /// files are merged but written at the next tick.
    fn deferred(&mut self, _paths: &[String]) {}
}

/// Feeds inputs to the engine and carries out what it returns; the messages to send.
pub fn handle<H: Host>(
    engine: &mut Engine,
    host: &mut H,
    now_ms: i64,
    inputs: Vec<Input>,
) -> Result<Vec<Outgoing>, H::Error> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let effects = engine.handle_batch(now_ms, inputs, host);
    carry_out(engine, host, now_ms, effects)
}

/// Carries out effects in the engine's order: persistence and activities (committed
/// together), then files, then the messages are handed back. Writes the disk refused are
/// fed back to the engine, whose answer is carried out the same way.
pub fn carry_out<H: Host>(
    engine: &mut Engine,
    host: &mut H,
    now_ms: i64,
    effects: Vec<Effect>,
) -> Result<Vec<Outgoing>, H::Error> {
    carry_out_at(engine, host, now_ms, effects, 0)
}

fn carry_out_at<H: Host>(
    engine: &mut Engine,
    host: &mut H,
    now_ms: i64,
    effects: Vec<Effect>,
    depth: usize,
) -> Result<Vec<Outgoing>, H::Error> {
    let mut persists = Vec::new();
    let mut files = Vec::new();
    let mut sends = Vec::new();
    let mut activities = Vec::new();
    let mut reads = Vec::new();
    for e in effects {
        match e {
            Effect::Persist(p) => persists.push(p),
            Effect::WriteFile { .. } | Effect::RemoveFile { .. } => files.push(e),
            Effect::ReadFile { path } => reads.push(path),
            Effect::Send { to, bytes } => sends.push((to, bytes)),
            Effect::Activity(a) => activities.push(a),
        }
    }
    if !persists.is_empty() || !activities.is_empty() || !files.is_empty() {
        let durable = !sends.is_empty()
            || !files.is_empty()
            || persists.iter().any(Persist::holds_document_data);
        host.commit(persists, activities, &files, durable)?;
    }
    if depth > MAX_FEEDBACK_DEPTH {
        // Merged already; written at the next tick. The engine takes its belief back.
        let mut deferred = Vec::new();
        for e in &files {
            if let Effect::WriteFile { path, expect, .. } | Effect::RemoveFile { path, expect } = e
            {
                deferred.push(Input::WriteDeferred {
                    path: path.clone(),
                    expect: *expect,
                });
            }
        }
        let paths: Vec<String> = files
            .iter()
            .filter_map(|e| e.file_path().map(str::to_string))
            .collect();
        host.deferred(&paths);
        host.files_done(&files);
        deferred.extend(read_back(host, reads));
        let effects = engine.handle_batch(now_ms, deferred, host);
        // Taking a belief back writes nothing, and a file put off is not written again
        // before the next tick, so this ends; the bound is a second safeguard.
        if depth <= 2 * MAX_FEEDBACK_DEPTH {
            sends.extend(carry_out_at(engine, host, now_ms, effects, depth + 1)?);
        }
        return Ok(sends);
    }
    let mut feedback = files_to_disk(host, &files);
    host.files_done(&files);
    feedback.extend(read_back(host, reads));
    for input in feedback {
        host.feedback(&input);
        let effects = engine.handle(now_ms, input, host);
        // The feedback's own persistence is committed before anything is sent.
        sends.extend(carry_out_at(engine, host, now_ms, effects, depth + 1)?);
    }
    Ok(sends)
}

/// What the files the engine asked to read back (`Effect::ReadFile`) hold, as inputs.
/// (One unreadable now is reported by the watcher or the next start's scan when it is.)
fn read_back<H: Host>(host: &mut H, paths: Vec<String>) -> Vec<Input> {
    paths
        .into_iter()
        .filter_map(|path| {
            let (content, exec) = host.read_file(&path).ok()??;
            Some(Input::FileChanged {
                path,
                content,
                exec,
            })
        })
        .collect()
}

/// Writes and removals in the engine's order; the refusals to feed back.
///
/// A write at a path whose removal just before was refused is not made: the disk holds
/// what the removal found, so it would be refused too, and its report, taken in after
/// the engine had answered the removal's (and maybe written the path again), would
/// speak of a disk that is no longer there. It is put off ([`Input::WriteDeferred`]),
/// told before anything else: until then the engine believes the file written there,
/// and the answer to another report of the batch (a save at the moved file's old name,
/// merged into it) wrote it over what the removal found, which came back as its edit:
/// the moved note's text replaced by the replaced note's.
fn files_to_disk<H: Host>(host: &mut H, files: &[Effect]) -> Vec<Input> {
    let mut feedback = Vec::new();
    let mut put_off = Vec::new();
    let mut writes: Vec<Write> = Vec::new();
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    for e in files {
        match e {
            Effect::WriteFile { path, expect, .. } if kept.contains(path.as_str()) => {
                put_off.push(Input::WriteDeferred {
                    path: path.clone(),
                    expect: *expect,
                });
            }
            Effect::WriteFile {
                path,
                bytes,
                exec,
                expect,
            } => writes.push(Write {
                path: path.clone(),
                bytes: bytes.clone(),
                exec: *exec,
                expect: *expect,
            }),
            Effect::RemoveFile { path, expect } => {
                // Writes before this removal happen first.
                write_all(host, std::mem::take(&mut writes), &mut feedback);
                if !remove(host, path, *expect, &mut feedback) {
                    kept.insert(path);
                }
            }
            _ => {}
        }
    }
    write_all(host, writes, &mut feedback);
    put_off.extend(feedback);
    put_off
}

fn write_all<H: Host>(host: &mut H, writes: Vec<Write>, feedback: &mut Vec<Input>) {
    if writes.is_empty() {
        return;
    }
    let results = host.write_many(&writes);
    for (w, result) in writes.into_iter().zip(results) {
        match result {
            Ok(Outcome::Done) => host.written(&w.path),
            Ok(Outcome::DoneOverEdit(content, exec)) => {
                host.written(&w.path);
                replaced_edit(&w.path, content, exec, w.expect, feedback);
            }
            Ok(Outcome::Unexpected) => after_unexpected(host, &w, feedback),
            Err(error) => failed(host, &w.path, w.expect, &error, feedback),
        }
    }
}

/// Reports a failed write or removal to the host and, as feedback, to the engine: the
/// disk still holds `expect` at `path`.
fn failed<H: Host>(
    host: &mut H,
    path: &str,
    expect: Option<ContentHash>,
    error: &H::DiskError,
    feedback: &mut Vec<Input>,
) {
    host.write_failed(path, error);
    feedback.push(Input::WriteFailed {
        path: path.to_string(),
        expect,
        reason: error.to_string(),
    });
}

/// The disk did not hold what the engine expected: merge what it holds, or, when the
/// file is simply gone, write it (the engine's version is all there is).
fn after_unexpected<H: Host>(host: &mut H, w: &Write, feedback: &mut Vec<Input>) {
    match host.read_file(&w.path) {
        Ok(Some(content)) => refused(&w.path, content, w.expect, feedback),
        // The file the write expected is gone: the user moved it (its folder, say) or
        // deleted it, and the watcher has not said so yet. Written here at once, the
        // peer's version landed at the old path (a folder renamed came back) and the
        // engine, believing it there, took the moved file's older content for an edit
        // undoing the peer's. Put off instead, the belief back as it was: the move or
        // the deletion is taken in first, then the write is made where the file went
        // (a deletion made at once with a peer's edit keeps the edit, as any does).
        Ok(None) if w.expect.is_some() => feedback.push(Input::WriteFoundGone {
            path: w.path.clone(),
            expect: w.expect,
        }),
        Ok(None) => match host.write_if(&w.path, &w.bytes, w.exec, None) {
            Ok(Outcome::Done | Outcome::DoneOverEdit(..)) => host.written(&w.path),
            Ok(Outcome::Unexpected) => {
                if let Ok(Some(content)) = host.read_file(&w.path) {
                    refused(&w.path, content, None, feedback);
                }
            }
            Err(error) => failed(host, &w.path, None, &error, feedback),
        },
        Err(error) => failed(host, &w.path, w.expect, &error, feedback),
    }
}

fn replaced_edit(
    path: &str,
    content: Vec<u8>,
    exec: bool,
    expect: Option<ContentHash>,
    feedback: &mut Vec<Input>,
) {
    feedback.push(Input::ReplacedEdit {
        path: path.to_string(),
        content,
        exec,
        expect,
    });
}

fn refused(
    path: &str,
    (content, exec): (Vec<u8>, bool),
    expect: Option<ContentHash>,
    feedback: &mut Vec<Input>,
) {
    feedback.push(Input::WriteRefused {
        path: path.to_string(),
        content,
        exec,
        expect,
    });
}

/// Removes `path` if it holds `expect`; false when the disk held something else (fed
/// back), and the file is still there.
fn remove<H: Host>(
    host: &mut H,
    path: &str,
    expect: Option<ContentHash>,
    feedback: &mut Vec<Input>,
) -> bool {
    let result = match expect {
        Some(h) => host.remove_if(path, h),
        // The engine believes nothing is there: whatever is there is a local file.
        None => host
            .exists(path)
            .map(|there| there.then_some(Outcome::Unexpected)),
    };
    match result {
        Ok(Some(Outcome::Done)) => {
            // Folders emptied by the removal go too, as the peer's did.
            let mut dir = parent(path);
            while let Some(d) = dir {
                if !host.remove_empty_dir(d) {
                    break;
                }
                dir = parent(d);
            }
        }
        Ok(Some(Outcome::Unexpected)) => {
            if let Ok(Some(content)) = host.read_file(path) {
                refused(path, content, expect, feedback);
                return false;
            }
        }
        Ok(Some(Outcome::DoneOverEdit(content, exec))) => {
            replaced_edit(path, content, exec, expect, feedback)
        }
        Ok(None) => {}
        Err(error) => failed(host, path, expect, &error, feedback),
    }
    true
}

fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// What a scan of the folder found: every regular file that is synced, with the hash of
/// its content and executable bit ([`crate::file_hash`]: a `chmod` made while no daemon
/// ran is a difference), and those too large to sync.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub files: BTreeMap<String, ContentHash>,
    pub too_large: BTreeMap<String, u64>,
    /// Paths the engine believes on disk that the ignore rules now exclude (they are
    /// still there; the scan did not look at them).
    pub ignored: BTreeSet<String>,
    /// Files and folders the scan could not read (a mode, an owner): what the engine
    /// believes at or below them is taken as there and unchanged, never as removed.
    pub unreadable: BTreeSet<String>,
}

/// How the folder differs from what the engine believes is on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanDiff {
    /// (from, to): a file gone whose content reappeared under a path not known before.
    pub renames: Vec<(String, String)>,
    /// New files, and known files whose content differs.
    pub changed: Vec<String>,
    /// Known files no longer there (a file now too large to sync is not removed).
    pub removed: Vec<String>,
    /// Known files the ignore rules now exclude: never removed (see [`Input::Ignored`]).
    pub ignored: BTreeSet<String>,
    /// Known files the rules excluded until now, no longer there: removed while ignored,
    /// which deletes nothing ([`Input::NotOnDisk`]: the peers' version comes back).
    pub gone_while_ignored: Vec<String>,
    /// How many files the engine believed were on disk.
    pub known: usize,
}

/// Compares what a scan found with what the engine believes is on disk (hashes by
/// [`Engine::same_on_disk`]: on a folder that does not keep modes, the bytes). Paths are
/// compared by the engine's [`Engine::disk_key`]: a folder that ignores case may list a
/// file under another spelling of its name than the one the engine wrote or saw, and it
/// is still that file (neither removed nor new).
pub fn diff_scan(engine: &Engine, found: &Found) -> ScanDiff {
    let key = |p| engine.disk_key(p);
    let believed: BTreeMap<Cow<'_, str>, (&str, ContentHash)> =
        engine.disk().map(|(p, h)| (key(p), (p, h))).collect();
    let there: BTreeSet<Cow<'_, str>> = found
        .files
        .keys()
        .chain(found.too_large.keys())
        .map(|p| key(p))
        .collect();
    let mut renames = Vec::new();
    let mut changed = Vec::new();
    for (p, h) in &found.files {
        match believed.get(&key(p)) {
            // The same file under a name whose last part changed case: renamed (on a
            // folder that ignores case) while nobody watched. (Its folders may be spelled
            // otherwise than the workspace spells them: the folder made first.)
            Some((b, _)) if file_name(b) != file_name(p) => {
                renames.push((b.to_string(), p.clone()));
            }
            Some((_, b)) if engine.same_on_disk(*b, *h) => {}
            _ => changed.push(p.as_str()),
        }
    }
    let unreadable: Vec<String> = found
        .unreadable
        .iter()
        .map(|p| key(p).into_owned())
        .collect();
    // (A walk error without a path leaves everything unknown: nothing is removed.)
    let unread = |k: &str| {
        unreadable.iter().any(|u| {
            u.is_empty() || k == u || (k.starts_with(u.as_str()) && k[u.len()..].starts_with('/'))
        })
    };
    let mut removed = Vec::new();
    let mut gone_while_ignored = Vec::new();
    for (k, (from, hash)) in &believed {
        if there.contains(k) || found.ignored.contains(*from) || unread(k) {
            continue;
        }
        // A removed file whose content reappeared under a new name was renamed while
        // nobody watched.
        let moved_to = changed.iter().position(|to| {
            !believed.contains_key(&key(to))
                && found
                    .files
                    .get(*to)
                    .is_some_and(|h| engine.same_on_disk(*hash, *h))
        });
        match moved_to {
            Some(pos) => renames.push((from.to_string(), changed.remove(pos).to_string())),
            // Ignored until these rules: removed while ignored, which deletes nothing.
            None if engine.ignored_paths().contains(*from) => {
                gone_while_ignored.push(from.to_string());
            }
            None => removed.push(from.to_string()),
        }
    }
    ScanDiff {
        renames,
        changed: changed.into_iter().map(str::to_string).collect(),
        removed,
        gone_while_ignored,
        ignored: found.ignored.clone(),
        known: believed.len(),
    }
}

/// Files a scan pairs by content as renamed and edited at once: at most this many known
/// files missing, and as many new files (each pair is compared by its lines).
pub const EDITED_RENAMES_AT_MOST: usize = 64;
/// ... whose content is at most this long (larger ones stay a deletion and a new file).
const EDITED_RENAME_BYTES_AT_MOST: usize = 256 * 1024;
/// ... and half their lines alike at least (git's rename threshold).
const EDITED_RENAME_LIKENESS: f64 = 0.5;

/// A note renamed and edited while nobody watched (the daemon stopped: `mv n.md m.md`,
/// then a save of `m.md`) is a known file missing and a new file holding most of its
/// lines: taken as the rename and the edit it is, as git takes it, rather than a deletion
/// and a new note (which split the note in two when another device edited it meanwhile:
/// its edit kept the old name alive, the new name had this device's). Pairs a missing
/// file with the new file whose lines are likest to its own, half at least, each file
/// once, likest pairs first; looked for only among a few files (a scan after many
/// changes keeps them as they are).
pub fn pair_edited_renames<H: Host>(engine: &mut Engine, host: &mut H, diff: &mut ScanDiff) {
    let new: Vec<String> = (diff.changed.iter())
        .filter(|p| engine.on_disk(p).is_none())
        .cloned()
        .collect();
    if diff.removed.is_empty()
        || new.is_empty()
        || diff.removed.len() > EDITED_RENAMES_AT_MOST
        || new.len() > EDITED_RENAMES_AT_MOST
    {
        return;
    }
    let text = |b: Vec<u8>| {
        (b.len() <= EDITED_RENAME_BYTES_AT_MOST)
            .then(|| String::from_utf8(b).ok())
            .flatten()
    };
    let gone: Vec<(usize, String)> = (diff.removed.iter().enumerate())
        .filter_map(|(i, p)| Some((i, text(engine.disk_content(p, host)?.0)?)))
        .collect();
    if gone.is_empty() {
        return;
    }
    let found: Vec<(&str, String)> = (new.iter())
        .filter_map(|p| Some((p.as_str(), text(host.read_file(p).ok()??.0)?)))
        .collect();
    // Alike by the lines both hold, in any order (as git compares chunks): linear in
    // each pair's lines, where a diff of two unrelated notes is quadratic.
    fn lines(text: &str) -> BTreeMap<&str, usize> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for line in text.lines() {
            *counts.entry(line).or_default() += 1;
        }
        counts
    }
    let found_lines: Vec<BTreeMap<&str, usize>> = found.iter().map(|(_, t)| lines(t)).collect();
    let mut pairs = Vec::new();
    for (i, old) in &gone {
        if old.trim().is_empty() {
            continue;
        }
        let old_lines = lines(old);
        let old_count: usize = old_lines.values().sum();
        for (j, now_lines) in found_lines.iter().enumerate() {
            let now_count: usize = now_lines.values().sum();
            let common: usize = (old_lines.iter())
                .map(|(line, n)| (*n).min(now_lines.get(line).copied().unwrap_or(0)))
                .sum();
            let likeness = (2 * common) as f64 / (old_count + now_count).max(1) as f64;
            if likeness >= EDITED_RENAME_LIKENESS {
                pairs.push((likeness, *i, j));
            }
        }
    }
    // (A stable sort: equal likenesses keep the order of the paths.)
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut from_taken, mut to_taken) = (BTreeSet::new(), BTreeSet::new());
    let mut renamed = Vec::new();
    for (_, i, j) in pairs {
        if !from_taken.contains(&i) && !to_taken.contains(&j) {
            from_taken.insert(i);
            to_taken.insert(j);
            renamed.push((diff.removed[i].clone(), found[j].0.to_string()));
        }
    }
    let mut i = 0;
    diff.removed.retain(|_| {
        i += 1;
        !from_taken.contains(&(i - 1))
    });
    diff.changed
        .retain(|p| !renamed.iter().any(|(_, to)| to == p));
    diff.renames.extend(renamed);
}

/// The last part of a path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Feeds a scan's differences to the engine and carries out the effects: renames and
/// changes in batches bounded in files and bytes (one input at a time, each new file
/// would settle the whole workspace again), files too large to sync, then removals, unless
/// `deletions_paused`. `progress(done, total)` is called as the batches go.
pub fn feed_scan<H: Host>(
    engine: &mut Engine,
    host: &mut H,
    now_ms: i64,
    diff: ScanDiff,
    too_large: BTreeMap<String, u64>,
    deletions_paused: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Outgoing>, H::Error> {
    let total = diff.renames.len() + diff.changed.len();
    progress(0, total);
    let mut ignored_then_clashing = vec![Input::Ignored {
        paths: diff.ignored,
    }];
    ignored_then_clashing
        .extend((diff.gone_while_ignored.into_iter()).map(|folder| Input::NotOnDisk { folder }));
    // A file that became a folder, or a folder a file, while nobody watched: the old one
    // goes first, or the new one would clash with it and become a conflict copy.
    let (clashing, removed): (Vec<String>, Vec<String>) = if deletions_paused {
        (Vec::new(), diff.removed)
    } else {
        let folders_now: BTreeSet<&str> = diff
            .changed
            .iter()
            .chain(diff.renames.iter().map(|(_, to)| to))
            .flat_map(|p| p.match_indices('/').map(move |(i, _)| &p[..i]))
            .collect();
        let files_now: BTreeSet<&str> = diff
            .changed
            .iter()
            .chain(diff.renames.iter().map(|(_, to)| to))
            .map(String::as_str)
            .collect();
        diff.removed.into_iter().partition(|r| {
            folders_now.contains(r.as_str())
                || r.match_indices('/')
                    .any(|(i, _)| files_now.contains(&r[..i]))
        })
    };
    ignored_then_clashing.extend(clashing.into_iter().map(|path| Input::FileRemoved { path }));
    let mut out = handle(engine, host, now_ms, ignored_then_clashing)?;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut done = 0;
    let work = diff
        .renames
        .into_iter()
        .map(|(from, to)| (Some(from), to))
        .chain(diff.changed.into_iter().map(|path| (None, path)));
    for (from, path) in work {
        // A file that cannot be read now (gone, or a folder) is looked at by the watcher.
        if let Ok(Some((content, exec))) = host.read_file(&path) {
            batch_bytes += content.len();
            batch.push(match from {
                Some(from) => Input::FileRenamed {
                    from,
                    to: path,
                    content,
                    exec,
                },
                None => Input::FileChanged {
                    path,
                    content,
                    exec,
                },
            });
        }
        done += 1;
        if batch.len() >= SCAN_BATCH_FILES || batch_bytes >= SCAN_BATCH_BYTES {
            out.extend(handle(engine, host, now_ms, std::mem::take(&mut batch))?);
            batch_bytes = 0;
            progress(done, total);
        }
    }
    out.extend(handle(engine, host, now_ms, batch)?);
    progress(done, total);
    let mut rest: Vec<Input> = too_large
        .into_iter()
        .map(|(path, size)| Input::FileTooLarge {
            path,
            size,
            head: Vec::new(),
        })
        .collect();
    if !deletions_paused {
        rest.extend(removed.into_iter().map(|path| Input::FileRemoved { path }));
    }
    for input in rest {
        out.extend(handle(engine, host, now_ms, vec![input])?);
    }
    Ok(out)
}
