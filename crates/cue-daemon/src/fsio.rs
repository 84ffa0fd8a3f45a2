//! File IO confined to the workspace by the kernel.
//!
//! [`WorkspaceFs`] opens the workspace root once as a directory descriptor. Every later
//! open resolves its path *relative to that descriptor* with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so the kernel itself refuses a path that would leave the
//! workspace or pass through a symlink — including a symlink swapped in between a check and
//! the write. The last component is then handled with `*at` calls on the parent's
//! descriptor and `O_NOFOLLOW`. When `openat2` is unavailable (`ENOSYS`, or `EPERM` from an
//! old seccomp filter) the same guarantee comes from walking component by component with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, each step relative to the descriptor of the last.
//!
//! Writes are atomic and durable: a temporary file named `.cue-tmp-*` (which the watcher
//! and scanner ignore) in the same directory, written, made durable, renamed over the
//! target, then the directory made durable. One `fsync` per file is slow for many files
//! (docs/benchmarks.md), so [`WriteBatch`] writes every temporary file first, makes them
//! all durable with one `syncfs`, renames them, and then fsyncs each touched directory
//! once.
//!
//! cue never follows, creates or writes through a symlink: a symlink at the target is an
//! error ([`FsError::Symlink`]), not something to replace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

use crate::paths::{CUE_TEMP_PREFIX, WorkspacePath};

/// What went wrong with a file operation inside the workspace.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot open the workspace folder {path:?}: {source}")]
    OpenRoot { path: PathBuf, source: io::Error },
    #[error("{path} is a symlink; cue never follows, creates or writes through symlinks")]
    Symlink { path: String },
    #[error(
        "a folder on the way to {path} is a symlink; cue never follows, creates or writes through symlinks"
    )]
    SymlinkOnTheWay { path: String },
    #[error("a component on the way to {path} is a file, not a folder")]
    NotADirectory { path: String },
    #[error("{path} is a {kind}, not a regular file")]
    NotRegular { path: String, kind: FileKind },
    #[error("{path} would resolve outside the workspace")]
    Escapes { path: String },
    #[error("{path} already exists")]
    AlreadyExists { path: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

impl FsError {
    pub(crate) fn io(op: &'static str, path: &str, e: impl Into<io::Error>) -> FsError {
        FsError::Io {
            op,
            path: path.to_owned(),
            source: e.into(),
        }
    }
}

/// The kind of a filesystem object, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl FileKind {
    fn from_mode(mode: u32) -> FileKind {
        match FileType::from_raw_mode(mode as _) {
            FileType::RegularFile => FileKind::Regular,
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            _ => FileKind::Unknown,
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "regular file",
            FileKind::Directory => "folder",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "named pipe",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Unknown => "special file",
        })
    }
}

/// What `lstat` says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub kind: FileKind,
    pub len: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
}

impl FileStat {
    /// Which file this is, for the write journal.
    pub fn id(&self) -> FileId {
        FileId {
            ino: self.ino,
            mtime_ns: self.mtime_ns,
        }
    }

    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // field types vary by arch
    fn from_stat(st: &rustix::fs::Stat) -> FileStat {
        let mode = st.st_mode as u32;
        FileStat {
            kind: FileKind::from_mode(mode),
            len: st.st_size.max(0) as u64,
            mtime_ns: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            mode: mode & 0o7777,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }
}

/// A precondition on a path's current content, checked just before a write or removal
/// replaces it, so that a local edit the daemon has not taken in yet is never overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Replace whatever is there.
    Any,
    /// Only if nothing is there.
    Absent,
    /// Only if the file's content and executable bit have this hash
    /// ([`cue_core::file_hash`]): a `chmod` not taken in yet is a change like an edit.
    Content([u8; 32]),
}

/// Whether a conditional write or removal happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The file was not as expected; nothing was changed. Re-read it and merge.
    Unexpected,
    /// Done, but the file it replaced or removed had been written to after the check (a
    /// program appending to it in that instant): this is what it held, and whether it was
    /// executable. Merge it.
    DoneOverEdit(Vec<u8>, bool),
}

/// The workspace root, opened once; every path below it is resolved by the kernel relative
/// to this descriptor.
#[derive(Debug)]
pub struct WorkspaceFs {
    root: OwnedFd,
    root_path: PathBuf,
    root_dev: u64,
    /// Cleared on the first `ENOSYS` from `openat2`; the component walk takes over.
    use_openat2: AtomicBool,
    /// Files replaced lately, kept aside a while (see [`WorkspaceFs::late_writes`]).
    replaced: std::sync::Mutex<Vec<Replaced>>,
    /// Whether the folder keeps Unix modes ([`keeps_modes`]). When it does not, every file
    /// reads as not executable, no write sets a mode, and a file holds what the engine
    /// expects when its bytes do ([`cue_core::same_bytes`]).
    modes: bool,
    /// `syncfs` calls made by `flush_files` (each flushes the whole filesystem).
    syncfs_calls: std::sync::atomic::AtomicU64,
    /// What every temporary name this opening makes begins with ([`temp_prefix`]).
    temp_prefix: String,
}

/// A file a write replaced, kept under a temporary name next to it for
/// [`LATE_WRITE_WINDOW`]: a program that had it open may still write to it.
#[derive(Debug)]
struct Replaced {
    path: WorkspacePath,
    /// The folder it is in, held open (one descriptor for the files kept aside in one
    /// folder, at most [`MAX_ASIDE_FOLDERS`]): a folder renamed or moved meanwhile is
    /// followed, its kept-aside file removed and a late write to it told by the file's
    /// path now. (Found again by its old path, the folder was not there: the temporary
    /// stayed in the moved folder until a restart, the late write unread.) `None` past
    /// the bound: found again by its path.
    dir: Option<std::sync::Arc<OwnedFd>>,
    aside: String,
    /// The hash of what it held when it was replaced, executable bit included (that much
    /// was merged).
    seen: [u8; 32],
    at: std::time::Instant,
}

/// How long a replaced file is watched for late writes.
pub const LATE_WRITE_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// At most this many replaced files are watched at once; more are removed at once.
const MAX_REPLACED: usize = 1024;

/// At most this many folders of kept-aside files are held open at once (descriptors are
/// a bounded resource; a burst of writes across many folders finds the rest by path).
const MAX_ASIDE_FOLDERS: usize = 64;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Retries for `EAGAIN`, which `openat2` returns when a concurrent rename raced the lookup.
const OPENAT2_RETRIES: usize = 8;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Does the filesystem holding `dir` take names differing only in letter case for one
/// (macOS and Windows by default, exFAT, FAT, ext4 with casefold)? Asked by creating a
/// file under a lower-case name and looking it up under the upper-case one; the engine
/// then finds a file at any spelling of its name (docs/reference.md §2.4). When the
/// question cannot be asked (a read-only folder), the answer is no.
pub fn ignores_case(dir: &Path) -> bool {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(".cue-tmp-case-{}-{nanos:x}", std::process::id());
    let lower = dir.join(&name);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lower);
    if created.is_err() {
        return false;
    }
    let folds = std::fs::symlink_metadata(dir.join(name.to_uppercase())).is_ok();
    let _ = std::fs::remove_file(&lower);
    folds
}

/// Does the filesystem holding `dir` keep Unix modes? Git's `core.fileMode` probe: a
/// file created there is made executable, then not, and each must read back so. exFAT,
/// FAT and some network mounts show every file with their mount's mode (`chmod` ignored
/// or refused): there the executable bit read says nothing, and the engine keeps each
/// file's bit as its document has it (docs/reference.md §2.4). When the question cannot
/// be asked (a read-only folder), the answer is yes.
pub fn keeps_modes(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(".cue-tmp-mode-{}-{nanos:x}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    let Ok(file) = created else {
        return true;
    };
    let sticks = |exec: bool| {
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let mode = cue_core::mode_with_exec(meta.permissions().mode() & 0o7777, exec);
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .is_ok()
            && std::fs::symlink_metadata(&path)
                .is_ok_and(|m| cue_core::is_exec(m.permissions().mode()) == exec)
    };
    let kept = sticks(true) && sticks(false);
    drop(file);
    let _ = std::fs::remove_file(&path);
    kept
}

/// A file holds `want` (a hash the engine gave) when it reads as `read`: the same hash,
/// or where modes are not kept the same bytes.
fn holds(modes: bool, want: [u8; 32], read: [u8; 32]) -> bool {
    want == read || (!modes && cue_core::same_bytes(want, read))
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

impl WorkspaceFs {
    /// Opens the workspace root. The root path itself may be reached through symlinks (it is
    /// the user's choice); nothing below it is.
    pub fn open(root: &Path) -> Result<WorkspaceFs, FsError> {
        let fd = rustix::fs::open(root, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())
            .map_err(|e| FsError::OpenRoot {
                path: root.to_owned(),
                source: e.into(),
            })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| FsError::OpenRoot {
            path: root.to_owned(),
            source: e.into(),
        })?;
        Ok(WorkspaceFs {
            root_dev: FileStat::from_stat(&st).dev,
            root: fd,
            root_path: root.to_owned(),
            use_openat2: AtomicBool::new(true),
            replaced: std::sync::Mutex::new(Vec::new()),
            modes: true,
            syncfs_calls: std::sync::atomic::AtomicU64::new(0),
            temp_prefix: temp_prefix(),
        })
    }

    /// This folder as one that keeps Unix modes or not ([`keeps_modes`]; the engine's
    /// `Config::modes_unkept` says which).
    pub fn keeping_modes(mut self, modes: bool) -> WorkspaceFs {
        self.modes = modes;
        self
    }

    /// Whether a file of this mode reads as executable: never where modes are not kept.
    pub fn is_exec(&self, mode: u32) -> bool {
        self.modes && cue_core::is_exec(mode)
    }

    /// Files replaced at least [`LATE_WRITE_WINDOW`] ago (all of them with `all`) that a
    /// program wrote to after the replacement (it kept the file open): their path and what
    /// the hash of what they held when replaced, and what they hold now (bytes, and whether
    /// executable). The kept-aside files are removed.
    pub fn late_writes(&self, all: bool) -> Vec<(WorkspacePath, [u8; 32], Vec<u8>, bool)> {
        let due: Vec<Replaced> = {
            let mut replaced = self.replaced.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            let (due, later) = std::mem::take(&mut *replaced)
                .into_iter()
                .partition(|r| all || now.duration_since(r.at) >= LATE_WRITE_WINDOW);
            *replaced = later;
            due
        };
        let mut out = Vec::new();
        for r in due {
            let (dir, held) = match &r.dir {
                Some(dir) => (dir.clone(), true),
                None => match self.open_parent(&r.path) {
                    Ok(Some(dir)) => (std::sync::Arc::new(dir), false),
                    _ => continue,
                },
            };
            if let Ok((bytes, exec)) = read_leaf(&dir, &r.aside, &r.path, self.modes)
                && cue_core::file_hash(&bytes, exec) != r.seen
            {
                // (Where the file is now, its folder held open; none when that folder
                // left the workspace: its files are gone from it.)
                let path = match held {
                    true => self.path_now(&dir, &r.path),
                    false => Some(r.path.clone()),
                };
                if let Some(path) = path {
                    out.push((path, r.seen, bytes, exec));
                }
            }
            let _ = rustix::fs::unlinkat(&*dir, r.aside.as_str(), AtFlags::empty());
        }
        out
    }

    /// Where the file `was` is now, its folder `dir` held open: `was` itself while the
    /// folder is still there, else the folder's place now (read back from the kernel,
    /// `/proc/self/fd`) with the same name; `None` when the folder is no longer in the
    /// workspace (moved out, or removed).
    fn path_now(&self, dir: &OwnedFd, was: &WorkspacePath) -> Option<WorkspacePath> {
        use std::os::fd::AsRawFd;
        let same = |a: &OwnedFd, b: &OwnedFd| match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
            (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        };
        if let Ok(Some(there)) = self.open_parent(was)
            && same(&there, dir)
        {
            return Some(was.clone());
        }
        let place = |fd: std::os::fd::RawFd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
        let folder = place(dir.as_raw_fd())?;
        let root = place(self.root.as_raw_fd())?;
        // (A removed folder reads as its last place and " (deleted)".)
        if folder.to_string_lossy().ends_with(" (deleted)") {
            return None;
        }
        let below = folder.strip_prefix(&root).ok()?;
        let name = was.as_str().rsplit('/').next()?;
        let path = match below.to_str()? {
            "" => name.to_string(),
            folder => format!("{folder}/{name}"),
        };
        WorkspacePath::parse(&path).ok()
    }

    /// Whether replaced files are still watched for late writes.
    pub fn watching_replaced(&self) -> bool {
        !self
            .replaced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Keeps the file that `rel`'s write replaced (now named `aside`) for a while.
    fn keep_replaced(&self, dir: &OwnedFd, rel: &WorkspacePath, aside: String, seen: [u8; 32]) {
        let mut replaced = self.replaced.lock().unwrap_or_else(|p| p.into_inner());
        if replaced.len() >= MAX_REPLACED {
            let _ = rustix::fs::unlinkat(dir, aside.as_str(), AtFlags::empty());
            return;
        }
        // The folder's descriptor, shared with the files kept aside in it already.
        let parent = |p: &WorkspacePath| p.as_str().rsplit_once('/').map(|(d, _)| d.to_string());
        let shared = (replaced.iter())
            .find(|r| r.dir.is_some() && parent(&r.path) == parent(rel))
            .and_then(|r| r.dir.clone());
        let dir = shared.or_else(|| {
            let held = (replaced.iter())
                .filter_map(|r| r.dir.as_ref().map(std::sync::Arc::as_ptr))
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            (held < MAX_ASIDE_FOLDERS)
                .then(|| dir.try_clone().ok().map(std::sync::Arc::new))
                .flatten()
        });
        replaced.push(Replaced {
            path: rel.clone(),
            dir,
            aside,
            seen,
            at: std::time::Instant::now(),
        });
    }

    /// The path the workspace was opened with.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Whether the folder at the workspace's path is no longer the one opened: moved
    /// (to the Trash, renamed) or removed. Everything here works through the opened
    /// folder's descriptor, which follows it wherever it goes.
    pub fn root_moved(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(opened) = rustix::fs::fstat(&self.root) else {
            return false;
        };
        match std::fs::metadata(&self.root_path) {
            Ok(now) => (now.dev(), now.ino()) != (opened.st_dev, opened.st_ino),
            Err(_) => true,
        }
    }

    /// The root directory's descriptor (for `syncfs`, or to open more `*at` calls).
    pub fn root_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.root.as_fd()
    }

    #[cfg(test)]
    fn force_component_walk(&self) {
        self.use_openat2.store(false, Ordering::Relaxed);
    }

    /// `lstat` of a path; `None` when it (or a folder on the way) does not exist.
    pub fn stat(&self, rel: &WorkspacePath) -> Result<Option<FileStat>, FsError> {
        let Some(parent) = self.open_parent(rel)? else {
            return Ok(None);
        };
        stat_leaf(&parent, rel)
    }

    /// Opens a regular file for reading, never following a symlink. `None` when it does not
    /// exist; an error naming the kind when it is a symlink or not a regular file.
    pub fn open_regular(&self, rel: &WorkspacePath) -> Result<Option<(File, FileStat)>, FsError> {
        let Some(parent) = self.open_parent(rel)? else {
            return Ok(None);
        };
        // lstat first, so that a FIFO or a device is never opened at all.
        match stat_leaf(&parent, rel)? {
            None => return Ok(None),
            Some(st) => check_regular(rel, st.kind)?,
        }
        // Checked again on the descriptor: the name may have been swapped after the lstat.
        open_leaf(&parent, rel.file_name(), rel)
    }

    /// The content of a regular file; `None` when it does not exist.
    pub fn read(&self, rel: &WorkspacePath) -> Result<Option<Vec<u8>>, FsError> {
        Ok(self.read_file(rel)?.map(|(bytes, _)| bytes))
    }

    /// The content of a regular file and whether it is executable (git's rule,
    /// [`cue_core::is_exec`]); `None` when it does not exist.
    pub fn read_file(&self, rel: &WorkspacePath) -> Result<Option<(Vec<u8>, bool)>, FsError> {
        let Some((mut file, st)) = self.open_regular(rel)? else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(usize::try_from(st.len).unwrap_or(0).min(1 << 26));
        file.read_to_end(&mut buf)
            .map_err(|e| FsError::io("read", rel.as_str(), e))?;
        Ok(Some((buf, self.is_exec(st.mode))))
    }

    /// Writes `bytes` to `rel` atomically and durably, creating missing folders. A file
    /// replaced keeps its mode.
    pub fn write_atomic(&self, rel: &WorkspacePath, bytes: &[u8]) -> Result<(), FsError> {
        self.write_atomic_if(rel, bytes, None, Expect::Any)
            .map(|_| ())
    }

    /// [`write_atomic`](Self::write_atomic) if the current content matches `expect`, checked
    /// just before the rename. With `exec` the file is made executable or not (see
    /// [`cue_core::mode_with_exec`]); every other mode bit of a file replaced is kept.
    pub fn write_atomic_if(
        &self,
        rel: &WorkspacePath,
        bytes: &[u8],
        exec: Option<bool>,
        expect: Expect,
    ) -> Result<Outcome, FsError> {
        let Some(parent) = self.open_parent_for(rel, expect, true)? else {
            return Ok(Outcome::Unexpected);
        };
        let tmp = self.write_temp_for(&parent, rel, bytes, exec, true)?;
        let result = replace(self, &parent, &tmp, rel, expect);
        if !matches!(result, Ok(Outcome::Done | Outcome::DoneOverEdit(..))) {
            let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
        }
        let outcome = result?;
        if !matches!(outcome, Outcome::Unexpected) {
            rustix::fs::fsync(&parent)
                .map_err(|e| FsError::io("fsync folder of", rel.as_str(), e))?;
        }
        Ok(outcome)
    }

    /// The temporary file that will replace `rel` (a regular file or nothing), in its
    /// folder `parent`, with `rel`'s mode carried over (see [`write_temp`]).
    fn write_temp_for(
        &self,
        parent: &OwnedFd,
        rel: &WorkspacePath,
        bytes: &[u8],
        exec: Option<bool>,
        sync: bool,
    ) -> Result<String, FsError> {
        let existing = stat_leaf(parent, rel)?;
        if let Some(st) = existing {
            check_regular(rel, st.kind)?;
        }
        let (mode, exec) = match self.modes {
            true => (existing.map(|s| s.mode), exec),
            // No mode is set: a `chmod` there is ignored or refused.
            false => (None, None),
        };
        write_temp(&self.temp_prefix, parent, rel, bytes, mode, exec, sync)
    }

    /// Writes `bytes` to a temporary file next to `rel` (creating folders), neither
    /// flushed nor put in place: [`put_in_place`](Self::put_in_place) renames it there,
    /// [`flush_files`](Self::flush_files) makes both durable later (a folder it creates
    /// is made durable at once: rare, and no later flush of a file reaches it). What the
    /// file will be (its [`FileId`]) is known before it is put in place, so a record of
    /// it can be committed first: after a power cut, a file at `rel` that is this one but
    /// holds other bytes was cut short, not edited. `None` for a folder on another
    /// filesystem than the root's (a mount inside the workspace), which `flush_files`'
    /// `syncfs` does not reach: write it with [`write_atomic_if`](Self::write_atomic_if).
    pub fn prepare(
        &self,
        rel: &WorkspacePath,
        bytes: &[u8],
        exec: Option<bool>,
        expect: Expect,
    ) -> Result<Option<Prepared>, FsError> {
        // (A folder gone: not prepared, and `write_atomic_if` refuses the write.)
        let Some(parent) = self.open_parent_for(rel, expect, true)? else {
            return Ok(None);
        };
        let dev = rustix::fs::fstat(&parent)
            .map(|st| FileStat::from_stat(&st).dev)
            .map_err(|e| FsError::io("stat folder of", rel.as_str(), e))?;
        if dev != self.root_dev {
            return Ok(None);
        }
        let tmp = self.write_temp_for(&parent, rel, bytes, exec, false)?;
        let file = rustix::fs::openat(
            &parent,
            tmp.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        );
        match (stat_leaf_named(&parent, tmp.as_str(), rel), file) {
            (Ok(Some(st)), Ok(file)) => Ok(Some(Prepared {
                id: st.id(),
                parent,
                file,
                path: rel.clone(),
                tmp,
            })),
            (other, _) => {
                let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                match other {
                    Err(e) => Err(e),
                    _ => Err(FsError::io(
                        "stat temporary file for",
                        rel.as_str(),
                        Errno::NOENT,
                    )),
                }
            }
        }
    }

    /// Puts a prepared file in place if `expect` holds (as [`write_atomic_if`](Self::write_atomic_if)
    /// does, but nothing is flushed: see [`flush_files`](Self::flush_files)). The temporary
    /// file is removed when it is not put in place.
    pub fn put_in_place(&self, prepared: Prepared, expect: Expect) -> Result<Outcome, FsError> {
        let result = replace(
            self,
            &prepared.parent,
            &prepared.tmp,
            &prepared.path,
            expect,
        );
        if !matches!(result, Ok(Outcome::Done | Outcome::DoneOverEdit(..))) {
            prepared.discard();
        }
        result
    }

    /// Makes files put in place unflushed durable, and their names: an `fsync` of each
    /// file and of each folder holding one, or one `syncfs` past [`SYNCFS_OVER_FILES`]
    /// (which flushes everything written in the filesystem, other programs' files too: a
    /// cost on the user's whole machine, paid for a burst only). Each path comes with
    /// the inodes written there (none: not known): when the path holds none of them, or
    /// its folder is gone or replaced (moved away before the flush: `mv a.md b.md`, a
    /// folder renamed), what was written lives on under another name, unflushed, and one
    /// `syncfs` reaches it wherever it is. A file the user replaced or deleted costs that
    /// `syncfs` too: gone from the path, the two cannot be told apart.
    pub fn flush_files(&self, paths: &[(WorkspacePath, Vec<u64>)]) -> Vec<Result<(), FsError>> {
        let syncfs_all = |paths: &[(WorkspacePath, Vec<u64>)]| -> Vec<Result<(), FsError>> {
            self.syncfs_calls.fetch_add(1, Ordering::Relaxed);
            match rustix::fs::syncfs(&self.root) {
                Ok(()) => paths.iter().map(|_| Ok(())).collect(),
                Err(e) => paths
                    .iter()
                    .map(|(rel, _)| Err(FsError::io("syncfs for", rel.as_str(), e)))
                    .collect(),
            }
        };
        if paths.len() > SYNCFS_OVER_FILES {
            return syncfs_all(paths);
        }
        let mut results: Vec<Result<(), FsError>> = paths.iter().map(|_| Ok(())).collect();
        let mut moved_away = Vec::new();
        let mut by_dir: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (p, _)) in paths.iter().enumerate() {
            by_dir.entry(p.parent_str()).or_default().push(i);
        }
        // One folder that cannot be flushed leaves the others' files flushed.
        for files in by_dir.into_values() {
            let dir = match self.open_parent(&paths[files[0]].0) {
                // The folder is gone, or another file or a link stands on the way: what
                // was written there, if anything, was moved away with its folder.
                Ok(None) | Err(FsError::NotADirectory { .. } | FsError::SymlinkOnTheWay { .. }) => {
                    moved_away.extend(files);
                    continue;
                }
                Ok(Some(dir)) => dir,
                Err(e) => {
                    for &i in &files {
                        results[i] = Err(FsError::io(
                            "open the folder to flush",
                            paths[i].0.as_str(),
                            io::Error::other(e.to_string()),
                        ));
                    }
                    continue;
                }
            };
            for &i in &files {
                let (rel, inodes) = &paths[i];
                match flush_file(&dir, rel, inodes) {
                    Ok(true) => {}
                    Ok(false) => moved_away.push(i),
                    Err(e) => results[i] = Err(e),
                }
            }
            if let Err(e) = rustix::fs::fsync(&dir) {
                for &i in &files {
                    results[i] = Err(FsError::io("fsync folder of", paths[i].0.as_str(), e));
                }
            }
        }
        if !moved_away.is_empty() {
            let moved: Vec<(WorkspacePath, Vec<u64>)> =
                moved_away.iter().map(|&i| paths[i].clone()).collect();
            for (&i, result) in moved_away.iter().zip(syncfs_all(&moved)) {
                if results[i].is_ok() {
                    results[i] = result;
                }
            }
        }
        results
    }

    /// How many times [`flush_files`](Self::flush_files) flushed the whole filesystem.
    pub fn syncfs_calls(&self) -> u64 {
        self.syncfs_calls.load(Ordering::Relaxed)
    }

    /// Whether the file at `rel` is `id` (see [`prepare`](Self::prepare)), as a power cut
    /// leaves it: the same inode, modified no later than when it was written.
    pub fn is_file(&self, rel: &WorkspacePath, id: FileId) -> Result<bool, FsError> {
        Ok(self.stat(rel)?.is_some_and(|st| {
            st.dev == self.root_dev && st.ino == id.ino && st.mtime_ns <= id.mtime_ns
        }))
    }

    /// Starts a batch of writes made durable together.
    pub fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            fs: self,
            staged: Vec::new(),
            last_dir: None,
        }
    }

    /// Removes a regular file; `false` when there was none. Symlinks and folders are
    /// refused (cue never syncs the former; see [`remove_empty_dir`](Self::remove_empty_dir)).
    pub fn remove(&self, rel: &WorkspacePath) -> Result<bool, FsError> {
        match self.remove_if(rel, Expect::Any)? {
            Some(Outcome::Done) => Ok(true),
            _ => Ok(false),
        }
    }

    /// Removes a regular file if its content matches `expect`. `None` when there was none.
    pub fn remove_if(
        &self,
        rel: &WorkspacePath,
        expect: Expect,
    ) -> Result<Option<Outcome>, FsError> {
        let Some(parent) = self.open_parent(rel)? else {
            return Ok(None);
        };
        match stat_leaf(&parent, rel)? {
            None => return Ok(None),
            Some(st) => check_regular(rel, st.kind)?,
        }
        let outcome = match expect {
            Expect::Content(want) => {
                match remove_checked(&self.temp_prefix, &parent, rel, want, self.modes)? {
                    Some(outcome) => outcome,
                    None => return Ok(None),
                }
            }
            _ => {
                if !expectation_holds(&parent, rel, expect, self.modes)? {
                    return Ok(Some(Outcome::Unexpected));
                }
                match rustix::fs::unlinkat(&parent, rel.file_name(), AtFlags::empty()) {
                    Ok(()) => Outcome::Done,
                    Err(Errno::NOENT) => return Ok(None),
                    Err(e) => return Err(FsError::io("remove", rel.as_str(), e)),
                }
            }
        };
        if !matches!(outcome, Outcome::Unexpected) {
            rustix::fs::fsync(&parent)
                .map_err(|e| FsError::io("fsync folder of", rel.as_str(), e))?;
        }
        Ok(Some(outcome))
    }

    /// Removes a folder if it is empty; `false` when it is not empty or does not exist.
    pub fn remove_empty_dir(&self, rel: &WorkspacePath) -> Result<bool, FsError> {
        let Some(parent) = self.open_parent(rel)? else {
            return Ok(false);
        };
        match stat_leaf(&parent, rel)? {
            None => return Ok(false),
            Some(st) if st.kind == FileKind::Directory => {}
            Some(st) if st.kind == FileKind::Symlink => {
                return Err(FsError::Symlink {
                    path: rel.to_string(),
                });
            }
            Some(st) => {
                return Err(FsError::NotRegular {
                    path: rel.to_string(),
                    kind: st.kind,
                });
            }
        }
        match rustix::fs::unlinkat(&parent, rel.file_name(), AtFlags::REMOVEDIR) {
            Ok(()) => {
                rustix::fs::fsync(&parent)
                    .map_err(|e| FsError::io("fsync folder of", rel.as_str(), e))?;
                Ok(true)
            }
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOENT) => Ok(false),
            Err(e) => Err(FsError::io("remove folder", rel.as_str(), e)),
        }
    }

    /// Renames a file or folder; the target must not exist. Missing folders on the way to
    /// `to` are created.
    pub fn rename(&self, from: &WorkspacePath, to: &WorkspacePath) -> Result<(), FsError> {
        let Some(from_dir) = self.open_parent(from)? else {
            return Err(FsError::io("rename", from.as_str(), Errno::NOENT));
        };
        match stat_leaf(&from_dir, from)? {
            None => return Err(FsError::io("rename", from.as_str(), Errno::NOENT)),
            Some(st) if st.kind == FileKind::Regular || st.kind == FileKind::Directory => {}
            Some(st) => check_regular(from, st.kind)?,
        }
        let to_dir = self.open_parent_creating(to, true)?;
        match rustix::fs::renameat_with(
            &from_dir,
            from.file_name(),
            &to_dir,
            to.file_name(),
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(FsError::AlreadyExists {
                    path: to.to_string(),
                });
            }
            // Filesystems without RENAME_NOREPLACE: check, then rename. The window only
            // risks replacing a file created in between, never leaving the workspace.
            Err(Errno::INVAL | Errno::NOSYS) => {
                if stat_leaf(&to_dir, to)?.is_some() {
                    return Err(FsError::AlreadyExists {
                        path: to.to_string(),
                    });
                }
                rustix::fs::renameat(&from_dir, from.file_name(), &to_dir, to.file_name())
                    .map_err(|e| FsError::io("rename", from.as_str(), e))?;
            }
            Err(e) => return Err(FsError::io("rename", from.as_str(), e)),
        }
        rustix::fs::fsync(&to_dir).map_err(|e| FsError::io("fsync folder of", to.as_str(), e))?;
        if from.parent_str() != to.parent_str() {
            rustix::fs::fsync(&from_dir)
                .map_err(|e| FsError::io("fsync folder of", from.as_str(), e))?;
        }
        Ok(())
    }

    /// What stands under cue's temporary name `temp` next to `rel` ([`Prepared::temp_name`]):
    /// after a crash, the file a write was about to put in place (not put there), or what
    /// the exchange that put it there swapped out. Refuses any other name.
    pub fn stat_temp(&self, rel: &WorkspacePath, temp: &str) -> Result<Option<FileStat>, FsError> {
        let Some(parent) = self.temp_folder(rel, temp)? else {
            return Ok(None);
        };
        stat_leaf_named(&parent, temp, rel)
    }

    /// The content of the regular file under cue's temporary name `temp` next to `rel`
    /// (see [`stat_temp`](Self::stat_temp)), and whether it is executable.
    pub fn read_temp(
        &self,
        rel: &WorkspacePath,
        temp: &str,
    ) -> Result<Option<(Vec<u8>, bool)>, FsError> {
        let Some(parent) = self.temp_folder(rel, temp)? else {
            return Ok(None);
        };
        match stat_leaf_named(&parent, temp, rel)? {
            None => return Ok(None),
            Some(st) => check_regular(rel, st.kind)?,
        }
        read_leaf(&parent, temp, rel, self.modes).map(Some)
    }

    /// The folder of `rel`, where cue's temporary `temp` would be; refuses another name.
    fn temp_folder(&self, rel: &WorkspacePath, temp: &str) -> Result<Option<OwnedFd>, FsError> {
        if !temp.starts_with(CUE_TEMP_PREFIX) || temp.contains(['/', '\0']) {
            return Err(FsError::io(
                "open temporary file for",
                rel.as_str(),
                Errno::INVAL,
            ));
        }
        self.open_parent(rel)
    }

    /// Whether the temporary file at `rel` (a workspace-relative path) is a replaced file
    /// this opening keeps aside for late writes ([`late_writes`](Self::late_writes)): not
    /// stale. A scan leaves it. (No scan runs while a write is under way.)
    pub fn is_own_temp(&self, rel: &str) -> bool {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if !name.starts_with(&self.temp_prefix) {
            return false;
        }
        let replaced = self.replaced.lock().unwrap_or_else(|p| p.into_inner());
        replaced
            .iter()
            .any(|r| r.aside == name && r.path.parent_str() == dir)
    }

    /// Removes one of cue's own temporary files left by a crash (found by the scanner).
    /// Refuses any other name.
    pub fn remove_stale_temp(&self, rel: &str) -> Result<bool, FsError> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if !name.starts_with(CUE_TEMP_PREFIX) || name.contains('\0') {
            return Err(FsError::io("remove temporary", rel, Errno::INVAL));
        }
        let dir_fd = if dir.is_empty() {
            Some(self.open_root_dup(rel)?)
        } else {
            let dir_path = WorkspacePath::parse(dir)
                .map_err(|e| FsError::io("remove temporary", rel, io::Error::other(e)))?;
            self.open_dir(&dir_path, false)?
        };
        let Some(dir_fd) = dir_fd else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(&dir_fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(FsError::io("remove temporary", rel, e)),
        }
    }

    fn open_root_dup(&self, rel: &str) -> Result<OwnedFd, FsError> {
        rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| FsError::io("open workspace folder for", rel, e))
    }

    /// The folder holding `rel`; `None` when it (or a folder on the way) does not exist.
    fn open_parent(&self, rel: &WorkspacePath) -> Result<Option<OwnedFd>, FsError> {
        match rel.parent() {
            None => self.open_root_dup(rel.as_str()).map(Some),
            Some(dir) => self.open_dir(&dir, false).map_err(|e| retarget(e, rel)),
        }
    }

    /// The folder holding `rel`, created (with its missing ancestors) if needed.
    /// The folder `rel` is in, opened, and made (with the folders above it) unless
    /// `expect` says the file is there already: then a folder gone since (moved or
    /// deleted while the write was on its way) is `None`, and the write is refused like
    /// any whose file is not as expected. Made anew, the folder took a peer's edit at the
    /// old path while the user's file sat where the folder went, and the next scan took
    /// that file's old content for an edit undoing the peer's.
    fn open_parent_for(
        &self,
        rel: &WorkspacePath,
        expect: Expect,
        sync_new_dirs: bool,
    ) -> Result<Option<OwnedFd>, FsError> {
        match (expect, rel.parent()) {
            (Expect::Content(_), Some(dir)) => {
                self.open_dir(&dir, false).map_err(|e| retarget(e, rel))
            }
            _ => self.open_parent_creating(rel, sync_new_dirs).map(Some),
        }
    }

    fn open_parent_creating(
        &self,
        rel: &WorkspacePath,
        sync_new_dirs: bool,
    ) -> Result<OwnedFd, FsError> {
        match rel.parent() {
            None => self.open_root_dup(rel.as_str()),
            Some(dir) => match self.open_dir(&dir, false).map_err(|e| retarget(e, rel))? {
                Some(fd) => Ok(fd),
                None => self
                    .walk(&dir, Some(sync_new_dirs))
                    .map_err(|e| retarget(e, rel))?
                    .ok_or_else(|| FsError::io("create folder", dir.as_str(), Errno::NOENT)),
            },
        }
    }

    /// Opens the folder `dir` below the root. `None` when it does not exist; an error when
    /// a component is a symlink or a file.
    fn open_dir(&self, dir: &WorkspacePath, create: bool) -> Result<Option<OwnedFd>, FsError> {
        if self.use_openat2.load(Ordering::Relaxed) {
            let mut attempts = 0;
            loop {
                match rustix::fs::openat2(
                    &self.root,
                    dir.as_str(),
                    DIR_FLAGS,
                    Mode::empty(),
                    resolve_flags(),
                ) {
                    Ok(fd) => return Ok(Some(fd)),
                    Err(Errno::AGAIN) if attempts < OPENAT2_RETRIES => attempts += 1,
                    Err(Errno::NOSYS | Errno::PERM) => {
                        tracing::info!("openat2 unavailable; confining paths by walking them");
                        self.use_openat2.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(Errno::NOENT) if !create => return Ok(None),
                    Err(Errno::NOENT) => return self.walk(dir, Some(true)),
                    // ELOOP and ENOTDIR: the walk tells the symlink from the file apart.
                    Err(Errno::LOOP | Errno::NOTDIR) => return self.walk(dir, None),
                    Err(Errno::XDEV) => {
                        return Err(FsError::Escapes {
                            path: dir.to_string(),
                        });
                    }
                    Err(e) => return Err(FsError::io("open folder", dir.as_str(), e)),
                }
            }
        }
        self.walk(dir, create.then_some(true))
    }

    /// Opens `dir` one component at a time, each relative to the last with `O_NOFOLLOW`:
    /// the fallback for kernels without `openat2`, and the way missing folders are created.
    /// `create`: `None` opens only; `Some(sync)` creates missing folders, fsyncing each
    /// folder that gained an entry when `sync` (a batch makes them durable with `syncfs`).
    fn walk(&self, dir: &WorkspacePath, create: Option<bool>) -> Result<Option<OwnedFd>, FsError> {
        let mut cur = self.open_root_dup(dir.as_str())?;
        for component in dir.components() {
            let next = loop {
                match rustix::fs::openat(&cur, component, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::NOENT) => {
                        let Some(sync) = create else {
                            return Ok(None);
                        };
                        match rustix::fs::mkdirat(&cur, component, Mode::from_raw_mode(0o777)) {
                            Ok(()) => {
                                if sync {
                                    rustix::fs::fsync(&cur).map_err(|e| {
                                        FsError::io("fsync folder", dir.as_str(), e)
                                    })?;
                                }
                            }
                            Err(Errno::EXIST) => {}
                            Err(e) => return Err(FsError::io("create folder", dir.as_str(), e)),
                        }
                    }
                    Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                        let kind = rustix::fs::statat(&cur, component, AtFlags::SYMLINK_NOFOLLOW)
                            .map(|st| FileStat::from_stat(&st).kind);
                        return Err(match kind {
                            Ok(FileKind::Symlink) => FsError::SymlinkOnTheWay {
                                path: dir.to_string(),
                            },
                            Ok(FileKind::Directory) => FsError::io("open folder", dir.as_str(), e),
                            _ => FsError::NotADirectory {
                                path: dir.to_string(),
                            },
                        });
                    }
                    Err(e) => return Err(FsError::io("open folder", dir.as_str(), e)),
                }
            };
            cur = next;
        }
        Ok(Some(cur))
    }
}

/// Names the file the caller asked about in errors about the folders on its way.
fn retarget(e: FsError, rel: &WorkspacePath) -> FsError {
    match e {
        FsError::SymlinkOnTheWay { .. } => FsError::SymlinkOnTheWay {
            path: rel.to_string(),
        },
        FsError::NotADirectory { .. } => FsError::NotADirectory {
            path: rel.to_string(),
        },
        other => other,
    }
}

fn stat_leaf(parent: &OwnedFd, rel: &WorkspacePath) -> Result<Option<FileStat>, FsError> {
    stat_leaf_named(parent, rel.file_name(), rel)
}

/// `fsync` of the regular file `rel` in `dir` when it is one of the inodes `written`
/// there (any regular file when none is known): `Ok(true)`. `Ok(false)` when the file
/// written is no longer at `rel` (gone, replaced, no regular file: moved away, see
/// `flush_files`); with no inode known, nothing is flushed then and that is `Ok(true)`.
/// `lstat` first, so that a FIFO or a device put there is never opened.
fn flush_file(dir: &OwnedFd, rel: &WorkspacePath, written: &[u64]) -> Result<bool, FsError> {
    let held = |st: &FileStat| {
        st.kind == FileKind::Regular && (written.is_empty() || written.contains(&st.ino))
    };
    if !stat_leaf(dir, rel)?.is_some_and(|st| held(&st)) {
        return Ok(written.is_empty());
    }
    match rustix::fs::openat(
        dir,
        rel.file_name(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let ours = rustix::fs::fstat(&fd).is_ok_and(|st| held(&FileStat::from_stat(&st)));
            if !ours {
                return Ok(written.is_empty());
            }
            rustix::fs::fsync(&fd).map_err(|e| FsError::io("fsync", rel.as_str(), e))?;
            Ok(true)
        }
        // Gone, or replaced in the instant by a link or a FIFO.
        Err(Errno::NOENT | Errno::LOOP | Errno::NXIO) => Ok(written.is_empty()),
        Err(e) => Err(FsError::io("open to flush", rel.as_str(), e)),
    }
}

/// `lstat` of `name` in `parent` (`rel` names it in errors).
fn stat_leaf_named(
    parent: &OwnedFd,
    name: &str,
    rel: &WorkspacePath,
) -> Result<Option<FileStat>, FsError> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileStat::from_stat(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(FsError::io("stat", rel.as_str(), e)),
    }
}

fn check_regular(rel: &WorkspacePath, kind: FileKind) -> Result<(), FsError> {
    match kind {
        FileKind::Regular => Ok(()),
        FileKind::Symlink => Err(FsError::Symlink {
            path: rel.to_string(),
        }),
        kind => Err(FsError::NotRegular {
            path: rel.to_string(),
            kind,
        }),
    }
}

/// Whether `rel`'s current content satisfies `expect`.
fn expectation_holds(
    parent: &OwnedFd,
    rel: &WorkspacePath,
    expect: Expect,
    modes: bool,
) -> Result<bool, FsError> {
    match expect {
        Expect::Any => Ok(true),
        Expect::Absent => Ok(stat_leaf(parent, rel)?.is_none()),
        Expect::Content(want) => match open_leaf(parent, rel.file_name(), rel)? {
            None => Ok(false),
            Some((mut file, st)) => Ok(holds(modes, want, hash_of(&mut file, &st, rel, modes)?)),
        },
    }
}

/// The beginning of every temporary name one opening of the workspace makes, never one
/// an earlier run used: the write journal names the file a write was prepared under, and
/// a start judges the write by what that name holds (in a container the pid is the same
/// at every run, so the time of the opening is in the name too, and a count of the
/// openings in this process).
fn temp_prefix() -> String {
    static OPENINGS: AtomicU64 = AtomicU64::new(0);
    let opening = OPENINGS.fetch_add(1, Ordering::Relaxed);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{CUE_TEMP_PREFIX}{}-{at:x}-{opening}-", std::process::id())
}

/// A fresh name for a temporary file (ignored by the watcher and the scanner) that
/// begins with `prefix` ([`temp_prefix`]).
fn temp_name(prefix: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{n}")
}

/// Creates and fills a temporary file next to `rel`; returns its name. `mode` carries the
/// replaced file's permissions over, with the executable bits set or cleared by `exec`
/// (`None`: as they were); a new file gets the usual mode (the umask's), made executable
/// the same way. The file is fsynced when `sync`.
fn write_temp(
    prefix: &str,
    parent: &OwnedFd,
    rel: &WorkspacePath,
    bytes: &[u8],
    mode: Option<u32>,
    exec: Option<bool>,
    sync: bool,
) -> Result<String, FsError> {
    let (name, fd) = loop {
        let name = temp_name(prefix);
        match rustix::fs::openat(
            parent,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(fd) => break (name, fd),
            // A temporary left by an earlier process with the same pid.
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(FsError::io("create temporary file for", rel.as_str(), e)),
        }
    };
    let result = (|| {
        let mode = match (mode, exec) {
            (Some(mode), None) => Some(mode),
            (Some(mode), Some(exec)) => Some(cue_core::mode_with_exec(mode, exec)),
            // Created with the umask's mode, which is not executable.
            (None, None | Some(false)) => None,
            (None, Some(true)) => {
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| FsError::io("stat temporary file for", rel.as_str(), e))?;
                Some(cue_core::mode_with_exec(st.st_mode as u32 & 0o7777, true))
            }
        };
        if let Some(mode) = mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode as _))
                .map_err(|e| FsError::io("set permissions of", rel.as_str(), e))?;
        }
        let mut file = File::from(fd);
        file.write_all(bytes)
            .map_err(|e| FsError::io("write", rel.as_str(), e))?;
        if sync {
            rustix::fs::fsync(&file).map_err(|e| FsError::io("fsync", rel.as_str(), e))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(name),
        Err(e) => {
            let _ = rustix::fs::unlinkat(parent, name.as_str(), AtFlags::empty());
            Err(e)
        }
    }
}

/// Which file a write put in place: its inode and when it was last written. A file cut
/// short by a power cut keeps both (its inode's size and blocks are what was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    pub ino: u64,
    pub mtime_ns: i64,
}

/// A file written under a temporary name next to its place ([`WorkspaceFs::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    pub id: FileId,
    parent: OwnedFd,
    /// The file itself, open for its flush wherever it goes ([`Written`]).
    file: OwnedFd,
    path: WorkspacePath,
    tmp: String,
}

/// A file put in place unflushed, and the folder it was put in, held open until they
/// are flushed: moved, renamed with its folder or replaced since, it is flushed where
/// it is (or not at all once no name is left to it), with no search for it.
#[derive(Debug)]
pub struct Written {
    file: OwnedFd,
    folder: OwnedFd,
    /// What was written ([`cue_core::file_hash`] of its bytes and mode): a file written
    /// again after a failed flush must still hold it.
    pub hash: cue_core::ContentHash,
}

impl Written {
    /// `fsync` of the file (unless it has no name left: deleted or replaced, there is
    /// nothing of it to keep) and of its folder, unless `folders` (dev, inode) says that
    /// one was flushed already in this round.
    pub fn flush(
        &self,
        rel: &WorkspacePath,
        folders: &mut std::collections::BTreeSet<(u64, u64)>,
    ) -> Result<(), FsError> {
        let named = rustix::fs::fstat(&self.file)
            .map_err(|e| FsError::io("stat to flush", rel.as_str(), e))?
            .st_nlink
            > 0;
        if named {
            rustix::fs::fsync(&self.file).map_err(|e| FsError::io("fsync", rel.as_str(), e))?;
        }
        let folder = rustix::fs::fstat(&self.folder)
            .map(|st| FileStat::from_stat(&st))
            .map_err(|e| FsError::io("stat folder of", rel.as_str(), e))?;
        if folders.contains(&(folder.dev, folder.ino)) {
            return Ok(());
        }
        rustix::fs::fsync(&self.folder)
            .map_err(|e| FsError::io("fsync folder of", rel.as_str(), e))?;
        folders.insert((folder.dev, folder.ino));
        Ok(())
    }
}

impl Prepared {
    /// The file and its folder, for its flush once put in place; `hash` is what it holds.
    pub fn written(&self, hash: cue_core::ContentHash) -> Option<Written> {
        Some(Written {
            file: self.file.try_clone().ok()?,
            folder: self.parent.try_clone().ok()?,
            hash,
        })
    }

    /// The temporary name it was written under, in its folder.
    pub fn temp_name(&self) -> &str {
        &self.tmp
    }

    /// Removes the temporary file: the write is not wanted any more.
    pub fn discard(self) {
        let _ = rustix::fs::unlinkat(&self.parent, self.tmp.as_str(), AtFlags::empty());
    }
}

/// Many writes made durable together: every temporary file is written by
/// [`stage`](Self::stage), then [`commit`](Self::commit) runs one `syncfs`, the renames,
/// and one `fsync` per touched folder. Dropping an uncommitted batch removes its temporary
/// files.
#[derive(Debug)]
pub struct WriteBatch<'a> {
    fs: &'a WorkspaceFs,
    staged: Vec<Staged>,
    /// Consecutive files usually share a folder; keep its descriptor.
    last_dir: Option<(String, OwnedFd)>,
}

/// A file a [`WriteBatch`] staged: its temporary name next to its place, and the file.
#[derive(Debug)]
pub struct StagedAs {
    pub temp: String,
    pub id: FileId,
}

#[derive(Debug)]
struct Staged {
    path: WorkspacePath,
    tmp: String,
    expect: Expect,
    done: bool,
    /// In a folder on another filesystem than the workspace's root (a mount inside it),
    /// which the root's `syncfs` does not reach.
    foreign: bool,
}

/// Above this many files put in place unflushed, [`WorkspaceFs::flush_files`] flushes them
/// with one `syncfs` rather than an `fsync` each.
pub const SYNCFS_OVER_FILES: usize = 64;

/// Above this many folders of the root's filesystem renamed into, a batch makes its
/// renames durable with one more `syncfs` instead of an `fsync` of each folder: a first
/// sync sends files in no order of folders, so a batch of 300 notes touched 80 folders,
/// 80 flushes of the disk's cache where one does.
const SYNCFS_OVER_FOLDERS: usize = 4;

/// What a committed batch did, file by file.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Written and durable.
    pub written: Vec<WorkspacePath>,
    /// Not written because the file was not as expected (a local edit to merge first).
    pub unexpected: Vec<WorkspacePath>,
    /// Not written because of an error; the rest of the batch still went through.
    pub failed: Vec<(WorkspacePath, FsError)>,
    /// Written (and in `written`), but the replaced file had been written to at that
    /// instant: what it held (bytes, and whether executable), to merge.
    pub over_edits: Vec<(WorkspacePath, Vec<u8>, bool)>,
}

impl WriteBatch<'_> {
    /// Writes `bytes` into a temporary file next to `rel` (creating folders); it replaces
    /// `rel` at [`commit`](Self::commit) if `expect` still holds then. `exec` as for
    /// [`WorkspaceFs::write_atomic_if`]. An error here concerns this file only; the batch
    /// stays usable. The temporary file's name and identity, for the write journal.
    pub fn stage(
        &mut self,
        rel: &WorkspacePath,
        bytes: &[u8],
        exec: Option<bool>,
        expect: Expect,
    ) -> Result<StagedAs, FsError> {
        let dir_key = rel.parent_str().to_owned();
        if self.last_dir.as_ref().is_none_or(|(k, _)| *k != dir_key) {
            self.last_dir = None;
            // (A folder gone under a write expecting its file: the write goes the usual
            // way, `write_atomic_if`, which refuses it.)
            let Some(fd) = self.fs.open_parent_for(rel, expect, false)? else {
                return Err(FsError::io("open folder of", rel.as_str(), Errno::NOENT));
            };
            self.last_dir = Some((dir_key, fd));
        }
        let Some((_, parent)) = self.last_dir.as_ref() else {
            return Err(FsError::io("open folder of", rel.as_str(), Errno::NOENT));
        };
        let existing = stat_leaf(parent, rel)?;
        if let Some(st) = existing {
            check_regular(rel, st.kind)?;
        }
        let dev = rustix::fs::fstat(parent)
            .map(|st| FileStat::from_stat(&st).dev)
            .map_err(|e| FsError::io("stat folder of", rel.as_str(), e))?;
        // syncfs covers the root's filesystem only; a folder mounted from elsewhere gets
        // its files fsynced one by one.
        let foreign = dev != self.fs.root_dev;
        let (mode, exec) = match self.fs.modes {
            true => (existing.map(|s| s.mode), exec),
            false => (None, None),
        };
        let tmp = write_temp(
            &self.fs.temp_prefix,
            parent,
            rel,
            bytes,
            mode,
            exec,
            foreign,
        )?;
        // (Not staged unless it can be named: an error here concerns this file only.)
        let st = match stat_leaf_named(parent, &tmp, rel) {
            Ok(Some(st)) => st,
            Ok(None) => {
                return Err(FsError::io(
                    "stat temporary file for",
                    rel.as_str(),
                    Errno::NOENT,
                ));
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
                return Err(e);
            }
        };
        self.staged.push(Staged {
            path: rel.clone(),
            tmp: tmp.clone(),
            expect,
            done: false,
            foreign,
        });
        Ok(StagedAs {
            temp: tmp,
            id: st.id(),
        })
    }

    /// How many files are staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Makes the staged files durable, renames them into place and makes the folders
    /// durable (each folder's `fsync`, or one `syncfs` when there are many: see
    /// [`SYNCFS_OVER_FOLDERS`]). An `Err` means nothing was renamed (the durability step
    /// failed).
    pub fn commit(mut self) -> Result<BatchOutcome, FsError> {
        self.last_dir = None;
        let mut outcome = BatchOutcome::default();
        if self.staged.is_empty() {
            return Ok(outcome);
        }
        rustix::fs::syncfs(&self.fs.root).map_err(|e| FsError::io("syncfs", "the workspace", e))?;

        let mut by_dir: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.staged.iter().enumerate() {
            by_dir
                .entry(s.path.parent_str().to_owned())
                .or_default()
                .push(i);
        }
        let mut renamed = Vec::new();
        for indices in by_dir.into_values() {
            if let Some(dir) = self.rename_dir(&indices, &mut outcome) {
                renamed.push((dir, indices));
            }
        }
        let (foreign, local): (Vec<_>, Vec<_>) = renamed
            .into_iter()
            .partition(|(_, indices)| self.staged[indices[0]].foreign);
        if local.len() > SYNCFS_OVER_FOLDERS {
            if let Err(e) = rustix::fs::syncfs(&self.fs.root) {
                for (_, indices) in &local {
                    self.not_durable(indices, "syncfs after renaming into", &e, &mut outcome);
                }
            }
        } else {
            for (dir, indices) in &local {
                if let Err(e) = rustix::fs::fsync(dir) {
                    self.not_durable(indices, "fsync folder of", &e, &mut outcome);
                }
            }
        }
        for (dir, indices) in &foreign {
            if let Err(e) = rustix::fs::fsync(dir) {
                self.not_durable(indices, "fsync folder of", &e, &mut outcome);
            }
        }
        Ok(outcome)
    }

    /// Renames the staged files of one folder (`indices` into `staged`) into place; the
    /// folder's descriptor when any was renamed, for the caller to make durable.
    fn rename_dir(&mut self, indices: &[usize], outcome: &mut BatchOutcome) -> Option<OwnedFd> {
        let first = &self.staged[indices[0]].path;
        let dir = match self.fs.open_parent(first) {
            Ok(Some(fd)) => fd,
            Ok(None) => {
                self.fail_all(indices, outcome, |p| {
                    FsError::io("rename into place", p.as_str(), Errno::NOENT)
                });
                return None;
            }
            Err(e) => {
                let msg = e.to_string();
                self.fail_all(indices, outcome, |p| {
                    FsError::io("open folder of", p.as_str(), io::Error::other(msg.clone()))
                });
                return None;
            }
        };
        let mut renamed_any = false;
        for &i in indices {
            let s = &mut self.staged[i];
            let result = rename_staged(self.fs, &dir, s);
            if !matches!(result, Ok(Outcome::Done | Outcome::DoneOverEdit(..))) {
                let _ = rustix::fs::unlinkat(&dir, s.tmp.as_str(), AtFlags::empty());
            }
            s.done = true;
            match result {
                Ok(Outcome::Done) => {
                    renamed_any = true;
                    outcome.written.push(s.path.clone());
                }
                Ok(Outcome::DoneOverEdit(bytes, exec)) => {
                    renamed_any = true;
                    outcome.written.push(s.path.clone());
                    outcome.over_edits.push((s.path.clone(), bytes, exec));
                }
                Ok(Outcome::Unexpected) => outcome.unexpected.push(s.path.clone()),
                Err(e) => outcome.failed.push((s.path.clone(), e)),
            }
        }
        renamed_any.then_some(dir)
    }

    /// The renames into one folder happened but may not survive a power loss: its files
    /// are reported as failed, not written.
    fn not_durable(
        &self,
        indices: &[usize],
        what: &'static str,
        e: &Errno,
        outcome: &mut BatchOutcome,
    ) {
        let msg = e.to_string();
        let folder: Vec<_> = indices
            .iter()
            .map(|&i| self.staged[i].path.clone())
            .collect();
        outcome.written.retain(|p| !folder.contains(p));
        for p in folder {
            let error = FsError::io(what, p.as_str(), io::Error::other(msg.clone()));
            outcome.failed.push((p, error));
        }
    }

    /// Reports every file of one folder as failed, with the error `error` makes for it.
    fn fail_all(
        &self,
        indices: &[usize],
        outcome: &mut BatchOutcome,
        error: impl Fn(&WorkspacePath) -> FsError,
    ) {
        for &i in indices {
            let p = self.staged[i].path.clone();
            let e = error(&p);
            outcome.failed.push((p, e));
        }
    }
}

/// Renames one staged file over its target in `dir` if the target is still as expected.
fn rename_staged(fs: &WorkspaceFs, dir: &OwnedFd, s: &Staged) -> Result<Outcome, FsError> {
    if let Some(st) = stat_leaf(dir, &s.path)? {
        check_regular(&s.path, st.kind)?;
    }
    replace(fs, dir, &s.tmp, &s.path, s.expect)
}

/// Puts the temporary file `tmp` in `rel`'s place if `rel` is as `expect` says, without a
/// window in which a program's write to `rel` could be lost:
/// - nothing expected: the rename refuses to replace a file created meanwhile;
/// - a content expected: the two names are exchanged atomically, so whatever `rel` held at
///   that instant (a file an editor renamed into place, bytes appended a moment ago) ends
///   up under `tmp`'s name, where it is read back: anything else than `expect` comes back
///   as [`Outcome::DoneOverEdit`] to be merged.
///
/// A program that keeps the replaced file open and writes to it later writes to a file no
/// longer in the folder: that file is kept aside for [`LATE_WRITE_WINDOW`] and what is
/// written to it meanwhile is found by [`WorkspaceFs::late_writes`].
fn replace(
    fs: &WorkspaceFs,
    dir: &OwnedFd,
    tmp: &str,
    rel: &WorkspacePath,
    expect: Expect,
) -> Result<Outcome, FsError> {
    let name = rel.file_name();
    let rename_error = |e| FsError::io("rename into place", rel.as_str(), e);
    match expect {
        Expect::Any => {
            rustix::fs::renameat(dir, tmp, dir, name).map_err(rename_error)?;
            Ok(Outcome::Done)
        }
        Expect::Absent => {
            match rustix::fs::renameat_with(dir, tmp, dir, name, RenameFlags::NOREPLACE) {
                Ok(()) => Ok(Outcome::Done),
                Err(Errno::EXIST) => Ok(Outcome::Unexpected),
                // Filesystems without RENAME_NOREPLACE: check, then rename.
                Err(Errno::INVAL | Errno::NOSYS) => {
                    if !expectation_holds(dir, rel, expect, fs.modes)? {
                        return Ok(Outcome::Unexpected);
                    }
                    rustix::fs::renameat(dir, tmp, dir, name).map_err(rename_error)?;
                    Ok(Outcome::Done)
                }
                Err(e) => Err(rename_error(e)),
            }
        }
        Expect::Content(want) => {
            // A cheap check first: a file already changed is not replaced at all.
            if !expectation_holds(dir, rel, expect, fs.modes)? {
                return Ok(Outcome::Unexpected);
            }
            match rustix::fs::renameat_with(dir, tmp, dir, name, RenameFlags::EXCHANGE) {
                Ok(()) => {}
                Err(Errno::NOENT) => return Ok(Outcome::Unexpected),
                Err(Errno::INVAL | Errno::NOSYS) => {
                    return replace_holding(dir, tmp, rel, want, fs.modes);
                }
                Err(e) => return Err(rename_error(e)),
            }
            // `tmp` now names what `rel` held at the exchange.
            let (replaced, exec) = match read_leaf(dir, tmp, rel, fs.modes) {
                Ok(read) => read,
                Err(e) => {
                    // A folder or a link was swapped in meanwhile: put it back.
                    let _ = rustix::fs::renameat_with(dir, tmp, dir, name, RenameFlags::EXCHANGE);
                    return Err(e);
                }
            };
            let outcome = done_over(replaced.clone(), exec, want, fs.modes);
            fs.keep_replaced(
                dir,
                rel,
                tmp.to_string(),
                cue_core::file_hash(&replaced, exec),
            );
            Ok(outcome)
        }
    }
}

/// [`replace`] where the filesystem cannot exchange names: the replaced file is held open
/// across the rename and read after it, which catches writes to it (not a file renamed
/// into place in that instant).
fn replace_holding(
    dir: &OwnedFd,
    tmp: &str,
    rel: &WorkspacePath,
    want: [u8; 32],
    modes: bool,
) -> Result<Outcome, FsError> {
    let Some((mut held, st)) = open_leaf(dir, rel.file_name(), rel)? else {
        return Ok(Outcome::Unexpected);
    };
    if !holds(modes, want, hash_of(&mut held, &st, rel, modes)?) {
        return Ok(Outcome::Unexpected);
    }
    rustix::fs::renameat(dir, tmp, dir, rel.file_name())
        .map_err(|e| FsError::io("rename into place", rel.as_str(), e))?;
    let mut after = Vec::new();
    rustix::fs::seek(&held, rustix::fs::SeekFrom::Start(0))
        .map_err(|e| FsError::io("read", rel.as_str(), e))?;
    held.read_to_end(&mut after)
        .map_err(|e| FsError::io("read", rel.as_str(), e))?;
    let st = rustix::fs::fstat(&held).map_err(|e| FsError::io("stat", rel.as_str(), e))?;
    let exec = modes && cue_core::is_exec(st.st_mode as u32);
    Ok(done_over(after, exec, want, modes))
}

/// Removes `rel` if it holds `want`, without losing a write made at that instant: the
/// file is first renamed aside, then checked; if it changed it goes back (or, if a new
/// file took its place meanwhile, its content comes back to be merged). `None` when
/// nothing was there.
fn remove_checked(
    prefix: &str,
    dir: &OwnedFd,
    rel: &WorkspacePath,
    want: [u8; 32],
    modes: bool,
) -> Result<Option<Outcome>, FsError> {
    if !expectation_holds(dir, rel, Expect::Content(want), modes)? {
        return Ok(Some(Outcome::Unexpected));
    }
    let aside = temp_name(prefix);
    match rustix::fs::renameat_with(
        dir,
        rel.file_name(),
        dir,
        aside.as_str(),
        RenameFlags::NOREPLACE,
    )
    .or_else(|e| match e {
        Errno::INVAL | Errno::NOSYS => {
            rustix::fs::renameat(dir, rel.file_name(), dir, aside.as_str())
        }
        e => Err(e),
    }) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(FsError::io("remove", rel.as_str(), e)),
    }
    let (held, exec) = match read_leaf(dir, &aside, rel, modes) {
        Ok(read) => read,
        Err(e) => {
            // Back where it was, unless something new took the name meanwhile.
            let _ = rustix::fs::renameat_with(
                dir,
                aside.as_str(),
                dir,
                rel.file_name(),
                RenameFlags::NOREPLACE,
            );
            return Err(e);
        }
    };
    if holds(modes, want, cue_core::file_hash(&held, exec)) {
        rustix::fs::unlinkat(dir, aside.as_str(), AtFlags::empty())
            .map_err(|e| FsError::io("remove", rel.as_str(), e))?;
        return Ok(Some(Outcome::Done));
    }
    match rustix::fs::renameat_with(
        dir,
        aside.as_str(),
        dir,
        rel.file_name(),
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(Some(Outcome::Unexpected)),
        Err(_) => {
            // Something new is at `rel` already: the edited file's content goes back to
            // the engine, which keeps it.
            let _ = rustix::fs::unlinkat(dir, aside.as_str(), AtFlags::empty());
            Ok(Some(Outcome::DoneOverEdit(held, exec)))
        }
    }
}

fn done_over(replaced: Vec<u8>, exec: bool, want: [u8; 32], modes: bool) -> Outcome {
    if holds(modes, want, cue_core::file_hash(&replaced, exec)) {
        Outcome::Done
    } else {
        Outcome::DoneOverEdit(replaced, exec)
    }
}

/// Opens the regular file `name` in `dir` (which stands for `rel`) for reading, never
/// following a symlink; `None` when nothing is there. The kind is checked on the
/// descriptor.
fn open_leaf(
    dir: &OwnedFd,
    name: &str,
    rel: &WorkspacePath,
) -> Result<Option<(File, FileStat)>, FsError> {
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => {
            return Err(FsError::Symlink {
                path: rel.to_string(),
            });
        }
        Err(e) => return Err(FsError::io("open", rel.as_str(), e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| FsError::io("stat", rel.as_str(), e))?;
    let st = FileStat::from_stat(&st);
    check_regular(rel, st.kind)?;
    Ok(Some((File::from(fd), st)))
}

/// The content of the regular file `name` in `dir` (which stands for `rel`), and whether
/// it is executable (never where modes are not kept, `!modes`).
fn read_leaf(
    dir: &OwnedFd,
    name: &str,
    rel: &WorkspacePath,
    modes: bool,
) -> Result<(Vec<u8>, bool), FsError> {
    let (mut file, st) = open_leaf(dir, name, rel)?
        .ok_or_else(|| FsError::io("open", rel.as_str(), Errno::NOENT))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| FsError::io("read", rel.as_str(), e))?;
    Ok((bytes, modes && cue_core::is_exec(st.mode)))
}

/// The hash the engine knows an open file by: its content and executable bit
/// ([`cue_core::file_hash`]).
fn hash_of(
    file: &mut File,
    st: &FileStat,
    rel: &WorkspacePath,
    modes: bool,
) -> Result<[u8; 32], FsError> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(|e| FsError::io("read", rel.as_str(), e))?;
    Ok(cue_core::with_exec(
        *hasher.finalize().as_bytes(),
        modes && cue_core::is_exec(st.mode),
    ))
}

impl Drop for WriteBatch<'_> {
    fn drop(&mut self) {
        self.last_dir = None;
        for s in self.staged.iter().filter(|s| !s.done) {
            if let Ok(Some(dir)) = self.fs.open_parent(&s.path) {
                let _ = rustix::fs::unlinkat(&dir, s.tmp.as_str(), AtFlags::empty());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn p(s: &str) -> WorkspacePath {
        WorkspacePath::parse(s).unwrap()
    }

    fn both_modes(test: impl Fn(&Path, &WorkspaceFs)) {
        for walk in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("ws");
            std::fs::create_dir(&root).unwrap();
            let fs = WorkspaceFs::open(&root).unwrap();
            if walk {
                fs.force_component_walk();
            }
            test(&root, &fs);
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A folder renamed a moment after cue replaced a file in it (a peer's change
    /// written): the replaced file kept aside for late writes goes all the same (it
    /// stayed, a `.cue-tmp-*` file in the user's folder, until a restart), and a late
    /// write to it is told by the file's path now.
    #[test]
    fn a_folder_renamed_after_a_write_keeps_no_temporary_and_its_late_write() {
        both_modes(|root, fs| {
            std::fs::create_dir(root.join("d")).unwrap();
            std::fs::write(root.join("d/a.md"), "one\n").unwrap();
            std::fs::write(root.join("d/b.md"), "one\n").unwrap();
            let held = std::fs::OpenOptions::new()
                .append(true)
                .open(root.join("d/a.md"))
                .unwrap();
            let was = cue_core::file_hash(b"one\n", false);
            for name in ["d/a.md", "d/b.md"] {
                let done =
                    fs.write_atomic_if(&p(name), b"two\n", Some(false), Expect::Content(was));
                assert!(matches!(done.unwrap(), Outcome::Done), "{name}");
            }
            std::io::Write::write_all(&mut &held, b"late\n").unwrap();
            std::fs::rename(root.join("d"), root.join("e")).unwrap();
            let late = fs.late_writes(true);
            assert_eq!(names_in(&root.join("e")), ["a.md", "b.md"]);
            assert_eq!(late.len(), 1, "{late:?}");
            assert_eq!(late[0].0, p("e/a.md"));
            assert_eq!(late[0].2, b"one\nlate\n");
        });
    }

    #[test]
    fn write_read_round_trip_creates_folders() {
        both_modes(|root, fs| {
            fs.write_atomic(&p("a/b/c.md"), b"hello").unwrap();
            assert_eq!(std::fs::read(root.join("a/b/c.md")).unwrap(), b"hello");
            assert_eq!(fs.read(&p("a/b/c.md")).unwrap().unwrap(), b"hello");
            fs.write_atomic(&p("a/b/c.md"), b"again").unwrap();
            assert_eq!(fs.read(&p("a/b/c.md")).unwrap().unwrap(), b"again");
            assert_eq!(
                names_in(&root.join("a/b")),
                ["c.md"],
                "no temporary left behind"
            );
            assert!(fs.read(&p("a/missing.md")).unwrap().is_none());
            assert!(fs.read(&p("nowhere/missing.md")).unwrap().is_none());
            let st = fs.stat(&p("a/b/c.md")).unwrap().unwrap();
            assert_eq!((st.kind, st.len), (FileKind::Regular, 5));
        });
    }

    #[test]
    fn write_keeps_permissions() {
        both_modes(|root, fs| {
            std::fs::write(root.join("x.sh"), b"old").unwrap();
            std::fs::set_permissions(root.join("x.sh"), std::fs::Permissions::from_mode(0o751))
                .unwrap();
            fs.write_atomic(&p("x.sh"), b"new").unwrap();
            let mode = std::fs::metadata(root.join("x.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o751);
        });
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Git's rule on a write: `+x` gives `x` where `r` is set, `-x` clears every `x`, and
    /// no other bit changes; a new file gets the umask's mode, made executable the same
    /// way. What a file holds is known by its bytes and its bit.
    #[test]
    fn writes_set_or_clear_the_executable_bit_only() {
        both_modes(|root, fs| {
            let f = p("run.sh");
            std::fs::write(root.join("run.sh"), b"old").unwrap();
            std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o640))
                .unwrap();
            let plain = cue_core::file_hash(b"old", false);
            assert_eq!(
                fs.write_atomic_if(&f, b"new", Some(true), Expect::Content(plain))
                    .unwrap(),
                Outcome::Done
            );
            assert_eq!(mode_of(&root.join("run.sh")), 0o750);
            assert_eq!(fs.read_file(&f).unwrap(), Some((b"new".to_vec(), true)));
            // The bit is part of what is expected: a plain file's hash no longer holds.
            let plain = cue_core::file_hash(b"new", false);
            let exec = cue_core::file_hash(b"new", true);
            assert_eq!(
                fs.write_atomic_if(&f, b"x", Some(false), Expect::Content(plain))
                    .unwrap(),
                Outcome::Unexpected
            );
            assert_eq!(
                fs.write_atomic_if(&f, b"new", Some(false), Expect::Content(exec))
                    .unwrap(),
                Outcome::Done
            );
            assert_eq!(mode_of(&root.join("run.sh")), 0o640);

            let mut batch = fs.batch();
            batch
                .stage(&p("bin/tool"), b"\x7fELF", Some(true), Expect::Absent)
                .unwrap();
            batch
                .stage(&p("bin/data"), b"\x7fELF", Some(false), Expect::Absent)
                .unwrap();
            batch.commit().unwrap();
            let (tool, data) = (
                mode_of(&root.join("bin/tool")),
                mode_of(&root.join("bin/data")),
            );
            assert!(cue_core::is_exec(tool) && !cue_core::is_exec(data));
            assert_eq!(tool, cue_core::mode_with_exec(data, true));
        });
    }

    /// The probe: tmpfs and ext4 keep modes.
    #[test]
    fn a_local_folder_keeps_modes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(keeps_modes(dir.path()));
        assert_eq!(
            names_in(dir.path()),
            Vec::<String>::new(),
            "the probe leaves nothing"
        );
    }

    /// Where modes are not kept, every file reads as not executable, a write sets no mode
    /// (a `chmod` there is ignored or refused), and a file holds what the engine expects
    /// when its bytes do, whichever bit the engine believes.
    #[test]
    fn a_folder_without_modes_sets_none_and_compares_bytes() {
        {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let fs = WorkspaceFs::open(root).unwrap().keeping_modes(false);
            let f = p("run.sh");
            std::fs::write(root.join("run.sh"), b"old").unwrap();
            std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
            assert_eq!(fs.read_file(&f).unwrap(), Some((b"old".to_vec(), false)));
            let believed_exec = cue_core::file_hash(b"old", true);
            assert_eq!(
                fs.write_atomic_if(&f, b"new", Some(false), Expect::Content(believed_exec))
                    .unwrap(),
                Outcome::Done
            );
            // A file as the folder makes them (here the umask's mode; on exFAT the
            // mount's): nothing carried over, nothing set.
            std::fs::write(root.join("fresh"), b"").unwrap();
            let fresh = mode_of(&root.join("fresh"));
            std::fs::remove_file(root.join("fresh")).unwrap();
            assert_eq!(mode_of(&root.join("run.sh")), fresh, "no mode set");
            let believed_plain = cue_core::file_hash(b"new", false);
            assert_eq!(
                fs.write_atomic_if(&f, b"two", Some(true), Expect::Content(believed_plain))
                    .unwrap(),
                Outcome::Done
            );
            assert_eq!(mode_of(&root.join("run.sh")), fresh, "no mode set");
            assert_eq!(
                fs.write_atomic_if(&f, b"x", None, Expect::Content(believed_plain))
                    .unwrap(),
                Outcome::Unexpected,
                "other bytes"
            );
            let mut batch = fs.batch();
            batch
                .stage(&p("bin/tool"), b"\x7fELF", Some(true), Expect::Absent)
                .unwrap();
            batch.commit().unwrap();
            assert!(!cue_core::is_exec(mode_of(&root.join("bin/tool"))));
            assert_eq!(
                fs.remove_if(&f, Expect::Content(cue_core::file_hash(b"two", true)))
                    .unwrap(),
                Some(Outcome::Done)
            );
        }
    }

    /// A removal expects the bit too: a file made executable since is not removed.
    #[test]
    fn a_removal_expects_the_bit_too() {
        both_modes(|root, fs| {
            let f = p("run.sh");
            std::fs::write(root.join("run.sh"), b"same").unwrap();
            std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            assert_eq!(
                fs.remove_if(&f, Expect::Content(cue_core::file_hash(b"same", false)))
                    .unwrap(),
                Some(Outcome::Unexpected)
            );
            assert_eq!(
                fs.remove_if(&f, Expect::Content(cue_core::file_hash(b"same", true)))
                    .unwrap(),
                Some(Outcome::Done)
            );
        });
    }

    #[test]
    fn symlinked_parent_to_outside_is_refused() {
        both_modes(|root, fs| {
            let outside = root.parent().unwrap().join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            symlink(&outside, root.join("link")).unwrap();

            let err = fs.write_atomic(&p("link/evil.md"), b"x").unwrap_err();
            assert!(matches!(err, FsError::SymlinkOnTheWay { .. }), "{err:?}");
            assert!(err.to_string().contains("symlink"), "{err}");
            let err = fs
                .write_atomic(&p("link/deeper/evil.md"), b"x")
                .unwrap_err();
            assert!(matches!(err, FsError::SymlinkOnTheWay { .. }), "{err:?}");
            let mut batch = fs.batch();
            assert!(
                batch
                    .stage(&p("link/evil.md"), b"x", None, Expect::Any)
                    .is_err()
            );
            drop(batch);
            assert!(fs.read(&p("link/evil.md")).is_err());
            assert!(fs.rename(&p("link"), &p("moved")).is_err());
            assert!(names_in(&outside).is_empty(), "nothing written outside");
            assert!(root.join("link").is_symlink(), "the link is left alone");
        });
    }

    #[test]
    fn symlink_as_target_is_refused() {
        both_modes(|root, fs| {
            let outside = root.parent().unwrap().join("outside.md");
            std::fs::write(&outside, b"precious").unwrap();
            symlink(&outside, root.join("note.md")).unwrap();

            let err = fs.write_atomic(&p("note.md"), b"x").unwrap_err();
            assert!(matches!(err, FsError::Symlink { .. }), "{err:?}");
            assert!(matches!(
                fs.read(&p("note.md")),
                Err(FsError::Symlink { .. })
            ));
            assert!(matches!(
                fs.remove(&p("note.md")),
                Err(FsError::Symlink { .. })
            ));
            let mut batch = fs.batch();
            assert!(matches!(
                batch.stage(&p("note.md"), b"x", None, Expect::Any),
                Err(FsError::Symlink { .. })
            ));
            batch.commit().unwrap();
            assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
            assert!(root.join("note.md").is_symlink());
            assert_eq!(names_in(root), ["note.md"]);
        });
    }

    #[test]
    fn symlink_swapped_in_after_staging_is_not_written_through() {
        both_modes(|root, fs| {
            let outside = root.parent().unwrap().join("outside2");
            std::fs::create_dir_all(&outside).unwrap();
            let mut batch = fs.batch();
            batch.stage(&p("d/f.md"), b"x", None, Expect::Any).unwrap();
            // The folder is swapped for a symlink between staging and commit.
            std::fs::rename(root.join("d"), root.join("d-old")).unwrap();
            symlink(&outside, root.join("d")).unwrap();
            let out = batch.commit().unwrap();
            assert!(out.written.is_empty());
            assert_eq!(out.failed.len(), 1);
            assert!(names_in(&outside).is_empty());
        });
    }

    #[test]
    fn special_files_are_reported_not_read() {
        both_modes(|root, fs| {
            std::fs::create_dir(root.join("dir")).unwrap();
            assert!(matches!(
                fs.read(&p("dir")),
                Err(FsError::NotRegular {
                    kind: FileKind::Directory,
                    ..
                })
            ));
            assert!(matches!(
                fs.write_atomic(&p("dir"), b"x"),
                Err(FsError::NotRegular { .. })
            ));
            std::fs::write(root.join("file"), b"x").unwrap();
            assert!(matches!(
                fs.write_atomic(&p("file/below.md"), b"x"),
                Err(FsError::NotADirectory { .. })
            ));
            assert!(fs.read(&p("file/below.md")).unwrap_or(None).is_none());
        });
    }

    #[test]
    fn conditional_writes_and_removes() {
        both_modes(|_root, fs| {
            let f = p("f.md");
            assert_eq!(
                fs.write_atomic_if(&f, b"one", None, Expect::Absent)
                    .unwrap(),
                Outcome::Done
            );
            assert_eq!(
                fs.write_atomic_if(&f, b"two", None, Expect::Absent)
                    .unwrap(),
                Outcome::Unexpected
            );
            let h1 = *blake3::hash(b"one").as_bytes();
            let h2 = *blake3::hash(b"two").as_bytes();
            assert_eq!(
                fs.write_atomic_if(&f, b"x", None, Expect::Content(h2))
                    .unwrap(),
                Outcome::Unexpected
            );
            assert_eq!(fs.read(&f).unwrap().unwrap(), b"one");
            assert_eq!(
                fs.write_atomic_if(&f, b"two", None, Expect::Content(h1))
                    .unwrap(),
                Outcome::Done
            );
            assert_eq!(
                fs.remove_if(&f, Expect::Content(h1)).unwrap(),
                Some(Outcome::Unexpected)
            );
            assert_eq!(
                fs.remove_if(&f, Expect::Content(h2)).unwrap(),
                Some(Outcome::Done)
            );
            assert_eq!(fs.remove_if(&f, Expect::Any).unwrap(), None);
            assert!(!fs.remove(&f).unwrap());
        });
    }

    #[test]
    fn rename_moves_and_refuses_to_overwrite() {
        both_modes(|root, fs| {
            fs.write_atomic(&p("a.md"), b"a").unwrap();
            fs.write_atomic(&p("b.md"), b"b").unwrap();
            fs.rename(&p("a.md"), &p("sub/dir/a2.md")).unwrap();
            assert_eq!(std::fs::read(root.join("sub/dir/a2.md")).unwrap(), b"a");
            assert!(!root.join("a.md").exists());
            assert!(matches!(
                fs.rename(&p("b.md"), &p("sub/dir/a2.md")),
                Err(FsError::AlreadyExists { .. })
            ));
            assert_eq!(std::fs::read(root.join("b.md")).unwrap(), b"b");
            fs.rename(&p("sub"), &p("sub2")).unwrap();
            assert!(root.join("sub2/dir/a2.md").exists());
            assert!(fs.remove(&p("sub2/dir/a2.md")).unwrap());
            assert!(fs.remove_empty_dir(&p("sub2/dir")).unwrap());
            assert!(!fs.remove_empty_dir(&p("nothing")).unwrap());
        });
    }

    #[test]
    fn batch_writes_many_files() {
        both_modes(|root, fs| {
            std::fs::write(root.join("keep.md"), b"local edit").unwrap();
            let stale = *blake3::hash(b"what the daemon last saw").as_bytes();
            let mut batch = fs.batch();
            for i in 0..200 {
                let path = p(&format!("dir{}/file{i}.md", i % 7));
                batch
                    .stage(
                        &path,
                        format!("content {i}").as_bytes(),
                        None,
                        Expect::Absent,
                    )
                    .unwrap();
            }
            batch
                .stage(&p("keep.md"), b"remote", None, Expect::Content(stale))
                .unwrap();
            assert_eq!(batch.len(), 201);
            let out = batch.commit().unwrap();
            assert_eq!(out.written.len(), 200);
            assert_eq!(out.unexpected, [p("keep.md")]);
            assert!(out.failed.is_empty());
            assert_eq!(
                std::fs::read(root.join("dir3/file3.md")).unwrap(),
                b"content 3"
            );
            assert_eq!(std::fs::read(root.join("keep.md")).unwrap(), b"local edit");
            for d in 0..7 {
                let names = names_in(&root.join(format!("dir{d}")));
                assert!(
                    names.iter().all(|n| !n.starts_with(CUE_TEMP_PREFIX)),
                    "{names:?}"
                );
            }
            assert!(
                names_in(root)
                    .iter()
                    .all(|n| !n.starts_with(CUE_TEMP_PREFIX))
            );
            // Eight folders made the renames durable with one `syncfs`; a batch into
            // fewer (SYNCFS_OVER_FOLDERS) fsyncs each: the same files either way.
            let mut batch = fs.batch();
            for i in 0..6 {
                let path = p(&format!("few{}/file{i}.md", i % 2));
                let bytes = format!("few {i}");
                batch
                    .stage(&path, bytes.as_bytes(), None, Expect::Absent)
                    .unwrap();
            }
            let out = batch.commit().unwrap();
            assert_eq!(out.written.len(), 6);
            assert_eq!(std::fs::read(root.join("few1/file5.md")).unwrap(), b"few 5");
        });
    }

    #[test]
    fn dropped_batch_leaves_nothing() {
        both_modes(|root, fs| {
            let mut batch = fs.batch();
            batch.stage(&p("x/a.md"), b"a", None, Expect::Any).unwrap();
            batch.stage(&p("b.md"), b"b", None, Expect::Any).unwrap();
            drop(batch);
            assert_eq!(names_in(root), ["x"]);
            assert!(names_in(&root.join("x")).is_empty());
        });
    }

    #[test]
    fn stale_temporaries_can_be_removed() {
        both_modes(|root, fs| {
            std::fs::create_dir(root.join("d")).unwrap();
            std::fs::write(root.join("d/.cue-tmp-1-1"), b"").unwrap();
            assert!(fs.remove_stale_temp("d/.cue-tmp-1-1").unwrap());
            assert!(!fs.remove_stale_temp("d/.cue-tmp-1-1").unwrap());
            std::fs::write(root.join("real.md"), b"").unwrap();
            assert!(fs.remove_stale_temp("real.md").is_err());
            assert!(root.join("real.md").exists());
        });
    }
}
