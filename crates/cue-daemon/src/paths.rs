//! Workspace-relative paths, validated once at the edge.
//!
//! Every path that reaches the daemon — from a peer's message or from the disk — is parsed
//! into a [`WorkspacePath`] before anything else looks at it. A `WorkspacePath` is a name
//! that [`cue_core::paths::valid_path`] accepts (the engine's rules, stated there once), so
//! the code that writes files only has to trust the type. What needs this machine is
//! checked here (UTF-8, under the root) and by the kernel at the write itself: see
//! [`crate::fsio`].
//!
//! [`is_never_synced`] says which names cue leaves alone whatever `.cueignore` says:
//!
//! | pattern (on any component) | what it is |
//! | --- | --- |
//! | `.cuedeck`, `.git` (any case) | cue's own state, git's repository |
//! | `.DS_Store`, `Thumbs.db`, `desktop.ini` (any case) | folder metadata macOS Finder and Windows Explorer leave in every folder they show |
//! | `.cue-tmp-*` | cue's own temporary files (atomic writes) |
//! | `*.swp`, `*.swo`, `*.swn`, `*.swx` | vim swap files |
//! | `4913` | vim's "can I write here" probe file |
//! | `*~` | backups (vim, emacs, gedit, nano) |
//! | `#*#`, `.#*` | emacs auto-save files and lock links |
//! | `*.tmp` (any case) | generic temporaries (Syncthing's `.syncthing.*.tmp`, many tools) |
//! | `*.crswap` | Chromium's File System Access atomic-save temporary |
//! | `.~lock.*#` | LibreOffice lock files |
//! | `~$*` | Microsoft Office owner files |
//! | `*.kate-swp` | Kate swap files |
//! | `*___jb_tmp___`, `*___jb_old___` | JetBrains safe-write temporaries |
//! | `.goutputstream-*` | GIO/gedit atomic-save temporaries |
//! | `sedXXXXXX` | GNU `sed -i` temporaries (`sed` + 6 letters/digits, nothing else) |
//! | `.name.XXXXXX` | hidden `mkstemp`-style atomic-save temporaries: a leading dot, and a last `.`-separated part of exactly 6 letters/digits that is not all lower-case letters (random suffixes almost never are; real extensions such as `.backup` are) |

use std::fmt;
use std::path::{Path, PathBuf};

pub use cue_core::paths::{CUEDECK_DIR, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};
use cue_core::paths::{is_reserved_name, valid_path};

/// Prefix of cue's own temporary files; the watcher and the scanner skip them.
pub const CUE_TEMP_PREFIX: &str = ".cue-tmp-";
/// Name of the ignore file at the workspace root.
pub const CUEIGNORE_FILE: &str = ".cueignore";

/// Why a path is not a [`WorkspacePath`]: a name cue does not sync (the rules are
/// cue-core's, the same the engine applies), or a path on this machine that does not
/// make a workspace path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Invalid(#[from] cue_core::paths::PathError),
    #[error("the path {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("the path {path:?} is not inside the workspace {root:?}")]
    OutsideRoot { path: PathBuf, root: PathBuf },
}

/// A validated path relative to the workspace root: one [`cue_core::paths::valid_path`]
/// accepts.
///
/// Ordered and compared by its bytes, so sorted lists are the same on every peer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    /// Validates `s` as a workspace path.
    pub fn parse(s: &str) -> Result<WorkspacePath, PathError> {
        valid_path(s)?;
        Ok(WorkspacePath(s.to_owned()))
    }

    /// The path of an absolute (or root-joined) filesystem path under `root`.
    pub fn from_fs_path(root: &Path, path: &Path) -> Result<WorkspacePath, PathError> {
        let rel = path
            .strip_prefix(root)
            .map_err(|_| PathError::OutsideRoot {
                path: path.to_owned(),
                root: root.to_owned(),
            })?;
        let s = rel
            .to_str()
            .ok_or_else(|| PathError::NotUtf8(rel.to_string_lossy().into_owned()))?;
        WorkspacePath::parse(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path below `root` on this machine.
    pub fn to_fs_path(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The containing directory, or `None` for a path directly under the root.
    pub fn parent(&self) -> Option<WorkspacePath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| WorkspacePath(parent.to_owned()))
    }

    /// The parent directory as a string, `""` for the root.
    pub fn parent_str(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(parent, _)| parent)
    }

    /// `self/child`, validated (the child may contain `/`).
    pub fn join(&self, child: &str) -> Result<WorkspacePath, PathError> {
        WorkspacePath::parse(&format!("{}/{}", self.0, child))
    }

    /// Whether `self` is `dir` or lies below it.
    pub fn is_within(&self, dir: &WorkspacePath) -> bool {
        self.0 == dir.0
            || (self.0.len() > dir.0.len()
                && self.0.starts_with(&dir.0)
                && self.0.as_bytes()[dir.0.len()] == b'/')
    }

    /// Where `self` ends up when directory `from` is renamed to `to`; `None` when `self` is
    /// not within `from`. Fails only when the new path breaks a limit (it grew too long).
    pub fn rebase(
        &self,
        from: &WorkspacePath,
        to: &WorkspacePath,
    ) -> Option<Result<WorkspacePath, PathError>> {
        if !self.is_within(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        Some(WorkspacePath::parse(&format!("{}{}", to.0, rest)))
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for WorkspacePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for WorkspacePath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, PathError> {
        WorkspacePath::parse(s)
    }
}

impl TryFrom<String> for WorkspacePath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        valid_path(&s)?;
        Ok(WorkspacePath(s))
    }
}

impl From<WorkspacePath> for String {
    fn from(p: WorkspacePath) -> String {
        p.0
    }
}

/// Whether cue leaves `rel` alone whatever `.cueignore` says: anything under `.cuedeck/` or
/// `.git/`, the system's folder metadata files and the editor and tool temporaries listed
/// in the module documentation.
///
/// `rel` is a `/`-separated path relative to the workspace root; it need not be a valid
/// [`WorkspacePath`] (the watcher asks before parsing).
///
/// Every rule applies to every component: a folder with such a name is left alone with
/// everything in it, as the start-up scan, which never descends into it, leaves it.
pub fn is_never_synced(rel: &str) -> bool {
    rel.split('/')
        .filter(|c| !c.is_empty())
        .any(|c| is_reserved_name(c) || is_system_file_name(c) || is_temporary_name(c))
}

/// Whether a file name is one of the metadata files a desktop's file manager writes into
/// the folders it shows: macOS Finder's `.DS_Store`, Windows Explorer's `Thumbs.db` and
/// `desktop.ini`. Compared without letter case, as both systems' file systems usually do.
pub fn is_system_file_name(name: &str) -> bool {
    [".DS_Store", "Thumbs.db", "desktop.ini"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether a file name is an editor's or tool's temporary (see the module documentation).
pub fn is_temporary_name(name: &str) -> bool {
    if name.starts_with(CUE_TEMP_PREFIX) {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    let suffixes = [
        ".swp",
        ".swo",
        ".swn",
        ".swx",
        ".tmp",
        ".crswap",
        ".kate-swp",
        "___jb_tmp___",
        "___jb_old___",
    ];
    if suffixes.iter().any(|s| lower.ends_with(s)) {
        return true;
    }
    if name == "4913" || name.ends_with('~') || name.starts_with("~$") {
        return true;
    }
    if name.starts_with(".#") || (name.len() > 1 && name.starts_with('#') && name.ends_with('#')) {
        return true;
    }
    if name.starts_with(".~lock.") && name.ends_with('#') {
        return true;
    }
    if name.starts_with(".goutputstream-") {
        return true;
    }
    if let Some(rest) = name.strip_prefix("sed")
        && rest.len() == 6
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return true;
    }
    if let Some(hidden) = name.strip_prefix('.')
        && let Some((stem, suffix)) = hidden.rsplit_once('.')
        && !stem.is_empty()
        && looks_random(suffix)
    {
        return true;
    }
    false
}

/// Six letters or digits, not all lower-case letters: what `mkstemp`'s `XXXXXX` becomes,
/// and (almost) never a real extension.
fn looks_random(s: &str) -> bool {
    s.len() == 6
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
        && !s.bytes().all(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_what_cue_core_refuses_with_its_error() {
        assert!(WorkspacePath::parse("dir/sub/Ünïcödé.md").is_ok());
        for bad in [
            "",
            ".GIT/x",
            "a/.CueDeck/b",
            "..",
            "a//b",
            "/etc",
            "a\\b",
            "a\0b",
        ] {
            let core = cue_core::paths::valid_path(bad).expect_err(bad);
            assert_eq!(WorkspacePath::parse(bad), Err(PathError::Invalid(core)));
        }
        let long = "a".repeat(256);
        let err = WorkspacePath::parse(&long).expect_err("a 256-byte name");
        assert_eq!(
            err.to_string(),
            format!("the path {long:?} has a name of 256 bytes; the limit is 255 bytes")
        );
    }

    /// Strings built from the characters and names the rules are about.
    fn name_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z0-9é]{1,4}",
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            "\\.[gG][iI][tT]",
            "\\.[cC][uU][eE][dD][eE][cC][kK]",
            Just("\\".to_owned()),
            Just(":".to_owned()),
            "[\u{0}\n\u{7f}\u{85}]",
            (250usize..260).prop_map(|n| "y".repeat(n)),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        /// The daemon accepts a name exactly when the engine does, with the engine's error.
        #[test]
        fn accepts_the_same_names_as_cue_core(s in name_like()) {
            match cue_core::paths::valid_path(&s) {
                Ok(()) => prop_assert_eq!(WorkspacePath::parse(&s).map(String::from), Ok(s)),
                Err(e) => prop_assert_eq!(WorkspacePath::parse(&s), Err(PathError::Invalid(e))),
            }
        }
    }

    #[test]
    fn from_fs_path_requires_the_root() {
        let root = Path::new("/work/ws");
        let p = WorkspacePath::from_fs_path(root, Path::new("/work/ws/a/b.md")).unwrap();
        assert_eq!(p.as_str(), "a/b.md");
        assert!(matches!(
            WorkspacePath::from_fs_path(root, Path::new("/work/other/a")),
            Err(PathError::OutsideRoot { .. })
        ));
        assert_eq!(p.to_fs_path(root), PathBuf::from("/work/ws/a/b.md"));
    }

    #[test]
    fn parts_and_rebase() {
        let p = WorkspacePath::parse("a/b/c.md").unwrap();
        assert_eq!(p.file_name(), "c.md");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.parent_str(), "a/b");
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c.md"]);
        assert!(WorkspacePath::parse("top.md").unwrap().parent().is_none());

        let a = WorkspacePath::parse("a").unwrap();
        let ab = WorkspacePath::parse("ab").unwrap();
        assert!(p.is_within(&a));
        assert!(!p.is_within(&ab));
        let moved = p
            .rebase(&a, &WorkspacePath::parse("x/y").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(moved.as_str(), "x/y/b/c.md");
        assert!(p.rebase(&ab, &a).is_none());
        assert_eq!(a.join("b/c.md").unwrap(), p);
        assert!(a.join("../c").is_err());
    }

    #[test]
    fn never_synced_names() {
        for yes in [
            ".cuedeck",
            ".cuedeck/store.sqlite3",
            ".git/HEAD",
            "sub/.git/objects/x",
            ".cue-tmp-123-notes.md",
            "dir/.notes.md.swp",
            "notes.md.swo",
            ".notes.md.swx",
            "4913",
            "dir/4913",
            "notes.md~",
            "#notes.md#",
            ".#notes.md",
            "x.tmp",
            "X.TMP",
            ".syncthing.notes.md.tmp",
            "report.docx.crswap",
            ".~lock.report.odt#",
            "~$report.docx",
            "notes.md.kate-swp",
            "notes.md___jb_tmp___",
            "notes.md___jb_old___",
            ".goutputstream-ABC123",
            "sedAb12Cd",
            "sed123456",
            ".notes.md.Ab12Cd",
            ".notes.md.x9k2m1",
            ".DS_Store",
            "deep/er/.DS_Store",
            ".ds_store",
            "Thumbs.db",
            "photos/2024/Thumbs.db",
            "THUMBS.DB",
            "desktop.ini",
            "a/b/Desktop.ini",
            "desktop.ini/notes.md",
            ".DS_Store/notes.md",
            "old.tmp/notes.md",
            "backup~/notes.md",
        ] {
            assert!(is_never_synced(yes), "{yes:?} should never be synced");
        }
        for no in [
            "notes.md",
            ".cueignore",
            ".gitignore",
            "sed.md",
            "sediment",
            "sedimentary",
            "4914",
            ".config.backup",
            "notes.md.Ab12Cd",
            "#notes",
            "dir/notes.md",
            ".hidden",
            "tmp/notes.md",
            ".DS_Store.md",
            "my.DS_Store",
            "Thumbs.db.md",
            "thumbs.dbx",
            "desktop.ini.bak",
        ] {
            assert!(!is_never_synced(no), "{no:?} should be synced");
        }
    }
}
