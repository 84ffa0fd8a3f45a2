//! The live view (which file is at which path) and reconcile, which brings the disk in
//! line with the documents.

use std::borrow::Cow;

use super::*;

/// How many replaced versions are remembered for late writes (as many as the daemon
/// watches replaced files for).
const REPLACED_VERSIONS: usize = 1024;

/// A file that could not be written (or removed) here.
#[derive(Debug)]
pub(super) struct Unwritable {
    path: String,
    reason: String,
    /// When it last failed.
    failed_ms: i64,
    /// Being tried again: a failure comes back within the same call, so an entry still
    /// retrying at the next tick was written.
    retrying: bool,
    /// Not a failure: the file kept changing under the writes; tried again at the next
    /// tick, and not listed.
    deferred: bool,
}

/// What a change made stale (see [`Engine::invalidate`]).
pub(super) enum Stale {
    /// The digest of what is held.
    Digest,
    /// The digest, the live view and every file's place on disk.
    View,
}

/// The `name_key`s of the live view's paths, each with how many files have it.
fn keys_of(live: &BTreeMap<FileId, String>) -> BTreeMap<String, u32> {
    let mut keys = BTreeMap::new();
    for p in live.values() {
        *keys.entry(name_key(p)).or_default() += 1;
    }
    keys
}

/// The live file that owns each disk key (the smallest id), made on first need.
fn owners<'l, 'm>(
    all: &'m mut Option<BTreeMap<Cow<'l, str>, FileId>>,
    live: &'l BTreeMap<FileId, String>,
    fold: bool,
) -> &'m BTreeMap<Cow<'l, str>, FileId> {
    all.get_or_insert_with(|| {
        let mut owner = BTreeMap::new();
        for (f, p) in live {
            owner.entry(files::key(fold, p)).or_insert(*f);
        }
        owner
    })
}

/// Whether a live file at a path of name key `key` would clash with the live files of
/// `keys`, as `settle_path_clashes` compares them: the same name, a folder of a live
/// file, or a live file at one of its folders.
fn clashes(keys: &BTreeMap<String, u32>, key: &str) -> bool {
    let folder = format!("{key}/");
    keys.contains_key(key)
        || keys
            .range(folder.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&folder))
        || key
            .match_indices('/')
            .any(|(i, _)| keys.contains_key(&key[..i]))
}

impl Engine {
    pub(super) fn file_at(&self, path: &str) -> Option<FileId> {
        self.files.at(path)
    }

    /// Drops derived state after a change: the one place caches are invalidated. Any
    /// change to a document makes the digest of everything held stale; a change that can
    /// make a file live or dead, or move it, makes the live view stale and has every file
    /// reconciled with the disk at the next settle.
    pub(super) fn invalidate(&mut self, stale: Stale) {
        self.digest = None;
        if let Stale::View = stale {
            self.index_changed = true;
            self.live_cache = None;
            self.live_keys = None;
        }
    }

    /// A file that just got content (a document adopted with it) is made live without
    /// looking at every file again, when that is all that changed: the live view is at
    /// hand, the file has a path, no tombstone, and its path clashes with no live file's
    /// ([`clashes`]). It joins the view and is reconciled alone. Anything else goes as
    /// any change of the view does (every file reconciled, clashes settled). A first
    /// sync of 10,000 notes reconciled every file once a message: 11.7 s of the engine's
    /// time, 2.6 s without.
    pub(super) fn became_live(&mut self, f: FileId) {
        // A file the index does not name is in no view, nor in the digest.
        if !self.index.knows(&f) {
            return;
        }
        self.invalidate(Stale::Digest);
        let joins = self
            .live_cache
            .as_ref()
            .is_some_and(|live| !live.contains_key(&f))
            && self.files.get(&f).is_some_and(|m| m.doc_hash.is_some())
            && self.index.tombstone(&f).is_none();
        let path = self.index.path_of(&f).filter(|_| joins);
        let Some((mut live, path)) = self.live_cache.take().zip(path) else {
            return self.invalidate(Stale::View);
        };
        let keys = self.live_keys.get_or_insert_with(|| keys_of(&live));
        let key = name_key(&path);
        if clashes(keys, &key) {
            return self.invalidate(Stale::View);
        }
        *keys.entry(key).or_default() += 1;
        Arc::make_mut(&mut live).insert(f, path);
        self.live_cache = Some(live);
        self.to_reconcile.insert(f);
    }

    /// The index entries of `files` changed and nothing else that decides what is live:
    /// a peer's changes that set, moved or removed paths only (no tombstone), or a local
    /// rename or deletion (`commit_index_for`). The live view is updated
    /// for these files alone and they alone are reconciled, when none of their new paths
    /// clashes with a live file's ([`clashes`]) and none left a path another live file
    /// still has (a clash not yet settled, whose other file may now be written).
    /// Anything else goes as any change of the view does. A burst from a peer reconciled
    /// every file of the workspace once a message: at 30,000 files, 1,000 new notes took
    /// the receiver 24 s of the engine's time (docs/benchmarks.md, "Session 14").
    pub(super) fn paths_changed(&mut self, files: &BTreeSet<FileId>, store: &mut dyn DocStore) {
        self.invalidate(Stale::Digest);
        let Some(mut live) = self.live_cache.take() else {
            return self.invalidate(Stale::View);
        };
        // Many files: one walk over all is as cheap.
        if files.len() > 64 + live.len() / 8 {
            return self.invalidate(Stale::View);
        }
        let now: Vec<(FileId, Option<String>)> = files
            .iter()
            .map(|f| {
                let path = self.index.path_of(f);
                let path = path.filter(|_| self.is_live(*f, store));
                (*f, path)
            })
            .collect();
        let keys = self.live_keys.get_or_insert_with(|| keys_of(&live));
        let view = Arc::make_mut(&mut live);
        let mut alone = true;
        for (f, _) in &now {
            if let Some(old) = view.remove(f) {
                let key = name_key(&old);
                let left = keys.get_mut(&key).map_or(0, |n| {
                    *n -= 1;
                    *n
                });
                if left == 0 {
                    keys.remove(&key);
                } else {
                    alone = false;
                }
            }
        }
        for (f, path) in now {
            let Some(path) = path else { continue };
            let key = name_key(&path);
            if !alone || clashes(keys, &key) {
                alone = false;
                break;
            }
            *keys.entry(key).or_default() += 1;
            view.insert(f, path);
        }
        if !alone {
            return self.invalidate(Stale::View);
        }
        self.live_cache = Some(live);
        self.to_reconcile.extend(files.iter().copied());
        // A file kept on disk for its twin waits no more if the twin moved.
        self.to_reconcile
            .extend(self.kept_for_twins.iter().copied());
        // What was in the way of a file that could not be written may have moved: tried
        // again now (marked for a retry and not tried, the next tick took it for written).
        for (f, u) in self.unwritable.iter_mut().filter(|(_, u)| !u.deferred) {
            u.retrying = true;
            self.to_reconcile.insert(*f);
        }
    }

    /// Is this file alive? Deleted files come back when their document holds an edit
    /// the deleter had not seen.
    pub(super) fn is_live(&mut self, file: FileId, store: &mut dyn DocStore) -> bool {
        let tomb = self.index.tombstone(&file);
        self.is_live_with(file, tomb.as_ref(), store)
    }

    pub(super) fn is_live_with(
        &mut self,
        file: FileId,
        tomb: Option<&Tombstone>,
        store: &mut dyn DocStore,
    ) -> bool {
        let Some(meta) = self.files.get(&file) else {
            return false;
        };
        if meta.doc_hash.is_none() {
            return false;
        }
        let Some(tomb) = tomb else {
            return true;
        };
        let mut seen = tomb.heads.clone();
        seen.sort();
        if to_heads(&seen) == meta.heads {
            return false;
        }
        // Live only if we hold everything the deleter saw (else we are merely behind)
        // and something more.
        self.with_doc(file, store, |d| {
            Ok(tomb
                .heads
                .iter()
                .all(|h| d.automerge().get_change_meta_by_hash(h).is_some()))
        })
        .unwrap_or(false)
    }

    /// Live files and their paths. Cached until the index or a file's liveness changes
    /// (both raise `index_changed`), since reconciling after every input needs it.
    /// Shared, not copied: a reconcile, the clash rule and a peer's index changes each
    /// ask for it, and a copy of 10,000 paths each time was most of a receiver's
    /// allocations at that size.
    pub(super) fn live_view(&mut self, store: &mut dyn DocStore) -> Arc<BTreeMap<FileId, String>> {
        if let Some(view) = &self.live_cache {
            return view.clone();
        }
        let tombs = self.index.tombstones();
        let mut out = BTreeMap::new();
        for (file, path) in self.index.paths() {
            if self.is_live_with(file, tombs.get(&file), store) {
                out.insert(file, path);
            }
        }
        let out = Arc::new(out);
        self.live_cache = Some(out.clone());
        out
    }

    /// Two live files at one path, or at paths with one [`name_key`] (equal after Unicode
    /// NFC normalisation and case folding: two names that look the same, or one file on a
    /// case-insensitive filesystem): the smallest id keeps its path; an identical
    /// duplicate is dropped, a different one becomes a conflict copy (docs/reference.md
    /// §2.4, §3.1). Deterministic and the same on every device whatever its filesystem,
    /// so every peer that sees the clash settles it the same way and ends up with the
    /// same names.
    pub(super) fn settle_path_clashes(&mut self, store: &mut dyn DocStore) {
        if self.restore_orphaned_copies(store) {
            self.commit_index();
        }
        let live = self.live_view(store);
        let mut by_key: BTreeMap<String, Vec<FileId>> = BTreeMap::new();
        for (f, p) in live.iter() {
            by_key.entry(name_key(p)).or_default().push(*f);
        }
        let taken: BTreeSet<String> = live.values().map(|p| name_key(p)).collect();
        let copies: BTreeSet<FileId> = self
            .index
            .conflicts()
            .values()
            .filter_map(|c| c.copy.as_ref().map(|(f, _)| *f))
            .collect();
        let mut changed = false;
        let members = self.members_view.clone();
        let mut new_names: BTreeSet<String> = BTreeSet::new();
        for files in by_key.into_values() {
            if files.len() < 2 {
                continue;
            }
            let mut winner = files[0];
            for loser in &files[1..] {
                // Conflict copies are never merged away: they hold a version that lost,
                // and equal bytes at one moment say nothing of later.
                if !copies.contains(loser)
                    && !copies.contains(&winner)
                    && let Some(dropped) = self.one_file(winner, *loser, store)
                {
                    let heads = self.doc_heads(dropped, store);
                    let _ = self
                        .index
                        .set_tombstone(&dropped, &Tombstone { time_ms: 0, heads });
                    if dropped == winner {
                        winner = *loser;
                    }
                    changed = true;
                    continue;
                }
                let path = live[&winner].as_str();
                let origin = self.index.origin(loser).unwrap_or(self.device);
                let origin_name = members
                    .get(&origin)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into());
                // The copy keeps the loser's own spelling of the name.
                let copy = conflict_copy_name(&live[loser], &origin_name, &origin, &|c| {
                    let key = name_key(c);
                    taken.contains(&key) || new_names.contains(&key)
                });
                new_names.insert(name_key(&copy));
                let _ = self.index.set_path(loser, &copy);
                let id = format!("create-{loser}");
                if !self.index.has_conflict(&id) {
                    let rec = ConflictRecord {
                        kind: ConflictKind::Create,
                        file: winner,
                        path: path.to_string(),
                        copy: Some((*loser, copy.clone())),
                        detail: format!("created at the same time on {origin_name}"),
                        time_ms: self.now_ms,
                        resolved: false,
                    };
                    self.record_conflict(&id, &rec, &origin_name, format!("kept as {copy}"));
                }
                changed = true;
            }
        }
        changed |= self.settle_file_folder_clashes(&live, &taken, &mut new_names);
        if changed {
            self.commit_index();
        }
    }

    /// A conflict copy whose kept file was dropped as one with another file (the
    /// tombstone of time 0 that `settle_path_clashes` sets) goes back to the path it was
    /// moved from, when nothing live holds that name now. Two devices can settle one pair
    /// differently (one holds few enough of the file's changes to search its history,
    /// `had_version`, the other not): one drops the copy that had the smaller id as an
    /// earlier version of the edited file, the other moves the edited file aside as a
    /// conflict copy; merged, nothing was left at the path. Safe: a file is dropped as
    /// one with another only when the other holds its bytes. A copy the user renamed, or
    /// whose kept file lives, stays. Every peer decides alike, from the index. Whether a
    /// copy moved.
    fn restore_orphaned_copies(&mut self, store: &mut dyn DocStore) -> bool {
        let records = self.index.conflicts();
        if records.is_empty() {
            return false;
        }
        let live = self.live_view(store);
        let mut taken: BTreeSet<String> = live.values().map(|p| name_key(p)).collect();
        // The folders live files are in, by key: a name that is a folder now is not free
        // (nor is one under a file).
        let folders: BTreeSet<&str> = taken.iter().flat_map(|k| folders_of(k)).collect();
        let folders: BTreeSet<String> = folders.into_iter().map(str::to_string).collect();
        let tombs = self.index.tombstones();
        let mut moved = false;
        for rec in records.into_values() {
            let Some((copy, copy_path)) = &rec.copy else {
                continue;
            };
            let key = name_key(&rec.path);
            let dropped_as_one = tombs.get(&rec.file).is_some_and(Tombstone::dropped_as_one);
            // A file at that name the user deleted since: the name was let go on purpose
            // (the kept file may have been dropped as one with that file, not the copy).
            let let_go = || {
                self.index.paths().into_iter().any(|(f, p)| {
                    f != rec.file
                        && f != *copy
                        && name_key(&p) == key
                        && tombs.get(&f).is_some_and(|t| !t.dropped_as_one())
                })
            };
            if rec.kind != ConflictKind::Create
                || *copy == rec.file
                || live.get(copy) != Some(copy_path)
                || live.contains_key(&rec.file)
                || !dropped_as_one
                || folders.contains(&key)
                || folders_of(&key).any(|f| taken.contains(f))
                || taken.contains(&key)
                || let_go()
            {
                continue;
            }
            taken.insert(key);
            let _ = self.index.set_path(copy, &rec.path);
            moved = true;
        }
        moved
    }

    /// Are two live files at one name one file, and which is to go? Two creations of
    /// the same bytes (a folder copied to two machines) are: the second goes. So are a
    /// copy and a file that held the copy's bytes at an earlier version (the folder
    /// copied, then edited on one machine before they met; a device joining again with
    /// its old folder): the copy goes, and the file with the later edits stays. Nothing
    /// is lost: the copy's bytes are a version of the file kept, and its tombstone names
    /// only the changes seen here, so an edit made to it meanwhile brings it back (then
    /// the two differ and the next settle makes a conflict copy). `None`: two files.
    fn one_file(
        &mut self,
        winner: FileId,
        loser: FileId,
        store: &mut dyn DocStore,
    ) -> Option<FileId> {
        let hash = |f: &FileId| self.files.get(f).and_then(|m| m.doc_hash);
        let (winner_hash, loser_hash) = (hash(&winner), hash(&loser));
        if winner_hash == loser_hash {
            return Some(loser);
        }
        // Each one's bytes, looked for in the other's history.
        let path = self.index.path_of(&winner)?;
        let loser_bytes = self.content_of(loser, store);
        if self.held_earlier(winner, &path, loser_bytes, store) {
            return Some(loser);
        }
        let winner_bytes = self.content_of(winner, store);
        self.held_earlier(loser, &path, winner_bytes, store)
            .then_some(winner)
    }

    /// A file's bytes and executable bit, as its document gives them.
    fn content_of(&mut self, file: FileId, store: &mut dyn DocStore) -> Option<(Vec<u8>, bool)> {
        self.with_doc(file, store, |d| Ok((d.materialize()?, d.exec())))
            .ok()
    }

    /// Did `file` hold `content` (kept at `path`) at an earlier version? Not known is no.
    fn held_earlier(
        &mut self,
        file: FileId,
        path: &str,
        content: Option<(Vec<u8>, bool)>,
        store: &mut dyn DocStore,
    ) -> bool {
        content.is_some_and(|(bytes, exec)| {
            self.with_doc(file, store, |d| Ok(d.had_version(path, &bytes, exec)))
                .ok()
                .flatten()
                == Some(true)
        })
    }

    /// A live file whose path is a folder of other live files (one peer made a folder
    /// where another kept a file): no disk can hold both. The file moves to a conflict-copy
    /// name and the folder's files stay; every peer decides alike, from the index.
    fn settle_file_folder_clashes(
        &mut self,
        live: &BTreeMap<FileId, String>,
        taken: &BTreeSet<String>,
        new_names: &mut BTreeSet<String>,
    ) -> bool {
        // Folders by key: on a case-insensitive disk `Notes/` is the folder `notes` too.
        // (A key's folders are the keys of the path's folders: `/` is kept as it is.)
        let keys: BTreeMap<FileId, String> = live.iter().map(|(f, p)| (*f, name_key(p))).collect();
        let mut folders: BTreeSet<&str> = BTreeSet::new();
        for key in keys.values() {
            for at in folders_of(key) {
                if !folders.insert(at) {
                    break;
                }
            }
        }
        let members = self.members_view.clone();
        let mut changed = false;
        for (f, path) in live {
            if !folders.contains(keys[f].as_str()) || self.index.path_of(f).as_ref() != Some(path) {
                continue;
            }
            let origin = self.index.origin(f).unwrap_or(self.device);
            let origin_name = members
                .get(&origin)
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            let copy = conflict_copy_name(path, &origin_name, &origin, &|c| {
                let key = name_key(c);
                taken.contains(&key) || new_names.contains(&key) || folders.contains(key.as_str())
            });
            new_names.insert(name_key(&copy));
            let _ = self.index.set_path(f, &copy);
            let id = format!("folder-{f}");
            if !self.index.has_conflict(&id) {
                let rec = ConflictRecord {
                    kind: ConflictKind::Create,
                    file: *f,
                    path: path.clone(),
                    copy: Some((*f, copy.clone())),
                    detail: "a folder of the same name was made on another device".into(),
                    time_ms: self.now_ms,
                    resolved: false,
                };
                self.record_conflict(&id, &rec, &origin_name, format!("file kept as {copy}"));
            }
            changed = true;
        }
        changed
    }

    /// Bring the disk in line with the documents for the files in `to_reconcile` (all
    /// files when the index changed).
    pub(super) fn reconcile(&mut self, store: &mut dyn DocStore) {
        if self.index_changed {
            self.settle_path_clashes(store);
            self.to_reconcile.extend(self.files.ids().copied());
            self.index_changed = false;
            // What was in the way (a file where a folder goes) may have moved. (A file
            // put off because it keeps changing waits for the tick: retrying it now could
            // go round the carry-out's feedback without end.)
            for u in self.unwritable.values_mut().filter(|u| !u.deferred) {
                u.retrying = true;
            }
        }
        if self.to_reconcile.is_empty() {
            return;
        }
        let files: Vec<FileId> = std::mem::take(&mut self.to_reconcile).into_iter().collect();
        let live = self.live_view(store);
        let desired = self.desired(&files, &live);
        // Removals and moves away first, so that a path freed in this round can be
        // written in it.
        for (f, want) in &desired {
            self.move_away(*f, want.as_ref().map(|(p, _)| p.as_str()));
        }
        for (f, want) in desired {
            if let Some((path, hash)) = want {
                self.write_to_disk(f, path, hash, &live, store);
            }
        }
        // Content not written in this round (a clash, a tombstone) is read from the
        // document when it is written.
        self.adopted_content.clear();
        self.rendered.clear();
    }

    /// Where each of `files` should be on disk and with what content (`None`: nowhere).
    /// Files left out stay as they are: while a clash is not yet settled in the index (a
    /// peer's concurrent rename can undo our settlement until its next round), only the
    /// file that will keep the path is written there.
    fn desired(
        &mut self,
        files: &[FileId],
        live: &BTreeMap<FileId, String>,
    ) -> BTreeMap<FileId, Option<(String, ContentHash)>> {
        // By disk key: on a disk that ignores case two live files whose names differ only
        // in case (not yet settled by the clash rule) are one place, and only its owner
        // is written there.
        let fold = self.config.case_insensitive;
        // The owner of each disk key, made only when needed: a file whose name key no
        // other live file has (`live_keys`, when at hand) owns its place, and most do;
        // walking every live file for each reconcile was most of its cost at 30,000.
        let mut all_owners: Option<BTreeMap<Cow<'_, str>, FileId>> = None;
        let keys = self.live_keys.take();
        let mut desired = BTreeMap::new();
        for f in files {
            // Ignored here: left as it is on disk, wherever the documents say it goes.
            let on_disk = self.files.get(f).and_then(|m| m.disk.as_ref());
            let ignored = |p: &str| self.state.ignored.contains(p);
            if on_disk.is_some_and(|(p, _)| ignored(p)) || live.get(f).is_some_and(|p| ignored(p)) {
                continue;
            }
            // Too large to sync here: the large file stays as it is, whatever the
            // document holds (its synced content is the one from before it grew), and a
            // file from a peer for that path waits until the large one goes.
            let skipped = |p: &str| self.state.skipped.contains_key(p);
            if on_disk.is_some_and(|(p, _)| skipped(p)) || live.get(f).is_some_and(|p| skipped(p)) {
                continue;
            }
            // A deletion the mass-deletion guard holds: the file stays (or comes back, if
            // it went before the guard tripped) where it was, unless a live file took
            // the path.
            if self.tail3.held.contains(f) && !live.contains_key(f) {
                let path = self.index.path_of(f).filter(|p| {
                    !owners(&mut all_owners, live, fold).contains_key(&files::key(fold, p))
                });
                let hash = self.files.get(f).and_then(|m| m.doc_hash);
                if let (Some(p), Some(h)) = (path, hash)
                    && valid_path(&p).is_ok()
                {
                    desired.insert(*f, Some((p, h)));
                }
                continue;
            }
            // Dropped as one with a file that has its path and is not on this disk yet
            // (its document on its way: a device joining with its folder full, whose
            // files the others settle as theirs): left where it is, holding the same
            // bytes or an earlier version of them, until that file is written over it.
            if on_disk.is_some_and(|(p, _)| self.kept_for_twin(f, p, live)) {
                self.kept_for_twins.insert(*f);
                continue;
            }
            self.kept_for_twins.remove(f);
            let owns = live.get(f).is_none_or(|path| {
                keys.as_ref()
                    .is_some_and(|k| k.get(&name_key(path)) == Some(&1))
                    || owners(&mut all_owners, live, fold).get(&files::key(fold, path)) == Some(f)
            });
            let want = match (live.get(f), self.files.get(f).and_then(|m| m.doc_hash)) {
                (Some(_), _) if !owns => continue,
                (Some(p), Some(_)) if valid_path(p).is_err() => {
                    self.state.counters.bad_paths += 1;
                    None
                }
                (Some(p), Some(h)) if !self.state.skipped.contains_key(p) => Some((p.clone(), h)),
                _ => None,
            };
            desired.insert(*f, want);
        }
        self.live_keys = keys;
        desired
    }

    /// The file `f` was dropped as one with (the clash rule's tombstone of time 0), when
    /// one still stands at `f`'s name (not deleted: live, or its document not here yet;
    /// by `name_key`, as the clash rule compares names). Only then is `f`'s tombstone no
    /// deletion: a tombstone of time 0 alone is any member's to write, and would
    /// otherwise delete past the guard.
    pub(super) fn twin_standing(&self, f: &FileId) -> Option<FileId> {
        if !self.index.tombstone(f)?.dropped_as_one() {
            return None;
        }
        let key = name_key(&self.index.path_of(f)?);
        (self.index.files_with_key(&key).into_iter())
            .find(|g| g != f && self.index.tombstone(g).is_none())
    }

    /// [`Engine::twin_standing`] at `f`'s very path, not written on this disk yet (its
    /// document not here, or not written): `f`, on disk there, stands in for it.
    pub(super) fn twin_to_come(
        &self,
        f: &FileId,
        live: &BTreeMap<FileId, String>,
    ) -> Option<FileId> {
        if !self.index.tombstone(f)?.dropped_as_one() {
            return None;
        }
        let path = self.index.path_of(f)?;
        (self.index.files_at(&path).into_iter()).find(|g| {
            g != f
                && self.index.tombstone(g).is_none()
                && self.files.get(g).is_none_or(|m| {
                    m.doc_hash.is_none() || (live.contains_key(g) && m.disk.is_none())
                })
        })
    }

    /// Is `f`, on disk at `path` (where the index puts it), a file dropped as one with
    /// another that is to be written there ([`Engine::twin_to_come`])?
    fn kept_for_twin(&self, f: &FileId, path: &str, live: &BTreeMap<FileId, String>) -> bool {
        !live.contains_key(f)
            && self.index.path_of(f).as_deref() == Some(path)
            && self.twin_to_come(f, live).is_some()
    }

    /// Removes `f` from where it is on disk if it should be elsewhere (or nowhere).
    fn move_away(&mut self, f: FileId, want: Option<&str>) {
        if self.unwritable.get(&f).is_some_and(|u| !u.retrying) {
            return;
        }
        let Some((cur_path, cur_hash)) = self.files.get(&f).and_then(|m| m.disk.clone()) else {
            return;
        };
        // (On a disk that ignores case, a file in a folder spelled otherwise is in place.)
        if want.is_some_and(|w| self.files.same_on_disk(w, &cur_path)) {
            return;
        }
        // Another record believed at that path with those very bytes: they are (also)
        // its file, removed only if it too should not be there (its own turn). A power
        // cut can leave a file dropped as one with its twin believed where the twin was
        // written over it: removing it removed the twin's file. For a file dropped as
        // one, its twin believed there with any bytes: the twin was written over it, and
        // edited since (a user who then put the first bytes back, the daemon stopped,
        // had the note removed as the dropped file's, on every device).
        let dropped = (self.index.tombstone(&f)).is_some_and(|t| t.dropped_as_one());
        let by_other = if dropped { None } else { Some(&cur_hash) };
        if !self.files.shared(&cur_path, by_other, &f) {
            let held = self.files.get(&f).map(|m| (f, m.disk_heads.clone()));
            self.record_op(&cur_path, Some(cur_hash), f, held);
            self.out_files.push(Effect::RemoveFile {
                path: cur_path,
                expect: Some(cur_hash),
            });
        }
        if let Some(mut m) = self.files.get_mut(&f) {
            m.disk = None;
        }
        self.dirty.insert(f);
    }

    /// Writes `f`'s content at `path` unless it is there already, with the hash of what
    /// is believed to occupy the path now (another file moving away has already been
    /// removed).
    fn write_to_disk(
        &mut self,
        f: FileId,
        path: String,
        hash: ContentHash,
        live: &BTreeMap<FileId, String>,
        store: &mut dyn DocStore,
    ) {
        let current = self.files.get(&f).and_then(|m| m.disk.clone());
        let here = current
            .as_ref()
            .filter(|(p, _)| self.files.same_on_disk(p, &path));
        if here.is_some_and(|(_, h)| *h == hash)
            || self.unwritable.get(&f).is_some_and(|u| !u.retrying)
        {
            return;
        }
        // Written where it is on disk (its spelling, when the disk ignores case).
        let path = here.map_or(path, |(p, _)| p.clone());
        let expect = match here {
            Some((_, h)) => Some(*h),
            None => self.files.on_disk(&path),
        };
        // Whose bytes the write expects to replace, and which version of it they are.
        let held = match here {
            Some(_) => Some(f),
            None => self.file_at(&path),
        }
        .filter(|_| expect.is_some())
        .and_then(|g| self.files.get(&g).map(|m| (g, m.disk_heads.clone())));
        if let Some(other) = self.file_at(&path)
            && other != f
        {
            if live.get(&other) == Some(&path) {
                // A clashing file still sits there; it moves when the clash is settled,
                // and this file is written then.
                return;
            }
            if let Some(mut m) = self.files.get_mut(&other) {
                m.disk = None;
            }
        }
        // Adopted content is never executable (an `Adopt` carries no mode).
        let adopted = self
            .adopted_content
            .remove(&f)
            .filter(|c| content_hash(c) == hash);
        let rendered = self
            .rendered
            .remove(&f)
            .filter(|(c, exec)| file_hash(c, *exec) == hash);
        let (bytes, exec) = match (adopted, rendered) {
            (Some(b), _) => (b, false),
            (None, Some(r)) => r,
            (None, None) => match self.with_doc(f, store, |d| Ok((d.materialize()?, d.exec()))) {
                Ok(b) => b,
                Err(e) => {
                    self.doc_error(&path, &e);
                    return;
                }
            },
        };
        self.record_op(&path, expect, f, held);
        self.out_files.push(Effect::WriteFile {
            path: path.clone(),
            bytes,
            exec,
            expect,
        });
        if let Some(mut m) = self.files.get_mut(&f) {
            let heads = m.heads.clone();
            m.disk = Some((path, hash));
            m.prev_disk_heads = std::mem::replace(&mut m.disk_heads, heads);
        }
        if let Some(replaced) = expect {
            let heads = self.files.get(&f).map(|m| m.prev_disk_heads.clone());
            self.remember_replaced(replaced, heads.unwrap_or_default());
        }
        self.dirty.insert(f);
    }

    /// An effect of this round at `path` for `f`, expecting `expect` there, the bytes of
    /// `held` (see [`DiskOp`]).
    pub(super) fn record_op(
        &mut self,
        path: &str,
        expect: Option<ContentHash>,
        file: FileId,
        held: Option<(FileId, Heads)>,
    ) {
        let op = DiskOp { expect, file, held };
        self.disk_ops.entry(path.to_string()).or_default().push(op);
    }

    /// The latest effect of this round at `path` that expected `expect` there: what a
    /// report of the carry-out about `path` and `expect` is about.
    pub(super) fn disk_op(&self, path: &str, expect: Option<ContentHash>) -> Option<&DiskOp> {
        (self.disk_ops.get(path)?.iter().rev()).find(|op| op.expect == expect)
    }

    /// A write replaces the version `heads`, whose content hashes to `hash`.
    pub(super) fn remember_replaced(&mut self, hash: ContentHash, heads: Heads) {
        if heads.is_empty() {
            return;
        }
        if self.replaced_versions.len() >= REPLACED_VERSIONS {
            self.replaced_versions.pop_front();
        }
        self.replaced_versions.push_back((hash, heads));
    }

    pub(super) fn live_file_with_path(&mut self, path: &str) -> Option<FileId> {
        self.index.files_at(path).into_iter().find(|f| {
            self.files.get(f).is_some_and(|m| m.doc_hash.is_some())
                && self.index.tombstone(f).is_none()
        })
    }

    /// A write or removal at `path` failed: the disk still holds `expect` there. The
    /// file's belief goes back to that (so a restart's scan finds nothing missing), and
    /// it waits in `unwritable` until the index changes or the retry time passes.
    pub(super) fn write_failed(&mut self, path: &str, expect: Option<ContentHash>, reason: String) {
        let Some(f) = self.take_belief_back(path, expect) else {
            return;
        };
        let now = self.now_ms;
        if let Some(u) = self.unwritable.get_mut(&f).filter(|u| !u.deferred) {
            // Failed again on a retry: said once already.
            u.reason = reason;
            u.failed_ms = now;
            u.retrying = false;
            return;
        }
        let name = self.name.clone();
        self.activity(
            ActivityKind::Error,
            Some(path.to_string()),
            &name,
            Some(format!(
                "cannot write: {reason}; kept on the other devices, will retry"
            )),
        );
        let unwritable = Unwritable {
            path: path.to_string(),
            reason,
            failed_ms: now,
            retrying: false,
            deferred: false,
        };
        self.unwritable.insert(f, unwritable);
    }

    /// A write or removal at `path` was put off (the file keeps changing under the
    /// writes): the disk still holds `expect`; tried again at the next tick.
    pub(super) fn write_deferred(&mut self, path: &str, expect: Option<ContentHash>) {
        let Some(f) = self.take_belief_back(path, expect) else {
            return;
        };
        let now = self.now_ms;
        let u = self.unwritable.entry(f).or_insert_with(|| Unwritable {
            path: path.to_string(),
            reason: String::new(),
            failed_ms: now,
            retrying: false,
            deferred: true,
        });
        // A retry put off again waits for the next tick too: reconcile skips it until
        // then, which is what ends the carry-out's feedback.
        u.retrying = false;
    }

    /// See [`Input::WriteFoundGone`].
    pub(super) fn write_found_gone(&mut self, path: &str, expect: Option<ContentHash>) {
        let now = self.now_ms;
        let Some(f) = self.disk_op(path, expect).map(|op| op.file) else {
            return;
        };
        let (first, last) = self.found_gone.get(&f).copied().unwrap_or((now, now));
        // (A report long after the last is another move: its wait starts now.)
        let first = if now - last > 2 * GONE_WAIT_MS {
            now
        } else {
            first
        };
        if now - first > GONE_WAIT_MS {
            // Nothing said of it: written where it was, as a new file.
            self.found_gone.remove(&f);
            if let Some(mut m) = self.files.get_mut(&f)
                && m.disk.as_ref().is_some_and(|(p, _)| p == path)
            {
                m.disk = None;
            }
            self.dirty.insert(f);
            self.to_reconcile.insert(f);
            return;
        }
        self.found_gone.insert(f, (first, now));
        self.write_deferred(path, expect);
    }

    /// The disk still holds `expect` at `path` after an effect there was not carried out:
    /// the beliefs go back to that (the bytes are another file's when the effect was a
    /// write over them: that file is believed there again, not the one written). The
    /// file the effect was for, if it was this round's.
    fn take_belief_back(&mut self, path: &str, expect: Option<ContentHash>) -> Option<FileId> {
        let op = self.disk_op(path, expect)?.clone();
        let f = op.file;
        let other = op.held.filter(|(g, _)| *g != f);
        if let Some(mut m) = self.files.get_mut(&f) {
            let believed_here = m.disk.as_ref().is_some_and(|(p, _)| p == path);
            if believed_here || m.disk.is_none() {
                m.disk = expect
                    .filter(|_| other.is_none())
                    .map(|h| (path.to_string(), h));
                m.disk_heads = m.prev_disk_heads.clone();
            }
        }
        if let (Some((g, heads)), Some(h)) = (other, expect)
            && let Some(mut m) = self.files.get_mut(&g)
            && m.disk.is_none()
        {
            m.disk = Some((path.to_string(), h));
            m.disk_heads = heads;
            self.dirty.insert(g);
            self.to_reconcile.insert(g);
        }
        self.dirty.insert(f);
        Some(f)
    }

    /// Files not written here, and why (status). One being retried has been written
    /// unless it failed again (which clears `retrying`).
    pub(super) fn unwritable_files(&self) -> Vec<(String, String)> {
        self.unwritable
            .values()
            .filter(|u| !u.retrying && !u.deferred)
            .map(|u| (u.path.clone(), u.reason.clone()))
            .collect()
    }

    /// See [`Input::NotOnDisk`].
    pub(super) fn not_on_disk(&mut self, folder: &str) {
        for path in self.files.under(folder) {
            let Some(f) = self.file_at(&path) else {
                continue;
            };
            // No version of it is on this disk: a file found there when it is written
            // is a second creation, kept whole beside it (`never_on_disk_here`).
            if let Some(mut m) = self.files.get_mut(&f)
                && m.disk.as_ref().is_some_and(|(p, _)| *p == path)
            {
                m.disk = None;
                m.disk_heads = Vec::new();
            }
            self.unwritable.remove(&f);
            self.dirty.insert(f);
            self.to_reconcile.insert(f);
        }
        // (Made now, not left for a tick: with no daemon running, the command that
        // forgot the disk is the only call there is.)
        let prefix = format!("{folder}/");
        for (f, u) in &mut self.unwritable {
            if u.path == folder || u.path.starts_with(&prefix) {
                u.retrying = true;
                self.to_reconcile.insert(*f);
            }
        }
    }

    /// [`Input::RetryWrites`]: each failed write is due at the next tick.
    pub(super) fn retry_writes_soon(&mut self) {
        for u in self.unwritable.values_mut() {
            u.failed_ms = u.failed_ms.min(self.now_ms - UNWRITABLE_RETRY_MS);
        }
    }

    /// Files that failed long enough ago are tried again; those tried since the last tick
    /// without failing were written.
    pub(super) fn retry_unwritable(&mut self) {
        let now = self.now_ms;
        self.unwritable.retain(|_, u| !u.retrying);
        for (f, u) in &mut self.unwritable {
            if u.deferred || now - u.failed_ms >= UNWRITABLE_RETRY_MS {
                u.retrying = true;
                self.to_reconcile.insert(*f);
            }
        }
        self.disk_ops.clear();
    }
}

/// A file effect of a round (`Engine::disk_ops`): what it expected at its path, the file
/// it was for, and the file whose bytes it expected there with their version (`None`:
/// nothing was believed there). A write over a file that moved or was deleted, or a
/// removal, replaces another file's bytes than the written one's: what the carry-out
/// finds there is that file's edit.
#[derive(Debug, Clone)]
pub(super) struct DiskOp {
    pub(super) expect: Option<ContentHash>,
    pub(super) file: FileId,
    pub(super) held: Option<(FileId, Heads)>,
}

/// The folders a path (or a name key) is in, innermost first: `a/b/c.md` is in `a/b`
/// and `a`.
fn folders_of(path: &str) -> impl Iterator<Item = &str> {
    let mut at = path;
    std::iter::from_fn(move || {
        let i = at.rfind('/')?;
        at = &at[..i];
        Some(at)
    })
}
