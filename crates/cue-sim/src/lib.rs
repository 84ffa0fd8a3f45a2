//! A deterministic simulation of many cue engines, an in-memory relay and faults.
//!
//! Each simulated peer has an engine, a store (a map of the bytes the engine persisted)
//! and a disk (a map of path → bytes). The world plays both the daemon (carrying out
//! effects, feeding the watcher's inputs) and the relay (broadcasting to whoever is
//! online, dropping, duplicating and reordering messages when told to). Everything,
//! including time, comes from one seed, so a failing seed replays exactly.
//!
//! Tests use it two ways: hand-written scenarios for each merge rule (`tests/rules.rs`),
//! and thousands of random schedules (`tests/seeds.rs`) that assert, after healing,
//! identical trees on every peer and no lost edit.

pub mod bomb;
pub mod rotation;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cue_core::carry;
use cue_core::paths::name_key;
use cue_core::seal::SealKey;
use cue_core::wire::Item;
use cue_core::{
    Config, DeviceId, DocId, DocStore, Effect, Engine, FileId, Generation, Input, Persist,
    Restored, Status, content_hash, file_hash,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// What a peer's engine persisted, as the daemon's store would hold it.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    pub docs: BTreeMap<DocId, Vec<u8>>,
    pub metas: BTreeMap<FileId, Vec<u8>>,
    pub state: Option<Vec<u8>>,
    /// Increments stored after each document's last whole snapshot.
    pub increments: BTreeMap<DocId, usize>,
    /// What the commits made since the last durable one overwrote (`carry::Host::commit`'s
    /// `durable`), newest last: a power cut ([`World::power_cut`]) puts it back.
    pub unsynced: Vec<Unsynced>,
}

/// A value a commit not made durable overwrote.
#[derive(Debug, Clone)]
pub enum Unsynced {
    State(Option<Vec<u8>>),
    Meta(FileId, Option<Vec<u8>>),
}

impl DocStore for MemStore {
    fn load(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        self.docs.get(doc).cloned()
    }
}

/// A peer's store, folder and logs as the daemon's carry-out rules see them
/// ([`cue_core::carry`]): the simulation runs the daemon's rules, not a copy of them.
///
/// The folder is a map of path → bytes; folders are the paths' prefixes, so a file
/// cannot be written where a folder is, nor below a file, as on a real disk.
struct SimHost<'a> {
    store: &'a mut MemStore,
    disk: &'a mut BTreeMap<String, Vec<u8>>,
    /// The files of `disk` that are executable (the only mode bit cue syncs).
    exec: &'a mut BTreeSet<String>,
    activity: &'a mut Vec<cue_core::Activity>,
    write_failures: &'a mut Vec<(String, String)>,
    refuse_writes_under: &'a BTreeSet<String>,
    append_while_replaced: &'a mut BTreeMap<String, Vec<u8>>,
    case_insensitive: bool,
    /// The folder keeps no modes ([`World::make_modes_unkept`]): read as the daemon
    /// reads it then, every file not executable, and no write changes a mode.
    modes_unkept: bool,
    trace: Option<usize>,
}

impl World {
    /// `peer`'s own `item`, sealed for `epoch` ([`seal_as`]) and handed straight to each
    /// peer of `to` as its message (for tests that play a member sending what it made by
    /// hand).
    pub fn send_sealed(&mut self, peer: usize, epoch: u32, item: Item, to: &[usize]) {
        let from = self.peers[peer].device;
        let bytes = cue_core::wire::encode(&cue_core::wire::Message {
            items: vec![seal_as(&self.peers[peer].key, epoch, item)],
        });
        for &p in to {
            self.input(
                p,
                Input::Message {
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }
}

/// `item` (a document's changes, whole or not) sealed as the device of `key` seals its
/// own changes (`cue_core::seal`): a seal of `epoch` naming every change of its in the
/// item. For tests that play a member sending what it made by hand.
pub fn seal_as(key: &SealKey, epoch: u32, item: Item) -> Item {
    let prefix: [u8; 16] = key.device().0[..16].try_into().unwrap_or([0; 16]);
    let changes: Vec<automerge::Change> = match &item {
        Item::Changes { changes, .. } => changes
            .iter()
            .filter_map(|c| automerge::Change::from_bytes(c.clone()).ok())
            .collect(),
        Item::Whole { bytes, .. } | Item::Adopt { bytes, .. } => automerge::AutoCommit::load(bytes)
            .map(|mut d| d.get_changes(&[]))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let heads: Vec<[u8; 32]> = changes
        .iter()
        .filter(|c| cue_core::seal::sealing_actor(c.actor_id()).is_some_and(|(p, _)| p == prefix))
        .map(|c| c.hash().0)
        .collect();
    if heads.is_empty() {
        return item;
    }
    match cue_core::wire::Sealable::from_item(item) {
        Ok(item) => Item::Sealed {
            seals: vec![key.seal(epoch, 1, heads)],
            item,
        },
        Err(item) => item,
    }
}

/// What a member (`peer`'s device) sends for a new file of its own made by hand: the
/// index change that names `file` at `path` (on `peer`'s stored index), and the file's
/// document, which says `says`, adopted with `content` (which a faulty member may make
/// differ), each sealed under the member's own actor of epoch 99. For tests of what a
/// receiver makes of such a file.
pub fn new_file_items(
    w: &World,
    peer: usize,
    file: cue_core::FileId,
    path: &str,
    says: &[u8],
    content: &[u8],
) -> Vec<Item> {
    use cue_core::{DocId, FileDoc, index::IndexDoc};
    let actor = cue_core::actor_for(&w.peers[peer].device, 99);
    let mut doc = FileDoc::new(actor.clone());
    let mut items = Vec::new();
    if doc.write(path, says, 0).is_ok()
        && let Some(stored) = w.peers[peer].store.docs.get(&DocId::Index)
        && let Ok(mut index) = IndexDoc::load(stored, actor)
        && index.set_path(&file, path).is_ok()
        && let Some(change) = index.commit(0)
    {
        items.push(Item::Changes {
            doc: DocId::Index,
            changes: vec![change.raw_bytes().to_vec()],
        });
        items.push(Item::Adopt {
            doc: DocId::File(file),
            heads: doc.heads().iter().map(|h| h.0).collect(),
            bytes: doc.save(),
            content: content.to_vec(),
        });
    }
    let key = &w.peers[peer].key;
    items.into_iter().map(|i| seal_as(key, 99, i)).collect()
}

/// `n` small notes, `n0.md` … with `note 0` …: what many tests start a workspace with.
pub fn notes(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("n{i}.md"), format!("note {i}\n").into_bytes()))
        .collect()
}

/// Where `path` lands in `disk`: itself, or on a folder that ignores case (as macOS's,
/// exFAT, ext4 with casefold) the entry already there under another spelling of it, or
/// below the deepest folder already there under another spelling.
fn place(disk: &BTreeMap<String, Vec<u8>>, case_insensitive: bool, path: &str) -> String {
    if !case_insensitive || disk.contains_key(path) {
        return path.to_string();
    }
    let names: Vec<&str> = path.split('/').collect();
    for depth in (1..=names.len()).rev() {
        let want = name_key(&names[..depth].join("/"));
        for k in disk.keys() {
            let theirs: Vec<&str> = k.split('/').collect();
            if theirs.len() >= depth && name_key(&theirs[..depth].join("/")) == want {
                let mut placed = theirs[..depth].to_vec();
                placed.extend(&names[depth..]);
                return placed.join("/");
            }
        }
    }
    path.to_string()
}

/// `map` with its paths as a folder that ignores case takes them, when `fold`.
fn keyed<V: Clone>(fold: bool, map: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    map.iter()
        .map(|(k, v)| {
            let k = if fold { name_key(k) } else { k.clone() };
            (k, v.clone())
        })
        .collect()
}

impl DocStore for SimHost<'_> {
    fn load(&mut self, doc: &DocId) -> Option<Vec<u8>> {
        self.store.load(doc)
    }

    /// Documents can go to a new peer with their content (`Item::Adopt`).
    /// Like the daemon's, it compares the bytes' hash alone.
    fn content(&mut self, path: &str, hash: &cue_core::ContentHash) -> Option<Vec<u8>> {
        self.disk
            .get(&self.place(path))
            .filter(|c| cue_core::content_hash(c) == *hash)
            .cloned()
    }
}

impl SimHost<'_> {
    fn place(&self, path: &str) -> String {
        place(self.disk, self.case_insensitive, path)
    }

    /// What the disk holds at `path`, as the engine hashes it (bytes and executable bit).
    fn hash_at(&self, path: &str) -> Option<cue_core::ContentHash> {
        let bytes = self.disk.get(path)?;
        Some(file_hash(bytes, self.exec_at(path)))
    }

    /// Whether the file at `path` reads as executable (never, where modes are not kept).
    fn exec_at(&self, path: &str) -> bool {
        !self.modes_unkept && self.exec.contains(path)
    }

    /// Whether the disk holds what the engine expects at `path`, as the daemon compares:
    /// the bytes alone where modes are not kept.
    fn holds(&self, path: &str, expect: Option<cue_core::ContentHash>) -> bool {
        match (self.hash_at(path), expect) {
            (Some(h), Some(e)) if self.modes_unkept => cue_core::same_bytes(e, h),
            (h, e) => h == e,
        }
    }

    /// A program appended to the file at `path` in the instant it was replaced or
    /// removed: the daemon reads the replaced file back and reports what it held.
    fn appended_in_the_instant(
        &mut self,
        path: &str,
        replaced: Option<(Vec<u8>, bool)>,
    ) -> carry::Outcome {
        match (self.append_while_replaced.remove(path), replaced) {
            (Some(tail), Some((mut old, exec))) => {
                old.extend_from_slice(&tail);
                carry::Outcome::DoneOverEdit(old, exec)
            }
            _ => carry::Outcome::Done,
        }
    }

    fn is_folder(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.disk
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(p, _)| p.starts_with(&prefix))
    }

    /// Why nothing can be written at `path`, if nothing can.
    fn blocked(&self, path: &str) -> Option<String> {
        if let Some(dir) = self
            .refuse_writes_under
            .iter()
            .find(|d| path.starts_with(&format!("{d}/")))
        {
            return Some(format!("permission denied in {dir}"));
        }
        if self.is_folder(path) {
            return Some(format!("{path} is a folder, not a regular file"));
        }
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if self.disk.contains_key(dir) {
                return Some(format!(
                    "a component on the way to {path} is a file, not a folder"
                ));
            }
            at += i + 1;
        }
        None
    }
}

impl carry::Host for SimHost<'_> {
    type Error = std::convert::Infallible;
    type DiskError = String;

    fn commit(
        &mut self,
        persists: Vec<Persist>,
        activities: Vec<cue_core::Activity>,
        files: &[Effect],
        durable: bool,
    ) -> Result<(), Self::Error> {
        if let Some(peer) = self.trace {
            for e in files {
                trace_file_effect(peer, e, self.disk);
            }
            for a in &activities {
                eprintln!(
                    "  p{peer} activity {:?} {:?} {:?} {:?}",
                    a.kind, a.path, a.device, a.detail
                );
            }
        }
        if durable {
            self.store.unsynced.clear();
        }
        for p in persists {
            if !durable {
                self.store.keep_for_a_power_cut(&p);
            }
            self.store.apply(p);
        }
        self.activity.extend(activities);
        Ok(())
    }

    fn write_if(
        &mut self,
        path: &str,
        bytes: &[u8],
        exec: bool,
        expect: Option<cue_core::ContentHash>,
    ) -> Result<carry::Outcome, String> {
        let path = &self.place(path);
        if let Some(why) = self.blocked(path) {
            return Err(why);
        }
        if !self.holds(path, expect) {
            return Ok(carry::Outcome::Unexpected);
        }
        let was_exec = if self.modes_unkept {
            // No mode is set: the file shows the mount's.
            self.exec.contains(path)
        } else if exec {
            !self.exec.insert(path.to_string())
        } else {
            self.exec.remove(path)
        };
        let replaced = self.disk.insert(path.to_string(), bytes.to_vec());
        Ok(self.appended_in_the_instant(path, replaced.map(|b| (b, was_exec))))
    }

    fn remove_if(
        &mut self,
        path: &str,
        expect: cue_core::ContentHash,
    ) -> Result<Option<carry::Outcome>, String> {
        let path = &self.place(path);
        if let Some(why) = self.blocked(path).filter(|_| self.disk.contains_key(path)) {
            return Err(why);
        }
        match self.hash_at(path) {
            None => Ok(None),
            Some(_) if self.holds(path, Some(expect)) => {
                let was_exec = self.exec.remove(path);
                let removed = self.disk.remove(path).map(|b| (b, was_exec));
                Ok(Some(self.appended_in_the_instant(path, removed)))
            }
            Some(_) => Ok(Some(carry::Outcome::Unexpected)),
        }
    }

    fn remove_empty_dir(&mut self, dir: &str) -> bool {
        // Folders are the files' prefixes: an empty one is already gone.
        !self.is_folder(dir)
    }

    fn read_file(&mut self, path: &str) -> Result<Option<(Vec<u8>, bool)>, String> {
        let path = &self.place(path);
        Ok(self.disk.get(path).map(|b| (b.clone(), self.exec_at(path))))
    }

    fn exists(&mut self, path: &str) -> Result<bool, String> {
        let path = &self.place(path);
        Ok(self.disk.contains_key(path) || self.is_folder(path))
    }

    fn write_failed(&mut self, path: &str, error: &String) {
        self.write_failures.push((path.to_string(), error.clone()));
    }

    fn deferred(&mut self, paths: &[String]) {
        panic!("refused writes keep coming back: {paths:?}");
    }
}

/// `Some(peer)` when `CUE_SIM_TRACE` asks for what each peer's engine does to its disk.
fn trace_peer(peer: usize) -> Option<usize> {
    std::env::var_os("CUE_SIM_TRACE").is_some().then_some(peer)
}

fn trace_file_effect(peer: usize, e: &Effect, disk: &BTreeMap<String, Vec<u8>>) {
    match e {
        Effect::WriteFile {
            path,
            bytes,
            exec,
            expect,
        } => eprintln!(
            "  p{peer} write {path} {:?}{} expect {:?} (disk {:?})",
            String::from_utf8_lossy(bytes),
            if *exec { " +x" } else { "" },
            expect.map(|h| h[0]),
            disk.get(path).map(|b| content_hash(b)[0])
        ),
        Effect::RemoveFile { path, expect } => {
            eprintln!("  p{peer} remove {path} expect {:?}", expect.map(|h| h[0]))
        }
        _ => {}
    }
}

impl MemStore {
    /// Before a commit not made durable applies `p`: what it overwrites. Such a commit
    /// never holds document data (the carry rules), which a power cut could not give back.
    fn keep_for_a_power_cut(&mut self, p: &Persist) {
        assert!(
            !p.holds_document_data(),
            "document data committed without waiting for the disk: {p:?}"
        );
        match p {
            Persist::State { .. } => self.unsynced.push(Unsynced::State(self.state.clone())),
            Persist::Doc {
                doc: DocId::File(f),
                meta,
                ..
            } if !meta.is_empty() => self
                .unsynced
                .push(Unsynced::Meta(*f, self.metas.get(f).cloned())),
            _ => {}
        }
    }

    /// A power cut: the commits since the last durable one are lost.
    fn lose_unsynced(&mut self) -> usize {
        let lost = self.unsynced.len();
        while let Some(u) = self.unsynced.pop() {
            match u {
                Unsynced::State(state) => self.state = state,
                Unsynced::Meta(f, Some(meta)) => {
                    self.metas.insert(f, meta);
                }
                Unsynced::Meta(f, None) => {
                    self.metas.remove(&f);
                }
            }
        }
        lost
    }

    fn apply(&mut self, p: Persist) {
        match p {
            Persist::Doc {
                doc,
                bytes,
                snapshot,
                meta,
            } => {
                let stored = self.docs.entry(doc).or_default();
                let increments = self.increments.entry(doc).or_default();
                if snapshot {
                    *stored = bytes;
                    *increments = 0;
                } else if !bytes.is_empty() {
                    stored.extend(bytes);
                    *increments += 1;
                }
                if let DocId::File(f) = doc
                    && !meta.is_empty()
                {
                    self.metas.insert(f, meta);
                }
            }
            Persist::DeleteDoc { doc } => {
                self.docs.remove(&doc);
                self.increments.remove(&doc);
                if let DocId::File(f) = doc {
                    self.metas.remove(&f);
                }
            }
            Persist::State { bytes } => self.state = Some(bytes),
        }
    }

    fn restored(&self) -> Restored {
        Restored {
            state: self.state.clone(),
            index: self.docs.get(&DocId::Index).cloned(),
            metas: self.metas.iter().map(|(f, m)| (*f, m.clone())).collect(),
        }
    }
}

/// A peer's files as `converged` compares them: content and executable bit, by path.
type Files = BTreeMap<String, (Vec<u8>, bool)>;

#[derive(Debug)]
pub struct Peer {
    pub name: String,
    pub device: DeviceId,
    /// Its signing key (its seals; `device` is its public half).
    pub key: SealKey,
    pub epoch: u32,
    pub engine: Engine,
    pub store: MemStore,
    pub disk: BTreeMap<String, Vec<u8>>,
    /// The files on `disk` that are executable. A file that leaves `disk` must leave
    /// this too (the helpers below see to it).
    pub exec: BTreeSet<String>,
    pub online: bool,
    pub activity: Vec<cue_core::Activity>,
    /// Files the carry-out could not write or remove (path, why), as the daemon logs them.
    pub write_failures: Vec<(String, String)>,
    /// Why deletions are paused (the mass-deletion guard), as the daemon's status says.
    pub guard: Option<String>,
    /// How far this peer's clock is off (its engine sees the world's time plus this).
    pub clock_offset_ms: i64,
    /// Folders where the disk refuses every write (no permission, a link in the way).
    pub refuse_writes_under: BTreeSet<String>,
    /// Paths this peer's ignore rules exclude (its `.cueignore`): its scan skips them.
    pub ignored_here: BTreeSet<String>,
    /// Bytes a program appends to a file in the instant the daemon next replaces or
    /// removes it (once per path).
    pub append_while_replaced: BTreeMap<String, Vec<u8>>,
    /// The secret generation this peer holds, and so the room it is in.
    pub held: Generation,
    /// The generations whose secret this peer has (made here, or handed over in the
    /// lobby).
    pub secrets: BTreeSet<Generation>,
    /// This peer's folder ignores letter case ([`World::make_case_insensitive`]).
    pub case_insensitive: bool,
    /// This peer's folder keeps no Unix modes ([`World::make_modes_unkept`]).
    pub modes_unkept: bool,
    /// Set while this peer makes again removals that lost (`rotation.rs`).
    pub(crate) redoing: bool,
}

impl Peer {
    /// The engine, and the rest of the peer as the carry-out rules see it.
    fn split(&mut self, trace: Option<usize>) -> (&mut Engine, SimHost<'_>) {
        let host = SimHost {
            store: &mut self.store,
            disk: &mut self.disk,
            exec: &mut self.exec,
            activity: &mut self.activity,
            write_failures: &mut self.write_failures,
            refuse_writes_under: &self.refuse_writes_under,
            append_while_replaced: &mut self.append_while_replaced,
            case_insensitive: self.case_insensitive,
            modes_unkept: self.modes_unkept,
            trace,
        };
        (&mut self.engine, host)
    }
}

/// One thing a program does to a folder in a burst ([`World::burst`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Creates or overwrites a file (a new file is not executable; one overwritten keeps
    /// its mode).
    Write(String, Vec<u8>),
    Remove(String),
    /// Moves a file (keeping its mode), replacing any file at the target.
    Rename(String, String),
}

/// What the daemon's watcher reports after a batch, by what is on disk then.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Watched {
    Changed(String),
    Removed(String),
    Renamed(String, String),
}

#[derive(Debug, Clone)]
struct InFlight {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
    /// The room it was sent in: a peer that has left it no longer receives it.
    room: Generation,
}

/// Faults the relay and network inject.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: bool,
}

#[derive(Debug)]
pub struct World {
    pub peers: Vec<Peer>,
    inflight: VecDeque<InFlight>,
    pub now_ms: i64,
    pub rng: Xoshiro256PlusPlus,
    pub faults: Faults,
    pub config: Config,
    pub messages_delivered: u64,
    /// When set, every message delivered is recorded here (sender, receiver, bytes), for
    /// tests that look at what goes over the wire.
    pub traffic: Option<Vec<(usize, usize, Vec<u8>)>>,
}

/// Peer `i`'s key: real ed25519, so that seals are checked as the daemon's are and a
/// hostile peer in a test cannot make another's.
pub fn key_for(i: usize) -> SealKey {
    SealKey::from_seed(blake3::hash(format!("sim device {i}").as_bytes()).as_bytes())
}

impl World {
    /// `n` peers, all offline, with empty folders.
    pub fn new(n: usize, seed: u64, config: Config) -> World {
        let now_ms = 1_700_000_000_000;
        let mut peers = Vec::new();
        for i in 0..n {
            let name = format!("p{i}");
            let key = key_for(i);
            let device = key.device();
            let (mut engine, effects) = Engine::new(
                key.clone(),
                &name,
                1,
                config.clone(),
                Restored::default(),
                now_ms,
            );
            engine.set_rotation_check(rotation::check());
            let proof = rotation::maker_proof(device);
            engine.set_maker_check(rotation::maker_check(), Some(&proof));
            let peer = Peer {
                name,
                device,
                key,
                epoch: 1,
                engine,
                store: MemStore::default(),
                disk: BTreeMap::new(),
                exec: BTreeSet::new(),
                online: false,
                activity: Vec::new(),
                write_failures: Vec::new(),
                guard: None,
                clock_offset_ms: 0,
                refuse_writes_under: BTreeSet::new(),
                ignored_here: BTreeSet::new(),
                append_while_replaced: BTreeMap::new(),
                held: Generation::default(),
                secrets: BTreeSet::from([Generation::default()]),
                case_insensitive: false,
                modes_unkept: false,
                redoing: false,
            };
            peers.push((peer, effects));
        }
        let (peers, effects): (Vec<Peer>, Vec<Vec<Effect>>) = peers.into_iter().unzip();
        let mut world = World {
            peers,
            inflight: VecDeque::new(),
            now_ms,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            faults: Faults::default(),
            config,
            messages_delivered: 0,
            traffic: None,
        };
        for (i, effects) in effects.into_iter().enumerate() {
            world.apply(i, effects);
        }
        for i in 0..n {
            world.trust_all(i);
        }
        world
    }

    /// Each peer was admitted by one of the others, in a world that starts with all of
    /// them: each takes the others for members before their entries arrive.
    fn trust_all(&mut self, peer: usize) {
        let others: Vec<DeviceId> = self.peers.iter().map(|p| p.device).collect();
        for d in others {
            if d != self.peers[peer].device {
                self.peers[peer].engine.trust(d);
            }
        }
    }

    fn index_of(&self, device: DeviceId) -> Option<usize> {
        self.peers.iter().position(|p| p.device == device)
    }

    /// Feed an input to a peer's engine and carry out the effects.
    pub fn input(&mut self, peer: usize, input: Input) {
        if std::env::var_os("CUE_SIM_TRACE").is_some() {
            match &input {
                Input::FileChanged { path, content, .. }
                | Input::WriteRefused { path, content, .. } => {
                    eprintln!(
                        "  p{peer} <- {} {path} {:?}",
                        if matches!(input, Input::FileChanged { .. }) {
                            "changed"
                        } else {
                            "refused"
                        },
                        String::from_utf8_lossy(content)
                    );
                }
                Input::Message { .. } | Input::Tick => {}
                other => eprintln!("  p{peer} <- {other:?}"),
            }
        }
        self.input_batch(peer, vec![input]);
    }

    /// Feed several inputs to a peer's engine at once, as the daemon's start-up scan
    /// does (`Engine::handle_batch`), and carry out the effects by the daemon's rules.
    pub fn input_batch(&mut self, peer: usize, inputs: Vec<Input>) {
        let now = self.now_ms + self.peers[peer].clock_offset_ms;
        let p = &mut self.peers[peer];
        let (engine, mut host) = p.split(trace_peer(peer));
        let Ok(sends) = carry::handle(engine, &mut host, now, inputs);
        self.route(peer, sends);
        self.follow_generation(peer);
    }

    /// Carry out effects (those of `Engine::new`) by the daemon's rules.
    fn apply(&mut self, peer: usize, effects: Vec<Effect>) {
        let now = self.now_ms + self.peers[peer].clock_offset_ms;
        let p = &mut self.peers[peer];
        let (engine, mut host) = p.split(trace_peer(peer));
        let Ok(sends) = carry::carry_out(engine, &mut host, now, effects);
        self.route(peer, sends);
        self.follow_generation(peer);
    }

    /// Messages go to the relay, which passes them to whoever is online.
    fn route(&mut self, peer: usize, sends: Vec<carry::Outgoing>) {
        if !self.peers[peer].online {
            return;
        }
        let room = self.peers[peer].held;
        let in_room = |p: &Peer| p.online && p.held == room;
        for (to, bytes) in sends {
            let targets: Vec<usize> = match to {
                None => (0..self.peers.len())
                    .filter(|&i| i != peer && in_room(&self.peers[i]))
                    .collect(),
                Some(d) => self
                    .index_of(d)
                    .filter(|&i| in_room(&self.peers[i]))
                    .into_iter()
                    .collect(),
            };
            for t in targets {
                self.inflight.push_back(InFlight {
                    from: peer,
                    to: t,
                    bytes: bytes.clone(),
                    room,
                });
            }
        }
    }

    // ------------------------------------------------------------ what users do

    /// A user saves a file (the watcher reports it). Its mode stays as it was, as an
    /// editor keeps it.
    pub fn write(&mut self, peer: usize, path: &str, bytes: &[u8]) {
        let p = &mut self.peers[peer];
        // The watcher reports the name as the folder holds it.
        let path = place(&p.disk, p.case_insensitive, path);
        p.disk.insert(path.clone(), bytes.to_vec());
        let exec = !p.modes_unkept && p.exec.contains(&path);
        // Too large to sync: the daemon reads only its first bytes, as many as the
        // engine asks for (see `Input::FileTooLarge`).
        if bytes.len() as u64 > self.config.max_file_size {
            let n = p.engine.growth_check_len(&path).min(bytes.len());
            let input = Input::FileTooLarge {
                path,
                size: bytes.len() as u64,
                head: bytes[..n].to_vec(),
            };
            return self.input(peer, input);
        }
        self.input(
            peer,
            Input::FileChanged {
                path,
                content: bytes.to_vec(),
                exec,
            },
        );
    }

    /// A user runs `chmod +x` (`exec`) or `chmod -x` on a file (the watcher reports it
    /// as a change with the same content). Nothing when there is no such file.
    pub fn chmod(&mut self, peer: usize, path: &str, exec: bool) {
        let Some(content) = self.peers[peer].disk.get(path).cloned() else {
            return;
        };
        if self.peers[peer].modes_unkept {
            // The folder takes no mode: the file reads as before, and the watcher's
            // event (a metadata change) carries nothing new.
            self.input(
                peer,
                Input::FileChanged {
                    path: path.to_string(),
                    content,
                    exec: false,
                },
            );
            return;
        }
        if exec {
            self.peers[peer].exec.insert(path.to_string());
        } else {
            self.peers[peer].exec.remove(path);
        }
        self.input(
            peer,
            Input::FileChanged {
                path: path.to_string(),
                content,
                exec,
            },
        );
    }

    /// Whether the file at `path` is executable on `peer`'s disk (`None`: no file).
    pub fn is_exec(&self, peer: usize, path: &str) -> Option<bool> {
        let p = &self.peers[peer];
        p.disk.contains_key(path).then(|| p.exec.contains(path))
    }

    /// A user saves many files at once and the watcher reports them in one batch.
    /// Lets `peer`'s engine make new files' documents on `threads` threads.
    pub fn set_threads(&mut self, peer: usize, threads: usize) {
        self.peers[peer].engine.set_threads(threads);
    }

    pub fn write_many(&mut self, peer: usize, files: &[(String, Vec<u8>)]) {
        let mut inputs = Vec::new();
        for (path, bytes) in files {
            self.peers[peer].disk.insert(path.clone(), bytes.clone());
            inputs.push(Input::FileChanged {
                path: path.clone(),
                content: bytes.clone(),
                exec: !self.peers[peer].modes_unkept && self.peers[peer].exec.contains(path),
            });
        }
        self.input_batch(peer, inputs);
    }

    /// A program changes many files at once (`cp -r`, `git checkout`, a script): the
    /// operations happen on disk in order, then the watcher reports the batch as the
    /// daemon's does, by what is on disk *now* (`watch.rs`: a path that exists is a
    /// change, one that does not a removal, a rename whose target exists a rename, repeats
    /// kept once), and the driver turns the events into inputs gathered as the daemon
    /// gathers them (`carry::Gathered`: handled 64 files or 8 MiB at a time, and before a
    /// removal or rename of a path gathered), with the mass-deletion guard judging the
    /// batch. Paths are taken as given (no case folding).
    pub fn burst(&mut self, peer: usize, ops: &[DiskOp]) {
        let p = &mut self.peers[peer];
        // What the program does.
        for op in ops {
            match op {
                DiskOp::Write(path, bytes) => {
                    p.disk.insert(path.clone(), bytes.clone());
                }
                DiskOp::Remove(path) => {
                    p.disk.remove(path);
                    p.exec.remove(path);
                }
                DiskOp::Rename(from, to) => {
                    if let Some(bytes) = p.disk.remove(from) {
                        let exec = p.exec.remove(from);
                        p.disk.insert(to.clone(), bytes);
                        if exec {
                            p.exec.insert(to.clone());
                        } else {
                            p.exec.remove(to);
                        }
                    }
                }
            }
        }
        // What the watcher reports of it.
        let mut events: Vec<Watched> = Vec::new();
        let check = |disk: &BTreeMap<String, Vec<u8>>, path: &String| {
            if disk.contains_key(path) {
                Watched::Changed(path.clone())
            } else {
                Watched::Removed(path.clone())
            }
        };
        for op in ops {
            match op {
                DiskOp::Write(path, _) | DiskOp::Remove(path) => events.push(check(&p.disk, path)),
                DiskOp::Rename(from, to) if p.disk.contains_key(to) => {
                    events.push(Watched::Renamed(from.clone(), to.clone()));
                    if p.disk.contains_key(from) {
                        events.push(check(&p.disk, from));
                    }
                }
                DiskOp::Rename(from, to) => {
                    events.push(check(&p.disk, from));
                    events.push(check(&p.disk, to));
                }
            }
        }
        let mut seen = BTreeSet::new();
        events.retain(|e| seen.insert(e.clone()));
        // The mass-deletion guard judges the batch before any of it is fed.
        let mut gone = BTreeSet::new();
        for e in &events {
            if let Watched::Removed(path) = e {
                gone.extend(
                    p.engine
                        .on_disk_under(path)
                        .into_iter()
                        .filter(|f| !p.disk.contains_key(f)),
                );
            }
        }
        let known = p.engine.disk().count();
        if carry::too_many_missing(known, gone.len()) && p.guard.is_none() {
            p.guard = Some(format!(
                "{} of the {known} files disappeared at once",
                gone.len()
            ));
        }
        // What the driver feeds the engine.
        let mut gathered = carry::Gathered::default();
        for e in events {
            let depends = match &e {
                Watched::Removed(path) => gathered.touches(path),
                Watched::Renamed(from, to) => gathered.touches(from) || gathered.touches(to),
                Watched::Changed(_) => false,
            };
            if depends {
                self.input_batch(peer, gathered.take());
            }
            let inputs = match e {
                Watched::Changed(path) => self.watched_change(peer, &path).into_iter().collect(),
                Watched::Removed(path) => {
                    let p = &self.peers[peer];
                    if p.guard.is_some() {
                        Vec::new()
                    } else {
                        p.engine
                            .on_disk_under(&path)
                            .into_iter()
                            .filter_map(|f| self.watched_change(peer, &f))
                            .collect()
                    }
                }
                Watched::Renamed(from, to) => {
                    let p = &self.peers[peer];
                    let known = p.engine.on_disk(&from).is_some();
                    match p.disk.get(&to) {
                        Some(content) if known && !p.disk.contains_key(&from) => {
                            vec![Input::FileRenamed {
                                from,
                                exec: !p.modes_unkept && p.exec.contains(&to),
                                to,
                                content: content.clone(),
                            }]
                        }
                        _ => [to, from]
                            .iter()
                            .filter_map(|f| self.watched_change(peer, f))
                            .collect(),
                    }
                }
            };
            for input in inputs {
                if gathered.push(input) {
                    self.input_batch(peer, gathered.take());
                }
            }
        }
        let rest = gathered.take();
        if !rest.is_empty() {
            self.input_batch(peer, rest);
        }
    }

    /// What the driver feeds for a path that may have changed: its content if it differs
    /// from what the engine believes is there, its removal if it is gone (unless the
    /// mass-deletion guard holds deletions), nothing otherwise.
    fn watched_change(&self, peer: usize, path: &str) -> Option<Input> {
        let p = &self.peers[peer];
        let known = p.engine.on_disk(path);
        match p.disk.get(path) {
            None => (known.is_some() && p.guard.is_none()).then(|| Input::FileRemoved {
                path: path.to_string(),
            }),
            Some(content) => {
                let exec = !p.modes_unkept && p.exec.contains(path);
                if known.is_some_and(|k| p.engine.same_on_disk(k, file_hash(content, exec))) {
                    return None;
                }
                Some(Input::FileChanged {
                    path: path.to_string(),
                    content: content.clone(),
                    exec,
                })
            }
        }
    }

    pub fn delete(&mut self, peer: usize, path: &str) {
        self.peers[peer].exec.remove(path);
        if self.peers[peer].disk.remove(path).is_some() {
            self.input(
                peer,
                Input::FileRemoved {
                    path: path.to_string(),
                },
            );
        }
    }

    pub fn rename(&mut self, peer: usize, from: &str, to: &str) {
        if let Some(content) = self.peers[peer].disk.remove(from) {
            self.peers[peer]
                .disk
                .insert(to.to_string(), content.clone());
            // A rename keeps the mode.
            let exec = self.peers[peer].exec.remove(from);
            if exec {
                self.peers[peer].exec.insert(to.to_string());
            } else {
                self.peers[peer].exec.remove(to);
            }
            self.input(
                peer,
                Input::FileRenamed {
                    from: from.to_string(),
                    to: to.to_string(),
                    content,
                    exec: exec && !self.peers[peer].modes_unkept,
                },
            );
        }
    }

    /// How many changes the index `peer` stores holds (what index changes cost, in a
    /// test that counts them).
    pub fn index_changes(&self, peer: usize) -> usize {
        let stored = &self.peers[peer].store.docs[&DocId::Index];
        automerge::AutoCommit::load(stored)
            .map(|mut doc| doc.get_changes(&[]).len())
            .unwrap_or(0)
    }

    /// How many deletions (tombstones) the index `peer` stores holds.
    pub fn tombstones(&self, peer: usize) -> usize {
        let stored = &self.peers[peer].store.docs[&DocId::Index];
        let actor = cue_core::actor_for(&self.peers[peer].device, 0);
        cue_core::index::IndexDoc::load(stored, actor).map_or(0, |index| index.tombstones().len())
    }

    pub fn read(&self, peer: usize, path: &str) -> Option<String> {
        let p = &self.peers[peer];
        p.disk
            .get(&place(&p.disk, p.case_insensitive, path))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    // ------------------------------------------------------------ network

    pub fn connect(&mut self, peer: usize) {
        if self.peers[peer].online {
            return;
        }
        self.peers[peer].online = true;
        self.input(peer, Input::Connected);
    }

    pub fn disconnect(&mut self, peer: usize) {
        if !self.peers[peer].online {
            return;
        }
        self.peers[peer].online = false;
        self.inflight.retain(|m| m.to != peer && m.from != peer);
        self.input(peer, Input::Disconnected);
        let device = self.peers[peer].device;
        for i in 0..self.peers.len() {
            if i != peer && self.peers[i].online {
                self.input(i, Input::PeerLeft { device });
            }
        }
    }

    pub fn connect_all(&mut self) {
        for i in 0..self.peers.len() {
            self.connect(i);
        }
    }

    /// The daemon stops (or crashes) and starts again: a new engine from the store alone,
    /// then the start-up scan turns every difference on disk into inputs.
    pub fn restart(&mut self, peer: usize) {
        let was_online = self.peers[peer].online;
        self.disconnect(peer);
        let now = self.now_ms + self.peers[peer].clock_offset_ms;
        let p = &mut self.peers[peer];
        let config = Config {
            case_insensitive: p.case_insensitive,
            modes_unkept: p.modes_unkept,
            ..self.config.clone()
        };
        p.epoch += 1;
        let (mut engine, effects) = Engine::new(
            p.key.clone(),
            &p.name,
            p.epoch,
            config,
            p.store.restored(),
            now,
        );
        engine.set_rotation_check(rotation::check());
        let proof = rotation::maker_proof(p.device);
        engine.set_maker_check(rotation::maker_check(), Some(&proof));
        p.engine = engine;
        self.trust_all(peer);
        self.apply(peer, effects);
        self.startup_scan(peer);
        if was_online {
            self.connect(peer);
        }
    }

    /// The machine loses power: what the peer's store committed without waiting for the
    /// disk since its last durable commit is lost (the files on disk are kept: the daemon
    /// finishes its unflushed writes from its journal, see the daemon's `host.rs`), then
    /// the daemon starts again. How many overwritten values were lost.
    pub fn power_cut(&mut self, peer: usize) -> usize {
        let lost = self.peers[peer].store.lose_unsynced();
        self.restart(peer);
        lost
    }

    /// This peer's folder ignores letter case from now on (as a daemon started on such a
    /// folder finds): its engine is started again knowing it.
    pub fn make_case_insensitive(&mut self, peer: usize) {
        self.peers[peer].case_insensitive = true;
        self.restart(peer);
    }

    /// This peer's folder keeps no Unix modes from now on (exFAT, FAT: every file shows
    /// the mount's mode, not executable, and `chmod` does nothing), as a daemon started on
    /// such a folder finds: its files lose their executable bits and its engine is
    /// started again knowing it.
    pub fn make_modes_unkept(&mut self, peer: usize) {
        self.peers[peer].modes_unkept = true;
        self.peers[peer].exec.clear();
        self.restart(peer);
    }

    /// What the daemon does at start-up: compare the disk with what the engine believes
    /// is there, by the daemon's own rules (renames told from content, the mass-deletion
    /// guard, files too large to sync).
    pub fn startup_scan(&mut self, peer: usize) {
        let max = self.config.max_file_size;
        let p = &mut self.peers[peer];
        let (files, too_large) = p
            .disk
            .iter()
            .filter(|(path, _)| !p.ignored_here.contains(*path))
            .partition::<Vec<_>, _>(|(_, b)| b.len() as u64 <= max);
        let ignored = p
            .engine
            .disk()
            .map(|(path, _)| path.to_string())
            .filter(|path| p.ignored_here.contains(path))
            .collect();
        let found = carry::Found {
            files: files
                .into_iter()
                .map(|(path, b)| {
                    let exec = !p.modes_unkept && p.exec.contains(path);
                    (path.clone(), file_hash(b, exec))
                })
                .collect(),
            too_large: too_large
                .into_iter()
                .map(|(path, b)| (path.clone(), b.len() as u64))
                .collect(),
            ignored,
            unreadable: BTreeSet::new(),
        };
        let mut diff = carry::diff_scan(&p.engine, &found);
        {
            let (engine, mut host) = p.split(trace_peer(peer));
            carry::pair_edited_renames(engine, &mut host, &mut diff);
        }
        if carry::too_many_missing(diff.known, diff.removed.len()) && p.guard.is_none() {
            p.guard = Some(format!(
                "{} of the {} files were missing at start-up",
                diff.removed.len(),
                diff.known
            ));
        }
        let now = self.now_ms + p.clock_offset_ms;
        let paused = p.guard.is_some();
        let (engine, mut host) = p.split(trace_peer(peer));
        let Ok(sends) = carry::feed_scan(
            engine,
            &mut host,
            now,
            diff,
            found.too_large,
            paused,
            &mut |_, _| {},
        );
        self.route(peer, sends);
    }

    /// Deliver one message in flight (a random one when reordering). Returns false when
    /// none is left.
    pub fn step(&mut self) -> bool {
        if self.inflight.is_empty() {
            return false;
        }
        let i = if self.faults.reorder {
            self.rng.random_range(0..self.inflight.len())
        } else {
            0
        };
        let Some(m) = self.inflight.remove(i) else {
            return false;
        };
        if self.faults.drop > 0.0 && self.rng.random_bool(self.faults.drop) {
            return true;
        }
        if self.faults.duplicate > 0.0 && self.rng.random_bool(self.faults.duplicate) {
            self.inflight.push_back(m.clone());
        }
        self.deliver(m);
        true
    }

    /// Hands `m` to its receiver, unless that one has gone offline or left the room it
    /// was sent in.
    fn deliver(&mut self, m: InFlight) {
        if !self.peers[m.to].online || self.peers[m.to].held != m.room {
            return;
        }
        self.now_ms += 1;
        self.messages_delivered += 1;
        if let Some(log) = &mut self.traffic {
            log.push((m.from, m.to, m.bytes.clone()));
        }
        let from = self.peers[m.from].device;
        self.input(
            m.to,
            Input::Message {
                from,
                bytes: m.bytes,
            },
        );
    }

    /// Delivers, in the order sent, every message in flight from `from` to `to`, and
    /// nothing else (one relay path faster than another); faults do not apply. Returns
    /// how many were delivered.
    pub fn deliver_between(&mut self, from: usize, to: usize) -> usize {
        let (now, later): (VecDeque<InFlight>, VecDeque<InFlight>) =
            std::mem::take(&mut self.inflight)
                .into_iter()
                .partition(|m| (m.from, m.to) == (from, to));
        self.inflight = later;
        let n = now.len();
        for m in now {
            self.deliver(m);
        }
        n
    }

    /// Takes out, in the order sent, every message in flight from `from` to `to`,
    /// undelivered: a test hands the receiver what it chooses of them.
    pub fn take_in_flight(&mut self, from: usize, to: usize) -> Vec<Vec<u8>> {
        let (taken, left): (VecDeque<InFlight>, VecDeque<InFlight>) =
            std::mem::take(&mut self.inflight)
                .into_iter()
                .partition(|m| (m.from, m.to) == (from, to));
        self.inflight = left;
        taken.into_iter().map(|m| m.bytes).collect()
    }

    /// The files `peer` stores a document of that its index names nowhere, with the
    /// stored bytes of each.
    pub fn unnamed_documents(&self, peer: usize) -> Vec<(cue_core::FileId, usize)> {
        let docs = &self.peers[peer].store.docs;
        let named = docs
            .get(&DocId::Index)
            .and_then(|b| {
                cue_core::index::IndexDoc::load(b, cue_core::actor_for(&self.peers[peer].device, 0))
                    .ok()
            })
            .map(|i| i.paths())
            .unwrap_or_default();
        docs.iter()
            .filter_map(|(d, b)| match d {
                DocId::File(f) if !named.contains_key(f) => Some((*f, b.len())),
                _ => None,
            })
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The bytes of the messages from `peer` still in flight.
    pub fn in_flight_bytes_from(&self, peer: usize) -> usize {
        self.inflight
            .iter()
            .filter(|m| m.from == peer)
            .map(|m| m.bytes.len())
            .sum()
    }

    /// The sender and size of the message [`World::step`] delivers next (without
    /// reordering faults).
    pub fn next_in_flight(&self) -> Option<(usize, usize)> {
        self.inflight.front().map(|m| (m.from, m.bytes.len()))
    }

    /// Time passes for everyone.
    pub fn advance(&mut self, ms: i64) {
        self.now_ms += ms;
        for i in 0..self.peers.len() {
            self.input(i, Input::Tick);
        }
        self.lobby();
    }

    /// Deliver everything, with time passing so that lost messages are re-announced,
    /// until nothing moves. Bounded: gives up after `rounds` anti-entropy rounds.
    pub fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut n = 0;
            while self.step() {
                n += 1;
                if n > 1_000_000 {
                    break;
                }
            }
            if self.converged().is_ok() {
                return;
            }
            self.advance(self.config.anti_entropy_ms + 1);
        }
    }

    /// Every online peer's disk is the same, and each disk is what its engine holds,
    /// except at paths some peer holds a file too large to sync (each keeps its own).
    pub fn converged(&mut self) -> Result<(), String> {
        // One secret generation for everyone still in the workspace, and each in its room.
        let members: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|p| p.engine.removed_here().is_none())
            .collect();
        for p in &members {
            if p.held != p.engine.generation() || p.held != members[0].held {
                return Err(format!(
                    "{} holds generation {} (its engine says {}), {} holds {}",
                    p.name,
                    p.held.number,
                    p.engine.generation().number,
                    members[0].name,
                    members[0].held.number
                ));
            }
        }
        let mut reference: Option<(usize, Files)> = None;
        // Names are compared as a folder that ignores case takes them when one does.
        let fold = self.peers.iter().any(|p| p.case_insensitive);
        let mut skipped = BTreeSet::new();
        for p in &mut self.peers {
            let status = p.engine.status(&mut p.store);
            skipped.extend(status.skipped.into_iter().map(|(s, _)| s));
        }
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if p.engine.removed_here().is_some() {
                // Removed from the workspace: it keeps what it had, and gets nothing new.
                continue;
            }
            // Adopted documents must have been checked against the content they came
            // with: what is on disk is then what the documents say.
            if p.engine.unverified() > 0 {
                return Err(format!(
                    "peer {i}: {} adopted documents not yet verified",
                    p.engine.unverified()
                ));
            }
            let mut live = p.engine.live_files(&mut p.store);
            live.retain(|k, _| !skipped.contains(k));
            let unkept = p.modes_unkept;
            let disk: BTreeMap<String, [u8; 32]> = p
                .disk
                .iter()
                .filter(|(k, _)| !skipped.contains(*k))
                .map(|(k, v)| (k.clone(), file_hash(v, !unkept && p.exec.contains(k))))
                .collect();
            // Where modes are not kept the disk says nothing of the bit: the engine's
            // documents keep it, and the bytes are compared.
            // (Its files' bits, to compare with other peers: its documents'.)
            let doc_exec: BTreeSet<String> = live
                .iter()
                .filter(|(k, l)| p.disk.get(*k).is_some_and(|v| **l == file_hash(v, true)))
                .map(|(k, _)| k.clone())
                .collect();
            if unkept {
                for (k, h) in &disk {
                    if let Some(l) = live.get_mut(k)
                        && cue_core::same_bytes(*l, *h)
                    {
                        *l = *h;
                    }
                }
            }
            // A folder that ignores case may spell a folder as it was made first.
            let (live, disk) = (
                keyed(p.case_insensitive, &live),
                keyed(p.case_insensitive, &disk),
            );
            if live != disk {
                let a: BTreeSet<&String> = live.keys().collect();
                let b: BTreeSet<&String> = disk.keys().collect();
                return Err(format!(
                    "peer {i}: disk differs from engine (engine-only {:?}, disk-only {:?}, different {:?})",
                    a.difference(&b).collect::<Vec<_>>(),
                    b.difference(&a).collect::<Vec<_>>(),
                    a.intersection(&b)
                        .filter(|k| live.get(**k) != disk.get(**k))
                        .collect::<Vec<_>>()
                ));
            }
            let mine: Files = p
                .disk
                .iter()
                .filter(|(k, _)| !skipped.contains(*k))
                .map(|(k, v)| {
                    let exec = if unkept {
                        doc_exec.contains(k)
                    } else {
                        p.exec.contains(k)
                    };
                    (k.clone(), (v.clone(), exec))
                })
                .collect();
            let mine = keyed(fold, &mine);
            match &reference {
                None => reference = Some((i, mine)),
                Some((j, r)) => {
                    if *r != mine {
                        let a: BTreeSet<&String> = r.keys().collect();
                        let b: BTreeSet<&String> = mine.keys().collect();
                        return Err(format!(
                            "peer {i} differs from peer {j}: only on {j}: {:?}, only on {i}: {:?}, different: {:?}",
                            a.difference(&b).collect::<Vec<_>>(),
                            b.difference(&a).collect::<Vec<_>>(),
                            a.intersection(&b)
                                .filter(|k| r.get(**k) != mine.get(**k))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `n` peers with the default settings, online and settled: where most rule tests start.
    pub fn online(n: usize, seed: u64) -> World {
        let mut w = World::new(n, seed, Config::default());
        w.connect_all();
        w.settle(5);
        w
    }

    /// Delivers what is in flight (ten rounds) and fails the test, saying how, unless every
    /// peer has converged.
    #[track_caller]
    pub fn settle_converged(&mut self) {
        self.settle(10);
        if let Err(e) = self.converged() {
            panic!("not converged: {e}");
        }
    }

    pub fn status(&mut self, peer: usize) -> Status {
        let p = &mut self.peers[peer];
        p.engine.status(&mut p.store)
    }

    pub fn restore(&mut self, peer: usize, path: &str) -> Result<(), cue_core::CommandError> {
        let now = self.now_ms + self.peers[peer].clock_offset_ms;
        let p = &mut self.peers[peer];
        let effects = p.engine.restore(now, path, &mut p.store)?;
        self.apply(peer, effects);
        Ok(())
    }

    /// `cue sync apply-deletions` on a peer.
    pub fn apply_deletions(&mut self, peer: usize) -> usize {
        let now = self.now_ms + self.peers[peer].clock_offset_ms;
        let p = &mut self.peers[peer];
        let (n, effects) = p.engine.apply_deletions(now, &mut p.store);
        self.apply(peer, effects);
        n
    }

    pub fn resolve(&mut self, peer: usize, path: &str) -> Result<(), cue_core::CommandError> {
        let now = self.now_ms + self.peers[peer].clock_offset_ms;
        let p = &mut self.peers[peer];
        let effects = p.engine.resolve(now, path, &mut p.store)?;
        self.apply(peer, effects);
        Ok(())
    }
}

/// One random schedule: peers edit, create, delete, rename, write binaries, change the
/// executable bit, change several files in one watcher batch (a burst), go offline,
/// restart, while the relay drops, duplicates and reorders. Then the network heals and
/// the world must converge with no lost edit. Returns a description of the failure.
pub fn run_schedule(seed: u64, steps: usize) -> Result<ScheduleReport, String> {
    // Two to four peers, chosen by the seed so that a seed alone replays a schedule.
    let peers = 2 + (seed % 3) as usize;
    let mut config = Config {
        anti_entropy_ms: 5_000,
        pull_timeout_ms: 20_000,
        // A tiny document cache in one schedule of four exercises eviction and reloading
        // from the store; the rest run faster with everything loaded.
        cache_docs: std::env::var("CUE_SIM_CACHE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if seed.is_multiple_of(4) { 3 } else { 64 }),
        max_message_bytes: 2048,
        compact_after: 5,
        // Pulls answered a document or two a call in one schedule of three (the
        // answer then spans inputs and ticks, with edits and faults in between); at
        // once in the others.
        answer_chunk_bytes: if (seed / 4) % 3 == 1 { 1 } else { 1 << 20 },
        ..Config::default()
    };
    config.tombstone_ms = i64::MAX / 4;
    let mut w = World::new(peers, seed, config);
    // One schedule in five has a peer whose folder keeps no modes (exFAT): its chmods do
    // nothing, and it must never change anyone's bit.
    if seed % 5 == 2 {
        w.make_modes_unkept(peers - 1);
    }
    w.faults = Faults {
        drop: 0.05,
        duplicate: 0.05,
        reorder: true,
    };
    w.connect_all();
    let mut markers: Vec<(String, usize)> = Vec::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut next_marker = 0u64;
    let paths = ["a.md", "b.md", "notes/c.md", "d.txt", "img.bin"];
    let trace = std::env::var_os("CUE_SIM_TRACE").is_some();
    for step in 0..steps {
        let p = w.rng.random_range(0..peers);
        let action = w.rng.random_range(0..100);
        if trace {
            eprintln!(
                "step {step}: peer {p} action {action} (m{}) online={:?} disk={:?}",
                next_marker + 1,
                w.peers.iter().map(|x| x.online).collect::<Vec<_>>(),
                w.peers[p]
                    .disk
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect::<Vec<_>>()
            );
        }
        next_marker += 1;
        let marker = format!("<m{next_marker}>");
        match action {
            0..=34 => {
                // Insert a marker into a text file (creating it if needed).
                let path = paths[w.rng.random_range(0..4)];
                let old = w.read(p, path).unwrap_or_default();
                let text = if old.is_empty() && path.ends_with(".md") {
                    format!("---\ntitle: t\ntags: [x]\n---\n{marker}\n")
                } else {
                    // Into the body: frontmatter values are last-writer-wins, so a
                    // marker there may lose by design.
                    let body_start = if path.ends_with(".md") {
                        cue_core::frontmatter::parse(&old)
                            .frontmatter
                            .map_or(0, |fm| old.chars().count() - fm_body_chars(&old, &fm))
                    } else {
                        0
                    };
                    let chars: Vec<char> = old.chars().collect();
                    // Never inside another marker, or neither could be found again.
                    let spots: Vec<usize> = (body_start..=chars.len())
                        .filter(|&i| i == body_start || matches!(chars[i - 1], '>' | '\n'))
                        .collect();
                    let at = spots[w.rng.random_range(0..spots.len())];
                    let mut s: String = chars[..at].iter().collect();
                    s.push_str(&marker);
                    s.extend(&chars[at..]);
                    s
                };
                w.write(p, path, text.as_bytes());
                markers.push((marker, p));
            }
            35..=44 => {
                // Frontmatter: change the title (last writer wins) or add a tag (union).
                let path = paths[w.rng.random_range(0..3)];
                if let Some(old) = w.read(p, path)
                    && old.starts_with("---\n")
                {
                    let new = if w.rng.random_bool(0.5) {
                        old.replacen("title: ", &format!("title: {marker}"), 1)
                    } else if let Some(i) = old.find("tags: [") {
                        let j = i + "tags: [".len();
                        format!(
                            "{}{}, {}",
                            &old[..j],
                            &marker[1..marker.len() - 1],
                            &old[j..]
                        )
                    } else {
                        old
                    };
                    w.write(p, path, new.as_bytes());
                }
            }
            45..=52 => {
                let path = paths[w.rng.random_range(0..4)];
                if let Some(content) = w.read(p, path) {
                    for (m, _) in &markers {
                        if content.contains(m.as_str()) {
                            deleted.insert(m.clone());
                        }
                    }
                    w.delete(p, path);
                }
            }
            53..=58 => {
                let from = paths[w.rng.random_range(0..4)];
                let to = format!("moved/{}", from.replace('/', "_"));
                if w.read(p, &to).is_none() {
                    w.rename(p, from, &to);
                }
            }
            59..=64 => {
                // Overwriting a binary replaces what this peer saw: that is a deletion.
                if let Some(old) = w.read(p, "img.bin") {
                    for (m, _) in &markers {
                        if old.contains(m.as_str()) {
                            deleted.insert(m.clone());
                        }
                    }
                }
                let mut bytes = vec![0u8, 159, 146, 150];
                bytes.extend(marker.as_bytes());
                w.write(p, "img.bin", &bytes);
                markers.push((marker, p));
            }
            65..=72 => {
                if w.peers[p].online {
                    w.disconnect(p);
                } else {
                    w.connect(p);
                }
            }
            73 => w.restart(p),
            74 => {
                w.power_cut(p);
            }
            75 => {
                // A rotation of the workspace secret (`cue sync rotate`), online or not:
                // the others follow through the lobby.
                w.rotate(p, &[]);
            }
            76..=78 => {
                // `chmod +x` or `-x`: only the executable bit syncs, last writer wins.
                let path = paths[w.rng.random_range(0..paths.len())];
                let exec = w.rng.random_bool(0.5);
                w.chmod(p, path, exec);
            }
            79..=80 => {
                // A burst: a program writes, removes and renames a few files in one
                // watcher batch (`World::burst`), among them the files others edit.
                let mut disk = w.peers[p].disk.clone();
                let mut ops = Vec::new();
                let pool = [
                    "a.md",
                    "b.md",
                    "notes/c.md",
                    "d.txt",
                    "burst/e.md",
                    "burst/f.md",
                    "burst/g.txt",
                ];
                // A path removed or renamed away is not made again in the same burst, and
                // a rename is neither from nor to a path the burst already wrote or renamed
                // to: the watcher reports what is there at the end, so a file there before
                // would be taken as rewritten to the bytes of another (as an editor's save
                // through a temporary is), and a rewrite merged with a concurrent insertion
                // glues the insertion into the new text (the known gap of emptying a file
                // while another device edits it): a marker could not be found whole.
                let mut left = BTreeSet::new();
                let mut made = BTreeSet::new();
                for k in 0..w.rng.random_range(2..10) {
                    let path = pool[w.rng.random_range(0..pool.len())].to_string();
                    if left.contains(&path) {
                        continue;
                    }
                    match w.rng.random_range(0..10) {
                        0..=4 => {
                            // A marker at the end of the file (made if need be).
                            let m = format!("<m{next_marker}.{k}>");
                            let mut text = disk
                                .get(&path)
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                                .unwrap_or_default();
                            if !text.is_empty() && !text.ends_with('\n') {
                                text.push('\n');
                            }
                            text.push_str(&m);
                            text.push('\n');
                            disk.insert(path.clone(), text.clone().into_bytes());
                            made.insert(path.clone());
                            ops.push(DiskOp::Write(path, text.into_bytes()));
                            markers.push((m, p));
                        }
                        5..=6 => {
                            if let Some(old) = disk.remove(&path) {
                                forget_markers(&markers, &old, &mut deleted);
                                left.insert(path.clone());
                                ops.push(DiskOp::Remove(path));
                            }
                        }
                        7..=8 => {
                            // Renamed, over whatever is there (a deletion of it).
                            let to = format!("burst/r{}.md", w.rng.random_range(0..3));
                            if to != path
                                && !left.contains(&to)
                                && !made.contains(&to)
                                && !made.contains(&path)
                                && let Some(moved) = disk.remove(&path)
                            {
                                left.insert(path.clone());
                                made.insert(to.clone());
                                if let Some(old) = disk.insert(to.clone(), moved) {
                                    forget_markers(&markers, &old, &mut deleted);
                                }
                                ops.push(DiskOp::Rename(path, to));
                            }
                        }
                        _ => {
                            let m = format!("<m{next_marker}.{k}>");
                            let path = format!("burst/n{step}-{k}.md");
                            let text = format!("{m}\n");
                            disk.insert(path.clone(), text.clone().into_bytes());
                            ops.push(DiskOp::Write(path, text.into_bytes()));
                            markers.push((m, p));
                        }
                    }
                }
                w.burst(p, &ops);
            }
            81..=82 => {
                // A file copied in by hand from another device's folder (a folder copied
                // to two machines, a device joining again with its old folder): the
                // bytes another peer holds at a path this one has not, which that peer
                // may edit on before the two meet. One file when one is an earlier
                // version of the other, a conflict copy otherwise; nothing lost.
                let q = w.rng.random_range(0..peers);
                let path = paths[w.rng.random_range(0..paths.len())];
                if q != p
                    && w.read(p, path).is_none()
                    && let Some(bytes) = w.peers[q].disk.get(path).cloned()
                {
                    w.write(p, path, &bytes);
                }
            }
            _ => {
                let n = w.rng.random_range(0..20);
                for _ in 0..n {
                    w.step();
                }
                let dt = w.rng.random_range(0..3_000);
                w.advance(dt);
            }
        }
    }
    // Heal.
    w.faults = Faults::default();
    w.connect_all();
    w.settle(40);
    if let Err(e) = w.converged() {
        if trace {
            for i in 0..w.peers.len() {
                let pe = &mut w.peers[i];
                let st = pe.engine.status(&mut pe.store);
                eprintln!("peer {i}: conflicts {:?}", st.conflicts);
                eprintln!("peer {i}: counters {:?}", pe.engine.counters());
                eprintln!("peer {i}: {} now {}", pe.engine.debug_pulls(), w.now_ms);
                for (path, bytes) in pe.disk.clone() {
                    let doc = pe.engine.read(&path, &mut pe.store);
                    eprintln!(
                        "  {path}: disk {:?} engine {:?}",
                        String::from_utf8_lossy(&bytes),
                        doc.map(|d| String::from_utf8_lossy(&d).into_owned())
                    );
                }
            }
        }
        return Err(format!("seed {seed}: not converged: {e}"));
    }
    // The peer whose folder keeps no modes changed no file's bit.
    if seed % 5 == 2 {
        let name = w.peers[peers - 1].name.clone();
        let paths: Vec<String> = w.peers[0].disk.keys().cloned().collect();
        let p0 = &mut w.peers[0];
        for path in paths {
            let Ok(history) = p0.engine.history(&path, &mut p0.store) else {
                continue;
            };
            if let Some(v) = history
                .iter()
                .find(|v| v.device == name && v.exec.is_some())
            {
                return Err(format!(
                    "seed {seed}: {name}, whose folder keeps no modes, changed the bit of {path} ({})",
                    v.rev
                ));
            }
        }
    }
    // No lost edit: every marker not causally deleted is somewhere in the tree.
    let everything: String = w.peers[0]
        .disk
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    for (m, who) in &markers {
        if !deleted.contains(m) && !everything.contains(m.as_str()) {
            if trace {
                for (i, pe) in w.peers.iter().enumerate() {
                    eprintln!("peer {i}: counters {:?}", pe.engine.counters());
                }
            }
            return Err(format!("seed {seed}: edit {m} by peer {who} was lost"));
        }
    }
    Ok(ScheduleReport {
        files: w.peers[0].disk.len(),
        markers: markers.len(),
        messages: w.messages_delivered,
    })
}

/// The markers in `content`, gone with it (a file removed or replaced is a deletion).
fn forget_markers(markers: &[(String, usize)], content: &[u8], deleted: &mut BTreeSet<String>) {
    let text = String::from_utf8_lossy(content);
    for (m, _) in markers {
        if text.contains(m.as_str()) {
            deleted.insert(m.clone());
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleReport {
    pub files: usize,
    pub markers: usize,
    pub messages: u64,
}

/// How many characters of `text` come after its frontmatter.
fn fm_body_chars(text: &str, _fm: &cue_core::frontmatter::Frontmatter) -> usize {
    cue_core::frontmatter::parse(text).body.chars().count()
}
