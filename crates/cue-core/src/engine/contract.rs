//! The engine's public contract: its settings, inputs, effects, activity, counters and
//! the status it reports. A driver (the daemon, the simulation) sees only these.

use super::*;

/// `max_file_size` unless configured (docs/reference.md: 16 MiB).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

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
    /// A pull is answered this many bytes of documents at a time, the rest at the next
    /// calls (every tick, every input): a first sync of 10,000 notes answered at once
    /// was 60 MB of messages in memory three times over (items, encoded, sealed).
    pub answer_chunk_bytes: usize,
    /// Compact a document's stored form after this many incremental saves.
    pub compact_after: u32,
    /// The folder is on a filesystem that takes names differing only in letter case (or
    /// Unicode form) for one (macOS and Windows by default, exFAT, ext4 with casefold):
    /// a file reported at any spelling of its name is that file.
    pub case_insensitive: bool,
    /// The folder is on a filesystem that does not keep Unix modes (exFAT, FAT, some
    /// network mounts: every file shows its mount's mode, and `chmod` is ignored or
    /// refused), so what its files' modes say is no news. The executable bit of every
    /// input from disk is then ignored: a save keeps the bit the document has (this
    /// device never changes it), and the engine's beliefs about the disk are in the
    /// document's terms. The driver reads every file as not executable and compares a
    /// hash it read with one the engine gave as [`Engine::same_on_disk`] does (the bit
    /// ignored), and sets no mode when it writes.
    pub modes_unkept: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_offline_ms: 7 * 24 * 3600 * 1000,
            tombstone_ms: 7 * 24 * 3600 * 1000,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            cache_docs: 256,
            anti_entropy_ms: 30_000,
            pull_timeout_ms: 60_000,
            max_message_bytes: 1024 * 1024 - 4096,
            // A quarter of a second at the relay's default byte rate (16 MiB/s), as the
            // daemon ticks every quarter second while an answer is under way.
            answer_chunk_bytes: 4 * 1024 * 1024,
            compact_after: 64,
            case_insensitive: false,
            modes_unkept: false,
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
    /// A file's content on disk, seen at start-up or after a save, and whether it is
    /// executable (git's rule: the owner's `x` bit; no other mode bit is synced). A
    /// `chmod` alone is a change.
    FileChanged {
        path: String,
        content: Vec<u8>,
        exec: bool,
    },
    /// A [`Effect::WriteFile`] or [`Effect::RemoveFile`] was not carried out because the
    /// disk did not hold what the engine expected: the user saved something the watcher
    /// has not reported yet. This is that content; it is merged as an edit of the version
    /// that was on disk before the refused write, unless it is another file's bytes as
    /// believed at another name (that file was moved there: the write is put off until
    /// the watcher tells of the move). `expect`: what the write expected there (what the
    /// engine believed the disk held before it; `None` when nothing). The effect is told
    /// by its path and `expect`; the content is an edit of the file whose bytes `expect`
    /// hashes, not of the file written there when that is another (a note moved over
    /// another: the replaced note's edit is kept beside it). A write that follows, in the
    /// same carry-out, a refused removal at its path is not made (it would be refused
    /// too): it is put off ([`Input::WriteDeferred`], told first).
    WriteRefused {
        path: String,
        content: Vec<u8>,
        exec: bool,
        expect: Option<ContentHash>,
    },
    /// A [`Effect::WriteFile`] or [`Effect::RemoveFile`] at `path` was carried out, but the
    /// file it replaced had been written to in that instant (a program appending to it):
    /// `content` is what that file held. It is merged as an edit of the version that was on
    /// disk before the write; a removed file's edit is kept beside as a copy. `expect`:
    /// what the effect expected there (as in [`Input::WriteRefused`]): the bytes replaced
    /// are those of the file believed there before it, whose edit this is (not the file
    /// written there, when another: a note moved over another).
    ReplacedEdit {
        path: String,
        content: Vec<u8>,
        exec: bool,
        expect: Option<ContentHash>,
    },
    /// Files found on disk that cannot be synced, and why (a name with a backslash or a
    /// control character, an unreadable file): the whole set, from a scan. Listed under
    /// `skipped`; nothing else follows from them.
    Unsyncable { files: BTreeMap<String, String> },
    /// One such file appeared (`reason`) or went (`None`).
    UnsyncableFile {
        path: String,
        reason: Option<String>,
    },
    /// A program kept writing to the file at `path` after a write replaced it (it had the
    /// file open): `content` is what that replaced file holds now, `replaced` the hash of
    /// what it held when it was replaced. Merged as an edit of that version when the
    /// engine still knows it (it remembers the last few), else kept beside as a copy and
    /// said in the activity log.
    LateWrite {
        path: String,
        replaced: ContentHash,
        content: Vec<u8>,
        exec: bool,
    },
    /// A [`Effect::WriteFile`] at `path` expecting the file the engine believes there
    /// found nothing: the user moved it (its folder, say) or deleted it, and the watcher
    /// has not said so yet. Not written (written at the old path, the peer's version
    /// made a renamed folder come back, and the moved file's older content was taken
    /// for an edit undoing it): the belief goes back to `expect`, and the write is made
    /// again at the next tick, where the file went once the move or deletion is taken
    /// in. Still gone after [`GONE_WAIT_MS`] with nothing said (a path the watcher does
    /// not report: ignored, the guard holding deletions), the file is written at the
    /// path as a new one, as before.
    WriteFoundGone {
        path: String,
        expect: Option<ContentHash>,
    },
    /// A [`Effect::WriteFile`] or [`Effect::RemoveFile`] at `path` was not carried out
    /// because the file keeps changing under the writes (the carry-out's feedback limit):
    /// the disk still holds `expect`. Like [`Input::WriteFailed`] without the error: the
    /// belief goes back, and the write is made at the next tick.
    WriteDeferred {
        path: String,
        expect: Option<ContentHash>,
    },
    /// What kept files from being written may be gone (a disk mounted again): every
    /// write that failed is tried again at the next tick, not a minute after it failed.
    RetryWrites,
    /// The files believed on disk in the folder `folder` (or at it) are not there, and
    /// nobody deleted them (the folder of a disk the user told cue to forget: what the
    /// disk held is not in the folder left behind). The belief goes, and each is written
    /// again from its document (a file found at its name is a second creation, kept
    /// beside it); the writes refused there meanwhile (peers' new files) are made now
    /// too, not at the next tick.
    NotOnDisk { folder: String },
    /// A [`Effect::WriteFile`] or [`Effect::RemoveFile`] at `path` could not be carried out
    /// (a folder or a link in the way, no permission, a full disk): the disk still holds
    /// `expect`, the hash the effect expected there. The engine takes its belief back,
    /// lists the file as not synced here and tries again later; it never takes the file
    /// for deleted.
    WriteFailed {
        path: String,
        expect: Option<ContentHash>,
        reason: String,
    },
    /// The files believed on disk that this device's ignore rules now exclude (the whole
    /// set; it replaces the last one). As in git, ignoring a path stops syncing it from
    /// here and deletes nothing anywhere: these stay as they are on disk, are never
    /// written, removed or taken for deleted here, until the rules change.
    Ignored { paths: BTreeSet<String> },
    /// A file larger than `max_file_size`: not synced, listed as skipped.
    ///
    /// `head` is the file's first [`Engine::growth_check_len`] bytes (empty when not
    /// asked for): versions taken in here while the file was being written to that size
    /// (a partial copy, the empty file a rewrite starts with) are its beginnings, and the
    /// file's synced content goes back to what it was before them.
    FileTooLarge {
        path: String,
        size: u64,
        head: Vec<u8>,
    },
    /// A file is gone from disk.
    FileRemoved { path: String },
    /// A file moved (its content at the new place included, as it may have changed too).
    FileRenamed {
        from: String,
        to: String,
        content: Vec<u8>,
        exec: bool,
    },
    /// We reached the relay (and so any peer that is online).
    Connected,
    /// We lost the relay: every peer is offline now.
    Disconnected,
    /// A peer left the relay room.
    PeerLeft { device: DeviceId },
    /// An engine message from a peer (already verified and decrypted by the driver).
    Message { from: DeviceId, bytes: Vec<u8> },
    /// A device proved it holds the workspace invite: make it a member. `admission` is
    /// its signed admission (docs/protocol.md §2.6), kept in the member list so that
    /// every member can check it; empty for a driver that has none.
    Admit {
        device: DeviceId,
        name: String,
        admission: Vec<u8>,
    },
    /// This device admitted `device` (it proved it holds one of our invites): recorded
    /// in the index, so that every member sees who admitted whom and when.
    Admitted { device: DeviceId },
    /// Rotation records, made here (`cue sync rotate`, `remove`) or received through the
    /// lobby: kept in the index if valid (see `rotation.rs`).
    Rotations { records: Vec<Vec<u8>> },
    /// `cue sync now`: announce our state to every online peer and ask each for its own,
    /// so that each side pulls what it lacks and confirms what it holds.
    SyncNow,
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

impl Persist {
    /// Whether this holds document data (changes, a compacted document, a deletion): what
    /// a commit must make durable at once, never only "soon" (see [`crate::carry::Host::commit`]).
    /// The engine's state and a file's record alone say what the engine learned from
    /// messages (a peer's confirmation, when it last synced), which it learns again.
    pub fn holds_document_data(&self) -> bool {
        match self {
            Persist::Doc {
                bytes, snapshot, ..
            } => *snapshot || !bytes.is_empty(),
            Persist::DeleteDoc { .. } => true,
            Persist::State { .. } => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Persist(Persist),
    /// Write `bytes` to `path`. `expect` is what the engine believes is there now (`None`:
    /// nothing). If the disk holds something else, the driver must not write: it feeds
    /// the disk's content back as [`Input::FileChanged`] and the engine merges it first.
    /// With `exec` the file is made executable as git does (`x` where `r` is set), without
    /// it every `x` bit is cleared; no other mode bit changes, and a new file gets the
    /// usual mode.
    WriteFile {
        path: String,
        bytes: Vec<u8>,
        exec: bool,
        expect: Option<ContentHash>,
    },
    /// Remove `path` if it still holds `expect`.
    RemoveFile {
        path: String,
        expect: Option<ContentHash>,
    },
    /// Read the regular file at `path` and feed what it holds back as
    /// [`Input::FileChanged`] (nothing when none is there). Asked after the engine lost
    /// what it held of a file (its stored document no longer loads): the file on disk is
    /// taken in again, as a new file.
    ReadFile {
        path: String,
    },
    /// Send an engine message to one peer, or to all (`to: None`).
    Send {
        to: Option<DeviceId>,
        bytes: Vec<u8>,
    },
    Activity(Activity),
}

impl Effect {
    /// The path a file effect (a write or a removal) is about.
    pub fn file_path(&self) -> Option<&str> {
        match self {
            Effect::WriteFile { path, .. } | Effect::RemoveFile { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// The kinds of activity-log entries (docs/reference.md §1.10); the engine emits them and the
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
    /// Concurrent edits from two devices changed one paragraph; both are kept,
    /// interleaved, and a person should read it (see `overlaps.rs`).
    Overlap,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 11] = [
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
        ActivityKind::Overlap,
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
            ActivityKind::Overlap => "overlap",
        }
    }
}

impl ActivityKind {
    /// The kind `activity log --json` prints: one of the contract's ten
    /// (docs/reference.md §1.10). An overlapping-edit notice is a `conflict` there (its
    /// detail names the paragraph); the store and the log's text keep `overlap`.
    pub fn contract_name(&self) -> &'static str {
        match self {
            ActivityKind::Overlap => ActivityKind::Conflict.as_str(),
            other => other.as_str(),
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
    /// Items refused unparsed because they would inflate past
    /// [`crate::inflate::MAX_INFLATED_ITEM`] (a decompression bomb).
    /// These counters are stored after the state's last tail ([`LaterCounters`]), so
    /// older states still decode.
    #[serde(skip)]
    pub oversized_items: u64,
    /// Live changes whose actor is not one of the sender's, refused.
    #[serde(skip)]
    pub forged_changes: u64,
    /// Pulls from a peer that asked again too soon: not answered.
    #[serde(skip)]
    pub excess_pulls: u64,
    /// Member-list entries without a valid admission, ignored.
    #[serde(skip)]
    pub bad_members: u64,
    /// Rotation records that are not valid (bad signature, not a member's), ignored.
    #[serde(skip)]
    pub bad_rotations: u64,
    /// Documents of files no index entry named, dropped past their bound (see
    /// docs/security.md, "Documents for files nobody names").
    #[serde(skip)]
    pub unnamed_documents: u64,
}

impl Counters {
    /// Each kind of refused input by name, with its count, leaving out those at zero
    /// (what `status --json` shows as `refused_input`).
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        [
            ("bad_messages", self.bad_messages),
            ("bad_changes", self.bad_changes),
            ("bad_documents", self.bad_documents),
            ("bad_paths", self.bad_paths),
            ("dropped_chunks", self.dropped_chunks),
            ("oversized_items", self.oversized_items),
            ("forged_changes", self.forged_changes),
            ("excess_pulls", self.excess_pulls),
            ("bad_members", self.bad_members),
            ("bad_rotations", self.bad_rotations),
            ("unnamed_documents", self.unnamed_documents),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("{0} was never deleted, or its tombstone has expired (see `cue activity log`)")]
    NotDeleted(String),
    #[error("{0} exists; move it away before restoring the deleted file")]
    PathTaken(String),
    #[error("no open conflict or overlapping edit is reported for {0} (see `cue sync status`)")]
    NoConflict(String),
    #[error("the document for {0} is not available: {1}")]
    Unavailable(String, String),
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
    /// Online, and the digest it last announced is ours: each holds what the other does.
    pub in_sync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub files: usize,
    pub pending_changes: usize,
    pub conflicts: Vec<ConflictInfo>,
    /// Paragraphs concurrent edits from two devices both changed, found here and not yet
    /// cleared with `resolve` (see `overlaps.rs`).
    pub overlaps: Vec<OverlapInfo>,
    pub skipped: Vec<(String, u64)>,
    /// Files another device holds too large to sync (path, its name, size there): this
    /// device keeps their last synced content.
    pub too_large_elsewhere: Vec<(String, String, u64)>,
    /// Files that could not be written here, and why (retried now and then).
    pub unwritable: Vec<(String, String)>,
    /// Files on disk here that cannot be synced, and why (see [`Input::Unsyncable`]).
    pub unsyncable: Vec<(String, String)>,
    /// Deletions from peers held by the mass-deletion guard, if any.
    pub deletions_paused: Option<DeletionsPaused>,
    pub peers: Vec<PeerInfo>,
    pub last_full_resync_ms: Option<i64>,
    pub connected: bool,
    pub syncing: bool,
    /// The catch-up with a peer under way, if one is (what a first sync shows).
    pub catch_up: Option<CatchUp>,
    /// Files received with their content and not yet checked against their documents.
    pub unverified: usize,
    /// Synced files that this device's ignore rules exclude now: they stay as they are
    /// here and no longer sync.
    pub ignored: usize,
    /// Input from peers refused since the workspace began here, by kind.
    pub refused: Counters,
    /// Whether the folder keeps Unix modes (see [`Config::modes_unkept`]).
    pub modes_kept: bool,
}

/// Deletions held by the mass-deletion guard (docs/reference.md §3.3): `cue sync
/// apply-deletions` lets them through, `cue sync restore .` undoes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionsPaused {
    pub count: usize,
    pub reason: String,
    pub since_ms: i64,
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
