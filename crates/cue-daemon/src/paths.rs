//! Workspace-relative paths, validated once at the edge.
//!
//! Every path that reaches the daemon — from a peer's message or from the disk — is parsed
//! into a [`WorkspacePath`] before anything else looks at it. A `WorkspacePath` is relative,
//! normalised and cannot name anything outside the workspace or inside `.cuedeck/` or
//! `.git/`, so the code that writes files only has to trust the type. (The kernel still
//! enforces confinement at the write itself: see [`crate::fsio`].)
//!
//! [`is_never_synced`] says which names cue leaves alone whatever `.cueignore` says:
//!
//! | pattern (on any component / on the file name) | what it is |
//! | --- | --- |
//! | `.cuedeck`, `.git` (any component, any case) | cue's own state, git's repository |
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

/// Longest path, in bytes, cue syncs (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component, in bytes (`NAME_MAX` on every common filesystem).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Prefix of cue's own temporary files; the watcher and the scanner skip them.
pub const CUE_TEMP_PREFIX: &str = ".cue-tmp-";
/// Name of the workspace's state directory.
pub const CUEDECK_DIR: &str = ".cuedeck";
/// Name of the ignore file at the workspace root.
pub const CUEIGNORE_FILE: &str = ".cueignore";

/// Why a string is not a [`WorkspacePath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path {0:?} is absolute; workspace paths are relative to the workspace")]
    Absolute(String),
    #[error("the path {0:?} starts with a drive name")]
    Drive(String),
    #[error("the path {0:?} has an empty, `.` or `..` component; it must be normalised")]
    NotNormalised(String),
    #[error("the path {0:?} contains a backslash; workspace paths use `/`")]
    Backslash(String),
    #[error("the path {0:?} contains NUL or a control character")]
    ControlChar(String),
    #[error("the path {path:?} has a `{component}` component, which cue never syncs")]
    Reserved { path: String, component: String },
    #[error("a component of the path {0:?} is longer than 255 bytes")]
    ComponentTooLong(String),
    #[error("the path is {0} bytes long; the limit is 4096")]
    TooLong(usize),
    #[error("the path {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("the path {path:?} is not inside the workspace {root:?}")]
    OutsideRoot { path: PathBuf, root: PathBuf },
}

/// A validated path relative to the workspace root: `/`-separated, normalised, UTF-8,
/// free of control characters and of `.cuedeck`/`.git` components, within length limits.
///
/// Ordered and compared by its bytes, so sorted lists are the same on every peer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    /// Validates `s` as a workspace path.
    pub fn parse(s: &str) -> Result<WorkspacePath, PathError> {
        validate(s)?;
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
        validate(&s)?;
        Ok(WorkspacePath(s))
    }
}

impl From<WorkspacePath> for String {
    fn from(p: WorkspacePath) -> String {
        p.0
    }
}

fn validate(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(s.len()));
    }
    if s.chars().any(char::is_control) {
        // Checked before the rest so an error message never carries a raw control byte
        // to a terminal; `{:?}` escapes it anyway.
        return Err(PathError::ControlChar(s.to_owned()));
    }
    if s.contains('\\') {
        return Err(PathError::Backslash(s.to_owned()));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute(s.to_owned()));
    }
    if is_drive_prefix(s) {
        return Err(PathError::Drive(s.to_owned()));
    }
    for component in s.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(PathError::NotNormalised(s.to_owned()));
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(PathError::ComponentTooLong(s.to_owned()));
        }
        if is_reserved_component(component) {
            return Err(PathError::Reserved {
                path: s.to_owned(),
                component: component.to_owned(),
            });
        }
    }
    Ok(())
}

/// `C:`, `c:foo`: a Windows drive (absolute or drive-relative) path.
fn is_drive_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// `.cuedeck` and `.git`, in any case: on case-insensitive filesystems (macOS, Windows)
/// `.GIT` is the same directory as `.git`.
fn is_reserved_component(c: &str) -> bool {
    c.eq_ignore_ascii_case(CUEDECK_DIR) || c.eq_ignore_ascii_case(".git")
}

/// Whether cue leaves `rel` alone whatever `.cueignore` says: anything under `.cuedeck/` or
/// `.git/`, and the editor and tool temporaries listed in the module documentation.
///
/// `rel` is a `/`-separated path relative to the workspace root; it need not be a valid
/// [`WorkspacePath`] (the watcher asks before parsing).
pub fn is_never_synced(rel: &str) -> bool {
    let mut components = rel.split('/').filter(|c| !c.is_empty());
    let Some(name) = rel.rsplit('/').find(|c| !c.is_empty()) else {
        return false;
    };
    components.any(is_reserved_component) || is_temporary_name(name)
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

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "a",
            "notes.md",
            "dir/sub/file.md",
            "Ünïcödé/日本語.md",
            "with space/and-dash_.md",
            ".cueignore",
            ".hidden/file",
            "ab:c",
            "dir/C:x",
            ".gitignore",
            "x.git",
            "...",
            "..x",
        ] {
            assert!(
                WorkspacePath::parse(ok).is_ok(),
                "{ok:?} should be accepted"
            );
        }
    }

    #[test]
    fn rejects_unsafe_paths() {
        type Check = fn(&PathError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, PathError::Empty)),
            ("/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
            ("C:", |e| matches!(e, PathError::Drive(_))),
            ("c:/windows", |e| matches!(e, PathError::Drive(_))),
            ("C:foo", |e| matches!(e, PathError::Drive(_))),
            ("../x", |e| matches!(e, PathError::NotNormalised(_))),
            ("a/../../x", |e| matches!(e, PathError::NotNormalised(_))),
            ("a/./b", |e| matches!(e, PathError::NotNormalised(_))),
            ("./a", |e| matches!(e, PathError::NotNormalised(_))),
            ("..", |e| matches!(e, PathError::NotNormalised(_))),
            ("a//b", |e| matches!(e, PathError::NotNormalised(_))),
            ("a/", |e| matches!(e, PathError::NotNormalised(_))),
            ("a\\b", |e| matches!(e, PathError::Backslash(_))),
            ("..\\x", |e| matches!(e, PathError::Backslash(_))),
            ("a\0b", |e| matches!(e, PathError::ControlChar(_))),
            ("a\nb", |e| matches!(e, PathError::ControlChar(_))),
            ("a\u{7f}", |e| matches!(e, PathError::ControlChar(_))),
            ("a\u{85}", |e| matches!(e, PathError::ControlChar(_))),
            (".cuedeck/config.toml", |e| {
                matches!(e, PathError::Reserved { .. })
            }),
            ("sub/.git/config", |e| {
                matches!(e, PathError::Reserved { .. })
            }),
            (".GIT/HEAD", |e| matches!(e, PathError::Reserved { .. })),
            (".CueDeck", |e| matches!(e, PathError::Reserved { .. })),
        ];
        for (input, check) in cases {
            let err = WorkspacePath::parse(input).expect_err(input);
            assert!(check(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn length_limits() {
        let long_component = "a".repeat(256);
        assert!(matches!(
            WorkspacePath::parse(&long_component),
            Err(PathError::ComponentTooLong(_))
        ));
        assert!(WorkspacePath::parse(&"a".repeat(255)).is_ok());
        // 255-byte components joined: 16 of them are 4095 bytes, 17 exceed 4096.
        let c = "b".repeat(255);
        let ok = vec![c.as_str(); 16].join("/");
        assert_eq!(ok.len(), 4095);
        assert!(WorkspacePath::parse(&ok).is_ok());
        let too_long = vec![c.as_str(); 17].join("/");
        assert!(matches!(
            WorkspacePath::parse(&too_long),
            Err(PathError::TooLong(_))
        ));
        // A multi-byte name is measured in bytes, not characters.
        assert!(WorkspacePath::parse(&"é".repeat(128)).is_err());
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
        ] {
            assert!(!is_never_synced(no), "{no:?} should be synced");
        }
    }
}
