//! The end-to-end harness: real `cue-relay` and `cue` processes on 127.0.0.1, each peer
//! in a temporary folder.
//!
//! The binaries are the workspace's own builds, found next to the test executable
//! (`target/<profile>/`); `cargo nextest run --workspace` (CI) builds them. Run alone,
//! build them first: `cargo build -p cue-cli -p cue-relay && cargo test -p cue-e2e`.
//! `CUE_BIN` and `CUE_RELAY_BIN` point elsewhere if needed.
//!
//! Every wait is a poll of a condition with a deadline, never a fixed sleep; every
//! process started here is stopped by its pid when its handle drops, so a failing test
//! leaves no daemon behind.

#![allow(clippy::unwrap_used)] // a harness fails its test by panicking

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any condition may take before the test fails (generous: CI machines are
/// shared and debug builds are slow).
pub const DEADLINE: Duration = Duration::from_secs(30);

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-<hash> → target/<profile>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo build -p cue-cli -p cue-relay`) or set {env}",
        p.display()
    );
    p
}

/// The `cue` binary.
pub fn cue_bin() -> PathBuf {
    binary("CUE_BIN", "cue")
}

/// The `cue-relay` binary.
pub fn relay_bin() -> PathBuf {
    binary("CUE_RELAY_BIN", "cue-relay")
}

/// Polls `cond` until it holds; fails the test with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// A `cue-relay` process.
#[derive(Debug)]
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
}

impl Relay {
    /// A relay on a free port of 127.0.0.1.
    pub fn start() -> Relay {
        Relay::start_on("127.0.0.1:0")
    }

    /// A relay on `listen` (e.g. the address of a relay that was stopped, to restart it).
    pub fn start_on(listen: &str) -> Relay {
        Relay::start_with(listen, &[])
    }

    /// A relay with extra flags (limits).
    pub fn start_with(listen: &str, flags: &[&str]) -> Relay {
        let mut child = Command::new(relay_bin())
            .args(["--listen", listen])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // The relay prints `listening on ADDR` once bound; a dead relay closes stdout,
        // which ends the read, so this cannot hang.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("relay did not start: {line:?}"))
            .parse()
            .unwrap();
        Relay { child, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// SIGTERM ("going away" to every peer), then wait for the process.
    pub fn stop(mut self) -> SocketAddr {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), rustix::process::Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

/// One device: a temporary folder and the `cue` commands run on it.
#[derive(Debug)]
pub struct Peer {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Peer {
    /// An empty folder for a device called `name`.
    pub fn new(name: &str) -> Peer {
        Peer {
            dir: tempfile::Builder::new()
                .prefix(&format!("cue-e2e-{name}-"))
                .tempdir()
                .unwrap(),
            name: name.to_string(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `cue -C <folder> args...` and returns its output (never hangs on a
    /// background daemon: the daemon's streams are not ours).
    pub fn cue(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `cue -C <folder> args...` to run, for a test that sets its environment or streams.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cue_bin());
        cmd.arg("-C")
            .arg(self.root())
            .args(args)
            .env("CUE_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cue` and fails the test unless it exits 0; returns stdout.
    pub fn cue_ok(&self, args: &[&str]) -> String {
        let out = self.cue(args);
        assert!(
            out.status.success(),
            "`cue {}` on {} failed ({}): {}{}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Writes a file in place (creating folders), as most editors do.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// Saves through a temporary file and a rename, as careful editors do.
    pub fn write_via_rename(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let tmp = p.with_file_name(format!(
            ".{}.swp-tmp",
            p.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, p).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
    }

    /// `cue sync init` here.
    pub fn init(&self, relay: &str) {
        self.cue_ok(&["sync", "init", "--relay", relay, "--name", &self.name]);
    }

    /// `cue sync join TOKEN` here.
    pub fn join(&self, token: &str) {
        self.cue_ok(&["sync", "join", token, "--name", &self.name]);
    }

    pub fn invite(&self) -> String {
        self.cue_ok(&["sync", "invite"]).trim().to_string()
    }

    pub fn start(&self) {
        self.cue_ok(&["sync", "start"]);
    }

    pub fn stop(&self) {
        self.cue_ok(&["sync", "stop"]);
    }

    /// `status --json`, parsed, with its exit code.
    pub fn status(&self) -> (serde_json::Value, i32) {
        let out = self.cue(&["sync", "status", "--json"]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (json, out.status.code().unwrap_or(-1))
    }

    /// The running daemon's pid, from the pid file.
    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path(".cuedeck/daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 the daemon, as a crash would, and wait until it is gone (its lock free).
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid().expect("a daemon pid");
        assert!(self.owns(pid), "pid {pid} is not {}'s daemon", self.name);
        signal(pid, rustix::process::Signal::KILL);
        wait_until("the killed daemon to be gone", || gone(pid));
    }

    /// Whether `pid` is a live `cue` process working on this peer's folder (a pid file
    /// can be stale and its pid reused).
    fn owns(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let root = self.root().to_string_lossy().into_owned();
        !gone(pid) && String::from_utf8_lossy(&cmdline).contains(&root)
    }
}

/// Whether process `pid` has finished exiting. A killed process lingers as a zombie
/// leader while its other threads exit, and those still hold its files (the daemon's
/// lock among them): it is gone once no thread is left that is not a zombie.
fn gone(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    !tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        })
    })
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Whatever happened in the test, no daemon outlives it.
        if let Some(pid) = self.daemon_pid()
            && self.owns(pid)
        {
            signal(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target` that records every byte both ways, to
/// check what the relay (or anyone on the wire) gets to see.
#[derive(Debug)]
pub struct Recorder {
    pub addr: SocketAddr,
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    pub fn start(target: SocketAddr) -> Recorder {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, stopped) = (bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let rec = rec.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 65536];
                        // Ends when either side closes.
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Recorder { addr, bytes, stop }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Everything that went through so far.
    pub fn recorded(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so its thread ends.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// Which of a command's streams go to a pseudo-terminal (the others are piped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTerminal {
    Stdout,
    Stderr,
}

/// What a command run by [`run_on_terminal`] wrote: to the terminal (as a terminal
/// shows it, `\n` as `\r\n`), to the piped stream, and its exit code.
#[derive(Debug)]
pub struct TerminalRun {
    pub terminal: String,
    pub piped: String,
    pub code: Option<i32>,
}

/// Runs `cmd` with one of its streams on a new pseudo-terminal (`TERM=xterm-256color`,
/// the colour variables of the test's own environment removed unless `cmd` sets them),
/// as a user at a terminal would.
pub fn run_on_terminal(mut cmd: Command, on: OnTerminal) -> TerminalRun {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::Read;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let explicit: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
    for var in ["NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE"] {
        if !explicit.iter().any(|k| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.env("TERM", "xterm-256color");
    match on {
        OnTerminal::Stdout => cmd.stdout(slave).stderr(Stdio::piped()),
        OnTerminal::Stderr => cmd.stderr(slave).stdout(Stdio::piped()),
    };
    let child = cmd.spawn().unwrap();
    // The child's copy is the only one left open: reading ends (EIO) when it exits.
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let output = child.wait_with_output().unwrap();
    let terminal = reader.join().unwrap();
    let piped = match on {
        OnTerminal::Stdout => output.stderr,
        OnTerminal::Stderr => output.stdout,
    };
    TerminalRun {
        terminal: String::from_utf8_lossy(&terminal).into_owned(),
        piped: String::from_utf8_lossy(&piped).into_owned(),
        code: output.status.code(),
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A relay and two peers of one workspace (`a` made it, `b` joined with its invite),
/// both daemons running.
pub fn pair() -> (Relay, Peer, Peer) {
    pair_on(Relay::start())
}

/// [`pair`] on a given relay.
pub fn pair_on(relay: Relay) -> (Relay, Peer, Peer) {
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    (relay, a, b)
}

/// Waits until `peer` holds `rel` with content satisfying `cond`.
pub fn wait_for_file(peer: &Peer, rel: &str, what: &str, cond: impl Fn(&str) -> bool) {
    wait_until(&format!("{} on {}: {what}", rel, peer.name), || {
        peer.read(rel).is_some_and(|c| cond(&c))
    });
}
