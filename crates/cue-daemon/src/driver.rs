//! The driver: the engine, the store and the workspace folder, tied together.
//!
//! It feeds the engine what happened on disk (the start-up scan, watcher events) and
//! carries out the engine's effects in the order the engine's contract demands: every
//! `Persist` of a batch is committed in one store transaction (one fsync) *before* any
//! message of that batch is handed back for sending, so a change a peer has seen is never
//! lost in a crash. File writes go through [`WorkspaceFs::write_atomic_if`] with the hash
//! the engine expects on disk; when the disk holds something else (a save the watcher has
//! not reported yet) the write is refused and the disk's content is fed back as
//! `WriteRefused`, so a local edit is merged, never overwritten.
//!
//! Because the engine's record of what is on disk is committed before the files are
//! written, the same transaction journals every path about to be written or removed; a
//! crash in between is finished at the next start, before the start-up scan could take a
//! missing file for a deletion (which the scan would otherwise propagate).
//!
//! Echo suppression is by content: a watcher event whose file hashes to what the engine
//! believes is on disk (`disk_view`, updated by every write the driver makes) is not a
//! change. No time windows.
//!
//! The mass-deletion guard (DESIGN §4): when the workspace root disappears, or more than
//! half of a workspace of at least 20 files disappears in one batch of events (or between
//! two runs), the driver stops feeding deletions to the engine, records an `error`
//! activity and reports the reason in status until the daemon is restarted.
//!
//! The driver is synchronous; the daemon's main loop owns it and calls it from one task.

use std::collections::{BTreeMap, BTreeSet};

use cue_core::{
    ContentHash, DeviceId, DocId, DocStore, Effect, Engine, FileId, Input, Persist, Restored,
    Status, content_hash,
};

use crate::config::Config;
use crate::fsio::{Expect, FsError, Outcome, WorkspaceFs};
use crate::ignore_rules::IgnoreRules;
use crate::paths::WorkspacePath;
use crate::scan::{ScanOptions, SkipReason, scan};
use crate::store::{ActivityKind, ActivityRecord, Store, StoreError, StoreTx};
use crate::watch::WatchEvent;
use crate::workspace::Workspace;

/// A message the engine wants sent: to one device, or to every peer (`None`).
pub type Outgoing = (Option<DeviceId>, Vec<u8>);

/// Store namespaces and keys the driver uses.
const NS_DAEMON: &str = "daemon";
const KEY_EPOCH: &str = "epoch";
const NS_ENGINE: &str = "engine";
const KEY_STATE: &str = "state";
const NS_FILEMETA: &str = "filemeta";
/// File writes and removals whose effect was committed but may not be on disk yet.
const NS_JOURNAL: &str = "write_journal";
/// Where the network layer keeps its replay guard (persisted with the next batch).
pub const NS_NET: &str = "net";
pub const KEY_REPLAY: &str = "replay";

/// The guard trips when a workspace of at least this many files...
const GUARD_MIN_FILES: usize = 20;
/// The start-up scan feeds the engine at most this many files (or bytes) at a time:
/// enough that settling the workspace once a batch costs little, few enough that the
/// progress bar moves and memory stays bounded.
const SCAN_BATCH_FILES: usize = 64;
const SCAN_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Above this many staged writes in one batch, make them durable together.
const BATCH_MIN: usize = 8;
/// `WriteRefused` feedback deeper than this means the disk keeps changing under us.
const MAX_FEEDBACK_DEPTH: usize = 8;

/// Why the driver could not go on.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("cannot scan the workspace: {0}")]
    Scan(#[from] crate::scan::ScanError),
    #[error("cannot read .cueignore: {0}")]
    Ignore(#[from] crate::ignore_rules::IgnoreError),
}

/// The engine's view of stored documents: snapshot then appended chunks, concatenated
/// (automerge loads that as one document).
struct StoreDocs<'a>(&'a Store);

/// The same, with the workspace beside it, so that a document can go to a new peer with
/// the content on disk (the peer then need not load it).
struct StoreAndDisk<'a>(&'a Store, &'a WorkspaceFs);

impl DocStore for StoreAndDisk<'_> {
    fn load(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        StoreDocs(self.0).load(doc)
    }

    fn content(&mut self, path: &str, hash: &cue_core::ContentHash) -> Option<Vec<u8>> {
        let rel = WorkspacePath::parse(path).ok()?;
        // Read beneath the root without following links; a file edited since is not
        // what the document renders to and is not sent.
        let bytes = self.1.read(&rel).ok()??;
        (cue_core::content_hash(&bytes) == *hash).then_some(bytes)
    }
}

impl DocStore for StoreDocs<'_> {
    fn load(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        match self.0.load(&doc.to_string()) {
            Ok(Some(loaded)) => Some(join_loaded(loaded)),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(%error, %doc, "cannot load a document from the store");
                None
            }
        }
    }
}

fn join_loaded(loaded: crate::store::Loaded) -> Vec<u8> {
    let mut bytes = loaded.snapshot.unwrap_or_default();
    for chunk in loaded.chunks {
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// What the engine's persisted state says, read without running a daemon (for
/// `status` when none runs).
pub fn restored_from(store: &Store) -> Result<Restored, StoreError> {
    store.read(|tx| {
        let state = tx.get_meta(NS_ENGINE, KEY_STATE)?;
        let index = tx.load(&DocId::Index.to_string())?.map(join_loaded);
        let metas = tx
            .list_meta(NS_FILEMETA)?
            .into_iter()
            .filter_map(|(k, v)| Some((FileId::from_hex(&k)?, v)))
            .collect();
        Ok(Restored {
            state,
            index,
            metas,
        })
    })
}

/// The engine's status computed from the store alone (no daemon running).
pub fn offline_status(ws: &Workspace) -> Result<Status, StoreError> {
    let store = Store::open(&ws.store_path())?;
    let restored = restored_from(&store)?;
    let epoch = current_epoch(&store)?;
    let (mut engine, _effects) = Engine::new(
        ws.core_device_id(),
        &ws.device_name(),
        epoch,
        ws.config.engine_config(),
        restored,
        now_ms(),
    );
    Ok(engine.status(&mut StoreDocs(&store)))
}

fn current_epoch(store: &Store) -> Result<u32, StoreError> {
    Ok(store
        .get_meta(NS_DAEMON, KEY_EPOCH)?
        .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
        .map_or(0, u32::from_be_bytes))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The engine, the store and the folder of one workspace.
pub struct Driver {
    engine: Engine,
    store: Store,
    /// Store writes so far (the daemon gives space back after the last of a series).
    store_writes: u64,
    fs: WorkspaceFs,
    rules: IgnoreRules,
    name: String,
    max_file_size: u64,
    epoch: u32,
    /// Why deletions are not being propagated (the mass-deletion guard), if they are not.
    guard: Option<String>,
    /// Bytes to store under [`NS_NET`]/[`KEY_REPLAY`] with the next transaction.
    pending_replay: Option<Vec<u8>>,
    /// Errors met while carrying out effects (a write that failed), for status.
    pub write_errors: u64,
    /// Files the driver wrote, and when, until one check after the watcher's debounce.
    written: Vec<(String, std::time::Instant)>,
    /// The watcher's debounce: how long to wait before that check.
    settle: std::time::Duration,
    /// Journal entries whose write or removal has been carried out, to clear with the
    /// next transaction.
    journal_done: Vec<String>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("root", &self.fs.root_path())
            .field("epoch", &self.epoch)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Opens the store, starts a new epoch and restores the engine. Call
    /// [`Driver::startup_scan`] next.
    pub fn open(ws: &Workspace, config: &Config) -> Result<Driver, DriverError> {
        let mut store = Store::open(&ws.store_path())?;
        // A new epoch at every start: the engine's actor id includes it, so a change lost
        // in a crash (made, never stored) can never clash with a later one.
        let epoch = store.transaction(|tx| {
            let old = tx
                .get_meta(NS_DAEMON, KEY_EPOCH)?
                .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
                .map_or(0, u32::from_be_bytes);
            let next = old.wrapping_add(1).max(1);
            tx.put_meta(NS_DAEMON, KEY_EPOCH, &next.to_be_bytes())?;
            Ok(next)
        })?;
        let restored = restored_from(&store)?;
        let name = ws.device_name();
        let (engine, effects) = Engine::new(
            ws.core_device_id(),
            &name,
            epoch,
            config.engine_config(),
            restored,
            now_ms(),
        );
        let fs = WorkspaceFs::open(&ws.root)?;
        let rules = IgnoreRules::load(&ws.root)?;
        let mut driver = Driver {
            engine,
            store,
            fs,
            rules,
            name,
            max_file_size: config.sync.max_file_size,
            epoch,
            guard: None,
            pending_replay: None,
            write_errors: 0,
            written: Vec::new(),
            store_writes: 0,
            settle: std::time::Duration::from_millis(config.sync.debounce_ms * 2 + 50),
            journal_done: Vec::new(),
        };
        // Nothing can be sent yet (not connected): what Engine::new returns is storage.
        let _ = driver.apply(now_ms(), effects, 0)?;
        driver.finish_interrupted_writes(now_ms())?;
        Ok(driver)
    }

    /// After a crash between committing a batch and carrying out its file effects, the
    /// engine believes files are on disk that are not (or are gone that are not): a
    /// start-up scan would take them for local deletions (or edits reverting the remote
    /// change). The journal names those paths; here they are brought in line with the
    /// engine before anything else looks at the disk. A path the user changed meanwhile
    /// is fed back as a refused write, merged like any local edit.
    fn finish_interrupted_writes(&mut self, now: i64) -> Result<(), DriverError> {
        let entries = self.store.list_meta(NS_JOURNAL)?;
        if entries.is_empty() {
            return Ok(());
        }
        let view = self.engine.disk_view();
        let mut feedback = Vec::new();
        for (path, expect) in &entries {
            let Ok(rel) = WorkspacePath::parse(path) else {
                continue;
            };
            let before: Option<ContentHash> = <[u8; 32]>::try_from(expect.as_slice()).ok();
            let on_disk = self.read(path)?;
            let disk_hash = on_disk.as_deref().map(content_hash);
            let believed = view.get(path).copied();
            if disk_hash == believed {
                continue; // the effect did happen
            }
            if disk_hash != before {
                // Neither the old nor the new content: a local edit made meanwhile.
                if let Some(content) = on_disk {
                    feedback.push(Input::WriteRefused {
                        path: path.clone(),
                        content,
                    });
                }
                continue;
            }
            match believed {
                Some(hash) => {
                    let Some(bytes) = self
                        .engine
                        .read(path, &mut StoreDocs(&self.store))
                        .filter(|b| content_hash(b) == hash)
                    else {
                        continue;
                    };
                    self.write_one(&rel, &bytes, before, &mut feedback);
                }
                None => self.remove(path, before, &mut feedback),
            }
        }
        tracing::info!(
            entries = entries.len(),
            "finished file writes interrupted by a crash"
        );
        self.store.transaction(|tx| {
            for (path, _) in &entries {
                tx.delete_meta(NS_JOURNAL, path)?;
            }
            Ok(())
        })?;
        for input in feedback {
            let _ = self.input(now, input)?;
        }
        Ok(())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Why deletions are paused, if they are.
    pub fn guard(&self) -> Option<&str> {
        self.guard.as_deref()
    }

    /// The engine's status.
    pub fn status(&mut self) -> Status {
        self.engine.status(&mut StoreDocs(&self.store))
    }

    /// Stores `bytes` as the replay guard with the next transaction (or now, on `flush`).
    pub fn set_replay_state(&mut self, bytes: Vec<u8>) {
        self.pending_replay = Some(bytes);
    }

    /// Commits whatever is waiting for a transaction (the replay guard, the journal of
    /// completed writes).
    pub fn flush(&mut self) -> Result<(), DriverError> {
        let replay = self.pending_replay.take();
        let done = std::mem::take(&mut self.journal_done);
        if replay.is_some() || !done.is_empty() {
            self.store.transaction(|tx| {
                if let Some(bytes) = &replay {
                    tx.put_meta(NS_NET, KEY_REPLAY, bytes)?;
                }
                for path in &done {
                    tx.delete_meta(NS_JOURNAL, path)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Feeds one input and carries out the effects; returns the messages to send.
    pub fn input(&mut self, now: i64, input: Input) -> Result<Vec<Outgoing>, DriverError> {
        let effects = self
            .engine
            .handle(now, input, &mut StoreAndDisk(&self.store, &self.fs));
        self.apply(now, effects, 0)
    }

    /// Several inputs handled together and committed in one transaction (see
    /// `Engine::handle_batch`).
    pub fn input_batch(
        &mut self,
        now: i64,
        inputs: Vec<Input>,
    ) -> Result<Vec<Outgoing>, DriverError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let effects =
            self.engine
                .handle_batch(now, inputs, &mut StoreAndDisk(&self.store, &self.fs));
        self.apply(now, effects, 0)
    }

    /// How many times the engine asked for something to be stored so far.
    pub fn store_writes(&self) -> u64 {
        self.store_writes
    }

    /// Whether the next tick should come soon (see `Engine::wants_frequent_ticks`), or
    /// files written lately still wait for their second look.
    pub fn wants_frequent_ticks(&mut self) -> bool {
        !self.written.is_empty() || self.engine.wants_frequent_ticks()
    }

    /// Time passed: the engine's tick, and a check of the files written lately.
    ///
    /// The watcher's debouncer drops a file's creation and removal when both fall in one
    /// debounce window, as when a user deletes a file the daemon had just written: no
    /// event at all arrives. So each file the driver writes is looked at once more after
    /// the window has passed, and a file found missing is a removal.
    pub fn tick(&mut self, now: i64) -> Result<Vec<Outgoing>, DriverError> {
        let mut out = self.input(now, Input::Tick)?;
        if self.written.is_empty() {
            return Ok(out);
        }
        let cutoff = std::time::Instant::now().checked_sub(self.settle);
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.written)
            .into_iter()
            .partition(|(_, t)| cutoff.is_some_and(|c| *t <= c));
        self.written = later;
        if self.guard.is_some() {
            return Ok(out);
        }
        let view = self.engine.disk_view();
        let mut seen = BTreeSet::new();
        for (path, _) in due {
            if seen.insert(path.clone()) && view.contains_key(&path) && !self.exists(&path) {
                out.extend(self.input(now, Input::FileRemoved { path })?);
            }
        }
        Ok(out)
    }

    /// `cue sync restore PATH`.
    pub fn restore(
        &mut self,
        now: i64,
        path: &str,
    ) -> Result<Result<Vec<Outgoing>, cue_core::CommandError>, DriverError> {
        match self.engine.restore(now, path, &mut StoreDocs(&self.store)) {
            Ok(effects) => Ok(Ok(self.apply(now, effects, 0)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// `cue sync resolve PATH`.
    pub fn resolve(
        &mut self,
        now: i64,
        path: &str,
    ) -> Result<Result<Vec<Outgoing>, cue_core::CommandError>, DriverError> {
        match self.engine.resolve(now, path, &mut StoreDocs(&self.store)) {
            Ok(effects) => Ok(Ok(self.apply(now, effects, 0)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Records an activity of the daemon's own (not from the engine).
    pub fn record(&mut self, kind: ActivityKind, path: Option<String>, detail: String) {
        let record = ActivityRecord {
            time_ms: now_ms(),
            kind,
            path,
            device: self.name.clone(),
            detail: Some(detail),
        };
        if let Err(error) = self.store.append_activity(&record) {
            tracing::error!(%error, "cannot record an activity");
        }
    }

    fn trip_guard(&mut self, reason: String) {
        if self.guard.is_none() {
            tracing::error!(%reason, "mass-deletion guard: deletions are no longer propagated");
            self.record(
                ActivityKind::Error,
                None,
                format!(
                    "deletions paused: {reason}; nothing was deleted on other devices. Check the folder, then restart the daemon (`cue sync stop`, `cue sync start`)"
                ),
            );
            self.guard = Some(reason);
        }
    }

    /// Carries out effects in the engine's order: persistence (one transaction), files,
    /// then hands back the messages; activities are stored with the persistence.
    fn apply(
        &mut self,
        now: i64,
        effects: Vec<Effect>,
        depth: usize,
    ) -> Result<Vec<Outgoing>, DriverError> {
        let mut persists = Vec::new();
        let mut files = Vec::new();
        let mut sends = Vec::new();
        let mut activities = Vec::new();
        for e in effects {
            match e {
                Effect::Persist(p) => {
                    self.store_writes += 1;
                    persists.push(p)
                }
                Effect::WriteFile { .. } | Effect::RemoveFile { .. } => files.push(e),
                Effect::Send { to, bytes } => sends.push((to, bytes)),
                Effect::Activity(a) => activities.push(ActivityRecord {
                    time_ms: a.time_ms,
                    kind: a.kind,
                    path: a.path,
                    device: a.device,
                    detail: a.detail,
                }),
            }
        }
        let journal: Vec<(String, Vec<u8>)> = files
            .iter()
            .filter_map(|e| match e {
                Effect::WriteFile { path, expect, .. } | Effect::RemoveFile { path, expect } => {
                    Some((path.clone(), expect.map(|h| h.to_vec()).unwrap_or_default()))
                }
                _ => None,
            })
            .collect();
        if !persists.is_empty()
            || !activities.is_empty()
            || !journal.is_empty()
            || self.pending_replay.is_some()
        {
            let replay = self.pending_replay.take();
            let done = std::mem::take(&mut self.journal_done);
            self.store.transaction(|tx| {
                // Cleared first: a path written again in this batch is journaled anew.
                for path in &done {
                    tx.delete_meta(NS_JOURNAL, path)?;
                }
                for p in &persists {
                    persist(tx, p)?;
                }
                for (path, expect) in &journal {
                    tx.put_meta(NS_JOURNAL, path, expect)?;
                }
                if let Some(bytes) = &replay {
                    tx.put_meta(NS_NET, KEY_REPLAY, bytes)?;
                }
                for a in &activities {
                    tx.append_activity(a)?;
                }
                Ok(())
            })?;
        }
        let feedback = self.carry_out_files(files);
        self.journal_done
            .extend(journal.into_iter().map(|(path, _)| path));
        for input in feedback {
            if depth >= MAX_FEEDBACK_DEPTH {
                self.record(
                    ActivityKind::Error,
                    None,
                    "a file keeps changing while cue writes it; will retry on its next save"
                        .to_string(),
                );
                break;
            }
            let effects = self
                .engine
                .handle(now, input, &mut StoreAndDisk(&self.store, &self.fs));
            // The feedback's own persistence is committed before anything is sent, and
            // before this batch's messages, which may depend on it only loosely.
            sends.extend(self.apply(now, effects, depth + 1)?);
        }
        Ok(sends)
    }

    /// Writes and removals; returns the refusals to feed back.
    fn carry_out_files(&mut self, files: Vec<Effect>) -> Vec<Input> {
        let mut feedback = Vec::new();
        let mut writes: Vec<(WorkspacePath, Vec<u8>, Option<ContentHash>)> = Vec::new();
        for e in files {
            match e {
                Effect::WriteFile {
                    path,
                    bytes,
                    expect,
                } => match WorkspacePath::parse(&path) {
                    Ok(rel) => writes.push((rel, bytes, expect)),
                    Err(error) => {
                        self.write_errors += 1;
                        tracing::error!(%error, "refusing to write a path the engine produced");
                    }
                },
                Effect::RemoveFile { path, expect } => {
                    // Keep the engine's order: writes before this removal happen first.
                    self.write_all(std::mem::take(&mut writes), &mut feedback);
                    self.remove(&path, expect, &mut feedback);
                }
                _ => {}
            }
        }
        self.write_all(writes, &mut feedback);
        feedback
    }

    fn write_all(
        &mut self,
        writes: Vec<(WorkspacePath, Vec<u8>, Option<ContentHash>)>,
        feedback: &mut Vec<Input>,
    ) {
        if writes.len() >= BATCH_MIN {
            // Many files at once (a first sync): one syncfs instead of one fsync each.
            let mut batch = self.fs.batch();
            let mut staged = BTreeMap::new();
            let mut single = Vec::new();
            for (rel, bytes, expect) in writes {
                if staged.contains_key(rel.as_str()) {
                    single.push((rel, bytes, expect));
                    continue;
                }
                match batch.stage(&rel, &bytes, to_expect(expect)) {
                    Ok(()) => {
                        staged.insert(rel.as_str().to_string(), (rel, bytes, expect));
                    }
                    Err(_) => single.push((rel, bytes, expect)),
                }
            }
            match batch.commit() {
                Ok(outcome) => {
                    let t = std::time::Instant::now();
                    self.written
                        .extend(outcome.written.iter().map(|r| (r.as_str().to_string(), t)));
                    for rel in outcome.unexpected {
                        if let Some((rel, bytes, _)) = staged.remove(rel.as_str()) {
                            self.after_unexpected(&rel, &bytes, feedback);
                        }
                    }
                    for (rel, _) in outcome.failed {
                        if let Some(w) = staged.remove(rel.as_str()) {
                            single.push(w);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "batch write failed; writing file by file");
                    single.extend(staged.into_values());
                }
            }
            for (rel, bytes, expect) in single {
                self.write_one(&rel, &bytes, expect, feedback);
            }
        } else {
            for (rel, bytes, expect) in writes {
                self.write_one(&rel, &bytes, expect, feedback);
            }
        }
    }

    fn write_one(
        &mut self,
        rel: &WorkspacePath,
        bytes: &[u8],
        expect: Option<ContentHash>,
        feedback: &mut Vec<Input>,
    ) {
        match self.fs.write_atomic_if(rel, bytes, to_expect(expect)) {
            Ok(Outcome::Done) => self.note_written(rel),
            Ok(Outcome::Unexpected) => self.after_unexpected(rel, bytes, feedback),
            Err(error) => self.write_failed(rel, &error),
        }
    }

    /// The disk did not hold what the engine expected: merge what it holds, or, when
    /// the file is simply gone, write it (the engine's version is all there is).
    fn after_unexpected(&mut self, rel: &WorkspacePath, bytes: &[u8], feedback: &mut Vec<Input>) {
        match self.fs.read(rel) {
            Ok(Some(content)) => feedback.push(Input::WriteRefused {
                path: rel.as_str().to_string(),
                content,
            }),
            Ok(None) => match self.fs.write_atomic_if(rel, bytes, Expect::Absent) {
                Ok(Outcome::Done) => self.note_written(rel),
                Ok(Outcome::Unexpected) => {
                    if let Ok(Some(content)) = self.fs.read(rel) {
                        feedback.push(Input::WriteRefused {
                            path: rel.as_str().to_string(),
                            content,
                        });
                    }
                }
                Err(error) => self.write_failed(rel, &error),
            },
            Err(error) => self.write_failed(rel, &error),
        }
    }

    fn note_written(&mut self, rel: &WorkspacePath) {
        self.written
            .push((rel.as_str().to_string(), std::time::Instant::now()));
    }

    fn write_failed(&mut self, rel: &WorkspacePath, error: &FsError) {
        self.write_errors += 1;
        tracing::error!(%error, path = rel.as_str(), "cannot write a synced file");
        self.record(
            ActivityKind::Error,
            Some(rel.as_str().to_string()),
            format!("cannot write: {error}"),
        );
    }

    fn remove(&mut self, path: &str, expect: Option<ContentHash>, feedback: &mut Vec<Input>) {
        let rel = match WorkspacePath::parse(path) {
            Ok(rel) => rel,
            Err(error) => {
                tracing::error!(%error, "refusing to remove a path the engine produced");
                return;
            }
        };
        let result = match expect {
            Some(h) => self.fs.remove_if(&rel, Expect::Content(h)),
            // The engine believes nothing is there: whatever is there is a local file.
            None => match self.fs.stat(&rel) {
                Ok(Some(_)) => Ok(Some(Outcome::Unexpected)),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(Some(Outcome::Done)) => {
                // Folders emptied by the removal go too, as the peer's did.
                let mut dir = rel.parent();
                while let Some(d) = dir {
                    if !matches!(self.fs.remove_empty_dir(&d), Ok(true)) {
                        break;
                    }
                    dir = d.parent();
                }
            }
            Ok(Some(Outcome::Unexpected)) => {
                if let Ok(Some(content)) = self.fs.read(&rel) {
                    feedback.push(Input::WriteRefused {
                        path: path.to_string(),
                        content,
                    });
                }
            }
            Ok(None) => {}
            Err(error) => self.write_failed(&rel, &error),
        }
    }

    // ------------------------------------------------------------------ the disk side

    /// Compares the folder with what the engine believes is on disk and feeds every
    /// difference: edits, new files, deletions, renames where the content shows one.
    /// Used at start-up and after the watcher lost events.
    pub fn startup_scan(&mut self, now: i64) -> Result<Vec<Outgoing>, DriverError> {
        self.startup_scan_with_progress(now, &mut |_, _| {})
    }

    /// [`Driver::startup_scan`], calling `progress(done, total)` as it takes in the new
    /// and changed files it found (first with `done` 0, once the folder is scanned): the
    /// import bar of `cue sync init` and `join`.
    pub fn startup_scan_with_progress(
        &mut self,
        now: i64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Outgoing>, DriverError> {
        if let Err(error) = self.rules.reload() {
            tracing::warn!(%error, "cannot reload .cueignore; keeping the old rules");
        }
        let report = scan(
            &self.fs,
            &self.rules,
            &ScanOptions {
                max_file_size: self.max_file_size,
            },
        )?;
        for tmp in &report.stale_temps {
            let _ = self.fs.remove_stale_temp(tmp);
        }
        let view = self.engine.disk_view();
        let on_disk: BTreeMap<&str, ContentHash> = report
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.hash))
            .collect();
        let too_large: BTreeSet<&str> = report
            .skipped
            .iter()
            .filter(|s| matches!(s.reason, SkipReason::TooLarge { .. }))
            .map(|s| s.path.as_str())
            .collect();
        let mut changed: Vec<&str> = report
            .files
            .iter()
            .filter(|f| view.get(f.path.as_str()) != Some(&f.hash))
            .map(|f| f.path.as_str())
            .collect();
        let mut removed: Vec<&str> = view
            .keys()
            .map(String::as_str)
            .filter(|p| !on_disk.contains_key(p) && !too_large.contains(p))
            .collect();
        let mut out = Vec::new();
        // A removed file whose content reappeared under a new name (not known before)
        // was renamed while we were away.
        let mut renames = Vec::new();
        removed.retain(|from| {
            let hash = view[*from];
            if let Some(pos) = changed
                .iter()
                .position(|to| !view.contains_key(*to) && on_disk.get(to) == Some(&hash))
            {
                renames.push((from.to_string(), changed.remove(pos).to_string()));
                false
            } else {
                true
            }
        });
        if view.len() >= GUARD_MIN_FILES && removed.len() * 2 > view.len() {
            self.trip_guard(format!(
                "{} of the {} files were missing at start-up",
                removed.len(),
                view.len()
            ));
        }
        let changed: Vec<String> = changed.into_iter().map(str::to_string).collect();
        let removed: Vec<String> = removed.into_iter().map(str::to_string).collect();
        let too_large: Vec<(String, u64)> = report
            .skipped
            .iter()
            .filter_map(|s| match s.reason {
                SkipReason::TooLarge { size } => Some((s.path.clone(), size)),
                _ => None,
            })
            .collect();
        let total = renames.len() + changed.len();
        progress(0, total);
        // Fed to the engine in batches (bounded in files and bytes read): one input at a
        // time, each new file would settle the whole workspace again.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut done = 0;
        let work = renames
            .into_iter()
            .map(|(from, to)| (Some(from), to))
            .chain(changed.into_iter().map(|path| (None, path)));
        for (from, path) in work {
            if let Some(content) = self.read(&path)? {
                batch_bytes += content.len();
                batch.push(match from {
                    Some(from) => Input::FileRenamed {
                        from,
                        to: path,
                        content,
                    },
                    None => Input::FileChanged { path, content },
                });
            }
            done += 1;
            if batch.len() >= SCAN_BATCH_FILES || batch_bytes >= SCAN_BATCH_BYTES {
                out.extend(self.input_batch(now, std::mem::take(&mut batch))?);
                batch_bytes = 0;
                progress(done, total);
            }
        }
        out.extend(self.input_batch(now, batch)?);
        progress(done, total);
        for (path, size) in too_large {
            out.extend(self.input(now, Input::FileTooLarge { path, size })?);
        }
        if self.guard.is_none() {
            for path in removed {
                out.extend(self.input(now, Input::FileRemoved { path })?);
            }
        }
        Ok(out)
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let Ok(rel) = WorkspacePath::parse(path) else {
            return Ok(None);
        };
        match self.fs.read(&rel) {
            Ok(v) => Ok(v),
            // A symlink or folder now stands there: not a synced file.
            Err(FsError::Symlink { .. } | FsError::NotRegular { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Feeds one batch of watcher events (drained together: "at once" for the guard).
    pub fn watch_events(
        &mut self,
        now: i64,
        events: Vec<WatchEvent>,
    ) -> Result<Vec<Outgoing>, DriverError> {
        let mut out = Vec::new();
        if events.iter().any(|e| matches!(e, WatchEvent::RootGone)) {
            self.trip_guard("the workspace folder itself disappeared".to_string());
        }
        // Count what the batch removes before feeding any of it.
        let view = self.engine.disk_view();
        let mut gone: BTreeSet<String> = BTreeSet::new();
        for e in &events {
            if let WatchEvent::Removed(p) = e {
                for path in under(&view, p.as_str()) {
                    if !self.exists(&path) {
                        gone.insert(path);
                    }
                }
            }
        }
        if view.len() >= GUARD_MIN_FILES && gone.len() * 2 > view.len() {
            self.trip_guard(format!(
                "{} of the {} files disappeared at once",
                gone.len(),
                view.len()
            ));
        }
        let mut rescan = false;
        for e in events {
            match e {
                WatchEvent::Changed(p) => out.extend(self.file_changed(now, p.as_str())?),
                WatchEvent::Removed(p) => {
                    if self.guard.is_some() {
                        continue;
                    }
                    let view = self.engine.disk_view();
                    for path in under(&view, p.as_str()) {
                        if !self.exists(&path) {
                            out.extend(self.input(now, Input::FileRemoved { path })?);
                        } else {
                            // Replaced since the event: take the new content.
                            out.extend(self.file_changed(now, &path)?);
                        }
                    }
                }
                WatchEvent::Renamed { from, to } => {
                    let known = self.engine.disk_view().contains_key(from.as_str());
                    match self.read(to.as_str())? {
                        Some(content) if known && !self.exists(from.as_str()) => {
                            out.extend(self.input(
                                now,
                                Input::FileRenamed {
                                    from: from.as_str().to_string(),
                                    to: to.as_str().to_string(),
                                    content,
                                },
                            )?);
                        }
                        _ => {
                            out.extend(self.file_changed(now, to.as_str())?);
                            out.extend(self.file_changed(now, from.as_str())?);
                        }
                    }
                }
                WatchEvent::DirRenamed { from, to } => {
                    let view = self.engine.disk_view();
                    for old in under(&view, from.as_str()) {
                        let new = format!("{}{}", to.as_str(), &old[from.as_str().len()..]);
                        match self.read(&new)? {
                            Some(content) => out.extend(self.input(
                                now,
                                Input::FileRenamed {
                                    from: old,
                                    to: new,
                                    content,
                                },
                            )?),
                            None => out.extend(self.file_changed(now, &old)?),
                        }
                    }
                }
                WatchEvent::Rescan => rescan = true,
                WatchEvent::RootGone => {}
            }
        }
        if rescan && self.guard.is_none() {
            out.extend(self.startup_scan(now)?);
        }
        Ok(out)
    }

    fn exists(&self, path: &str) -> bool {
        WorkspacePath::parse(path)
            .ok()
            .and_then(|rel| self.fs.stat(&rel).ok().flatten())
            .is_some()
    }

    /// A path may have changed: feed its content if it differs from what the engine
    /// believes is there (so the daemon's own writes never echo back).
    fn file_changed(&mut self, now: i64, path: &str) -> Result<Vec<Outgoing>, DriverError> {
        let Ok(rel) = WorkspacePath::parse(path) else {
            return Ok(Vec::new());
        };
        let known = self.engine.disk_view().get(path).copied();
        let stat = match self.fs.stat(&rel) {
            Ok(s) => s,
            Err(FsError::Symlink { .. } | FsError::SymlinkOnTheWay { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(stat) = stat.filter(|s| s.kind == crate::fsio::FileKind::Regular) else {
            if known.is_some() && self.guard.is_none() {
                return self.input(
                    now,
                    Input::FileRemoved {
                        path: path.to_string(),
                    },
                );
            }
            return Ok(Vec::new());
        };
        if stat.len > self.max_file_size {
            return self.input(
                now,
                Input::FileTooLarge {
                    path: path.to_string(),
                    size: stat.len,
                },
            );
        }
        let Some(content) = self.read(path)? else {
            return Ok(Vec::new());
        };
        if known == Some(content_hash(&content)) {
            return Ok(Vec::new());
        }
        self.input(
            now,
            Input::FileChanged {
                path: path.to_string(),
                content,
            },
        )
    }
}

/// The known paths equal to `p` or below it.
fn under(view: &BTreeMap<String, ContentHash>, p: &str) -> Vec<String> {
    let prefix = format!("{p}/");
    view.keys()
        .filter(|k| k.as_str() == p || k.starts_with(&prefix))
        .cloned()
        .collect()
}

fn to_expect(expect: Option<ContentHash>) -> Expect {
    match expect {
        Some(h) => Expect::Content(h),
        None => Expect::Absent,
    }
}

fn persist(tx: &StoreTx<'_>, p: &Persist) -> Result<(), StoreError> {
    match p {
        Persist::Doc {
            doc,
            bytes,
            snapshot,
            meta,
        } => {
            let key = doc.to_string();
            if *snapshot {
                // Compaction: the snapshot replaces the document and every chunk.
                tx.delete_doc(&key)?;
                tx.put_snapshot(&key, bytes)?;
            } else if !bytes.is_empty() {
                tx.append_changes(&key, bytes)?;
            }
            if let DocId::File(f) = doc
                && !meta.is_empty()
            {
                tx.put_meta(NS_FILEMETA, &f.to_string(), meta)?;
            }
        }
        Persist::DeleteDoc { doc } => {
            tx.delete_doc(&doc.to_string())?;
            if let DocId::File(f) = doc {
                tx.delete_meta(NS_FILEMETA, &f.to_string())?;
            }
        }
        Persist::State { bytes } => tx.put_meta(NS_ENGINE, KEY_STATE, bytes)?,
    }
    Ok(())
}
