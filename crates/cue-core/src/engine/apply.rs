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

impl Engine {
    /// A whole document with its content (`Item::Adopt`). A document we do not have is
    /// stored as it came and its content written as it came, without loading it; it is
    /// checked against that content later (`verify_adopted`). One we have is merged.
    pub(super) fn adopt(
        &mut self,
        from: DeviceId,
        f: FileId,
        bytes: Vec<u8>,
        heads: Heads,
        content: Vec<u8>,
        store: &mut dyn DocStore,
    ) -> Option<Heads> {
        let known = self.files.contains(&f) || self.cache.contains_key(&f);
        if known || heads.is_empty() {
            return self.apply_remote(from, DocId::File(f), Remote::Whole(bytes), store);
        }
        let meta = FileMeta {
            heads: heads.clone(),
            doc_hash: Some(content_hash(&content)),
            size: content.len() as u64,
            ..FileMeta::default()
        };
        self.files.insert(f, meta);
        self.adopted.insert(f, bytes);
        self.adopted_content.insert(f, content);
        self.tail.unverified.insert(f);
        self.state_dirty = true;
        // A file that got content may now clash with another at its path.
        self.invalidate(Stale::View);
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
    pub(super) fn verify_adopted(&mut self, budget: usize, store: &mut dyn DocStore) {
        let batch: Vec<FileId> = self.tail.unverified.iter().take(budget).copied().collect();
        for f in batch {
            self.tail.unverified.remove(&f);
            self.state_dirty = true;
            let Some(believed) = self.files.get(&f).map(|m| (m.heads.clone(), m.doc_hash)) else {
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
    pub(super) fn apply_remote(
        &mut self,
        from: DeviceId,
        doc: DocId,
        remote: Remote,
        store: &mut dyn DocStore,
    ) -> Option<Heads> {
        let (before, after, missing) = match doc {
            DocId::Index => self.apply_to_index(from, remote, store)?,
            DocId::File(f) => self.apply_to_file(from, f, remote, store)?,
        };
        if before != after
            && let Some(p) = self.pull.as_mut()
        {
            p.changed = true;
        }
        if missing {
            // We lack changes these depend on: ask the sender for this document.
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
        store: &mut dyn DocStore,
    ) -> Option<(Heads, Heads, bool)> {
        let before = to_heads(&self.index.heads());
        let live_before = self.live_view(store);
        let tombs_before: BTreeSet<FileId> = self.index.tombstones().into_keys().collect();
        let am = self.index.automerge();
        let ok = match remote {
            Remote::Changes(c) => am.apply_changes(c).is_ok(),
            Remote::Whole(bytes) => match automerge::AutoCommit::load(&bytes) {
                Ok(mut other) => am.merge(&mut other).is_ok(),
                Err(_) => false,
            },
        };
        if !ok {
            return self.bad_document();
        }
        let missing = !self.index.automerge().get_missing_deps(&[]).is_empty();
        let after = to_heads(&self.index.heads());
        if before != after {
            self.index_dirty = true;
            self.invalidate(Stale::View);
            self.guard_remote_deletions(from, &live_before, &tombs_before, store);
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

    /// The mass-deletion guard for deletions from peers: when one batch of index changes
    /// deletes more than half of a workspace (as a local `rm -rf` would, or a hostile
    /// member), the deletions are held: the files stay on disk here, status says so, and
    /// the user applies or undoes them. While deletions are held, every later one is too.
    fn guard_remote_deletions(
        &mut self,
        from: DeviceId,
        live_before: &BTreeMap<FileId, String>,
        tombs_before: &BTreeSet<FileId>,
        store: &mut dyn DocStore,
    ) {
        let new_tombs: Vec<FileId> = self
            .index
            .tombstones()
            .into_keys()
            .filter(|f| !tombs_before.contains(f) && live_before.contains_key(f))
            .collect();
        if new_tombs.is_empty() {
            return;
        }
        let dead: Vec<FileId> = new_tombs
            .into_iter()
            .filter(|f| !self.is_live(*f, store))
            .collect();
        let by = self.index.members().get(&from).cloned().unwrap_or_default();
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
            let name = self.index.members().get(&from).cloned().unwrap_or_default();
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
        store: &mut dyn DocStore,
    ) -> Option<(Heads, Heads, bool)> {
        let before = self
            .files
            .get(&f)
            .map(|m| m.heads.clone())
            .unwrap_or_default();
        let remote = self.adopt_whole(f, remote)?;
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
        let Ok((after, missing)) = r else {
            // A document that failed to apply may be half-updated in memory; drop it so
            // the stored version is what counts.
            self.cache.remove(&f);
            return self.bad_document();
        };
        if before != after {
            self.files.get_or_default(f);
            self.refresh_meta(f, store);
            self.record_field_conflicts(f, store);
            self.to_reconcile.insert(f);
            if let Some(path) = self.index.path_of(&f) {
                let name = self.index.members().get(&from).cloned().unwrap_or_default();
                self.activity(ActivityKind::RemoteChange, Some(path), &name, None);
            }
        }
        Some((before, after, missing))
    }

    /// A whole document we do not have at all is taken as sent: loading it is the only
    /// cost, and its bytes are stored as they came (no merge into an empty document, no
    /// re-encoding). What is left to apply; `None` when the bytes are not a document.
    fn adopt_whole(&mut self, f: FileId, remote: Remote) -> Option<Remote> {
        match remote {
            Remote::Whole(bytes) if !self.files.contains(&f) && !self.cache.contains_key(&f) => {
                match FileDoc::load(&bytes, self.actor.clone()) {
                    Ok(doc) => {
                        let t = self.touch();
                        self.cache.insert(f, (doc, t));
                        self.adopted.insert(f, bytes);
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
