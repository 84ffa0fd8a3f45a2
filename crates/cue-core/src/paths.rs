//! Which path names cue syncs: the one statement of the rules, the same on every device.
//!
//! The engine checks every path from a peer or from the disk with [`valid_path`], so a
//! hostile peer's path never enters its state. The daemon's `WorkspacePath` is this check
//! plus what needs the disk (UTF-8 file names, staying under the workspace root), and the
//! kernel confines the write itself.

/// Longest path, in bytes, cue syncs (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest name (path component), in bytes: ext4, APFS and NTFS create nothing longer.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// The workspace's state directory.
pub const CUEDECK_DIR: &str = ".cuedeck";
/// git's repository directory.
pub const GIT_DIR: &str = ".git";

/// Why a path is not one cue syncs. Each message names the path and the one rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    /// The path is not repeated: it is over 4 KiB.
    #[error("the path is {len} bytes long; the limit is {max} bytes", max = MAX_PATH_BYTES)]
    TooLong { len: usize },
    #[error("the path {0:?} contains NUL or a control character")]
    ControlChar(String),
    #[error("the path {0:?} contains a backslash")]
    Backslash(String),
    #[error("the path {0:?} is absolute")]
    Absolute(String),
    #[error("the path {0:?} starts with a drive letter")]
    Drive(String),
    #[error("the path {0:?} has an empty, `.` or `..` component")]
    NotNormalised(String),
    #[error(
        "the path {path:?} has a name of {len} bytes; the limit is {max} bytes",
        max = MAX_COMPONENT_BYTES
    )]
    NameTooLong { path: String, len: usize },
    #[error("the path {path:?} goes through `{name}`, which belongs to cue or git")]
    Reserved { path: String, name: String },
}

/// Accepts a path cue syncs: relative, `/`-separated, normalised (no empty, `.` or `..`
/// component), free of control characters and backslashes, no Windows drive prefix, at
/// most [`MAX_PATH_BYTES`] in all and [`MAX_COMPONENT_BYTES`] a component, and never
/// through `.cuedeck` or `.git` in any case ([`is_reserved_name`]).
pub fn valid_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong { len: path.len() });
    }
    // First, so that no other message has to show a raw control byte (`{:?}` escapes it).
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlChar(path.to_owned()));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash(path.to_owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    if starts_with_drive(path) {
        return Err(PathError::Drive(path.to_owned()));
    }
    for name in path.split('/') {
        if name.is_empty() || name == "." || name == ".." {
            return Err(PathError::NotNormalised(path.to_owned()));
        }
        if name.len() > MAX_COMPONENT_BYTES {
            return Err(PathError::NameTooLong {
                path: path.to_owned(),
                len: name.len(),
            });
        }
        if is_reserved_name(name) {
            return Err(PathError::Reserved {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// `.cuedeck` and `.git`, and every name a filesystem cue runs on takes for one of them
/// (the class git guards against in `is_hfs_dotgit`):
/// - any case, by Unicode rules: `.GIT` on macOS, `.cuedec\u{212A}` (Kelvin sign) on
///   ext4 with casefold, which folds by Unicode, not ASCII;
/// - with code points HFS+ ignores in names (`.g\u{200C}it`).
///
/// A member could otherwise send a path that lands inside another device's `.cuedeck`
/// or `.git` on that device's filesystem. (Windows' forms, `.git.` and `GIT~1`, are left
/// out: cue does not run there, and a file of such a name synced by an earlier version
/// would leave the disk of a device that took it for reserved.)
pub fn is_reserved_name(name: &str) -> bool {
    // The usual name: ASCII, compared as it is (every part of every path goes through
    // here when the live view is built).
    if name.is_ascii() {
        return name.eq_ignore_ascii_case(CUEDECK_DIR) || name.eq_ignore_ascii_case(GIT_DIR);
    }
    let plain: String = name.chars().filter(|c| !is_hfs_ignorable(*c)).collect();
    let key = name_key(&plain);
    key == CUEDECK_DIR || key == GIT_DIR
}

/// The code points HFS+ drops when it compares names (Apple TN1150; git's list).
fn is_hfs_ignorable(c: char) -> bool {
    matches!(c,
        '\u{200C}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{206A}'..='\u{206F}' | '\u{FEFF}')
}

/// What a path is to the filesystems cue meets: its Unicode NFC form in lower case.
///
/// Two paths with one key look the same to a user (`café.md` written in NFC and in NFD)
/// or are one file on a case-insensitive filesystem (macOS and Windows by default, exFAT,
/// ext4 with casefold): the workspace never holds two live files with one key
/// (docs/reference.md §2.4), and a device whose folder ignores case finds its files by key.
pub fn name_key(path: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    if path.is_ascii() {
        return path.to_ascii_lowercase();
    }
    // Lower case first: NFC of the result is then one form whatever form came in.
    path.to_lowercase().nfc().collect()
}

/// `C:`, `c:foo`: a Windows drive path, absolute or drive-relative.
fn starts_with_drive(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_one_filesystem_or_user_takes_for_the_same_share_a_key() {
        let nfc = "caf\u{e9}.md";
        let nfd = "cafe\u{301}.md";
        assert_ne!(nfc, nfd);
        assert_eq!(name_key(nfc), name_key(nfd));
        assert_eq!(name_key("Notes/README.md"), name_key("notes/readme.md"));
        assert_eq!(name_key("CAF\u{c9}.md"), name_key(nfd));
        assert_eq!(name_key("\u{1e9e}"), name_key("\u{df}"));
        assert_ne!(name_key("a.md"), name_key("b.md"));
        assert_ne!(name_key("notes/a"), name_key("notesa"));
    }

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "a",
            "notes/a.md",
            "ünï/c ode.md",
            "Ünïcödé/日本語.md",
            ".cueignore",
            ".hidden/file",
            ".gitignore",
            ".github/workflows/ci.yml",
            "x.git",
            "a/.git.md",
            ".cuedeck2",
            "...",
            "..x",
            "ab:c",
            "dir/C:x",
            "1:x",
        ] {
            assert_eq!(valid_path(ok), Ok(()), "{ok:?} must be accepted");
        }
    }

    #[test]
    fn each_rule_has_its_error() {
        let owned = |s: &str| s.to_owned();
        let reserved = |path: &str, name: &str| PathError::Reserved {
            path: owned(path),
            name: owned(name),
        };
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute(owned("/etc/passwd"))),
            ("/", PathError::Absolute(owned("/"))),
            ("C:", PathError::Drive(owned("C:"))),
            ("c:/windows", PathError::Drive(owned("c:/windows"))),
            ("C:foo", PathError::Drive(owned("C:foo"))),
            ("..", PathError::NotNormalised(owned(".."))),
            ("../x", PathError::NotNormalised(owned("../x"))),
            ("a/../b", PathError::NotNormalised(owned("a/../b"))),
            ("a/..", PathError::NotNormalised(owned("a/.."))),
            (".", PathError::NotNormalised(owned("."))),
            ("./a", PathError::NotNormalised(owned("./a"))),
            ("a/./b", PathError::NotNormalised(owned("a/./b"))),
            ("a//b", PathError::NotNormalised(owned("a//b"))),
            ("a/", PathError::NotNormalised(owned("a/"))),
            ("a\\b", PathError::Backslash(owned("a\\b"))),
            ("..\\x", PathError::Backslash(owned("..\\x"))),
            ("C:\\x", PathError::Backslash(owned("C:\\x"))),
            ("a\0b", PathError::ControlChar(owned("a\0b"))),
            ("\0", PathError::ControlChar(owned("\0"))),
            ("a\nb", PathError::ControlChar(owned("a\nb"))),
            ("a\u{7f}", PathError::ControlChar(owned("a\u{7f}"))),
            ("a\u{85}", PathError::ControlChar(owned("a\u{85}"))),
            // A control character wins over the other rules it also breaks.
            ("/a\\\0", PathError::ControlChar(owned("/a\\\0"))),
            (".git", reserved(".git", ".git")),
            (".GIT/x", reserved(".GIT/x", ".GIT")),
            ("sub/.Git/config", reserved("sub/.Git/config", ".Git")),
            (".cuedeck/keys", reserved(".cuedeck/keys", ".cuedeck")),
            ("a/.CueDeck/b", reserved("a/.CueDeck/b", ".CueDeck")),
            ("a/.CUEDECK", reserved("a/.CUEDECK", ".CUEDECK")),
        ];
        for (input, want) in cases {
            assert_eq!(valid_path(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn length_limits() {
        let name = "a".repeat(MAX_COMPONENT_BYTES);
        assert_eq!(valid_path(&name), Ok(()));
        assert_eq!(valid_path(&format!("dir/{name}")), Ok(()));
        let long = "a".repeat(MAX_COMPONENT_BYTES + 1);
        assert_eq!(
            valid_path(&format!("dir/{long}/x")),
            Err(PathError::NameTooLong {
                path: format!("dir/{long}/x"),
                len: 256
            })
        );
        // Bytes, not characters: 128 `é` are 256 bytes.
        assert!(matches!(
            valid_path(&"é".repeat(128)),
            Err(PathError::NameTooLong { len: 256, .. })
        ));
        // 255-byte names joined: 16 of them are 4095 bytes, 17 exceed 4096.
        let parts = vec![name.as_str(); 16].join("/");
        assert_eq!(parts.len(), 4095);
        assert_eq!(valid_path(&parts), Ok(()));
        let too_long = vec![name.as_str(); 17].join("/");
        assert_eq!(
            valid_path(&too_long),
            Err(PathError::TooLong {
                len: too_long.len()
            })
        );
        assert!(valid_path(&"a/".repeat(3000)).is_err());
    }

    #[test]
    fn messages_are_one_line_and_state_the_rule_once() {
        let long = "n".repeat(300);
        let cases = [
            ("", "the path is empty"),
            ("/x", "the path \"/x\" is absolute"),
            ("C:x", "the path \"C:x\" starts with a drive letter"),
            (
                "a/../b",
                "the path \"a/../b\" has an empty, `.` or `..` component",
            ),
            ("a\\b", "the path \"a\\\\b\" contains a backslash"),
            (
                "a\0b",
                "the path \"a\\0b\" contains NUL or a control character",
            ),
            (
                "a/.GIT/b",
                "the path \"a/.GIT/b\" goes through `.GIT`, which belongs to cue or git",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(valid_path(input).unwrap_err().to_string(), want);
        }
        assert_eq!(
            valid_path(&long).unwrap_err().to_string(),
            format!("the path {long:?} has a name of 300 bytes; the limit is 255 bytes")
        );
        assert_eq!(
            valid_path(&"a/".repeat(2100)).unwrap_err().to_string(),
            "the path is 4200 bytes long; the limit is 4096 bytes"
        );
    }

    #[test]
    fn reserved_names_in_any_case() {
        for name in [".git", ".GIT", ".gIt", ".cuedeck", ".CueDeck", ".CUEDECK"] {
            assert!(is_reserved_name(name), "{name:?}");
        }
        for name in [
            ".gitignore",
            "git",
            ".cuedeck~",
            "cuedeck",
            ".gi t",
            "",
            "git~2",
        ] {
            assert!(!is_reserved_name(name), "{name:?}");
        }
    }

    /// Names some filesystem takes for `.cuedeck` or `.git` though they are spelled
    /// otherwise: a member sending one could write into another device's `.cuedeck`.
    #[test]
    fn names_a_filesystem_takes_for_cuedeck_or_git_are_reserved() {
        for name in [
            ".cuedec\u{212A}",  // Kelvin sign: ext4 casefold folds it to `k`
            ".\u{0130}git",     // not folded to `.git`: the dotted capital I stays apart
            ".g\u{200C}it",     // HFS+ ignores the zero-width non-joiner
            ".cue\u{FEFF}deck", // and the byte order mark
        ] {
            let expected = !name.contains('\u{0130}');
            assert_eq!(is_reserved_name(name), expected, "{name:?}");
            assert_eq!(valid_path(&format!("notes/{name}/x.md")).is_err(), expected);
        }
        for name in ["\u{212A}eys.md", "notes.", "GIT~1", ".git."] {
            assert!(!is_reserved_name(name), "{name:?}");
        }
    }

    /// A component that is sometimes fine, sometimes breaks exactly one rule.
    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9 _.é-]{1,12}",
            1 => Just(String::new()),
            1 => Just(".".to_owned()),
            1 => Just("..".to_owned()),
            1 => "\\.[gG][iI][tT]",
            1 => "\\.[cC][uU][eE][dD][eE][cC][kK]",
            1 => "[a-z]{0,3}[\\\\\u{0}\u{1f}\n][a-z]{0,3}",
            1 => "[a-zA-Z]:[a-z]{0,3}",
            1 => (250usize..260).prop_map(|n| "x".repeat(n)),
        ]
    }

    proptest! {
        /// The validator agrees with the rules stated component by component.
        #[test]
        fn accepts_exactly_the_paths_whose_components_are_fine(
            parts in proptest::collection::vec(component(), 1..6),
            absolute in any::<bool>(),
        ) {
            let path = format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"));
            let component_ok = |c: &str| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.len() <= MAX_COMPONENT_BYTES
                    && !c.chars().any(|ch| ch.is_control() || ch == '\\')
                    && !is_reserved_name(c)
            };
            let first = parts[0].as_bytes();
            let drive = first.len() >= 2 && first[0].is_ascii_alphabetic() && first[1] == b':';
            let expected = !absolute
                && !drive
                && path.len() <= MAX_PATH_BYTES
                && parts.iter().all(|c| component_ok(c));
            prop_assert_eq!(valid_path(&path).is_ok(), expected, "{:?}", path);
            if let Err(e) = valid_path(&path) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
