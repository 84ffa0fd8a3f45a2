//! One daemon per workspace, and where its control socket lives.
//!
//! Whether a daemon runs is decided by an advisory lock on `.cuedeck/daemon.lock`
//! (`File::try_lock`, an `flock` on Linux), never by a pid file: the kernel drops the lock
//! when the process dies, however it dies, so nothing a `kill -9` leaves behind (a pid
//! file, a socket) can block the next start. `daemon.pid` is written for people and for
//! `status`, and read only as information.
//!
//! The kernel drops the lock only once every thread of the dead process has exited,
//! which takes a moment after a `kill -9` (a thread may be inside an `fsync`). Until then
//! the lock is still held, by a process on its way out: taking the lock waits for such a
//! holder, for at most [`EXITING_HOLDER_WAIT`], instead of calling it a running daemon.
//!
//! The control socket lives outside the workspace because Unix socket paths are limited
//! to about 107 bytes: `$XDG_RUNTIME_DIR/cue/<hash>.sock`, else
//! `<temp dir>/cue-<uid>/<hash>.sock`, where `<hash>` is the first 16 hex digits of the
//! blake3 hash of the canonical workspace path (docs/reference.md §2.2).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name inside `.cuedeck/`.
pub const LOCK_FILE: &str = "daemon.lock";
/// The pid file's name inside `.cuedeck/`.
pub const PID_FILE: &str = "daemon.pid";
/// Socket paths must stay below this many bytes (`sun_path` is 108 on Linux, 104 on macOS).
pub const MAX_SOCKET_PATH_BYTES: usize = 100;
/// How long taking the lock waits for a holder that is exiting (killed, its threads not
/// all gone yet) to let go of it.
pub const EXITING_HOLDER_WAIT: Duration = Duration::from_secs(5);
/// How often a held lock is looked at again while waiting.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// A `probe` (from `status`) holds a shared lock for an instant: this many retries, over
/// ~50 ms, keep it from looking like a running daemon whatever its pid file says.
const PROBE_RETRIES: u32 = 5;

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "a cue daemon is already running for this workspace{}; stop it with `cue sync stop`",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning { pid: Option<u32> },
    #[error("cannot use the lock file {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Why the control socket's path could not be found or prepared.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("cannot resolve the workspace path {path:?}: {source}")]
    Canonicalize { path: PathBuf, source: io::Error },
    #[error(
        "the control socket path {0:?} is too long for a Unix socket; set XDG_RUNTIME_DIR or TMPDIR to a shorter folder"
    )]
    TooLong(PathBuf),
    #[error("cannot prepare the socket folder {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the socket folder {0:?} is not a private folder of this user; remove it and start again"
    )]
    Unsafe(PathBuf),
}

/// The held daemon lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct DaemonLock {
    file: File,
    pid_path: PathBuf,
}

impl DaemonLock {
    /// Takes the lock in `cuedeck_dir` (the workspace's `.cuedeck/`) and writes the pid
    /// file, or says that another daemon holds it.
    ///
    /// A holder that is on its way out is waited for (see the module documentation).
    pub fn acquire(cuedeck_dir: &Path) -> Result<DaemonLock, LockError> {
        let lock_path = cuedeck_dir.join(LOCK_FILE);
        let file = open_lock_file(&lock_path)?;
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    attempts += 1;
                    let pid = read_pid(cuedeck_dir);
                    if attempts > PROBE_RETRIES && !still_waiting(start, pid) {
                        return Err(LockError::AlreadyRunning { pid });
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(TryLockError::Error(source)) => {
                    return Err(LockError::Io {
                        path: lock_path,
                        source,
                    });
                }
            }
        }
        let pid_path = cuedeck_dir.join(PID_FILE);
        write_pid(&pid_path, std::process::id()).map_err(|source| LockError::Io {
            path: pid_path.clone(),
            source,
        })?;
        Ok(DaemonLock { file, pid_path })
    }

    /// Whether a daemon holds the lock, without keeping it: `Some(pid from the pid file)`
    /// when one runs.
    pub fn probe(cuedeck_dir: &Path) -> Result<Option<Option<u32>>, LockError> {
        let lock_path = cuedeck_dir.join(LOCK_FILE);
        let file = match OpenOptions::new().read(true).open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Io {
                    path: lock_path,
                    source,
                });
            }
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None), // released when `file` closes
            Err(TryLockError::WouldBlock) => Ok(Some(read_pid(cuedeck_dir))),
            Err(TryLockError::Error(source)) => Err(LockError::Io {
                path: lock_path,
                source,
            }),
        }
    }

    /// [`DaemonLock::probe`] that waits (at most [`EXITING_HOLDER_WAIT`]) while the holder
    /// is exiting, so that a daemon killed a moment ago does not count as running:
    /// `Some(pid)` only for a holder that is not on its way out.
    pub fn probe_running(cuedeck_dir: &Path) -> Result<Option<Option<u32>>, LockError> {
        let start = Instant::now();
        loop {
            match DaemonLock::probe(cuedeck_dir)? {
                Some(pid) if still_waiting(start, pid) => std::thread::sleep(RETRY_PAUSE),
                held => return Ok(held),
            }
        }
    }
}

/// Whether a wait that began at `start` goes on for the lock's holder, `pid` as its pid
/// file names it: while the holder is exiting, up to [`EXITING_HOLDER_WAIT`].
fn still_waiting(start: Instant, pid: Option<u32>) -> bool {
    start.elapsed() < EXITING_HOLDER_WAIT && pid.is_none_or(is_exiting)
}

/// Whether process `pid` is gone or on its way out: no such process, a zombie or dead
/// leader (state `Z` or `X` in `/proc/PID/status`, while its other threads still exit),
/// or a SIGKILL pending that it has not acted on yet.
///
/// A lock held with no pid file is also waited for (by [`still_waiting`]): a daemon holds
/// the lock without one only for the instant after taking it and before letting it go.
pub fn is_exiting(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => proc_status_says_exiting(&status),
        // No /proc entry: gone, if this system has /proc at all; otherwise ask the kernel.
        Err(_) if Path::new("/proc/self/status").exists() => true,
        Err(_) => matches!(
            rustix::process::test_kill_process(raw),
            Err(rustix::io::Errno::SRCH)
        ),
    }
}

/// The part of [`is_exiting`] that reads `/proc/PID/status`.
fn proc_status_says_exiting(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    status.lines().any(|line| {
        let Some((key, value)) = line.split_once(':') else {
            return false;
        };
        let value = value.trim();
        match key {
            "State" => value.starts_with('Z') || value.starts_with('X'),
            "SigPnd" | "ShdPnd" => {
                u64::from_str_radix(value, 16).is_ok_and(|mask| mask & SIGKILL_BIT != 0)
            }
            _ => false,
        }
    })
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        // The pid file goes first, while the lock still says it is ours.
        let _ = std::fs::remove_file(&self.pid_path);
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_owned(),
            source,
        })
}

fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    writeln!(f, "{pid}")?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// The pid recorded in `.cuedeck/daemon.pid`, if readable. Information only.
pub fn read_pid(cuedeck_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(cuedeck_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The control socket's path for the workspace at `workspace_root`
/// (docs/reference.md §2.2).
pub fn control_socket_path(workspace_root: &Path) -> Result<PathBuf, SocketPathError> {
    let canonical =
        workspace_root
            .canonicalize()
            .map_err(|source| SocketPathError::Canonicalize {
                path: workspace_root.to_owned(),
                source,
            })?;
    socket_path_for(
        &canonical,
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        &std::env::temp_dir(),
        rustix::process::getuid().as_raw(),
    )
}

/// The pure part of [`control_socket_path`].
fn socket_path_for(
    canonical_root: &Path,
    xdg_runtime_dir: Option<&OsStr>,
    temp_dir: &Path,
    uid: u32,
) -> Result<PathBuf, SocketPathError> {
    let hash = blake3::hash(canonical_root.as_os_str().as_encoded_bytes());
    let name = format!("{}.sock", &hash.to_hex()[..16]);
    let in_temp = temp_dir.join(format!("cue-{uid}")).join(&name);
    let path = match xdg_runtime_dir {
        // The spec requires an absolute path; anything else is ignored. Where the path
        // would not fit, the temp directory is the next place.
        Some(dir) if Path::new(dir).is_absolute() => {
            let path = Path::new(dir).join("cue").join(&name);
            if path.as_os_str().len() < MAX_SOCKET_PATH_BYTES {
                return Ok(path);
            }
            in_temp
        }
        _ => in_temp,
    };
    if path.as_os_str().len() >= MAX_SOCKET_PATH_BYTES {
        return Err(SocketPathError::TooLong(path));
    }
    Ok(path)
}

/// Creates the socket's folder private to this user (mode 0700), or checks that an
/// existing one is: in a shared temp directory another user could have made it first to
/// intercept the daemon's control traffic.
pub fn prepare_socket_dir(socket_path: &Path) -> Result<(), SocketPathError> {
    let Some(dir) = socket_path.parent() else {
        return Ok(());
    };
    let io_err = |source| SocketPathError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // `$XDG_RUNTIME_DIR` itself exists; only our `cue/` below it may be missing,
            // but a temp dir could be missing a level too.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)
                .map_err(io_err)?;
        }
        Err(e) => return Err(io_err(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    let uid = rustix::process::getuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(SocketPathError::Unsafe(dir.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DaemonLock::probe(dir.path()).unwrap(), None);
        let lock = DaemonLock::acquire(dir.path()).unwrap();
        assert_eq!(read_pid(dir.path()), Some(std::process::id()));
        let err = DaemonLock::acquire(dir.path()).unwrap_err();
        match &err {
            LockError::AlreadyRunning { pid } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("already running"), "{err}");
        assert_eq!(
            DaemonLock::probe(dir.path()).unwrap(),
            Some(Some(std::process::id()))
        );
        drop(lock);
        assert_eq!(DaemonLock::probe(dir.path()).unwrap(), None);
        assert_eq!(read_pid(dir.path()), None);
        let _again = DaemonLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_exiting_holder_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        // Held by a process that is gone as far as the pid file says: what a kill -9 looks
        // like while the dead daemon's threads still exit.
        let lock = DaemonLock::acquire(dir.path()).unwrap();
        let gone = exited_child_pid();
        std::fs::write(dir.path().join(PID_FILE), format!("{gone}\n")).unwrap();
        assert_eq!(DaemonLock::probe(dir.path()).unwrap(), Some(Some(gone)));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(lock);
        });
        let start = Instant::now();
        let again = DaemonLock::acquire(dir.path()).expect("waited for the exiting holder");
        assert!(start.elapsed() < EXITING_HOLDER_WAIT);
        release.join().unwrap();

        // The same for `probe_running`.
        std::fs::write(dir.path().join(PID_FILE), format!("{gone}\n")).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(again);
        });
        assert_eq!(DaemonLock::probe_running(dir.path()).unwrap(), None);
        release.join().unwrap();
    }

    #[test]
    fn a_live_holder_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = DaemonLock::acquire(dir.path()).unwrap();
        let start = Instant::now();
        assert!(matches!(
            DaemonLock::acquire(dir.path()),
            Err(LockError::AlreadyRunning { pid: Some(p) }) if p == std::process::id()
        ));
        assert_eq!(
            DaemonLock::probe_running(dir.path()).unwrap(),
            Some(Some(std::process::id()))
        );
        assert!(start.elapsed() < EXITING_HOLDER_WAIT);
    }

    #[test]
    fn exiting_processes_are_told_from_running_ones() {
        assert!(!is_exiting(std::process::id()));
        assert!(is_exiting(exited_child_pid()));
        let running = "Name:\tcue\nState:\tS (sleeping)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert!(!proc_status_says_exiting(running));
        for exiting in [
            "State:\tZ (zombie)\nShdPnd:\t0000000000000000\n",
            "State:\tX (dead)\n",
            "State:\tS (sleeping)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n",
            "State:\tR (running)\nSigPnd:\t0000000000000100\n",
        ] {
            assert!(proc_status_says_exiting(exiting), "{exiting}");
        }
        // Other signals pending are not an exit.
        assert!(!proc_status_says_exiting(
            "State:\tS (sleeping)\nShdPnd:\t0000000000004000\n"
        ));
    }

    /// The pid of a child that has exited and been reaped: no process has it (until the
    /// kernel hands it out again, which takes a full turn of the pid space).
    fn exited_child_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn stale_pid_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        // What a kill -9 leaves: a lock file nobody holds and a pid file.
        std::fs::write(dir.path().join(LOCK_FILE), b"").unwrap();
        std::fs::write(dir.path().join(PID_FILE), b"999999\n").unwrap();
        assert_eq!(DaemonLock::probe(dir.path()).unwrap(), None);
        let _lock = DaemonLock::acquire(dir.path()).unwrap();
        assert_eq!(read_pid(dir.path()), Some(std::process::id()));
    }

    const LOCK_CHILD_ENV: &str = "CUE_LOCK_CHILD";

    /// Not a test on its own: the child process of `lock_held_by_another_process_blocks`,
    /// which holds the lock until it is killed. Returns at once otherwise.
    #[test]
    fn lock_child() {
        let Some(dir) = std::env::var_os(LOCK_CHILD_ENV) else {
            return;
        };
        let _lock = DaemonLock::acquire(Path::new(&dir)).unwrap();
        println!("locked");
        std::io::stdout().flush().unwrap();
        // Hold the lock until killed; exit if the parent test dies (stdin closes).
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    }

    #[test]
    fn lock_held_by_another_process_blocks() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "lock::tests::lock_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(LOCK_CHILD_ENV, dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let locked = std::io::BufReader::new(stdout)
            .lines()
            // libtest prints the test's name on the same line first.
            .any(|l| l.is_ok_and(|l| l.ends_with("locked")));
        assert!(locked, "the child never took the lock");
        let child_pid = child.id();
        assert_eq!(
            DaemonLock::probe(dir.path()).unwrap(),
            Some(Some(child_pid))
        );
        assert!(matches!(
            DaemonLock::acquire(dir.path()),
            Err(LockError::AlreadyRunning { pid: Some(p) }) if p == child_pid
        ));
        child.kill().unwrap(); // SIGKILL: the pid file stays behind
        child.wait().unwrap();
        assert_eq!(read_pid(dir.path()), Some(child_pid));
        // The kernel released the dead process's lock; the stale pid file does not matter.
        assert_eq!(DaemonLock::probe(dir.path()).unwrap(), None);
        let _lock = DaemonLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn socket_paths() {
        let root = Path::new("/home/someone/notes");
        let hash = &blake3::hash(b"/home/someone/notes").to_hex()[..16];
        let xdg = socket_path_for(
            root,
            Some(OsStr::new("/run/user/1000")),
            Path::new("/tmp"),
            1000,
        )
        .unwrap();
        assert_eq!(
            xdg,
            PathBuf::from(format!("/run/user/1000/cue/{hash}.sock"))
        );
        let tmp = socket_path_for(root, None, Path::new("/tmp"), 1000).unwrap();
        assert_eq!(tmp, PathBuf::from(format!("/tmp/cue-1000/{hash}.sock")));
        let relative =
            socket_path_for(root, Some(OsStr::new("run")), Path::new("/tmp"), 7).unwrap();
        assert!(relative.starts_with("/tmp/cue-7"));
        let other = socket_path_for(
            Path::new("/home/someone/other"),
            None,
            Path::new("/tmp"),
            1000,
        )
        .unwrap();
        assert_ne!(tmp, other);
        // Where `$XDG_RUNTIME_DIR` is too deep, the temp directory; too deep both, an error.
        let long = "/x".repeat(60);
        let fell_back = socket_path_for(root, Some(OsStr::new(&long)), Path::new("/tmp"), 1);
        assert_eq!(
            fell_back.unwrap(),
            PathBuf::from(format!("/tmp/cue-1/{hash}.sock"))
        );
        assert!(matches!(
            socket_path_for(root, Some(OsStr::new(&long)), Path::new(&long), 1),
            Err(SocketPathError::TooLong(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let real = control_socket_path(dir.path()).unwrap();
        assert!(real.as_os_str().len() < MAX_SOCKET_PATH_BYTES);
        assert!(real.to_string_lossy().ends_with(".sock"));
    }

    #[test]
    fn socket_dir_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cue-1").join("x.sock");
        prepare_socket_dir(&sock).unwrap();
        let mode = std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        prepare_socket_dir(&sock).unwrap();

        std::fs::set_permissions(
            sock.parent().unwrap(),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert!(matches!(
            prepare_socket_dir(&sock),
            Err(SocketPathError::Unsafe(_))
        ));

        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("linked")).unwrap();
        assert!(matches!(
            prepare_socket_dir(&dir.path().join("linked").join("x.sock")),
            Err(SocketPathError::Unsafe(_))
        ));
    }
}
