//! Identifiers: devices, files and documents.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A device: the public half of its ed25519 identity key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

impl DeviceId {
    /// The first six hex digits, as used in conflict-copy names.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..3])
    }

    pub fn from_hex(s: &str) -> Option<DeviceId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(DeviceId(out))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", &hex::encode(self.0)[..12])
    }
}

/// A file's stable identity; a rename changes its path, never its id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    pub fn from_hex(s: &str) -> Option<FileId> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(FileId(out))
    }

    /// A deterministic id from a domain and parts: the same inputs give the same id on
    /// every peer (used for conflict copies, which several peers may create at once).
    pub fn derive(domain: &str, parts: &[&[u8]]) -> FileId {
        let mut h = blake3::Hasher::new_derive_key(domain);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        FileId(out)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", hex::encode(self.0))
    }
}

/// A document of the workspace: the index, or one file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub enum DocId {
    Index,
    File(FileId),
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Index => f.write_str("index"),
            DocId::File(id) => write!(f, "file-{id}"),
        }
    }
}

impl DocId {
    /// Parse the `Display` form back (the daemon uses it as a storage key).
    pub fn parse(s: &str) -> Option<DocId> {
        if s == "index" {
            return Some(DocId::Index);
        }
        FileId::from_hex(s.strip_prefix("file-")?).map(DocId::File)
    }
}

/// A hash of what cue syncs of a file: its bytes (blake3) and whether it is executable.
/// For a file that is not executable it is the blake3 hash of its bytes alone, so that
/// every hash recorded before the executable bit was synced still stands.
pub type ContentHash = [u8; 32];

/// The hash of a file that is not executable: blake3 of its bytes.
pub fn content_hash(bytes: &[u8]) -> ContentHash {
    *blake3::hash(bytes).as_bytes()
}

/// The hash of a file with `bytes` and, with `exec`, the executable bit.
pub fn file_hash(bytes: &[u8], exec: bool) -> ContentHash {
    with_exec(content_hash(bytes), exec)
}

/// [`file_hash`] from the blake3 hash of the bytes (for a driver that hashes as it reads).
/// An executable file's hash is derived from its bytes' hash, so that `chmod +x` alone
/// is a difference wherever hashes are compared (the start-up scan, expected writes).
pub fn with_exec(bytes_hash: ContentHash, exec: bool) -> ContentHash {
    if !exec {
        return bytes_hash;
    }
    let mut h = blake3::Hasher::new_derive_key("cue executable file 2026");
    h.update(&bytes_hash);
    *h.finalize().as_bytes()
}

/// Whether `believed`, a hash the engine gave ([`file_hash`] of a content and a bit), is
/// the file a driver read as `read` ([`file_hash`] of the bytes read, not executable),
/// on a folder that does not keep modes: the same bytes with either bit.
pub fn same_bytes(believed: ContentHash, read: ContentHash) -> bool {
    believed == read || believed == with_exec(read, true)
}

/// Git's rule for what of a mode is synced: whether the owner may execute the file.
pub fn is_exec(mode: u32) -> bool {
    mode & 0o100 != 0
}

/// `mode` with the executable bits set or cleared as git does on checkout: `+x` gives
/// execute permission to whoever may read (0644 becomes 0755), and always to the owner,
/// whose bit is the one read back ([`is_exec`]); `-x` takes it from everyone. No other
/// bit changes.
pub fn mode_with_exec(mode: u32, exec: bool) -> u32 {
    if exec {
        mode | 0o100 | ((mode & 0o444) >> 2)
    } else {
        mode & !0o111
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_bit_follows_gits_rule() {
        assert_eq!(mode_with_exec(0o644, true), 0o755);
        assert_eq!(mode_with_exec(0o600, true), 0o700);
        assert_eq!(mode_with_exec(0o640, true), 0o750);
        // The owner's bit is the one read back, even where the owner may not read.
        assert_eq!(mode_with_exec(0o200, true), 0o300);
        assert_eq!(mode_with_exec(0o755, false), 0o644);
        // No other bit changes (setuid, sticky, write).
        assert_eq!(mode_with_exec(0o4755, false), 0o4644);
        assert_eq!(mode_with_exec(0o1664, true), 0o1775);
        assert!(is_exec(0o744) && !is_exec(0o655));
    }

    #[test]
    fn a_plain_files_hash_is_its_bytes_hash_and_the_bit_makes_a_difference() {
        assert_eq!(file_hash(b"x", false), content_hash(b"x"));
        assert_ne!(file_hash(b"x", true), content_hash(b"x"));
        assert_eq!(file_hash(b"x", true), with_exec(content_hash(b"x"), true));
    }
}
