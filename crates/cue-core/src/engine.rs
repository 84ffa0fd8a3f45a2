//! The sync engine: a state machine that takes inputs and returns effects.
//!
//! The daemon (and the simulation) owns the IO: it feeds [`Input`]s with the current time
//! and a [`DocStore`] to read persisted documents from, and carries out the [`Effect`]s in
//! order. Effects come out in a fixed order: persistence first, then file writes, then
//! messages. A driver must make the persistence durable before sending, so that a change
//! a peer has seen is never lost in a crash.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, Change, ChangeHash};
use serde::{Deserialize, Serialize};

use crate::doc::{DocError, FieldConflict, FileDoc};
use crate::ids::{ContentHash, DeviceId, DocId, FileId, content_hash};
use crate::index::{ConflictKind, ConflictRecord, IndexDoc, Tombstone};
use crate::paths::valid_path;
use crate::wire::{self, Heads, Item};

/// Engine settings (the `[sync]` section of the config, in engine units).
#[derive(Debug, Clone)]
pub struct Config {
    /// A gap longer than this since the last sync with any peer makes the next catch-up
    /// a full resync.
    pub max_offline_ms: i64,
    /// Deleted files can be restored for this long; then they are forgotten.
    pub tombstone_ms: i64,
    /// Larger files are not synced and are listed as skipped.
    pub max_file_size: u64,
    /// How many file documents to keep loaded.
    pub cache_docs: usize,
    /// How often to re-announce our digest so that lost messages heal.
    pub anti_entropy_ms: i64,
    /// A catch-up with no answer for this long is abandoned and retried.
    pub pull_timeout_ms: i64,
    /// The largest engine message to send (the relay's limit minus envelope overhead).
    pub max_message_bytes: usize,
    /// Compact a document's stored form after this many incremental saves.
    pub compact_after: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_offline_ms: 7 * 24 * 3600 * 1000,
            tombstone_ms: 7 * 24 * 3600 * 1000,
            max_file_size: 16 * 1024 * 1024,
            cache_docs: 256,
            anti_entropy_ms: 30_000,
            pull_timeout_ms: 60_000,
            max_message_bytes: 1024 * 1024 - 4096,
            compact_after: 64,
        }
    }
}

/// Where the engine reads persisted documents from. Writes go out as [`Effect::Persist`].
pub trait DocStore {
    /// The stored bytes of a document (a snapshot, possibly followed by incremental
    /// saves), or `None` if it was never stored.
    fn load(&mut self, doc: &DocId) -> Option<Vec<u8>>;

    /// The bytes at `path` on disk if they hash to `hash`, else `None`. Lets a document
    /// go to a new peer with its content (`Item::Adopt`) without loading it. A store that
    /// cannot read the disk keeps the default, and such documents go as `Item::Whole`.
    fn content(&mut self, path: &str, hash: &ContentHash) -> Option<Vec<u8>> {
        let _ = (path, hash);
        None
    }
}

/// Something that happened that the engine must know of.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file's content on disk, seen at start-up or after a save.
    FileChanged { path: String, content: Vec<u8> },
    /// A [`Effect::WriteFile`] or [`Effect::RemoveFile`] was not carried out because the
    /// disk did not hold what the engine expected: the user saved something the watcher
    /// has not reported yet. This is that content; it is merged as an edit of the version
    /// that was on disk before the refused write.
    WriteRefused { path: String, content: Vec<u8> },
    /// A file larger than `max_file_size`: not synced, listed as skipped.
    FileTooLarge { path: String, size: u64 },
    /// A file is gone from disk.
    FileRemoved { path: String },
    /// A file moved (its content at the new place included, as it may have changed too).
    FileRenamed {
        from: String,
        to: String,
        content: Vec<u8>,
    },
    /// We reached the relay (and so any peer that is online).
    Connected,
    /// We lost the relay: every peer is offline now.
    Disconnected,
    /// A peer left the relay room.
    PeerLeft { device: DeviceId },
    /// An engine message from a peer (already verified and decrypted by the driver).
    Message { from: DeviceId, bytes: Vec<u8> },
    /// A device proved it holds the workspace invite: make it a member.
    Admit { device: DeviceId, name: String },
    /// Time passed (drives re-announcements, timeouts, tombstone expiry, compaction).
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// Store a document: `snapshot` replaces what is stored, otherwise `bytes` is
    /// appended. `meta` is the engine's record of the file, stored beside it.
    Doc {
        doc: DocId,
        bytes: Vec<u8>,
        snapshot: bool,
        meta: Vec<u8>,
    },
    DeleteDoc {
        doc: DocId,
    },
    /// The engine's own small state (peers, sync times, pending changes).
    State {
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Persist(Persist),
    /// Write `bytes` to `path`. `expect` is what the engine believes is there now (`None`:
    /// nothing). If the disk holds something else, the driver must not write: it feeds
    /// the disk's content back as [`Input::FileChanged`] and the engine merges it first.
    WriteFile {
        path: String,
        bytes: Vec<u8>,
        expect: Option<ContentHash>,
    },
    /// Remove `path` if it still holds `expect`.
    RemoveFile {
        path: String,
        expect: Option<ContentHash>,
    },
    /// Send an engine message to one peer, or to all (`to: None`).
    Send {
        to: Option<DeviceId>,
        bytes: Vec<u8>,
    },
    Activity(Activity),
}

/// The kinds of activity-log entries (DESIGN §2); the engine emits them and the
/// daemon's store keeps them by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivityKind {
    LocalChange,
    RemoteChange,
    Delete,
    Restore,
    Rename,
    Conflict,
    FullResync,
    PeerJoined,
    PeerLeft,
    Error,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 10] = [
        ActivityKind::LocalChange,
        ActivityKind::RemoteChange,
        ActivityKind::Delete,
        ActivityKind::Restore,
        ActivityKind::Rename,
        ActivityKind::Conflict,
        ActivityKind::FullResync,
        ActivityKind::PeerJoined,
        ActivityKind::PeerLeft,
        ActivityKind::Error,
    ];

    pub fn parse(s: &str) -> Option<ActivityKind> {
        ActivityKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The name used in the store and in `activity log --json`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActivityKind::LocalChange => "local_change",
            ActivityKind::RemoteChange => "remote_change",
            ActivityKind::Delete => "delete",
            ActivityKind::Restore => "restore",
            ActivityKind::Rename => "rename",
            ActivityKind::Conflict => "conflict",
            ActivityKind::FullResync => "full_resync",
            ActivityKind::PeerJoined => "peer_joined",
            ActivityKind::PeerLeft => "peer_left",
            ActivityKind::Error => "error",
        }
    }
}

impl std::fmt::Display for ActivityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub time_ms: i64,
    pub kind: ActivityKind,
    pub path: Option<String>,
    /// The name of the device that did it.
    pub device: String,
    pub detail: Option<String>,
}

/// Bad input the engine refused, counted by kind (it never panics on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub bad_messages: u64,
    pub bad_changes: u64,
    pub bad_documents: u64,
    pub bad_paths: u64,
    pub dropped_chunks: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("{0} was never deleted, or its tombstone has expired (see `cue activity log`)")]
    NotDeleted(String),
    #[error("{0} exists; move it away before restoring the deleted file")]
    PathTaken(String),
    #[error("no open conflict is reported for {0} (see `cue sync status`)")]
    NoConflict(String),
    #[error("the document for {0} is not available: {1}")]
    Unavailable(String, String),
}

/// What the engine records about each file, persisted beside its document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub heads: Heads,
    /// Hash and size of the bytes the document materialises to (`None`: not yet known).
    pub doc_hash: Option<ContentHash>,
    pub size: u64,
    /// What we believe is on disk for this file: its path and content hash.
    pub disk: Option<(String, ContentHash)>,
    /// The document heads whose content is on disk: a local edit is an edit of that
    /// version.
    pub disk_heads: Heads,
    /// `disk_heads` before the last write we asked for, in case it is refused.
    pub prev_disk_heads: Heads,
    pub increments: u32,
    /// Our changes to this document that no peer has confirmed yet (change hashes,
    /// sorted). Kept here rather than in the engine's state, which is rewritten whole:
    /// there, 10,000 imported files nobody had confirmed made every save rewrite 0.8 MB.
    pub pending: Heads,
}

/// The first layout of [`FileMeta`] records (before `pending`), still read.
#[derive(Serialize, Deserialize)]
struct FileMetaV1 {
    heads: Heads,
    doc_hash: Option<ContentHash>,
    size: u64,
    disk: Option<(String, ContentHash)>,
    disk_heads: Heads,
    prev_disk_heads: Heads,
    increments: u32,
}

/// The first byte of a [`FileMeta`] stored in its compact form. A record of the first
/// layout starts with the varint count of its heads, and would start with this byte only
/// with at least 127 heads; if one ever did, it fails to decode as the compact form and
/// is read the old way.
const META_COMPACT: u8 = 0xFF;

/// A [`FileMeta`] as stored: without the two copies it almost always holds (`disk_heads`
/// equal to `heads`, `doc_hash` equal to the hash on disk), which took 64 of its 160
/// bytes a file.
#[derive(Serialize, Deserialize)]
struct CompactMeta {
    heads: Heads,
    doc_hash: StoredHash,
    size: u64,
    disk: Option<(String, ContentHash)>,
    /// `None`: the same as `heads`.
    disk_heads: Option<Heads>,
    prev_disk_heads: Heads,
    increments: u32,
    /// `None`: the same as `heads` (the usual case after a local edit).
    pending: Option<Heads>,
}

#[derive(Serialize, Deserialize)]
enum StoredHash {
    Unknown,
    AsOnDisk,
    Own(ContentHash),
}

fn encode_meta(m: &FileMeta) -> Vec<u8> {
    let disk_hash = m.disk.as_ref().map(|(_, h)| h);
    let compact = CompactMeta {
        heads: m.heads.clone(),
        doc_hash: match &m.doc_hash {
            None => StoredHash::Unknown,
            Some(h) if Some(h) == disk_hash => StoredHash::AsOnDisk,
            Some(h) => StoredHash::Own(*h),
        },
        size: m.size,
        disk: m.disk.clone(),
        disk_heads: (m.disk_heads != m.heads).then(|| m.disk_heads.clone()),
        prev_disk_heads: m.prev_disk_heads.clone(),
        increments: m.increments,
        pending: (!same_set(&m.pending, &m.heads)).then(|| m.pending.clone()),
    };
    let mut bytes = vec![META_COMPACT];
    bytes.extend(postcard::to_allocvec(&compact).unwrap_or_default());
    bytes
}

fn decode_meta(bytes: &[u8]) -> Option<FileMeta> {
    if let Some((&META_COMPACT, rest)) = bytes.split_first()
        && let Ok(c) = postcard::from_bytes::<CompactMeta>(rest)
    {
        let doc_hash = match c.doc_hash {
            StoredHash::Unknown => None,
            StoredHash::AsOnDisk => c.disk.as_ref().map(|(_, h)| *h),
            StoredHash::Own(h) => Some(h),
        };
        let mut pending = c.pending.unwrap_or_else(|| c.heads.clone());
        pending.sort_unstable();
        return Some(FileMeta {
            disk_heads: c.disk_heads.unwrap_or_else(|| c.heads.clone()),
            pending,
            heads: c.heads,
            doc_hash,
            size: c.size,
            disk: c.disk,
            prev_disk_heads: c.prev_disk_heads,
            increments: c.increments,
        });
    }
    let old = postcard::from_bytes::<FileMetaV1>(bytes).ok()?;
    Some(FileMeta {
        heads: old.heads,
        doc_hash: old.doc_hash,
        size: old.size,
        disk: old.disk,
        disk_heads: old.disk_heads,
        prev_disk_heads: old.prev_disk_heads,
        increments: old.increments,
        pending: Vec::new(),
    })
}

fn same_set(a: &Heads, b: &Heads) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PeerRecord {
    last_sync_ms: Option<i64>,
}

/// What was added to the persisted state after its first layout: stored after it, so
/// that a state written before it still decodes (postcard is not self-describing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateTail {
    /// Documents adopted with the content their sender said they render to, not yet
    /// checked against that content (see [`Item::Adopt`]).
    unverified: BTreeSet<FileId>,
}

/// Added after [`StateTail`], after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateTail2 {
    index_pending: IndexPending,
}

/// Our changes to the index that no peer has confirmed. They form a chain (each of our
/// changes depends on our previous one), so a peer that has one has every earlier one:
/// what is pending is always the last `count` of them, and the latest names them all.
/// Kept as a count rather than the hashes, which grew the state by 32 bytes for every
/// file created until a peer answered (0.3 MB after importing 10,000 files, rewritten on
/// each later creation, rename or deletion).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct IndexPending {
    count: u64,
    latest: Option<[u8; 32]>,
}

fn encode_state(state: &State, tail: &StateTail, tail2: &StateTail2) -> Vec<u8> {
    let mut bytes = postcard::to_allocvec(state).unwrap_or_default();
    bytes.extend(postcard::to_allocvec(tail).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail2).unwrap_or_default());
    bytes
}

fn decode_state(bytes: &[u8]) -> Option<(State, StateTail, StateTail2)> {
    let (state, rest) = postcard::take_from_bytes::<State>(bytes).ok()?;
    if rest.is_empty() {
        return Some((state, StateTail::default(), StateTail2::default()));
    }
    let (tail, rest) = postcard::take_from_bytes::<StateTail>(rest).ok()?;
    let tail2 = if rest.is_empty() {
        StateTail2::default()
    } else {
        postcard::from_bytes(rest).ok()?
    };
    Some((state, tail, tail2))
}

/// The engine's own persisted state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    last_workspace_sync_ms: Option<i64>,
    last_full_resync_ms: Option<i64>,
    peers: BTreeMap<DeviceId, PeerRecord>,
    /// Unconfirmed changes by document, as states of an earlier layout kept them: `new`
    /// moves them to the files' records and [`IndexPending`], and it stays empty.
    unconfirmed: BTreeMap<DocId, BTreeSet<[u8; 32]>>,
    skipped: BTreeMap<String, u64>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct PeerLive {
    online: bool,
    digest: Option<[u8; 32]>,
    /// The digest we last pulled from this peer at, and when: a peer is not asked again
    /// for the same state until the anti-entropy interval has passed.
    last_pull: Option<([u8; 32], i64)>,
    chunks: BTreeMap<u64, ChunkBuf>,
}

#[derive(Debug)]
struct ChunkBuf {
    total: u32,
    parts: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct ActivePull {
    peer: DeviceId,
    id: u64,
    started_ms: i64,
    full: bool,
    changed: bool,
}

/// Everything a restarted engine needs besides its documents (loaded on demand).
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub state: Option<Vec<u8>>,
    pub index: Option<Vec<u8>>,
    pub metas: Vec<(FileId, Vec<u8>)>,
}

/// A conflict as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictInfo {
    pub id: String,
    pub kind: ConflictKind,
    pub path: String,
    pub copy: Option<String>,
    pub detail: String,
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub device: DeviceId,
    pub name: String,
    pub online: bool,
    pub last_sync_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub files: usize,
    pub pending_changes: usize,
    pub conflicts: Vec<ConflictInfo>,
    pub skipped: Vec<(String, u64)>,
    pub peers: Vec<PeerInfo>,
    pub last_full_resync_ms: Option<i64>,
    pub connected: bool,
    pub syncing: bool,
    /// The catch-up with a peer under way, if one is (what a first sync shows).
    pub catch_up: Option<CatchUp>,
    /// Files received with their content and not yet checked against their documents.
    pub unverified: usize,
}

/// How far a catch-up with a peer has got. The peer's index comes first in its answer,
/// so the total is known early; the held count grows as the documents arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    pub peer: DeviceId,
    /// Whole documents after a long absence (a full resync).
    pub full: bool,
    /// Live files whose document is held here.
    pub files_held: usize,
    /// Files the index names that are not deleted (at least `files_held`).
    pub files_total: usize,
}

/// Above this, a reassembled chunked item is refused (a file is at most
/// `max_file_size`; its document a little more).
const MAX_CHUNKED_ITEM: usize = 64 * 1024 * 1024;
const MAX_PARTIAL_ITEMS_PER_PEER: usize = 16;
/// Adopted documents checked per tick: ~4 ms each for a 4 KB note, so a tick stays short
/// and 1,000 adopted files are checked within a minute at the daemon's tick rate.
const VERIFY_PER_TICK: usize = 8;
/// Documents stored whole again per tick, and after how many increments.
const COMPACT_PER_TICK: usize = 4;
const COMPACT_WHEN_TICKING_AFTER: u32 = 8;
/// Once nothing has happened for this long, every document with increments (and the
/// index) is stored whole: at rest a store holds one snapshot a document. A snapshot of
/// a cached document costs a `save()` (≈0.1 ms for a 4 KB note).
const COMPACT_AT_REST_AFTER_MS: i64 = 2_000;

#[derive(Debug)]
pub struct Engine {
    device: DeviceId,
    name: String,
    actor: ActorId,
    config: Config,
    index: IndexDoc,
    index_dirty: bool,
    index_increments: u32,
    metas: BTreeMap<FileId, FileMeta>,
    cache: BTreeMap<FileId, (FileDoc, u64)>,
    use_clock: u64,
    dirty: BTreeSet<FileId>,
    state: State,
    state_dirty: bool,
    peers: BTreeMap<DeviceId, PeerLive>,
    connected: bool,
    pull: Option<ActivePull>,
    next_pull_id: u64,
    next_chunk_id: u64,
    new_file_counter: u64,
    last_hello_ms: i64,
    digest: Option<[u8; 32]>,
    now_ms: i64,
    /// When an input other than a tick last arrived (compaction at rest waits for quiet).
    last_input_ms: i64,
    // Output being built during one call.
    out_files: Vec<Effect>,
    out_activity: Vec<Effect>,
    out_items: BTreeMap<Option<DeviceId>, Vec<Item>>,
    /// Files whose disk state must be brought in line with their document.
    to_reconcile: BTreeSet<FileId>,
    index_changed: bool,
    live_cache: Option<BTreeMap<FileId, String>>,
    /// Whole documents received for files we did not have: stored as received.
    adopted: BTreeMap<FileId, Vec<u8>>,
    /// Content that came with adopted documents, until it is written to disk.
    adopted_content: BTreeMap<FileId, Vec<u8>>,
    tail: StateTail,
    tail2: StateTail2,
}

fn to_heads(h: &[ChangeHash]) -> Heads {
    let mut v: Heads = h.iter().map(|c| c.0).collect();
    v.sort();
    v
}

fn from_heads(h: &Heads) -> Vec<ChangeHash> {
    h.iter().map(|b| ChangeHash(*b)).collect()
}

/// The actor id for a device in one run: the device id's first 16 bytes and an epoch the
/// driver increments at every start. A crash can lose a change that was made but not
/// stored; a new epoch means the next change can never reuse its sequence number.
pub fn actor_for(device: &DeviceId, epoch: u32) -> ActorId {
    let mut bytes = device.0[..16].to_vec();
    bytes.extend_from_slice(&epoch.to_be_bytes());
    ActorId::from(bytes)
}

/// Whether `actor` is one of `device`'s, in any epoch (see [`actor_for`]).
fn made_by(device: &DeviceId, actor: &ActorId) -> bool {
    actor.to_bytes().starts_with(&device.0[..16])
}

/// The conflict copy's name: `<stem>.conflict-<device>-<6 hex>.<ext>` (DESIGN §3), with a
/// counter when that name is taken.
pub fn conflict_copy_name(
    path: &str,
    device_name: &str,
    device: &DeviceId,
    taken: &dyn Fn(&str) -> bool,
) -> String {
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let base = format!("{dir}{stem}.conflict-{device_name}-{}", device.short());
    let mut candidate = format!("{base}{ext}");
    let mut n = 2;
    while taken(&candidate) {
        candidate = format!("{base}-{n}{ext}");
        n += 1;
    }
    candidate
}

impl Engine {
    /// Start an engine for `device`. `restored` is what a previous run persisted (empty
    /// for a new workspace or a join).
    pub fn new(
        device: DeviceId,
        name: &str,
        epoch: u32,
        config: Config,
        restored: Restored,
        now_ms: i64,
    ) -> (Engine, Vec<Effect>) {
        let actor = actor_for(&device, epoch);
        let mut counters_err = 0u64;
        let mut index = match restored
            .index
            .as_deref()
            .map(|b| IndexDoc::load(b, actor.clone()))
        {
            Some(Ok(idx)) => idx,
            Some(Err(_)) => {
                counters_err += 1;
                IndexDoc::new(actor.clone())
            }
            None => IndexDoc::new(actor.clone()),
        };
        let (mut state, tail, mut tail2) = restored
            .state
            .as_deref()
            .and_then(decode_state)
            .unwrap_or_default();
        state.counters.bad_documents += counters_err;
        let mut metas = BTreeMap::new();
        for (id, bytes) in restored.metas {
            match decode_meta(&bytes) {
                Some(m) => {
                    metas.insert(id, m);
                }
                None => state.counters.bad_documents += 1,
            }
        }
        let mut moved = BTreeSet::new();
        let older_layout = !state.unconfirmed.is_empty();
        state.unconfirmed.retain(|doc, hashes| match doc {
            DocId::Index => {
                // The latest is the one with the highest operation counter.
                let latest = hashes
                    .iter()
                    .filter_map(|h| {
                        let change = index.change_by_hash(&ChangeHash(*h))?;
                        Some((change.max_op(), *h))
                    })
                    .max()
                    .map(|(_, h)| h);
                tail2.index_pending = IndexPending {
                    count: hashes.len() as u64,
                    latest,
                };
                false
            }
            DocId::File(f) => {
                if let Some(m) = metas.get_mut(f) {
                    m.pending.extend(hashes.iter());
                    m.pending.sort_unstable();
                    m.pending.dedup();
                    moved.insert(*f);
                }
                false
            }
        });
        let mut engine = Engine {
            device,
            name: name.to_string(),
            actor,
            config,
            index,
            index_dirty: false,
            index_increments: 0,
            metas,
            cache: BTreeMap::new(),
            use_clock: 0,
            // Files whose pending changes came out of an older state are stored with
            // them, in the same transaction as the state without them.
            state_dirty: older_layout,
            dirty: moved,
            state,
            peers: BTreeMap::new(),
            connected: false,
            pull: None,
            next_pull_id: 1,
            next_chunk_id: 1,
            new_file_counter: 0,
            last_hello_ms: now_ms,
            digest: None,
            now_ms,
            last_input_ms: now_ms,
            out_files: Vec::new(),
            out_activity: Vec::new(),
            out_items: BTreeMap::new(),
            to_reconcile: BTreeSet::new(),
            index_changed: false,
            live_cache: None,
            adopted: BTreeMap::new(),
            adopted_content: BTreeMap::new(),
            tail,
            tail2,
        };
        // Make sure we are in our own member list (a new workspace, or a renamed device).
        if engine.index.members().get(&device) != Some(&engine.name) {
            let _ = engine.index.set_member(&device, name);
            engine.commit_index();
        }
        // No documents can be read here (no store yet): the disk is brought in line with
        // them on the first input, which comes with the store.
        let effects = engine.effects();
        (engine, effects)
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.index.members().contains_key(device)
    }

    pub fn members(&self) -> BTreeMap<DeviceId, String> {
        self.index.members()
    }

    pub fn set_max_message_bytes(&mut self, max: usize) {
        self.config.max_message_bytes = max;
    }

    /// Handle one input at time `now_ms`.
    pub fn handle(&mut self, now_ms: i64, input: Input, store: &mut dyn DocStore) -> Vec<Effect> {
        self.handle_batch(now_ms, [input], store)
    }

    /// Handle several inputs at time `now_ms`, settling once after the last: the same
    /// outcome as handling them one by one, but the work that looks at every file (the
    /// disk brought in line after the index changed, the state written) is done once,
    /// not once per input. Importing 10,000 files one input at a time is quadratic.
    pub fn handle_batch(
        &mut self,
        now_ms: i64,
        inputs: impl IntoIterator<Item = Input>,
        store: &mut dyn DocStore,
    ) -> Vec<Effect> {
        self.now_ms = now_ms;
        for input in inputs {
            self.dispatch(input, store);
        }
        self.finish(store)
    }

    fn dispatch(&mut self, input: Input, store: &mut dyn DocStore) {
        if !matches!(input, Input::Tick) {
            self.last_input_ms = self.now_ms;
        }
        match input {
            Input::FileChanged { path, content } => self.local_change(&path, content, store),
            Input::WriteRefused { path, content } => {
                if let Some(f) = self.file_at(&path)
                    && let Some(m) = self.metas.get_mut(&f)
                {
                    m.disk_heads = std::mem::take(&mut m.prev_disk_heads);
                }
                self.local_change(&path, content, store);
            }
            Input::FileTooLarge { path, size } => {
                self.state.skipped.insert(path, size);
                self.state_dirty = true;
            }
            Input::FileRemoved { path } => self.local_remove(&path, store),
            Input::FileRenamed { from, to, content } => {
                self.local_rename(&from, &to, content, store)
            }
            Input::Connected => {
                self.connected = true;
                self.hello(None, true);
            }
            Input::Disconnected => {
                self.connected = false;
                self.pull = None;
                let online: Vec<DeviceId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.online)
                    .map(|(d, _)| *d)
                    .collect();
                for d in online {
                    self.peer_offline(d);
                }
            }
            Input::PeerLeft { device } => self.peer_offline(device),
            Input::Message { from, bytes } => self.message(from, &bytes, store),
            Input::Admit { device, name } => {
                let members = self.index.members();
                if members.get(&device) != Some(&name) {
                    let _ = self.index.set_member(&device, &name);
                    self.commit_index();
                    if !members.contains_key(&device) {
                        self.activity(
                            ActivityKind::PeerJoined,
                            None,
                            &name,
                            Some("admitted to the workspace".into()),
                        );
                    }
                }
            }
            Input::Tick => self.tick(store),
        }
    }

    // ---------------------------------------------------------------- local changes

    fn file_at(&self, path: &str) -> Option<FileId> {
        self.metas
            .iter()
            .find(|(_, m)| m.disk.as_ref().is_some_and(|(p, _)| p == path))
            .map(|(id, _)| *id)
    }

    fn local_change(&mut self, path: &str, content: Vec<u8>, store: &mut dyn DocStore) {
        if valid_path(path).is_err() {
            self.state.counters.bad_paths += 1;
            self.state_dirty = true;
            return;
        }
        if content.len() as u64 > self.config.max_file_size {
            self.state
                .skipped
                .insert(path.to_string(), content.len() as u64);
            self.state_dirty = true;
            return;
        }
        if self.state.skipped.remove(path).is_some() {
            self.state_dirty = true;
        }
        let hash = content_hash(&content);
        let file = match self
            .file_at(path)
            .or_else(|| self.live_file_with_path(path))
        {
            Some(f) => f,
            None => self.create_file(path),
        };
        if let Some(meta) = self.metas.get_mut(&file) {
            meta.disk = Some((path.to_string(), hash));
            if meta.doc_hash == Some(hash) {
                // Our own write coming back, or a save that changed nothing.
                meta.disk_heads = meta.heads.clone();
                self.dirty.insert(file);
                return;
            }
        }
        let time_s = self.now_ms / 1000;
        let base = self
            .metas
            .get(&file)
            .map(|m| from_heads(&m.disk_heads))
            .unwrap_or_default();
        let result = self.with_doc(file, store, |doc| {
            let new = doc.is_empty();
            Ok(doc.write_at(&base, path, &content, time_s)?.map(|hash| {
                // A new document goes out whole: its `save()` is 30× cheaper than
                // encoding its first change, and a peer adopts it as it comes.
                let doc_id = DocId::File(file);
                // (When the edit was merged with other changes, the document renders to
                // something else than `content`, and goes without it.)
                let item = if new && doc.heads() == [hash] {
                    Some(Item::Adopt {
                        doc: doc_id,
                        bytes: doc.automerge().save(),
                        heads: vec![hash.0],
                        content: content.clone(),
                    })
                } else if new {
                    Some(Item::Whole {
                        doc: doc_id,
                        bytes: doc.automerge().save(),
                    })
                } else {
                    doc.change(&hash).map(|c| Item::Changes {
                        doc: doc_id,
                        changes: vec![c],
                    })
                };
                (hash, item)
            }))
        });
        match result {
            Ok(Some((hash, item))) => {
                self.after_local_change(file, hash, item);
                self.refresh_meta(file, store);
                // The disk now holds exactly our new change's version.
                if let Some(m) = self.metas.get_mut(&file) {
                    m.disk_heads = vec![hash.0];
                }
                // An edit of an older version can meet a remote write it had not seen
                // (binary files: both values stand until a copy keeps the loser).
                self.record_field_conflicts(file, store);
                let name = self.name.clone();
                self.activity(
                    ActivityKind::LocalChange,
                    Some(path.to_string()),
                    &name,
                    None,
                );
            }
            Ok(None) => {}
            Err(e) => self.doc_error(path, &e),
        }
        // A file deleted earlier and written again at the same place is alive again.
        if self.index.tombstone(&file).is_some() {
            let _ = self.index.clear_tombstone(&file);
            self.commit_index();
        }
        self.to_reconcile.insert(file);
    }

    fn create_file(&mut self, path: &str) -> FileId {
        self.new_file_counter += 1;
        let heads = self.index.heads();
        let mut parts: Vec<Vec<u8>> = vec![
            self.device.0.to_vec(),
            self.actor.to_bytes().to_vec(),
            self.new_file_counter.to_le_bytes().to_vec(),
            path.as_bytes().to_vec(),
        ];
        parts.extend(heads.iter().map(|h| h.0.to_vec()));
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let file = FileId::derive("cue file id", &refs);
        let _ = self.index.set_path(&file, path);
        let _ = self.index.set_origin(&file, &self.device);
        self.commit_index();
        self.metas.insert(file, FileMeta::default());
        file
    }

    fn after_local_change(&mut self, file: FileId, hash: ChangeHash, item: Option<Item>) {
        if let Some(m) = self.metas.get_mut(&file)
            && let Err(at) = m.pending.binary_search(&hash.0)
        {
            m.pending.insert(at, hash.0);
        }
        self.dirty.insert(file);
        // `None` is not expected (the change was just made); catch-up would carry it.
        if let Some(item) = item {
            self.broadcast(item);
        }
        self.dirty.insert(file);
        self.digest = None;
    }

    fn local_remove(&mut self, path: &str, store: &mut dyn DocStore) {
        if self.state.skipped.remove(path).is_some() {
            self.state_dirty = true;
        }
        let Some(file) = self.file_at(path) else {
            return;
        };
        let heads = self.doc_heads(file, store);
        if let Some(meta) = self.metas.get_mut(&file) {
            meta.disk = None;
        }
        self.dirty.insert(file);
        let _ = self.index.set_tombstone(
            &file,
            &Tombstone {
                time_ms: self.now_ms,
                heads,
            },
        );
        self.commit_index();
        let name = self.name.clone();
        self.activity(ActivityKind::Delete, Some(path.to_string()), &name, None);
    }

    fn local_rename(&mut self, from: &str, to: &str, content: Vec<u8>, store: &mut dyn DocStore) {
        let Some(file) = self.file_at(from) else {
            self.local_change(to, content, store);
            return;
        };
        if valid_path(to).is_err() {
            self.local_remove(from, store);
            return;
        }
        // A file the rename replaced is deleted.
        if let Some(other) = self.file_at(to)
            && other != file
        {
            self.local_remove(to, store);
        }
        let _ = self.index.set_path(&file, to);
        self.commit_index();
        if let Some((p, _)) = self.metas.get_mut(&file).and_then(|m| m.disk.as_mut()) {
            *p = to.to_string();
        }
        self.dirty.insert(file);
        let name = self.name.clone();
        self.activity(
            ActivityKind::Rename,
            Some(to.to_string()),
            &name,
            Some(format!("from {from}")),
        );
        self.local_change(to, content, store);
    }

    /// Bring back the last content of a deleted file.
    pub fn restore(
        &mut self,
        now_ms: i64,
        path: &str,
        store: &mut dyn DocStore,
    ) -> Result<Vec<Effect>, CommandError> {
        self.now_ms = now_ms;
        let live = self.live_view(store);
        if live.values().any(|p| p == path) {
            return Err(CommandError::PathTaken(path.to_string()));
        }
        let candidate = self
            .index
            .tombstones()
            .into_iter()
            .filter(|(f, _)| self.index.path_of(f).as_deref() == Some(path))
            .max_by_key(|(_, t)| t.time_ms)
            .map(|(f, _)| f)
            .ok_or_else(|| CommandError::NotDeleted(path.to_string()))?;
        let _ = self.index.clear_tombstone(&candidate);
        self.commit_index();
        let name = self.name.clone();
        self.activity(ActivityKind::Restore, Some(path.to_string()), &name, None);
        Ok(self.finish(store))
    }

    /// Mark the conflicts reported for `path` as seen, on every peer.
    pub fn resolve(
        &mut self,
        now_ms: i64,
        path: &str,
        store: &mut dyn DocStore,
    ) -> Result<Vec<Effect>, CommandError> {
        self.now_ms = now_ms;
        let open = self.open_conflicts(store);
        let matching: Vec<&ConflictInfo> = open
            .iter()
            .filter(|c| c.path == path || c.copy.as_deref() == Some(path))
            .collect();
        if matching.is_empty() {
            return Err(CommandError::NoConflict(path.to_string()));
        }
        let records = self.index.conflicts();
        for c in matching {
            if let Some(rec) = records.get(&c.id) {
                let mut rec = rec.clone();
                rec.resolved = true;
                let _ = self.index.put_conflict(&c.id, &rec);
            }
        }
        self.commit_index();
        Ok(self.finish(store))
    }

    // ---------------------------------------------------------------- documents

    fn touch(&mut self) -> u64 {
        self.use_clock += 1;
        self.use_clock
    }

    /// Run `f` on a file's document, loading it if needed.
    fn with_doc<T>(
        &mut self,
        file: FileId,
        store: &mut dyn DocStore,
        f: impl FnOnce(&mut FileDoc) -> Result<T, DocError>,
    ) -> Result<T, DocError> {
        let t = self.touch();
        if !self.cache.contains_key(&file) {
            // An adopted document is persisted only with this call's effects.
            let stored = match self.adopted.get(&file) {
                Some(bytes) => Some(bytes.clone()),
                None => store.load(&DocId::File(file)),
            };
            let doc = match stored {
                Some(bytes) => FileDoc::load(&bytes, self.actor.clone())?,
                None => FileDoc::new(self.actor.clone()),
            };
            self.cache.insert(file, (doc, t));
        }
        let entry = self.cache.get_mut(&file).ok_or(DocError::Shape("cache"))?;
        entry.1 = t;
        f(&mut entry.0)
    }

    fn doc_heads(&mut self, file: FileId, store: &mut dyn DocStore) -> Vec<ChangeHash> {
        if let Some(m) = self.metas.get(&file)
            && !self.cache.contains_key(&file)
        {
            return from_heads(&m.heads);
        }
        self.with_doc(file, store, |d| Ok(d.heads()))
            .unwrap_or_default()
    }

    fn doc_error(&mut self, path: &str, e: &DocError) {
        self.state.counters.bad_documents += 1;
        self.state_dirty = true;
        let name = self.name.clone();
        self.activity(
            ActivityKind::Error,
            Some(path.to_string()),
            &name,
            Some(e.to_string()),
        );
    }

    /// Refresh a file's record after its document changed.
    fn refresh_meta(&mut self, file: FileId, store: &mut dyn DocStore) {
        let r = self.with_doc(file, store, |d| {
            let heads = to_heads(&d.heads());
            let content = if d.is_empty() {
                None
            } else {
                d.materialize().ok()
            };
            Ok((heads, content))
        });
        if let Ok((heads, content)) = r {
            let tombstoned = self.index.tombstone(&file).is_some();
            let meta = self.metas.entry(file).or_default();
            // A file that just got its first content, or a deleted one that changed, may
            // now be alive: path clashes must be looked at again.
            if meta.doc_hash.is_none() || tombstoned {
                self.index_changed = true;
                self.live_cache = None;
            }
            meta.heads = heads;
            meta.doc_hash = content.as_ref().map(|c| content_hash(c));
            meta.size = content.map_or(0, |c| c.len() as u64);
        }
        self.dirty.insert(file);
        self.digest = None;
    }

    fn commit_index(&mut self) {
        if let Some(change) = self.index.commit(self.now_ms / 1000) {
            let pending = &mut self.tail2.index_pending;
            pending.count += 1;
            pending.latest = Some(change.hash().0);
            self.state_dirty = true;
            self.broadcast(Item::Changes {
                doc: DocId::Index,
                changes: vec![change.raw_bytes().to_vec()],
            });
            self.index_dirty = true;
            self.index_changed = true;
            self.live_cache = None;
            self.digest = None;
        }
    }

    // ---------------------------------------------------------------- the view

    /// Is this file alive? Deleted files come back when their document holds an edit
    /// the deleter had not seen.
    fn is_live(&mut self, file: FileId, store: &mut dyn DocStore) -> bool {
        let tomb = self.index.tombstone(&file);
        self.is_live_with(file, tomb.as_ref(), store)
    }

    fn is_live_with(
        &mut self,
        file: FileId,
        tomb: Option<&Tombstone>,
        store: &mut dyn DocStore,
    ) -> bool {
        let Some(meta) = self.metas.get(&file) else {
            return false;
        };
        if meta.doc_hash.is_none() {
            return false;
        }
        let Some(tomb) = tomb else {
            return true;
        };
        let mut seen = tomb.heads.clone();
        seen.sort();
        if to_heads(&seen) == meta.heads {
            return false;
        }
        // Live only if we hold everything the deleter saw (else we are merely behind)
        // and something more.
        self.with_doc(file, store, |d| {
            Ok(tomb
                .heads
                .iter()
                .all(|h| d.automerge().get_change_by_hash(h).is_some()))
        })
        .unwrap_or(false)
    }

    /// Live files and their paths. Cached until the index or a file's liveness changes
    /// (both raise `index_changed`), since reconciling after every input needs it.
    fn live_view(&mut self, store: &mut dyn DocStore) -> BTreeMap<FileId, String> {
        if let Some(view) = &self.live_cache {
            return view.clone();
        }
        let tombs = self.index.tombstones();
        let mut out = BTreeMap::new();
        for (file, path) in self.index.paths() {
            if self.is_live_with(file, tombs.get(&file), store) {
                out.insert(file, path);
            }
        }
        self.live_cache = Some(out.clone());
        out
    }

    /// Two live files at one path: the smallest id keeps it; an identical duplicate is
    /// dropped, a different one becomes a conflict copy (DESIGN §4). Deterministic, so
    /// every peer that sees the clash settles it the same way.
    fn settle_path_clashes(&mut self, store: &mut dyn DocStore) {
        let live = self.live_view(store);
        let mut by_path: BTreeMap<&str, Vec<FileId>> = BTreeMap::new();
        for (f, p) in &live {
            by_path.entry(p.as_str()).or_default().push(*f);
        }
        let taken: BTreeSet<String> = live.values().cloned().collect();
        let copies: BTreeSet<FileId> = self
            .index
            .conflicts()
            .values()
            .filter_map(|c| c.copy.as_ref().map(|(f, _)| *f))
            .collect();
        let mut changed = false;
        let members = self.index.members();
        let mut new_names: BTreeSet<String> = BTreeSet::new();
        for (path, files) in by_path {
            if files.len() < 2 {
                continue;
            }
            let winner = files[0];
            let winner_hash = self.metas.get(&winner).and_then(|m| m.doc_hash);
            for loser in &files[1..] {
                let loser_hash = self.metas.get(loser).and_then(|m| m.doc_hash);
                // Two creations of the same bytes (a folder copied to two machines) are
                // one file. Conflict copies are never merged away this way: they hold a
                // version that lost, and equal bytes at one moment say nothing of later.
                if loser_hash == winner_hash && !copies.contains(loser) && !copies.contains(&winner)
                {
                    let heads = self.doc_heads(*loser, store);
                    let _ = self
                        .index
                        .set_tombstone(loser, &Tombstone { time_ms: 0, heads });
                    changed = true;
                    continue;
                }
                let origin = self.index.origin(loser).unwrap_or(self.device);
                let origin_name = members
                    .get(&origin)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                let copy = conflict_copy_name(path, &origin_name, &origin, &|c| {
                    taken.contains(c) || new_names.contains(c)
                });
                new_names.insert(copy.clone());
                let _ = self.index.set_path(loser, &copy);
                let id = format!("create-{loser}");
                if !self.index.has_conflict(&id) {
                    let rec = ConflictRecord {
                        kind: ConflictKind::Create,
                        file: winner,
                        path: path.to_string(),
                        copy: Some((*loser, copy.clone())),
                        detail: format!("created at the same time on {origin_name}"),
                        time_ms: self.now_ms,
                        resolved: false,
                    };
                    self.record_conflict(&id, &rec, &origin_name, format!("kept as {copy}"));
                }
                changed = true;
            }
        }
        if changed {
            self.commit_index();
        }
    }

    /// After a remote change to a file: record what the merge chose between.
    fn record_field_conflicts(&mut self, file: FileId, store: &mut dyn DocStore) {
        let conflicts = self
            .with_doc(file, store, |d| Ok(d.conflicts()))
            .unwrap_or_default();
        if conflicts.is_empty() {
            return;
        }
        // Without a path (its index entry has not arrived yet) there is nothing to name
        // a copy after; the check runs again when the document next changes.
        let Some(path) = self.index.path_of(&file) else {
            return;
        };
        let members = self.index.members();
        let mut changed = false;
        for c in conflicts {
            match c {
                FieldConflict::Frontmatter {
                    key,
                    winner: _,
                    losers,
                } => {
                    let mut ids: Vec<&str> = losers.iter().map(|(id, _)| id.as_str()).collect();
                    ids.sort();
                    let id = format!(
                        "fm-{}",
                        hex::encode(
                            &blake3::hash(
                                format!("{file}\u{1f}{key}\u{1f}{}", ids.join(",")).as_bytes()
                            )
                            .as_bytes()[..12]
                        )
                    );
                    if self.index.has_conflict(&id) {
                        continue;
                    }
                    let lost: Vec<String> = losers
                        .iter()
                        .map(|(_, v)| v.trim_end().to_string())
                        .collect();
                    let device = losers
                        .first()
                        .and_then(|(op, _)| device_of_op(op, &members))
                        .map(|d| members.get(&d).cloned().unwrap_or_default())
                        .unwrap_or_default();
                    let rec = ConflictRecord {
                        kind: ConflictKind::Frontmatter,
                        file,
                        path: path.clone(),
                        copy: None,
                        detail: format!("{key}: kept the later value; lost {}", lost.join(" | ")),
                        time_ms: self.now_ms,
                        resolved: false,
                    };
                    self.record_conflict(&id, &rec, &device, rec.detail.clone());
                    changed = true;
                }
                FieldConflict::Binary { losers } => {
                    for (op, bytes) in losers {
                        let copy_id =
                            FileId::derive("cue conflict copy", &[&file.0, op.as_bytes()]);
                        if self.index.path_of(&copy_id).is_some()
                            || self.metas.contains_key(&copy_id)
                        {
                            // Already made, here or by a peer whose copy reached us.
                            continue;
                        }
                        let origin = device_of_op(&op, &members).unwrap_or(self.device);
                        let origin_name = members
                            .get(&origin)
                            .cloned()
                            .unwrap_or_else(|| "unknown".into());
                        let live = self.live_view(store);
                        let taken: BTreeSet<String> = live.into_values().collect();
                        let copy = conflict_copy_name(&path, &origin_name, &origin, &|c| {
                            taken.contains(c)
                        });
                        // Every peer that finds this conflict makes the same first change
                        // (same actor, time and content), so the copies are one document.
                        let mut actor = b"cue-copy".to_vec();
                        actor.extend_from_slice(&copy_id.0);
                        let mut doc = FileDoc::new(ActorId::from(actor));
                        if doc.write("", &bytes, 0).is_err() {
                            continue;
                        }
                        let mut doc = match FileDoc::load(&doc.save(), self.actor.clone()) {
                            Ok(d) => d,
                            Err(_) => continue,
                        };
                        let saved = doc.save();
                        doc.mark_unsaved();
                        let t = self.touch();
                        self.cache.insert(copy_id, (doc, t));
                        self.metas.insert(copy_id, FileMeta::default());
                        self.refresh_meta(copy_id, store);
                        self.broadcast(Item::Whole {
                            doc: DocId::File(copy_id),
                            bytes: saved,
                        });
                        let _ = self.index.set_path(&copy_id, &copy);
                        let _ = self.index.set_origin(&copy_id, &origin);
                        let id = format!("binary-{copy_id}");
                        let rec = ConflictRecord {
                            kind: ConflictKind::Binary,
                            file,
                            path: path.clone(),
                            copy: Some((copy_id, copy.clone())),
                            detail: format!("written at the same time on {origin_name}"),
                            time_ms: self.now_ms,
                            resolved: false,
                        };
                        self.record_conflict(&id, &rec, &origin_name, format!("kept as {copy}"));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.commit_index();
        }
    }

    /// Put a conflict into the synced index (the caller commits) and the activity log.
    fn record_conflict(&mut self, id: &str, rec: &ConflictRecord, device: &str, detail: String) {
        let _ = self.index.put_conflict(id, rec);
        self.activity(
            ActivityKind::Conflict,
            Some(rec.path.clone()),
            device,
            Some(detail),
        );
    }

    /// Bring the disk in line with the documents for the files in `to_reconcile` (all
    /// files when the index changed).
    fn reconcile(&mut self, store: &mut dyn DocStore) {
        if self.index_changed {
            self.settle_path_clashes(store);
            self.to_reconcile.extend(self.metas.keys().copied());
            self.index_changed = false;
        }
        if self.to_reconcile.is_empty() {
            return;
        }
        let files: Vec<FileId> = std::mem::take(&mut self.to_reconcile).into_iter().collect();
        // While a clash is not yet settled in the index (a peer's concurrent rename can
        // undo our settlement until its next round), only the file that will keep the
        // path is written there; the others stay as they are on disk.
        let live = self.live_view(store);
        let mut owner: BTreeMap<&str, FileId> = BTreeMap::new();
        for (f, p) in &live {
            owner.entry(p.as_str()).or_insert(*f);
        }
        let mut desired: BTreeMap<FileId, Option<(String, ContentHash)>> = BTreeMap::new();
        for f in &files {
            let want = if let Some(path) = live.get(f) {
                if owner.get(path.as_str()) != Some(f) {
                    continue;
                }
                match (
                    Some(path.clone()),
                    self.metas.get(f).and_then(|m| m.doc_hash),
                ) {
                    (Some(p), Some(h))
                        if valid_path(&p).is_ok() && !self.state.skipped.contains_key(&p) =>
                    {
                        Some((p, h))
                    }
                    (Some(p), Some(_)) if valid_path(&p).is_err() => {
                        self.state.counters.bad_paths += 1;
                        None
                    }
                    _ => None,
                }
            } else {
                None
            };
            desired.insert(*f, want);
        }
        // Removals and moves away first, so that a path freed in this round can be
        // written in it.
        for (f, want) in &desired {
            let Some(meta) = self.metas.get(f) else {
                continue;
            };
            if let Some((cur_path, cur_hash)) = meta.disk.clone()
                && want.as_ref().is_none_or(|(p, _)| *p != cur_path)
            {
                self.out_files.push(Effect::RemoveFile {
                    path: cur_path.clone(),
                    expect: Some(cur_hash),
                });
                if let Some(m) = self.metas.get_mut(f) {
                    m.disk = None;
                }
                self.dirty.insert(*f);
            }
        }
        for (f, want) in desired {
            let Some((path, hash)) = want else { continue };
            let current = self.metas.get(&f).and_then(|m| m.disk.clone());
            if current.as_ref() == Some(&(path.clone(), hash)) {
                continue;
            }
            // Whatever we believe occupies the path now (another file moving away has
            // already been removed above).
            let expect = match &current {
                Some((p, h)) if *p == path => Some(*h),
                _ => self
                    .file_at(&path)
                    .and_then(|g| self.metas.get(&g))
                    .and_then(|m| m.disk.as_ref().map(|(_, h)| *h)),
            };
            if let Some(other) = self.file_at(&path)
                && other != f
            {
                if live.get(&other) == Some(&path) {
                    // A clashing file still sits there; it moves when the clash is
                    // settled, and this file is written then.
                    continue;
                }
                if let Some(m) = self.metas.get_mut(&other) {
                    m.disk = None;
                }
            }
            let adopted = self
                .adopted_content
                .remove(&f)
                .filter(|c| content_hash(c) == hash);
            let bytes = match adopted {
                Some(b) => b,
                None => match self.with_doc(f, store, |d| d.materialize()) {
                    Ok(b) => b,
                    Err(e) => {
                        self.doc_error(&path, &e);
                        continue;
                    }
                },
            };
            self.out_files.push(Effect::WriteFile {
                path: path.clone(),
                bytes,
                expect,
            });
            let heads = self
                .metas
                .get(&f)
                .map(|m| m.heads.clone())
                .unwrap_or_default();
            if let Some(m) = self.metas.get_mut(&f) {
                m.disk = Some((path, hash));
                m.prev_disk_heads = std::mem::replace(&mut m.disk_heads, heads);
            }
            self.dirty.insert(f);
        }
        // Content not written in this round (a clash, a tombstone) is read from the
        // document when it is written.
        self.adopted_content.clear();
    }

    // ---------------------------------------------------------------- messages

    fn broadcast(&mut self, item: Item) {
        self.out_items.entry(None).or_default().push(item);
    }

    fn send(&mut self, to: DeviceId, item: Item) {
        self.out_items.entry(Some(to)).or_default().push(item);
    }

    fn digest(&mut self) -> [u8; 32] {
        if let Some(d) = self.digest {
            return d;
        }
        let mut h = blake3::Hasher::new_derive_key("cue workspace digest");
        for head in to_heads(&self.index.heads()) {
            h.update(&head);
        }
        let paths = self.index.paths();
        for (f, m) in &self.metas {
            if !paths.contains_key(f) {
                continue;
            }
            h.update(&f.0);
            h.update(&(m.heads.len() as u64).to_le_bytes());
            for head in &m.heads {
                h.update(head);
            }
        }
        let d = *h.finalize().as_bytes();
        self.digest = Some(d);
        d
    }

    fn hello(&mut self, to: Option<DeviceId>, reply: bool) {
        let digest = self.digest();
        let item = Item::Hello { digest, reply };
        match to {
            Some(d) => self.send(d, item),
            None => {
                self.last_hello_ms = self.now_ms;
                self.broadcast(item)
            }
        }
    }

    fn peer_offline(&mut self, device: DeviceId) {
        let peer = self.peers.entry(device).or_default();
        let was = peer.online;
        peer.online = false;
        peer.chunks.clear();
        if self.pull.as_ref().is_some_and(|p| p.peer == device) {
            self.pull = None;
        }
        if was {
            let name = self
                .index
                .members()
                .get(&device)
                .cloned()
                .unwrap_or_default();
            self.activity(ActivityKind::PeerLeft, None, &name, None);
        }
    }

    fn message(&mut self, from: DeviceId, bytes: &[u8], store: &mut dyn DocStore) {
        let msg = match wire::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.state.counters.bad_messages += 1;
                self.state_dirty = true;
                return;
            }
        };
        let mut acks: Vec<(DocId, Heads)> = Vec::new();
        for item in msg.items {
            self.item(from, item, store, &mut acks);
        }
        if !acks.is_empty() {
            self.send(from, Item::Ack { entries: acks });
        }
    }

    fn item(
        &mut self,
        from: DeviceId,
        item: Item,
        store: &mut dyn DocStore,
        acks: &mut Vec<(DocId, Heads)>,
    ) {
        match item {
            Item::Hello { digest, reply } => self.on_hello(from, digest, reply, store),
            Item::Pull {
                id,
                full,
                complete,
                entries,
            } => self.on_pull(from, id, full, complete, entries, store),
            Item::Changes { doc, changes } => {
                let mut decoded = Vec::with_capacity(changes.len());
                for c in changes {
                    match Change::from_bytes(c) {
                        Ok(c) => decoded.push(c),
                        Err(_) => {
                            self.state.counters.bad_changes += 1;
                            self.state_dirty = true;
                        }
                    }
                }
                if let Some(heads) = self.apply_remote(from, doc, Remote::Changes(decoded), store) {
                    acks.retain(|(d, _)| *d != doc);
                    acks.push((doc, heads));
                }
            }
            Item::Whole { doc, bytes } => {
                if let Some(heads) = self.apply_remote(from, doc, Remote::Whole(bytes), store) {
                    acks.retain(|(d, _)| *d != doc);
                    acks.push((doc, heads));
                }
            }
            Item::Adopt {
                doc,
                bytes,
                heads,
                content,
            } => {
                let adopted = match doc {
                    DocId::File(f) => self.adopt(from, f, bytes, heads, content, store),
                    // The index is never adopted: every peer has one from the start.
                    DocId::Index => self.apply_remote(from, doc, Remote::Whole(bytes), store),
                };
                if let Some(heads) = adopted {
                    acks.retain(|(d, _)| *d != doc);
                    acks.push((doc, heads));
                }
            }
            Item::Ack { entries } => {
                for (doc, heads) in entries {
                    self.confirm(doc, &heads, store);
                }
            }
            Item::PullDone { id } => {
                if let Some(p) = self.pull.clone()
                    && p.peer == from
                    && p.id == id
                {
                    self.pull_complete(p);
                }
            }
            Item::Chunk {
                id,
                index,
                total,
                bytes,
            } => {
                if let Some(item) = self.on_chunk(from, id, index, total, bytes) {
                    self.item(from, item, store, acks);
                }
            }
        }
    }

    fn on_chunk(
        &mut self,
        from: DeviceId,
        id: u64,
        index: u32,
        total: u32,
        bytes: Vec<u8>,
    ) -> Option<Item> {
        let peer = self.peers.entry(from).or_default();
        if total == 0 || index >= total {
            self.state.counters.dropped_chunks += 1;
            return None;
        }
        if !peer.chunks.contains_key(&id) && peer.chunks.len() >= MAX_PARTIAL_ITEMS_PER_PEER {
            // Drop the oldest partial item rather than grow without bound.
            let oldest = *peer.chunks.keys().next()?;
            peer.chunks.remove(&oldest);
            self.state.counters.dropped_chunks += 1;
        }
        let peer = self.peers.entry(from).or_default();
        let buf = peer.chunks.entry(id).or_insert_with(|| ChunkBuf {
            total,
            parts: BTreeMap::new(),
            bytes: 0,
        });
        if buf.total != total || buf.bytes + bytes.len() > MAX_CHUNKED_ITEM {
            peer.chunks.remove(&id);
            self.state.counters.dropped_chunks += 1;
            return None;
        }
        buf.bytes += bytes.len();
        buf.parts.insert(index, bytes);
        if buf.parts.len() as u32 != buf.total {
            return None;
        }
        let buf = peer.chunks.remove(&id)?;
        let whole: Vec<u8> = buf.parts.into_values().flatten().collect();
        match wire::decode_item(&whole) {
            Ok(Item::Chunk { .. }) | Err(_) => {
                self.state.counters.bad_messages += 1;
                None
            }
            Ok(item) => Some(item),
        }
    }

    fn on_hello(
        &mut self,
        from: DeviceId,
        digest: [u8; 32],
        reply: bool,
        store: &mut dyn DocStore,
    ) {
        let peer = self.peers.entry(from).or_default();
        let was_online = peer.online;
        peer.online = true;
        peer.digest = Some(digest);
        if !was_online {
            let name = self.index.members().get(&from).cloned().unwrap_or_default();
            self.activity(ActivityKind::PeerJoined, None, &name, Some("online".into()));
        }
        if reply {
            self.hello(Some(from), false);
        }
        if digest == self.digest() {
            self.synced_with(from);
            // They hold everything we hold.
            if self.tail2.index_pending.count > 0 {
                self.tail2.index_pending = IndexPending::default();
                self.state_dirty = true;
            }
            for (f, m) in &mut self.metas {
                if !m.pending.is_empty() {
                    m.pending.clear();
                    self.dirty.insert(*f);
                }
            }
        } else {
            self.maybe_pull(store);
        }
    }

    fn synced_with(&mut self, peer: DeviceId) {
        self.state.peers.entry(peer).or_default().last_sync_ms = Some(self.now_ms);
        self.state.last_workspace_sync_ms = Some(self.now_ms);
        self.state_dirty = true;
    }

    /// Catch up with one peer at a time: among online peers whose digest differs from
    /// ours, ask the first one we have not just asked for that same state.
    fn maybe_pull(&mut self, store: &mut dyn DocStore) {
        if self.pull.is_some() || !self.connected {
            return;
        }
        let mine = self.digest();
        let now = self.now_ms;
        let ae = self.config.anti_entropy_ms;
        let candidate = self.peers.iter().find(|(_, p)| {
            p.online
                && p.digest.is_some_and(|d| d != mine)
                && !p
                    .last_pull
                    .is_some_and(|(d, t)| Some(d) == p.digest && now - t < ae)
        });
        let Some((&peer, _)) = candidate else {
            return;
        };
        let full = self
            .state
            .last_workspace_sync_ms
            .is_some_and(|t| now - t > self.config.max_offline_ms);
        let mut entries = vec![(DocId::Index, to_heads(&self.index.heads()))];
        let paths = self.index.paths();
        let files: Vec<FileId> = self
            .metas
            .keys()
            .copied()
            .filter(|f| paths.contains_key(f))
            .collect();
        for f in files {
            let heads = if self.cache.contains_key(&f) {
                to_heads(&self.doc_heads(f, store))
            } else {
                self.metas
                    .get(&f)
                    .map(|m| m.heads.clone())
                    .unwrap_or_default()
            };
            entries.push((DocId::File(f), heads));
        }
        let id = self.next_pull_id;
        self.next_pull_id += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_pull = p.digest.map(|d| (d, now));
        }
        self.pull = Some(ActivePull {
            peer,
            id,
            started_ms: now,
            full,
            changed: false,
        });
        self.send(
            peer,
            Item::Pull {
                id,
                full,
                complete: true,
                entries,
            },
        );
    }

    fn pull_complete(&mut self, pull: ActivePull) {
        self.pull = None;
        self.synced_with(pull.peer);
        if pull.full {
            self.state.last_full_resync_ms = Some(self.now_ms);
            let name = self
                .index
                .members()
                .get(&pull.peer)
                .cloned()
                .unwrap_or_default();
            self.activity(
                ActivityKind::FullResync,
                None,
                &name,
                Some("whole workspace merged after a long absence".into()),
            );
        }
        if pull.changed {
            // Tell everyone what we hold now, so that peers behind us catch up.
            let digest = self.digest();
            self.last_hello_ms = self.now_ms;
            self.broadcast(Item::Hello {
                digest,
                reply: false,
            });
        }
    }

    /// Answer a pull: for each document, what the asker lacks given its heads.
    fn on_pull(
        &mut self,
        from: DeviceId,
        id: u64,
        full: bool,
        complete: bool,
        entries: Vec<(DocId, Heads)>,
        store: &mut dyn DocStore,
    ) {
        let mut listed = BTreeSet::new();
        for (doc, heads) in &entries {
            listed.insert(*doc);
            self.confirm(*doc, heads, store);
        }
        let paths = self.index.paths();
        let mut docs: Vec<(DocId, Option<Heads>)> =
            entries.into_iter().map(|(d, h)| (d, Some(h))).collect();
        if complete {
            if !listed.contains(&DocId::Index) {
                docs.insert(0, (DocId::Index, None));
            }
            for f in self.metas.keys() {
                if paths.contains_key(f) && !listed.contains(&DocId::File(*f)) {
                    docs.push((DocId::File(*f), None));
                }
            }
        }
        for (doc, their) in docs {
            if let Some(item) = self.answer_for(doc, their.as_ref(), full, store) {
                self.send(from, item);
            }
        }
        self.send(from, Item::PullDone { id });
    }

    fn answer_for(
        &mut self,
        doc: DocId,
        their: Option<&Heads>,
        full: bool,
        store: &mut dyn DocStore,
    ) -> Option<Item> {
        let mine = match doc {
            DocId::Index => to_heads(&self.index.heads()),
            DocId::File(f) => self.metas.get(&f)?.heads.clone(),
        };
        if !full && their == Some(&mine) {
            return None;
        }
        match their {
            Some(h) if !full && !h.is_empty() => {
                let have = from_heads(h);
                // Heads we do not know (the asker made changes of its own, as a new
                // peer does to the index when it joins) make `get_changes` return every
                // change we have: when none of them is known, the whole document, which
                // is compressed, is a third of the size of its changes one by one.
                let known = match doc {
                    DocId::Index => have.iter().any(|h| self.index.change_by_hash(h).is_some()),
                    DocId::File(f) => self
                        .with_doc(f, store, |d| {
                            Ok(have
                                .iter()
                                .any(|h| d.automerge().get_change_by_hash(h).is_some()))
                        })
                        .ok()?,
                };
                if !known {
                    return self.whole(doc, mine, store);
                }
                let changes: Vec<Vec<u8>> = match doc {
                    DocId::Index => self
                        .index
                        .automerge()
                        .get_changes(&have)
                        .iter()
                        .map(|c| c.raw_bytes().to_vec())
                        .collect(),
                    DocId::File(f) => self
                        .with_doc(f, store, |d| {
                            Ok(d.automerge()
                                .get_changes(&have)
                                .iter()
                                .map(|c| c.raw_bytes().to_vec())
                                .collect())
                        })
                        .ok()?,
                };
                if changes.is_empty() {
                    None
                } else {
                    Some(Item::Changes { doc, changes })
                }
            }
            _ => self.whole(doc, mine, store),
        }
    }

    /// A whole document for a peer that lacks it: with its content when that is at hand
    /// (so that the peer need not load it), else alone.
    fn whole(&mut self, doc: DocId, heads: Heads, store: &mut dyn DocStore) -> Option<Item> {
        let f = match doc {
            DocId::Index => {
                return Some(Item::Whole {
                    doc,
                    bytes: self.index.automerge().save(),
                });
            }
            DocId::File(f) => f,
        };
        if self.cache.contains_key(&f) {
            // `automerge().save()`, not `FileDoc::save`: the save cursor stays where the
            // store is, or unsaved changes would never be persisted.
            let (bytes, heads, content) = self
                .with_doc(f, store, |d| {
                    let content = if d.is_empty() {
                        None
                    } else {
                        d.materialize().ok()
                    };
                    Ok((d.automerge().save(), to_heads(&d.heads()), content))
                })
                .ok()?;
            return Some(match content {
                Some(content) if !heads.is_empty() => Item::Adopt {
                    doc,
                    bytes,
                    heads,
                    content,
                },
                _ => Item::Whole { doc, bytes },
            });
        }
        // Stored bytes go out as they are: no need to load the document. Its content is
        // on disk when what we last wrote or read there is what it renders to.
        let bytes = match self.adopted.get(&f) {
            Some(b) => b.clone(),
            None => store.load(&doc)?,
        };
        let meta = self.metas.get(&f)?;
        let content = match (meta.doc_hash, &meta.disk) {
            (Some(hash), Some((path, on_disk))) if *on_disk == hash && !heads.is_empty() => {
                store.content(path, &hash)
            }
            _ => None,
        };
        Some(match content {
            Some(content) => Item::Adopt {
                doc,
                bytes,
                heads,
                content,
            },
            None => Item::Whole { doc, bytes },
        })
    }

    /// Mark our local changes that `heads` covers as confirmed by a peer.
    fn confirm(&mut self, doc: DocId, heads: &Heads, store: &mut dyn DocStore) {
        let f = match doc {
            DocId::Index => return self.confirm_index(heads),
            DocId::File(f) => f,
        };
        let Some(meta) = self.metas.get(&f) else {
            return;
        };
        if meta.pending.is_empty() {
            return;
        }
        // The usual answer needs no document: a peer whose heads are ours, or name every
        // pending change, has them all. Loading each document here would cost a first
        // sync of 1,000 files 1,000 loads on the sending side.
        if meta.heads == *heads || meta.pending.iter().all(|h| heads.contains(h)) {
            self.set_pending(f, Vec::new());
            return;
        }
        let pending = meta.pending.clone();
        let have = from_heads(heads);
        let missing = self.with_doc(f, store, |d| {
            Ok(d.automerge()
                .get_changes(&have)
                .iter()
                .map(|c| c.hash().0)
                .collect::<BTreeSet<_>>())
        });
        if let Ok(missing) = missing {
            let left = pending
                .into_iter()
                .filter(|h| missing.contains(h))
                .collect();
            self.set_pending(f, left);
        }
    }

    /// See [`IndexPending`]: what a peer with `heads` lacks of our changes is what is
    /// still pending, or fewer if another peer confirmed more.
    fn confirm_index(&mut self, heads: &Heads) {
        let pending = self.tail2.index_pending.clone();
        if pending.count == 0 {
            return;
        }
        let all = to_heads(&self.index.heads()) == *heads
            || pending.latest.is_some_and(|h| heads.contains(&h));
        let left = if all {
            0
        } else {
            let device = self.device;
            let missing = self
                .index
                .automerge()
                .get_changes(&from_heads(heads))
                .iter()
                .filter(|c| made_by(&device, c.actor_id()))
                .count() as u64;
            missing.min(pending.count)
        };
        let next = if left == 0 {
            IndexPending::default()
        } else {
            IndexPending {
                count: left,
                ..pending.clone()
            }
        };
        if next != pending {
            self.tail2.index_pending = next;
            self.state_dirty = true;
        }
    }

    /// Replace a file's unconfirmed changes (`left` sorted), persisting the change.
    fn set_pending(&mut self, f: FileId, left: Vec<[u8; 32]>) {
        if let Some(m) = self.metas.get_mut(&f)
            && m.pending != left
        {
            m.pending = left;
            self.dirty.insert(f);
        }
    }

    /// A whole document with its content (`Item::Adopt`). A document we do not have is
    /// stored as it came and its content written as it came, without loading it; it is
    /// checked against that content later (`verify_adopted`). One we have is merged.
    fn adopt(
        &mut self,
        from: DeviceId,
        f: FileId,
        bytes: Vec<u8>,
        heads: Heads,
        content: Vec<u8>,
        store: &mut dyn DocStore,
    ) -> Option<Heads> {
        let known = self.metas.contains_key(&f) || self.cache.contains_key(&f);
        if known || heads.is_empty() {
            return self.apply_remote(from, DocId::File(f), Remote::Whole(bytes), store);
        }
        let meta = FileMeta {
            heads: heads.clone(),
            doc_hash: Some(content_hash(&content)),
            size: content.len() as u64,
            ..FileMeta::default()
        };
        self.metas.insert(f, meta);
        self.adopted.insert(f, bytes);
        self.adopted_content.insert(f, content);
        self.tail.unverified.insert(f);
        self.state_dirty = true;
        // A file that got content may now clash with another at its path.
        self.index_changed = true;
        self.live_cache = None;
        self.digest = None;
        self.dirty.insert(f);
        self.to_reconcile.insert(f);
        if let Some(path) = self.index.path_of(&f) {
            let name = self.index.members().get(&from).cloned().unwrap_or_default();
            self.activity(ActivityKind::RemoteChange, Some(path), &name, None);
        }
        Some(heads)
    }

    /// Check up to `budget` adopted documents against the content they came with. A
    /// document that renders to something else (a faulty or lying sender) wins: its real
    /// heads and content replace what was believed, and the disk follows.
    fn verify_adopted(&mut self, budget: usize, store: &mut dyn DocStore) {
        let batch: Vec<FileId> = self.tail.unverified.iter().take(budget).copied().collect();
        for f in batch {
            self.tail.unverified.remove(&f);
            self.state_dirty = true;
            let Some(believed) = self.metas.get(&f).map(|m| (m.heads.clone(), m.doc_hash)) else {
                continue;
            };
            let actual = self.with_doc(f, store, |d| {
                let heads = to_heads(&d.heads());
                let hash = if d.is_empty() {
                    None
                } else {
                    d.materialize().ok().map(|c| content_hash(&c))
                };
                Ok((heads, hash))
            });
            match actual {
                Ok(actual) if actual == believed => {}
                Ok(_) => {
                    self.state.counters.bad_documents += 1;
                    self.refresh_meta(f, store);
                    self.to_reconcile.insert(f);
                }
                Err(_) => {
                    // The stored bytes do not load: nothing can be said of the file but
                    // what is on disk, which stays.
                    self.state.counters.bad_documents += 1;
                    continue;
                }
            }
            self.record_field_conflicts(f, store);
        }
    }

    /// Apply changes or a whole document from a peer. Returns our new heads if anything
    /// was applied.
    fn apply_remote(
        &mut self,
        from: DeviceId,
        doc: DocId,
        remote: Remote,
        store: &mut dyn DocStore,
    ) -> Option<Heads> {
        let before: Heads;
        let after: Heads;
        let missing: bool;
        match doc {
            DocId::Index => {
                before = to_heads(&self.index.heads());
                let am = self.index.automerge();
                let ok = match remote {
                    Remote::Changes(c) => am.apply_changes(c).is_ok(),
                    Remote::Whole(bytes) => match automerge::AutoCommit::load(&bytes) {
                        Ok(mut other) => am.merge(&mut other).is_ok(),
                        Err(_) => false,
                    },
                };
                if !ok {
                    self.state.counters.bad_documents += 1;
                    self.state_dirty = true;
                    return None;
                }
                missing = !self.index.automerge().get_missing_deps(&[]).is_empty();
                after = to_heads(&self.index.heads());
                if before != after {
                    self.index_dirty = true;
                    self.index_changed = true;
                    self.live_cache = None;
                    self.digest = None;
                }
            }
            DocId::File(f) => {
                before = self
                    .metas
                    .get(&f)
                    .map(|m| m.heads.clone())
                    .unwrap_or_default();
                // A document we do not have at all is taken as sent: loading it is the
                // only cost, and its bytes are stored as they came (no merge into an
                // empty document, no re-encoding).
                let remote = match remote {
                    Remote::Whole(bytes)
                        if !self.metas.contains_key(&f) && !self.cache.contains_key(&f) =>
                    {
                        match FileDoc::load(&bytes, self.actor.clone()) {
                            Ok(doc) => {
                                let t = self.touch();
                                self.cache.insert(f, (doc, t));
                                self.adopted.insert(f, bytes);
                                Remote::Changes(Vec::new())
                            }
                            Err(_) => {
                                self.state.counters.bad_documents += 1;
                                self.state_dirty = true;
                                return None;
                            }
                        }
                    }
                    other => other,
                };
                let r = self.with_doc(f, store, |d| {
                    let am = d.automerge();
                    match remote {
                        Remote::Changes(c) => am.apply_changes(c)?,
                        Remote::Whole(bytes) => {
                            let mut other = automerge::AutoCommit::load(&bytes)
                                .map_err(|e| DocError::Decode(e.to_string()))?;
                            am.merge(&mut other)?;
                        }
                    }
                    let missing = !am.get_missing_deps(&[]).is_empty();
                    Ok((to_heads(&am.get_heads()), missing))
                });
                let (heads, m) = match r {
                    Ok(x) => x,
                    Err(_) => {
                        self.state.counters.bad_documents += 1;
                        self.state_dirty = true;
                        // A document that failed to apply may be half-updated in memory;
                        // drop it so the stored version is what counts.
                        self.cache.remove(&f);
                        return None;
                    }
                };
                after = heads;
                missing = m;
                if before != after {
                    self.metas.entry(f).or_default();
                    self.refresh_meta(f, store);
                    self.record_field_conflicts(f, store);
                    self.to_reconcile.insert(f);
                    if let Some(path) = self.index.path_of(&f) {
                        let name = self.index.members().get(&from).cloned().unwrap_or_default();
                        self.activity(ActivityKind::RemoteChange, Some(path), &name, None);
                    }
                }
            }
        }
        if before != after
            && let Some(p) = self.pull.as_mut()
        {
            p.changed = true;
        }
        if missing {
            // We lack changes these depend on: ask the sender for this document.
            let heads = after.clone();
            self.send(
                from,
                Item::Pull {
                    id: 0,
                    full: false,
                    complete: false,
                    entries: vec![(doc, heads)],
                },
            );
        }
        (before != after).then_some(after)
    }

    fn tick(&mut self, store: &mut dyn DocStore) {
        let now = self.now_ms;
        if self.connected && now - self.last_hello_ms >= self.config.anti_entropy_ms {
            self.hello(None, false);
        }
        if let Some(p) = &self.pull
            && now - p.started_ms > self.config.pull_timeout_ms
        {
            self.pull = None;
        }
        self.maybe_pull(store);
        // Forget deleted files whose tombstone expired.
        let expired: Vec<FileId> = self
            .index
            .tombstones()
            .into_iter()
            .filter(|(_, t)| t.time_ms > 0 && now - t.time_ms > self.config.tombstone_ms)
            .map(|(f, _)| f)
            .collect();
        let mut purged = false;
        for f in expired {
            if self.is_live(f, store) {
                continue;
            }
            let _ = self.index.purge(&f);
            self.metas.remove(&f);
            self.cache.remove(&f);
            self.dirty.remove(&f);
            self.out_files.insert(
                0,
                Effect::Persist(Persist::DeleteDoc {
                    doc: DocId::File(f),
                }),
            );
            purged = true;
        }
        if purged {
            self.commit_index();
        }
        self.verify_adopted(VERIFY_PER_TICK, store);
        self.compact_some(COMPACT_PER_TICK, store);
    }

    /// Stores a few documents with many increments whole again: without it a document
    /// edited 100 times keeps up to `compact_after` small increments (≈190 bytes each
    /// for a one-line edit), several times the file's size.
    /// At rest (nothing happened for `COMPACT_AT_REST_AFTER_MS`) every document with an
    /// increment is stored whole, the cached ones first (no load needed).
    fn compact_some(&mut self, budget: usize, store: &mut dyn DocStore) {
        let at_rest = self.at_rest();
        let least = if at_rest {
            1
        } else {
            COMPACT_WHEN_TICKING_AFTER
        };
        if at_rest && self.index_increments > 0 {
            self.index_increments = self.config.compact_after.saturating_sub(1);
            self.index_dirty = true;
        }
        let mut due: Vec<FileId> = self
            .metas
            .iter()
            .filter(|(_, m)| m.increments >= least)
            .map(|(f, _)| *f)
            .collect();
        due.sort_by_key(|f| !self.cache.contains_key(f));
        due.truncate(budget);
        for f in due {
            // Loaded into the cache, so that `effects` stores its `save()`. One that
            // cannot be loaded is not tried again each tick (it is counted when loaded
            // for real).
            if self.with_doc(f, store, |_| Ok(())).is_err() {
                if let Some(m) = self.metas.get_mut(&f) {
                    m.increments = 0;
                }
                continue;
            }
            if let Some(m) = self.metas.get_mut(&f) {
                m.increments = self.config.compact_after.saturating_sub(1);
            }
            self.dirty.insert(f);
        }
    }

    fn activity(
        &mut self,
        kind: ActivityKind,
        path: Option<String>,
        device: &str,
        detail: Option<String>,
    ) {
        self.out_activity.push(Effect::Activity(Activity {
            time_ms: self.now_ms,
            kind,
            path,
            device: device.to_string(),
            detail,
        }));
    }

    /// Settle what this call changed and turn it into effects, in order.
    fn finish(&mut self, store: &mut dyn DocStore) -> Vec<Effect> {
        self.reconcile(store);
        // A reconcile can settle clashes, which changes the index again.
        if self.index_changed {
            self.reconcile(store);
        }
        self.effects()
    }

    /// Turn what this call changed into effects, without reconciling the disk.
    fn effects(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        // 1. Persistence.
        if self.index_dirty {
            self.index_increments += 1;
            let snapshot = self.index_increments >= self.config.compact_after;
            let bytes = if snapshot {
                self.index_increments = 0;
                self.index.save()
            } else {
                self.index.save_incremental()
            };
            effects.push(Effect::Persist(Persist::Doc {
                doc: DocId::Index,
                bytes,
                snapshot,
                meta: Vec::new(),
            }));
            self.index_dirty = false;
        }
        for f in std::mem::take(&mut self.dirty) {
            if let Some(received) = self.adopted.remove(&f) {
                // Stored as it came; anything changed since follows as an increment.
                effects.push(Effect::Persist(Persist::Doc {
                    doc: DocId::File(f),
                    bytes: received,
                    snapshot: true,
                    meta: Vec::new(),
                }));
            }
            let compact_after = self.config.compact_after;
            let Some(meta) = self.metas.get_mut(&f) else {
                continue;
            };
            // A document never stored before is stored whole: `save()` of a new 4 KB file
            // costs 0.1 ms where its first increment costs 3 ms, and a stored `save()` can
            // be sent to a new peer without loading it.
            let never_saved = self.cache.get(&f).is_some_and(|(d, _)| d.never_saved());
            let snapshot = meta.increments + 1 >= compact_after || never_saved;
            let bytes = if let Some((doc, _)) = self.cache.get_mut(&f) {
                if snapshot {
                    doc.save()
                } else {
                    doc.save_incremental()
                }
            } else {
                Vec::new()
            };
            // Only stored increments count towards compaction (an adopted document
            // that is not loaded stores none: it is whole as received).
            if snapshot && self.cache.contains_key(&f) {
                meta.increments = 0;
            } else if !bytes.is_empty() {
                meta.increments += 1;
            }
            let Some(meta) = self.metas.get(&f) else {
                continue;
            };
            let meta_bytes = encode_meta(meta);
            effects.push(Effect::Persist(Persist::Doc {
                doc: DocId::File(f),
                bytes,
                snapshot: snapshot && self.cache.contains_key(&f),
                meta: meta_bytes,
            }));
        }
        // Deletions queued by tombstone expiry sit at the front of out_files.
        let (persist, files): (Vec<Effect>, Vec<Effect>) = std::mem::take(&mut self.out_files)
            .into_iter()
            .partition(|e| matches!(e, Effect::Persist(_)));
        effects.extend(persist);
        if self.state_dirty {
            effects.push(Effect::Persist(Persist::State {
                bytes: encode_state(&self.state, &self.tail, &self.tail2),
            }));
            self.state_dirty = false;
        }
        // 2. Files.
        effects.extend(files);
        // 3. Messages.
        let max = self.config.max_message_bytes;
        for (to, items) in std::mem::take(&mut self.out_items) {
            if to.is_none() && !self.connected {
                // Nobody to tell; the next catch-up carries these changes.
                continue;
            }
            for bytes in wire::pack(items, max, &mut self.next_chunk_id) {
                effects.push(Effect::Send { to, bytes });
            }
        }
        // 4. Activity.
        effects.append(&mut self.out_activity);
        self.evict();
        effects
    }

    fn evict(&mut self) {
        while self.cache.len() > self.config.cache_docs.max(1) {
            let Some((&oldest, _)) = self.cache.iter().min_by_key(|(_, (_, t))| *t) else {
                break;
            };
            self.cache.remove(&oldest);
        }
    }

    // ---------------------------------------------------------------- status

    fn live_file_with_path(&mut self, path: &str) -> Option<FileId> {
        self.index.files_at(path).into_iter().find(|f| {
            self.metas.get(f).is_some_and(|m| m.doc_hash.is_some())
                && self.index.tombstone(f).is_none()
        })
    }

    fn open_conflicts(&mut self, store: &mut dyn DocStore) -> Vec<ConflictInfo> {
        let live = self.live_view(store);
        let mut out = Vec::new();
        for (id, rec) in self.index.conflicts() {
            if rec.resolved {
                continue;
            }
            // A conflict copy's conflict clears when the copy is deleted or renamed.
            if let Some((copy, copy_path)) = &rec.copy
                && live.get(copy) != Some(copy_path)
            {
                continue;
            }
            out.push(ConflictInfo {
                id,
                kind: rec.kind,
                path: rec.path.clone(),
                copy: rec.copy.map(|(_, p)| p),
                detail: rec.detail,
                time_ms: rec.time_ms,
            });
        }
        out
    }

    pub fn status(&mut self, store: &mut dyn DocStore) -> Status {
        let live = self.live_view(store);
        let members = self.index.members();
        let peers = members
            .iter()
            .filter(|(d, _)| **d != self.device)
            .map(|(d, name)| PeerInfo {
                device: *d,
                name: name.clone(),
                online: self.peers.get(d).is_some_and(|p| p.online),
                last_sync_ms: self.state.peers.get(d).and_then(|p| p.last_sync_ms),
            })
            .collect();
        let catch_up = self.pull.as_ref().map(|p| {
            let tombs = self.index.tombstones();
            let total = self
                .index
                .paths()
                .into_keys()
                .filter(|f| live.contains_key(f) || !tombs.contains_key(f))
                .count();
            CatchUp {
                peer: p.peer,
                full: p.full,
                files_held: live.len(),
                files_total: total.max(live.len()),
            }
        });
        Status {
            files: live.len(),
            pending_changes: self.tail2.index_pending.count as usize
                + self.metas.values().map(|m| m.pending.len()).sum::<usize>(),
            conflicts: self.open_conflicts(store),
            skipped: self
                .state
                .skipped
                .iter()
                .map(|(p, s)| (p.clone(), *s))
                .collect(),
            peers,
            last_full_resync_ms: self.state.last_full_resync_ms,
            connected: self.connected,
            syncing: self.pull.is_some(),
            catch_up,
            unverified: self.tail.unverified.len(),
        }
    }

    /// The paths of all live files with their content hash (what the disk should hold).
    pub fn live_files(&mut self, store: &mut dyn DocStore) -> BTreeMap<String, ContentHash> {
        let live = self.live_view(store);
        live.into_iter()
            .filter_map(|(f, p)| Some((p, self.metas.get(&f)?.doc_hash?)))
            .collect()
    }

    /// Documents adopted with their sender's content and not yet checked against it.
    pub fn unverified(&self) -> usize {
        self.tail.unverified.len()
    }

    /// Whether ticks have work to do soon: adopted documents to check, documents to
    /// compact, a pull under way, or an online peer whose workspace differs from ours.
    /// When there is none, ticks only send the periodic hello and expire tombstones
    /// (seconds and days apart), so the host may tick rarely: an idle daemon should
    /// cost next to nothing.
    pub fn wants_frequent_ticks(&mut self) -> bool {
        if !self.tail.unverified.is_empty() || self.pull.is_some() {
            return true;
        }
        if self.connected {
            let mine = self.digest();
            if self
                .peers
                .values()
                .any(|p| p.online && p.digest.is_some_and(|d| d != mine))
            {
                return true;
            }
        }
        self.index_increments > 0 || self.metas.values().any(|m| m.increments > 0)
    }

    fn at_rest(&self) -> bool {
        self.now_ms - self.last_input_ms >= COMPACT_AT_REST_AFTER_MS
    }

    /// What the engine believes is on disk (path → hash): the driver compares this with
    /// a scan at start-up to find what changed while it was stopped.
    pub fn disk_view(&self) -> BTreeMap<String, ContentHash> {
        self.metas.values().filter_map(|m| m.disk.clone()).collect()
    }

    /// The materialised bytes of the live file at `path` (tests, the demo).
    pub fn read(&mut self, path: &str, store: &mut dyn DocStore) -> Option<Vec<u8>> {
        let live = self.live_view(store);
        let (f, _) = live.into_iter().find(|(_, p)| p == path)?;
        self.with_doc(f, store, |d| d.materialize()).ok()
    }
}

enum Remote {
    Changes(Vec<Change>),
    Whole(Vec<u8>),
}

/// The member whose actor made op `op` (`counter@actorhex`).
fn device_of_op(op: &str, members: &BTreeMap<DeviceId, String>) -> Option<DeviceId> {
    let actor = op.split_once('@')?.1;
    let prefix = hex::decode(actor).ok()?;
    if prefix.len() < 16 {
        return None;
    }
    members.keys().find(|d| d.0[..16] == prefix[..16]).copied()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn heads() -> impl Strategy<Value = Heads> {
        prop::collection::vec(any::<[u8; 32]>(), 0..3)
    }

    prop_compose! {
        fn file_meta()(
            heads in heads(),
            other_heads in heads(),
            disk_heads_same in any::<bool>(),
            doc_hash in prop::option::of(any::<[u8; 32]>()),
            doc_hash_on_disk in any::<bool>(),
            size in any::<u64>(),
            disk in prop::option::of(("[a-z/]{1,20}", any::<[u8; 32]>())),
            prev_disk_heads in heads(),
            increments in any::<u32>(),
            pending_same in any::<bool>(),
            mut pending in heads(),
        ) -> FileMeta {
            pending.sort_unstable();
            pending.dedup();
            let doc_hash = match (&disk, doc_hash_on_disk) {
                (Some((_, h)), true) => Some(*h),
                _ => doc_hash,
            };
            FileMeta {
                disk_heads: if disk_heads_same { heads.clone() } else { other_heads },
                heads: heads.clone(),
                doc_hash,
                size,
                disk,
                prev_disk_heads,
                increments,
                pending: if pending_same {
                    let mut h = heads.clone();
                    h.sort_unstable();
                    h.dedup();
                    h
                } else {
                    pending
                },
            }
        }
    }

    proptest! {
        #[test]
        fn a_stored_file_meta_reads_back_the_same(meta in file_meta()) {
            prop_assert_eq!(decode_meta(&encode_meta(&meta)), Some(meta));
        }

        #[test]
        fn a_file_meta_stored_by_an_older_version_still_reads(meta in file_meta()) {
            let old = postcard::to_allocvec(&FileMetaV1 {
                heads: meta.heads.clone(),
                doc_hash: meta.doc_hash,
                size: meta.size,
                disk: meta.disk.clone(),
                disk_heads: meta.disk_heads.clone(),
                prev_disk_heads: meta.prev_disk_heads.clone(),
                increments: meta.increments,
            })
            .unwrap();
            prop_assert_eq!(decode_meta(&old), Some(FileMeta { pending: Vec::new(), ..meta }));
        }
    }

    #[test]
    fn pending_changes_of_files_in_an_older_state_move_to_their_records() {
        let file = FileId([3; 16]);
        let mut state = State::default();
        state
            .unconfirmed
            .insert(DocId::File(file), [[9; 32]].into_iter().collect());
        state
            .unconfirmed
            .insert(DocId::Index, [[8; 32]].into_iter().collect());
        let meta = FileMeta {
            heads: vec![[9; 32]],
            ..FileMeta::default()
        };
        let restored = Restored {
            state: Some(encode_state(
                &state,
                &StateTail::default(),
                &StateTail2::default(),
            )),
            index: None,
            metas: vec![(file, encode_meta(&meta))],
        };
        let (engine, effects) =
            Engine::new(DeviceId([1; 32]), "a", 1, Config::default(), restored, 0);
        assert_eq!(engine.metas[&file].pending, vec![[9; 32]]);
        assert!(engine.state.unconfirmed.is_empty());
        // Both go to the store at once: the record with them, the state without them.
        let stored_meta = effects.iter().find_map(|e| match e {
            Effect::Persist(Persist::Doc { doc, meta, .. }) if *doc == DocId::File(file) => {
                decode_meta(meta)
            }
            _ => None,
        });
        assert_eq!(stored_meta.map(|m| m.pending), Some(vec![[9; 32]]));
        let stored_state = effects.iter().find_map(|e| match e {
            Effect::Persist(Persist::State { bytes }) => decode_state(bytes),
            _ => None,
        });
        let (stored_state, _, tail2) = stored_state.expect("state stored");
        assert!(stored_state.unconfirmed.is_empty());
        // The index's pending change, and the engine's own first one (it enters itself
        // in the member list of the new index).
        assert_eq!(tail2.index_pending.count, 2);
    }

    #[test]
    fn the_usual_file_meta_is_stored_without_its_copies() {
        let hash = [7; 32];
        let meta = FileMeta {
            heads: vec![[1; 32]],
            doc_hash: Some(hash),
            size: 4096,
            disk: Some(("notes/a.md".into(), hash)),
            disk_heads: vec![[1; 32]],
            prev_disk_heads: Vec::new(),
            increments: 0,
            pending: vec![[1; 32]],
        };
        let old = postcard::to_allocvec(&meta).unwrap().len();
        // Three copies of 33 bytes (a hash and its marker) left out, for a tag and three
        // one-byte markers: 160 bytes a file become 85.
        assert_eq!(encode_meta(&meta).len() + 95, old);
        assert_eq!(encode_meta(&meta).len(), 85);
    }
}
