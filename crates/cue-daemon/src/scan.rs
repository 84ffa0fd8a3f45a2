//! The start-up scan: every file in the workspace with its length, mtime and blake3 hash.
//!
//! The daemon compares a scan with its path/hash index to turn whatever changed while it
//! was stopped (edits, new files, deletions, renames where the content shows one) into
//! changes, and rescans after the watcher overflows.
//!
//! The walk never follows symlinks and uses the same [`IgnoreRules`] as the watcher (the
//! root's `.cueignore` plus the never-synced names), so scan and watcher agree on every
//! path; an ignored folder is not descended into. Files are opened through
//! [`WorkspaceFs`], so a file swapped for a symlink mid-scan is reported, not followed.
//! Symlinks, special files, files over `max_file_size` (by their size, without reading
//! them) and names cue cannot sync are listed as skipped, for `status` to show.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ignore::WalkBuilder;

use crate::fsio::{FileKind, FsError, WorkspaceFs};
use crate::ignore_rules::IgnoreRules;
use crate::paths::{CUE_TEMP_PREFIX, PathError, WorkspacePath};

/// Why the workspace could not be scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the workspace folder {0:?} is missing or not a folder")]
    RootMissing(PathBuf),
}

/// Scan settings.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Larger files are listed as skipped and not read (config `max_file_size`).
    pub max_file_size: u64,
    /// Folders earlier scans found to be mount points (another filesystem mounted on
    /// them), relative to the root: one that is a plain folder of the workspace's
    /// filesystem now is not mounted, and its files are not taken for deleted.
    pub known_mounts: BTreeSet<String>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            max_file_size: 16 * 1024 * 1024,
            known_mounts: BTreeSet::new(),
        }
    }
}

/// A regular file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    pub path: WorkspacePath,
    /// Bytes hashed (the length of the content `hash` covers).
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch, as seen before reading.
    pub mtime_ns: i64,
    /// blake3 of the content.
    pub hash: [u8; 32],
    /// Whether the file is executable (git's rule, [`cue_core::is_exec`]): the engine's
    /// hash of it is [`cue_core::with_exec`] of the two, so a `chmod` made while no daemon
    /// ran is found.
    pub exec: bool,
}

/// Why a path is not synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    Symlink,
    /// A named pipe, socket or device.
    Special(FileKind),
    TooLarge {
        size: u64,
    },
    /// A name cue cannot sync (not UTF-8, a control character, a backslash, too long).
    InvalidName(PathError),
    /// Could not be read (permissions, IO error); the message says why.
    Unreadable(String),
    /// A folder another filesystem was mounted on (a disk, a network share), found
    /// unmounted: what is in it now is not the workspace's, and the files synced from
    /// it are kept as they were, never taken for deleted.
    NotMounted,
    /// A folder that held synced files, with a disk mounted over it since: the disk
    /// hides them. They are kept as they were (never taken for deleted, nor the disk's
    /// files for edits of them) until it is unmounted.
    MountedOver,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Symlink => f.write_str("symlink (cue never follows symlinks)"),
            SkipReason::Special(kind) => write!(f, "{kind}, not a regular file"),
            SkipReason::TooLarge { size } => write!(f, "larger than max_file_size ({size} bytes)"),
            SkipReason::InvalidName(e) => write!(f, "name cannot be synced: {e}"),
            SkipReason::Unreadable(e) => write!(f, "unreadable: {e}"),
            SkipReason::NotMounted => f.write_str(
                "not mounted: its files are kept as they were until it is mounted again \
                 (`cue sync forget-mount FOLDER` if it is gone for good)",
            ),
            SkipReason::MountedOver => f.write_str(
                "a disk is mounted over synced files: they are kept as they were, \
                 and synced again once it is unmounted",
            ),
        }
    }
}

/// A path the scan found but does not sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Relative to the root (lossy if the name is not UTF-8).
    pub path: String,
    pub reason: SkipReason,
}

/// The result of a scan, each list sorted by path.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub files: Vec<ScannedFile>,
    pub skipped: Vec<Skipped>,
    /// cue's own temporary files left by a crash; remove them with
    /// [`WorkspaceFs::remove_stale_temp`].
    pub stale_temps: Vec<String>,
    /// Folders on another filesystem than the root's (mount points), and known mount
    /// points found unmounted: what the next scan's [`ScanOptions::known_mounts`] is.
    pub mounts: BTreeSet<String>,
}

/// Files as this device last synced them: path and hash (with the executable bit).
pub type SyncedFiles = Vec<(String, [u8; 32])>;

impl ScanReport {
    /// Sets apart the disks mounted, since the last scan, over folders that held synced
    /// files, where the disk is not that folder: those files are hidden, not deleted, and
    /// what the disk holds is not theirs. `synced_under(folder)` gives the files this
    /// device last saw there with their hashes, `same(believed, found)` whether a hash
    /// found is one of them ([`cue_core::Engine::same_on_disk`]). A disk is the folder's
    /// (the folder moved onto it, then mounted in its place) when it holds every one of
    /// those files, and at least half of them as they were synced (a camera's card
    /// holding the same names is not); any other is set apart: listed as
    /// [`SkipReason::MountedOver`], its files, temporary files and mount points left
    /// out, and not remembered (unmounted, the folder is a plain one again). Returns the
    /// folders set apart.
    pub fn set_apart_mounted_over(
        &mut self,
        known_mounts: &BTreeSet<String>,
        synced_under: &dyn Fn(&str) -> SyncedFiles,
        same: &dyn Fn([u8; 32], [u8; 32]) -> bool,
    ) -> BTreeSet<String> {
        let under = |p: &str, dir: &str| p == dir || below(p, dir);
        let mut over = BTreeSet::new();
        let fresh: Vec<String> = self.mounts.difference(known_mounts).cloned().collect();
        for mount in fresh {
            if over.iter().any(|o: &String| under(&mount, o)) {
                continue;
            }
            let synced = synced_under(&mount);
            if synced.is_empty() {
                continue;
            }
            // What the disk holds at each synced name: a hash, or `None` for a file
            // found and not read (too large, unreadable).
            let mut found: BTreeMap<&str, Option<[u8; 32]>> = self
                .skipped
                .iter()
                .filter(|s| under(&s.path, &mount))
                .map(|s| (s.path.as_str(), None))
                .collect();
            found.extend(
                self.files
                    .iter()
                    .filter(|f| under(f.path.as_str(), &mount))
                    .map(|f| (f.path.as_str(), Some(cue_core::with_exec(f.hash, f.exec)))),
            );
            let mut kept = 0;
            let mut all_there = true;
            for (path, believed) in &synced {
                match found.get(path.as_str()) {
                    None => all_there = false,
                    Some(Some(hash)) if same(*believed, *hash) => kept += 1,
                    Some(_) => {}
                }
            }
            if !all_there || kept * 2 < synced.len() {
                over.insert(mount);
            }
        }
        for mount in &over {
            self.files.retain(|f| !under(f.path.as_str(), mount));
            self.skipped.retain(|s| !under(&s.path, mount));
            // (Another cue's on that disk, maybe: none of ours.)
            self.stale_temps.retain(|t| !under(t, mount));
            self.skipped.push(Skipped {
                path: mount.clone(),
                reason: SkipReason::MountedOver,
            });
            // (Known mount points below it stay known: they are hidden, not gone.)
            self.mounts
                .retain(|m| !under(m, mount) || known_mounts.contains(m));
            self.mounts
                .extend(known_mounts.iter().filter(|m| below(m, mount)).cloned());
        }
        self.skipped.sort_by(|a, b| a.path.cmp(&b.path));
        over
    }
}

/// The mount points strictly below `root`, relative to it, as the kernel lists them
/// (`/proc/self/mountinfo`, Linux; elsewhere none: the scans still find them by their
/// filesystem). Reading it costs tens of microseconds, so the daemon looks at every tick.
/// `None` when it cannot be read (no such list, or a passing failure).
pub fn mounts_below(root: &Path) -> Option<BTreeSet<String>> {
    let root = std::fs::canonicalize(root).ok()?;
    let info = std::fs::read_to_string(MOUNTINFO).ok()?;
    let points = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter_map(|field| {
            let point = PathBuf::from(unescape_mountinfo(field));
            let rel = point.strip_prefix(&root).ok()?.to_str()?.to_string();
            (!rel.is_empty()).then_some(rel)
        })
        .collect();
    Some(points)
}

/// A mountinfo field with its octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`) undone.
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Where the kernel lists the mount points (Linux).
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Whether `path` is strictly below the folder `dir` (both relative).
pub(crate) fn below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// The filesystem (`st_dev`) a path is on, not following a link.
fn device_of(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.dev())
}

/// Whether the folder `path` is on another filesystem than the folder it is in (a
/// mount point, where the kernel lists none); `device_of` as [`device_of`].
fn another_filesystem(path: &Path, device_of: &dyn Fn(&Path) -> Option<u64>) -> bool {
    path.parent()
        .is_some_and(|up| matches!((device_of(path), device_of(up)), (Some(a), Some(b)) if a != b))
}

/// [`another_filesystem`], as the filesystem says.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    another_filesystem(path, &device_of)
}

/// Scans the workspace opened as `fs`.
pub fn scan(
    fs: &WorkspaceFs,
    rules: &IgnoreRules,
    options: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    // (Not read: the folders' filesystems tell, as where there is no such list.)
    let listed = mounts_below(fs.root_path());
    scan_on(fs, rules, options, &device_of, listed.as_ref())
}

/// [`scan`], with where each folder is (`device_of`) and the mount points the kernel
/// lists (`listed`, `None` where it lists none) given: the tests' mount points.
fn scan_on(
    fs: &WorkspaceFs,
    rules: &IgnoreRules,
    options: &ScanOptions,
    device_of: &dyn Fn(&Path) -> Option<u64>,
    listed: Option<&BTreeSet<String>>,
) -> Result<ScanReport, ScanError> {
    let root = fs.root_path().to_owned();
    if !std::fs::metadata(&root).is_ok_and(|m| m.is_dir()) {
        return Err(ScanError::RootMissing(root));
    }
    // A mount point is what the kernel lists as one (a bind mount of a folder of the
    // same filesystem included; a btrfs subvolume, with a device of its own, not);
    // where it lists none, a folder on another filesystem than the one it is in.
    let mounted = |rel: &str| match listed {
        Some(listed) => listed.contains(rel),
        None => another_filesystem(&root.join(rel), device_of),
    };
    let mut report = ScanReport::default();
    for entry in walk(&root, rules) {
        match entry {
            Ok(entry) => {
                if entry.depth() > 0
                    && entry.file_type().is_some_and(|t| t.is_dir())
                    && let Some(rel) = rel_str(&root, entry.path())
                    && mounted(rel)
                {
                    report.mounts.insert(rel.to_string());
                }
                take_entry(fs, &root, options, &entry, &mut report);
            }
            Err(e) => report.skipped.push(walk_error(&root, &e)),
        }
    }
    // A known mount point that is a plain folder again: unmounted. One that is gone
    // altogether was removed, with its files, unless it is below another that is not
    // mounted (it comes back with that one). One still mounted where the walk did not
    // go (an ignored folder) stays known.
    let mut not_mounted: Vec<&String> = Vec::new();
    for mount in &options.known_mounts {
        if mounted(mount) {
            report.mounts.insert(mount.clone());
            continue;
        }
        if not_mounted.iter().any(|m| below(mount, m)) {
            report.mounts.insert(mount.clone());
            continue;
        }
        let is_dir = std::fs::symlink_metadata(root.join(mount)).is_ok_and(|m| m.is_dir());
        if !is_dir || rules.is_ignored(mount, true) {
            continue;
        }
        not_mounted.push(mount);
        let under = |p: &str| p == mount || below(p, mount);
        report.files.retain(|f| !under(f.path.as_str()));
        report.skipped.retain(|s| !under(&s.path));
        report.skipped.push(Skipped {
            path: mount.clone(),
            reason: SkipReason::NotMounted,
        });
        report.mounts.insert(mount.clone());
    }
    report.files.sort_by(|a, b| a.path.cmp(&b.path));
    report.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    report.stale_temps.sort();
    Ok(report)
}

/// The walk below `root`: only our rules (no .gitignore, .ignore, global excludes or
/// parent folders' files), never following links. cue's temporary files and names that
/// cannot be synced are let through, to be reported.
fn walk(root: &Path, rules: &IgnoreRules) -> ignore::Walk {
    let filter_rules = rules.clone();
    let filter_root = root.to_owned();
    WalkBuilder::new(root)
        .standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .filter_entry(move |entry| {
            if entry.depth() == 0 || is_cue_temp(entry) {
                return true;
            }
            let Some(rel) = rel_str(&filter_root, entry.path()) else {
                return true; // reported as an invalid name
            };
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            !filter_rules.is_ignored(rel, is_dir)
        })
        .build()
}

fn is_cue_temp(entry: &ignore::DirEntry) -> bool {
    entry
        .file_name()
        .as_encoded_bytes()
        .starts_with(CUE_TEMP_PREFIX.as_bytes())
}

/// A folder or file the walk could not read.
fn walk_error(root: &Path, e: &ignore::Error) -> Skipped {
    let abs = error_path(e);
    let path = abs
        .and_then(|p| {
            p.strip_prefix(root)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    tracing::warn!(%path, "scan: {e}");
    // (The walk's errors come wrapped: their kind is kept, not their errno.)
    let too_long = e
        .io_error()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidFilename);
    let reason = match abs {
        Some(abs) if too_long => path_too_long(abs),
        _ => e.to_string(),
    };
    Skipped {
        path,
        reason: SkipReason::Unreadable(reason),
    }
}

/// The system's limit on a path handed to it whole (`PATH_MAX`, its terminating NUL
/// included): the walk and the watcher name folders so.
pub const SYSTEM_PATH_MAX: usize = libc::PATH_MAX as usize;

/// Why a folder whose absolute path passes [`SYSTEM_PATH_MAX`] is skipped, the same at
/// the start's scan and while the daemon runs (docs/reference.md, `skipped`).
pub fn path_too_long(abs: &Path) -> String {
    format!(
        "its full path is {} bytes long, over the system's limit of {} bytes: nothing in \
         it can be watched or listed; move the workspace to a shorter path or shorten \
         the folder names",
        abs.as_os_str().len(),
        SYSTEM_PATH_MAX - 1
    )
}

/// Puts one entry of the walk into the report: a file hashed, a path skipped and why, or
/// a stale temporary file.
fn take_entry(
    fs: &WorkspaceFs,
    root: &Path,
    options: &ScanOptions,
    entry: &ignore::DirEntry,
    report: &mut ScanReport,
) {
    let Some(file_type) = entry.file_type() else {
        return;
    };
    if entry.depth() == 0 || file_type.is_dir() {
        return;
    }
    let lossy = entry
        .path()
        .strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_cue_temp(entry) {
        if file_type.is_file() {
            report.stale_temps.push(lossy);
        }
        return;
    }
    let reason = if file_type.is_symlink() {
        SkipReason::Symlink
    } else if !file_type.is_file() {
        SkipReason::Special(special_kind(&file_type))
    } else {
        let parsed = rel_str(root, entry.path())
            .ok_or_else(|| PathError::NotUtf8(lossy.clone()))
            .and_then(WorkspacePath::parse);
        match parsed {
            Ok(path) => match hash_file(fs, &path, options.max_file_size) {
                Ok(Some(Hashed::File(file))) => return report.files.push(file),
                Ok(Some(Hashed::TooLarge(size))) => SkipReason::TooLarge { size },
                Ok(None) => return, // deleted since the folder was listed; the watcher reports it
                Err(FsError::Symlink { .. }) => SkipReason::Symlink,
                Err(FsError::NotRegular { kind, .. }) => SkipReason::Special(kind),
                Err(e) => SkipReason::Unreadable(e.to_string()),
            },
            Err(e) => SkipReason::InvalidName(e),
        }
    };
    report.skipped.push(Skipped {
        path: lossy,
        reason,
    });
}

/// The regular files at or below the folder `dir` that the rules let through, sorted,
/// without reading them: how the watcher expands a folder that appeared all at once (moved
/// in from outside, or created faster than its watch was added). Also the folders the
/// walk could not enter, to be listed under `skipped` as the start's scan lists them.
pub fn list_files_under(
    root: &Path,
    rules: &IgnoreRules,
    dir: &WorkspacePath,
) -> (Vec<WorkspacePath>, Vec<Skipped>) {
    let filter_rules = rules.clone();
    let filter_root = root.to_owned();
    let walker = WalkBuilder::new(dir.to_fs_path(root))
        .standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .filter_entry(move |entry| {
            let Some(rel) = rel_str(&filter_root, entry.path()) else {
                return false;
            };
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            !filter_rules.is_ignored(rel, is_dir)
        })
        .build();
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for entry in walker {
        match entry {
            Ok(e) if e.file_type().is_some_and(|t| t.is_file()) => {
                if let Some(path) =
                    rel_str(root, e.path()).and_then(|r| WorkspacePath::parse(r).ok())
                {
                    files.push(path);
                }
            }
            Ok(_) => {}
            // (One that went while walked is no news.)
            Err(e)
                if e.io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => {}
            Err(e) => unreadable.push(walk_error(root, &e)),
        }
    }
    files.sort();
    (files, unreadable)
}

enum Hashed {
    File(ScannedFile),
    TooLarge(u64),
}

/// Hashes one file, reading at most `max + 1` bytes so a file growing during the scan is
/// still caught as too large without reading it all.
fn hash_file(fs: &WorkspaceFs, path: &WorkspacePath, max: u64) -> Result<Option<Hashed>, FsError> {
    let Some((file, st)) = fs.open_regular(path)? else {
        return Ok(None);
    };
    if st.len > max {
        return Ok(Some(Hashed::TooLarge(st.len)));
    }
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file.take(max.saturating_add(1)))
        .map_err(|e| FsError::Io {
            op: "read",
            path: path.to_string(),
            source: e,
        })?;
    let len = hasher.count();
    if len > max {
        return Ok(Some(Hashed::TooLarge(len)));
    }
    Ok(Some(Hashed::File(ScannedFile {
        path: path.clone(),
        len,
        mtime_ns: st.mtime_ns,
        hash: *hasher.finalize().as_bytes(),
        exec: fs.is_exec(st.mode),
    })))
}

fn rel_str<'a>(root: &Path, path: &'a Path) -> Option<&'a str> {
    path.strip_prefix(root).ok()?.to_str()
}

fn special_kind(t: &std::fs::FileType) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        FileKind::Fifo
    } else if t.is_socket() {
        FileKind::Socket
    } else if t.is_char_device() {
        FileKind::CharDevice
    } else if t.is_block_device() {
        FileKind::BlockDevice
    } else {
        FileKind::Unknown
    }
}

fn error_path(e: &ignore::Error) -> Option<&Path> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        (dir, root)
    }

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn run(root: &Path, max: u64) -> ScanReport {
        let fs = WorkspaceFs::open(root).unwrap();
        let rules = IgnoreRules::load(root).unwrap();
        scan(
            &fs,
            &rules,
            &ScanOptions {
                max_file_size: max,
                ..ScanOptions::default()
            },
        )
        .unwrap()
    }

    /// A scan with `media` on another filesystem when `mounted`, as the daemon runs it
    /// after scans that found `known` mount points.
    fn scan_with_media(root: &Path, mounted: bool, known: &[&str]) -> ScanReport {
        let fs = WorkspaceFs::open(root).unwrap();
        let rules = IgnoreRules::load(root).unwrap();
        let media = root.join("media");
        let device_of = |p: &Path| {
            std::fs::symlink_metadata(p).ok()?;
            Some(if mounted && p.starts_with(&media) {
                2
            } else {
                1
            })
        };
        let options = ScanOptions {
            known_mounts: known.iter().map(|m| m.to_string()).collect(),
            ..ScanOptions::default()
        };
        scan_on(&fs, &rules, &options, &device_of, None).unwrap()
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c\\011"), "/a b\\c\t");
        assert_eq!(unescape_mountinfo("/x\\777\\04"), "/x\\777\\04");
    }

    fn paths(report: &ScanReport) -> Vec<&str> {
        report.files.iter().map(|f| f.path.as_str()).collect()
    }

    /// A disk mounted inside the workspace syncs as any folder, and is remembered as a
    /// mount point; unmounted (the folder empty, or holding what was under the mount),
    /// it is listed as not mounted and none of its files is reported, neither the old
    /// (so none is taken for deleted) nor what the bare folder holds; mounted again, its
    /// files are there as before. A mount point removed altogether is forgotten.
    #[test]
    fn a_mount_point_unmounted_is_listed_not_emptied() {
        let (_d, root) = setup();
        write(&root, "a.md", b"a");
        write(&root, "media/song.txt", b"la");
        write(&root, "media/sub/b.md", b"b");
        let report = scan_with_media(&root, true, &[]);
        assert_eq!(paths(&report), ["a.md", "media/song.txt", "media/sub/b.md"]);
        assert_eq!(report.mounts, BTreeSet::from(["media".to_string()]));

        // Unmounted: the bare folder holds a file of its own.
        std::fs::remove_dir_all(root.join("media")).unwrap();
        write(&root, "media/under-the-mount.txt", b"x");
        let report = scan_with_media(&root, false, &["media"]);
        assert_eq!(paths(&report), ["a.md"]);
        assert_eq!(
            report.skipped,
            [Skipped {
                path: "media".into(),
                reason: SkipReason::NotMounted
            }]
        );
        assert_eq!(report.mounts, BTreeSet::from(["media".to_string()]));

        // Mounted again.
        let report = scan_with_media(&root, true, &["media"]);
        assert!(report.skipped.is_empty());
        assert_eq!(paths(&report), ["a.md", "media/under-the-mount.txt"]);

        // Removed.
        std::fs::remove_dir_all(root.join("media")).unwrap();
        let report = scan_with_media(&root, false, &["media"]);
        assert!(report.skipped.is_empty());
        assert!(report.mounts.is_empty());
        // (A name that only starts like the mount point is not below it.)
        write(&root, "media2/c.md", b"c");
        let report = scan_with_media(&root, false, &[]);
        assert_eq!(paths(&report), ["a.md", "media2/c.md"]);
    }

    /// Where the kernel lists mount points, its list decides, not the folders'
    /// devices: a bind mount of a folder of the same filesystem is a mount point, a
    /// folder with a device of its own (a btrfs subvolume) is not. A known mount point
    /// below one that is not mounted is kept, though its folder is not there.
    #[test]
    fn the_kernels_list_decides_what_is_mounted() {
        let (_d, root) = setup();
        write(&root, "media/song.txt", b"la");
        write(&root, "vol/x.md", b"x");
        let fs = WorkspaceFs::open(&root).unwrap();
        let rules = IgnoreRules::load(&root).unwrap();
        let vol = root.join("vol");
        let device_of = |p: &Path| Some(if p.starts_with(&vol) { 2 } else { 1 });
        let listed = BTreeSet::from(["media".to_string()]);
        let options = ScanOptions::default();
        let report = scan_on(&fs, &rules, &options, &device_of, Some(&listed)).unwrap();
        assert_eq!(report.mounts, listed);
        assert_eq!(paths(&report), ["media/song.txt", "vol/x.md"]);

        let options = ScanOptions {
            known_mounts: ["media", "media/inner"].map(String::from).into(),
            ..ScanOptions::default()
        };
        let report = scan_on(&fs, &rules, &options, &device_of, Some(&BTreeSet::new())).unwrap();
        assert_eq!(paths(&report), ["vol/x.md"]);
        assert_eq!(report.mounts, options.known_mounts);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].reason, SkipReason::NotMounted);
    }

    /// A disk mounted over a folder of synced files hides them: the scan that finds it
    /// must take none of them for deleted, nor the disk's files for theirs, and must not
    /// remember the disk as the folder's (unmounted, the folder is a plain one again).
    /// A disk that holds every file synced there is the folder's.
    #[test]
    fn a_disk_mounted_over_synced_files_is_set_apart() {
        let (_d, root) = setup();
        write(&root, "archive/from-the-disk.md", b"disk");
        write(&root, "archive/inner/deep.md", b"deep");
        write(&root, "notes.md", b"n");
        let fs = WorkspaceFs::open(&root).unwrap();
        let rules = IgnoreRules::load(&root).unwrap();
        let device_of = |_: &Path| Some(1);
        let listed = BTreeSet::from(["archive".to_string(), "archive/inner".to_string()]);
        let known = BTreeSet::from(["archive/kept".to_string()]);
        let options = ScanOptions {
            known_mounts: known.clone(),
            ..ScanOptions::default()
        };
        let scanned = scan_on(&fs, &rules, &options, &device_of, Some(&listed)).unwrap();

        let mut report = scanned.clone();
        let same = |a: [u8; 32], b: [u8; 32]| a == b;
        let synced = |dir: &str| match dir {
            "archive" => vec![(
                "archive/plan.md".to_string(),
                cue_core::file_hash(b"plan", false),
            )],
            _ => Vec::new(),
        };
        let over = report.set_apart_mounted_over(&known, &synced, &same);
        assert_eq!(over, BTreeSet::from(["archive".to_string()]));
        assert_eq!(paths(&report), ["notes.md"]);
        assert_eq!(
            report.skipped,
            [Skipped {
                path: "archive".into(),
                reason: SkipReason::MountedOver
            }]
        );
        assert_eq!(
            report.mounts, known,
            "the disk is not remembered; known ones stay"
        );

        // The same names with other bytes (another camera's card): not the folder's.
        let mut report = scanned.clone();
        let same_names = |dir: &str| match dir {
            "archive" => vec![(
                "archive/from-the-disk.md".to_string(),
                cue_core::file_hash(b"the synced bytes", false),
            )],
            _ => Vec::new(),
        };
        assert_eq!(
            report.set_apart_mounted_over(&known, &same_names, &same),
            over
        );

        // Every synced file there, as synced: the folder moved onto the disk.
        let mut report = scanned.clone();
        let on_the_disk = |dir: &str| match dir {
            "archive" => vec![(
                "archive/from-the-disk.md".to_string(),
                cue_core::file_hash(b"disk", false),
            )],
            _ => Vec::new(),
        };
        assert!(
            report
                .set_apart_mounted_over(&known, &on_the_disk, &same)
                .is_empty()
        );
        assert_eq!(report.files.len(), scanned.files.len());
        assert!(report.mounts.contains("archive"));

        // A known mount point is the disk's own: never set apart.
        let mut report = scanned.clone();
        let all_known: BTreeSet<String> = listed.union(&known).cloned().collect();
        assert!(
            report
                .set_apart_mounted_over(&all_known, &synced, &same)
                .is_empty()
        );
    }

    #[test]
    fn lists_files_sorted_with_hashes() {
        let (_d, root) = setup();
        write(&root, "b.md", b"bee");
        write(&root, "a/z.md", b"zed");
        write(&root, "a/.hidden.md", b"h");
        write(&root, ".cueignore", b"*.log\nbuild/\n");
        write(&root, "x.log", b"ignored");
        write(&root, "build/out.md", b"ignored");
        write(&root, ".git/HEAD", b"ref");
        write(&root, ".cuedeck/config.toml", b"");
        write(&root, "notes.md.swp", b"vim");
        write(&root, "sub/.gitignore", b"*.md\n"); // not a cue rule
        write(&root, "sub/kept.md", b"kept");

        let report = run(&root, 1024);
        let paths: Vec<_> = report.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".cueignore",
                "a/.hidden.md",
                "a/z.md",
                "b.md",
                "sub/.gitignore",
                "sub/kept.md"
            ]
        );
        let b = &report.files[3];
        assert_eq!(b.len, 3);
        assert_eq!(b.hash, *blake3::hash(b"bee").as_bytes());
        assert!(b.mtime_ns > 0);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    }

    #[test]
    fn symlinks_special_and_large_files_are_skipped() {
        let (dir, root) = setup();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        write(&outside, "secret.md", b"secret");
        symlink(&outside, root.join("dirlink")).unwrap();
        symlink(outside.join("secret.md"), root.join("filelink.md")).unwrap();
        write(&root, "big.bin", &vec![7u8; 2000]);
        write(&root, "ok.md", b"ok");
        std::fs::write(root.join("ctl\u{1}.md"), b"bad name").unwrap();
        let sock = root.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();

        let report = run(&root, 1000);
        let paths: Vec<_> = report.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["ok.md"]);
        let skipped: Vec<_> = report
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.clone()))
            .collect();
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped.contains(&("big.bin", SkipReason::TooLarge { size: 2000 })));
        assert!(skipped.contains(&("dirlink", SkipReason::Symlink)));
        assert!(skipped.contains(&("filelink.md", SkipReason::Symlink)));
        assert!(skipped.contains(&("sock", SkipReason::Special(FileKind::Socket))));
        assert!(
            skipped
                .iter()
                .any(|(p, r)| *p == "ctl\u{1}.md" && matches!(r, SkipReason::InvalidName(_)))
        );
    }

    #[test]
    fn stale_temporaries_are_reported() {
        let (_d, root) = setup();
        write(&root, "d/.cue-tmp-99-1", b"half");
        write(&root, "d/real.md", b"real");
        let report = run(&root, 1024);
        assert_eq!(report.stale_temps, ["d/.cue-tmp-99-1"]);
        assert_eq!(report.files.len(), 1);
    }

    #[test]
    fn lists_files_under_a_folder() {
        let (_d, root) = setup();
        write(&root, "d/a.md", b"");
        write(&root, "d/e/b.md", b"");
        write(&root, "d/x.swp", b"");
        write(&root, "other.md", b"");
        std::os::unix::fs::symlink(root.join("other.md"), root.join("d/link.md")).unwrap();
        let rules = IgnoreRules::from_source(&root, None);
        let d = WorkspacePath::parse("d").unwrap();
        let (files, unreadable) = list_files_under(&root, &rules, &d);
        assert!(unreadable.is_empty(), "{unreadable:?}");
        let names: Vec<_> = files.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["d/a.md", "d/e/b.md"]);
    }

    #[test]
    fn missing_root_is_an_error() {
        let (_d, root) = setup();
        let fs = WorkspaceFs::open(&root).unwrap();
        std::fs::remove_dir(&root).unwrap();
        let rules = IgnoreRules::from_source(&root, None);
        assert!(matches!(
            scan(&fs, &rules, &ScanOptions::default()),
            Err(ScanError::RootMissing(_))
        ));
    }
}
