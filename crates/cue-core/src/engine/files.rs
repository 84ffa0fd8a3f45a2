//! Per-file records and the engine's belief about the disk.
//!
//! [`Files`] holds every file's [`FileMeta`] and an index of them by the path they are
//! believed to be at on disk. It is the only writer of that belief: a record is changed
//! through a [`MetaMut`], which brings the index in line when it is dropped, so "which
//! file is at P" and "what is on disk at P" are answered by a lookup, never by a walk over
//! every file, and can never disagree with the records.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Deref, DerefMut};

use crate::ids::{ContentHash, FileId};
use crate::paths::name_key;

use super::layout::FileMeta;

#[derive(Debug, Default)]
pub(super) struct Files {
    metas: BTreeMap<FileId, FileMeta>,
    /// (disk path, file) for every record whose `disk` is set. A set of pairs rather than a
    /// map, so two records claiming one path for a moment (a rename under way) both stay
    /// indexed; the lowest file id answers, as the order of the records would. When the
    /// disk ignores case the path is its [`name_key`]: the disk may spell a file's name
    /// otherwise than the workspace does (`Notes/a.md` in a folder `notes/` made first),
    /// and it is still that file.
    by_path: BTreeSet<(String, FileId)>,
    /// The folder is on a filesystem that ignores letter case (and Unicode form).
    fold: bool,
}

/// How a path is looked up: as it is, or by its [`name_key`] when `fold`.
pub(super) fn key(fold: bool, path: &str) -> Cow<'_, str> {
    if fold {
        Cow::Owned(name_key(path))
    } else {
        Cow::Borrowed(path)
    }
}

impl Files {
    pub(super) fn new(metas: BTreeMap<FileId, FileMeta>, fold: bool) -> Files {
        let by_path = metas
            .iter()
            .filter_map(|(f, m)| {
                m.disk
                    .as_ref()
                    .map(|(p, _)| (key(fold, p).into_owned(), *f))
            })
            .collect();
        Files {
            metas,
            by_path,
            fold,
        }
    }

    pub(super) fn get(&self, file: &FileId) -> Option<&FileMeta> {
        self.metas.get(file)
    }

    /// A record to change; the disk index follows when the guard is dropped.
    pub(super) fn get_mut(&mut self, file: &FileId) -> Option<MetaMut<'_>> {
        let meta = self.metas.get_mut(file)?;
        let before = meta.disk.as_ref().map(|(p, _)| p.clone());
        Some(MetaMut {
            file: *file,
            meta,
            by_path: &mut self.by_path,
            before,
            fold: self.fold,
        })
    }

    /// The record of `file`, made empty if there was none.
    pub(super) fn get_or_default(&mut self, file: FileId) -> MetaMut<'_> {
        let meta = self.metas.entry(file).or_default();
        let before = meta.disk.as_ref().map(|(p, _)| p.clone());
        MetaMut {
            file,
            meta,
            by_path: &mut self.by_path,
            before,
            fold: self.fold,
        }
    }

    pub(super) fn insert(&mut self, file: FileId, meta: FileMeta) {
        self.remove(&file);
        if let Some((p, _)) = &meta.disk {
            self.by_path.insert((key(self.fold, p).into_owned(), file));
        }
        self.metas.insert(file, meta);
    }

    pub(super) fn remove(&mut self, file: &FileId) -> Option<FileMeta> {
        let meta = self.metas.remove(file)?;
        if let Some((p, _)) = &meta.disk {
            self.by_path
                .remove(&(key(self.fold, p).into_owned(), *file));
        }
        Some(meta)
    }

    pub(super) fn contains(&self, file: &FileId) -> bool {
        self.metas.contains_key(file)
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = &FileId> {
        self.metas.keys()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&FileId, &FileMeta)> {
        self.metas.iter()
    }

    /// Forget every file's pending changes (a peer holds them all); the files changed.
    pub(super) fn clear_pending(&mut self) -> Vec<FileId> {
        let mut cleared = Vec::new();
        for (f, m) in &mut self.metas {
            if !m.pending.is_empty() {
                m.pending.clear();
                cleared.push(*f);
            }
        }
        cleared
    }

    pub(super) fn records(&self) -> impl Iterator<Item = &FileMeta> {
        self.metas.values()
    }

    /// The file believed to be at `path` on disk (at any spelling of it, when the disk
    /// ignores case).
    pub(super) fn at(&self, path: &str) -> Option<FileId> {
        let path = key(self.fold, path);
        let (p, f) = self
            .by_path
            .range((path.to_string(), FileId([0; 16]))..)
            .next()?;
        (*p == path).then_some(*f)
    }

    /// Whether a record other than `file`'s is believed to be at `path` on disk with
    /// `hash`, or with any bytes when `hash` is `None` (two records claiming one path: a
    /// rename under way, or a belief a power cut or a twin's write left behind).
    pub(super) fn shared(&self, path: &str, hash: Option<&ContentHash>, file: &FileId) -> bool {
        let path = key(self.fold, path);
        self.by_path
            .range((path.to_string(), FileId([0; 16]))..)
            .take_while(|(p, _)| *p == path)
            .any(|(_, g)| {
                g != file
                    && self
                        .metas
                        .get(g)
                        .and_then(|m| m.disk.as_ref())
                        .is_some_and(|(_, h)| hash.is_none_or(|hash| h == hash))
            })
    }

    /// Whether a file other than `file` is believed on disk at another path than `path`
    /// with content `hash` (it may have moved to `path`). Looks at every file: for the
    /// rare write the disk refused.
    pub(super) fn held_elsewhere(&self, hash: &ContentHash, path: &str, file: &FileId) -> bool {
        let path = key(self.fold, path);
        self.metas.iter().any(|(g, m)| {
            g != file
                && m.disk
                    .as_ref()
                    .is_some_and(|(p, h)| h == hash && key(self.fold, p) != path)
        })
    }

    /// The path `file` is believed to be at on disk, as the engine wrote or saw it.
    fn disk_path(&self, file: &FileId) -> Option<&str> {
        self.metas.get(file)?.disk.as_ref().map(|(p, _)| p.as_str())
    }

    /// The hash of what is believed to be on disk at `path`.
    pub(super) fn on_disk(&self, path: &str) -> Option<ContentHash> {
        let meta = self.metas.get(&self.at(path)?)?;
        meta.disk.as_ref().map(|(_, h)| *h)
    }

    /// The paths believed on disk that are `path` or below it.
    pub(super) fn under(&self, path: &str) -> Vec<String> {
        let prefix = format!("{}/", key(self.fold, path));
        let below = self
            .by_path
            .range((prefix.clone(), FileId([0; 16]))..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter_map(|(_, f)| self.disk_path(f).map(str::to_string));
        let mut paths: Vec<String> = self
            .at(path)
            .and_then(|f| self.disk_path(&f))
            .map(str::to_string)
            .into_iter()
            .collect();
        paths.extend(below);
        paths.dedup();
        paths
    }

    /// Everything believed to be on disk, path → hash, in path order (in the order of
    /// their keys when the disk ignores case).
    pub(super) fn disk(&self) -> impl Iterator<Item = (&str, ContentHash)> {
        self.by_path.iter().filter_map(|(_, f)| {
            let (p, h) = self.metas.get(f)?.disk.as_ref()?;
            Some((p.as_str(), *h))
        })
    }

    /// Is a file at `a` at `b` as well, with the name `b` gives it? On a disk that ignores
    /// case, `a`'s folders may be spelled otherwise (the disk keeps the spelling of the
    /// folder made first, and nothing can change it file by file), but a name whose case
    /// differs is a rename to make.
    pub(super) fn same_on_disk(&self, a: &str, b: &str) -> bool {
        let name = |p: &str| p.rsplit('/').next().map(str::to_string);
        a == b || (self.fold && key(self.fold, a) == key(self.fold, b) && name(a) == name(b))
    }
}

/// A record being changed. Dropping it re-indexes the file if its disk path changed.
pub(super) struct MetaMut<'a> {
    file: FileId,
    meta: &'a mut FileMeta,
    by_path: &'a mut BTreeSet<(String, FileId)>,
    before: Option<String>,
    fold: bool,
}

impl Deref for MetaMut<'_> {
    type Target = FileMeta;
    fn deref(&self) -> &FileMeta {
        self.meta
    }
}

impl DerefMut for MetaMut<'_> {
    fn deref_mut(&mut self) -> &mut FileMeta {
        self.meta
    }
}

impl Drop for MetaMut<'_> {
    fn drop(&mut self) {
        let now = self.meta.disk.as_ref().map(|(p, _)| p);
        if now == self.before.as_ref() {
            return;
        }
        if let Some(p) = self.before.take() {
            self.by_path
                .remove(&(key(self.fold, &p).into_owned(), self.file));
        }
        if let Some(p) = now {
            self.by_path
                .insert((key(self.fold, p).into_owned(), self.file));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::content_hash;

    fn at(path: &str) -> FileMeta {
        FileMeta {
            disk: Some((path.to_string(), content_hash(path.as_bytes()))),
            ..FileMeta::default()
        }
    }

    #[test]
    fn the_disk_index_follows_every_change_of_a_record() {
        let (a, b) = (FileId([1; 16]), FileId([2; 16]));
        let mut files = Files::new([(a, at("x.md"))].into(), false);
        assert_eq!(files.at("x.md"), Some(a));
        // Renamed through the guard.
        files.get_mut(&a).unwrap().disk = Some(("y.md".into(), content_hash(b"y")));
        assert_eq!(files.at("x.md"), None);
        assert_eq!(files.at("y.md"), Some(a));
        assert_eq!(files.on_disk("y.md"), Some(content_hash(b"y")));
        // Two records on one path for a moment: the lower id answers, the other remains.
        files.insert(b, at("y.md"));
        files.get_mut(&a).unwrap().disk = None;
        assert_eq!(files.at("y.md"), Some(b));
        files.remove(&b);
        assert_eq!(files.at("y.md"), None);
        assert_eq!(files.disk().count(), 0);
        // A prefix of another path is not that path, nor a folder of it.
        files.insert(a, at("notes/a.md.bak"));
        files.insert(b, at("notes/a.md/x"));
        assert_eq!(files.at("notes/a.md"), None);
        assert_eq!(files.under("notes/a.md"), vec!["notes/a.md/x".to_string()]);
        assert_eq!(files.under("notes").len(), 2);
    }

    #[test]
    fn a_disk_that_ignores_case_finds_a_file_at_any_spelling_of_its_name() {
        let (a, b) = (FileId([1; 16]), FileId([2; 16]));
        let mut files = Files::new([(a, at("notes/Caf\u{e9}.md"))].into(), true);
        assert_eq!(files.at("NOTES/cafe\u{301}.md"), Some(a));
        assert_eq!(
            files.on_disk("notes/café.md"),
            files.get(&a).unwrap().disk.as_ref().map(|d| d.1)
        );
        // What is listed is the spelling the engine holds, not the key.
        assert_eq!(
            files.disk().map(|(p, _)| p).collect::<Vec<_>>(),
            vec!["notes/Caf\u{e9}.md"]
        );
        files.insert(b, at("Notes/b.md"));
        assert_eq!(files.under("notes").len(), 2);
        assert!(files.under("notes").contains(&"Notes/b.md".to_string()));
        // A case-only rename through the guard re-indexes it.
        files.get_mut(&b).unwrap().disk = Some(("Notes/B.md".into(), content_hash(b"b")));
        assert_eq!(files.at("notes/b.md"), Some(b));
        files.get_mut(&b).unwrap().disk = None;
        assert_eq!(files.at("notes/b.md"), None);
        // A disk that keeps case tells the spellings apart.
        let files = Files::new([(a, at("Notes.md"))].into(), false);
        assert_eq!(files.at("notes.md"), None);
    }
}
