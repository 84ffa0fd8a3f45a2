//! The store and the workspace folder as the engine's carry-out rules see them.
//!
//! [`cue_core::carry`] decides what happens to the engine's effects (their order, the
//! refused-write loop, emptied folders, the start-up scan); this is the daemon's side of
//! it: a store transaction per batch, confined atomic writes through [`WorkspaceFs`], and
//! many writes made durable together.
//!
//! Every `Persist` of a batch is committed in one store transaction (one fsync) *before*
//! any file of the batch is touched or any message handed back for sending, so a change a
//! peer has seen is never lost in a crash. The same transaction journals every path about
//! to be written or removed: a crash in between is finished at the next start, before the
//! start-up scan could take a missing file for a deletion.

use std::collections::BTreeMap;

use cue_core::carry::{self, Host as _, Outcome, Write};
use cue_core::{Activity, ContentHash, DocId, DocStore, Effect, Persist};

use crate::fsio::{self, Expect, FsError, WorkspaceFs};
use crate::paths::{PathError, WorkspacePath};
use crate::store::{ActivityKind, ActivityRecord, Store, StoreError, StoreTx};

/// Store namespaces and keys the daemon uses.
pub const NS_DAEMON: &str = "daemon";
pub const KEY_EPOCH: &str = "epoch";
pub const NS_ENGINE: &str = "engine";
pub const KEY_STATE: &str = "state";
pub const NS_FILEMETA: &str = "filemeta";
/// File writes and removals whose effect was committed but may not be on disk yet.
pub const NS_JOURNAL: &str = "write_journal";
/// Where the network layer keeps its replay guard (persisted with the next batch).
pub const NS_NET: &str = "net";
pub const KEY_REPLAY: &str = "replay";

/// Above this many writes in one batch, make them durable together.
const BATCH_MIN: usize = 8;

/// Why one file could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("refusing a path the engine produced: {0}")]
    Path(#[from] PathError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The engine's view of stored documents: snapshot then appended chunks, concatenated
/// (automerge loads that as one document).
pub struct StoreDocs<'a>(pub &'a Store);

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

pub fn join_loaded(loaded: crate::store::Loaded) -> Vec<u8> {
    let mut bytes = loaded.snapshot.unwrap_or_default();
    for chunk in loaded.chunks {
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// The store and the folder of one workspace, and what carrying out effects leaves
/// behind for the daemon (files written lately, errors).
pub struct DaemonHost {
    pub store: Store,
    pub fs: WorkspaceFs,
    /// The device's name, for the activities the daemon records itself.
    pub name: String,
    /// `Persist` effects so far (the daemon gives space back after the last of a series).
    pub store_writes: u64,
    /// Bytes to store under [`NS_NET`]/[`KEY_REPLAY`] with the next transaction.
    pub pending_replay: Option<Vec<u8>>,
    /// Files that could not be written, for status.
    pub write_errors: u64,
    /// Files written, and when, until one check after the watcher's debounce.
    pub written: Vec<(String, std::time::Instant)>,
    /// Journal entries whose write or removal has been carried out, to clear with the
    /// next transaction.
    pub journal_done: Vec<String>,
}

impl DaemonHost {
    /// Records an activity of the daemon's own (not from the engine).
    pub fn record(&mut self, kind: ActivityKind, path: Option<String>, detail: String) {
        let record = ActivityRecord {
            time_ms: crate::driver::now_ms(),
            kind,
            path,
            device: self.name.clone(),
            detail: Some(detail),
        };
        if let Err(error) = self.store.append_activity(&record) {
            tracing::error!(%error, "cannot record an activity");
        }
    }

    /// Commits whatever is waiting for a transaction (the replay guard, the journal of
    /// completed writes).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.commit(Vec::new(), Vec::new(), &[])
    }

    /// The content of the regular file at `path` and whether it is executable; `None` for
    /// nothing, a folder or a link.
    pub fn read(&self, path: &str) -> Result<Option<(Vec<u8>, bool)>, FsError> {
        let Ok(rel) = WorkspacePath::parse(path) else {
            return Ok(None);
        };
        match self.fs.read_file(&rel) {
            Ok(v) => Ok(v),
            // A symlink or folder now stands there: not a synced file.
            Err(FsError::Symlink { .. } | FsError::NotRegular { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether anything stands at `path` (a path that cannot be one is nothing).
    pub fn exists(&self, path: &str) -> bool {
        WorkspacePath::parse(path)
            .ok()
            .and_then(|rel| self.fs.stat(&rel).ok().flatten())
            .is_some()
    }

    /// Many writes made durable together (a first sync): one syncfs instead of one fsync
    /// each. A write the batch could not stage or finish is retried on its own.
    fn write_batch(&mut self, writes: &[Write]) -> Vec<Result<Outcome, FileError>> {
        let mut results: Vec<Option<Result<Outcome, FileError>>> =
            writes.iter().map(|_| None).collect();
        let mut batch = self.fs.batch();
        let mut staged: BTreeMap<String, usize> = BTreeMap::new();
        for (i, w) in writes.iter().enumerate() {
            let rel = match WorkspacePath::parse(&w.path) {
                Ok(rel) => rel,
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            // The same path twice in a batch: the second goes on its own, after.
            if !staged.contains_key(&w.path)
                && batch
                    .stage(&rel, &w.bytes, Some(w.exec), to_expect(w.expect))
                    .is_ok()
            {
                staged.insert(w.path.clone(), i);
            }
        }
        match batch.commit() {
            Ok(outcome) => {
                for rel in outcome.written {
                    if let Some(i) = staged.get(rel.as_str()) {
                        results[*i] = Some(Ok(Outcome::Done));
                    }
                }
                for rel in outcome.unexpected {
                    if let Some(i) = staged.remove(rel.as_str()) {
                        results[i] = Some(Ok(Outcome::Unexpected));
                    }
                }
                for (rel, bytes, exec) in outcome.over_edits {
                    if let Some(i) = staged.get(rel.as_str()) {
                        results[*i] = Some(Ok(Outcome::DoneOverEdit(bytes, exec)));
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "batch write failed; writing file by file"),
        }
        writes
            .iter()
            .zip(results)
            .map(|(w, r)| r.unwrap_or_else(|| self.write_if(&w.path, &w.bytes, w.exec, w.expect)))
            .collect()
    }
}

impl DocStore for DaemonHost {
    fn load(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        StoreDocs(&self.store).load(doc)
    }

    /// A document can go to a new peer with the content on disk (the peer then need not
    /// load it); a file edited since is not what the document renders to and is not sent.
    /// Nor is an executable file (an `Adopt` carries no mode: its hash is never the bytes'
    /// alone, which is what is compared).
    fn content(&mut self, path: &str, hash: &ContentHash) -> Option<Vec<u8>> {
        let (bytes, _) = self.read(path).ok()??;
        (cue_core::content_hash(&bytes) == *hash).then_some(bytes)
    }
}

impl carry::Host for DaemonHost {
    type Error = StoreError;
    type DiskError = FileError;

    fn commit(
        &mut self,
        persists: Vec<Persist>,
        activities: Vec<Activity>,
        files: &[Effect],
    ) -> Result<(), StoreError> {
        let journal: Vec<(&str, Vec<u8>)> = files
            .iter()
            .filter_map(|e| match e {
                Effect::WriteFile { path, expect, .. } | Effect::RemoveFile { path, expect } => {
                    Some((
                        path.as_str(),
                        expect.map(|h| h.to_vec()).unwrap_or_default(),
                    ))
                }
                _ => None,
            })
            .collect();
        self.store_writes += persists.len() as u64;
        let replay = self.pending_replay.take();
        let done = std::mem::take(&mut self.journal_done);
        let nothing = persists.is_empty() && activities.is_empty() && journal.is_empty();
        if nothing && replay.is_none() && done.is_empty() {
            return Ok(());
        }
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
                tx.append_activity(&ActivityRecord {
                    time_ms: a.time_ms,
                    kind: a.kind,
                    path: a.path.clone(),
                    device: a.device.clone(),
                    detail: a.detail.clone(),
                })?;
            }
            Ok(())
        })
    }

    fn files_done(&mut self, files: &[Effect]) {
        self.journal_done
            .extend(files.iter().filter_map(|e| match e {
                Effect::WriteFile { path, .. } | Effect::RemoveFile { path, .. } => {
                    Some(path.clone())
                }
                _ => None,
            }));
    }

    fn write_if(
        &mut self,
        path: &str,
        bytes: &[u8],
        exec: bool,
        expect: Option<ContentHash>,
    ) -> Result<Outcome, FileError> {
        let rel = WorkspacePath::parse(path)?;
        let written = self
            .fs
            .write_atomic_if(&rel, bytes, Some(exec), to_expect(expect))?;
        let result = outcome(written);
        let what = match &result {
            Outcome::Done => "done",
            Outcome::Unexpected => "unexpected",
            Outcome::DoneOverEdit(..) => "done over an edit",
        };
        tracing::debug!(path, len = bytes.len(), exec, outcome = what, "write");
        Ok(result)
    }

    fn write_many(&mut self, writes: &[Write]) -> Vec<Result<Outcome, FileError>> {
        if writes.len() >= BATCH_MIN {
            return self.write_batch(writes);
        }
        writes
            .iter()
            .map(|w| self.write_if(&w.path, &w.bytes, w.exec, w.expect))
            .collect()
    }

    fn remove_if(&mut self, path: &str, expect: ContentHash) -> Result<Option<Outcome>, FileError> {
        let rel = WorkspacePath::parse(path)?;
        Ok(self
            .fs
            .remove_if(&rel, Expect::Content(expect))?
            .map(outcome))
    }

    fn remove_empty_dir(&mut self, dir: &str) -> bool {
        WorkspacePath::parse(dir)
            .ok()
            .is_some_and(|rel| matches!(self.fs.remove_empty_dir(&rel), Ok(true)))
    }

    fn read_file(&mut self, path: &str) -> Result<Option<(Vec<u8>, bool)>, FileError> {
        Ok(self.read(path)?)
    }

    fn exists(&mut self, path: &str) -> Result<bool, FileError> {
        let rel = WorkspacePath::parse(path)?;
        Ok(self.fs.stat(&rel)?.is_some())
    }

    fn written(&mut self, path: &str) {
        self.written
            .push((path.to_string(), std::time::Instant::now()));
    }

    fn write_failed(&mut self, path: &str, error: &FileError) {
        // The engine records it in the activity log (once, not at every retry).
        self.write_errors += 1;
        tracing::error!(%error, path, "cannot write a synced file");
    }

    fn deferred(&mut self, paths: &[String]) {
        // Nothing is lost (what the disk held is merged): the write waits for the next
        // tick, so this is no error for the activity log.
        tracing::debug!(
            ?paths,
            "files keep changing while cue writes them; writing at the next tick"
        );
    }
}

fn outcome(o: fsio::Outcome) -> Outcome {
    match o {
        fsio::Outcome::Done => Outcome::Done,
        fsio::Outcome::Unexpected => Outcome::Unexpected,
        fsio::Outcome::DoneOverEdit(bytes, exec) => Outcome::DoneOverEdit(bytes, exec),
    }
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
