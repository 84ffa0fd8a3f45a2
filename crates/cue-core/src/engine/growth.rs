//! A file written in place to a size over `max_file_size` passes through smaller sizes on
//! the way (the empty file a rewrite starts with, a partial copy), and the watcher may
//! take those in. When the file ends up too large, those beginnings are taken back: its
//! synced content returns to the version before them, so the other devices keep the
//! last real content rather than an empty or cut file (docs/reference.md §3.6); a file
//! made within those seconds is taken back whole.

use super::*;

/// Local versions older than this are not beginnings of a file being written now.
const GROWTH_WINDOW_MS: i64 = 10_000;

/// At most this many of a file's last local versions are remembered.
const GROWTH_VERSIONS: usize = 16;

/// One local version of a file: the version it was made from, and its own.
#[derive(Debug, Clone)]
pub(super) struct Version {
    time_ms: i64,
    before: Heads,
    after: Heads,
    len: usize,
}

impl Engine {
    /// A local change made `after` from `before` (`len` bytes).
    pub(super) fn record_growth(&mut self, file: FileId, before: Heads, after: Heads, len: usize) {
        let now = self.now_ms;
        let versions = self.growth.entry(file).or_default();
        versions.retain(|v| now - v.time_ms <= GROWTH_WINDOW_MS);
        if versions.len() >= GROWTH_VERSIONS {
            versions.pop_front();
        }
        versions.push_back(Version {
            time_ms: now,
            before,
            after,
            len,
        });
    }

    /// How many of the first bytes of the too-large file at `path` the driver should pass
    /// in [`Input::FileTooLarge`]: as many as its longest recent local version (0: none).
    pub fn growth_check_len(&self, path: &str) -> usize {
        let now = self.now_ms;
        self.file_at(path)
            .and_then(|f| self.growth.get(&f))
            .and_then(|vs| {
                vs.iter()
                    .filter(|v| now - v.time_ms <= GROWTH_WINDOW_MS)
                    .map(|v| v.len)
                    .max()
            })
            .unwrap_or(0)
    }

    /// The file at `path` is now too large and begins with `head`: the recent local
    /// versions that are beginnings of it are taken back, newest first, and the document
    /// gets the content it had before them.
    pub(super) fn undo_growth(&mut self, path: &str, head: &[u8], store: &mut dyn DocStore) {
        let Some(f) = self.file_at(path) else {
            return;
        };
        let now = self.now_ms;
        let versions: Vec<Version> = self
            .growth
            .remove(&f)
            .unwrap_or_default()
            .into_iter()
            .filter(|v| now - v.time_ms <= GROWTH_WINDOW_MS)
            .collect();
        let mut restore: Option<Heads> = None;
        for v in versions.iter().rev() {
            // Longer than what was read of the file: not a beginning of it.
            if v.len > head.len() {
                break;
            }
            let after = from_heads(&v.after);
            let beginning = self
                .with_doc(f, store, |doc| doc.materialize_at(&after))
                .is_ok_and(|c| head.starts_with(&c));
            if !beginning {
                break;
            }
            restore = Some(v.before.clone());
        }
        let Some(before) = restore else {
            return;
        };
        if before.is_empty() {
            // Every version since the file was created here is a beginning of it (a
            // copy of a large file caught half-way, a new note grown at once): the file
            // was never really there, and goes from the other devices. The deletion
            // names our last version only: a peer's edit of one keeps it.
            let last = versions.last().map(|v| from_heads(&v.after));
            self.delete_here(f, last.unwrap_or_default(), store);
            self.grew_past_limit(
                path,
                "grew past max_file_size as it was being made; the other devices do not keep \
                 the beginning they got",
            );
            return;
        }
        let before = from_heads(&before);
        let time_s = now / 1000;
        let result = self.with_doc(f, store, |doc| {
            let old = doc.materialize_at(&before)?;
            Ok(doc.write(path, &old, time_s)?.and_then(|hash| {
                doc.change(&hash).map(|c| {
                    (
                        hash,
                        Item::Changes {
                            doc: DocId::File(f),
                            changes: vec![c],
                        },
                    )
                })
            }))
        });
        match result {
            Ok(Some((hash, item))) => {
                self.after_local_change(f, hash, Some(item));
                self.refresh_meta(f, store);
                // The disk holds the large file, which is not synced; an edit that brings
                // it back under the limit is an edit of the restored version.
                if let Some(mut m) = self.files.get_mut(&f) {
                    m.disk_heads = vec![hash.0];
                }
                self.grew_past_limit(
                    path,
                    "grew past max_file_size while being written; the other devices keep its \
                     content from before",
                );
            }
            Ok(None) => {}
            Err(e) => self.doc_error(path, &e),
        }
    }

    /// Says in the activity log what became of the file at `path` that grew too large.
    fn grew_past_limit(&mut self, path: &str, what: &str) {
        let name = self.name.clone();
        self.activity(
            ActivityKind::Error,
            Some(path.to_string()),
            &name,
            Some(what.to_string()),
        );
    }
}
