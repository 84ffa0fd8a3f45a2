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
//!
//! A batch of a few writes (a peer's edit) flushes nothing more: its files are written
//! under temporary names *before* the commit, so their journal entries name the file each
//! will be ([`fsio::FileId`]), then put in place unflushed; an `fsync` of each and of its
//! folder makes them durable within [`FLUSH_FILES_WITHIN`] (off the path of the edit to
//! the screen), and only then are their entries cleared. After a power
//! cut a journaled file is either what it was (or was before another unflushed write:
//! every such content is kept in the entry), which is rewritten, or the prepared file cut
//! short, which is rewritten too, or something else, an edit made since, which is merged.
//! So a received change costs one flush of the disk, the store's, not three.

use std::collections::{BTreeMap, BTreeSet};

use cue_core::carry::{self, Host as _, Outcome, Write};
use cue_core::{Activity, ContentHash, DocId, DocStore, Effect, Input, Persist};

use crate::fsio::{self, Expect, FsError, WorkspaceFs};
use crate::paths::{PathError, WorkspacePath};
use crate::store::{ActivityKind, ActivityRecord, Store, StoreError, StoreTx};

/// Store namespaces and keys the daemon uses.
pub const NS_DAEMON: &str = "daemon";
pub const KEY_EPOCH: &str = "epoch";
/// The workspace's mount points found by the last scan, one relative path a line
/// (`scan::ScanOptions::known_mounts`), under [`NS_DAEMON`].
pub const KEY_MOUNTS: &str = "mounts";
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

/// Files put in place unflushed are made durable this long after the first of them at
/// most, or at once past [`UNFLUSHED_AT_MOST`] of them (paths, or files written: each
/// holds two descriptors open until then).
pub const FLUSH_FILES_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
const UNFLUSHED_AT_MOST: usize = 64;
/// Files held open for their flush at most (two descriptors each), even while flushes
/// fail and are put off.
const HELD_AT_MOST: usize = 4 * UNFLUSHED_AT_MOST;
/// Contents a journal entry keeps for a path written again and again before a flush; past
/// this, the files are flushed first.
const BEFORE_AT_MOST: usize = 32;

/// The journal's record of a path about to be written or removed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JournalEntry {
    /// What the path may hold if the effect (or an earlier one not flushed yet) did not
    /// reach the disk: content hashes ([`cue_core::file_hash`]), `None` for nothing;
    /// and what the writes put there (what a power cut leaves when it loses a later
    /// save of the user's, which the engine had taken in).
    pub before: Vec<Option<ContentHash>>,
    /// The files writes put in place without flushing them ([`WorkspaceFs::prepare`]),
    /// this one and earlier ones not flushed yet.
    pub written: Vec<fsio::FileId>,
    /// The last effect was carried out (committed without a flush just after it), in
    /// this boot of the machine ([`boot_id`]; empty when there is none to read): a
    /// start in the same boot (a crash, a kill, no power cut since) knows anything else
    /// at the path is the user's doing since, made to what the engine believes is there.
    pub done_in: Option<Vec<u8>>,
    /// Where the last effect's file was written before the commit, when it was prepared
    /// (`None` for a removal, or a write not prepared: a batch of many, a folder that
    /// could not be prepared). Not marked done, the entry cannot say whether the file was
    /// put in place before a crash; in the same boot that name can.
    pub prepared: Option<PreparedAs>,
}

/// The temporary name in a path's folder that a write's file was written under before
/// its commit ([`fsio::Prepared::temp_name`]), and the boot it was written in. After a
/// crash in that boot, the name still holding the file says it was not put in place;
/// holding another file (what the exchange that put it in place swapped out, kept
/// aside), it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedAs {
    pub temp: String,
    pub boot: Vec<u8>,
    /// The file written there.
    pub id: fsio::FileId,
}

/// First byte of an entry in this layout; an older entry is a bare hash (32 bytes) or
/// empty (nothing was there), neither of which this layout can be. Layout 3 is this one
/// without `prepared`, layout 2 without `done_in` either (read as not done). (A version
/// before this one reads this layout as damaged and leaves the path to its scan.)
const JOURNAL_LAYOUT: u8 = 4;

impl JournalEntry {
    /// `[layout] [n] n × ([0] | [1] hash) [m] m × (inode, mtime) ([0] | [1] [len] boot)
    /// ([0] | [1] [len] temp [len] boot inode mtime)`, little-endian; past 255 of
    /// either, the first and the newest are kept (the oldest
    /// content is what a power cut most likely leaves, the newest what it least likely
    /// does not).
    pub fn encode(&self) -> Vec<u8> {
        fn capped<T>(items: &[T]) -> Vec<&T> {
            match items.len() {
                0..=255 => items.iter().collect(),
                n => std::iter::once(&items[0])
                    .chain(&items[n - 254..])
                    .collect(),
            }
        }
        let mut out = vec![JOURNAL_LAYOUT];
        let before = capped(&self.before);
        out.push(before.len() as u8);
        for b in before {
            match b {
                None => out.push(0),
                Some(h) => {
                    out.push(1);
                    out.extend_from_slice(h);
                }
            }
        }
        let written = capped(&self.written);
        out.push(written.len() as u8);
        for id in written {
            out.extend_from_slice(&id.ino.to_le_bytes());
            out.extend_from_slice(&id.mtime_ns.to_le_bytes());
        }
        fn field(out: &mut Vec<u8>, bytes: &[u8]) {
            let bytes = &bytes[..bytes.len().min(255)];
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
        match &self.done_in {
            None => out.push(0),
            Some(boot) => {
                out.push(1);
                field(&mut out, boot);
            }
        }
        // (A name cut short would name another file: none rather than that. Cue's are
        // about 40 bytes.)
        match self.prepared.as_ref().filter(|p| p.temp.len() <= 255) {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                field(&mut out, p.temp.as_bytes());
                field(&mut out, &p.boot);
                out.extend_from_slice(&p.id.ino.to_le_bytes());
                out.extend_from_slice(&p.id.mtime_ns.to_le_bytes());
            }
        }
        out
    }

    /// The inodes of the files written (see [`fsio::WorkspaceFs::flush_files`]).
    pub fn inodes(&self) -> Vec<u64> {
        self.written.iter().map(|id| id.ino).collect()
    }

    /// `None` for bytes that are no entry (a store damaged by hand): the path is then
    /// left to the start-up scan.
    pub fn decode(bytes: &[u8]) -> Option<JournalEntry> {
        match bytes.len() {
            0 => {
                return Some(JournalEntry {
                    before: vec![None],
                    ..JournalEntry::default()
                });
            }
            32 => {
                return Some(JournalEntry {
                    before: vec![Some(<[u8; 32]>::try_from(bytes).ok()?)],
                    ..JournalEntry::default()
                });
            }
            _ => {}
        }
        let (&layout, rest) = bytes.split_first()?;
        if !(2..=JOURNAL_LAYOUT).contains(&layout) {
            return None;
        }
        let (&n, mut rest) = rest.split_first()?;
        let mut before = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (&tag, after) = rest.split_first()?;
            match tag {
                0 => {
                    before.push(None);
                    rest = after;
                }
                1 => {
                    let (hash, after) = after.split_first_chunk::<32>()?;
                    before.push(Some(*hash));
                    rest = after;
                }
                _ => return None,
            }
        }
        let (&m, mut rest) = rest.split_first()?;
        let mut written = Vec::with_capacity(m as usize);
        for _ in 0..m {
            let (ino, after) = rest.split_first_chunk::<8>()?;
            let (mtime, after) = after.split_first_chunk::<8>()?;
            written.push(fsio::FileId {
                ino: u64::from_le_bytes(*ino),
                mtime_ns: i64::from_le_bytes(*mtime),
            });
            rest = after;
        }
        // `[len] len × byte`, then what follows.
        fn field(rest: &[u8]) -> Option<(Vec<u8>, &[u8])> {
            let (&len, rest) = rest.split_first()?;
            let (bytes, rest) = rest.split_at_checked(len as usize)?;
            Some((bytes.to_vec(), rest))
        }
        let (done_in, rest) = match (layout, rest.split_first()) {
            (2, _) => (None, rest),
            (_, Some((0, rest))) => (None, rest),
            (_, Some((1, rest))) => {
                let (boot, rest) = field(rest)?;
                (Some(boot), rest)
            }
            _ => return None,
        };
        let (prepared, rest) = match (layout, rest.split_first()) {
            (2 | 3, _) => (None, rest),
            (_, Some((0, rest))) => (None, rest),
            (_, Some((1, rest))) => {
                let (temp, rest) = field(rest)?;
                let (boot, rest) = field(rest)?;
                let temp = String::from_utf8(temp).ok()?;
                let (ino, rest) = rest.split_first_chunk::<8>()?;
                let (mtime, rest) = rest.split_first_chunk::<8>()?;
                let id = fsio::FileId {
                    ino: u64::from_le_bytes(*ino),
                    mtime_ns: i64::from_le_bytes(*mtime),
                };
                (Some(PreparedAs { temp, boot, id }), rest)
            }
            _ => return None,
        };
        if !rest.is_empty() {
            return None;
        }
        Some(JournalEntry {
            before,
            written,
            done_in,
            prepared,
        })
    }
}

/// Why one file could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("refusing a path the engine produced: {0}")]
    Path(#[from] PathError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{folder} is a disk that is not mounted")]
    NotMounted { folder: String },
    #[error("a disk is mounted over {folder}, hiding its synced files")]
    MountedOver { folder: String },
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
    pub written: BTreeMap<String, std::time::Instant>,
    /// Journal entries whose write or removal has been carried out, to clear with the
    /// next transaction.
    pub journal_done: Vec<String>,
    /// Folders disks were mounted on, found unmounted by the last scan: nothing is
    /// written or removed below them (it would land on the filesystem under the mount,
    /// hidden once the disk is back, and its files then taken for deleted). Refused
    /// writes are retried, as any failed write is.
    pub not_mounted: BTreeSet<String>,
    /// Folders of synced files a disk was mounted over, found by the last scan: nothing
    /// is written or removed below them either (it would land on the disk, while the
    /// files it stands for are hidden under it). Retried once the disk is unmounted.
    pub mounted_over: BTreeSet<String>,
    /// This batch's writes, prepared before its commit, by path.
    pub prepared: BTreeMap<String, (ContentHash, fsio::Prepared)>,
    /// This batch's journal entries, by path (what `files_done` keeps when not flushed).
    pub journaled: BTreeMap<String, JournalEntry>,
    /// What this batch's last effect on each path puts there (`None`: a removal). A
    /// batch's writes go a part at a time (cut at each removal), so a part cannot tell.
    last_effect: BTreeMap<String, Option<ContentHash>>,
    /// Paths a prepared file was put in place at in this batch.
    pub put_in_place: BTreeSet<String>,
    /// Paths written (flushed) or removed in this batch: what they hold is durable.
    pub durably_done: BTreeSet<String>,
    /// What a file put in place in this batch replaced that the engine had not seen (a
    /// program writing at that instant; fed back and merged): a power cut can leave it.
    pub over_edits: BTreeMap<String, ContentHash>,
    /// Written and not flushed yet: their journal entries stay until they are.
    pub unflushed: BTreeMap<String, JournalEntry>,
    /// This boot of the machine ([`boot_id`]), for the journal's marks.
    pub boot: Vec<u8>,
    /// The files of `unflushed` and their folders, held open until flushed.
    pub unflushed_files: BTreeMap<String, Vec<fsio::Written>>,
    /// When `unflushed` is to be flushed: a second after the first of them was written,
    /// later after flushes that failed.
    pub flush_due: Option<std::time::Instant>,
    /// Flushes that failed in a row (a folder that cannot be flushed), for the wait
    /// before the next.
    pub flush_failures: u32,
}

impl DaemonHost {
    /// The folder that `path` is (or is below) whose synced files cannot be seen: its
    /// disk is not mounted, or a disk is mounted over it. Nothing there is the
    /// workspace's as it stands: no write, no removal, no event.
    pub fn out_of_sight(&self, path: &str) -> Option<&String> {
        let at = |m: &&String| path == m.as_str() || crate::scan::below(path, m);
        self.not_mounted
            .iter()
            .find(at)
            .or_else(|| self.mounted_over.iter().find(at))
    }

    /// An error when `path` is below a folder whose synced files cannot be seen.
    fn mounted_at(&self, path: &str) -> Result<(), FileError> {
        match self.out_of_sight(path) {
            Some(folder) if self.not_mounted.contains(folder) => Err(FileError::NotMounted {
                folder: folder.clone(),
            }),
            Some(folder) => Err(FileError::MountedOver {
                folder: folder.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn new(store: Store, fs: WorkspaceFs, name: String) -> DaemonHost {
        DaemonHost {
            store,
            fs,
            name,
            store_writes: 0,
            pending_replay: None,
            write_errors: 0,
            written: BTreeMap::new(),
            journal_done: Vec::new(),
            not_mounted: BTreeSet::new(),
            mounted_over: BTreeSet::new(),
            prepared: BTreeMap::new(),
            journaled: BTreeMap::new(),
            last_effect: BTreeMap::new(),
            put_in_place: BTreeSet::new(),
            durably_done: BTreeSet::new(),
            over_edits: BTreeMap::new(),
            unflushed: BTreeMap::new(),
            flush_due: None,
            flush_failures: 0,
            boot: boot_id().unwrap_or_default(),
            unflushed_files: BTreeMap::new(),
        }
    }

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
    /// completed writes); `durable` as for [`carry::Host::commit`] (the replay guard must
    /// be on disk before anything is sent).
    pub fn flush(&mut self, durable: bool) -> Result<(), StoreError> {
        self.commit(Vec::new(), Vec::new(), &[], durable)
    }

    /// Makes the files put in place unflushed durable when it is time (see
    /// [`FLUSH_FILES_WITHIN`]), or at once with `now_anyway`; their journal entries are
    /// cleared with the next transaction. A file whose flush fails is written again
    /// (`write_again`), and when that fails too, the whole is tried again later (the
    /// entries stay, so a power cut meanwhile is still finished at the next start).
    /// Whether it flushed any.
    pub fn flush_files(&mut self, now_anyway: bool) -> bool {
        let now = std::time::Instant::now();
        let due = self.flush_due.is_some_and(|due| due <= now);
        if self.unflushed.is_empty() || !(due || now_anyway) {
            return false;
        }
        // Only paths `write_if` parsed are ever put in place.
        let paths: Vec<(String, WorkspacePath)> = self
            .unflushed
            .keys()
            .filter_map(|p| Some((p.clone(), WorkspacePath::parse(p).ok()?)))
            .collect();
        // Each file through what was held open for it, wherever it went; past
        // SYNCFS_OVER_FILES, or for a file with none, by its path (one syncfs reaches
        // what went elsewhere).
        let by_handles = paths.len() <= fsio::SYNCFS_OVER_FILES;
        let mut folders = BTreeSet::new();
        let mut results: Vec<Option<Result<(), FsError>>> = paths
            .iter()
            .map(|(path, rel)| {
                let held = self.unflushed_files.get(path).filter(|_| by_handles)?;
                Some(held.iter().try_for_each(|w| w.flush(rel, &mut folders)))
            })
            .collect();
        let (left, rels): (Vec<usize>, Vec<(WorkspacePath, Vec<u64>)>) = paths
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_none())
            .map(|(i, (path, rel))| (i, (rel.clone(), self.unflushed[path].inodes())))
            .unzip();
        for (i, result) in left.into_iter().zip(self.fs.flush_files(&rels)) {
            results[i] = Some(result);
        }
        let mut flushed = 0;
        let mut failed = None;
        for ((path, rel), result) in paths.into_iter().zip(results) {
            // (Every path has its result by now; one without would count as not flushed.)
            let result = result.unwrap_or_else(|| {
                Err(FsError::io(
                    "flush",
                    rel.as_str(),
                    std::io::Error::other("no flush was made"),
                ))
            });
            let by_handles = by_handles && self.unflushed_files.contains_key(&path);
            let result = match result {
                Err(error) if !self.write_again(&path, &rel) => Err(error),
                _ => Ok(()),
            };
            match result {
                Ok(()) => {
                    self.unflushed.remove(&path);
                    self.unflushed_files.remove(&path);
                    self.journal_done.push(path);
                    flushed += 1;
                }
                Err(error) if by_handles => {
                    // Its fsync failed and it could not be written again: a second fsync
                    // of the same file would report nothing (Linux says it once). Not
                    // tried again: its journal entry stays for the next start, which
                    // judges what the disk holds.
                    tracing::warn!(%error, path, "cannot flush a file written; left to the next start");
                    self.unflushed.remove(&path);
                    self.unflushed_files.remove(&path);
                    self.write_errors += 1;
                }
                Err(error) => failed = Some(error),
            }
        }
        tracing::debug!(files = flushed, "files written are durable");
        match failed {
            None => {
                self.flush_failures = 0;
                self.flush_due = None;
            }
            Some(error) => {
                // Tried again later, waiting longer each time (up to a minute); said once.
                self.flush_failures += 1;
                let wait = FLUSH_FILES_WITHIN * 2u32.saturating_pow(self.flush_failures.min(6));
                self.flush_due = Some(now + wait.min(std::time::Duration::from_secs(60)));
                if self.flush_failures == 1 {
                    tracing::warn!(%error, files = self.unflushed.len(), "cannot flush files written; trying again later");
                }
            }
        }
        flushed > 0
    }

    /// After a failed flush of `path`: Linux reports a failed write-back once, so a
    /// second `fsync` can succeed with the data lost. The file is written again instead
    /// (new pages, flushed with its name) from what it holds, when it is still a file
    /// written there and unmodified since (an edit being saved in place is left alone).
    /// A save made in the instant of the rename is put back. Whether the file written
    /// is now durable.
    fn write_again(&self, path: &str, rel: &WorkspacePath) -> bool {
        let ours = self.unflushed.get(path).is_some_and(|entry| {
            entry
                .written
                .iter()
                .any(|id| matches!(self.fs.is_file(rel, *id), Ok(true)))
        });
        if !ours {
            return false;
        }
        let Ok(Some((bytes, exec))) = self.read(path) else {
            return false;
        };
        let hash = cue_core::file_hash(&bytes, exec);
        // Only what cue wrote there last (pages read back after a failed write-back can
        // be stale blocks or zeros: never made durable as the file's content).
        let last = self
            .unflushed_files
            .get(path)
            .and_then(|held| held.last())
            .map(|w| w.hash);
        if last != Some(hash) {
            return false;
        }
        match self
            .fs
            .write_atomic_if(rel, &bytes, Some(exec), Expect::Content(hash))
        {
            Ok(fsio::Outcome::Done) => true,
            Ok(fsio::Outcome::DoneOverEdit(edit, edit_exec)) => {
                // Saved in between: the save goes back where it was (over the bytes
                // just written again), for the watcher.
                if let Err(error) =
                    self.fs
                        .write_atomic_if(rel, &edit, Some(edit_exec), Expect::Content(hash))
                {
                    tracing::error!(%error, path, "cannot put back a save made while the file was written again");
                }
                false
            }
            Ok(fsio::Outcome::Unexpected) => false,
            Err(error) => {
                tracing::debug!(%error, path, "cannot write a file again after a failed flush");
                false
            }
        }
    }

    /// Files held open for their flush (`unflushed_files`).
    fn held_open(&self) -> usize {
        self.unflushed_files.values().map(Vec::len).sum()
    }

    /// Notes that `path` was put in place unflushed under `entry`.
    fn unflushed_write(&mut self, path: &str, entry: JournalEntry) {
        self.unflushed.insert(path.to_string(), entry);
        self.flush_due
            .get_or_insert_with(|| std::time::Instant::now() + FLUSH_FILES_WITHIN);
    }

    /// Whether files wait for a flush that should come soon (not one put off after
    /// failures): the daemon then ticks often.
    pub fn flush_soon(&self) -> bool {
        !self.unflushed.is_empty() && self.flush_failures == 0
    }

    /// What a batch that never reached `files_done` (a panic in between) left: its files
    /// put in place wait for a flush like any, its prepared files go.
    fn settle_leftovers(&mut self) {
        for path in std::mem::take(&mut self.put_in_place) {
            if let Some(entry) = self.journaled.remove(&path) {
                self.unflushed_write(&path, entry);
            }
        }
        self.durably_done.clear();
        self.over_edits.clear();
        self.last_effect.clear();
        self.journaled.clear();
        let unflushed = &self.unflushed;
        self.unflushed_files
            .retain(|path, _| unflushed.contains_key(path));
        for (_, (_, prepared)) in std::mem::take(&mut self.prepared) {
            prepared.discard();
        }
    }

    /// Writes each file of a batch of a few under a temporary name, before the batch's
    /// commit: the journal then names the file each will be. A write that cannot be
    /// prepared goes the usual way (flushed) when carried out.
    fn prepare(&mut self, files: &[Effect]) {
        let writes = files
            .iter()
            .filter(|e| matches!(e, Effect::WriteFile { .. }))
            .count();
        if writes >= BATCH_MIN {
            return; // made durable together, see `write_batch`
        }
        for e in files {
            let Effect::WriteFile {
                path,
                bytes,
                exec,
                expect,
            } = e
            else {
                continue;
            };
            let Ok(rel) = WorkspacePath::parse(path) else {
                continue;
            };
            // The same path twice in a batch: the second is written the usual way. (Below
            // a folder out of sight the write is refused: nothing is put there.)
            if self.prepared.contains_key(path) || self.out_of_sight(path).is_some() {
                continue;
            }
            match self
                .fs
                .prepare(&rel, bytes, Some(*exec), to_expect(*expect))
            {
                Ok(Some(prepared)) => {
                    let hash = cue_core::file_hash(bytes, *exec);
                    self.prepared.insert(path.clone(), (hash, prepared));
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, path, "cannot prepare a write"),
            }
        }
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
        let mut staged_as = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            let rel = match WorkspacePath::parse(&w.path) {
                Ok(rel) => rel,
                Err(e) => {
                    results[i] = Some(Err(e.into()));
                    continue;
                }
            };
            // The same path twice in a batch: the second goes on its own, after.
            if staged.contains_key(&w.path) {
                continue;
            }
            if let Ok(as_) = batch.stage(&rel, &w.bytes, Some(w.exec), to_expect(w.expect)) {
                staged.insert(w.path.clone(), i);
                staged_as.push((w.path.as_str(), as_));
            }
        }
        journal_staged(
            &mut self.journaled,
            &mut self.store,
            &self.boot,
            &self.last_effect,
            writes,
            staged_as,
        );
        match batch.commit() {
            Ok(outcome) => {
                for rel in outcome.written {
                    if let Some(i) = staged.get(rel.as_str()) {
                        results[*i] = Some(Ok(Outcome::Done));
                        self.put_in_place.remove(rel.as_str());
                        self.durably_done.insert(rel.as_str().to_string());
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

/// Names in the journal the temporary files a batch staged, before any is renamed into
/// place (as [`DaemonHost::prepare`] does before the commit for a few): a start in
/// this boot after a kill between the renames and the done mark tells by them which
/// were put in place. Not flushed: it matters only to a start in the same boot.
fn journal_staged(
    journaled: &mut BTreeMap<String, JournalEntry>,
    store: &mut Store,
    boot: &[u8],
    last_effect: &BTreeMap<String, Option<ContentHash>>,
    writes: &[Write],
    staged: Vec<(&str, fsio::StagedAs)>,
) {
    let mut entries = Vec::new();
    for (path, as_) in staged {
        // Only when this write is the path's last effect in the batch: not when another
        // write of it follows (on its own, or in a later part), nor a removal.
        let Some(w) = writes.iter().find(|w| w.path == path) else {
            continue;
        };
        let last = last_effect.get(path).copied().flatten();
        if last != Some(cue_core::file_hash(&w.bytes, w.exec)) {
            continue;
        }
        let Some(entry) = journaled.get_mut(path) else {
            continue;
        };
        // (Last: the file this write puts there.)
        entry.written.retain(|id| *id != as_.id);
        entry.written.push(as_.id);
        entry.prepared = Some(PreparedAs {
            temp: as_.temp,
            boot: boot.to_vec(),
            id: as_.id,
        });
        entries.push((path.to_string(), entry.encode()));
    }
    if entries.is_empty() {
        return;
    }
    if let Err(error) = store.transaction_not_synced(|tx| {
        for (path, entry) in &entries {
            tx.put_meta(NS_JOURNAL, path, entry)?;
        }
        Ok(())
    }) {
        tracing::warn!(%error, "cannot name a batch's temporary files in the journal");
    }
}

impl Drop for DaemonHost {
    /// A command that wrote files (`cue sync restore` with no daemon) leaves them durable.
    fn drop(&mut self) {
        let _ = self.flush_files(true);
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
        durable: bool,
    ) -> Result<(), StoreError> {
        self.settle_leftovers();
        if files.iter().any(|e| {
            e.file_path()
                .and_then(|p| self.unflushed.get(p))
                .is_some_and(|entry| entry.before.len() >= BEFORE_AT_MOST)
        }) {
            let _ = self.flush_files(self.flush_failures == 0);
        }
        self.prepare(files);
        for e in files {
            let (path, expect, writing) = match e {
                Effect::WriteFile {
                    path,
                    expect,
                    bytes,
                    exec,
                } => (path, expect, Some(cue_core::file_hash(bytes, *exec))),
                Effect::RemoveFile { path, expect } => (path, expect, None),
                _ => continue,
            };
            // An earlier write not flushed yet, or an earlier effect of this batch on the
            // same path, may not be on disk after a power cut either: what the path held
            // before it is kept too.
            let JournalEntry {
                mut before,
                mut written,
                ..
            } = self
                .journaled
                .get(path)
                .or_else(|| self.unflushed.get(path))
                .cloned()
                .unwrap_or_default();
            if !before.contains(expect) {
                before.push(*expect);
            }
            // What this write puts there, too: left by a power cut that lost a later
            // save of the user's (which the engine took in), it is ours, not theirs, and
            // the start writes what the engine holds over it.
            if writing.is_some() && !before.contains(&writing) {
                before.push(writing);
            }
            let prepared = self.prepared.get(path);
            if let Some((_, p)) = prepared {
                // (Last: the file this write puts there.)
                written.retain(|id| *id != p.id);
                written.push(p.id);
            }
            self.last_effect.insert(path.clone(), writing);
            self.journaled.insert(
                path.clone(),
                JournalEntry {
                    before,
                    written,
                    done_in: None,
                    // (Only when it is this effect's: a second effect on the path in a
                    // batch goes the usual way, under a name of its own.)
                    prepared: prepared
                        .filter(|(hash, _)| writing == Some(*hash))
                        .map(|(_, p)| PreparedAs {
                            temp: p.temp_name().to_string(),
                            boot: self.boot.clone(),
                            id: p.id,
                        }),
                },
            );
        }
        let journal: Vec<(&str, Vec<u8>)> = self
            .journaled
            .iter()
            .map(|(path, entry)| (path.as_str(), entry.encode()))
            .collect();
        self.store_writes += persists.len() as u64;
        let replay = self.pending_replay.take();
        let done = std::mem::take(&mut self.journal_done);
        // An entry goes for good: one a power cut brought back would make the next
        // start take a save that happens to restore an earlier content for the write
        // not done, and write over it.
        let durable = durable || !done.is_empty();
        let nothing = persists.is_empty() && activities.is_empty() && journal.is_empty();
        if nothing && replay.is_none() && done.is_empty() {
            return Ok(());
        }
        let transaction = |tx: &StoreTx<'_>| {
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
        };
        let committed = match durable || !journal.is_empty() {
            true => self.store.transaction(transaction),
            false => self.store.transaction_not_synced(transaction),
        };
        if committed.is_err() {
            // Nothing of the batch is carried out: its prepared files go.
            for (_, (_, prepared)) in std::mem::take(&mut self.prepared) {
                prepared.discard();
            }
        }
        committed
    }

    fn files_done(&mut self, files: &[Effect]) {
        // Once a path: its effects in the batch were journaled as one entry, and what
        // `put_in_place` and `durably_done` hold is its last effect's outcome.
        let mut seen = std::collections::BTreeSet::new();
        let mut marks = Vec::new();
        for path in files.iter().filter_map(Effect::file_path) {
            if !seen.insert(path) {
                continue;
            }
            let entry = self.journaled.remove(path);
            if self.put_in_place.remove(path) {
                // Durable at the next flush of the files; its entry stays until then.
                if let Some(mut entry) = entry {
                    entry.done_in = Some(self.boot.clone());
                    // Merged already: found after a power cut, it is not merged again.
                    if let Some(edit) = self.over_edits.remove(path)
                        && !entry.before.contains(&Some(edit))
                    {
                        entry.before.push(Some(edit));
                    }
                    marks.push((path.to_string(), entry.encode()));
                    self.unflushed_write(path, entry);
                }
            } else if self.durably_done.remove(path) {
                // Written and flushed, or removed (the folder flushed: earlier unflushed
                // writes there are settled too): the entry goes with the next commit,
                // marked done until then.
                if let Some(mut entry) = entry {
                    entry.done_in = Some(self.boot.clone());
                    marks.push((path.to_string(), entry.encode()));
                }
                self.unflushed.remove(path);
                self.unflushed_files.remove(path);
                self.journal_done.push(path.to_string());
            } else if !self.unflushed.contains_key(path) {
                // Not done, with nothing earlier unflushed: the path holds what it held.
                self.journal_done.push(path.to_string());
            } else if let Some(entry) = entry {
                // Not done (refused, failed, put off) over an earlier write not flushed
                // yet: its entry, which holds the earlier one's, stays until the flush.
                self.unflushed.insert(path.to_string(), entry);
            }
        }
        self.durably_done.clear();
        self.over_edits.clear();
        self.last_effect.clear();
        // Not carried out (refused, put off): their temporary files go.
        for (_, (_, prepared)) in std::mem::take(&mut self.prepared) {
            prepared.discard();
        }
        // Without a flush: it matters only to a start in the same boot, which finds
        // the store as it was left (a crash or a kill loses nothing the kernel holds).
        // Lost, the entries read as not done, as before.
        if !marks.is_empty()
            && let Err(error) = self.store.transaction_not_synced(|tx| {
                for (path, entry) in &marks {
                    tx.put_meta(NS_JOURNAL, path, entry)?;
                }
                Ok(())
            })
        {
            tracing::warn!(%error, "cannot mark file writes done in the journal");
        }
        // (Each file written and its folder are held open until flushed: a path written
        // again and again keeps one pair a write.)
        let held = self.held_open();
        if self.unflushed.len() >= UNFLUSHED_AT_MOST || held >= UNFLUSHED_AT_MOST {
            let _ = self.flush_files(self.flush_failures == 0);
        }
    }

    fn write_if(
        &mut self,
        path: &str,
        bytes: &[u8],
        exec: bool,
        expect: Option<ContentHash>,
    ) -> Result<Outcome, FileError> {
        self.mounted_at(path)?;
        let rel = WorkspacePath::parse(path)?;
        let hash = cue_core::file_hash(bytes, exec);
        let written = match self.prepared.remove(path) {
            Some((prepared_hash, prepared)) if prepared_hash == hash => {
                let handles = prepared.written(hash);
                let written = self.fs.put_in_place(prepared, to_expect(expect))?;
                if !matches!(written, fsio::Outcome::Unexpected) {
                    let held = self.held_open();
                    match handles {
                        // (Flushes failing for a while: past this many, the path goes by
                        // name, all its files, rather than by some of them.)
                        Some(handles) if held < HELD_AT_MOST => self
                            .unflushed_files
                            .entry(path.to_string())
                            .or_default()
                            .push(handles),
                        _ => {
                            self.unflushed_files.remove(path);
                        }
                    }
                }
                if let fsio::Outcome::DoneOverEdit(bytes, exec) = &written {
                    self.over_edits
                        .insert(path.to_string(), cue_core::file_hash(bytes, *exec));
                }
                if !matches!(written, fsio::Outcome::Unexpected) {
                    // The path's last effect in the batch is what stands (a removal
                    // before it, as when a freed path is reused, is no flush of this).
                    self.durably_done.remove(path);
                    self.put_in_place.insert(path.to_string());
                }
                written
            }
            other => {
                if let Some((_, prepared)) = other {
                    prepared.discard();
                }
                let written =
                    self.fs
                        .write_atomic_if(&rel, bytes, Some(exec), to_expect(expect))?;
                if !matches!(written, fsio::Outcome::Unexpected) {
                    self.put_in_place.remove(path);
                    self.durably_done.insert(path.to_string());
                }
                written
            }
        };
        let result = outcome(written);
        tracing::debug!(
            path,
            len = bytes.len(),
            exec,
            outcome = said(&result),
            "write"
        );
        Ok(result)
    }

    fn write_many(&mut self, writes: &[Write]) -> Vec<Result<Outcome, FileError>> {
        if !self.not_mounted.is_empty() || !self.mounted_over.is_empty() {
            return writes
                .iter()
                .map(|w| self.write_if(&w.path, &w.bytes, w.exec, w.expect))
                .collect();
        }
        if writes.len() >= BATCH_MIN {
            return self.write_batch(writes);
        }
        writes
            .iter()
            .map(|w| self.write_if(&w.path, &w.bytes, w.exec, w.expect))
            .collect()
    }

    fn remove_if(&mut self, path: &str, expect: ContentHash) -> Result<Option<Outcome>, FileError> {
        self.mounted_at(path)?;
        let rel = WorkspacePath::parse(path)?;
        let removed = self.fs.remove_if(&rel, Expect::Content(expect))?;
        if matches!(
            removed,
            Some(fsio::Outcome::Done | fsio::Outcome::DoneOverEdit(..))
        ) {
            // The folder flushed: an earlier write of the batch there is settled too.
            self.put_in_place.remove(path);
            self.durably_done.insert(path.to_string());
        }
        let result = removed.map(outcome);
        tracing::debug!(
            path,
            outcome = result.as_ref().map_or("nothing there", said),
            "remove"
        );
        Ok(result)
    }

    fn remove_empty_dir(&mut self, dir: &str) -> bool {
        // (A bare folder whose disk is away, or one on the disk over it, is no folder
        // of the workspace's to tidy.)
        self.out_of_sight(dir).is_none()
            && WorkspacePath::parse(dir)
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

    fn feedback(&mut self, input: &Input) {
        crate::driver::trace_input(input);
    }

    fn written(&mut self, path: &str) {
        // (Its last write: the file is looked at once that has settled.)
        self.written
            .insert(path.to_string(), std::time::Instant::now());
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

/// How the debug log says what a write or removal found.
fn said(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Done => "done",
        Outcome::Unexpected => "unexpected",
        Outcome::DoneOverEdit(..) => "done over an edit",
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

/// This boot of the machine (Linux: `/proc/sys/kernel/random/boot_id`), `None` where
/// there is none to read.
pub fn boot_id() -> Option<Vec<u8>> {
    let id = std::fs::read("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim_ascii();
    (!id.is_empty()).then(|| id.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (tempfile::TempDir, DaemonHost) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(".cuedeck")).expect("mkdir");
        let store = Store::open(&dir.path().join(".cuedeck/store.sqlite3")).expect("store");
        let fs = WorkspaceFs::open(dir.path()).expect("fs");
        (dir, DaemonHost::new(store, fs, "test".into()))
    }

    /// One batch writing `bytes` at `path` over `expect`, carried out as `carry` does.
    fn write(
        host: &mut DaemonHost,
        path: &str,
        bytes: &[u8],
        expect: Option<ContentHash>,
    ) -> Outcome {
        let files = [Effect::WriteFile {
            path: path.into(),
            bytes: bytes.to_vec(),
            exec: false,
            expect,
        }];
        host.commit(Vec::new(), Vec::new(), &files, true)
            .expect("commit");
        let outcome = host.write_if(path, bytes, false, expect).expect("write");
        host.files_done(&files);
        outcome
    }

    fn entry(host: &DaemonHost, path: &str) -> Option<JournalEntry> {
        let entries = host.store.list_meta(NS_JOURNAL).expect("journal");
        entries
            .into_iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, e)| JournalEntry::decode(&e))
    }

    #[test]
    fn a_file_written_into_a_folder_that_became_a_file_before_the_flush_is_not_waited_for() {
        let (dir, mut host) = host();
        assert_eq!(write(&mut host, "d/a.md", b"one\n", None), Outcome::Done);
        assert!(host.flush_soon());
        std::fs::remove_dir_all(dir.path().join("d")).expect("rm");
        std::fs::write(dir.path().join("d"), b"a file now\n").expect("write");
        assert!(host.flush_files(true));
        host.flush(false).expect("commit");
        assert_eq!(entry(&host, "d/a.md"), None);
        assert!(!host.flush_soon());
    }

    /// A batch that frees a path and reuses it (a conflict copy moved away and the
    /// peer's file written there, a swap of two names): the write is what the path holds,
    /// unflushed, and its entry stays until it is flushed.
    #[test]
    fn a_removal_then_a_write_of_one_path_in_a_batch_waits_for_the_flush_of_the_write() {
        let (dir, mut host) = host();
        let (one, two) = (b"one\n", b"two\n");
        assert_eq!(write(&mut host, "a.md", one, None), Outcome::Done);
        assert!(host.flush_files(true));
        host.flush(false).expect("commit");
        assert_eq!(entry(&host, "a.md"), None);

        let h1 = cue_core::file_hash(one, false);
        let files = [
            Effect::RemoveFile {
                path: "a.md".into(),
                expect: Some(h1),
            },
            Effect::WriteFile {
                path: "a.md".into(),
                bytes: two.to_vec(),
                exec: false,
                expect: None,
            },
        ];
        host.commit(Vec::new(), Vec::new(), &files, true)
            .expect("commit");
        assert_eq!(
            host.remove_if("a.md", h1).expect("remove"),
            Some(Outcome::Done)
        );
        assert_eq!(
            host.write_if("a.md", two, false, None).expect("write"),
            Outcome::Done
        );
        host.files_done(&files);
        host.flush(false).expect("commit");
        assert_eq!(std::fs::read(dir.path().join("a.md")).expect("read"), two);
        assert!(host.flush_soon(), "the write waits for its flush");
        assert!(entry(&host, "a.md").is_some(), "journaled until flushed");
        assert!(host.flush_files(true));
        host.flush(false).expect("commit");
        assert_eq!(entry(&host, "a.md"), None);
    }

    /// A flush that fails is not trusted when tried again (Linux reports a failed
    /// write-back once): the file is written again, the same bytes under a new inode,
    /// flushed; a file the user put there since is not.
    #[test]
    fn a_file_whose_flush_failed_is_written_again_whole() {
        let (dir, mut host) = host();
        assert_eq!(write(&mut host, "a.md", b"one\n", None), Outcome::Done);
        let rel = WorkspacePath::parse("a.md").expect("path");
        let before = host.fs.stat(&rel).expect("stat").expect("there").ino;
        assert!(host.write_again("a.md", &rel));
        assert_eq!(
            std::fs::read(dir.path().join("a.md")).expect("read"),
            b"one\n"
        );
        assert_ne!(
            host.fs.stat(&rel).expect("stat").expect("there").ino,
            before
        );

        std::fs::remove_file(dir.path().join("a.md")).expect("rm");
        std::fs::write(dir.path().join("a.md"), b"the user's\n").expect("write");
        assert!(!host.write_again("a.md", &rel), "not the file written");

        // Edited in place since (a later time): left alone, not copied half saved.
        assert_eq!(write(&mut host, "b.md", b"two\n", None), Outcome::Done);
        let b = WorkspacePath::parse("b.md").expect("path");
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("b.md"))
            .expect("open");
        std::io::Write::write_all(&mut &file, b"typing").expect("write");
        file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(1))
            .expect("mtime");
        let ino = host.fs.stat(&b).expect("stat").expect("there").ino;
        assert!(!host.write_again("b.md", &b), "being saved in place");
        assert_eq!(host.fs.stat(&b).expect("stat").expect("there").ino, ino);

        // Not what cue wrote (pages read back stale after a failed write-back), though
        // the same inode and time: never made durable as the file's content.
        assert_eq!(write(&mut host, "c.md", b"three\n", None), Outcome::Done);
        let c = WorkspacePath::parse("c.md").expect("path");
        let written = std::fs::metadata(dir.path().join("c.md"))
            .expect("stat")
            .modified()
            .expect("mtime");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("c.md"))
            .expect("open");
        std::io::Write::write_all(&mut &file, b"\0\0\0").expect("write");
        file.set_modified(written).expect("mtime");
        assert!(!host.write_again("c.md", &c), "not what was written");
    }

    /// A write that replaced a file a program had just written (fed back and merged)
    /// journals that content too: left by a power cut, it is not merged a second time.
    #[test]
    fn what_a_write_replaced_unseen_is_journaled_with_it() {
        let (_dir, mut host) = host();
        let files = [Effect::WriteFile {
            path: "a.md".into(),
            bytes: b"one\n".to_vec(),
            exec: false,
            expect: None,
        }];
        host.commit(Vec::new(), Vec::new(), &files, true)
            .expect("commit");
        assert_eq!(
            host.write_if("a.md", b"one\n", false, None).expect("write"),
            Outcome::Done
        );
        // As `write_if` notes a replaced edit (the race cannot be timed in a test).
        let edit = cue_core::file_hash(b"a program's line\n", false);
        host.over_edits.insert("a.md".into(), edit);
        host.files_done(&files);
        let e = entry(&host, "a.md").expect("journaled");
        assert!(
            e.done_in.is_some() && e.before.contains(&Some(edit)),
            "{e:?}"
        );
    }

    /// A batch of many writes names its staged files in the journal before renaming
    /// them, but only for a path whose last effect in the batch that write is: a later
    /// effect on the path (written a part later, after a removal cut the batch's writes
    /// in two) would make a start take the first write for the last.
    #[test]
    fn a_batch_names_only_the_files_that_are_their_paths_last_effect() {
        let (_dir, mut host) = host();
        let write = |path: &str, bytes: &[u8]| Effect::WriteFile {
            path: path.into(),
            bytes: bytes.to_vec(),
            exec: false,
            expect: None,
        };
        let mut files: Vec<Effect> = (0..8)
            .map(|i| write(&format!("n{i}.md"), b"one\n"))
            .collect();
        files.push(Effect::RemoveFile {
            path: "gone.md".into(),
            expect: Some([1; 32]),
        });
        files.push(write("n0.md", b"two\n"));
        host.commit(Vec::new(), Vec::new(), &files, true)
            .expect("commit");
        let part: Vec<Write> = files[..8]
            .iter()
            .filter_map(|e| match e {
                Effect::WriteFile {
                    path,
                    bytes,
                    exec,
                    expect,
                } => Some(Write {
                    path: path.clone(),
                    bytes: bytes.clone(),
                    exec: *exec,
                    expect: *expect,
                }),
                _ => None,
            })
            .collect();
        let outcomes = host.write_many(&part);
        assert!(outcomes.iter().all(|o| matches!(o, Ok(Outcome::Done))));
        assert!(entry(&host, "n1.md").expect("journaled").prepared.is_some());
        assert!(
            entry(&host, "n0.md").expect("journaled").prepared.is_none(),
            "n0.md is written again later in the batch"
        );
    }

    /// A file put in place and moved away before the flush (`mv a.md c.md` within the
    /// second), or replaced, is flushed where it is, through what was held open for it;
    /// no search, no `syncfs`. At a start, where only the journal's inodes are known, a
    /// path that holds none of them is reached by one `syncfs`.
    #[test]
    fn a_file_moved_away_before_its_flush_is_flushed_where_it_went() {
        let (dir, mut host) = host();
        assert_eq!(write(&mut host, "a.md", b"one\n", None), Outcome::Done);
        assert_eq!(write(&mut host, "b.md", b"two\n", None), Outcome::Done);
        std::fs::rename(dir.path().join("a.md"), dir.path().join("c.md")).expect("mv");
        std::fs::rename(dir.path().join("b.md"), dir.path().join("d.md")).expect("mv");
        std::fs::write(dir.path().join("b.md"), b"the user's\n").expect("write");
        let inodes = host.unflushed["a.md"].inodes();
        assert!(host.flush_files(true));
        assert_eq!(host.fs.syncfs_calls(), 0);
        assert!(host.unflushed.is_empty() && host.unflushed_files.is_empty());
        host.flush(false).expect("commit");
        assert_eq!(entry(&host, "a.md"), None);

        // By path (a start): the file at the path is not one written there.
        let rel = WorkspacePath::parse("a.md").expect("path");
        assert!(host.fs.flush_files(&[(rel.clone(), inodes.clone())])[0].is_ok());
        assert_eq!(host.fs.syncfs_calls(), 1, "moved away");
        std::fs::rename(dir.path().join("c.md"), dir.path().join("a.md")).expect("mv back");
        assert!(host.fs.flush_files(&[(rel, inodes)])[0].is_ok());
        assert_eq!(host.fs.syncfs_calls(), 1, "at its path");
    }

    /// Files written again and again before a flush hold two descriptors each until
    /// flushed: past [`UNFLUSHED_AT_MOST`] files they are flushed at once, however few
    /// the paths, so a busy workspace cannot run the daemon out of descriptors.
    #[test]
    fn files_held_open_for_their_flush_stay_bounded() {
        let (_dir, mut host) = host();
        let mut most = 0;
        for round in 0..4 {
            for p in 0..30 {
                let path = format!("n{p}.md");
                let expect = (round > 0)
                    .then(|| cue_core::file_hash(format!("{p} {}\n", round - 1).as_bytes(), false));
                let bytes = format!("{p} {round}\n");
                assert_eq!(
                    write(&mut host, &path, bytes.as_bytes(), expect),
                    Outcome::Done
                );
                most = most.max(host.held_open());
            }
        }
        assert!(most <= UNFLUSHED_AT_MOST, "{most} files held open");
    }

    #[test]
    fn a_path_written_again_before_a_flush_keeps_every_earlier_content_and_file() {
        let (dir, mut host) = host();
        let (one, two) = (b"one\n", b"two\n");
        assert_eq!(write(&mut host, "a.md", one, None), Outcome::Done);
        let first = host
            .unflushed
            .get("a.md")
            .expect("unflushed")
            .written
            .clone();
        let h1 = cue_core::file_hash(one, false);
        assert_eq!(write(&mut host, "a.md", two, Some(h1)), Outcome::Done);
        assert_eq!(std::fs::read(dir.path().join("a.md")).expect("read"), two);
        let e = entry(&host, "a.md").expect("journaled until flushed");
        let h2 = cue_core::file_hash(two, false);
        assert_eq!(e.before, vec![None, Some(h1), Some(h2)]);
        assert_eq!(e.written.len(), 2);
        assert_eq!(e.written[0], first[0]);

        // A write refused over them (the disk holds something else) keeps the entry.
        let wrong = cue_core::file_hash(b"not what is there\n", false);
        assert_eq!(
            write(&mut host, "a.md", b"three\n", Some(wrong)),
            Outcome::Unexpected
        );
        host.flush(true).expect("commit");
        let e = entry(&host, "a.md").expect("still journaled");
        assert!(
            e.before.contains(&None) && e.before.contains(&Some(h1)),
            "{e:?}"
        );

        // Flushed: the entry goes with the next commit.
        assert!(host.flush_files(true));
        host.flush(false).expect("commit");
        assert_eq!(entry(&host, "a.md"), None);
        assert!(host.unflushed.is_empty());
    }

    #[test]
    fn journal_entries_read_back_in_both_layouts() {
        let entries = [
            JournalEntry {
                before: vec![None],
                ..JournalEntry::default()
            },
            JournalEntry {
                before: vec![Some([7; 32]), None, Some([9; 32])],
                written: vec![
                    fsio::FileId {
                        ino: 42,
                        mtime_ns: -3,
                    },
                    fsio::FileId {
                        ino: 43,
                        mtime_ns: 1 << 60,
                    },
                ],
                done_in: Some(b"a boot".to_vec()),
                prepared: Some(PreparedAs {
                    temp: ".cue-tmp-12-3".to_string(),
                    boot: b"a boot".to_vec(),
                    id: fsio::FileId {
                        ino: 43,
                        mtime_ns: 1 << 60,
                    },
                }),
            },
            JournalEntry {
                before: vec![Some([1; 32])],
                prepared: Some(PreparedAs {
                    temp: ".cue-tmp-12-4".to_string(),
                    boot: Vec::new(),
                    id: fsio::FileId {
                        ino: 7,
                        mtime_ns: 0,
                    },
                }),
                ..JournalEntry::default()
            },
        ];
        for e in &entries {
            assert_eq!(JournalEntry::decode(&e.encode()).as_ref(), Some(e));
        }
        // Written by earlier versions: the content before, or nothing.
        assert_eq!(
            JournalEntry::decode(&[5; 32]),
            Some(JournalEntry {
                before: vec![Some([5; 32])],
                ..JournalEntry::default()
            })
        );
        // Written by session 18's version (layout 3, no `prepared`).
        let mut three = JournalEntry {
            prepared: None,
            ..entries[1].clone()
        }
        .encode();
        three[0] = 3;
        assert_eq!(three.pop(), Some(0));
        assert_eq!(
            JournalEntry::decode(&three),
            Some(JournalEntry {
                prepared: None,
                ..entries[1].clone()
            })
        );
        // Written by session 17's version (layout 2, no `done` either).
        let mut two = JournalEntry {
            done_in: None,
            prepared: None,
            ..entries[1].clone()
        }
        .encode();
        two[0] = 2;
        assert_eq!(two.pop(), Some(0));
        assert_eq!(two.pop(), Some(0));
        assert_eq!(
            JournalEntry::decode(&two),
            Some(JournalEntry {
                done_in: None,
                prepared: None,
                ..entries[1].clone()
            })
        );
        // Not a name: damaged.
        let mut not_utf8 = entries[2].encode();
        let last_of_name = not_utf8.len() - 18; // (then the boot's length, 0, and the file)
        not_utf8[last_of_name] = 0xff;
        assert_eq!(JournalEntry::decode(&not_utf8), None);
        // A name too long to keep is not kept (cut short it would name another file).
        let long_name = JournalEntry {
            prepared: Some(PreparedAs {
                temp: format!(".cue-tmp-{}", "x".repeat(300)),
                boot: Vec::new(),
                id: fsio::FileId::default(),
            }),
            ..entries[2].clone()
        };
        assert_eq!(
            JournalEntry::decode(&long_name.encode()),
            Some(JournalEntry {
                prepared: None,
                ..entries[2].clone()
            })
        );
        assert_eq!(JournalEntry::decode(&[]), Some(entries[0].clone()));
        // Damaged: cut short, or trailing bytes.
        let mut long = entries[1].encode();
        assert_eq!(JournalEntry::decode(&long[..long.len() - 1]), None);
        long.push(0);
        assert_eq!(JournalEntry::decode(&long), None);
    }
}
