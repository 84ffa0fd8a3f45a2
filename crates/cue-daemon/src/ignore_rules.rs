//! What the daemon leaves alone: `.cueignore` at the workspace root (gitignore syntax)
//! plus the names cue never syncs ([`crate::paths::is_never_synced`]).
//!
//! One [`IgnoreRules`] answers for both the start-up scan and the watcher, so the two never
//! disagree about a path. Git's rule that a file inside an ignored folder cannot be
//! re-included (`build/` then `!build/keep.md` keeps `build/keep.md` ignored) is applied by
//! checking every ancestor folder first; the `ignore` crate's plain `matched` would miss
//! rules on parent folders altogether.
//!
//! Only the root's `.cueignore` is read: a nested `.cueignore` is an ordinary file.

use std::io;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::paths::{CUEIGNORE_FILE, is_never_synced};

/// Why the ignore rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("cannot read {path:?}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path:?} is not a regular file; cue reads .cueignore only as a plain file")]
    NotAFile { path: PathBuf },
    #[error("cannot build the ignore rules: {0}")]
    Build(#[from] ignore::Error),
}

/// The ignore rules of one workspace.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    root: PathBuf,
    gitignore: Gitignore,
    /// The `.cueignore` text the rules were built from (`None`: no file).
    source: Option<String>,
    /// Lines that were not valid patterns; they are skipped, the others still apply.
    invalid_lines: Vec<(usize, String)>,
}

impl IgnoreRules {
    /// Reads `<root>/.cueignore` (a missing file means no extra rules). A symlinked
    /// `.cueignore` is refused rather than followed.
    pub fn load(root: &Path) -> Result<IgnoreRules, IgnoreError> {
        let source = read_cueignore(root)?;
        Ok(IgnoreRules::from_source(root, source))
    }

    /// Rules from `.cueignore` text (`None`: no file).
    pub fn from_source(root: &Path, source: Option<String>) -> IgnoreRules {
        let mut builder = GitignoreBuilder::new(root);
        let mut invalid_lines = Vec::new();
        if let Some(text) = &source {
            for (i, line) in text.lines().enumerate() {
                // Line by line, so one bad pattern costs only itself, not the whole file.
                if let Err(e) = builder.add_line(Some(root.join(CUEIGNORE_FILE)), line) {
                    tracing::warn!(line = i + 1, "ignoring invalid .cueignore pattern: {e}");
                    invalid_lines.push((i + 1, line.to_owned()));
                }
            }
        }
        let gitignore = builder.build().unwrap_or_else(|e| {
            tracing::warn!(".cueignore could not be compiled, using no patterns: {e}");
            Gitignore::empty()
        });
        IgnoreRules {
            root: root.to_owned(),
            gitignore,
            source,
            invalid_lines,
        }
    }

    /// Re-reads `.cueignore`; returns whether the rules changed.
    pub fn reload(&mut self) -> Result<bool, IgnoreError> {
        let source = read_cueignore(&self.root)?;
        if source == self.source {
            return Ok(false);
        }
        *self = IgnoreRules::from_source(&self.root, source);
        Ok(true)
    }

    /// The workspace root these rules belong to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lines of `.cueignore` that were skipped as invalid (1-based line number, text).
    pub fn invalid_lines(&self) -> &[(usize, String)] {
        &self.invalid_lines
    }

    /// Whether `rel` (a `/`-separated path relative to the root) is left alone. `is_dir`
    /// says whether `rel` itself is a folder (rules ending in `/` match only folders); when
    /// unknown, as for a path already deleted, pass `false`.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        if is_never_synced(rel) {
            return true;
        }
        // The rules themselves are always synced: a `.cueignore` that ignored itself
        // (`*`, `.*`) would stop every later change to it, a member's undo included,
        // from reaching the devices that hold it (docs/security.md).
        if rel == CUEIGNORE_FILE {
            return false;
        }
        if self.gitignore.is_empty() {
            return false;
        }
        // Top-down over the ancestors: once a folder is ignored, nothing inside it can be
        // re-included (git's rule, and what the scanner sees since it never descends).
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            let ancestor = &rel[..end + i];
            if self.gitignore.matched(ancestor, true).is_ignore() {
                return true;
            }
            end += i + 1;
        }
        self.gitignore
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
    }
}

fn read_cueignore(root: &Path) -> Result<Option<String>, IgnoreError> {
    let path = root.join(CUEIGNORE_FILE);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IgnoreError::Read { path, source }),
        Ok(meta) if !meta.file_type().is_file() => return Err(IgnoreError::NotAFile { path }),
        Ok(_) => {}
    }
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IgnoreError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::from_source(Path::new("/ws"), Some(text.to_owned()))
    }

    #[test]
    fn never_synced_without_a_cueignore() {
        let r = IgnoreRules::from_source(Path::new("/ws"), None);
        assert!(r.is_ignored(".cuedeck/store.sqlite3", false));
        assert!(r.is_ignored(".git", true));
        assert!(r.is_ignored("notes.md.swp", false));
        assert!(!r.is_ignored("notes.md", false));
        assert!(!r.is_ignored(".cueignore", false));
        assert!(!r.is_ignored("", true));
    }

    /// A member who writes `*` into the synced `.cueignore` stops every device syncing
    /// its files, but not `.cueignore` itself: the next change to it (an undo) still
    /// reaches everyone and brings the files back into sync.
    #[test]
    fn the_rules_file_is_never_ignored_by_its_own_rules() {
        for (text, other) in [
            ("*\n", "other.md"),
            (".*\n", ".hidden"),
            (".cueignore\nx.md\n", "x.md"),
            ("/*\n!notes.md\n", "other.md"),
            ("**\n", "a/b.md"),
        ] {
            let r = rules(text);
            assert!(!r.is_ignored(".cueignore", false), "{text:?}");
            assert!(r.is_ignored(other, false), "{text:?}");
        }
    }

    #[test]
    fn system_metadata_files_are_never_synced_at_any_depth() {
        // A `.cueignore` cannot bring them back.
        let with_reinclusion = rules("!.DS_Store\n!Thumbs.db\n!desktop.ini\n");
        for r in [
            IgnoreRules::from_source(Path::new("/ws"), None),
            with_reinclusion,
        ] {
            for path in [
                ".DS_Store",
                "notes/.DS_Store",
                "a/b/c/.DS_Store",
                "Thumbs.db",
                "photos/2024/Thumbs.db",
                "thumbs.db",
                "desktop.ini",
                "music/Desktop.ini",
            ] {
                assert!(r.is_ignored(path, false), "{path}");
            }
            assert!(r.is_ignored("desktop.ini", true), "a folder of that name");
            assert!(
                r.is_ignored("desktop.ini/notes.md", false),
                "and what is in it"
            );
            for path in [
                "notes.md",
                "notes/DS_Store.md",
                "Thumbs.db.md",
                "my-desktop.ini",
            ] {
                assert!(!r.is_ignored(path, false), "{path}");
            }
        }
    }

    #[test]
    fn gitignore_syntax() {
        let r = rules("# comment\n*.log\nbuild/\n/top-only.md\n!important.log\ndocs/**/draft-*\n");
        assert!(r.is_ignored("x.log", false));
        assert!(r.is_ignored("deep/er/x.log", false));
        assert!(!r.is_ignored("important.log", false));
        assert!(r.is_ignored("build", true));
        assert!(
            !r.is_ignored("build", false),
            "`build/` matches folders only"
        );
        assert!(
            r.is_ignored("build/out.md", false),
            "rules on parent folders apply"
        );
        assert!(r.is_ignored("src/build/deep/out.md", false));
        assert!(r.is_ignored("top-only.md", false));
        assert!(!r.is_ignored("sub/top-only.md", false));
        assert!(r.is_ignored("docs/a/b/draft-1.md", false));
        assert!(!r.is_ignored("docs/a/b/final.md", false));
        assert!(!r.is_ignored("notes.md", false));
    }

    #[test]
    fn no_reinclusion_inside_an_ignored_folder() {
        let r = rules("build/\n!build/keep.md\n");
        assert!(r.is_ignored("build/keep.md", false));
    }

    #[test]
    fn invalid_lines_cost_only_themselves() {
        let r = rules("*.log\n{unclosed\n*.bak\n");
        assert_eq!(r.invalid_lines().len(), 1);
        assert!(r.is_ignored("a.log", false));
        assert!(r.is_ignored("a.bak", false));
    }

    #[test]
    fn load_and_reload_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut r = IgnoreRules::load(root).unwrap();
        assert!(!r.is_ignored("a.log", false));
        assert!(!r.reload().unwrap(), "nothing changed");
        std::fs::write(root.join(".cueignore"), "*.log\n").unwrap();
        assert!(r.reload().unwrap());
        assert!(r.is_ignored("a.log", false));
        std::fs::remove_file(root.join(".cueignore")).unwrap();
        assert!(r.reload().unwrap());
        assert!(!r.is_ignored("a.log", false));
    }

    #[test]
    fn symlinked_cueignore_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "*\n").unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&target, root.join(".cueignore")).unwrap();
        assert!(matches!(
            IgnoreRules::load(&root),
            Err(IgnoreError::NotAFile { .. })
        ));
    }
}
