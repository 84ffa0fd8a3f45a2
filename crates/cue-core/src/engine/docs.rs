//! The documents: the bounded cache, loading, metadata refresh, index commits and
//! compaction.

use super::*;

/// Documents [`Engine::preload_docs`] loads at most at once: a bound on what a batch or
/// a message loads ahead of its use (the cache is brought back to `cache_docs` at the
/// batch's end, as after loading them one by one).
const MAX_PRELOAD: usize = 1024;

impl Engine {
    pub(super) fn touch(&mut self) -> u64 {
        self.use_clock += 1;
        self.use_clock
    }

    /// Run `f` on a file's document, loading it if needed.
    pub(super) fn with_doc<T>(
        &mut self,
        file: FileId,
        store: &mut dyn DocStore,
        f: impl FnOnce(&mut FileDoc) -> Result<T, DocError>,
    ) -> Result<T, DocError> {
        let t = self.touch();
        if !self.cache.contains_key(&file) {
            // An adopted document is persisted only with this call's effects.
            let (stored, adopted) = match self.adopted.get(&file) {
                Some(bytes) => (Some(bytes.clone()), true),
                None => (store.load(&DocId::File(file)), false),
            };
            let doc = match stored.map(|bytes| FileDoc::load(&bytes, self.actor.clone())) {
                Some(Ok(doc)) => doc,
                Some(Err(e)) => {
                    // Our store's bytes, damaged. (Not a document a peer sent: one in
                    // memory, or stored and not yet checked, `verify_adopted` judges.)
                    if !adopted
                        && !self.tail.unverified.contains(&file)
                        && self.damaged_docs.insert(file)
                    {
                        self.state.counters.bad_documents += 1;
                        self.state_dirty = true;
                    }
                    return Err(e);
                }
                None => FileDoc::new(self.actor.clone()),
            };
            self.cache.insert(file, (doc, t));
        }
        let entry = self.cache.get_mut(&file).ok_or(DocError::Shape("cache"))?;
        entry.1 = t;
        f(&mut entry.0)
    }

    /// Loads, on up to `threads` threads, the stored documents of `files` that are not
    /// in the cache (at most [`MAX_PRELOAD`]): a batch's edits of files already synced,
    /// a message's changes. Loading is most of what applying a small edit costs
    /// (automerge rebuilds every change of a document it loads: 49 % of a receiver's time
    /// in a `git checkout`, docs/benchmarks.md), and a load depends on the stored bytes
    /// alone, so the outcome is the same as loading each document when it is first
    /// used. A document that does not load is left to that first use, which reports it.
    pub(super) fn preload_docs(
        &mut self,
        files: impl IntoIterator<Item = FileId>,
        store: &mut dyn DocStore,
    ) {
        if self.threads <= 1 {
            return;
        }
        let mut jobs: Vec<(FileId, Vec<u8>)> = Vec::new();
        let mut seen = BTreeSet::new();
        for f in files {
            if jobs.len() >= MAX_PRELOAD {
                break;
            }
            if self.cache.contains_key(&f) || !seen.insert(f) {
                continue;
            }
            // As `with_doc`: an adopted document is persisted only with this batch.
            let stored = match self.adopted.get(&f) {
                Some(bytes) => Some(bytes.clone()),
                None => store.load(&DocId::File(f)),
            };
            if let Some(bytes) = stored {
                jobs.push((f, bytes));
            }
        }
        if jobs.len() < 2 {
            return;
        }
        let actor = &self.actor;
        let loaded = on_threads(self.threads, &jobs, |(f, bytes)| {
            FileDoc::load(bytes, actor.clone())
                .ok()
                .map(|doc| (*f, doc))
        });
        for (f, doc) in loaded.into_iter().flatten().flatten() {
            let t = self.touch();
            self.cache.insert(f, (doc, t));
        }
    }

    pub(super) fn doc_heads(&mut self, file: FileId, store: &mut dyn DocStore) -> Vec<ChangeHash> {
        if let Some(m) = self.files.get(&file)
            && !self.cache.contains_key(&file)
        {
            return from_heads(&m.heads);
        }
        self.with_doc(file, store, |d| Ok(d.heads()))
            .unwrap_or_default()
    }

    pub(super) fn doc_error(&mut self, path: &str, e: &DocError) {
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
    pub(super) fn refresh_meta(&mut self, file: FileId, store: &mut dyn DocStore) {
        let r = self.with_doc(file, store, |d| {
            let heads = to_heads(&d.heads());
            let content = if d.is_empty() {
                None
            } else {
                d.materialize().ok()
            };
            Ok((heads, content, d.exec()))
        });
        if let Ok((heads, content, exec)) = r {
            let tombstoned = self.index.tombstone(&file).is_some();
            let mut meta = self.files.get_or_default(file);
            let first_content = meta.doc_hash.is_none();
            meta.heads = heads;
            meta.doc_hash = content.as_ref().map(|c| file_hash(c, exec));
            meta.size = content.as_ref().map_or(0, |c| c.len() as u64);
            let on_disk = meta.disk.as_ref().map(|(_, h)| *h);
            let written = meta.doc_hash.is_some() && on_disk != meta.doc_hash;
            drop(meta);
            match content {
                Some(c) if written => {
                    self.rendered.insert(file, (c, exec));
                }
                _ => {
                    self.rendered.remove(&file);
                }
            }
            // A deleted file that changed may be alive again: clashes are looked at
            // again. A file that just got its first content joins the view alone when
            // its path clashes with no live file's (`became_live`).
            if tombstoned {
                self.invalidate(Stale::View);
            } else if first_content && self.files.get(&file).is_some_and(|m| m.doc_hash.is_some()) {
                self.became_live(file);
            }
        }
        self.dirty.insert(file);
        self.invalidate(Stale::Digest);
    }

    /// The stored index no longer decoded (a damaged store) and a new one took its place:
    /// each file the records say is on this disk gets its path back, so that the first
    /// settle keeps it where it is instead of removing it as a file the workspace no
    /// longer has (a device alone would lose it for good). The rest of what the index
    /// held (tombstones, origins, members, rotation and conflict records) comes back with
    /// the peers' indexes at the next exchange, merged with these entries.
    pub(super) fn rebuild_index(&mut self) {
        let on_disk: Vec<(FileId, String)> = self
            .files
            .iter()
            .filter_map(|(id, m)| m.disk.as_ref().map(|(path, _)| (*id, path.clone())))
            .collect();
        for (id, path) in on_disk {
            let _ = self.index.set_path(&id, &path);
        }
        self.commit_index();
        let name = self.name.clone();
        self.activity(
            ActivityKind::Error,
            None,
            &name,
            Some("the stored index was damaged: made again from the files' records".into()),
        );
    }

    /// Files whose stored records no longer decoded get them again from their documents:
    /// the version held, taken for the one on disk (the start's scan then merges
    /// whatever the disk holds as an edit of it, never as a second file or an edit of
    /// nothing), and every change of it offered to the peers again (which of ours they
    /// confirmed was in the record). What the disk holds is learned from the scan.
    pub(super) fn rebuild_records(&mut self, store: &mut dyn DocStore) {
        for file in std::mem::take(&mut self.damaged_records) {
            if self.files.contains(&file) {
                continue;
            }
            self.refresh_meta(file, store);
            // The seals the record kept are gone with it, ours too: without one, the
            // changes of ours only this device holds (made while the others were away)
            // would be refused by every peer as not ours. A seal of this run on the
            // document's heads vouches for every change of ours in its history (all
            // made here: the store is ours).
            let heads = self.doc_heads(file, store);
            // (Not for a document adopted and not yet checked: it may hold changes a
            // peer made under our name, which its check takes out.)
            let unchecked = self.tail.unverified.contains(&file);
            let seal = (!heads.is_empty() && !unchecked).then(|| {
                self.seal_counter += 1;
                let named = heads.iter().take(crate::seal::MAX_SEALED_HEADS);
                self.key
                    .seal(self.epoch, self.seal_counter, named.map(|h| h.0).collect())
            });
            if let Some(mut m) = self.files.get_mut(&file) {
                m.disk_heads = m.heads.clone();
                m.prev_disk_heads = m.heads.clone();
                m.pending = m.heads.clone();
                m.seals.extend(seal);
            }
            let name = self.name.clone();
            self.activity(
                ActivityKind::Error,
                self.index.path_of(&file),
                &name,
                Some("its stored record was damaged: made again from its document".into()),
            );
        }
    }

    /// Files whose stored documents no longer load (a damaged store): the changes only
    /// those held are gone, but the file on disk is the user's. The record goes with the
    /// damaged document, and the file is read back (`Effect::ReadFile`) and taken in as a
    /// new file: what the disk holds is kept and syncs again. Peers holding the lost
    /// document send it back; meeting the new file at its path, the two are settled as
    /// any two files made at one path are (the same bytes or an earlier version: one
    /// file; else one is kept under a conflict-copy name).
    pub(super) fn take_in_damaged_docs(&mut self) {
        for file in std::mem::take(&mut self.damaged_docs) {
            // A good copy came from a peer in this call: it takes the damaged one's place.
            if self.adopted.contains_key(&file) {
                continue;
            }
            let Some(meta) = self.forget_file(file) else {
                continue;
            };
            // Read back only a file that is the user's to keep: not one deleted (by a
            // peer, or held by the guard) nor one now ignored here.
            let deleted = self.index.tombstone(&file).is_some() || self.tail3.held.contains(&file);
            if let Some((path, _)) = meta
                .disk
                .filter(|(p, _)| !deleted && !self.state.ignored.contains(p))
            {
                let name = self.name.clone();
                self.activity(
                    ActivityKind::Error,
                    Some(path.clone()),
                    &name,
                    Some("its stored document was damaged: taken in again from the file".into()),
                );
                self.out_files.push(Effect::ReadFile { path });
            }
        }
    }

    /// Drops what this device holds of `file`: its record, its stored document (deleted
    /// first in the call's persistence) and what is kept about it in memory. Returns the
    /// record, if there was one. (The index entry stays: peers may send the file again.)
    pub(super) fn forget_file(&mut self, file: FileId) -> Option<FileMeta> {
        self.out_files.insert(0, Self::delete_doc(file));
        self.forget_kept(file)
    }

    fn delete_doc(file: FileId) -> Effect {
        Effect::Persist(Persist::DeleteDoc {
            doc: DocId::File(file),
        })
    }

    /// [`Engine::forget_file`] but the stored document's deletion.
    fn forget_kept(&mut self, file: FileId) -> Option<FileMeta> {
        self.cache.remove(&file);
        self.dirty.remove(&file);
        self.adopted.remove(&file);
        self.adopted_content.remove(&file);
        self.growth.remove(&file);
        self.waiting_apart.remove(&file);
        self.unnamed.remove(&file);
        if self.tail.unverified.remove(&file) {
            self.state_dirty = true;
        }
        let before = self.tail4.overlaps.len();
        self.tail4.overlaps.retain(|n| n.file != file);
        if self.tail4.overlaps.len() != before {
            self.state_dirty = true;
        }
        let meta = self.files.remove(&file);
        // (A file the index does not name is in no view.)
        if meta.is_some() && self.index.knows(&file) {
            self.invalidate(Stale::View);
        }
        meta
    }

    /// Notes that `bytes` came from a peer for `file` (`whole`: a whole document, which
    /// replaces what came before; else changes, added to it), if this device now keeps a
    /// record of it that the index does not name (a document that came before its index
    /// entry, or one for a file no member made). Returns whether it did.
    pub(super) fn note_unnamed(&mut self, file: FileId, bytes: u64, whole: bool) -> bool {
        if !self.files.get(&file).is_some_and(only_a_peers) || self.index.knows(&file) {
            return false;
        }
        let since_ms = self.now_ms;
        let u = self.unnamed.entry(file).or_insert(Unnamed {
            since_ms,
            bytes: 0,
            sent: true,
        });
        u.sent = true;
        u.bytes = if whole {
            u.bytes.max(bytes)
        } else {
            u.bytes.saturating_add(bytes)
        };
        true
    }

    /// Records the index names nowhere, every [`UNNAMED_SWEEP_MS`]: a deletion a peer
    /// purged leaves its record and document behind, and a start finds those of its
    /// last run here (and, after an index lost with a damaged store, those of files the
    /// records cannot give a path back: deleted ones, kept until the workspace has
    /// synced since).
    pub(super) fn sweep_unnamed(&mut self) {
        let now = self.now_ms;
        if self
            .unnamed_swept_ms
            .is_some_and(|at| (at..at + UNNAMED_SWEEP_MS).contains(&now))
        {
            return;
        }
        self.unnamed_swept_ms = Some(now);
        let found: Vec<(FileId, u64)> = self
            .files
            .iter()
            .filter(|(f, m)| {
                only_a_peers(m) && !self.unnamed.contains_key(f) && !self.index.knows(f)
            })
            .map(|(f, m)| (*f, m.size))
            .collect();
        for (f, bytes) in found {
            let u = Unnamed {
                since_ms: now,
                bytes,
                sent: false,
            };
            self.unnamed.insert(f, u);
        }
    }

    /// Drops the documents of files the index does not name (see [`Unnamed`]): a member
    /// sending documents for files it never names would otherwise grow every peer's
    /// store for ever. Those a peer sent in this run go past [`UNNAMED_KEPT_MS`], or the
    /// oldest first over [`MAX_UNNAMED_DOCS`] / [`MAX_UNNAMED_BYTES`], counted in
    /// `unnamed_documents`; those found by the sweep (honest leftovers) past
    /// [`UNNAMED_KEPT_MS`] once the workspace has synced since. Nothing is lost: a
    /// document whose file the index names later is sent again by a peer holding it (the
    /// digest covers every file the index names, and a catch-up answers those the asker
    /// lacks), as after a damaged store; and such documents were never acknowledged.
    pub(super) fn drop_unnamed(&mut self) {
        if self.unnamed.is_empty() {
            return;
        }
        let now = self.now_ms;
        // Named since (their index entry came after them), or forgotten.
        let index = &self.index;
        let files = &self.files;
        self.unnamed
            .retain(|f, _| files.get(f).is_some_and(only_a_peers) && !index.knows(f));
        // (A clock set back does not keep them longer than that.)
        let synced = self.state.last_workspace_sync_ms;
        let (mut count, mut bytes, mut first) = (0usize, 0u64, now);
        for u in self.unnamed.values_mut() {
            u.since_ms = u.since_ms.min(now);
            // (A leftover waits for a sync: until then it cannot go, and is no reason
            // to look further at every call.)
            if u.sent || synced.is_some_and(|t| t > u.since_ms) {
                first = first.min(u.since_ms);
            }
            if u.sent {
                count += 1;
                bytes = bytes.saturating_add(u.bytes);
            }
        }
        if now - first <= UNNAMED_KEPT_MS && count <= MAX_UNNAMED_DOCS && bytes <= MAX_UNNAMED_BYTES
        {
            return;
        }
        let mut oldest: Vec<(i64, FileId, bool, u64)> = self
            .unnamed
            .iter()
            .map(|(f, u)| (u.since_ms, *f, u.sent, u.bytes))
            .collect();
        oldest.sort_unstable();
        let mut drop = Vec::new();
        let mut sent_dropped = 0u64;
        for (since, f, sent, b) in oldest {
            let expired = now - since > UNNAMED_KEPT_MS;
            if sent {
                if expired || count > MAX_UNNAMED_DOCS || bytes > MAX_UNNAMED_BYTES {
                    count -= 1;
                    bytes = bytes.saturating_sub(b);
                    sent_dropped += 1;
                    drop.push(f);
                }
            } else if expired && synced.is_some_and(|t| t > since) {
                drop.push(f);
            }
        }
        // Each deletion goes first in the call's persistence, as `forget_file` puts it;
        // all at once, not one by one at the front (thousands of leftovers after an
        // upgrade).
        for f in &drop {
            self.forget_kept(*f);
        }
        let deletions = drop.into_iter().map(Self::delete_doc);
        self.out_files.splice(0..0, deletions);
        if sent_dropped > 0 {
            self.state.counters.unnamed_documents += sent_dropped;
            self.state_dirty = true;
        }
    }

    pub(super) fn commit_index(&mut self) {
        if self.commit_index_keeping_view() {
            self.invalidate(Stale::View);
        }
    }

    /// [`Engine::commit_index`] for a change of `file`'s entry alone (a local rename or
    /// deletion, `alone`: nothing else was pending in the index): the live view is
    /// brought up to date for that file only (`paths_changed`, which still goes the
    /// whole way when the file's new path clashes). Not alone: `commit_index`.
    pub(super) fn commit_index_for(&mut self, file: FileId, alone: bool, store: &mut dyn DocStore) {
        if !alone {
            return self.commit_index();
        }
        if self.commit_index_keeping_view() {
            self.paths_changed(&BTreeSet::from([file]), store);
        }
    }

    /// [`Engine::commit_index`] for a change that cannot change the live view: a new
    /// file's path and origin (a file without content is not live; it joins the view
    /// when it gets content, `refresh_meta`). Otherwise every file would be reconciled
    /// and every path's clashes looked at again for each file a burst creates. Whether
    /// there was a change.
    pub(super) fn commit_index_keeping_view(&mut self) -> bool {
        let Some(change) = self.index.commit(self.now_ms / 1000) else {
            return false;
        };
        let pending = &mut self.tail2.index_pending;
        pending.count += 1;
        pending.latest = Some(change.hash().0);
        self.state_dirty = true;
        let item = Item::Changes {
            doc: DocId::Index,
            changes: vec![change.raw_bytes().to_vec()],
        };
        let item = self.sealed_now(DocId::Index, item);
        self.broadcast(item);
        self.index_dirty = true;
        self.invalidate(Stale::Digest);
        true
    }

    /// Stores a few documents with many increments whole again: without it a document
    /// edited 100 times keeps up to `compact_after` small increments (≈190 bytes each
    /// for a one-line edit), several times the file's size.
    /// At rest (nothing happened for `COMPACT_AT_REST_AFTER_MS`) every document with an
    /// increment is stored whole, the cached ones first (no load needed).
    pub(super) fn compact_some(&mut self, budget: usize, store: &mut dyn DocStore) {
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
            .files
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
                if let Some(mut m) = self.files.get_mut(&f) {
                    m.increments = 0;
                }
                continue;
            }
            if let Some(mut m) = self.files.get_mut(&f) {
                m.increments = self.config.compact_after.saturating_sub(1);
            }
            self.dirty.insert(f);
        }
    }

    pub(super) fn evict(&mut self) {
        while self.cache.len() > self.config.cache_docs.max(1) {
            let Some((&oldest, _)) = self.cache.iter().min_by_key(|(_, (_, t))| *t) else {
                break;
            };
            self.cache.remove(&oldest);
        }
    }
}

/// Whether a record holds nothing of this device's own: no change of ours a peer has not
/// confirmed yet, no file on this disk. Only such a record is dropped for want of an
/// index entry (an index lost with a damaged store is filled again from the records, and
/// from peers).
fn only_a_peers(meta: &FileMeta) -> bool {
    meta.pending.is_empty() && meta.disk.is_none()
}
