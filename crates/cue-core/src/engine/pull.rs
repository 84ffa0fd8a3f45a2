//! Catch-up: pulling what a peer has that we lack, answering pulls, and confirmations
//! of our pending changes.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct ActivePull {
    pub(super) peer: DeviceId,
    pub(super) id: u64,
    pub(super) started_ms: i64,
    pub(super) full: bool,
    pub(super) changed: bool,
}

/// A pull being answered: the documents left to answer, in order, with the asker's
/// heads of each (`None`: it does not have it).
#[derive(Debug)]
pub(super) struct Answer {
    id: u64,
    full: bool,
    docs: VecDeque<(DocId, Option<Heads>)>,
}

impl Engine {
    /// Catch up with one peer at a time: among online peers whose digest differs from
    /// ours and that we have not just asked for that same state, the one asked longest
    /// ago (never asked first, then in device order). Each such peer gets its turn: a
    /// member that answers every pull with nothing and announces a new state each time
    /// cannot keep a device from pulling from the others.
    pub(super) fn maybe_pull(&mut self, store: &mut dyn DocStore) {
        if self.pull.is_some() || !self.connected {
            return;
        }
        let mine = self.digest();
        let now = self.now_ms;
        let ae = self.config.anti_entropy_ms;
        let candidate = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.online
                    && p.digest.is_some_and(|d| d != mine)
                    && !p
                        .last_pull
                        .is_some_and(|(d, t)| Some(d) == p.digest && now - t < ae)
            })
            .min_by_key(|(_, p)| p.last_pull.map(|(_, t)| t));
        let Some((&peer, _)) = candidate else {
            return;
        };
        let full = self
            .state
            .last_workspace_sync_ms
            .is_some_and(|t| now - t > self.config.max_offline_ms);
        let mut entries = vec![(DocId::Index, to_heads(&self.index.heads()))];
        let files: Vec<FileId> = self
            .files
            .ids()
            .copied()
            .filter(|f| self.index.knows(f))
            .collect();
        for f in files {
            let heads = if self.cache.contains_key(&f) {
                to_heads(&self.doc_heads(f, store))
            } else {
                self.files
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

    pub(super) fn pull_complete(&mut self, pull: ActivePull) {
        self.pull = None;
        self.synced_with(pull.peer);
        if pull.full {
            self.state.last_full_resync_ms = Some(self.now_ms);
            let name = self
                .members_view
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
    pub(super) fn on_pull(
        &mut self,
        from: DeviceId,
        id: u64,
        full: bool,
        complete: bool,
        entries: Vec<(DocId, Heads)>,
        store: &mut dyn DocStore,
    ) {
        let entries = self.held_once(entries);
        let mut listed = BTreeSet::new();
        for (doc, heads) in &entries {
            listed.insert(*doc);
            self.confirm(*doc, heads, store);
        }
        let mut docs: Vec<(DocId, Option<Heads>)> =
            entries.into_iter().map(|(d, h)| (d, Some(h))).collect();
        if complete {
            if !listed.contains(&DocId::Index) {
                docs.insert(0, (DocId::Index, None));
            }
            for f in self.files.ids() {
                if self.index.knows(f) && !listed.contains(&DocId::File(*f)) {
                    docs.push((DocId::File(*f), None));
                }
            }
        }
        // A light pull (the missing dependencies of a document or a few) is answered at
        // once, and never takes the place of a catch-up being answered: the asker waits
        // for that one's end.
        if !full && !complete && docs.len() <= super::limit::LIGHT_PULL_DOCS {
            for (doc, their) in docs {
                if let Some(item) = self.answer_for(doc, their.as_ref(), full, store) {
                    self.send(from, item);
                }
            }
            self.send(from, Item::PullDone { id });
            return;
        }
        // The index at once, against the heads the asker gave: later in this call its own
        // index changes may arrive, after which it would be sent change by change rather
        // than whole (three times the bytes at a first sync).
        let mut docs: VecDeque<(DocId, Option<Heads>)> = docs.into();
        while let Some((DocId::Index, _)) = docs.front() {
            if let Some((doc, their)) = docs.pop_front()
                && let Some(item) = self.answer_for(doc, their.as_ref(), full, store)
            {
                self.send(from, item);
            }
        }
        // A newer pull from the same asker takes the place of one still being answered
        // (the asker waits only for its latest).
        self.answering.insert(from, Answer { id, full, docs });
        // Answered from the end of this call on (`handle_batch` → `continue_answers`).
    }

    /// Answers the pulls under way, at most `answer_chunk_bytes` of documents in this
    /// call (every call goes on with them: ticks while any is left, `wants_frequent_ticks`),
    /// so that what waits to be sent stays bounded whatever the workspace's size. Each
    /// document is answered as it is when its turn comes; `PullDone` ends the answer.
    pub(super) fn continue_answers(&mut self, store: &mut dyn DocStore) {
        let mut budget = self.config.answer_chunk_bytes.max(1);
        let askers: Vec<DeviceId> = self.answering.keys().copied().collect();
        // (An asker that goes offline has its answer dropped: `peer_offline`.)
        for from in askers {
            while budget > 0 {
                let Some(answer) = self.answering.get_mut(&from) else {
                    break;
                };
                let full = answer.full;
                let Some((doc, their)) = answer.docs.pop_front() else {
                    let id = answer.id;
                    self.answering.remove(&from);
                    self.send(from, Item::PullDone { id });
                    break;
                };
                if let Some(item) = self.answer_for(doc, their.as_ref(), full, store) {
                    budget = budget.saturating_sub(pace::size(&item));
                    self.send(from, item);
                }
            }
            // The last document may have used the budget up: end the answer in this
            // call if nothing is left of it.
            if self.answering.get(&from).is_some_and(|a| a.docs.is_empty())
                && let Some(answer) = self.answering.remove(&from)
            {
                self.send(from, Item::PullDone { id: answer.id });
            }
        }
    }

    pub(super) fn answer_for(
        &mut self,
        doc: DocId,
        their: Option<&Heads>,
        full: bool,
        store: &mut dyn DocStore,
    ) -> Option<Item> {
        let mine = match doc {
            DocId::Index => to_heads(&self.index.heads()),
            DocId::File(f) => self.files.get(&f)?.heads.clone(),
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
                                .any(|h| d.automerge().get_change_meta_by_hash(h).is_some()))
                        })
                        .ok()?,
                };
                if !known {
                    return self.whole(doc, mine, store);
                }
                let changes: Vec<Vec<u8>> = match doc {
                    DocId::Index => {
                        crate::doc::changes_since(self.index.automerge_unchanged(), &have)
                            .unwrap_or_default()
                            .iter()
                            .map(|c| c.raw_bytes().to_vec())
                            .collect()
                    }
                    DocId::File(f) => self
                        .with_doc(f, store, |d| {
                            Ok(crate::doc::changes_since(d.automerge(), &have)
                                .ok_or_else(crate::doc::unreadable)?
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
    pub(super) fn whole(
        &mut self,
        doc: DocId,
        heads: Heads,
        store: &mut dyn DocStore,
    ) -> Option<Item> {
        let f = match doc {
            DocId::Index => {
                return Some(Item::Whole {
                    doc,
                    bytes: self.index.automerge_unchanged().save(),
                });
            }
            DocId::File(f) => f,
        };
        if self.cache.contains_key(&f) {
            // `automerge().save()`, not `FileDoc::save`: the save cursor stays where the
            // store is, or unsaved changes would never be persisted.
            let (bytes, heads, content) = self
                .with_doc(f, store, |d| {
                    // An `Adopt` carries no mode: an executable file goes whole.
                    let content = if d.is_empty() || d.exec() {
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
        // on disk when what we last wrote or read there is what it renders to. (The store
        // compares the bytes' hash alone, which an executable file's hash never is: such
        // a file goes whole, as an `Adopt` carries no mode.)
        let bytes = match self.adopted.get(&f) {
            Some(b) => b.clone(),
            None => {
                let stored = store.load(&doc).filter(|b| !b.is_empty())?;
                // Damaged, every peer would refuse them, and nothing here would load
                // them to find out: the file is taken in again from the disk instead.
                // (A document adopted and not yet checked is a peer's, left to its check.)
                if !crate::inflate::chunks_intact(&stored) {
                    if !self.tail.unverified.contains(&f) && self.damaged_docs.insert(f) {
                        self.state.counters.bad_documents += 1;
                        self.state_dirty = true;
                    }
                    return None;
                }
                stored
            }
        };
        let meta = self.files.get(&f)?;
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
    pub(super) fn confirm(&mut self, doc: DocId, heads: &Heads, store: &mut dyn DocStore) {
        let f = match doc {
            DocId::Index => return self.confirm_index(heads),
            DocId::File(f) => f,
        };
        let Some(meta) = self.files.get(&f) else {
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
            Ok(crate::doc::changes_since(d.automerge(), &have)
                .ok_or_else(crate::doc::unreadable)?
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
    pub(super) fn confirm_index(&mut self, heads: &Heads) {
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
            let missing =
                crate::doc::changes_since(self.index.automerge_unchanged(), &from_heads(heads))
                    .unwrap_or_default()
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
    pub(super) fn set_pending(&mut self, f: FileId, left: Vec<[u8; 32]>) {
        if let Some(mut m) = self.files.get_mut(&f)
            && m.pending != left
        {
            m.pending = left;
            self.dirty.insert(f);
        }
    }
}

impl Engine {
    /// What this engine's pulls are doing (its own, the answers it gives, those waiting),
    /// for the simulation's trace of a failing schedule (`CUE_SIM_TRACE`).
    #[doc(hidden)]
    pub fn debug_pulls(&self) -> String {
        format!(
            "pull={:?} answering={:?} deferred={:?} peers={:?}",
            self.pull.as_ref().map(|p| (p.peer, p.id, p.started_ms)),
            self.answering
                .iter()
                .map(|(k, a)| (*k, a.id, a.docs.len()))
                .collect::<Vec<_>>(),
            self.deferred_pulls.keys().collect::<Vec<_>>(),
            self.peers
                .iter()
                .map(|(k, p)| (*k, p.online))
                .collect::<Vec<_>>(),
        )
    }
}
