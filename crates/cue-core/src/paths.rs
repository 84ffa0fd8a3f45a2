//! Which paths the engine accepts from peers and from the disk.
//!
//! The daemon enforces the same rules again with the kernel's help at the write; this
//! check keeps a hostile peer's path out of the engine's state in the first place.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path is too long ({0} bytes)")]
    TooLong(usize),
    #[error("absolute path")]
    Absolute,
    #[error("path has a `.`, `..` or empty component")]
    NotNormal,
    #[error("path has a NUL, control character or backslash")]
    BadChar,
    #[error("path is inside .cuedeck or .git")]
    Reserved,
}

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_COMPONENT_BYTES: usize = 255;

/// A path from a peer or the disk: relative, normalised, `/`-separated, inside the
/// workspace, never in `.cuedeck` or `.git`.
pub fn valid_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    if path.starts_with('/') || path.as_bytes().get(1) == Some(&b':') {
        return Err(PathError::Absolute);
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::BadChar);
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(PathError::NotNormal);
        }
        if part.len() > MAX_COMPONENT_BYTES {
            return Err(PathError::TooLong(part.len()));
        }
        if part == ".cuedeck" || part == ".git" {
            return Err(PathError::Reserved);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_refuses_escapes() {
        assert!(valid_path("notes/a.md").is_ok());
        assert!(valid_path("ünï/c ode.md").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/.",
            "C:/x",
            "a\0b",
            "a\\b",
            ".cuedeck/keys",
            "x/.git/config",
        ] {
            assert!(valid_path(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(valid_path(&"a/".repeat(3000)).is_err());
    }
}
