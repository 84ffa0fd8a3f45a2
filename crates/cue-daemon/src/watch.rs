//! The watcher: filesystem events in, [`WatchEvent`]s about synced paths out.
//!
//! Built on notify 8 and a batcher ([`crate::debounce`]) with a short quiet period
//! (config `debounce_ms`, 10 ms by default) that joins rename pairs and drops repeated
//! events without waking while the folder is quiet (notify-debouncer-full, used at
//! first, polls 400 times a second with this debounce). On top of that the
//! watcher translates by *what is on disk now* rather than by the raw event kind, because
//! the kinds mislead: a save through a temporary file and a rename arrives as a removal of
//! the target (marked "override") followed by a creation, vim's backup rename looks like
//! the file moving away, and an event may describe a file that has changed again since.
//! So every path is checked with an `lstat` confined to the workspace before it is
//! reported:
//!
//! - a regular file that exists → [`WatchEvent::Changed`] (the daemon compares content
//!   hashes, so a spurious `Changed` costs a read, never a change);
//! - a path that no longer exists, or is now a symlink or special file →
//!   [`WatchEvent::Removed`]; it means the path *and everything below it* if it was a
//!   folder (a folder moved out of the workspace arrives as a single event);
//! - a rename between two synced names → [`WatchEvent::Renamed`] or
//!   [`WatchEvent::DirRenamed`] (the caller remaps the folder's children); from an ignored
//!   name (an editor's temporary) to a synced one → `Changed(target)`; from a synced name
//!   to an ignored one → `Removed(source)` unless the source exists again;
//! - a folder that appears (moved in, or created with files faster than its watch was
//!   added) → `Changed` for every file in it;
//! - `Access` events, ignored and never-synced paths, symlinks and names that are not
//!   valid [`WorkspacePath`]s → nothing;
//! - an overflowed event queue or a watcher error → [`WatchEvent::Rescan`]; the workspace
//!   root itself removed or moved → [`WatchEvent::RootGone`].
//!
//! A change to `.cueignore` reloads the rules, and is reported as `Changed(".cueignore")`
//! (it is synced) followed by `Rescan`, since paths may have entered or left the rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::debounce::{self, Batch};

use crate::fsio::{FileKind, FsError, WorkspaceFs};
use crate::ignore_rules::IgnoreRules;
use crate::paths::{CUE_TEMP_PREFIX, CUEDECK_DIR, CUEIGNORE_FILE, WorkspacePath, is_never_synced};
use crate::scan::list_files_under;
use cue_core::paths::PathError;

/// What changed in the workspace, in the words of synced paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A regular file was created or modified (or may have been: compare hashes).
    Changed(WorkspacePath),
    /// The path no longer holds a synced file; if it was a folder, nothing below it does.
    Removed(WorkspacePath),
    /// A file moved within the workspace. The target may have replaced an existing file.
    Renamed {
        from: WorkspacePath,
        to: WorkspacePath,
    },
    /// A folder moved within the workspace; every path below `from` is now below `to`.
    DirRenamed {
        from: WorkspacePath,
        to: WorkspacePath,
    },
    /// Events were lost (queue overflow, watcher error, ignore rules changed): compare a
    /// fresh scan with the index.
    Rescan,
    /// The workspace folder itself was removed or moved away (the mass-deletion guard's
    /// first case): do not turn this into deletions.
    RootGone,
    /// The workspace's `.cuedeck` folder (its keys and store) was removed or moved away:
    /// the daemon stops (it would go on syncing on a store nobody can reach).
    StoreGone,
    /// A file whose name cannot be synced (a backslash, a control character) appeared
    /// (with why) or went (`None`): listed under `skipped`, nothing else.
    Unsyncable {
        path: String,
        reason: Option<String>,
    },
}

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path:?}: {source}")]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cannot resolve the workspace path {path:?}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the watcher's thread: {0}")]
    Thread(std::io::Error),
}

/// How long the watcher may hold a batch of events (while a save is under way it waits
/// for the save's close, up to this): a file's removal may be reported that late.
pub fn longest_batch(debounce: Duration) -> Duration {
    (debounce * 10).max(Duration::from_secs(1))
}

/// Watcher settings.
#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// How long a path must be quiet before its events are reported (`debounce_ms`).
    pub debounce: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            debounce: Duration::from_millis(10),
        }
    }
}

/// A running watcher; dropping it stops it (and closes the event channel).
#[derive(Debug)]
pub struct Watcher {
    /// Dropping it closes the batcher's channel, which ends the batcher's thread.
    watcher: RecommendedWatcher,
    rules: Arc<RwLock<IgnoreRules>>,
    root: PathBuf,
    /// Folders it may not watch (no permission to read them): watched once readable.
    unwatched: Arc<Unwatched>,
}

/// Folders the watcher may not watch, and whether one of them had its attributes
/// changed since they were last tried (a `chmod` giving the permission back).
#[derive(Debug, Default)]
struct Unwatched {
    folders: Mutex<BTreeSet<PathBuf>>,
    touched: AtomicBool,
}

impl Watcher {
    /// Watches the workspace at `root` recursively. Events arrive on the returned channel;
    /// once this returns, every later change is reported.
    pub fn start(
        root: &Path,
        rules: IgnoreRules,
        config: WatchConfig,
    ) -> Result<(Watcher, Receiver<Vec<WatchEvent>>), WatchError> {
        let root = root.canonicalize().map_err(|source| WatchError::Root {
            path: root.to_owned(),
            source,
        })?;
        let (tx, rx) = channel();
        let rules = Arc::new(RwLock::new(rules));
        let mut translator = Translator {
            fs: WorkspaceFs::open(&root)?,
            root: root.clone(),
            rules: rules.clone(),
            tx,
            out: Default::default(),
            store: store_identity(&root.join(CUEDECK_DIR)),
            unwatched: Arc::new(Unwatched::default()),
        };
        let unwatched = translator.unwatched.clone();
        let debounce = config.debounce.max(Duration::from_millis(1));
        let (raw_tx, raw_rx) = channel();
        let mut watcher = RecommendedWatcher::new(
            raw_tx,
            // Never descend through a symlinked folder: its contents are not ours.
            notify::Config::default().with_follow_symlinks(false),
        )
        .map_err(|source| WatchError::Notify {
            path: root.clone(),
            source,
        })?;
        // A file written without pause is still reported every second. (Not sooner: a
        // folder's removal must arrive as one batch for the mass-deletion guard.)
        let max = longest_batch(debounce);
        let (synced_root, synced_rules) = (root.clone(), rules.clone());
        let synced = move |abs: &Path| {
            relative(&synced_root, abs).is_some_and(|rel| {
                !synced_rules
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .is_ignored(rel, false)
            })
        };
        debounce::spawn(raw_rx, debounce, max, synced, move |batch| {
            translator.handle(batch)
        })
        .map_err(WatchError::Thread)?;
        if let Err(source) = watcher.watch(&root, RecursiveMode::Recursive) {
            // notify stops at the first folder below the root it may not watch (a mode
            // taking the permission to read it away): the others are watched one by one,
            // and those it may not are left to the scan, which lists their files as
            // unreadable (never removed), until a `chmod` gives the permission back.
            // (Any other error, the system's limit of watches reached among them, still
            // stops the start: a folder left unwatched would have its saves go unseen.)
            if !denied(&source)
                || std::fs::read_dir(&root).is_err()
                || !watch_each(&mut watcher, &root, &unwatched)
            {
                return Err(WatchError::Notify {
                    path: root.clone(),
                    source,
                });
            }
        }
        Ok((
            Watcher {
                watcher,
                rules,
                root,
                unwatched,
            },
            rx,
        ))
    }

    /// Watches the folders it could not watch that may be read now (a folder's
    /// attributes changed since it last tried). Whether any is watched now: the
    /// workspace is then scanned again (what changed in them before).
    pub fn watch_unwatched(&mut self) -> bool {
        if !self.unwatched.touched.swap(false, Ordering::Relaxed) {
            return false;
        }
        let folders = std::mem::take(
            &mut *(self.unwatched.folders.lock()).unwrap_or_else(|p| p.into_inner()),
        );
        let mut any = false;
        for folder in folders {
            if std::fs::symlink_metadata(&folder).is_ok_and(|m| m.is_dir()) {
                any |= watch_each(&mut self.watcher, &folder, &self.unwatched);
            }
        }
        any
    }

    /// The ignore rules in force now (reloaded when `.cueignore` changes).
    pub fn rules(&self) -> IgnoreRules {
        self.rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Watches the folder `rel` again, and everything below it: a disk was mounted on it
    /// or unmounted from it, and what the watcher watched there was the folder under the
    /// disk, or the disk (inotify holds a watch by inode, not by path: a bind mount's
    /// source stays watched after the unmount, its events reported as the workspace's).
    /// Errors are logged: the next start's scan sees what the watcher then misses.
    pub fn watch_again(&mut self, rel: &str) {
        let abs = self.root.join(rel);
        // (Every watch below it goes too.)
        let _ = self.watcher.unwatch(&abs);
        if let Err(error) = self.watcher.watch(&abs, RecursiveMode::Recursive) {
            tracing::warn!(%error, path = rel, "cannot watch a disk mounted in the workspace");
        }
    }

    /// The canonical workspace root the watcher reports paths against.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Whether notify failed for want of the permission to read a folder.
fn denied(error: &notify::Error) -> bool {
    matches!(&error.kind, notify::ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Watches `folder` and every folder below it (not through links) one by one, each
/// recursively (so that folders made in it later are watched too); those it may not read
/// go to `unwatched`. Whether `folder` itself is watched.
fn watch_each(watcher: &mut RecommendedWatcher, folder: &Path, unwatched: &Unwatched) -> bool {
    let mut watched = false;
    let mut todo = vec![folder.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            (unwatched.folders.lock())
                .unwrap_or_else(|p| p.into_inner())
                .insert(dir);
            continue;
        };
        // (Below it, it stops again at a folder it may not read: reached here, below.)
        if let Err(error) = watcher.watch(&dir, RecursiveMode::Recursive)
            && !denied(&error)
        {
            tracing::warn!(%error, folder = %dir.display(), "cannot watch a folder");
        }
        watched |= dir == folder;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(entry.path());
            }
        }
    }
    watched
}

/// The path relative to the root, if it is below the root and not a never-synced name
/// (the store's folder among them).
fn relative<'a>(root: &Path, abs: &'a Path) -> Option<&'a str> {
    let rel = abs.strip_prefix(root).ok()?.to_str()?;
    (!rel.is_empty() && !is_never_synced(rel)).then_some(rel)
}

/// Runs on the batcher's thread: turns debounced notify events into [`WatchEvent`]s.
struct Translator {
    fs: WorkspaceFs,
    root: PathBuf,
    rules: Arc<RwLock<IgnoreRules>>,
    /// One message a batch: what happened together is judged together (the
    /// mass-deletion guard counts a batch's removals).
    tx: Sender<Vec<WatchEvent>>,
    out: std::cell::RefCell<Vec<WatchEvent>>,
    /// Folders the watcher may not watch (see [`Watcher::watch_unwatched`]).
    unwatched: Arc<Unwatched>,
    /// The `.cuedeck` folder the daemon opened (device, inode): another one put in its
    /// place (removed and copied back from a backup within one batch) is not its store.
    store: Option<(u64, u64)>,
}

/// The device and inode of the folder at `path`, not following a link.
fn store_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// What is at a path now, as far as syncing goes.
enum Present {
    File(WorkspacePath),
    Dir(WorkspacePath),
    /// Nothing, or a symlink or special file: nothing cue syncs.
    Gone(WorkspacePath),
}

impl Translator {
    fn handle(&mut self, batch: Batch) {
        // Folders renamed in this batch. An earlier event below the old name happened
        // before the move (`echo >> d/a.md && mv d e`): looked at now it would find
        // nothing there, a removal, when the file moved with its folder. The folder's
        // rename reads every file now under the new name instead ([`WatchEvent::DirRenamed`]).
        let moved: Vec<(usize, &Path)> = batch
            .events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match (e.kind, e.paths.as_slice()) {
                (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), [from, to, ..])
                    if std::fs::symlink_metadata(to).is_ok_and(|m| m.is_dir()) =>
                {
                    Some((i, from.as_path()))
                }
                _ => None,
            })
            .collect();
        for (i, event) in batch.events.iter().enumerate() {
            let before_its_move = moved.iter().any(|(j, from)| {
                i < *j
                    && !event.paths.is_empty()
                    && event.paths.iter().all(|p| p != from && p.starts_with(from))
            });
            if !before_its_move {
                self.translate(event);
            }
        }
        if !batch.errors.is_empty() {
            for e in &batch.errors {
                tracing::warn!("watcher error, rescanning: {e}");
            }
            self.send(WatchEvent::Rescan);
        }
        let out = self.out.take();
        if !out.is_empty() {
            // The receiver is gone only when the daemon is shutting down.
            let _ = self.tx.send(out);
        }
    }

    fn send(&self, event: WatchEvent) {
        self.out.borrow_mut().push(event);
    }

    fn translate(&mut self, event: &notify::Event) {
        if event.need_rescan() {
            self.send(WatchEvent::Rescan);
            return;
        }
        let Some(first) = event.paths.first() else {
            return;
        };
        match event.kind {
            EventKind::Access(_) | EventKind::Other | EventKind::Any => {}
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match event.paths.get(1) {
                Some(to) => self.renamed(first, to),
                None => self.check(first),
            },
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_)
                if *first == self.root =>
            {
                self.send(WatchEvent::RootGone);
            }
            // A folder's own attributes changed (chmod, touch): its files did not. (One
            // the watcher may not watch may be read now: it tries again.)
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) if first.is_dir() => {
                let folders = (self.unwatched.folders.lock()).unwrap_or_else(|p| p.into_inner());
                if folders.iter().any(|f| f == first || f.starts_with(first)) {
                    self.unwatched.touched.store(true, Ordering::Relaxed);
                }
            }
            // Creations, modifications, removals, moves in and out: what matters is what
            // is there now.
            _ => self.check(first),
        }
    }

    fn rel<'a>(&self, abs: &'a Path) -> Option<&'a str> {
        relative(&self.root, abs)
    }

    fn is_ignored(&self, rel: &WorkspacePath, is_dir: bool) -> bool {
        self.rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_ignored(rel.as_str(), is_dir)
    }

    /// Looks at what is at `rel` now; `None` for a name cue does not sync.
    fn present(&self, rel: &str) -> Option<Present> {
        let path = match WorkspacePath::parse(rel) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("not syncing {rel:?}: {e}");
                // A name no synced file can have: said in status while it is there.
                let is_file = std::fs::symlink_metadata(self.root.join(rel))
                    .is_ok_and(|m| m.file_type().is_file());
                let ignored = self
                    .rules
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .is_ignored(rel, false);
                let a_name = !matches!(
                    e,
                    crate::paths::PathError::Invalid(PathError::Reserved { .. } | PathError::Empty)
                );
                if a_name && !ignored && !rel.split('/').any(|c| c.starts_with(CUE_TEMP_PREFIX)) {
                    self.send(WatchEvent::Unsyncable {
                        path: rel.to_string(),
                        reason: is_file.then(|| format!("name cannot be synced: {e}")),
                    });
                }
                return None;
            }
        };
        let kind = match self.fs.stat(&path) {
            Ok(Some(st)) => st.kind,
            Ok(None) => return Some(Present::Gone(path)),
            // A folder on the way became a symlink or a file: nothing synced is there.
            Err(FsError::SymlinkOnTheWay { .. } | FsError::NotADirectory { .. }) => {
                return Some(Present::Gone(path));
            }
            Err(e) => {
                tracing::warn!("cannot look at {rel:?}, rescanning: {e}");
                self.send(WatchEvent::Rescan);
                return None;
            }
        };
        Some(match kind {
            FileKind::Regular => Present::File(path),
            FileKind::Directory => Present::Dir(path),
            _ => Present::Gone(path),
        })
    }

    /// Reports whatever is at `abs` now.
    fn check(&mut self, abs: &Path) {
        if abs == self.root {
            if !self.root.is_dir() {
                self.send(WatchEvent::RootGone);
            }
            return;
        }
        if abs == self.root.join(CUEDECK_DIR) {
            // (None at the start: a watcher of a folder with no store yet, in tests.)
            if self.store.is_some() && store_identity(abs) != self.store {
                self.send(WatchEvent::StoreGone);
            }
            return;
        }
        let Some(rel) = self.rel(abs) else {
            return self.check_not_utf8(abs);
        };
        match self.present(rel) {
            Some(Present::File(path)) if !self.is_ignored(&path, false) => {
                self.send(WatchEvent::Changed(path.clone()));
                self.maybe_reload(&path);
            }
            Some(Present::Dir(path)) if !self.is_ignored(&path, true) => {
                // Whatever stood here before is gone unless found again below: a file
                // of the folder's name (`rm x; mkdir x`), or a folder moved away with
                // another put in its place (`mv d ~/old && mkdir d`). The driver checks
                // the removal against the disk; the files in the folder are reported next
                // (or the folder, listed, when it is too deep to walk or watch).
                self.send(WatchEvent::Removed(path.clone()));
                self.expand(&path)
            }
            Some(Present::Gone(path)) if !self.is_ignored(&path, false) => {
                self.send(WatchEvent::Removed(path.clone()));
                self.maybe_reload(&path);
            }
            _ => {}
        }
    }

    /// A name that is not UTF-8 ([`relative`] gives none): listed in status while a file
    /// has it, under its lossy spelling and reason, as the start-up scan lists it.
    fn check_not_utf8(&self, abs: &Path) {
        let Some(rel) = abs
            .strip_prefix(&self.root)
            .ok()
            .filter(|r| r.to_str().is_none())
        else {
            return;
        };
        let lossy = rel.to_string_lossy().into_owned();
        let ignored = self
            .rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_ignored(&lossy, false);
        if ignored
            || is_never_synced(&lossy)
            || lossy.split('/').any(|c| c.starts_with(CUE_TEMP_PREFIX))
        {
            return;
        }
        let is_file = std::fs::symlink_metadata(abs).is_ok_and(|m| m.file_type().is_file());
        let e = crate::paths::PathError::NotUtf8(lossy.clone());
        self.send(WatchEvent::Unsyncable {
            path: lossy,
            reason: is_file.then(|| format!("name cannot be synced: {e}")),
        });
    }

    /// Reports every file below a folder that appeared.
    fn expand(&self, dir: &WorkspacePath) {
        if self.is_ignored(dir, true) {
            return;
        }
        let rules = self
            .rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let (files, unreadable) = list_files_under(&self.root, &rules, dir);
        for file in files {
            self.send(WatchEvent::Changed(file));
        }
        for skipped in unreadable {
            self.send(WatchEvent::Unsyncable {
                path: skipped.path,
                reason: Some(skipped.reason.to_string()),
            });
        }
    }

    fn renamed(&mut self, from_abs: &Path, to_abs: &Path) {
        if from_abs == self.root {
            self.send(WatchEvent::RootGone);
            return;
        }
        if from_abs == self.root.join(CUEDECK_DIR) {
            self.check(from_abs);
        }
        let from = self
            .rel(from_abs)
            .and_then(|r| WorkspacePath::parse(r).ok());
        let Some(to_rel) = self.rel(to_abs) else {
            // Renamed to a never-synced name (or one that is not UTF-8, listed): the
            // source is gone unless recreated since.
            self.check(from_abs);
            self.check_not_utf8(to_abs);
            return;
        };
        match self.present(to_rel) {
            None => self.check(from_abs),
            Some(Present::Gone(to)) => {
                // Renamed again since (`mv a b; mv b c` in one batch, a file or a folder):
                // still a move, between synced names and with nothing at the old name. The
                // driver carries it with what it knows, and the move from `to` follows.
                // (Told as the removals of both ends, the note split in two: a deletion,
                // and a new file at `c` with a history of its own.)
                let synced =
                    |p: &WorkspacePath| !self.is_ignored(p, false) && !self.is_ignored(p, true);
                match from.filter(|f| synced(f) && synced(&to)) {
                    Some(from) if matches!(self.present(from.as_str()), Some(Present::Gone(_))) => {
                        self.send(WatchEvent::Renamed { from, to });
                    }
                    // The target is now a symlink, or either end is not synced: both
                    // ends as they are now.
                    _ => {
                        self.check(from_abs);
                        self.check(to_abs);
                    }
                }
            }
            Some(Present::File(to)) => {
                let to_synced = !self.is_ignored(&to, false);
                match from.filter(|f| !self.is_ignored(f, false)) {
                    Some(from) if to_synced => {
                        self.send(WatchEvent::Renamed {
                            from: from.clone(),
                            to: to.clone(),
                        });
                        self.maybe_reload(&from);
                        self.maybe_reload(&to);
                        // Something may already stand at the old name again.
                        if matches!(
                            self.present(from.as_str()),
                            Some(Present::File(_) | Present::Dir(_))
                        ) {
                            self.check(from_abs);
                        }
                    }
                    // An editor's temporary renamed over the file: a save.
                    None if to_synced => {
                        self.send(WatchEvent::Changed(to.clone()));
                        self.maybe_reload(&to);
                    }
                    Some(_) => self.check(from_abs),
                    None => {}
                }
            }
            Some(Present::Dir(to)) => {
                let to_synced = !self.is_ignored(&to, true);
                match from.filter(|f| !self.is_ignored(f, true)) {
                    Some(from) if to_synced => {
                        self.send(WatchEvent::DirRenamed {
                            from: from.clone(),
                            to,
                        });
                        if matches!(
                            self.present(from.as_str()),
                            Some(Present::File(_) | Present::Dir(_))
                        ) {
                            self.check(from_abs);
                        }
                    }
                    None if to_synced => self.expand(&to),
                    Some(_) => self.check(from_abs),
                    None => {}
                }
            }
        }
    }

    /// After an event about `.cueignore`: reload the rules and ask for a rescan if they
    /// changed.
    fn maybe_reload(&self, path: &WorkspacePath) {
        if path.as_str() != CUEIGNORE_FILE {
            return;
        }
        let mut rules = self
            .rules
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match rules.reload() {
            Ok(false) => {}
            Ok(true) => {
                drop(rules);
                self.send(WatchEvent::Rescan);
            }
            Err(e) => tracing::warn!("keeping the previous ignore rules: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(10);

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        watcher: Watcher,
        rx: Receiver<Vec<WatchEvent>>,
        /// Events of a batch received but not yet looked at.
        queued: std::cell::RefCell<std::collections::VecDeque<WatchEvent>>,
    }

    fn p(s: &str) -> WorkspacePath {
        WorkspacePath::parse(s).unwrap()
    }

    /// A workspace with `files` in it, watched.
    fn fixture(files: &[(&str, &str)]) -> Fixture {
        fixture_then(files, |_| {})
    }

    /// A workspace with `files` in it, `before` done to it, then watched.
    fn fixture_then(files: &[(&str, &str)], before: impl FnOnce(&Path)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let root = root.canonicalize().unwrap();
        for (path, content) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        before(&root);
        let rules = IgnoreRules::load(&root).unwrap();
        let (watcher, rx) = Watcher::start(&root, rules, WatchConfig::default()).unwrap();
        Fixture {
            _dir: dir,
            root,
            outside,
            watcher,
            rx,
            queued: Default::default(),
        }
    }

    impl Fixture {
        /// Receives events until one equals `want`; returns everything received up to and
        /// including it. Panics at the deadline.
        fn wait_for(&self, want: &WatchEvent) -> Vec<WatchEvent> {
            let deadline = Instant::now() + DEADLINE;
            let mut seen = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let queued = self.queued.borrow_mut().pop_front();
                let next = match queued {
                    Some(e) => Ok(e),
                    None => self.rx.recv_timeout(left).map(|batch| {
                        let mut q = self.queued.borrow_mut();
                        q.extend(batch);
                        q.pop_front().expect("batches are never empty")
                    }),
                };
                match next {
                    Ok(e) => {
                        let done = e == *want;
                        seen.push(e);
                        if done {
                            return seen;
                        }
                    }
                    Err(_) => panic!("no {want:?} before the deadline; saw {seen:?}"),
                }
            }
        }

        /// Writes a sentinel file and waits for it: every earlier event has been
        /// delivered by then. Returns the events before the sentinel's.
        fn settle(&self) -> Vec<WatchEvent> {
            std::fs::write(self.root.join("sentinel.md"), b"s").unwrap();
            let mut seen = self.wait_for(&WatchEvent::Changed(p("sentinel.md")));
            seen.pop();
            seen
        }
    }

    fn mentions(events: &[WatchEvent], path: &str) -> bool {
        events.iter().any(|e| match e {
            WatchEvent::Changed(p) | WatchEvent::Removed(p) => p.as_str() == path,
            WatchEvent::Renamed { from, to } | WatchEvent::DirRenamed { from, to } => {
                from.as_str() == path || to.as_str() == path
            }
            _ => false,
        })
    }

    #[test]
    fn in_place_write() {
        let f = fixture(&[("a.md", "one")]);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(f.root.join("a.md"))
            .unwrap();
        file.write_all(b"two").unwrap();
        drop(file);
        f.wait_for(&WatchEvent::Changed(p("a.md")));
    }

    #[test]
    fn new_file_in_new_folder() {
        let f = fixture(&[]);
        std::fs::create_dir_all(f.root.join("x/y")).unwrap();
        std::fs::write(f.root.join("x/y/new.md"), b"n").unwrap();
        f.wait_for(&WatchEvent::Changed(p("x/y/new.md")));
    }

    #[test]
    fn save_through_temporary_and_rename() {
        let f = fixture(&[("a.md", "one")]);
        for tmp in [".a.md.Xy12Zq", "a.md.tmp", ".cue-tmp-1-1"] {
            std::fs::write(f.root.join(tmp), b"two").unwrap();
            std::fs::rename(f.root.join(tmp), f.root.join("a.md")).unwrap();
            let seen = f.wait_for(&WatchEvent::Changed(p("a.md")));
            assert!(
                !seen
                    .iter()
                    .any(|e| matches!(e, WatchEvent::Removed(_) | WatchEvent::Renamed { .. })),
                "{tmp}: {seen:?}"
            );
            let rest = f.settle();
            assert!(
                !rest.contains(&WatchEvent::Removed(p("a.md"))),
                "{tmp}: {rest:?}"
            );
            assert!(!mentions(&rest, tmp), "{rest:?}");
        }
    }

    #[test]
    fn sed_in_place() {
        let f = fixture(&[("a.md", "hello world\n")]);
        let status = std::process::Command::new("sed")
            .args(["-i", "s/world/there/", "a.md"])
            .current_dir(&f.root)
            .status();
        match status {
            Ok(s) => assert!(s.success()),
            Err(e) => {
                eprintln!("sed not available, skipping: {e}");
                return;
            }
        }
        let mut seen = f.wait_for(&WatchEvent::Changed(p("a.md")));
        seen.extend(f.settle());
        assert!(!seen.contains(&WatchEvent::Removed(p("a.md"))), "{seen:?}");
        assert!(
            seen.iter()
                .all(|e| matches!(e, WatchEvent::Changed(p) if p.as_str() == "a.md")),
            "only the file itself: {seen:?}"
        );
    }

    #[test]
    fn vim_style_backup_save() {
        // vim with `backupcopy=no`: move the file to its backup, write a new file, delete
        // the backup. Whatever the timing, the last word about the file is `Changed`.
        let f = fixture(&[("a.md", "one")]);
        std::fs::write(f.root.join("4913"), b"").unwrap();
        std::fs::remove_file(f.root.join("4913")).unwrap();
        std::fs::rename(f.root.join("a.md"), f.root.join("a.md~")).unwrap();
        std::fs::write(f.root.join("a.md"), b"two").unwrap();
        std::fs::remove_file(f.root.join("a.md~")).unwrap();
        let seen = f.settle();
        let about_a: Vec<_> = seen
            .iter()
            .filter(|e| mentions(std::slice::from_ref(e), "a.md"))
            .collect();
        assert_eq!(
            about_a.last(),
            Some(&&WatchEvent::Changed(p("a.md"))),
            "{seen:?}"
        );
        assert!(
            !mentions(&seen, "a.md~") && !mentions(&seen, "4913"),
            "{seen:?}"
        );
    }

    #[test]
    fn burst_of_files() {
        let f = fixture(&[]);
        std::fs::create_dir(f.root.join("many")).unwrap();
        for i in 0..300 {
            std::fs::write(f.root.join(format!("many/f{i}.md")), b"x").unwrap();
        }
        let seen = f.settle();
        for i in 0..300 {
            assert!(
                seen.contains(&WatchEvent::Changed(p(&format!("many/f{i}.md")))),
                "f{i} missing"
            );
        }
    }

    #[test]
    fn touching_a_folder_reports_nothing() {
        let f = fixture(&[("d/a.md", "a"), ("d/b.md", "b")]);
        std::fs::set_permissions(
            f.root.join("d"),
            std::os::unix::fs::PermissionsExt::from_mode(0o750),
        )
        .unwrap();
        let seen = f.settle();
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn delete() {
        let f = fixture(&[("a.md", "one"), ("d/b.md", "b")]);
        std::fs::remove_file(f.root.join("a.md")).unwrap();
        f.wait_for(&WatchEvent::Removed(p("a.md")));
        std::fs::remove_dir_all(f.root.join("d")).unwrap();
        f.wait_for(&WatchEvent::Removed(p("d")));
    }

    #[test]
    fn rename_file() {
        let f = fixture(&[("a.md", "one")]);
        std::fs::rename(f.root.join("a.md"), f.root.join("b.md")).unwrap();
        f.wait_for(&WatchEvent::Renamed {
            from: p("a.md"),
            to: p("b.md"),
        });
    }

    /// `mv a b; mv b c` (a file, then a folder), both made before the watcher looks:
    /// two moves, never the removal of `a` (the driver would delete the note and take `c`
    /// for a new one).
    #[test]
    fn rename_twice_before_the_watcher_looks() {
        let f = fixture(&[("a.md", "one"), ("d/x.md", "x")]);
        for (a, b, c) in [("a.md", "b.md", "c.md"), ("d", "e", "g")] {
            std::fs::rename(f.root.join(a), f.root.join(b)).unwrap();
            std::fs::rename(f.root.join(b), f.root.join(c)).unwrap();
            let mut seen = f.wait_for(&WatchEvent::Renamed {
                from: p(a),
                to: p(b),
            });
            seen.extend(f.settle());
            assert!(!seen.contains(&WatchEvent::Removed(p(a))), "{seen:?}");
            let second = [
                WatchEvent::Renamed {
                    from: p(b),
                    to: p(c),
                },
                WatchEvent::DirRenamed {
                    from: p(b),
                    to: p(c),
                },
            ];
            assert!(second.iter().any(|e| seen.contains(e)), "{seen:?}");
        }
    }

    #[test]
    fn rename_folder() {
        let f = fixture(&[("d/x.md", "x"), ("d/e/y.md", "y")]);
        std::fs::rename(f.root.join("d"), f.root.join("renamed")).unwrap();
        f.wait_for(&WatchEvent::DirRenamed {
            from: p("d"),
            to: p("renamed"),
        });
        // Watches follow the folder: a later edit inside is reported at its new path.
        std::fs::write(f.root.join("renamed/e/y.md"), b"y2").unwrap();
        f.wait_for(&WatchEvent::Changed(p("renamed/e/y.md")));
    }

    #[test]
    fn move_out_and_in() {
        let f = fixture(&[("a.md", "one"), ("d/x.md", "x")]);
        std::fs::rename(f.root.join("a.md"), f.outside.join("a.md")).unwrap();
        f.wait_for(&WatchEvent::Removed(p("a.md")));
        std::fs::rename(f.root.join("d"), f.outside.join("d")).unwrap();
        f.wait_for(&WatchEvent::Removed(p("d")));

        std::fs::create_dir_all(f.outside.join("m/n")).unwrap();
        std::fs::write(f.outside.join("m/one.md"), b"1").unwrap();
        std::fs::write(f.outside.join("m/n/two.md"), b"2").unwrap();
        std::fs::rename(f.outside.join("m"), f.root.join("m")).unwrap();
        let mut seen = f.wait_for(&WatchEvent::Changed(p("m/n/two.md")));
        seen.extend(f.settle());
        assert!(
            seen.contains(&WatchEvent::Changed(p("m/one.md"))),
            "{seen:?}"
        );
    }

    #[test]
    fn ignored_and_never_synced_paths_are_silent() {
        let f = fixture(&[(".cueignore", "*.log\nbuild/\n")]);
        std::fs::write(f.root.join("x.log"), b"log").unwrap();
        std::fs::create_dir_all(f.root.join("build/deep")).unwrap();
        std::fs::write(f.root.join("build/deep/out.md"), b"o").unwrap();
        std::fs::create_dir_all(f.root.join(".git")).unwrap();
        std::fs::write(f.root.join(".git/HEAD"), b"h").unwrap();
        std::fs::create_dir_all(f.root.join(".cuedeck")).unwrap();
        std::fs::write(f.root.join(".cuedeck/store.sqlite3"), b"s").unwrap();
        std::fs::write(f.root.join("notes.md.swp"), b"vim").unwrap();
        let seen = f.settle();
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn symlinks_are_not_reported() {
        let f = fixture(&[]);
        std::fs::write(f.outside.join("target.md"), b"t").unwrap();
        std::os::unix::fs::symlink(f.outside.join("target.md"), f.root.join("link.md")).unwrap();
        std::os::unix::fs::symlink(&f.outside, f.root.join("dirlink")).unwrap();
        let seen = f.settle();
        assert!(
            !seen.iter().any(|e| matches!(e, WatchEvent::Changed(_))),
            "{seen:?}"
        );
        // Writes in the folder a symlink points to are not ours.
        std::fs::write(f.outside.join("other.md"), b"o").unwrap();
        let seen = f.settle();
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[test]
    fn cueignore_change_reloads_rules() {
        let f = fixture(&[]);
        std::fs::write(f.root.join(".cueignore"), b"*.log\n").unwrap();
        let seen = f.wait_for(&WatchEvent::Rescan);
        assert!(
            seen.contains(&WatchEvent::Changed(p(".cueignore"))),
            "{seen:?}"
        );
        assert!(f.watcher.rules().is_ignored("a.log", false));
        std::fs::write(f.root.join("a.log"), b"now ignored").unwrap();
        let seen = f.settle();
        assert!(!mentions(&seen, "a.log"), "{seen:?}");
    }

    #[test]
    fn root_removed() {
        let f = fixture(&[("a.md", "a")]);
        std::fs::rename(&f.root, f.outside.join("moved-root")).unwrap();
        f.wait_for(&WatchEvent::RootGone);
    }

    /// A folder made so deep that its absolute path passes the system's limit (its path
    /// in the workspace still under cue's): it can be neither watched nor walked, and is
    /// listed as such while the daemon runs, as the start's scan lists it (before, it was
    /// skipped with nothing said until a restart). Its shallower parents are watched.
    #[test]
    fn a_folder_too_deep_to_watch_is_listed_as_unreadable() {
        let f = fixture(&[]);
        // Folders of 250 bytes down to where one more name reaches the limit.
        let mut rel = String::new();
        let last = loop {
            let here = f.root.as_os_str().len() + 1 + rel.len() + usize::from(!rel.is_empty());
            let reaching = crate::scan::SYSTEM_PATH_MAX - here;
            if reaching <= 250 {
                break "e".repeat(reaching.max(1));
            }
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(&"d".repeat(250));
        };
        let deep = format!("{rel}/{last}");
        assert!(deep.len() < cue_core::paths::MAX_PATH_BYTES);
        // (By descriptors: a path this long cannot be handed to the kernel whole.)
        let fs = WorkspaceFs::open(&f.root).unwrap();
        fs.write_atomic(&p(&format!("{rel}/near.md")), b"near")
            .unwrap();
        f.wait_for(&WatchEvent::Changed(p(&format!("{rel}/near.md"))));
        fs.write_atomic(&p(&format!("{deep}/far.md")), b"far")
            .unwrap();
        let seen = f.wait_for(&WatchEvent::Unsyncable {
            path: deep.clone(),
            reason: Some(format!(
                "unreadable: {}",
                crate::scan::path_too_long(&f.root.join(&deep))
            )),
        });
        assert!(!mentions(&seen, &format!("{deep}/far.md")), "{seen:?}");
    }

    /// A folder the daemon may not read when it starts (mode 000: inotify needs the
    /// permission to read a folder to watch it) does not stop it from watching the rest
    /// (it refused to start: nothing synced); that folder is watched once a `chmod` gives
    /// the permission back. (As a user: root reads every folder.)
    #[test]
    fn a_folder_it_may_not_read_at_start_is_watched_once_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let files = [
            ("open/a.md", "a"),
            ("closed/b.md", "b"),
            ("closed/deep/c.md", "c"),
        ];
        let mut f = std::thread::scope(|s| {
            s.spawn(|| {
                use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
                let mut caps = capabilities(None).expect("capabilities");
                caps.effective
                    .remove(CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH);
                set_capabilities(None, caps).expect("drop capabilities");
                fixture_then(&files, |root| mode(&root.join("closed"), 0o000))
            })
            .join()
            .expect("the watcher starts")
        });
        std::fs::write(f.root.join("open/a.md"), "a, edited").unwrap();
        f.wait_for(&WatchEvent::Changed(p("open/a.md")));
        mode(&f.root.join("closed"), 0o755);
        let deadline = Instant::now() + DEADLINE;
        while !f.watcher.watch_unwatched() {
            assert!(Instant::now() < deadline, "the folder is never watched");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::write(f.root.join("closed/deep/c.md"), "c, edited").unwrap();
        f.wait_for(&WatchEvent::Changed(p("closed/deep/c.md")));
    }
}
