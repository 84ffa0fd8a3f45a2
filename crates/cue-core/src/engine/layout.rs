//! What the engine persists and how: the per-file record ([`FileMeta`]) and the engine's
//! own state, with every older layout they are still read from.

use super::*;

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
    /// The latest seal of each device that changed this document (`crate::seal`): sent
    /// with its changes, so that a peer they reach through another member can tell they
    /// are their author's. Stored after the compact record (older records have none).
    pub seals: Vec<Seal>,
    /// Seals that came for changes not yet applied here (automerge sets a change aside
    /// until its dependencies come): kept until their changes are, then they replace
    /// their devices' in `seals`. Stored after `seals` (older records have none): lost,
    /// the changes they vouch for would be held here with no seal that reaches them, and
    /// every peer would refuse them from us as forged.
    pub waiting: Vec<Seal>,
}

/// The first layout of [`FileMeta`] records (before `pending`), still read.
#[derive(Serialize, Deserialize)]
pub(super) struct FileMetaV1 {
    pub(super) heads: Heads,
    pub(super) doc_hash: Option<ContentHash>,
    pub(super) size: u64,
    pub(super) disk: Option<(String, ContentHash)>,
    pub(super) disk_heads: Heads,
    pub(super) prev_disk_heads: Heads,
    pub(super) increments: u32,
}

/// The first byte of a [`FileMeta`] stored in its compact form. A record of the first
/// layout starts with the varint count of its heads, and would start with this byte only
/// with at least 127 heads; if one ever did, it fails to decode as the compact form and
/// is read the old way.
pub(super) const META_COMPACT: u8 = 0xFF;

/// A [`FileMeta`] as stored: without the two copies it almost always holds (`disk_heads`
/// equal to `heads`, `doc_hash` equal to the hash on disk), which took 64 of its 160
/// bytes a file.
#[derive(Serialize, Deserialize)]
pub(super) struct CompactMeta {
    pub(super) heads: Heads,
    pub(super) doc_hash: StoredHash,
    pub(super) size: u64,
    pub(super) disk: Option<(String, ContentHash)>,
    /// `None`: the same as `heads`.
    pub(super) disk_heads: Option<Heads>,
    pub(super) prev_disk_heads: Heads,
    pub(super) increments: u32,
    /// `None`: the same as `heads` (the usual case after a local edit).
    pub(super) pending: Option<Heads>,
}

#[derive(Serialize, Deserialize)]
pub(super) enum StoredHash {
    Unknown,
    AsOnDisk,
    Own(ContentHash),
}

pub(super) fn encode_meta(m: &FileMeta) -> Vec<u8> {
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
    if !m.seals.is_empty() || !m.waiting.is_empty() {
        bytes.extend(postcard::to_allocvec(&m.seals).unwrap_or_default());
    }
    if !m.waiting.is_empty() {
        bytes.extend(postcard::to_allocvec(&m.waiting).unwrap_or_default());
    }
    bytes
}

pub(super) fn decode_meta(bytes: &[u8]) -> Option<FileMeta> {
    if let Some((&META_COMPACT, rest)) = bytes.split_first()
        && let Ok((c, rest)) = postcard::take_from_bytes::<CompactMeta>(rest)
    {
        // Seals that do not decode are lost alone: the next seal of each device brings
        // them back, and until then only changes that reach us through others wait.
        let (seals, waiting) = match postcard::take_from_bytes::<Vec<Seal>>(rest) {
            _ if rest.is_empty() => (Vec::new(), Vec::new()),
            Ok((seals, [])) => (seals, Vec::new()),
            Ok((seals, rest)) => (
                seals,
                postcard::from_bytes::<Vec<Seal>>(rest).unwrap_or_default(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
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
            seals,
            waiting,
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
        seals: Vec::new(),
        waiting: Vec::new(),
    })
}

pub(super) fn same_set(a: &Heads, b: &Heads) -> bool {
    a.len() == b.len() && a.iter().all(|h| b.contains(h))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct PeerRecord {
    pub(super) last_sync_ms: Option<i64>,
}

/// What was added to the persisted state after its first layout: stored after it, so
/// that a state written before it still decodes (postcard is not self-describing).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail {
    /// Documents adopted with the content their sender said they render to, not yet
    /// checked against that content (see [`Item::Adopt`]).
    pub(super) unverified: BTreeSet<FileId>,
}

/// Added after [`StateTail`], after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail2 {
    pub(super) index_pending: IndexPending,
}

/// Our changes to the index that no peer has confirmed. They form a chain (each of our
/// changes depends on our previous one), so a peer that has one has every earlier one:
/// what is pending is always the last `count` of them, and the latest names them all.
/// Kept as a count rather than the hashes, which grew the state by 32 bytes for every
/// file created until a peer answered (0.3 MB after importing 10,000 files, rewritten on
/// each later creation, rename or deletion).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IndexPending {
    pub(super) count: u64,
    pub(super) latest: Option<[u8; 32]>,
}

/// Added after [`StateTail2`], after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail3 {
    /// When this peer first saw each tombstone, by its own clock. A tombstone expires
    /// `tombstone_ms` after that, never after a time another peer wrote: a peer's clock
    /// can be wrong by any amount, and a hostile member can write any time it likes.
    pub(super) tombs_seen: BTreeMap<FileId, i64>,
    /// Deletions that arrived from peers and are held (the mass-deletion guard): the
    /// files stay on disk here until the user applies or undoes them.
    pub(super) held: BTreeSet<FileId>,
    /// Why they are held, and since when (this peer's clock).
    pub(super) held_reason: Option<(String, i64)>,
}

/// Added after [`StateTail3`], stored after it in the same way: counters of bad input
/// added since, and the members taken so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LaterCounters {
    oversized_items: u64,
    forged_changes: u64,
    excess_pulls: u64,
    bad_members: u64,
    members: BTreeMap<DeviceId, String>,
}

/// Added after [`StateTail4`], stored after it in the same way: the latest seal of each
/// device that changed the index (a file's are in its [`FileMeta`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail5 {
    pub(super) index_seals: Vec<Seal>,
}

/// Added after [`StateTail5`], stored after it in the same way: the seals that came for
/// index changes not yet applied here (see [`FileMeta::waiting`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail6 {
    pub(super) index_waiting: Vec<Seal>,
}

/// Added after [`StateTail6`], stored after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StateTail7 {
    /// Deletions this peer purged (their `tombstone_ms` up here): when it first held
    /// their tombstone, and when it purged it. A tombstone another peer puts back (it
    /// held it for less) is not purged here again for [`PURGED_KEPT_TOMBSTONE_TIMES`]
    /// times `tombstone_ms` after the purge: its purge is that peer's, and taken here; so
    /// a peer purges a deletion once in that time and the puts-back end (see
    /// `purges_before_their_time`). Past it, with the tombstone still there (the peer
    /// that put it back gone, or its guard holding it), it is purged here again. Kept
    /// while the tombstone stands, and that long after the purge.
    pub(super) purged: BTreeMap<FileId, (i64, i64)>,
}

/// How many times `tombstone_ms` a purge is remembered ([`StateTail7::purged`]).
pub(super) const PURGED_KEPT_TOMBSTONE_TIMES: i64 = 4;

/// Added after [`LaterCounters`], stored after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LaterCounters2 {
    bad_rotations: u64,
}

/// Added after [`StateTail7`], stored after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LaterCounters3 {
    unnamed_documents: u64,
}

/// Added after [`LaterCounters3`], stored after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LaterIgnored {
    ignored: BTreeSet<String>,
}

/// Added after [`LaterIgnored`], stored after it in the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LaterDeletedHere {
    deleted_here: BTreeMap<FileId, Heads>,
}

/// The engine's persisted state, its parts in the order they are stored.
pub(super) struct StateParts<'a> {
    pub(super) state: &'a State,
    pub(super) tail: &'a StateTail,
    pub(super) tail2: &'a StateTail2,
    pub(super) tail3: &'a StateTail3,
    pub(super) tail4: &'a StateTail4,
    pub(super) tail5: &'a StateTail5,
    pub(super) tail6: &'a StateTail6,
    pub(super) tail7: &'a StateTail7,
}

pub(super) fn encode_state(parts: &StateParts<'_>) -> Vec<u8> {
    let StateParts {
        state,
        tail,
        tail2,
        tail3,
        tail4,
        tail5,
        tail6,
        tail7,
    } = *parts;
    let mut bytes = postcard::to_allocvec(state).unwrap_or_default();
    bytes.extend(postcard::to_allocvec(tail).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail2).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail3).unwrap_or_default());
    let c = &state.counters;
    let later = LaterCounters {
        oversized_items: c.oversized_items,
        forged_changes: c.forged_changes,
        excess_pulls: c.excess_pulls,
        bad_members: c.bad_members,
        members: state.members.clone(),
    };
    bytes.extend(postcard::to_allocvec(&later).unwrap_or_default());
    let later2 = LaterCounters2 {
        bad_rotations: c.bad_rotations,
    };
    bytes.extend(postcard::to_allocvec(&later2).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail4).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail5).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail6).unwrap_or_default());
    bytes.extend(postcard::to_allocvec(tail7).unwrap_or_default());
    let later3 = LaterCounters3 {
        unnamed_documents: c.unnamed_documents,
    };
    bytes.extend(postcard::to_allocvec(&later3).unwrap_or_default());
    let ignored = LaterIgnored {
        ignored: state.ignored.clone(),
    };
    bytes.extend(postcard::to_allocvec(&ignored).unwrap_or_default());
    let deleted = LaterDeletedHere {
        deleted_here: state.deleted_here.clone(),
    };
    bytes.extend(postcard::to_allocvec(&deleted).unwrap_or_default());
    bytes
}

/// The state and whichever of its tails were written (older layouts end earlier).
pub(super) type Stored = (
    State,
    StateTail,
    StateTail2,
    StateTail3,
    StateTail4,
    StateTail5,
    StateTail6,
    StateTail7,
);

pub(super) fn decode_state(bytes: &[u8]) -> Option<Stored> {
    let (state, rest) = postcard::take_from_bytes::<State>(bytes).ok()?;
    let mut stored = (
        state,
        StateTail::default(),
        StateTail2::default(),
        StateTail3::default(),
        StateTail4::default(),
        StateTail5::default(),
        StateTail6::default(),
        StateTail7::default(),
    );
    if rest.is_empty() {
        return Some(stored);
    }
    let (tail, rest) = postcard::take_from_bytes::<StateTail>(rest).ok()?;
    stored.1 = tail;
    if rest.is_empty() {
        return Some(stored);
    }
    let (tail2, rest) = postcard::take_from_bytes::<StateTail2>(rest).ok()?;
    stored.2 = tail2;
    if rest.is_empty() {
        return Some(stored);
    }
    let (tail3, rest) = postcard::take_from_bytes::<StateTail3>(rest).ok()?;
    stored.3 = tail3;
    if !rest.is_empty() {
        let (later, rest) = postcard::take_from_bytes::<LaterCounters>(rest).ok()?;
        let c = &mut stored.0.counters;
        c.oversized_items = later.oversized_items;
        c.forged_changes = later.forged_changes;
        c.excess_pulls = later.excess_pulls;
        c.bad_members = later.bad_members;
        stored.0.members = later.members;
        if !rest.is_empty() {
            let (later2, rest) = postcard::take_from_bytes::<LaterCounters2>(rest).ok()?;
            stored.0.counters.bad_rotations = later2.bad_rotations;
            if !rest.is_empty() {
                // Notices that do not decode are lost alone, not the whole state with
                // them: they only tell the user where to look.
                if let Ok((tail4, rest)) = postcard::take_from_bytes::<StateTail4>(rest) {
                    stored.4 = tail4;
                    // Seals that do not decode are lost alone too (see `decode_meta`).
                    if let Ok((tail5, rest)) = postcard::take_from_bytes::<StateTail5>(rest) {
                        stored.5 = tail5;
                        if let Ok((tail6, rest)) = postcard::take_from_bytes::<StateTail6>(rest) {
                            stored.6 = tail6;
                            if let Ok((tail7, rest)) = postcard::take_from_bytes::<StateTail7>(rest)
                            {
                                stored.7 = tail7;
                                if let Ok((later3, rest)) =
                                    postcard::take_from_bytes::<LaterCounters3>(rest)
                                {
                                    stored.0.counters.unnamed_documents = later3.unnamed_documents;
                                    if let Ok((later, rest)) =
                                        postcard::take_from_bytes::<LaterIgnored>(rest)
                                    {
                                        stored.0.ignored = later.ignored;
                                        if let Ok(later) =
                                            postcard::from_bytes::<LaterDeletedHere>(rest)
                                        {
                                            stored.0.deleted_here = later.deleted_here;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Some(stored)
}

/// The engine's own persisted state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) last_workspace_sync_ms: Option<i64>,
    pub(super) last_full_resync_ms: Option<i64>,
    pub(super) peers: BTreeMap<DeviceId, PeerRecord>,
    /// Unconfirmed changes by document, as states of an earlier layout kept them: `new`
    /// moves them to the files' records and [`IndexPending`], and it stays empty.
    pub(super) unconfirmed: BTreeMap<DocId, BTreeSet<[u8; 32]>>,
    pub(super) skipped: BTreeMap<String, u64>,
    pub(super) counters: Counters,
    /// Every device taken for a member (see `members.rs`), stored in [`LaterCounters`].
    #[serde(skip)]
    pub(super) members: BTreeMap<DeviceId, String>,
    /// Synced files this device's ignore rules excluded at its last scan (see
    /// [`crate::Input::Ignored`]), stored in [`LaterIgnored`]: a start knows which files
    /// were removed while ignored (no deletion) when the rules let them through again.
    #[serde(skip)]
    pub(super) ignored: BTreeSet<String>,
    /// Files deleted here, with the version deleted, until their next save here (at
    /// most `MOVED_FROM_KEPT`), stored in [`LaterDeletedHere`]: a copy put back after a
    /// peer's edit made the file live again derives from that version
    /// (`Engine::nearer_base`), also after a restart between the two.
    #[serde(skip)]
    pub(super) deleted_here: BTreeMap<FileId, Heads>,
}

/// What a previous run persisted, decoded and brought to the current layout.
pub(super) struct Decoded {
    pub(super) index: IndexDoc,
    pub(super) state: State,
    pub(super) tail: StateTail,
    pub(super) tail2: StateTail2,
    pub(super) tail3: StateTail3,
    pub(super) tail4: StateTail4,
    pub(super) tail5: StateTail5,
    pub(super) tail6: StateTail6,
    pub(super) tail7: StateTail7,
    pub(super) metas: BTreeMap<FileId, FileMeta>,
    /// Files whose pending changes came out of an older state: stored with them, in the
    /// same transaction as the state without them.
    pub(super) moved: BTreeSet<FileId>,
    /// The state was of an earlier layout: it is stored again in the current one.
    pub(super) older_layout: bool,
    /// The stored index did not decode (a damaged store): `index` is a new one, which
    /// the engine fills again from the files' records (`Engine::rebuild_index`).
    pub(super) index_lost: bool,
    /// Files whose records did not decode: made again from their documents on the first
    /// input (`Engine::rebuild_records`).
    pub(super) damaged_records: BTreeSet<FileId>,
}

/// Decodes what a previous run persisted. What cannot be decoded is counted in
/// `bad_documents` and left out (a new index, no record), never a panic; the engine
/// makes it again from what did decode (`Engine::rebuild_index`, `rebuild_records`).
pub(super) fn decode_restored(restored: Restored, actor: &ActorId) -> Decoded {
    let mut bad = 0u64;
    let mut index_lost = false;
    let mut index = match restored
        .index
        .as_deref()
        .map(|b| IndexDoc::load(b, actor.clone()))
    {
        Some(Ok(idx)) => idx,
        Some(Err(_)) => {
            bad += 1;
            index_lost = true;
            IndexDoc::new(actor.clone())
        }
        None => IndexDoc::new(actor.clone()),
    };
    let (mut state, tail, mut tail2, tail3, tail4, tail5, tail6, tail7) = restored
        .state
        .as_deref()
        .and_then(decode_state)
        .unwrap_or_default();
    let mut metas = BTreeMap::new();
    let mut damaged_records = BTreeSet::new();
    for (id, bytes) in restored.metas {
        match decode_meta(&bytes) {
            Some(m) => {
                metas.insert(id, m);
            }
            None => {
                bad += 1;
                damaged_records.insert(id);
            }
        }
    }
    state.counters.bad_documents += bad;
    let older_layout = !state.unconfirmed.is_empty();
    let moved = move_unconfirmed(&mut state, &mut tail2, &mut metas, &mut index);
    Decoded {
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
    }
}

/// States of an earlier layout kept every unconfirmed change in the state: the files'
/// move to their records, the index's become a count and the latest hash. Returns the
/// files whose records changed.
fn move_unconfirmed(
    state: &mut State,
    tail2: &mut StateTail2,
    metas: &mut BTreeMap<FileId, FileMeta>,
    index: &mut IndexDoc,
) -> BTreeSet<FileId> {
    let mut moved = BTreeSet::new();
    for (doc, hashes) in std::mem::take(&mut state.unconfirmed) {
        match doc {
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
            }
            DocId::File(f) => {
                if let Some(m) = metas.get_mut(&f) {
                    m.pending.extend(hashes.iter());
                    m.pending.sort_unstable();
                    m.pending.dedup();
                    moved.insert(f);
                }
            }
        }
    }
    moved
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
            seals in prop::collection::vec((0u8..4, any::<u32>(), any::<u64>(), any::<[u8; 32]>()), 0..3),
            waiting in prop::collection::vec((0u8..4, any::<u32>(), any::<u64>(), any::<[u8; 32]>()), 0..3),
        ) -> FileMeta {
            let seal = |(k, epoch, n, hash): (u8, u32, u64, [u8; 32])| {
                SealKey::from_seed(&[k; 32]).seal(epoch, n, vec![hash])
            };
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
                seals: seals.into_iter().map(seal).collect(),
                waiting: waiting.into_iter().map(seal).collect(),
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
            prop_assert_eq!(
                decode_meta(&old),
                Some(FileMeta { pending: Vec::new(), seals: Vec::new(), waiting: Vec::new(), ..meta })
            );
        }

        #[test]
        fn a_file_meta_stored_before_waiting_seals_reads_its_seals(meta in file_meta()) {
            let meta = FileMeta { waiting: Vec::new(), ..meta };
            let mut old = vec![META_COMPACT];
            let mut stored = encode_meta(&meta);
            // Written as before: the compact record, then the seals if there are any.
            old.extend(stored.drain(1..));
            prop_assert_eq!(decode_meta(&old), Some(meta));
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
            state: Some(encode_state(&StateParts {
                state: &state,
                tail: &StateTail::default(),
                tail2: &StateTail2::default(),
                tail3: &StateTail3::default(),
                tail4: &StateTail4::default(),
                tail5: &StateTail5::default(),
                tail6: &StateTail6::default(),
                tail7: &StateTail7::default(),
            })),
            index: None,
            metas: vec![(file, encode_meta(&meta))],
        };
        let (engine, effects) = Engine::new(
            SealKey::from_seed(&[1; 32]),
            "a",
            1,
            Config::default(),
            restored,
            0,
        );
        assert_eq!(engine.files.get(&file).unwrap().pending, vec![[9; 32]]);
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
        let (stored_state, _, tail2, _, _, _, _, _) = stored_state.expect("state stored");
        assert!(stored_state.unconfirmed.is_empty());
        // The index's pending change, and the engine's own first one (it enters itself
        // in the member list of the new index).
        assert_eq!(tail2.index_pending.count, 2);
    }

    #[test]
    fn overlap_notices_are_stored_after_the_last_tail_and_older_states_still_read() {
        let notice = super::super::overlaps::OverlapNotice {
            file: FileId([4; 16]),
            line: 6,
            excerpt: "We meet on Tuesday.".into(),
            devices: vec!["desk".into(), "laptop".into()],
            time_ms: 1_700_000_000_000,
        };
        let tail4 = StateTail4 {
            overlaps: vec![notice.clone()],
        };
        let mut state = State::default();
        state.counters.unnamed_documents = 9;
        state.ignored = ["build/out.log".to_string()].into();
        state.deleted_here = [(FileId([8; 16]), vec![[9; 32]])].into();
        let parts = (
            state,
            StateTail::default(),
            StateTail2::default(),
            StateTail3::default(),
        );
        let tail5 = StateTail5 {
            index_seals: vec![SealKey::from_seed(&[2; 32]).seal(3, 4, vec![[5; 32]])],
        };
        let tail6 = StateTail6 {
            index_waiting: vec![SealKey::from_seed(&[3; 32]).seal(4, 5, vec![[6; 32]])],
        };
        let tail7 = StateTail7 {
            purged: [(FileId([7; 16]), (1_700_000_000_000, 1_700_000_100_000))].into(),
        };
        let full = encode_state(&StateParts {
            state: &parts.0,
            tail: &parts.1,
            tail2: &parts.2,
            tail3: &parts.3,
            tail4: &tail4,
            tail5: &tail5,
            tail6: &tail6,
            tail7: &tail7,
        });
        let decoded = decode_state(&full).expect("decodes");
        assert_eq!(decoded.6.index_waiting, tail6.index_waiting);
        assert_eq!(decoded.7.purged, tail7.purged);
        assert_eq!(decoded.0.counters.unnamed_documents, 9);
        assert_eq!(decoded.0.ignored, parts.0.ignored);
        assert_eq!(decoded.0.deleted_here, parts.0.deleted_here);
        // A state written before the files deleted here were kept ends before them; a
        // version before them read the ignored files whole, past them unread.
        let deleted = postcard::to_allocvec(&LaterDeletedHere {
            deleted_here: parts.0.deleted_here.clone(),
        })
        .unwrap();
        let ignored = postcard::to_allocvec(&LaterIgnored {
            ignored: parts.0.ignored.clone(),
        })
        .unwrap();
        let older_read: LaterIgnored =
            postcard::from_bytes(&full[full.len() - deleted.len() - ignored.len()..]).unwrap();
        assert_eq!(older_read.ignored, parts.0.ignored);
        let full = full[..full.len() - deleted.len()].to_vec();
        let decoded = decode_state(&full).expect("decodes");
        assert_eq!(decoded.0.ignored, parts.0.ignored);
        assert!(decoded.0.deleted_here.is_empty());
        // A state written before the ignored files were kept ends before them; a version
        // before them read the count whole, past them unread.
        let later3_len = postcard::to_allocvec(&LaterCounters3 {
            unnamed_documents: 9,
        })
        .unwrap()
        .len();
        let older_read: LaterCounters3 =
            postcard::from_bytes(&full[full.len() - ignored.len() - later3_len..]).unwrap();
        assert_eq!(older_read.unnamed_documents, 9);
        let full = full[..full.len() - ignored.len()].to_vec();
        let decoded = decode_state(&full).expect("decodes");
        assert_eq!(decoded.0.counters.unnamed_documents, 9);
        assert!(decoded.0.ignored.is_empty());
        // A state written before unnamed documents were counted ends before the count.
        let later3 = postcard::to_allocvec(&LaterCounters3 {
            unnamed_documents: 9,
        })
        .unwrap();
        let with_purged = full[..full.len() - later3.len()].to_vec();
        let decoded = decode_state(&with_purged).expect("decodes");
        assert_eq!(decoded.7.purged, tail7.purged);
        assert_eq!(decoded.0.counters.unnamed_documents, 0);
        // A version before the count read the last tail it knew whole, past it unread.
        let tail7_bytes = postcard::to_allocvec(&tail7).unwrap();
        let older_read: StateTail7 =
            postcard::from_bytes(&full[full.len() - later3.len() - tail7_bytes.len()..]).unwrap();
        assert_eq!(older_read.purged, tail7.purged);
        // A state written before purges were remembered ends before them.
        let bytes =
            &with_purged[..with_purged.len() - postcard::to_allocvec(&tail7).unwrap().len()];
        let decoded = decode_state(bytes).expect("decodes");
        assert_eq!(decoded.4.overlaps, vec![notice.clone()]);
        assert_eq!(decoded.5.index_seals, tail5.index_seals);
        assert_eq!(decoded.6.index_waiting, tail6.index_waiting);
        assert!(decoded.7.purged.is_empty());
        // A state written before waiting seals were stored ends before them, its seals
        // still read.
        let before_waiting = &bytes[..bytes.len() - postcard::to_allocvec(&tail6).unwrap().len()];
        let decoded = decode_state(before_waiting).expect("decodes");
        assert_eq!(decoded.5.index_seals, tail5.index_seals);
        assert!(decoded.6.index_waiting.is_empty());
        // A state written before the seals existed ends before them.
        let before_seals =
            &before_waiting[..before_waiting.len() - postcard::to_allocvec(&tail5).unwrap().len()];
        let decoded = decode_state(before_seals).expect("decodes");
        assert_eq!(decoded.4.overlaps, vec![notice]);
        assert!(decoded.5.index_seals.is_empty());
        // A state written before the notices existed ends before them.
        let empty = postcard::to_allocvec(&StateTail4::default()).unwrap();
        let older =
            &before_seals[..before_seals.len() - postcard::to_allocvec(&tail4).unwrap().len()];
        let mut older_with_empty = older.to_vec();
        older_with_empty.extend(empty);
        assert!(decode_state(older).expect("decodes").4.overlaps.is_empty());
        assert!(
            decode_state(&older_with_empty)
                .unwrap()
                .4
                .overlaps
                .is_empty()
        );
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
            seals: Vec::new(),
            waiting: Vec::new(),
        };
        // As a plain record would be (its one-byte counts of seals aside).
        let old = postcard::to_allocvec(&meta).unwrap().len() - 2;
        // Three copies of 33 bytes (a hash and its marker) left out, for a tag and three
        // one-byte markers: 160 bytes a file become 85.
        assert_eq!(encode_meta(&meta).len() + 95, old);
        assert_eq!(encode_meta(&meta).len(), 85);
    }
}
