//! Local edits: what the watcher saw on disk becomes document changes, tombstones and
//! renames; `restore` and `resolve` are the user's commands on them.

use super::*;

/// How long after a file moved away from a name a save reported there is still taken
/// for the moved file's edit ([`Engine::moved_away_edit`]): the watcher's report of a
/// save comes within a second or so of it.
pub(super) const MOVED_EDIT_MS: i64 = 2_000;

/// At most this many such names are remembered (older ones are dropped first).
const MOVED_FROM_KEPT: usize = 1_024;

impl Engine {
    /// Whether a file seen on disk is synced: a valid path, and not too large (then it is
    /// listed as skipped until it shrinks).
    fn takes_local(&mut self, path: &str, size: usize) -> bool {
        if valid_path(path).is_err() {
            self.state.counters.bad_paths += 1;
            self.state_dirty = true;
            return false;
        }
        if size as u64 > self.config.max_file_size {
            self.state.skipped.insert(path.to_string(), size as u64);
            self.state_dirty = true;
            return false;
        }
        if self.state.skipped.remove(path).is_some() {
            self.state_dirty = true;
            self.say_too_large(path, None);
        }
        true
    }

    /// Tells the other devices (through the index) that the synced file at `path` is
    /// `size` bytes here, too large to sync (`None`: no longer).
    pub(super) fn say_too_large(&mut self, path: &str, size: Option<u64>) {
        let Some(f) = self.file_at(path) else {
            return;
        };
        let device = self.device;
        let said = self
            .index
            .too_large()
            .into_iter()
            .find(|(file, d, _)| *file == f && *d == device)
            .map(|(_, _, s)| s);
        if said != size && self.index.set_too_large(&f, &device, size).is_ok() {
            self.commit_index();
        }
    }

    /// The file at `path` holds `content` and is executable or not (`exec`).
    pub(super) fn local_change(
        &mut self,
        path: &str,
        content: Vec<u8>,
        exec: bool,
        store: &mut dyn DocStore,
    ) {
        self.heard_of(path);
        if !self.takes_local(path, content.len()) {
            return;
        }
        // On a folder that does not keep modes the bit read is no news: the save keeps
        // the bit the document has, and the disk is believed to hold it.
        let exec = (!self.config.modes_unkept).then_some(exec);
        let hash = file_hash(
            &content,
            exec.unwrap_or_else(|| self.believed_exec(path, store)),
        );
        let mut created = false;
        let file = match self
            .file_at(path)
            .or_else(|| self.live_file_with_path(path))
        {
            Some(f) if self.never_on_disk_here(f, hash) => {
                // A version of this file was never on this disk, yet the path holds other
                // bytes: the user created it here while the remote one was on its way (the
                // write of the remote one was refused). It is a second creation, kept
                // whole beside the first by the create rule, not an edit of a file the
                // user never saw.
                if let Some(mut m) = self.files.get_mut(&f)
                    && m.disk.as_ref().is_some_and(|(p, _)| p == path)
                {
                    m.disk = None;
                }
                self.to_reconcile.insert(f);
                created = true;
                self.create_file(path)
            }
            Some(f) => f,
            None => {
                created = true;
                self.create_file(path)
            }
        };
        if let Some(mut meta) = self.files.get_mut(&file) {
            meta.disk = Some((path.to_string(), hash));
            if meta.doc_hash == Some(hash) {
                // Our own write coming back, or a save that changed nothing.
                meta.disk_heads = meta.heads.clone();
                self.dirty.insert(file);
                return;
            }
        }
        // An adopted document not yet checked could hold changes no seal reaches: they
        // are taken out before an edit here builds on them (it would be lost with them).
        if self.tail.unverified.contains(&file) {
            self.unseal_adopted(file, store);
        }
        let time_s = self.now_ms / 1000;
        let base = self
            .files
            .get(&file)
            .map(|m| from_heads(&m.disk_heads))
            .unwrap_or_default();
        let deleted = self.state.deleted_here.remove(&file);
        self.state_dirty |= deleted.is_some();
        let base = match deleted.map(|h| from_heads(&h)) {
            Some(deleted) if !created && !base.is_empty() && !deleted.is_empty() => {
                self.nearer_base(file, base, deleted, &content, store)
            }
            _ => base,
        };
        let fork_actor = self.fork_actor();
        let mut overlaps = None;
        // A new file's document made ahead (`prepare_new_files`): what this call would
        // make of an empty document.
        let mut prepared = None;
        if created && let Some((doc, made)) = self.prepared.remove(&(path.to_string(), hash)) {
            let t = self.touch();
            self.cache.insert(file, (doc, t));
            prepared = Some(made);
        }
        let result = self.with_doc(file, store, |doc| {
            let (new, current, made) = match prepared {
                Some(made) => (true, Vec::new(), made?),
                None => (
                    doc.is_empty(),
                    doc.heads(),
                    doc.write_at(&base, path, &content, exec, time_s, fork_actor)?,
                ),
            };
            if let Some(hash) = made {
                // A save of an older version merged with changes that arrived meanwhile
                // (the save's side against theirs); a fast-forward returns at once.
                // Failing to tell costs only the notice, never the edit.
                overlaps = doc.overlaps(&[hash], &current).ok().flatten();
            }
            Ok(made.map(|hash| {
                // A new document goes out whole: its `save()` is 30× cheaper than
                // encoding its first change, and a peer adopts it as it comes.
                let doc_id = DocId::File(file);
                // (When the edit was merged with other changes, the document renders to
                // something else than `content`, and goes without it. An `Adopt`
                // carries no mode, so an executable file goes without it too.)
                let item = if new && !doc.exec() && doc.heads() == [hash] {
                    Some(Item::Adopt {
                        doc: doc_id,
                        bytes: doc.automerge().save(),
                        heads: vec![hash.0],
                        content: content.clone(),
                    })
                } else if new {
                    Some(Item::Whole {
                        doc: doc_id,
                        bytes: doc.automerge().save(),
                    })
                } else {
                    doc.change(&hash).map(|c| Item::Changes {
                        doc: doc_id,
                        changes: vec![c],
                    })
                };
                (hash, item)
            }))
        });
        match result {
            Ok(Some((hash, item))) => {
                self.after_local_change(file, hash, item);
                self.refresh_meta(file, store);
                // The disk now holds exactly our new change's version.
                if let Some(mut m) = self.files.get_mut(&file) {
                    m.disk_heads = vec![hash.0];
                }
                let before = base.iter().map(|h| h.0).collect();
                self.record_growth(file, before, vec![hash.0], content.len());
                // An edit of an older version can meet a remote write it had not seen
                // (binary files: both values stand until a copy keeps the loser).
                self.record_field_conflicts(file, store);
                if let Some(found) = overlaps {
                    self.note_overlaps(file, found);
                }
                let name = self.name.clone();
                self.activity(
                    ActivityKind::LocalChange,
                    Some(path.to_string()),
                    &name,
                    None,
                );
            }
            Ok(None) => {}
            Err(e) => self.doc_error(path, &e),
        }
        // A file deleted earlier and written again at the same place is alive again.
        if self.index.tombstone(&file).is_some() {
            let _ = self.index.clear_tombstone(&file);
            self.commit_index();
            self.release_held(&[file]);
        }
        self.to_reconcile.insert(file);
    }

    /// The version a save of a file deleted here (in this run) derives from: the one
    /// on disk (`on_disk`: cue wrote it back, the peers' edits of it made meanwhile kept,
    /// a deletion meeting an edit) or the one deleted (`deleted`: the user put back the
    /// copy they took away, `mv /tmp/f.md .` or a backup copied back, maybe edited
    /// meanwhile, never having seen what cue wrote). Whichever of the two is nearer to
    /// `content` (fewer lines changed; the same bytes, for a file that is not text).
    /// Taken for an edit of the version cue wrote back, the copy put back undid the
    /// peers' edits (found with a peer appending while a note was moved out and back:
    /// every line it wrote meanwhile gone from both devices); taken for an edit of the
    /// deleted version when it derives from cue's, it would double them.
    fn nearer_base(
        &mut self,
        file: FileId,
        on_disk: Vec<ChangeHash>,
        deleted: Vec<ChangeHash>,
        content: &[u8],
        store: &mut dyn DocStore,
    ) -> Vec<ChangeHash> {
        let both = self.with_doc(file, store, |d| {
            Ok((d.materialize_at(&on_disk)?, d.materialize_at(&deleted)?))
        });
        let Ok((was_on_disk, was_deleted)) = both else {
            return on_disk;
        };
        if was_deleted == content && was_on_disk != content {
            return deleted;
        }
        let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_string);
        let (Some(new), Some(a), Some(b)) = (text(content), text(&was_on_disk), text(&was_deleted))
        else {
            return on_disk;
        };
        // (By lines: a line replaced by another that differs in one letter is still
        // another line.)
        let changed = |old: &str| -> usize {
            (similar::TextDiff::from_lines(old, new.as_str()).iter_all_changes())
                .filter(|c| c.tag() != similar::ChangeTag::Equal)
                .count()
        };
        if changed(&b) < changed(&a) {
            deleted
        } else {
            on_disk
        }
    }

    /// A write or removal at `path` replaced a file a program wrote to in that instant:
    /// `content` is what it held. Merged as an edit of the version on disk before the
    /// write, while the disk belief stays what was written (the merge is written next).
    /// With nothing written there to merge into (a removal), it is kept as a copy.
    pub(super) fn replaced_edit(
        &mut self,
        path: &str,
        expect: Option<ContentHash>,
        content: Vec<u8>,
        exec: bool,
        store: &mut dyn DocStore,
    ) {
        if self.leaving_edit(path, expect, &content, exec, false, store) {
            return;
        }
        let found = self.file_at(path).and_then(|f| {
            let m = self.files.get(&f)?;
            (!m.prev_disk_heads.is_empty()).then(|| (f, m.disk.clone(), m.disk_heads.clone()))
        });
        if found.is_none() && self.moved_away_edit(path, &content, exec, Some(expect), store) {
            return;
        }
        if let Some((f, _, _)) = found {
            let base = self.files.get(&f).map(|m| m.prev_disk_heads.clone());
            let hash = file_hash(&content, exec);
            let base = base.unwrap_or_default();
            let version = self.edit_of_replaced(f, path, base, content, exec, store);
            // A program still writing to that file edits this version.
            self.remember_replaced(hash, version);
            return;
        }
        self.keep_as_copy(path, content, exec, store);
    }

    /// [`Input::LateWrite`]: merged as an edit of the replaced version when it is still
    /// known and the file is still here; whether it was.
    pub(super) fn late_write_merged(
        &mut self,
        path: &str,
        replaced: ContentHash,
        content: &[u8],
        exec: bool,
        store: &mut dyn DocStore,
    ) -> bool {
        let Some(base) = self
            .replaced_versions
            .iter()
            .rev()
            .find(|(h, _)| *h == replaced)
            .map(|(_, heads)| heads.clone())
        else {
            return false;
        };
        let Some(f) = self.file_at(path) else {
            return false;
        };
        let hash = file_hash(content, exec);
        let version = self.edit_of_replaced(f, path, base, content.to_vec(), exec, store);
        self.remember_replaced(hash, version);
        true
    }

    /// `content` is at `path`, the old name of a file moved elsewhere on this disk (a
    /// peer's rename carried out here) that a program saved to as it moved: its removal
    /// there was refused, or made over the save (`feedback`: what the carry-out found),
    /// or, after one of those, the watcher reports a save there soon after
    /// ([`MOVED_EDIT_MS`]). It is that file's edit, of the version the old name held:
    /// merged, written under the new name, and the old name removed. Without this the
    /// save was a new file at the old name, the note split in two. A file the watcher
    /// finds at the old name after a removal that went as planned is a new one (the user
    /// made another file of that name). Whether it was such a save. `feedback`: what
    /// the effect found there expected (`None`: a save the watcher reported).
    pub(super) fn moved_away_edit(
        &mut self,
        path: &str,
        content: &[u8],
        exec: bool,
        feedback: Option<Option<ContentHash>>,
        store: &mut dyn DocStore,
    ) -> bool {
        if self.file_at(path).is_some() {
            return false;
        }
        let now = self.now_ms;
        let found = match (self.moved_from.get(path), feedback) {
            (Some((f, heads, at)), _) if now - at <= MOVED_EDIT_MS => Some((*f, heads.clone())),
            (_, None) => None,
            (_, Some(expect)) => self.disk_op(path, expect).map(|op| op.file).and_then(|f| {
                let m = self.files.get(&f)?;
                // Moved, in this round, to a name of its own (not deleted: a deletion
                // meeting a save keeps the save by the deletion's own rule); written
                // there, or to be (its write put off: a note moved over another whose
                // removal was refused too, `leaving_edit`).
                let elsewhere = m.disk.as_ref().is_none_or(|(p, _)| p != path)
                    && self.index.path_of(&f).is_some_and(|p| p != path)
                    && self.index.tombstone(&f).is_none();
                elsewhere.then(|| (f, m.prev_disk_heads.clone()))
            }),
        };
        let Some((f, base)) = found else {
            return false;
        };
        let version = self.edit_of_moved(f, path, base, content, exec, store);
        self.remove_taken_in(path, content, exec, f, version.clone());
        if self.moved_from.len() >= MOVED_FROM_KEPT {
            self.moved_from
                .retain(|_, (_, _, at)| now - *at <= MOVED_EDIT_MS);
        }
        if self.moved_from.len() < MOVED_FROM_KEPT {
            self.moved_from.insert(path.to_string(), (f, version, now));
        }
        true
    }

    /// `content`, found at `path` by a write or removal there (`still_there`: refused;
    /// else replaced in that instant), when the bytes the effect expected (`expect`) were
    /// those of a file leaving the path (deleted, or moved elsewhere) while another is
    /// written there (a note moved over another, two swapped): the leaving file's edit,
    /// never the incoming one's. Merged into the leaving file where it is now, or, that
    /// file deleted, kept beside as a copy (a removed file's edit). What is still there
    /// is removed once taken in, and the incoming file written after it. Bytes the effect
    /// expected nowhere (nothing was believed there) are a file made there meanwhile: a
    /// second creation, kept beside the incoming file (`never_on_disk_here`). Before,
    /// what the path held was merged as an edit of the file now believed there: the
    /// replaced note's text took the moved note's place, on every device. Whether it was
    /// such.
    pub(super) fn leaving_edit(
        &mut self,
        path: &str,
        expect: Option<ContentHash>,
        content: &[u8],
        exec: bool,
        still_there: bool,
        store: &mut dyn DocStore,
    ) -> bool {
        let Some(ops) = self.disk_ops.get(path) else {
            return false;
        };
        let Some(at) = ops.iter().rposition(|op| op.expect == expect) else {
            return false;
        };
        let op = ops[at].clone();
        let Some((held, base)) = op.held else {
            // Nothing was believed there: the file written there is the effect's.
            let taker = op.file;
            if self.file_at(path) != Some(taker) {
                return false;
            }
            if !still_there {
                // Replaced: the file made there is gone.
                self.keep_as_copy(path, content.to_vec(), exec, store);
                return true;
            }
            if let Some(mut m) = self.files.get_mut(&taker) {
                m.disk = None;
                m.disk_heads = Vec::new();
            }
            self.to_reconcile.insert(taker);
            self.local_change(path, content.to_vec(), exec, store);
            return true;
        };
        // The file written there: the effect's own, or (a removal) the write after it
        // at that path, which the carry-out does not make when the removal is refused.
        let taker = if op.file != held {
            Some(op.file)
        } else {
            ops[at + 1..]
                .iter()
                .find(|o| o.file != held)
                .map(|o| o.file)
        };
        let Some(taker) = taker else {
            return false;
        };
        // Not believed at the path while the leaving file's edit is taken in (it would
        // be found there as the file saved to); back after, unless it is still to be
        // written.
        let taken = self.files.get_mut(&taker).and_then(|mut m| {
            let here = m.disk.as_ref().is_some_and(|(p, _)| p == path);
            here.then(|| (m.disk.take(), m.disk_heads.clone()))
        });
        let elsewhere = self.index.tombstone(&held).is_none()
            && self.index.path_of(&held).is_some_and(|p| p != path)
            && self.files.get(&held).is_some_and(|m| m.doc_hash.is_some());
        let (kept_in, version) = if elsewhere {
            let version = self.edit_of_moved(held, path, base, content, exec, store);
            (held, version)
        } else {
            let copy = self.keep_as_copy(path, content.to_vec(), exec, store);
            let c = self
                .file_at(&copy)
                .or_else(|| self.live_file_with_path(&copy));
            let version = c.and_then(|c| self.files.get(&c).map(|m| m.heads.clone()));
            (c.unwrap_or(held), version.unwrap_or_default())
        };
        if let Some(mut m) = self.files.get_mut(&taker) {
            match taken {
                Some((disk, heads)) if !still_there => {
                    m.disk = disk;
                    m.disk_heads = heads;
                }
                _ if still_there => m.disk_heads = m.prev_disk_heads.clone(),
                _ => {}
            }
        }
        self.dirty.insert(taker);
        if still_there {
            self.to_reconcile.insert(taker);
            self.remove_taken_in(path, content, exec, kept_in, version);
        }
        true
    }

    /// `content` at `path` is `f`'s edit, of the version `base` it held there, while `f`
    /// is elsewhere (or to be written elsewhere): merged, `f` left where it is. The
    /// version that renders exactly `content`.
    fn edit_of_moved(
        &mut self,
        f: FileId,
        path: &str,
        base: Heads,
        content: &[u8],
        exec: bool,
        store: &mut dyn DocStore,
    ) -> Heads {
        let moved_to = self.files.get(&f).and_then(|m| m.disk.clone());
        let hash = file_hash(content, exec);
        // Believed at the old name for the merge (`local_change` finds it there), then
        // back where it is.
        if let Some(mut m) = self.files.get_mut(&f) {
            m.disk = Some((path.to_string(), hash));
        }
        let version = self.edit_of_replaced(f, path, base, content.to_vec(), exec, store);
        if let Some(mut m) = self.files.get_mut(&f) {
            m.disk = moved_to;
        }
        version
    }

    /// `content`, `f`'s version `version`, taken in from `path` where it does not belong:
    /// removed from there (a program writing to it again makes the removal's report an
    /// edit of `f` again).
    fn remove_taken_in(
        &mut self,
        path: &str,
        content: &[u8],
        exec: bool,
        f: FileId,
        version: Heads,
    ) {
        let hash = file_hash(content, exec);
        self.record_op(path, Some(hash), f, Some((f, version)));
        self.out_files.push(Effect::RemoveFile {
            path: path.to_string(),
            expect: Some(hash),
        });
    }

    /// `content` was written over the version `base` of `f`, in a file no longer at
    /// `path`: merged as that edit, while the belief of what `path` holds stays. The
    /// version that renders exactly `content` (the edit's own change).
    fn edit_of_replaced(
        &mut self,
        f: FileId,
        path: &str,
        base: Heads,
        content: Vec<u8>,
        exec: bool,
        store: &mut dyn DocStore,
    ) -> Heads {
        let Some((disk, written_heads)) = self
            .files
            .get(&f)
            .map(|m| (m.disk.clone(), m.disk_heads.clone()))
        else {
            return Vec::new();
        };
        if let Some(mut m) = self.files.get_mut(&f) {
            m.disk_heads = base;
        }
        self.local_change(path, content, exec, store);
        let mut version = Vec::new();
        if let Some(mut m) = self.files.get_mut(&f) {
            // `local_change` left the belief at the version it made of `content`.
            version = std::mem::replace(&mut m.disk_heads, written_heads);
            m.disk = disk;
        }
        self.to_reconcile.insert(f);
        version
    }

    /// `content`, which was at `path` and is no longer on disk, becomes a new file beside
    /// it under a conflict-copy name (written at the next reconcile); that name.
    pub(super) fn keep_as_copy(
        &mut self,
        path: &str,
        content: Vec<u8>,
        exec: bool,
        store: &mut dyn DocStore,
    ) -> String {
        let live = self.live_view(store);
        let taken: BTreeSet<&String> = live.values().collect();
        let name = self.name.clone();
        let copy = conflict_copy_name(path, &name, &self.device, &|c| {
            taken.contains(&c.to_string())
        });
        self.local_change(&copy, content, exec, store);
        if let Some(f) = self.file_at(&copy)
            && let Some(mut m) = self.files.get_mut(&f)
        {
            // Not on disk yet: the next reconcile writes it.
            m.disk = None;
            self.to_reconcile.insert(f);
        }
        copy
    }

    /// The executable bit of the document of the file at `path` (of the live file meant
    /// for it), as a folder that does not keep modes is taken to hold it; `false` for a
    /// new file.
    fn believed_exec(&mut self, path: &str, store: &mut dyn DocStore) -> bool {
        self.file_at(path)
            .or_else(|| self.live_file_with_path(path))
            .is_some_and(|f| self.with_doc(f, store, |d| Ok(d.exec())).unwrap_or(false))
    }

    /// Whether `file` holds a version that was never on this disk while the disk holds
    /// `hash`, another one.
    fn never_on_disk_here(&self, file: FileId, hash: ContentHash) -> bool {
        self.files.get(&file).is_some_and(|m| {
            m.disk_heads.is_empty() && m.doc_hash.is_some() && m.doc_hash != Some(hash)
        })
    }

    /// An actor of this device's for one edit made on a fork of an older version (see
    /// `FileDoc::write_at`): this run's actor and a counter, so it is never used twice.
    fn fork_actor(&mut self) -> ActorId {
        self.forks += 1;
        let mut bytes = self.actor.to_bytes().to_vec();
        bytes.extend_from_slice(&self.forks.to_be_bytes());
        ActorId::from(bytes)
    }

    /// Makes, on up to `threads` threads, the documents of the batch's saves of paths no
    /// file has yet, as `local_change` would make them of an empty document (this run's
    /// actor, the batch's time); `local_change` takes each when it creates that file.
    /// Making a 4 KB note's document is ≈ 2 ms of automerge (one op per character),
    /// most of what a burst of new files costs the device that sees it.
    pub(super) fn prepare_new_files(&mut self, inputs: &[Input]) {
        // As `local_change` takes the bit: none read on a folder that keeps no modes (a new
        // file's document then has none, and the disk is believed to hold none).
        let keep_bit = !self.config.modes_unkept;
        let mut jobs: Vec<(&str, &[u8], Option<bool>)> = Vec::new();
        for input in inputs {
            if let Input::FileChanged {
                path,
                content,
                exec,
            } = input
                && content.len() as u64 <= self.config.max_file_size
                && valid_path(path).is_ok()
                && self.file_at(path).is_none()
                && self.live_file_with_path(path).is_none()
            {
                jobs.push((path, content, keep_bit.then_some(*exec)));
            }
        }
        if jobs.len() < 2 {
            return;
        }
        let time_s = self.now_ms / 1000;
        let actor = &self.actor;
        // A file whose worker panicked is left to `local_change`.
        let made = on_threads(self.threads, &jobs, |(path, content, exec)| {
            let mut doc = FileDoc::new(actor.clone());
            let made = doc.write_at(&[], path, content, *exec, time_s, actor.clone());
            let hash = file_hash(content, exec.unwrap_or(false));
            ((path.to_string(), hash), (doc, made))
        });
        self.prepared.extend(made.into_iter().flatten());
    }

    /// The files a batch's saves and renames edit that are already synced here (their
    /// documents are loaded ahead: `preload_docs`).
    pub(super) fn edited_files(&mut self, inputs: &[Input]) -> Vec<FileId> {
        let mut files = Vec::new();
        for input in inputs {
            let path = match input {
                Input::FileChanged { path, .. } => path,
                Input::FileRenamed { from, .. } => from,
                _ => continue,
            };
            if let Some(f) = self
                .file_at(path)
                .or_else(|| self.live_file_with_path(path))
            {
                files.push(f);
            }
        }
        files
    }

    pub(super) fn create_file(&mut self, path: &str) -> FileId {
        self.new_file_counter += 1;
        let heads = self.index.heads();
        let mut parts: Vec<Vec<u8>> = vec![
            self.device.0.to_vec(),
            self.actor.to_bytes().to_vec(),
            self.new_file_counter.to_le_bytes().to_vec(),
            path.as_bytes().to_vec(),
        ];
        parts.extend(heads.iter().map(|h| h.0.to_vec()));
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let file = FileId::derive("cue file id", &refs);
        // Only this file's entries in the commit: then the live view stands.
        let alone = self.index.pending_ops() == 0;
        let _ = self.index.set_path(&file, path);
        let _ = self.index.set_origin(&file, &self.device);
        if alone {
            self.commit_index_keeping_view();
        } else {
            self.commit_index();
        }
        self.files.insert(file, FileMeta::default());
        file
    }

    pub(super) fn after_local_change(
        &mut self,
        file: FileId,
        hash: ChangeHash,
        item: Option<Item>,
    ) {
        if let Some(mut m) = self.files.get_mut(&file)
            && let Err(at) = m.pending.binary_search(&hash.0)
        {
            m.pending.insert(at, hash.0);
        }
        self.dirty.insert(file);
        // `None` is not expected (the change was just made); catch-up would carry it.
        if let Some(item) = item {
            let item = self.sealed_now(DocId::File(file), item);
            self.broadcast(item);
        }
        self.dirty.insert(file);
        self.invalidate(Stale::Digest);
    }

    /// The watcher spoke of `path`: a write that found its file gone there waits no more
    /// (see [`Input::WriteFoundGone`]); a later one waits again from the start.
    fn heard_of(&mut self, path: &str) {
        if !self.found_gone.is_empty()
            && let Some(f) = self.file_at(path)
        {
            self.found_gone.remove(&f);
        }
    }

    pub(super) fn local_remove(&mut self, path: &str, store: &mut dyn DocStore) {
        self.heard_of(path);
        if self.state.skipped.remove(path).is_some() {
            self.state_dirty = true;
            self.say_too_large(path, None);
            // A peer's file waiting for the path (see `desired`) can come now.
            if let Some(f) = self.live_file_with_path(path) {
                self.to_reconcile.insert(f);
            }
        }
        let Some(file) = self.file_at(path) else {
            return;
        };
        // The version the user deleted is the one on disk: changes merged since and not
        // written yet (a peer's edit whose write found the file gone, and waited for
        // this) were never seen, and keep the file, as any edit made at once with a
        // deletion does.
        // (Only when the disk is behind the document: a merge that changes no byte
        // moves the document's heads and not `disk_heads`, which are then no less
        // than what the user saw.)
        let on_disk = self
            .files
            .get(&file)
            .filter(|m| m.disk.as_ref().map(|(_, h)| *h) != m.doc_hash)
            .map(|m| m.disk_heads.clone())
            .filter(|h| !h.is_empty());
        let heads = match on_disk {
            Some(h) => from_heads(&h),
            None => self.doc_heads(file, store),
        };
        let deleted = &mut self.state.deleted_here;
        if deleted.len() >= MOVED_FROM_KEPT && !deleted.contains_key(&file) {
            deleted.pop_first();
        }
        deleted.insert(file, to_heads(&heads));
        self.state_dirty = true;
        self.delete_here(file, heads, store);
        let name = self.name.clone();
        self.activity(ActivityKind::Delete, Some(path.to_string()), &name, None);
    }

    /// This device deletes `file`, at the version `heads` (an edit they do not reach
    /// keeps it). Whatever is at its path on disk is no longer its.
    pub(super) fn delete_here(
        &mut self,
        file: FileId,
        heads: Vec<ChangeHash>,
        store: &mut dyn DocStore,
    ) {
        if let Some(mut meta) = self.files.get_mut(&file) {
            meta.disk = None;
        }
        self.dirty.insert(file);
        let alone = self.index.pending_ops() == 0;
        let _ = self.index.set_tombstone(
            &file,
            &Tombstone {
                time_ms: self.now_ms,
                heads,
            },
        );
        // (Its `tombstone_days` count from now here, a deletion of its own: see
        // `purges_before_their_time`.)
        self.tail3.tombs_seen.insert(file, self.now_ms);
        self.tail7.purged.remove(&file);
        self.commit_index_for(file, alone, store);
    }

    /// Two files' names swapped faster than the watcher tells moves apart (`mv a t; mv
    /// b a; mv t b`): the batch saves each known path with exactly what the other held.
    /// Taken as the two renames it is, each file keeping its history and document: as
    /// two rewrites, a peer's edit made meanwhile to one note landed in the other.
    /// Both files must be as the engine last saw them (content on disk = document), and
    /// the folder keep modes (the hash compared holds the executable bit). What each
    /// path holds is then no news (`local_change` finds its file's own content there).
    pub(super) fn take_swaps(&mut self, inputs: &[Input]) {
        if self.config.modes_unkept {
            return;
        }
        // The file believed at each saved path, with what it holds, when that is its
        // document's content; and what the save found there (hashed only for such
        // files: a burst of new files costs nothing more).
        let mut saved: BTreeMap<&str, ContentHash> = BTreeMap::new();
        let mut held: BTreeMap<&str, (FileId, ContentHash)> = BTreeMap::new();
        for input in inputs {
            let Input::FileChanged {
                path,
                content,
                exec,
            } = input
            else {
                continue;
            };
            let p = path.as_str();
            let Some(f) = self.file_at(p) else {
                continue;
            };
            // Where the index puts it, not deleted (a file kept on disk for its twin, or
            // moved by a peer and not yet on disk, is no part of a swap here).
            if self.index.path_of(&f).as_deref() != Some(p) || self.index.tombstone(&f).is_some() {
                continue;
            }
            let Some(m) = self.files.get(&f) else {
                continue;
            };
            if let Some((at, h)) = m.disk.as_ref()
                && at == p
                && m.doc_hash == Some(*h)
            {
                held.insert(p, (f, *h));
                saved.insert(p, file_hash(content, *exec));
            }
        }
        if held.len() < 2 {
            return;
        }
        let by_hash: BTreeMap<ContentHash, &str> =
            held.iter().map(|(p, (_, h))| (*h, *p)).collect();
        let mut swapped: BTreeSet<&str> = BTreeSet::new();
        for (a, (fa, ha)) in &held {
            let Some(b) = by_hash.get(&saved[a]).copied() else {
                continue;
            };
            let (fb, hb) = held[b];
            if b == *a || *ha == hb || saved[b] != *ha || swapped.contains(a) || swapped.contains(b)
            {
                continue;
            }
            swapped.extend([*a, b]);
            let _ = self.index.set_path(fa, b);
            let _ = self.index.set_path(&fb, a);
            for (f, to, h) in [(*fa, b, *ha), (fb, *a, hb)] {
                if let Some(mut m) = self.files.get_mut(&f) {
                    m.disk = Some((to.to_string(), h));
                }
                self.dirty.insert(f);
            }
            let name = self.name.clone();
            for (from, to) in [(*a, b), (b, *a)] {
                self.activity(
                    ActivityKind::Rename,
                    Some(to.to_string()),
                    &name,
                    Some(format!("from {from}")),
                );
            }
        }
        if !swapped.is_empty() {
            // (The live view is made again: both paths moved at once.)
            self.commit_index();
        }
    }

    pub(super) fn local_rename(
        &mut self,
        from: &str,
        to: &str,
        content: Vec<u8>,
        exec: bool,
        store: &mut dyn DocStore,
    ) {
        self.heard_of(from);
        let Some(file) = self.file_at(from) else {
            self.local_change(to, content, exec, store);
            return;
        };
        if valid_path(to).is_err() {
            self.local_remove(from, store);
            return;
        }
        // A file the rename replaced is deleted.
        if let Some(other) = self.file_at(to)
            && other != file
        {
            self.local_remove(to, store);
        }
        let mut alone = self.index.pending_ops() == 0;
        // A file dropped as one with another that is not written here yet stands on
        // disk for it (see `view.rs` `kept_for_twin`): the user renames that one too,
        // or its write would bring the file back under the old name.
        if self
            .index
            .tombstone(&file)
            .is_some_and(|t| t.dropped_as_one())
        {
            let live = self.live_view(store);
            if let Some(twin) = self.twin_to_come(&file, &live) {
                let _ = self.index.set_path(&twin, to);
                alone = false;
            }
        }
        let _ = self.index.set_path(&file, to);
        self.commit_index_for(file, alone, store);
        if let Some(mut m) = self.files.get_mut(&file)
            && let Some((p, _)) = m.disk.as_mut()
        {
            *p = to.to_string();
        }
        self.dirty.insert(file);
        let name = self.name.clone();
        self.activity(
            ActivityKind::Rename,
            Some(to.to_string()),
            &name,
            Some(format!("from {from}")),
        );
        self.local_change(to, content, exec, store);
    }

    /// Bring back the last content of a deleted file, or of every deleted file in a
    /// folder (`.`: the workspace), held deletions included.
    pub fn restore(
        &mut self,
        now_ms: i64,
        path: &str,
        store: &mut dyn DocStore,
    ) -> Result<Vec<Effect>, CommandError> {
        self.now_ms = now_ms;
        let live = self.live_view(store);
        let restored = if path == "." || !self.tombstoned_under(path).is_empty() {
            self.restore_under(path, &live)
        } else if live.values().any(|p| p == path) {
            return Err(CommandError::PathTaken(path.to_string()));
        } else {
            let candidate = self
                .index
                .tombstones()
                .into_iter()
                .filter(|(f, _)| self.index.path_of(f).as_deref() == Some(path))
                .max_by_key(|(_, t)| t.time_ms)
                .map(|(f, _)| f)
                .ok_or_else(|| CommandError::NotDeleted(path.to_string()))?;
            let _ = self.index.clear_tombstone(&candidate);
            vec![(candidate, path.to_string())]
        };
        if restored.is_empty() {
            return Err(CommandError::NotDeleted(path.to_string()));
        }
        self.commit_index();
        let ids: Vec<FileId> = restored.iter().map(|(f, _)| *f).collect();
        self.release_held(&ids);
        // (Deleted again later, a deletion's time counts from then, and it is this
        // device's to purge.)
        for f in &ids {
            self.tail3.tombs_seen.remove(f);
            self.tail7.purged.remove(f);
        }
        let name = self.name.clone();
        for (_, p) in restored {
            self.activity(ActivityKind::Restore, Some(p), &name, None);
        }
        Ok(self.finish(store))
    }

    /// Deleted files (tombstones, held ones included) whose path is in the folder
    /// `dir` (`.`: everywhere), with when each was deleted.
    fn tombstoned_under(&self, dir: &str) -> Vec<(FileId, String, i64)> {
        let prefix = format!("{dir}/");
        self.index
            .tombstones()
            .into_iter()
            .filter_map(|(f, t)| Some((f, self.index.path_of(&f)?, t.time_ms)))
            .filter(|(_, p, _)| dir == "." || p.starts_with(&prefix))
            .collect()
    }

    /// Brings back, at each free path in the folder `dir`, the file deleted there last
    /// whose content is here; the ones brought back. Not a file dropped as one with
    /// another (a tombstone of time 0) whose bytes a live file holds: that one, moved
    /// since. (A member's deletion dressed as such a drop has its bytes nowhere else.)
    fn restore_under(
        &mut self,
        dir: &str,
        live: &BTreeMap<FileId, String>,
    ) -> Vec<(FileId, String)> {
        let taken: BTreeSet<&String> = live.values().collect();
        let live_bytes: BTreeSet<ContentHash> = (live.keys())
            .filter_map(|f| self.files.get(f).and_then(|m| m.doc_hash))
            .collect();
        let mut last: BTreeMap<String, (bool, i64, FileId)> = BTreeMap::new();
        for (f, p, time_ms) in self.tombstoned_under(dir) {
            let hash = self.files.get(&f).and_then(|m| m.doc_hash);
            let elsewhere = hash.is_some_and(|h| live_bytes.contains(&h));
            if taken.contains(&p) || (time_ms == 0 && elsewhere) {
                continue;
            }
            let here = self.files.get(&f).is_some_and(|m| m.doc_hash.is_some());
            let rank = (here, time_ms, f);
            if last.get(&p).is_none_or(|r| *r < rank) {
                last.insert(p, rank);
            }
        }
        let mut restored = Vec::new();
        for (p, (_, _, f)) in last {
            let _ = self.index.clear_tombstone(&f);
            restored.push((f, p));
        }
        restored
    }

    /// `cue sync apply-deletions`: the deletions the guard holds go through here (the
    /// files are removed). How many.
    pub fn apply_deletions(
        &mut self,
        now_ms: i64,
        store: &mut dyn DocStore,
    ) -> (usize, Vec<Effect>) {
        self.now_ms = now_ms;
        let held = std::mem::take(&mut self.tail3.held);
        self.tail3.held_reason = None;
        // Decided: they no longer count toward the guard's window (the next deletion
        // moments later would trip it again on them, and write them back).
        self.recent_remote_deletions.clear();
        self.state_dirty = true;
        self.to_reconcile.extend(held.iter().copied());
        (held.len(), self.finish(store))
    }

    /// Files no longer held (brought back, or edited again).
    pub(super) fn release_held(&mut self, files: &[FileId]) {
        let before = self.tail3.held.len();
        for f in files {
            self.tail3.held.remove(f);
        }
        if self.tail3.held.len() == before {
            return;
        }
        if self.tail3.held.is_empty() {
            self.tail3.held_reason = None;
        }
        self.state_dirty = true;
    }

    /// Mark the conflicts reported for `path` as seen, on every peer, and clear this
    /// device's overlapping-edit notices for it (they are this device's alone).
    pub fn resolve(
        &mut self,
        now_ms: i64,
        path: &str,
        store: &mut dyn DocStore,
    ) -> Result<Vec<Effect>, CommandError> {
        self.now_ms = now_ms;
        let open = self.open_conflicts(store);
        let matching: Vec<&ConflictInfo> = open
            .iter()
            .filter(|c| c.path == path || c.copy.as_deref() == Some(path))
            .collect();
        let overlaps = self.clear_overlaps(path, store);
        if matching.is_empty() {
            if overlaps > 0 {
                return Ok(self.finish(store));
            }
            return Err(CommandError::NoConflict(path.to_string()));
        }
        let records = self.index.conflicts();
        for c in matching {
            if let Some(rec) = records.get(&c.id) {
                let mut rec = rec.clone();
                rec.resolved = true;
                let _ = self.index.put_conflict(&c.id, &rec);
            }
        }
        self.commit_index();
        Ok(self.finish(store))
    }
}
