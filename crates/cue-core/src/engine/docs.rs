//! The documents: the bounded cache, loading, metadata refresh, index commits and
//! compaction.

use super::*;

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
            // A file that just got its first content, or a deleted one that changed, may
            // now be alive: path clashes must be looked at again.
            let view_stale = meta.doc_hash.is_none() || tombstoned;
            meta.heads = heads;
            meta.doc_hash = content.as_ref().map(|c| file_hash(c, exec));
            meta.size = content.map_or(0, |c| c.len() as u64);
            drop(meta);
            if view_stale {
                self.invalidate(Stale::View);
            }
        }
        self.dirty.insert(file);
        self.invalidate(Stale::Digest);
    }

    pub(super) fn commit_index(&mut self) {
        if let Some(change) = self.index.commit(self.now_ms / 1000) {
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
            self.invalidate(Stale::View);
        }
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
