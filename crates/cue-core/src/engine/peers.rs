//! Peers and messages: announcements, digests, who is online, and the reassembly of
//! chunked items.

use super::*;

#[derive(Debug, Default)]
pub(super) struct PeerLive {
    pub(super) online: bool,
    pub(super) digest: Option<[u8; 32]>,
    /// The digest we last pulled from this peer at, and when: a peer is not asked again
    /// for the same state until the anti-entropy interval has passed.
    pub(super) last_pull: Option<([u8; 32], i64)>,
    pub(super) chunks: BTreeMap<u64, ChunkBuf>,
}

#[derive(Debug)]
pub(super) struct ChunkBuf {
    pub(super) total: u32,
    pub(super) parts: BTreeMap<u32, Vec<u8>>,
    pub(super) bytes: usize,
}

/// Checks that the automerge bytes of an item (the changes of a `Changes` item together,
/// or a whole document) inflate to at most [`MAX_INFLATED_ITEM`], before automerge, which
/// inflates without a bound, sees them (see `crate::inflate`). Changes that are not
/// automerge chunks are taken out of the item (returned as a count: they are bad
/// changes), with what the rest inflate to; any other refusal is for the whole item.
pub(super) fn automerge_bytes_bounded(item: &mut Item) -> Result<Measured, InflateError> {
    let mut budget = Budget::new(MAX_INFLATED_ITEM);
    if let Item::Sealed { seals, .. } = item {
        // More than a document can have, or naming more changes than a seal may: never
        // checked, never kept (the changes only they would reach are refused, and come
        // again from their authors).
        seals.retain(|s| s.heads.len() <= crate::seal::MAX_SEALED_HEADS);
        seals.truncate(crate::seal::MAX_SEALS);
    }
    let bad = match item {
        Item::Changes { changes, .. }
        | Item::Sealed {
            item: wire::Sealable::Changes { changes, .. },
            ..
        } => {
            let before = changes.len();
            let mut too_large = None;
            changes.retain(|c| match budget.measure(c) {
                Ok(()) => true,
                Err(e @ InflateError::TooLarge { .. }) => {
                    too_large = Some(e);
                    false
                }
                Err(_) => false,
            });
            match too_large {
                Some(e) => return Err(e),
                None => (before - changes.len()) as u64,
            }
        }
        Item::Whole { bytes, .. }
        | Item::Adopt { bytes, .. }
        | Item::Sealed {
            item: wire::Sealable::Whole { bytes, .. } | wire::Sealable::Adopt { bytes, .. },
            ..
        } => {
            budget.measure(bytes)?;
            0
        }
        _ => 0,
    };
    if budget.foreign_actions() {
        return Err(InflateError::Malformed("operations cue never makes"));
    }
    Ok(Measured {
        bad,
        inflated: budget.used(),
        ops: budget.ops(),
        changes: budget.changes(),
    })
}

/// What [`automerge_bytes_bounded`] found of an item.
pub(super) struct Measured {
    /// Changes taken out (not automerge chunks).
    pub(super) bad: u64,
    /// What the rest inflate to.
    pub(super) inflated: u64,
    /// The operations they claim (see `Budget::ops`).
    pub(super) ops: u64,
    /// The changes they claim (see `Budget::changes`).
    pub(super) changes: u64,
}

/// Operations an item may claim beyond two a byte it inflates to (and, for changes, the
/// deletions of the largest file four times over): every operation of a document carries
/// a byte of its value (a character of text, a byte of a value), deleted ones too, but a
/// change's deletions carry none. A run-length encoded column can claim billions of operations
/// in a few bytes, and automerge reserves memory for each when it loads a document (a
/// 210-byte message took 1.2 GiB and 6 s, 2^30 operations aborted the process:
/// docs/benchmarks.md, "An engine under a decompression bomb").
pub(super) const OPS_SLACK: u64 = 1 << 16;

/// The operations one item may ask automerge to build: what a text file of
/// `max_file_size` characters rewritten whole once takes (its deletions and its new
/// characters, one operation each), and never less than at the default 16 MiB (a smaller
/// `max_file_size` keeps big files out, not the history of small ones), with
/// [`OPS_SLACK`] for its frontmatter's. 32 Mi operations: about 2.4 GiB and 8 s of
/// automerge's work on this machine kind, what an honest file at the default limit costs
/// every peer anyway (docs/security.md, "Decompression bomb"). An honest document whose
/// history asks for more cannot travel whole (nor could it before: it inflates past
/// [`MAX_INFLATED_ITEM`]); docs/ARCHITECTURE.md, "Known gaps".
pub(super) fn max_item_ops(max_file_size: u64) -> u64 {
    max_file_size
        .max(DEFAULT_MAX_FILE_SIZE)
        .saturating_mul(2)
        .saturating_add(OPS_SLACK)
}

/// What an operation that carries no bytes (a deletion) costs automerge to apply, in
/// bytes of the pacing budget (`pace.rs`): about 2 µs of work and up to 500 bytes of
/// memory each (docs/benchmarks.md), as 64 inflated bytes cost.
pub(super) const OP_COST: u64 = 64;

/// What checking one seal's signature costs, in bytes of the pacing budget: about
/// 50 µs, as 4 KiB of automerge's work cost (an item may carry 256 seals).
pub(super) const SEAL_COST: u64 = 4 << 10;

/// The operations and changes a document may claim beyond two a byte it inflates to. A
/// 111-byte document whose change columns claimed 65,536 empty changes took automerge
/// 100 ms and 85 MiB to refuse; the slack of changes (65,536) was that much for free
/// (docs/benchmarks.md, "An engine under a decompression bomb").
pub(super) const DOCUMENT_SLACK: u64 = 1 << 10;

/// The index changes of one message as one item, in the place of the first: a burst of
/// new files on a peer sends one index change per file (64 to a message), and each
/// application of index changes reads the whole index again (`live_view`, the deletion
/// guard), which made a burst quadratic on the receiving side (72 % of its time at 3,000
/// files). Applied together they are checked change by change as before (the sender's
/// own, one refused never blocking the others). An item merges only while the group's
/// inflated size stays within one item's bound, and one that fails its own check stays
/// as it is, so the bound and its counters see what they saw before.
pub(super) fn coalesce_index_changes(items: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    // Where the current group is in `out`, and its inflated size.
    let mut group: Option<(usize, u64)> = None;
    for item in items {
        let Some((seals, changes)) = index_changes(item, &mut out) else {
            continue;
        };
        let mut budget = Budget::new(MAX_INFLATED_ITEM);
        if changes.iter().any(|c| budget.measure(c).is_err()) {
            out.push(sealed(seals, changes));
            continue;
        }
        let size = budget.used();
        match group {
            Some((at, used)) if used.saturating_add(size) <= MAX_INFLATED_ITEM => {
                let merged = match out.get_mut(at) {
                    Some(item) => merge_into(item, seals, changes),
                    None => Err((seals, changes)),
                };
                match merged {
                    Ok(()) => group = Some((at, used + size)),
                    Err((seals, changes)) => {
                        group = Some((out.len(), size));
                        out.push(sealed(seals, changes));
                    }
                }
            }
            _ => {
                group = Some((out.len(), size));
                out.push(sealed(seals, changes));
            }
        }
    }
    out
}

/// Adds index changes and their seals to `item`, a group of them; gives them back if it
/// is not one.
#[allow(clippy::type_complexity)]
fn merge_into(
    item: &mut Item,
    seals: Vec<Seal>,
    changes: Vec<Vec<u8>>,
) -> Result<(), (Vec<Seal>, Vec<Vec<u8>>)> {
    match item {
        Item::Sealed {
            seals: all,
            item: wire::Sealable::Changes { changes: c, .. },
        } => {
            c.extend(changes);
            let new: Vec<Seal> = seals.into_iter().filter(|s| !all.contains(s)).collect();
            all.extend(new);
            Ok(())
        }
        Item::Changes { changes: c, .. } => {
            let mut c = std::mem::take(c);
            c.extend(changes);
            *item = sealed(seals, c);
            Ok(())
        }
        _ => Err((seals, changes)),
    }
}

/// The seals and changes of an item of index changes; any other item goes to `out`.
fn index_changes(item: Item, out: &mut Vec<Item>) -> Option<(Vec<Seal>, Vec<Vec<u8>>)> {
    match item {
        Item::Changes {
            doc: DocId::Index,
            changes,
        } => Some((Vec::new(), changes)),
        Item::Sealed {
            seals,
            item:
                wire::Sealable::Changes {
                    doc: DocId::Index,
                    changes,
                },
        } => Some((seals, changes)),
        other => {
            out.push(other);
            None
        }
    }
}

/// Index changes with their seals, if any.
fn sealed(seals: Vec<Seal>, changes: Vec<Vec<u8>>) -> Item {
    if seals.is_empty() {
        Item::Changes {
            doc: DocId::Index,
            changes,
        }
    } else {
        Item::Sealed {
            seals,
            item: wire::Sealable::Changes {
                doc: DocId::Index,
                changes,
            },
        }
    }
}

impl Engine {
    pub(super) fn broadcast(&mut self, item: Item) {
        self.out_items.entry(None).or_default().push(item);
    }

    pub(super) fn send(&mut self, to: DeviceId, item: Item) {
        self.out_items.entry(Some(to)).or_default().push(item);
    }

    pub(super) fn digest(&mut self) -> [u8; 32] {
        if let Some(d) = self.digest {
            return d;
        }
        let mut h = blake3::Hasher::new_derive_key("cue workspace digest");
        for head in to_heads(&self.index.heads()) {
            h.update(&head);
        }
        for (f, m) in self.files.iter() {
            if !self.index.knows(f) {
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

    pub(super) fn hello(&mut self, to: Option<DeviceId>, reply: bool) {
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

    pub(super) fn peer_offline(&mut self, device: DeviceId) {
        let peer = self.peers.entry(device).or_default();
        let was = peer.online;
        peer.online = false;
        peer.chunks.clear();
        self.deferred_pulls.remove(&device);
        self.answering.remove(&device);
        if self.pull.as_ref().is_some_and(|p| p.peer == device) {
            self.pull = None;
        }
        if was {
            let name = self.members_view.get(&device).cloned().unwrap_or_default();
            self.activity(ActivityKind::PeerLeft, None, &name, None);
        }
    }

    pub(super) fn message(&mut self, from: DeviceId, bytes: &[u8], store: &mut dyn DocStore) {
        let msg = match wire::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.state.counters.bad_messages += 1;
                self.state_dirty = true;
                return;
            }
        };
        // The documents the message changes, loaded ahead on the engine's threads;
        // not while the sender's items wait (`pace.rs`): those are handled later.
        if self.threads > 1 && !self.pacer.has_waiting(&from) {
            let changed = msg.items.iter().filter_map(|item| match item {
                Item::Changes {
                    doc: DocId::File(f),
                    ..
                }
                | Item::Whole {
                    doc: DocId::File(f),
                    ..
                }
                | Item::Sealed {
                    item:
                        wire::Sealable::Changes {
                            doc: DocId::File(f),
                            ..
                        }
                        | wire::Sealable::Whole {
                            doc: DocId::File(f),
                            ..
                        },
                    ..
                } => Some(*f),
                _ => None,
            });
            let changed: Vec<FileId> = changed.collect();
            self.preload_docs(changed, store);
        }
        let mut acks: Vec<(DocId, Heads)> = Vec::new();
        for item in coalesce_index_changes(msg.items) {
            self.item(from, item, store, &mut acks);
        }
        if !acks.is_empty() {
            self.send(from, Item::Ack { entries: acks });
        }
    }

    pub(super) fn item(
        &mut self,
        from: DeviceId,
        item: Item,
        store: &mut dyn DocStore,
        acks: &mut Vec<(DocId, Heads)>,
    ) {
        // Pieces of a chunked item are handled at once: they are bounded on their own,
        // and the item they make comes back here whole.
        if matches!(item, Item::Chunk { .. }) {
            return self.item_now(from, item, store, acks);
        }
        // Behind items of its sender that wait, an item waits too, as it came: it is
        // measured when its turn comes (`pace.rs`). Walking every item of a message on
        // arrival cost up to 100 ms an item of 63 MiB before any pacing.
        if self.pacer.has_waiting(&from) {
            return self.wait_unmeasured(from, item);
        }
        if let Some((item, cost)) = self.checked(item) {
            self.paced_item(from, item, cost, store, acks);
        }
    }

    /// `item` measured (`automerge_bytes_bounded`) and held to what its bytes allow,
    /// with what it will cost to handle (the pacing budget's units, `pace.rs`); `None`
    /// when it is refused (counted).
    pub(super) fn checked(&mut self, item: Item) -> Option<(Item, u64)> {
        let mut item = item;
        let measured = match automerge_bytes_bounded(&mut item) {
            Ok(m) => m,
            Err(e) => {
                // automerge would inflate these without a bound, or could not read them:
                // never handed to it.
                match e {
                    InflateError::TooLarge { .. } => self.state.counters.oversized_items += 1,
                    InflateError::BadDeflate | InflateError::Malformed(_) => {
                        self.state.counters.bad_documents += 1
                    }
                }
                self.state_dirty = true;
                return None;
            }
        };
        if measured.bad > 0 {
            self.state.counters.bad_changes += measured.bad;
            self.state_dirty = true;
        }
        // A change may delete up to what its document holds, deleted elements included,
        // which the receiver may not have yet (a concurrent deletion of the same text):
        // allowed as many as the largest file's characters, four times over. A document
        // holds a byte of value for each of its operations, deleted ones included, and
        // needs no more than a little slack for the objects it makes.
        let allowed = match item {
            Item::Changes { .. }
            | Item::Sealed {
                item: wire::Sealable::Changes { .. },
                ..
            } => measured
                .inflated
                .saturating_mul(2)
                .saturating_add(self.config.max_file_size.saturating_mul(4))
                .saturating_add(OPS_SLACK),
            _ => measured
                .inflated
                .saturating_mul(2)
                .saturating_add(DOCUMENT_SLACK),
        };
        // Whatever its bytes: automerge spends about 76 bytes of memory and 0.25 µs an
        // operation it is asked to build, and a run of zeros deflates a thousandfold, so
        // two a byte of 64 MiB inflated would still be 128 Mi operations, about 10 GB
        // (`bomb padded`). An item asks for at most what the largest file rewritten once
        // asks (`max_item_ops`).
        let allowed = allowed.min(max_item_ops(self.config.max_file_size));
        if measured.ops.max(measured.changes) > allowed {
            self.state.counters.oversized_items += 1;
            self.state_dirty = true;
            return None;
        }
        // What automerge will spend: the inflated bytes, and operations that carry no
        // bytes (deletions) at what each costs it (see `OP_COST`).
        let unbacked = measured
            .ops
            .max(measured.changes)
            .saturating_sub(measured.inflated.saturating_mul(2));
        // Each seal is an ed25519 signature to check (about 50 µs, as 4 KiB cost).
        let seals = match &item {
            Item::Sealed { seals, .. } => seals.len() as u64,
            _ => 0,
        };
        // A byte at least for every operation too: a document's operations may be
        // valueless (`true`), two a byte it inflates to, and each costs automerge more
        // than a byte of value does.
        let cost = measured
            .inflated
            .max(measured.ops)
            .saturating_add(unbacked.saturating_mul(OP_COST))
            .saturating_add(seals.saturating_mul(SEAL_COST));
        Some((item, cost))
    }

    /// Handles an item that was checked (`item`) and whose time has come (`pace.rs`).
    pub(super) fn item_now(
        &mut self,
        from: DeviceId,
        item: Item,
        store: &mut dyn DocStore,
        acks: &mut Vec<(DocId, Heads)>,
    ) {
        let (seals, item) = match item {
            Item::Sealed { seals, item } => self.open_seals(from, seals, item),
            other => (Vec::new(), other),
        };
        // What a file's document came with, in case the index names it nowhere.
        let file_bytes = match &item {
            Item::Changes {
                doc: DocId::File(f),
                changes,
            } => Some((*f, changes.iter().map(|c| c.len() as u64).sum(), false)),
            Item::Whole {
                doc: DocId::File(f),
                bytes,
            }
            | Item::Adopt {
                doc: DocId::File(f),
                bytes,
                ..
            } => Some((*f, bytes.len() as u64, true)),
            _ => None,
        };
        match item {
            // Opened above: what is left is never sealed again (`open_seals`).
            Item::Sealed { .. } => {}
            Item::Hello { digest, reply } => self.on_hello(from, digest, reply, store),
            Item::Pull {
                id,
                full,
                complete,
                entries,
            } => self.pull_asked(
                from,
                DeferredPull {
                    id,
                    full,
                    complete,
                    entries,
                    queued: 0,
                },
                store,
            ),
            Item::Changes { doc, changes } => {
                if !self.claims_fit(doc, &changes, store) {
                    self.state.counters.bad_changes += changes.len() as u64;
                    self.state_dirty = true;
                    return;
                }
                let mut decoded = Vec::with_capacity(changes.len());
                for c in changes {
                    match crate::doc::change_from_bytes(c) {
                        Ok(c) => decoded.push(c),
                        Err(_) => {
                            self.state.counters.bad_changes += 1;
                            self.state_dirty = true;
                        }
                    }
                }
                let remote = Remote::Changes(decoded);
                if let Some(heads) = self.apply_remote(from, doc, remote, seals, store) {
                    acks.retain(|(d, _)| *d != doc);
                    acks.push((doc, heads));
                }
            }
            Item::Whole { doc, bytes } => {
                if let Some(heads) =
                    self.apply_remote(from, doc, Remote::Whole(bytes), seals, store)
                {
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
                    DocId::File(f) => self.adopt(from, f, (bytes, heads, content), seals, store),
                    // The index is never adopted: every peer has one from the start.
                    DocId::Index => {
                        self.apply_remote(from, doc, Remote::Whole(bytes), seals, store)
                    }
                };
                if let Some(heads) = adopted {
                    acks.retain(|(d, _)| *d != doc);
                    acks.push((doc, heads));
                }
            }
            Item::Ack { entries } => {
                for (doc, heads) in self.held_once(entries) {
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
        // Not acknowledged while the index names it nowhere: it may be dropped (see
        // `drop_unnamed`), and an acknowledgement tells its author that its changes are
        // held here. Named and held, the digests agree, which confirms them.
        if let Some((f, bytes, whole)) = file_bytes
            && self.note_unnamed(f, bytes, whole)
        {
            acks.retain(|(d, _)| *d != DocId::File(f));
        }
    }

    /// A pull's or an acknowledgement's entries, each document once (the first entry)
    /// and only documents this device holds: a member repeating one entry half a million
    /// times in a message had it answered (the whole index saved each time) or looked up
    /// as often.
    pub(super) fn held_once(&self, entries: Vec<(DocId, Heads)>) -> Vec<(DocId, Heads)> {
        let mut seen = BTreeSet::new();
        entries
            .into_iter()
            .filter(|(doc, _)| {
                let held = match doc {
                    DocId::Index => true,
                    DocId::File(f) => self.files.contains(f),
                };
                held && seen.insert(*doc)
            })
            .collect()
    }

    /// Whether what `changes` claim fits `doc` as this device holds it
    /// (`apply::claims_fit`).
    fn claims_fit(&mut self, doc: DocId, changes: &[Vec<u8>], store: &mut dyn DocStore) -> bool {
        let held = match doc {
            DocId::Index => automerge::ReadDoc::stats(self.index.automerge_unchanged()).num_ops,
            DocId::File(f) => self
                .with_doc(f, store, |d| {
                    Ok(automerge::ReadDoc::stats(d.automerge()).num_ops)
                })
                .unwrap_or(0),
        };
        apply::claims_fit(held, changes)
    }

    /// The seals that came with `item` (`Item::Sealed`) whose signature holds, and the
    /// item. A seal with a bad signature is dropped and counted; the changes only it
    /// would have reached are refused when applied.
    fn open_seals(
        &mut self,
        from: DeviceId,
        seals: Vec<Seal>,
        item: wire::Sealable,
    ) -> (Vec<Seal>, Item) {
        let held = self.seals_of(item.doc());
        // A file's seals count only for the sender itself (it got past the daemon's
        // membership check to reach us) and devices known to be members (or to have
        // been, or about to be): a member can make keys at will, and changes under made-up
        // devices sealed by their made-up keys would slip into a pull answer, where
        // others' changes legitimately travel, and crowd the document's seals. The
        // index's are all taken: it is where a newcomer learns who the members are, so
        // its changes cannot wait for that (they are bounded like any, `bounded`).
        let index = item.doc() == DocId::Index;
        let seals: Vec<Seal> = seals
            .into_iter()
            .filter(|s| index || s.device == from || self.may_seal(&s.device))
            .collect();
        // A seal we hold was checked when it came.
        let (good, bad): (Vec<Seal>, Vec<Seal>) = seals
            .into_iter()
            .partition(|s| held.contains(s) || s.verify());
        if !bad.is_empty() {
            self.state.counters.forged_changes += bad.len() as u64;
            self.state_dirty = true;
        }
        (good, item.into_item())
    }

    pub(super) fn on_chunk(
        &mut self,
        from: DeviceId,
        id: u64,
        index: u32,
        total: u32,
        bytes: Vec<u8>,
    ) -> Option<Item> {
        // Each piece costs its bytes and its place in the map: counted together, so that
        // empty pieces of a huge `total` cannot grow memory outside the bound.
        let cost = bytes.len() + PIECE_OVERHEAD;
        let held_elsewhere = self.partial_bytes() - self.partial_bytes_of(&from, id);
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
        let buf = peer.chunks.entry(id).or_insert_with(|| ChunkBuf {
            total,
            parts: BTreeMap::new(),
            bytes: 0,
        });
        let too_big = buf.bytes + cost > MAX_CHUNKED_ITEM;
        let too_much = held_elsewhere + buf.bytes + cost > MAX_PARTIAL_BYTES;
        if buf.total != total || too_big || too_much {
            peer.chunks.remove(&id);
            self.state.counters.dropped_chunks += 1;
            return None;
        }
        if buf.parts.insert(index, bytes).is_none() {
            buf.bytes += cost;
        }
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

    /// Bytes held in partly received items, from every peer.
    fn partial_bytes(&self) -> usize {
        self.peers
            .values()
            .flat_map(|p| p.chunks.values())
            .map(|b| b.bytes)
            .sum()
    }

    fn partial_bytes_of(&self, from: &DeviceId, id: u64) -> usize {
        self.peers
            .get(from)
            .and_then(|p| p.chunks.get(&id))
            .map_or(0, |b| b.bytes)
    }

    pub(super) fn on_hello(
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
            let name = self.members_view.get(&from).cloned().unwrap_or_default();
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
            self.dirty.extend(self.files.clear_pending());
        } else {
            self.maybe_pull(store);
        }
    }

    pub(super) fn synced_with(&mut self, peer: DeviceId) {
        self.state.peers.entry(peer).or_default().last_sync_ms = Some(self.now_ms);
        self.state.last_workspace_sync_ms = Some(self.now_ms);
        self.state_dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    /// Two index changes made one after the other (the second depends on the first).
    fn index_changes() -> Vec<Vec<u8>> {
        let mut doc = automerge::AutoCommit::new();
        doc.put(automerge::ROOT, "a", 1).unwrap();
        doc.commit();
        doc.put(automerge::ROOT, "b", 2).unwrap();
        doc.commit();
        doc.get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    fn index_item(changes: Vec<Vec<u8>>) -> Item {
        Item::Changes {
            doc: DocId::Index,
            changes,
        }
    }

    #[test]
    fn a_messages_index_changes_are_applied_as_one_item_in_the_place_of_the_first() {
        let c = index_changes();
        let file = DocId::File(FileId([7; 16]));
        let items = vec![
            Item::Hello {
                digest: [1; 32],
                reply: false,
            },
            index_item(vec![c[0].clone()]),
            Item::Changes {
                doc: file,
                changes: vec![c[0].clone()],
            },
            index_item(vec![c[1].clone()]),
            // Not automerge bytes: left alone, for `item` to count as before.
            index_item(vec![b"garbage".to_vec()]),
        ];
        let out = coalesce_index_changes(items);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(matches!(out[0], Item::Hello { .. }));
        match &out[1] {
            Item::Changes {
                doc: DocId::Index,
                changes,
            } => assert_eq!(changes, &c),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&out[2], Item::Changes { doc, .. } if *doc == file));
        match &out[3] {
            Item::Changes {
                doc: DocId::Index,
                changes,
            } => assert_eq!(changes, &vec![b"garbage".to_vec()]),
            other => panic!("{other:?}"),
        }
    }
}
