//! The sync engine: a state machine that takes inputs and returns effects.
//!
//! The daemon (and the simulation) owns the IO: it feeds [`Input`]s with the current time
//! and a [`DocStore`] to read persisted documents from, and carries out the [`Effect`]s in
//! order. Effects come out in a fixed order: persistence first, then file writes, then
//! messages. A driver must make the persistence durable before sending, so that a change
//! a peer has seen is never lost in a crash.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use automerge::{ActorId, Change, ChangeHash};
use serde::{Deserialize, Serialize};

use crate::doc::{DocError, FieldConflict, FileDoc};
use crate::ids::{ContentHash, DeviceId, DocId, FileId, content_hash, file_hash};
use crate::index::{ConflictKind, ConflictRecord, IndexDoc, Tombstone};
use crate::inflate::{Budget, InflateError, MAX_INFLATED_ITEM};
use crate::paths::{name_key, valid_path};
use crate::seal::{Seal, SealKey};
use crate::wire::{self, Heads, Item};

mod apply;
mod conflicts;
mod contract;
mod docs;
mod files;
mod growth;
mod history;
mod layout;
mod limit;
mod local;
mod members;
mod outbox;
mod overlaps;
mod pace;
mod peers;
mod pull;
mod rotation;
mod seniority;
mod status;
mod view;

use apply::*;
pub use conflicts::conflict_copy_name;
pub use contract::*;
use files::Files;
pub use history::{Exported, HistoryError, REV_DIGITS, Version};
pub use layout::FileMeta;
use layout::*;
use limit::{DeferredPull, PullLimiter};
use members::Check;
pub use members::{ADMISSION_PREFIX, AdmissionCheck};
use overlaps::StateTail4;
pub use overlaps::{OverlapInfo, overlap_detail};
use pace::Pacer;
use peers::*;
use pull::*;
use rotation::{Chain, RotCheck};
pub use rotation::{DeviceInfo, Generation, LobbyAnswer, Removal, RotationCheck, RotationMeta};
pub use seniority::{MAKER_KEY, MakerCheck};
use view::{DiskOp, Stale, Unwritable};

/// Above this, a reassembled chunked item is refused (a file is at most
/// `max_file_size`; its document a little more).
const MAX_CHUNKED_ITEM: usize = 64 * 1024 * 1024;
const MAX_PARTIAL_ITEMS_PER_PEER: usize = 16;
/// Above this, in partly received items from all peers together, a new piece is refused
/// (a member can send as many partial items as it likes, and more than one member can).
const MAX_PARTIAL_BYTES: usize = 2 * MAX_CHUNKED_ITEM;
/// What one received piece costs besides its bytes (its place in the map), counted
/// against the limits so that empty pieces are not free.
const PIECE_OVERHEAD: usize = 64;
/// Adopted documents checked per tick and thread (`set_threads`): ≈ 2.4 ms each for a
/// 4 KB note, so a tick stays near 20 ms, and the daemon ticks again at once while any
/// are left (10,000 adopted notes checked in seconds, not minutes).
const VERIFY_PER_TICK: usize = 8;
/// Adopted documents are checked once no document has been adopted for this long: the
/// checks' automerge loads (≈ 1.5 ms a note) would otherwise take a core from the burst
/// or first sync still arriving (a 3,000-note copy-in spent 28 % of the receiver's time
/// in them). Within the burst the content is on disk already; the checks follow it.
const CHECK_AFTER_QUIET_MS: i64 = 250;
/// …but once checks have been owed this long they go on, tick after tick, until none are
/// left, so that a peer streaming documents without a pause cannot keep them unchecked.
/// Longer than most bursts take (a copy of 10,000 notes: 21.5 s with 30 s, 27.2 s with 5 s,
/// the checks taking a core from the burst from then on); the same bound as a first
/// sync's checks are held to once it is over.
const CHECK_PUT_OFF_AT_MOST_MS: i64 = 30_000;
/// Documents stored whole again per tick, and after how many increments.
const COMPACT_PER_TICK: usize = 4;
const COMPACT_WHEN_TICKING_AFTER: u32 = 8;
/// Once nothing has happened for this long, every document with increments (and the
/// index) is stored whole: at rest a store holds one snapshot a document. A snapshot of
/// a cached document costs a `save()` (≈0.1 ms for a 4 KB note).
const COMPACT_AT_REST_AFTER_MS: i64 = 2_000;
/// A file that could not be written is tried again after this long (or as soon as the
/// index changes, which is how a folder in the way usually goes).
const UNWRITABLE_RETRY_MS: i64 = 60_000;
/// Deletions from peers within this long count together for the mass-deletion guard.
const REMOTE_GUARD_WINDOW_MS: i64 = 10_000;

/// Documents of files the index does not name (no entry, live or deleted) are kept, as
/// one may come before its index entry, but bounded (`docs.rs`, `drop_unnamed`): at most
/// this many, …
const MAX_UNNAMED_DOCS: usize = 1024;
/// … holding at most this many bytes as they came, …
const MAX_UNNAMED_BYTES: u64 = 32 * 1024 * 1024;
/// … each for at most this long. One dropped that the index names later comes again from
/// a peer that holds it (the digest covers every file the index names).
const UNNAMED_KEPT_MS: i64 = 10 * 60 * 1000;
/// How often every record is looked at for files the index no longer names (a deletion
/// a peer purged, records an older version kept).
const UNNAMED_SWEEP_MS: i64 = 60_000;

/// A file this device keeps a record of that the index does not name (`docs.rs`,
/// `drop_unnamed`).
#[derive(Debug)]
struct Unnamed {
    /// When it was first seen unnamed.
    since_ms: i64,
    /// What came for it, or its content's size when found by the sweep.
    bytes: u64,
    /// A peer sent it in this run (it counts against the bounds); else the sweep found
    /// it (a deletion a peer purged, or a record of an earlier run).
    sent: bool,
}

/// How long a write that found its file gone waits for the watcher to say where it went
/// ([`Input::WriteFoundGone`]): well past the watcher's longest batch (a second).
pub const GONE_WAIT_MS: i64 = 3_000;

/// A new file's document made ahead, and what making it returned.
type Prepared = (FileDoc, Result<Option<ChangeHash>, DocError>);

#[derive(Debug)]
pub struct Engine {
    device: DeviceId,
    /// This device's key: it seals our changes (`crate::seal`).
    key: SealKey,
    /// This run's epoch (part of our actor id).
    epoch: u32,
    /// Seals made in this run: their order (`crate::seal::Seal::counter`).
    seal_counter: u64,
    /// Seals that came (verified) before the changes they name, for documents with no
    /// record yet (those with one keep theirs in it, stored: `FileMeta::waiting`).
    waiting_apart: BTreeMap<FileId, Vec<Seal>>,
    /// Files with a record the index does not name: since when, and the bytes that came
    /// for them (see [`MAX_UNNAMED_DOCS`]). In memory: after a restart the sweep finds
    /// them again.
    unnamed: BTreeMap<FileId, Unnamed>,
    /// When every record was last looked at for `unnamed` (`None`: not in this run).
    unnamed_swept_ms: Option<i64>,
    name: String,
    actor: ActorId,
    config: Config,
    index: IndexDoc,
    index_dirty: bool,
    index_increments: u32,
    /// Every file's record, and what is believed to be on disk.
    files: Files,
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
    /// When a document was last adopted, and since when adopted documents have waited
    /// for their checks (the last tick that found none waiting): see
    /// `CHECK_AFTER_QUIET_MS`.
    last_adopt_ms: i64,
    checks_owed_since_ms: i64,
    // Output being built during one call.
    out_files: Vec<Effect>,
    out_activity: Vec<Effect>,
    out_items: BTreeMap<Option<DeviceId>, Vec<Item>>,
    /// Files whose disk state must be brought in line with their document.
    to_reconcile: BTreeSet<FileId>,
    index_changed: bool,
    live_cache: Option<Arc<BTreeMap<FileId, String>>>,
    /// The `name_key` of every path in `live_cache`, with how many live files have it
    /// (more than one only while a clash is not settled), made when first needed
    /// (`became_live`, `paths_changed`) and dropped with it.
    live_keys: Option<BTreeMap<String, u32>>,
    /// Whole documents received for files we did not have: stored as received.
    adopted: BTreeMap<FileId, Vec<u8>>,
    /// Content that came with adopted documents, until it is written to disk.
    adopted_content: BTreeMap<FileId, Vec<u8>>,
    /// A changed document's content as `refresh_meta` rendered it, with its mode, while
    /// the disk does not hold it: what the write takes (rendering a note again was 5 %
    /// of a receiver's time). Until the reconcile that writes it.
    rendered: BTreeMap<FileId, (Vec<u8>, bool)>,
    /// Documents of the batch's new files made ahead on other threads
    /// (`prepare_new_files`), by path and content hash, until the batch's end.
    prepared: BTreeMap<(String, ContentHash), Prepared>,
    /// How many threads may make new files' documents at once (`set_threads`).
    threads: usize,
    tail: StateTail,
    tail2: StateTail2,
    tail3: StateTail3,
    /// Overlapping-edit notices (see `overlaps.rs`).
    tail4: StateTail4,
    tail5: StateTail5,
    tail6: StateTail6,
    /// Deletions purged here (see `StateTail7`).
    tail7: StateTail7,
    /// This round's file effects by path, in order, each with what it expected there
    /// (cleared at each tick): what the carry-out reports of an effect (refused, failed,
    /// made over a program's write) is about the file it was for, and what the disk
    /// found is the edit of the file whose bytes it expected, not of whichever file the
    /// path is believed to hold now (a note moved over another: the replaced note's
    /// edit is not the moved note's).
    disk_ops: BTreeMap<String, Vec<DiskOp>>,
    /// Old names of files moved elsewhere on this disk that held a save when they were
    /// to go (`Engine::moved_away_edit`): the file, the version that save was merged
    /// as, and when. A later save there, reported by the watcher, is an edit of it too.
    moved_from: BTreeMap<String, (FileId, Heads, i64)>,
    /// Files whose write or removal failed. Not written again until the index changes or
    /// [`UNWRITABLE_RETRY_MS`] passes.
    unwritable: BTreeMap<FileId, Unwritable>,
    /// The versions that writes replaced lately, by the hash of their content: a program
    /// still writing to a replaced file ([`Input::LateWrite`]) edited that version.
    replaced_versions: VecDeque<(ContentHash, Heads)>,
    /// Fork actors used in this run (see `fork_actor`).
    forks: u32,
    /// Files on disk that cannot be synced, and why (as the driver found them).
    unsyncable: BTreeMap<String, String>,
    /// Each file's last local versions (see `growth`).
    growth: BTreeMap<FileId, VecDeque<growth::Version>>,
    /// Files dropped as one with another left on disk for it (see `view.rs`
    /// `kept_for_twin`): looked at again whenever paths change (`paths_changed`), since
    /// what they wait for (the other file's path) can change without them.
    kept_for_twins: BTreeSet<FileId>,
    /// Files peers deleted lately (when, which): the remote mass-deletion guard's window.
    recent_remote_deletions: Vec<(i64, FileId)>,
    /// Files whose write found nothing where the file was believed
    /// ([`Input::WriteFoundGone`]): since when, and when last.
    found_gone: BTreeMap<FileId, (i64, i64)>,
    /// Documents we asked a peer for because changes it sent lacked their dependencies,
    /// and when: its answer may carry other members' changes.
    asked: BTreeMap<(DeviceId, DocId), i64>,
    /// How often each peer's pulls are answered (see `limit.rs`).
    pull_limits: PullLimiter,
    /// How fast each peer's automerge bytes go to automerge (see `pace.rs`).
    pacer: Pacer,
    /// Heavy pulls waiting for their asker's allowance, the latest per asker.
    deferred_pulls: BTreeMap<DeviceId, DeferredPull>,
    /// Pulls being answered a chunk at a time (`pull.rs`), by asker.
    answering: BTreeMap<DeviceId, pull::Answer>,
    /// The order of the pulls put to wait ([`DeferredPull::queued`]).
    deferred_queue: u64,
    /// The driver's check of admissions in the member list (see `members.rs`).
    admission_check: Option<Check>,
    /// Who is taken for a member now, by name (see `members.rs`).
    members_view: BTreeMap<DeviceId, String>,
    /// What each member-list value written by an actor was judged to be (the name it
    /// admits, or nothing), so that each is checked and counted once.
    member_verdicts: BTreeMap<(DeviceId, String, Vec<u8>), Option<String>>,
    /// The driver's check of rotation records (see `rotation.rs`).
    rotation_check: Option<RotCheck>,
    /// What each rotation record was judged to be, so that each is checked once.
    rotation_verdicts: BTreeMap<Vec<u8>, Option<RotationMeta>>,
    /// The driver's check of the entry naming the workspace's maker (`seniority.rs`).
    maker_check: Option<seniority::MakerFn>,
    /// The secret generations the index's records amount to.
    chain: Chain,
    /// Devices taken for members before the index says so (see [`Engine::trust`]).
    introducers: BTreeSet<DeviceId>,
    /// Files whose stored records did not decode, made again from their documents on the
    /// first input (`rebuild_records`: the store comes with the inputs).
    damaged_records: BTreeSet<FileId>,
    /// Files whose stored documents did not load: taken in again from their files at the
    /// call's end (`take_in_damaged_docs`).
    damaged_docs: BTreeSet<FileId>,
}

pub(super) fn to_heads(h: &[ChangeHash]) -> Heads {
    let mut v: Heads = h.iter().map(|c| c.0).collect();
    v.sort();
    v
}

pub(super) fn from_heads(h: &Heads) -> Vec<ChangeHash> {
    h.iter().map(|b| ChangeHash(*b)).collect()
}

/// The actor id for a device in one run: the device id's first 16 bytes, an epoch the
/// driver increments at every start, and the era byte that says its changes are sealed
/// (`crate::seal`; actors made before seals end at the epoch). A crash can lose a change
/// that was made but not stored; a new epoch means the next change can never reuse its
/// sequence number.
pub fn actor_for(device: &DeviceId, epoch: u32) -> ActorId {
    let mut bytes = device.0[..16].to_vec();
    bytes.extend_from_slice(&epoch.to_be_bytes());
    bytes.push(crate::seal::SEALING_ERA);
    ActorId::from(bytes)
}

/// Whether `actor` is one of `device`'s, in any epoch (see [`actor_for`]).
pub(super) fn made_by(device: &DeviceId, actor: &ActorId) -> bool {
    actor.to_bytes().starts_with(&device.0[..16])
}

impl Engine {
    /// Start an engine for `device`. `restored` is what a previous run persisted (empty
    /// for a new workspace or a join).
    pub fn new(
        key: SealKey,
        name: &str,
        epoch: u32,
        config: Config,
        restored: Restored,
        now_ms: i64,
    ) -> (Engine, Vec<Effect>) {
        let device = key.device();
        let actor = actor_for(&device, epoch);
        let Decoded {
            index,
            state,
            tail,
            tail2,
            tail3,
            tail4,
            tail5,
            tail6,
            tail7,
            metas,
            moved,
            older_layout,
            index_lost,
            damaged_records,
        } = decode_restored(restored, &actor);
        let fold_case = config.case_insensitive;
        let mut engine = Engine {
            device,
            key,
            epoch,
            seal_counter: 0,
            waiting_apart: BTreeMap::new(),
            unnamed: BTreeMap::new(),
            unnamed_swept_ms: None,
            name: name.to_string(),
            actor,
            config,
            index,
            index_dirty: false,
            index_increments: 0,
            files: Files::new(metas, fold_case),
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
            last_adopt_ms: i64::MIN / 2,
            checks_owed_since_ms: now_ms,
            out_files: Vec::new(),
            out_activity: Vec::new(),
            out_items: BTreeMap::new(),
            to_reconcile: BTreeSet::new(),
            // Every file is brought in line with the disk once after a start (a file that
            // could not be written before is tried again).
            index_changed: true,
            live_cache: None,
            live_keys: None,
            adopted: BTreeMap::new(),
            adopted_content: BTreeMap::new(),
            rendered: BTreeMap::new(),
            prepared: BTreeMap::new(),
            threads: 1,
            tail,
            tail2,
            tail3,
            tail4,
            tail5,
            tail6,
            tail7,
            disk_ops: BTreeMap::new(),
            moved_from: BTreeMap::new(),
            unwritable: BTreeMap::new(),
            replaced_versions: VecDeque::new(),
            forks: 0,
            unsyncable: BTreeMap::new(),
            growth: BTreeMap::new(),
            kept_for_twins: BTreeSet::new(),
            recent_remote_deletions: Vec::new(),
            found_gone: BTreeMap::new(),
            asked: BTreeMap::new(),
            pull_limits: PullLimiter::new(),
            pacer: Pacer::new(),
            deferred_pulls: BTreeMap::new(),
            answering: BTreeMap::new(),
            deferred_queue: 0,
            admission_check: None,
            members_view: BTreeMap::new(),
            member_verdicts: BTreeMap::new(),
            rotation_check: None,
            rotation_verdicts: BTreeMap::new(),
            maker_check: None,
            chain: Chain::default(),
            introducers: BTreeSet::new(),
            damaged_records,
            damaged_docs: BTreeSet::new(),
        };
        // Stored member entries are judged again below: those refused were counted when
        // they came (see `judge_stored_members`).
        let counted = engine.state.counters.bad_members;
        if index_lost {
            engine.rebuild_index();
        }
        // Files dropped as one with a file that stands were never deleted (earlier
        // versions' guard held them; see `twin_standing`).
        let dropped: Vec<FileId> = (engine.tail3.held.iter().copied())
            .filter(|f| engine.twin_standing(f).is_some())
            .collect();
        engine.release_held(&dropped);
        // Make sure we are in our own member list (a new workspace, or a renamed device).
        if !engine.own_entry_current() {
            let _ = engine.index.set_member(&device, name);
            engine.commit_index();
        }
        engine.refresh_members();
        engine.state.counters.bad_members = counted;
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

    /// Whether `device` is taken for a member (see `members.rs`: not every entry a peer
    /// writes into the member list is).
    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.members_view.contains_key(device)
    }

    /// The members and their names (see [`Engine::is_member`]).
    pub fn members(&self) -> BTreeMap<DeviceId, String> {
        self.members_view.clone()
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
        self.pull_limits.set_time(now_ms);
        self.pacer.set_time(now_ms);
        let inputs: Vec<Input> = inputs.into_iter().collect();
        if !self.damaged_records.is_empty() {
            self.rebuild_records(store);
        }
        self.take_swaps(&inputs);
        if self.threads > 1 {
            self.prepare_new_files(&inputs);
            let edited = self.edited_files(&inputs);
            self.preload_docs(edited, store);
        }
        for input in inputs {
            self.dispatch(input, store);
        }
        self.prepared.clear();
        self.continue_answers(store);
        self.finish(store)
    }

    /// Lets up to `threads` threads make the documents of a batch's new files and check
    /// documents adopted whole (1, the default: none but the caller's). The outcome is
    /// the same whatever the number: each job depends on its own inputs alone (a new
    /// file's content, this run's actor and the batch's time; an adopted document's
    /// bytes and seals).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    fn dispatch(&mut self, input: Input, store: &mut dyn DocStore) {
        if !matches!(input, Input::Tick) {
            self.last_input_ms = self.now_ms;
        }
        match input {
            Input::FileChanged {
                path,
                content,
                exec,
            } => {
                // Read: no longer listed as unreadable.
                self.unsyncable.remove(&path);
                if !self.moved_away_edit(&path, &content, exec, None, store) {
                    self.local_change(&path, content, exec, store)
                }
            }
            Input::WriteRefused {
                path,
                content,
                exec,
                expect,
            } => {
                if self.leaving_edit(&path, expect, &content, exec, true, store)
                    || self.moved_away_edit(&path, &content, exec, Some(expect), store)
                {
                    return;
                }
                // Another file's bytes, believed at another name: that file was moved
                // here (folders swapped, `mv p t; mv q p; mv t q`) as this write was made,
                // and the watcher tells of the moves next. Taken for an edit of this
                // file, the other note's text went into it, and a peer's edits made
                // meanwhile into the wrong note. Put off (the belief back), as a write
                // that found its file gone; the next tick tries it again.
                // (Believed there now, or before this round's effects: a write to that
                // other name, made in this round, believes it written already.)
                let hash = crate::ids::file_hash(&content, exec);
                let expected_elsewhere = self
                    .disk_ops
                    .iter()
                    .any(|(p, ops)| *p != path && ops.iter().any(|op| op.expect == Some(hash)));
                if let Some(f) = self.disk_op(&path, expect).map(|op| op.file)
                    && (expected_elsewhere || self.files.held_elsewhere(&hash, &path, &f))
                {
                    self.write_deferred(&path, expect);
                    return;
                }
                // A removal refused (a peer deleted the file, and it was saved to here
                // meanwhile): a deletion meeting an edit keeps the edit, the file stays.
                // Believed where it was, the save is its edit of the version the path
                // held, and it lives again (`local_change`), as every device that gets
                // the edit keeps it. (Before, the save was a new file of that name: the
                // note's history split off, and the device that deleted it, keeping the
                // note for the same edit, kept it beside the new one.)
                let removed = self.disk_op(&path, expect).and_then(|op| match &op.held {
                    Some((h, heads)) if *h == op.file => Some((*h, heads.clone())),
                    _ => None,
                });
                if let (None, Some((f, heads)), Some(e)) = (self.file_at(&path), removed, expect)
                    && let Some(mut m) = self.files.get_mut(&f)
                    && m.disk.is_none()
                {
                    m.disk = Some((path.clone(), e));
                    m.disk_heads = heads;
                } else if let Some(f) = self.file_at(&path)
                    && let Some(mut m) = self.files.get_mut(&f)
                {
                    m.disk_heads = std::mem::take(&mut m.prev_disk_heads);
                }
                self.local_change(&path, content, exec, store);
            }
            Input::ReplacedEdit {
                path,
                content,
                exec,
                expect,
            } => self.replaced_edit(&path, expect, content, exec, store),
            Input::WriteDeferred { path, expect } => self.write_deferred(&path, expect),
            Input::WriteFoundGone { path, expect } => self.write_found_gone(&path, expect),
            Input::RetryWrites => self.retry_writes_soon(),
            Input::NotOnDisk { folder } => self.not_on_disk(&folder),
            Input::Unsyncable { files } => self.unsyncable = files,
            Input::UnsyncableFile { path, reason } => match reason {
                Some(reason) => {
                    self.unsyncable.insert(path, reason);
                }
                None => {
                    self.unsyncable.remove(&path);
                }
            },
            Input::LateWrite {
                path,
                replaced,
                content,
                exec,
            } => {
                if self.late_write_merged(&path, replaced, &content, exec, store) {
                    return;
                }
                let copy = self.keep_as_copy(&path, content, exec, store);
                let name = self.name.clone();
                self.activity(
                    ActivityKind::Error,
                    Some(path),
                    &name,
                    Some(format!(
                        "a program kept writing to this file after cue replaced it with a \
                         peer's version; what it wrote is kept as {copy}"
                    )),
                );
            }
            Input::WriteFailed {
                path,
                expect,
                reason,
            } => self.write_failed(&path, expect, reason),
            Input::Ignored { paths } => {
                if paths != self.state.ignored {
                    self.state.ignored = paths;
                    self.state_dirty = true;
                    self.invalidate(Stale::View);
                }
            }
            Input::FileTooLarge { path, size, head } => {
                self.state.skipped.insert(path.clone(), size);
                self.state_dirty = true;
                self.undo_growth(&path, &head, store);
                self.say_too_large(&path, Some(size));
            }
            Input::FileRemoved { path } => {
                // (A name left by a moved file, gone now: a file made there later is new.)
                self.moved_from.remove(&path);
                self.local_remove(&path, store)
            }
            Input::FileRenamed {
                from,
                to,
                content,
                exec,
            } => self.local_rename(&from, &to, content, exec, store),
            Input::Connected => {
                self.connected = true;
                self.hello(None, true);
            }
            Input::Disconnected => {
                self.connected = false;
                self.pull = None;
                // Every asker's answer too: each asks again when we meet again (an
                // asker we had not marked online is not caught by `peer_offline`).
                self.answering.clear();
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
            Input::Admit {
                device,
                name,
                admission,
            } => self.admit(device, name, admission),
            Input::Admitted { device } => self.record_admitted(device),
            Input::Rotations { records } => self.take_rotations(records),
            Input::SyncNow => {
                if self.connected {
                    self.hello(None, true);
                    self.maybe_pull(store);
                }
            }
            Input::Tick => self.tick(store),
        }
    }
}

/// `work` done on each of `jobs`, on up to `threads` scoped threads (on the caller's
/// alone for one thread or one job), the results in the jobs' order. A job whose worker
/// panicked gives `None`, as does every other job of that worker's share: the caller
/// does those its usual way, where a panic meets the daemon's net.
fn on_threads<T: Sync, R: Send>(
    threads: usize,
    jobs: &[T],
    work: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    if threads <= 1 || jobs.len() < 2 {
        return jobs.iter().map(|j| Some(work(j))).collect();
    }
    let per = jobs.len().div_ceil(threads.min(jobs.len()));
    let work = &work;
    std::thread::scope(|s| {
        let workers: Vec<_> = jobs
            .chunks(per)
            .map(|share| {
                let worker = s.spawn(move || share.iter().map(work).collect::<Vec<R>>());
                (share.len(), worker)
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(n, worker)| match worker.join() {
                Ok(done) => done.into_iter().map(Some).collect::<Vec<_>>(),
                Err(_) => (0..n).map(|_| None).collect(),
            })
            .collect()
    })
}
