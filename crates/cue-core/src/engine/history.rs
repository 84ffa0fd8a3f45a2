//! A file's versions (`cue history`, `cue show --at`, `cue sync restore --at`): every
//! change of its document, as the file stood right after it.
//!
//! A version is one automerge change of the file's document, named by the first 12 hex
//! digits of its hash (`REV`). Its content is the document at that change and its
//! ancestors (`fork_at`), so a version is exactly what the device that made the change
//! had on disk then; its summary compares it with the version(s) it followed (the
//! change's dependencies). The document belongs to the file, not to its path, so a
//! history follows renames.

use std::collections::BTreeMap;

use super::*;

/// How many hex digits of a change hash name a version.
pub const REV_DIGITS: usize = 12;

/// One version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// [`REV_DIGITS`] hex digits of the change hash.
    pub rev: String,
    /// When the device that made it says it did (its clock).
    pub time_ms: i64,
    /// Who made it: a member's name, `conflict copy` for the copy cue made, or the start
    /// of the change's actor.
    pub device: String,
    /// Lines added and removed against the version(s) it followed.
    pub added: usize,
    pub removed: usize,
    /// Frontmatter keys whose value changed, were added or removed.
    pub frontmatter: Vec<String>,
    /// The file's size at this version, in bytes.
    pub size: usize,
    /// The executable bit this version set (`Some(true)`: `chmod +x`) or cleared, when it
    /// changed it.
    pub exec: Option<bool>,
}

/// Why a history or a version cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("{0} is not a synced file (see `cue sync status`; deleted files: `cue sync restore`)")]
    NotAFile(String),
    #[error("{path} has no version {rev}; `cue history {path}` lists them")]
    NoVersion { path: String, rev: String },
    #[error("{rev} names {n} versions of {path}: give more of it")]
    Ambiguous { path: String, rev: String, n: usize },
    #[error("the document for {0} cannot be read: {1}")]
    Unreadable(String, String),
}

impl Engine {
    /// The versions of the live file at `path`, newest first.
    pub fn history(
        &mut self,
        path: &str,
        store: &mut dyn DocStore,
    ) -> Result<Vec<Version>, HistoryError> {
        let file = self.live_file(path, store)?;
        let names = self.members_view.clone();
        let unreadable = |e: DocError| HistoryError::Unreadable(path.to_string(), e.to_string());
        let mut versions = self
            .with_doc(file, store, |doc| {
                let changes: Vec<(ChangeHash, Vec<ChangeHash>, i64, ActorId)> =
                    crate::doc::changes_since(doc.automerge(), &[])
                        .ok_or_else(crate::doc::unreadable)?
                        .iter()
                        .map(|c| {
                            (
                                c.hash(),
                                c.deps().to_vec(),
                                c.timestamp(),
                                c.actor_id().clone(),
                            )
                        })
                        .collect();
                let mut out = Vec::with_capacity(changes.len());
                for (hash, deps, time_s, actor) in changes {
                    let (after, exec_after) = doc.file_at(&[hash]).unwrap_or_default();
                    let (before, exec_before) = if deps.is_empty() {
                        (Vec::new(), false)
                    } else {
                        doc.file_at(&deps).unwrap_or_default()
                    };
                    let (added, removed) = line_counts(&before, &after);
                    out.push(Version {
                        rev: hex::encode(hash.0)[..REV_DIGITS].to_string(),
                        time_ms: time_s.saturating_mul(1000),
                        device: who(&names, &actor),
                        added,
                        removed,
                        frontmatter: frontmatter_changes(&before, &after),
                        size: after.len(),
                        exec: (exec_after != exec_before).then_some(exec_after),
                    });
                }
                Ok(out)
            })
            .map_err(unreadable)?;
        // Oldest first as automerge orders them (causally); newest first for people.
        versions.reverse();
        Ok(versions)
    }

    /// The content of the live file at `path` at version `rev` (a prefix of a change
    /// hash, at least 4 hex digits, as [`Engine::history`] prints it).
    pub fn version(
        &mut self,
        path: &str,
        rev: &str,
        store: &mut dyn DocStore,
    ) -> Result<Vec<u8>, HistoryError> {
        let file = self.live_file(path, store)?;
        let rev = rev.trim().to_ascii_lowercase();
        let no_version = || HistoryError::NoVersion {
            path: path.to_string(),
            rev: rev.clone(),
        };
        if rev.len() < 4 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_version());
        }
        let found = self
            .with_doc(file, store, |doc| {
                let matches: Vec<ChangeHash> = crate::doc::changes_since(doc.automerge(), &[])
                    .ok_or_else(crate::doc::unreadable)?
                    .iter()
                    .map(|c| c.hash())
                    .filter(|h| hex::encode(h.0).starts_with(&rev))
                    .collect();
                Ok(match matches.as_slice() {
                    [one] => Ok(doc.materialize_at(&[*one])?),
                    [] => Err(0),
                    many => Err(many.len()),
                })
            })
            .map_err(|e| HistoryError::Unreadable(path.to_string(), e.to_string()))?;
        match found {
            Ok(bytes) => Ok(bytes),
            Err(0) => Err(no_version()),
            Err(n) => Err(HistoryError::Ambiguous {
                path: path.to_string(),
                rev,
                n,
            }),
        }
    }

    fn live_file(&mut self, path: &str, store: &mut dyn DocStore) -> Result<FileId, HistoryError> {
        let live = self.live_view(store);
        live.iter()
            .find(|(_, p)| *p == path)
            .map(|(f, _)| *f)
            .ok_or_else(|| HistoryError::NotAFile(path.to_string()))
    }
}

/// The member whose actor made a change.
fn who(names: &BTreeMap<DeviceId, String>, actor: &ActorId) -> String {
    let bytes = actor.to_bytes();
    if bytes.starts_with(b"cue-copy") {
        return "conflict copy".into();
    }
    names.iter().find(|(d, _)| made_by(d, actor)).map_or_else(
        || hex::encode(&bytes[..bytes.len().min(3)]),
        |(_, n)| n.clone(),
    )
}

/// Lines added and removed from `before` to `after` (binary content counts as one line).
fn line_counts(before: &[u8], after: &[u8]) -> (usize, usize) {
    let (a, b) = (
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(after),
    );
    let diff = similar::TextDiff::from_lines(a.as_ref(), b.as_ref());
    let (mut added, mut removed) = (0, 0);
    for op in diff.ops() {
        for change in diff.iter_changes(op) {
            match change.tag() {
                similar::ChangeTag::Insert => added += 1,
                similar::ChangeTag::Delete => removed += 1,
                similar::ChangeTag::Equal => {}
            }
        }
    }
    (added, removed)
}

/// The frontmatter keys whose value differs between the two versions.
fn frontmatter_changes(before: &[u8], after: &[u8]) -> Vec<String> {
    let keys = |bytes: &[u8]| -> BTreeMap<String, String> {
        let text = String::from_utf8_lossy(bytes);
        match crate::frontmatter::parse(&text)
            .frontmatter
            .map(|f| f.content)
        {
            Some(crate::frontmatter::FrontmatterContent::Yaml { blocks, .. }) => blocks
                .into_iter()
                .map(|b| (b.key.clone(), format!("{:?}", b.value)))
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let (a, b) = (keys(before), keys(after));
    let mut changed: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

/// One synced file as `cue export` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub path: String,
    pub file: FileId,
    /// The document, as automerge's `save()` writes it.
    pub document: Vec<u8>,
    /// The bytes it materialises to (what is on disk).
    pub content: Vec<u8>,
}

impl Engine {
    /// Every live synced file's document, and the index's, as automerge saves them
    /// (`cue export --automerge`; docs/schema.md).
    pub fn export(
        &mut self,
        store: &mut dyn DocStore,
    ) -> Result<(Vec<Exported>, Vec<u8>), HistoryError> {
        let live = self.live_view(store);
        let mut files = Vec::with_capacity(live.len());
        for (&file, path) in live.iter() {
            let path = path.clone();
            let unreadable = |e: DocError| HistoryError::Unreadable(path.clone(), e.to_string());
            let (document, content) = self
                .with_doc(file, store, |d| {
                    let content = d.materialize()?;
                    Ok((d.automerge().save(), content))
                })
                .map_err(unreadable)?;
            files.push(Exported {
                path,
                file,
                document,
                content,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((files, self.index.automerge_unchanged().save()))
    }
}
