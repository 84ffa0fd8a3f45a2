//! Remote changes and adopted documents: applying what peers send and verifying
//! documents adopted whole.

use super::*;

pub(super) enum Remote {
    Changes(Vec<Change>),
    Whole(Vec<u8>),
}

/// The member whose actor made op `op` (`counter@actorhex`).
pub(super) fn device_of_op(op: &str, members: &BTreeMap<DeviceId, String>) -> Option<DeviceId> {
    let actor = op.split_once('@')?.1;
    let prefix = hex::decode(actor).ok()?;
    if prefix.len() < 16 {
        return None;
    }
    members.keys().find(|d| d.0[..16] == prefix[..16]).copied()
}

/// Whether a change under `actor` may come from `from` as a live edit: one of its own
/// actors (see [`actor_for`]), or one of the fixed actors every peer writes the same first
/// change with (the index's genesis, conflict copies), which anyone may hold.
pub(super) fn may_author(from: &DeviceId, actor: &ActorId) -> bool {
    let bytes = actor.to_bytes();
    made_by(from, actor) || bytes == b"cue-index-genesis" || bytes.starts_with(b"cue-copy")
}

/// A document in memory that can no longer be trusted: automerge panicked applying a
/// peer's changes, or applied one it would not give back as it came. The caller drops it
/// for its stored version, and the item is refused.
pub(super) struct Spoiled;

/// Applies `changes` as one batch or, when automerge refuses the batch (it refuses all of
/// it for one bad change, such as one that reuses an actor's sequence number), one at a
/// time, so that the good ones still apply. Returns how many were refused. With
/// `rebuild`, each applied change must come back out of the document as it went in
/// (the same hash): what a well-formed change can still break, caught before the
/// document is stored (10 µs a change in a 4 KB note).
fn apply_isolated(
    am: &mut automerge::AutoCommit,
    changes: Vec<Change>,
    rebuild: bool,
) -> Result<u64, Spoiled> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
    let refused = catch_unwind(AssertUnwindSafe(|| {
        if changes.is_empty() || am.apply_changes(changes.iter().cloned()).is_ok() {
            return 0;
        }
        // A refused batch applied nothing (automerge checks every change before applying).
        changes
            .into_iter()
            .filter(|c| am.apply_changes([c.clone()]).is_err())
            .count() as u64
    }))
    .map_err(|_| Spoiled)?;
    if rebuild {
        let intact = catch_unwind(AssertUnwindSafe(|| {
            hashes.iter().all(|h| {
                am.get_change_meta_by_hash(h).is_none()
                    || am.get_change_by_hash(h).map(|c| c.hash()) == Some(*h)
            })
        }));
        if !matches!(intact, Ok(true)) {
            return Err(Spoiled);
        }
    }
    Ok(refused)
}

/// What is to be applied of `remote` to a document `am`: its changes, or for a whole
/// document the changes `am` lacks of it; unless `relayed`, changes `from` did not make
/// are left out, and so are changes under a sealing actor that no seal of its device
/// reaches (`crate::seal`), whoever sent them: both are counted (the second value).
/// `None` when the bytes are not a document.
fn changes_to_apply(
    from: &DeviceId,
    relayed: bool,
    am: &mut automerge::AutoCommit,
    remote: Remote,
    seals: &[Seal],
) -> Option<ToApply> {
    let alone = matches!(remote, Remote::Changes(_));
    let changes = match remote {
        Remote::Changes(c) => c,
        // Only what `am` lacks is read out of the other document, which is then thrown
        // away: the guarded read is its check (`load_peer_document` would read it all).
        Remote::Whole(bytes) => {
            let mut other = crate::doc::load_automerge(&bytes).ok()?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                am.get_changes_added(&mut other)
            }))
            .ok()?
        }
    };
    // What we hold was checked when it came (and a seal cannot reach it from here).
    let changes: Vec<Change> = changes
        .into_iter()
        .filter(|c| am.get_change_meta_by_hash(&c.hash()).is_none())
        .collect();
    // A whole document's changes were checked by automerge's load (their hashes
    // against the document's heads); changes that come alone are checked here (their
    // claims were, before automerge read them: `claims_fit`).
    let (changes, ill_formed): (Vec<Change>, Vec<Change>) = if alone {
        changes.into_iter().partition(crate::doc::well_formed)
    } else {
        (changes, Vec::new())
    };
    let (own, mut forged): (Vec<Change>, Vec<Change>) = changes
        .into_iter()
        .partition(|c| relayed || may_author(from, c.actor_id()));
    let (sealed, unsealed) = keep_sealed(own, seals);
    forged.extend(unsealed);
    Some(ToApply {
        changes: sealed,
        forged: forged.len() as u64,
        ill_formed: ill_formed.len() as u64,
        alone,
    })
}

/// Whether the operations `changes` (a peer's, as they came) claim fit what they could
/// honestly be, applied to a document holding `held` operations: two a byte they
/// inflate to (an inserted character carries its byte), and deletions of what the
/// document holds, four times over (concurrent deletions of the same text by several
/// devices may come together). A change's deletions carry no bytes, so a hundred-odd
/// bytes can claim millions of them, and automerge 0.12 spends on each before it finds
/// they delete nothing: 135 ns reading the change, 220 bytes checking its form, 500
/// bytes and 2 µs applying it (16 Mi in a 158-byte change: 2.3 s to read, 8.7 GB and
/// 39 s to apply, then a panic; `cue_sim::bomb::deletions_claiming`). Checked on the
/// bytes, before automerge reads them; the item's own bound (`peers.rs`) is checked
/// before the document is loaded, this one knows it.
pub(super) fn claims_fit(held: u64, changes: &[Vec<u8>]) -> bool {
    let mut budget = crate::inflate::Budget::new(crate::inflate::MAX_INFLATED_ITEM);
    if changes.iter().any(|c| budget.measure(c).is_err()) {
        return false;
    }
    let allowed = budget
        .used()
        .saturating_mul(2)
        .saturating_add(held.saturating_mul(4))
        .saturating_add(1 << 10);
    budget.ops() <= allowed
}

/// What [`changes_to_apply`] found.
struct ToApply {
    changes: Vec<Change>,
    /// Left out: not the sender's own, or not reached by their author's seal.
    forged: u64,
    /// Left out: not as cue makes changes (see [`crate::doc::well_formed`]).
    ill_formed: u64,
    /// They came as changes, not in a whole document.
    alone: bool,
}

/// Why [`apply_checked`] applied nothing usable.
pub(super) enum Unusable {
    /// The bytes are not a document.
    NotADocument,
    /// The document in memory can no longer be trusted (see [`Spoiled`]).
    Spoiled,
}

/// `changes` parted into those whose author's seal reaches them (or that need none) and
/// those it does not.
pub(super) fn keep_sealed(changes: Vec<Change>, seals: &[Seal]) -> (Vec<Change>, Vec<Change>) {
    let refused = crate::seal::unsealed(&changes, seals);
    if refused.is_empty() {
        return (changes, Vec::new());
    }
    let (mut kept, mut out) = (Vec::new(), Vec::new());
    for (i, c) in changes.into_iter().enumerate() {
        if refused.contains(&i) {
            out.push(c);
        } else {
            kept.push(c);
        }
    }
    (kept, out)
}

/// Whether every change of the document `am` holds that needs a seal is reached by one
/// of `seals`: read from automerge's change metadata, without building the changes
/// (the usual case for an adopted document; building them is for when some are not).
fn all_sealed(am: &mut automerge::AutoCommit, seals: &[Seal]) -> bool {
    let metas = am.get_changes_meta(&[]);
    let nodes: Vec<crate::seal::Node<'_>> = metas
        .iter()
        .map(|m| crate::seal::Node {
            hash: m.hash,
            actor: m.actor.as_ref(),
            deps: &m.deps,
        })
        .collect();
    crate::seal::unsealed_nodes(&nodes, seals).is_empty()
}

/// An adopted document, stored as `bytes`, checked apart from the engine: the seals to
/// keep for it (`seals_now` of `seals`) when its seals reach every change, it gives its
/// changes back, it renders to what it was `believed` to be (heads and content hash) and
/// holds no conflicting field; otherwise `None`, and `verify_adopted` does the rest.
fn check_adopted(
    bytes: &[u8],
    seals: &[Seal],
    actor: ActorId,
    believed: &(Heads, Option<ContentHash>),
) -> Option<Option<Vec<Seal>>> {
    let mut d = FileDoc::load(bytes, actor).ok()?;
    if !all_sealed(d.automerge(), seals) {
        return None;
    }
    crate::doc::changes_since(d.automerge(), &[])?;
    let heads = to_heads(&d.heads());
    let hash = if d.is_empty() {
        None
    } else {
        Some(file_hash(&d.materialize().ok()?, d.exec()))
    };
    if (heads, hash) != *believed || !d.conflicts().is_empty() {
        return None;
    }
    Some(seals_now(d.automerge(), &[], seals).0)
}

/// A document made of `changes` alone (those whose dependencies are among them), for a
/// whole document that came with changes not its authors'.
pub(super) fn rebuilt(changes: Vec<Change>, actor: ActorId) -> Result<FileDoc, DocError> {
    let mut am = automerge::AutoCommit::new();
    apply_isolated(&mut am, changes, false)
        .map_err(|Spoiled| DocError::Decode("automerge panicked applying it".into()))?;
    FileDoc::load(&am.save(), actor)
}

/// The seals among `kept` and `new` to keep for a document `am` now (for each device
/// whose changes it holds, those no other covers: `seal::keep`), when they changed, and
/// those of `new` that wait for their changes.
pub(super) fn seals_now(
    am: &mut automerge::AutoCommit,
    kept: &[Seal],
    new: &[Seal],
) -> (Option<Vec<Seal>>, Vec<Seal>) {
    let mut seals = kept.to_vec();
    // A seal is kept only while it names changes under its own device's actors: one
    // made with any other key (a member can make keys) names nothing it may keep.
    let new: Vec<Seal> = new
        .iter()
        .filter(|s| {
            s.heads.iter().all(|h| {
                am.get_change_meta_by_hash(&ChangeHash(*h)).is_none_or(|m| {
                    crate::seal::sealing_actor(&m.actor)
                        .is_some_and(|(p, _)| p[..] == s.device.0[..16])
                })
            })
        })
        .cloned()
        .collect();
    let am = std::cell::RefCell::new(am);
    let (changed, waiting) = crate::seal::keep(
        &mut seals,
        &new,
        |h| {
            am.borrow_mut()
                .get_change_meta_by_hash(&ChangeHash(*h))
                .is_some()
        },
        |a, b| crate::seal::covers_in(&mut am.borrow_mut(), a, b),
    );
    (changed.then_some(seals), waiting)
}

/// Documents with no record yet whose seals wait for their changes, at most: a peer
/// cannot grow the set by sealing changes it never sends.
const MAX_WAITING_APART: usize = 4096;

/// Waiting seals of devices not known as members kept a document, at most (see
/// `Engine::set_waiting`).
const MAX_WAITING_STRANGERS: usize = 8;

/// The index's maps whose changes leave what is live as it is, but for the files whose
/// paths moved (`Engine::paths_changed`): members are read when needed; `origin` says
/// who made a file (and who holds it too large). Not conflict records: a new one can
/// send a copy back to its path (`Engine::restore_orphaned_copies`), and they are rare.
const PATHS_ONLY: [&str; 3] = ["path", "origin", "members"];

/// What [`apply_checked`] did: changes refused as forged, changes automerge refused, and
/// the version the applied changes make up (those of them no other of them depends on).
struct Applied {
    forged: u64,
    refused: u64,
    version: Vec<ChangeHash>,
    /// The document's seals, when those that came changed them.
    seals: Option<Vec<Seal>>,
    /// Seals that came before their changes.
    waiting: Vec<Seal>,
}

/// Applies what `remote` brings to `am` (see [`changes_to_apply`], [`apply_isolated`]).
fn apply_checked(
    from: &DeviceId,
    relayed: bool,
    am: &mut automerge::AutoCommit,
    remote: Remote,
    seals: (&[Seal], &[Seal]),
) -> Result<Applied, Unusable> {
    let (kept, new) = seals;
    let to_apply =
        changes_to_apply(from, relayed, am, remote, new).ok_or(Unusable::NotADocument)?;
    let changes = to_apply.changes;
    let deps: BTreeSet<ChangeHash> = changes.iter().flat_map(|c| c.deps().to_vec()).collect();
    let tips: Vec<ChangeHash> = changes
        .iter()
        .map(|c| c.hash())
        .filter(|h| !deps.contains(h))
        .collect();
    let refused =
        apply_isolated(am, changes, to_apply.alone).map_err(|Spoiled| Unusable::Spoiled)?;
    // A change refused, or waiting for its dependencies, is not part of the version.
    let version = tips
        .into_iter()
        .filter(|h| am.get_change_meta_by_hash(h).is_some())
        .collect();
    let (seals, waiting) = seals_now(am, kept, new);
    Ok(Applied {
        forged: to_apply.forged,
        refused: refused + to_apply.ill_formed,
        version,
        seals,
        waiting,
    })
}

/// Missing-dependency pulls asked of peers that are remembered at most, so that a peer
/// cannot grow the set by sending changes for made-up documents.
const MAX_ASKED: usize = 1024;

impl Engine {
    /// The seals that came for `doc` with those that wait for their changes.
    fn with_waiting(&self, doc: DocId, seals: &[Seal]) -> Vec<Seal> {
        let waiting = match doc {
            DocId::Index => self.tail6.index_waiting.clone(),
            // Those that waited before the document had a record count too.
            DocId::File(f) => {
                let mut w = self.waiting_apart.get(&f).cloned().unwrap_or_default();
                w.extend(
                    self.files
                        .get(&f)
                        .map(|m| m.waiting.clone())
                        .unwrap_or_default(),
                );
                w
            }
        };
        let mut all = seals.to_vec();
        all.extend(waiting.into_iter().filter(|s| !seals.contains(s)));
        all
    }

    /// Keeps the seals that wait for their changes with the document's record, stored
    /// with it: automerge stores the changes it set aside with the document, so these
    /// must outlive a restart as well (see [`FileMeta::waiting`]).
    ///
    /// Stored, they are bounded harder than kept seals: a member can make keys at will
    /// and seal changes it never sends, so devices not known as members (a new member
    /// whose admission has not reached us yet) get [`MAX_WAITING_STRANGERS`] a document.
    fn set_waiting(&mut self, doc: DocId, mut waiting: Vec<Seal>) {
        let me = self.device;
        let mut strangers = 0;
        waiting.retain(|s| {
            let known = s.device == me || self.members_view.contains_key(&s.device);
            strangers += usize::from(!known);
            known || strangers <= MAX_WAITING_STRANGERS
        });
        let waiting = self.bounded(waiting);
        match doc {
            DocId::Index => {
                if self.tail6.index_waiting != waiting {
                    self.tail6.index_waiting = waiting;
                    self.state_dirty = true;
                }
            }
            DocId::File(f) => {
                let same = match self.files.get(&f) {
                    Some(m) => m.waiting == waiting && !self.waiting_apart.contains_key(&f),
                    None => self
                        .waiting_apart
                        .get(&f)
                        .map_or(waiting.is_empty(), |w| *w == waiting),
                };
                if same {
                    return;
                }
                match self.files.get_mut(&f) {
                    Some(mut m) => {
                        m.waiting = waiting;
                        self.dirty.insert(f);
                        self.waiting_apart.remove(&f);
                    }
                    // A document with no record yet (what came of it waits for its
                    // first changes) is not stored either: its seals wait in memory.
                    None if waiting.is_empty() => {
                        self.waiting_apart.remove(&f);
                    }
                    None => {
                        if self.waiting_apart.len() < MAX_WAITING_APART
                            || self.waiting_apart.contains_key(&f)
                        {
                            self.waiting_apart.insert(f, waiting);
                        }
                    }
                }
            }
        }
    }

    /// Whether changes from `from` to `doc` may carry other members' changes: an answer
    /// to a pull we sent it (the catch-up under way, or a pull of that one document for
    /// missing dependencies), not a live edit, which is always its author's own.
    pub(super) fn relays_for_us(&mut self, from: DeviceId, doc: DocId) -> bool {
        if self.pull.as_ref().is_some_and(|p| p.peer == from) {
            return true;
        }
        let now = self.now_ms;
        let timeout = self.config.pull_timeout_ms;
        self.asked
            .get(&(from, doc))
            .is_some_and(|t| now - *t <= timeout)
    }

    fn remember_asked(&mut self, from: DeviceId, doc: DocId) {
        let now = self.now_ms;
        let timeout = self.config.pull_timeout_ms;
        self.asked.retain(|_, t| now - *t <= timeout);
        if self.asked.len() >= MAX_ASKED && !self.asked.contains_key(&(from, doc)) {
            return;
        }
        self.asked.insert((from, doc), now);
    }

    /// A whole document with its content (`Item::Adopt`). A document we do not have is
    /// stored as it came and its content written as it came, without loading it; it is
    /// checked against that content later (`verify_adopted`). One we have is merged.
    pub(super) fn adopt(
        &mut self,
        from: DeviceId,
        f: FileId,
        (bytes, heads, content): (Vec<u8>, Heads, Vec<u8>),
        seals: Vec<Seal>,
        store: &mut dyn DocStore,
    ) -> Option<Heads> {
        // The same version again (a catch-up's answer overtaken by the pushes of a burst:
        // 888 of 3,000 notes came twice, and each merge loaded the document): nothing to
        // do. Pending local edits would have moved our heads on.
        if !heads.is_empty() && self.files.get(&f).is_some_and(|m| m.heads == heads) {
            return Some(heads);
        }
        let known = self.files.contains(&f) || self.cache.contains_key(&f);
        if known || heads.is_empty() {
            return self.apply_remote(from, DocId::File(f), Remote::Whole(bytes), seals, store);
        }
        // Stored unread: bytes whose chunks do not hold what their checksums say would
        // fail to load only later, once taken for ours.
        if !crate::inflate::chunks_intact(&bytes) {
            self.state.counters.bad_documents += 1;
            self.state_dirty = true;
            return None;
        }
        // An `Adopt` carries no mode: it is sent only for files that are not executable
        // (see `whole`); a sender that lies about that is caught by `verify_adopted`.
        // Its seals are kept as they came (each verified); whether they reach every
        // change of the document is checked with the rest in `verify_adopted`.
        // (Not loaded, the document cannot say which of a device's seals cover which:
        // all are kept, and the next change to it prunes them.)
        let mut kept = Vec::new();
        crate::seal::keep(&mut kept, &seals, |_| true, |a, b| a == b);
        let meta = FileMeta {
            heads: heads.clone(),
            doc_hash: Some(content_hash(&content)),
            size: content.len() as u64,
            seals: kept,
            ..FileMeta::default()
        };
        self.files.insert(f, meta);
        self.adopted.insert(f, bytes);
        self.adopted_content.insert(f, content);
        self.tail.unverified.insert(f);
        self.last_adopt_ms = self.now_ms;
        self.state_dirty = true;
        // A file that got content may now clash with another at its path.
        self.became_live(f);
        self.dirty.insert(f);
        self.to_reconcile.insert(f);
        if let Some(path) = self.index.path_of(&f) {
            let name = self.members_view.get(&from).cloned().unwrap_or_default();
            self.activity(ActivityKind::RemoteChange, Some(path), &name, None);
        }
        Some(heads)
    }

    /// Check up to `budget` adopted documents against the content they came with. A
    /// document that renders to something else (a faulty or lying sender) wins: its real
    /// heads and content replace what was believed, and the disk follows. Changes in it
    /// that their authors' seals do not reach are taken out first (as a whole document
    /// is when it comes, see `adopt_whole`).
    ///
    /// What an honest sender's document needs (its seals reach every change, it renders
    /// to the content it came with, no field conflicts) is worked out on the engine's
    /// threads from the stored bytes (`check_adopted`): at 10,000 adopted notes this is
    /// ≈ 2.4 ms a note of automerge's loading. Anything else is done here, in order.
    pub(super) fn verify_adopted(&mut self, budget: usize, store: &mut dyn DocStore) {
        let batch: Vec<FileId> = self.tail.unverified.iter().take(budget).copied().collect();
        let mut clean = self.check_adopted_apart(&batch, store);
        for f in batch {
            self.tail.unverified.remove(&f);
            self.state_dirty = true;
            if let Some(seals) = clean.remove(&f) {
                // What `unseal_adopted` keeps of a document all its seals reach.
                let seals = self.bounded(seals.unwrap_or_default());
                if let Some(mut m) = self.files.get_mut(&f) {
                    m.seals = seals;
                }
                self.dirty.insert(f);
                continue;
            }
            if self.files.contains(&f) {
                self.unseal_adopted(f, store);
            }
            let Some(believed) = self.files.get(&f).map(|m| (m.heads.clone(), m.doc_hash)) else {
                continue;
            };
            let actual = self.with_doc(f, store, |d| {
                // An adopted document came unread; one that cannot give its changes
                // back (see `crate::doc::load_peer_document`) is counted here.
                crate::doc::changes_since(d.automerge(), &[]).ok_or_else(crate::doc::unreadable)?;
                let heads = to_heads(&d.heads());
                let hash = if d.is_empty() {
                    None
                } else {
                    d.materialize().ok().map(|c| file_hash(&c, d.exec()))
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
                    // A peer's bytes that do not load (not our store's damage: never
                    // taken in again as ours) are refused as if they had never come:
                    // record and document dropped, the content written from them taken
                    // off the disk (unless edited since: then it is the user's), and
                    // the file comes again from a peer that holds it whole.
                    if !self.damaged_docs.remove(&f) {
                        self.state.counters.bad_documents += 1;
                    }
                    self.refuse_adopted(f);
                    continue;
                }
            }
            self.record_field_conflicts(f, store);
        }
    }

    /// An adopted document that does not load: dropped with its record, and the file
    /// written from the content it came with removed if the disk still holds that.
    fn refuse_adopted(&mut self, f: FileId) {
        if let Some((path, hash)) = self.forget_file(f).and_then(|m| m.disk) {
            self.out_files.push(Effect::RemoveFile {
                path,
                expect: Some(hash),
            });
        }
    }

    /// The files of `batch` whose adopted document checks out clean (see
    /// `check_adopted`), each with the seals to keep, worked out on the engine's threads
    /// from the stored bytes. A document in memory (changed since it came) is left out.
    fn check_adopted_apart(
        &mut self,
        batch: &[FileId],
        store: &mut dyn DocStore,
    ) -> BTreeMap<FileId, Option<Vec<Seal>>> {
        let mut jobs = Vec::new();
        for &f in batch {
            let Some(m) = self.files.get(&f) else {
                continue;
            };
            if self.cache.contains_key(&f) {
                continue;
            }
            let believed = (m.heads.clone(), m.doc_hash);
            let seals = m.seals.clone();
            let bytes = match self.adopted.get(&f) {
                Some(bytes) => bytes.clone(),
                None => match store.load(&DocId::File(f)) {
                    Some(bytes) => bytes,
                    None => continue,
                },
            };
            jobs.push((f, bytes, seals, believed));
        }
        let actor = &self.actor;
        let checked = on_threads(self.threads, &jobs, |(_, bytes, seals, believed)| {
            check_adopted(bytes, seals, actor.clone(), believed)
        });
        jobs.iter()
            .zip(checked)
            .filter_map(|((f, ..), c)| Some((*f, c.flatten()?)))
            .collect()
    }

    /// An adopted document whose changes its seals do not all reach is made again of
    /// those they reach; its seals are those of the changes it holds.
    pub(super) fn unseal_adopted(&mut self, f: FileId, store: &mut dyn DocStore) {
        let seals = self.seals_of(DocId::File(f));
        let actor = self.actor.clone();
        let r = self.with_doc(f, store, |d| {
            if all_sealed(d.automerge(), &seals) {
                return Ok((None, seals_now(d.automerge(), &[], &seals).0, 0));
            }
            let all =
                crate::doc::changes_since(d.automerge(), &[]).ok_or_else(crate::doc::unreadable)?;
            let (kept, refused) = keep_sealed(all, &seals);
            let mut doc = rebuilt(kept, actor)?;
            let now = seals_now(doc.automerge(), &[], &seals).0;
            let n = refused.len() as u64;
            Ok((Some(doc), now, n))
        });
        let Ok((doc, now, refused)) = r else {
            return;
        };
        if let Some(doc) = doc {
            let t = self.touch();
            self.cache.insert(f, (doc, t));
            self.adopted.remove(&f);
            self.state.counters.forged_changes += refused;
            self.state_dirty = true;
            // Stored whole again, in place of what came.
            let compact_after = self.config.compact_after;
            if let Some(mut m) = self.files.get_mut(&f) {
                m.increments = compact_after;
            }
        }
        let seals = self.bounded(now.unwrap_or_default());
        if let Some(mut m) = self.files.get_mut(&f) {
            m.seals = seals;
        }
        self.dirty.insert(f);
    }

    /// Apply changes or a whole document from a peer, with the seals that came with
    /// them (verified). Returns our new heads if anything was applied.
    pub(super) fn apply_remote(
        &mut self,
        from: DeviceId,
        doc: DocId,
        remote: Remote,
        seals: Vec<Seal>,
        store: &mut dyn DocStore,
    ) -> Option<Heads> {
        let (before, after, missing) = match doc {
            DocId::Index => self.apply_to_index(from, remote, &seals, store)?,
            DocId::File(f) => self.apply_to_file(from, f, remote, &seals, store)?,
        };
        if before != after
            && let Some(p) = self.pull.as_mut()
        {
            p.changed = true;
        }
        if missing {
            // We lack changes these depend on: ask the sender for this document.
            self.remember_asked(from, doc);
            self.send(
                from,
                Item::Pull {
                    id: 0,
                    full: false,
                    complete: false,
                    entries: vec![(doc, after.clone())],
                },
            );
        }
        (before != after).then_some(after)
    }

    /// Counts changes refused as forged and changes automerge refused.
    fn count_refused(&mut self, applied: &Applied) {
        let (forged, refused) = (applied.forged, applied.refused);
        if forged + refused > 0 {
            self.state.counters.forged_changes += forged;
            self.state.counters.bad_changes += refused;
            self.state_dirty = true;
        }
    }

    /// Puts back the index as stored, after automerge spoiled the one in memory (see
    /// [`Spoiled`]). What this call applied before is lost from memory and comes again
    /// from its senders; local changes are stored by the call that makes them.
    fn reload_index(&mut self, store: &mut dyn DocStore) {
        let actor = self.index.automerge_unchanged().get_actor().clone();
        self.index = store
            .load(&DocId::Index)
            .and_then(|b| IndexDoc::load(&b, actor.clone()).ok())
            .unwrap_or_else(|| IndexDoc::new(actor));
        self.invalidate(Stale::View);
    }

    /// A document's seals, at most [`crate::seal::MAX_SEALS`] of them, this device's and
    /// members' first. A member can make keys at will and slip seals of made-up devices
    /// (with changes under them) into a pull answer, where others' changes legitimately
    /// travel; kept without a bound they would grow every item of the document, and past
    /// what a receiver keeps of an item's seals crowd out the members' own, whose changes
    /// would then be refused wherever they are relayed. Members' seals are never dropped
    /// for others'. (Seals of devices not yet known as members are kept while there is
    /// room: a device admitted since may be sealing before its admission reaches us.)
    fn bounded(&self, mut seals: Vec<Seal>) -> Vec<Seal> {
        if seals.len() <= crate::seal::MAX_SEALS {
            return seals;
        }
        let me = self.device;
        seals.sort_by_key(|s| !(s.device == me || self.members_view.contains_key(&s.device)));
        seals.truncate(crate::seal::MAX_SEALS);
        seals.sort_by_key(|s| s.device);
        seals
    }

    /// A document from a peer that could not be used: counted, and nothing changes.
    fn bad_document(&mut self) -> Option<(Heads, Heads, bool)> {
        self.state.counters.bad_documents += 1;
        self.state_dirty = true;
        None
    }

    /// Applies a peer's changes (or whole index) to the index: (heads before, after,
    /// whether changes they depend on are missing).
    fn apply_to_index(
        &mut self,
        from: DeviceId,
        remote: Remote,
        seals: &[Seal],
        store: &mut dyn DocStore,
    ) -> Option<(Heads, Heads, bool)> {
        let before = to_heads(&self.index.heads());
        let maps_before = self.index.maps();
        let standing_before = self.standing_records();
        let live_before = self.live_view(store);
        let relayed = self.relays_for_us(from, DocId::Index);
        let kept = std::mem::take(&mut self.tail5.index_seals);
        let seals = self.with_waiting(DocId::Index, seals);
        let (applied, delta) = self
            .index
            .apply_keeping_paths(|am| apply_checked(&from, relayed, am, remote, (&kept, &seals)));
        self.tail5.index_seals = kept;
        // A map of the index replaced or removed (`path` made a number, `tomb` deleted)
        // would take every file's path, tombstone or membership with it, leaving nothing
        // to restore and an index that no longer loads: refused whole, as spoiled. So is
        // a rotation record or admitted-by entry taken away (`standing_records`).
        let applied = applied.and_then(|a| {
            if self.index.maps() == maps_before
                && self.standing_records().is_superset(&standing_before)
            {
                Ok(a)
            } else {
                Err(Unusable::Spoiled)
            }
        });
        let mut applied = match applied {
            Ok(applied) => applied,
            Err(Unusable::NotADocument) => return self.bad_document(),
            Err(Unusable::Spoiled) => {
                self.reload_index(store);
                return self.bad_document();
            }
        };
        if let Some(now) = applied.seals.take() {
            self.tail5.index_seals = self.bounded(now);
            self.state_dirty = true;
        }
        self.set_waiting(DocId::Index, std::mem::take(&mut applied.waiting));
        self.count_refused(&applied);
        let missing = !self
            .index
            .automerge_unchanged()
            .get_missing_deps(&[])
            .is_empty();
        let after = to_heads(&self.index.heads());
        if before != after {
            self.index_dirty = true;
            self.refresh_members();
            let changed = delta.as_ref().map(|d| &d.paths);
            let made = self.deleted_without_tombstone(&live_before, changed, &before, store);
            let touched = delta.as_ref().map(|d| d.tombs.clone());
            let made = made + self.purges_before_their_time(touched.as_ref(), &before);
            self.note_tombstones(touched.as_ref(), &before);
            // Only paths set, moved or removed (new files from a burst, mostly), and
            // nothing else that decides what is live: the view follows them alone.
            match delta.filter(|d| made == 0 && d.maps.iter().all(|m| PATHS_ONLY.contains(m))) {
                Some(delta) => {
                    // (The view is updated in place: nothing else may hold it.)
                    drop(live_before);
                    self.paths_changed(&delta.paths, store);
                }
                delta => {
                    self.invalidate(Stale::View);
                    // (Tombstones set here are not in the delta: then every file is
                    // looked at.)
                    let tombs = delta.filter(|_| made == 0).map(|d| d.tombs);
                    self.guard_remote_deletions(from, &live_before, tombs.as_ref(), store);
                }
            }
            // Held files a peer brought back (`restore` elsewhere) are held no more.
            let back: Vec<FileId> = self
                .tail3
                .held
                .clone()
                .into_iter()
                .filter(|f| self.index.tombstone(f).is_none())
                .collect();
            self.release_held(&back);
        }
        Some((before, after, missing))
    }

    /// A file leaves the workspace by a deletion, whose tombstone `restore` brings back
    /// and the mass-deletion guard counts (or, once that expired, by its purge). A
    /// peer's change that takes the path of a file live here away otherwise would take
    /// it off every disk with nothing to restore and nothing counted: a purge of a file
    /// live here (a device away longer than `tombstone_days`), or what only a hostile or
    /// broken peer sends (a path dropped alone, one no device may write, the map of
    /// paths replaced). Each such file becomes a deletion like any, here: its path put
    /// back and a tombstone set, as a change of this device's; those no purge explains
    /// are counted in `bad_paths`. Looks at the files whose path changed (`changed`),
    /// or at every live file when the patches did not say. How many.
    fn deleted_without_tombstone(
        &mut self,
        live_before: &BTreeMap<FileId, String>,
        changed: Option<&BTreeSet<FileId>>,
        before: &Heads,
        store: &mut dyn DocStore,
    ) -> usize {
        let candidates: Vec<(FileId, String)> = match changed {
            Some(changed) => changed
                .iter()
                .filter_map(|f| Some((*f, live_before.get(f)?.clone())))
                .collect(),
            None => live_before.iter().map(|(f, p)| (*f, p.clone())).collect(),
        };
        let mut made = 0;
        let mut bad = 0;
        for (f, path) in candidates {
            let now = self.index.path_of(&f);
            if now.as_deref().is_some_and(|p| valid_path(p).is_ok())
                || self.index.tombstone(&f).is_some()
            {
                continue;
            }
            // A purge drops the file's origin with its path: its tombstone is set again
            // as it was (an edit made here since, offline, keeps the file, as an edit
            // concurrent with a deletion does). Otherwise, at what this device holds.
            let purged = now.is_none() && self.index.origin(&f).is_none();
            if !purged {
                bad += 1;
            }
            let since: Vec<ChangeHash> = before.iter().map(|h| ChangeHash(*h)).collect();
            let tomb = match purged
                .then(|| self.index.tombstone_before_changes_since(&f, &since))
                .flatten()
            {
                Some(tomb) => tomb,
                None => Tombstone {
                    time_ms: self.now_ms,
                    heads: self.doc_heads(f, store),
                },
            };
            if self.index.set_path(&f, &path).is_ok() && self.index.set_tombstone(&f, &tomb).is_ok()
            {
                made += 1;
            }
        }
        if bad > 0 {
            self.state.counters.bad_paths += bad;
            self.state_dirty = true;
        }
        if made > 0 {
            self.commit_index();
        }
        made
    }

    /// A deletion stays restorable for `tombstone_days` by this device's clock, whoever
    /// purges it: a peer's change that purges a tombstone this device held and has held
    /// for less than that (a member deleting files in slices the guard lets through,
    /// then purging them at once, would leave `restore` nothing), or one the guard holds
    /// here, has the path, origin and tombstone put back as they stood here, as a change
    /// of this device's. One set and purged while this device was away was never held
    /// here: it stays purged. An honest device that held the tombstone earlier purges
    /// when its own time is up, and may be put back so: it never purges that deletion
    /// again (`StateTail7::purged`) and takes the purge of the device that held it
    /// last, whose time is up last; each device purges a deletion once, so the
    /// puts-back end. Not counted as bad input, since an honest device does it. Looks at
    /// the files whose tombstone the changes touched (`touched`), or, when the patches
    /// did not say, at every tombstone held before them. How many were put back.
    fn purges_before_their_time(
        &mut self,
        touched: Option<&BTreeSet<FileId>>,
        before: &Heads,
    ) -> usize {
        let now = self.now_ms;
        let before: Vec<ChangeHash> = before.iter().map(|h| ChangeHash(*h)).collect();
        let candidates: Vec<FileId> = match touched {
            Some(touched) => touched.iter().copied().collect(),
            None => self.index.tombstoned_at(&before).into_iter().collect(),
        };
        let mut kept = 0;
        for f in candidates {
            // (A restore clears the tombstone and keeps the path: not a purge.)
            if self.index.tombstone(&f).is_some() || self.index.path_of(&f).is_some() {
                continue;
            }
            // (Not noted by a tick yet: held since just now.)
            let seen = self.tail3.tombs_seen.get(&f).copied().unwrap_or(now);
            if now - seen > self.config.tombstone_ms && !self.tail3.held.contains(&f) {
                continue;
            }
            let (Some(tomb), Some(path)) = (
                self.index.tombstone_at(&f, &before),
                self.index.path_at(&f, &before),
            ) else {
                continue;
            };
            if let Some(origin) = self.index.origin_at(&f, &before) {
                let _ = self.index.set_origin(&f, &origin);
            }
            if self.index.set_path(&f, &path).is_ok() && self.index.set_tombstone(&f, &tomb).is_ok()
            {
                kept += 1;
            }
        }
        if kept > 0 {
            self.commit_index();
        }
        kept
    }

    /// Tombstones a peer's changes set are held from now (the ticks note the others): a
    /// purge that comes before the next tick is one of a tombstone held here since. A
    /// deletion made again (restored and deleted) is held anew; one this device purged
    /// before, put back by another, is held since it was first (see `StateTail7`).
    /// `touched`: the files whose tombstone the changes touched, or `None` (every one).
    fn note_tombstones(&mut self, touched: Option<&BTreeSet<FileId>>, before: &Heads) {
        let now = self.now_ms;
        let before: Vec<ChangeHash> = before.iter().map(|h| ChangeHash(*h)).collect();
        // (With no summary: every tombstone now, and every one before, some maybe
        // restored.)
        let candidates: BTreeSet<FileId> = match touched {
            Some(touched) => touched.clone(),
            None => (self.index.tombstones().into_keys())
                .chain(self.index.tombstoned_at(&before))
                .collect(),
        };
        for f in candidates {
            let Some(tomb) = self.index.tombstone(&f) else {
                // Restored (the path kept): deleted again later, a new deletion.
                if self.index.path_of(&f).is_some()
                    && (self.tail7.purged.remove(&f).is_some()
                        || self.tail3.tombs_seen.remove(&f).is_some())
                {
                    self.tail3.tombs_seen.remove(&f);
                    self.state_dirty = true;
                }
                continue;
            };
            let made_again = self.tail3.tombs_seen.contains_key(&f)
                && self
                    .index
                    .tombstone_at(&f, &before)
                    .is_some_and(|t| t != tomb);
            if made_again {
                self.tail7.purged.remove(&f);
                self.tail3.tombs_seen.insert(f, now);
                self.state_dirty = true;
            } else if !self.tail3.tombs_seen.contains_key(&f) {
                let since = self.tail7.purged.get(&f).map_or(now, |(first, _)| *first);
                self.tail3.tombs_seen.insert(f, since);
                self.state_dirty = true;
            }
        }
    }

    /// The mass-deletion guard for deletions from peers: when one batch of index changes
    /// deletes more than half of a workspace (as a local `rm -rf` would, or a hostile
    /// member), the deletions are held: the files stay on disk here, status says so, and
    /// the user applies or undoes them. While deletions are held, every later one is too.
    fn guard_remote_deletions(
        &mut self,
        from: DeviceId,
        live_before: &BTreeMap<FileId, String>,
        tombs: Option<&BTreeSet<FileId>>,
        store: &mut dyn DocStore,
    ) {
        // The files that were live and now have a tombstone: of those whose tombstone
        // the changes set, when the patches say which (reading every tombstone for each
        // message grew with every file ever deleted), else of every live one.
        let candidates: Vec<FileId> = match tombs {
            Some(t) => t
                .iter()
                .filter(|f| live_before.contains_key(f))
                .copied()
                .collect(),
            None => live_before.keys().copied().collect(),
        };
        // A file dropped as one with another that stands (the clash rule) was deleted by
        // nobody: its bytes live on in the other, on this disk too once it comes. Neither
        // shown as a deletion nor counted by the guard (a device joining with its folder
        // full has half its files settled so: nothing to pause).
        let new_tombs: Vec<FileId> = candidates
            .into_iter()
            .filter(|f| self.index.tombstone(f).is_some() && self.twin_standing(f).is_none())
            .collect();
        if new_tombs.is_empty() {
            return;
        }
        let dead: Vec<FileId> = new_tombs
            .into_iter()
            .filter(|f| !self.is_live(*f, store))
            .collect();
        // (A batch that deletes nothing here trips nothing: the window's deletions were
        // judged when they came.)
        if dead.is_empty() {
            return;
        }
        let by = self.members_view.get(&from).cloned().unwrap_or_default();
        for f in &dead {
            if let Some(path) = live_before.get(f) {
                self.activity(ActivityKind::Delete, Some(path.clone()), &by, None);
            }
        }
        // Deletions arrive one change at a time (a `rm -rf` is one removal per file):
        // they count together over a short window, measured against the workspace as it
        // was before the window began.
        let now = self.now_ms;
        self.recent_remote_deletions
            .retain(|(t, _)| now - *t <= REMOTE_GUARD_WINDOW_MS);
        let known = live_before.len() + self.recent_remote_deletions.len();
        self.recent_remote_deletions
            .extend(dead.iter().map(|f| (now, *f)));
        let deleted = self.recent_remote_deletions.len();
        let paused = !self.tail3.held.is_empty();
        if !paused && !crate::carry::too_many_missing(known, deleted) {
            return;
        }
        let dead: Vec<FileId> = self
            .recent_remote_deletions
            .iter()
            .map(|(_, f)| *f)
            .collect();
        if !paused {
            let name = self.members_view.get(&from).cloned().unwrap_or_default();
            let reason = format!("{deleted} of the {known} files were deleted at once by {name}");
            let me = self.name.clone();
            self.activity(
                ActivityKind::Error,
                None,
                &me,
                Some(format!(
                    "deletions paused: {reason}; nothing was deleted here. `cue sync restore .` brings the files back everywhere, `cue sync apply-deletions` deletes them here too"
                )),
            );
            self.tail3.held_reason = Some((reason, self.now_ms));
        }
        self.tail3.held.extend(dead);
        self.state_dirty = true;
    }

    /// Applies a peer's changes (or whole document) to a file's document, as
    /// [`Engine::apply_to_index`] does to the index.
    fn apply_to_file(
        &mut self,
        from: DeviceId,
        f: FileId,
        remote: Remote,
        seals: &[Seal],
        store: &mut dyn DocStore,
    ) -> Option<(Heads, Heads, bool)> {
        let before = self
            .files
            .get(&f)
            .map(|m| m.heads.clone())
            .unwrap_or_default();
        let remote = self.adopt_whole(f, remote, seals)?;
        let relayed = self.relays_for_us(from, DocId::File(f));
        let kept = self.seals_of(DocId::File(f));
        let seals = self.with_waiting(DocId::File(f), seals);
        let had_content = self.files.get(&f).is_some_and(|m| m.doc_hash.is_some());
        let r = self.with_doc(f, store, |d| {
            let ours = d.heads();
            let am = d.automerge();
            let applied = apply_checked(&from, relayed, am, remote, (&kept, &seals))
                .map_err(|_| DocError::Decode("not a document, or spoiled applying".into()))?;
            let missing = !am.get_missing_deps(&[]).is_empty();
            let after = to_heads(&am.get_heads());
            // A document that had a content and has none after (its `kind` removed or
            // made a number: changes cue never makes) would take the file off every
            // disk with no deletion to undo: refused whole, as spoiled.
            if had_content && after != to_heads(&ours) && !d.renders() {
                return Err(DocError::Decode(
                    "changes left the file's document without a content".into(),
                ));
            }
            // Our version against the sender's: a fast-forward (the sender had all we
            // had) returns at once. Failing to tell costs only the notice.
            let overlaps = d.overlaps(&ours, &applied.version).ok().flatten();
            Ok((after, missing, applied, overlaps))
        });
        let Ok((after, missing, mut applied, overlaps)) = r else {
            // A document that failed to apply may be half-updated in memory; drop it so
            // the stored version is what counts.
            self.cache.remove(&f);
            return self.bad_document();
        };
        self.count_refused(&applied);
        if let Some(now) = applied.seals.take() {
            let now = self.bounded(now);
            self.files.get_or_default(f).seals = now;
            self.dirty.insert(f);
        }
        if before != after {
            self.files.get_or_default(f);
        }
        // After the record is made, so that they are stored with it.
        self.set_waiting(DocId::File(f), std::mem::take(&mut applied.waiting));
        if before != after {
            self.refresh_meta(f, store);
            self.record_field_conflicts(f, store);
            self.to_reconcile.insert(f);
            let name = self.members_view.get(&from).cloned().unwrap_or_default();
            if let Some(path) = self.index.path_of(&f) {
                self.activity(ActivityKind::RemoteChange, Some(path), &name, None);
            }
            if let Some(found) = overlaps {
                self.note_overlaps(f, found);
            }
        }
        Some((before, after, missing))
    }

    /// A whole document we do not have at all is taken as sent: loading it is the only
    /// cost, and its bytes are stored as they came (no merge into an empty document, no
    /// re-encoding), unless some of its changes are not their authors' (`crate::seal`):
    /// then it is made again of the others. What is left to apply; `None` when the bytes
    /// are not a document.
    fn adopt_whole(&mut self, f: FileId, remote: Remote, seals: &[Seal]) -> Option<Remote> {
        match remote {
            Remote::Whole(bytes) if !self.files.contains(&f) && !self.cache.contains_key(&f) => {
                let loaded =
                    FileDoc::load_from_peer(&bytes, self.actor.clone()).and_then(|mut doc| {
                        if all_sealed(doc.automerge(), seals) {
                            return Ok((doc, Some(bytes), 0));
                        }
                        let all = crate::doc::changes_since(doc.automerge(), &[])
                            .ok_or_else(crate::doc::unreadable)?;
                        let (kept, refused) = keep_sealed(all, seals);
                        Ok((
                            rebuilt(kept, self.actor.clone())?,
                            None,
                            refused.len() as u64,
                        ))
                    });
                match loaded {
                    Ok((mut doc, as_sent, refused)) => {
                        if let (Some(now), _) = seals_now(doc.automerge(), &[], seals) {
                            let now = self.bounded(now);
                            self.files.get_or_default(f).seals = now;
                        }
                        let t = self.touch();
                        self.cache.insert(f, (doc, t));
                        match as_sent {
                            Some(bytes) => {
                                self.adopted.insert(f, bytes);
                            }
                            None => {
                                self.state.counters.forged_changes += refused;
                                self.state_dirty = true;
                                // Stored whole, as made here.
                                let compact_after = self.config.compact_after;
                                self.files.get_or_default(f).increments = compact_after;
                            }
                        }
                        Some(Remote::Changes(Vec::new()))
                    }
                    Err(_) => {
                        self.bad_document();
                        None
                    }
                }
            }
            other => Some(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    fn change(doc: &mut AutoCommit, key: &str) -> Change {
        doc.put(ROOT, key, "v").unwrap();
        doc.commit();
        doc.get_last_local_change().unwrap()
    }

    /// automerge refuses a whole batch for one change that reuses an actor's sequence
    /// number; the good changes of the batch apply all the same.
    #[test]
    fn one_bad_change_does_not_block_the_rest_of_its_batch() {
        let a = ActorId::from(&[1u8; 16][..]);
        let b = ActorId::from(&[2u8; 16][..]);
        let mut target = AutoCommit::new();
        // The target holds a forgery of `a`'s first change.
        let forged = change(&mut AutoCommit::new().with_actor(a.clone()), "forged");
        target.apply_changes([forged]).unwrap();
        let genuine = change(&mut AutoCommit::new().with_actor(a), "genuine");
        let good = change(&mut AutoCommit::new().with_actor(b), "good");
        assert!(
            target
                .clone()
                .apply_changes([genuine.clone(), good.clone()])
                .is_err()
        );
        assert_eq!(
            apply_isolated(&mut target, vec![genuine, good.clone()], true).ok(),
            Some(1)
        );
        assert!(target.get_change_by_hash(&good.hash()).is_some());
    }

    #[test]
    fn live_changes_are_their_senders_own() {
        let d = DeviceId([7; 32]);
        assert!(may_author(&d, &actor_for(&d, 3)));
        assert!(!may_author(&d, &actor_for(&DeviceId([8; 32]), 3)));
        assert!(may_author(&d, &ActorId::from(&b"cue-index-genesis"[..])));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Every change cue makes passes [`crate::doc::well_formed`]: saves of Markdown with and
        /// without frontmatter, binary files, and edits of an older version on another
        /// actor (a fork), so that a refusal is never an honest edit lost.
        #[test]
        fn cue_changes_are_well_formed(
            saves in proptest::collection::vec(
                ("(---\nt(a|b): [a-z ]{0,8}\n---\n)?([a-z#\n ]|é|日){0,60}", proptest::bool::ANY),
                1..8,
            ),
            binary in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let mut doc = FileDoc::new(ActorId::from(vec![1u8; 20]));
            let mut changes = Vec::new();
            for (text, fork) in &saves {
                let at = doc.automerge().get_heads();
                let made = if *fork {
                    doc.write_at(&at, "n.md", text.as_bytes(), None, 7, ActorId::from(vec![2u8; 20]))
                } else {
                    doc.write("n.md", text.as_bytes(), 7)
                };
                if let Ok(Some(h)) = made {
                    changes.extend(doc.change(&h));
                }
            }
            if let Ok(Some(h)) = doc.write("n.md", &binary, 8) {
                changes.extend(doc.change(&h));
            }
            for bytes in changes {
                let c = Change::from_bytes(bytes).unwrap();
                proptest::prop_assert!(crate::doc::well_formed(&c));
            }
        }
    }
}
