//! The end-to-end harness: cue-testkit's real `cue-relay` and `cue` processes on
//! 127.0.0.1, each peer in a temporary folder, as tests use them (a failure fails the
//! test), and what only these tests need: file edits as editors make them, proxies that
//! record or misbehave, a terminal, fault schedules.
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

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cue_testkit::{ANY_PORT, Kit, metric_value, poll_until};

pub use cue_testkit::{FloodReport, Flooder, Pace};

/// How long any condition may take before the test fails (generous: CI machines are
/// shared and debug builds are slow).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// What every test's processes share: the binaries, found once; folders named
/// `cue-e2e-*`; daemons that log at info, and what the session, the lobby and the relay
/// client drop or refuse at debug, for the failures' sake (a failing test prints its
/// daemons' last log lines).
fn kit() -> &'static Kit {
    static KIT: OnceLock<Kit> = OnceLock::new();
    KIT.get_or_init(|| {
        let mut kit = must(Kit::locate("cue-e2e", None, None));
        kit.env.push((
            "CUE_LOG".into(),
            "info,cue_daemon::session=debug,cue_daemon::lobby=debug,cue_daemon::relay_client=debug"
                .into(),
        ));
        kit
    })
}

/// The value, or the test fails with the whole error chain.
#[track_caller]
fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The `cue` binary.
pub fn cue_bin() -> PathBuf {
    kit().cue.clone()
}

/// Polls `cond` until it holds; fails the test with `what` after [`DEADLINE`]. Pauses
/// grow to 50 ms: most conditions here run `cue sync status`, a process each.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    must(poll_until(
        what,
        DEADLINE,
        Duration::from_millis(50),
        || Ok(cond()),
    ));
}

/// A `cue-relay` process: cue-testkit's, with failures failing the test.
#[derive(Debug)]
pub struct Relay(cue_testkit::Relay);

impl Deref for Relay {
    type Target = cue_testkit::Relay;

    fn deref(&self) -> &cue_testkit::Relay {
        &self.0
    }
}

impl Relay {
    /// A relay on a free port of 127.0.0.1.
    #[track_caller]
    pub fn start() -> Relay {
        Relay::start_on(ANY_PORT)
    }

    /// A relay on `listen` (e.g. the address of a relay that was stopped, to restart it).
    #[track_caller]
    pub fn start_on(listen: &str) -> Relay {
        Relay::start_with(listen, &[])
    }

    /// A relay with extra flags (limits).
    #[track_caller]
    pub fn start_with(listen: &str, flags: &[&str]) -> Relay {
        Relay(must(cue_testkit::Relay::start(kit(), listen, flags)))
    }

    /// SIGTERM ("going away" to every peer), then wait for the process.
    pub fn stop(self) -> SocketAddr {
        self.0.stop()
    }

    /// kill -9, as a crash would; returns the address to restart it on.
    pub fn kill(self) -> SocketAddr {
        self.0.kill()
    }

    /// `GET /metrics`, the Prometheus text.
    #[track_caller]
    pub fn metrics(&self) -> String {
        must(self.0.metrics())
    }

    /// One counter of `/metrics` (the whole line's name and labels, e.g.
    /// `cue_relay_refusals_total{reason="rate_limited"}`), 0 when absent.
    #[track_caller]
    pub fn metric(&self, name: &str) -> u64 {
        metric_value(&self.metrics(), name).map_or(0, |v| v as u64)
    }
}

/// A relay address where nothing listens (the discard port on loopback): a workspace
/// made with it starts offline and keeps retrying.
pub const UNREACHABLE_RELAY: &str = "ws://127.0.0.1:9";

/// One device: a temporary folder and the `cue` commands run on it (cue-testkit's
/// `Peer`, with failures failing the test, and the edits tests make).
#[derive(Debug)]
pub struct Peer(cue_testkit::Peer);

impl Deref for Peer {
    type Target = cue_testkit::Peer;

    fn deref(&self) -> &cue_testkit::Peer {
        &self.0
    }
}

impl Peer {
    /// An empty folder for a device called `name`.
    #[track_caller]
    pub fn new(name: &str) -> Peer {
        Peer(must(cue_testkit::Peer::new(kit(), name)))
    }

    /// This peer's `cue` and daemon run with `key=value` in their environment too.
    pub fn with_env(self, key: &str, value: &str) -> Peer {
        Peer(self.0.with_env(key, value))
    }

    /// [`Peer::new`] with its folder inside `parent`.
    #[track_caller]
    pub fn new_in(name: &str, parent: &std::path::Path) -> Peer {
        Peer(must(cue_testkit::Peer::new_in(kit(), name, parent)))
    }

    /// Runs `cue -C <folder> args...` and returns its output, whatever its exit status.
    #[track_caller]
    pub fn cue(&self, args: &[&str]) -> Output {
        must(self.0.cue(args))
    }

    /// Runs `cue` and fails the test unless it exits 0; returns stdout.
    #[track_caller]
    pub fn cue_ok(&self, args: &[&str]) -> String {
        must(self.0.cue_ok(args))
    }

    /// `cue sync init` here.
    #[track_caller]
    pub fn init(&self, relay: &str) {
        must(self.0.init(relay));
    }

    /// `cue sync join TOKEN` here.
    #[track_caller]
    pub fn join(&self, token: &str) {
        must(self.0.join(token));
    }

    #[track_caller]
    pub fn invite(&self) -> String {
        must(self.0.invite())
    }

    #[track_caller]
    pub fn start(&self) {
        must(self.0.start());
    }

    #[track_caller]
    pub fn stop(&self) {
        must(self.0.stop());
    }

    /// `status --json`, parsed, with its exit code.
    #[track_caller]
    pub fn status(&self) -> (serde_json::Value, i32) {
        must(self.0.status())
    }

    /// Whether this peer's daemon is running (its status says so).
    #[track_caller]
    pub fn running(&self) -> bool {
        must(self.0.running())
    }

    /// kill -9 the daemon, as a crash would, and wait until it is gone (its lock free).
    #[track_caller]
    pub fn kill_daemon(&self) {
        must(self.0.kill_daemon(DEADLINE));
    }

    /// kill -9 the daemon and return at once with its pid: the process may still be
    /// exiting, its lock still held, when this returns.
    #[track_caller]
    pub fn kill_daemon_now(&self) -> u32 {
        let pid = self
            .live_daemon()
            .unwrap_or_else(|| panic!("{} has no running daemon", self.name));
        cue_testkit::kill(pid);
        pid
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

    /// The permission bits of a file (`None`: no such file).
    pub fn mode(&self, rel: &str) -> Option<u32> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(self.path(rel)).ok()?;
        Some(meta.permissions().mode() & 0o7777)
    }

    /// `chmod MODE` a file, as a user in a shell would.
    pub fn chmod(&self, rel: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.path(rel), std::fs::Permissions::from_mode(mode)).unwrap();
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
    pair_of(relay, Peer::new("alice"))
}

/// [`pair`] where alice's `cue` and daemon run with `key=value` in their environment.
pub fn pair_with_alice_env(key: &str, value: &str) -> (Relay, Peer, Peer) {
    pair_of(Relay::start(), Peer::new("alice").with_env(key, value))
}

fn pair_of(relay: Relay, a: Peer) -> (Relay, Peer, Peer) {
    let b = Peer::new("bob");
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    (relay, a, b)
}

/// Waits until `peer` holds `rel` with content satisfying `cond`.
/// `cp -a FROM TO`: a folder copied with its modes and times, as a user's backup is.
pub fn copy_as_is(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

pub fn wait_for_file(peer: &Peer, rel: &str, what: &str, cond: impl Fn(&str) -> bool) {
    wait_until(&format!("{} on {}: {what}", rel, peer.name), || {
        peer.read(rel).is_some_and(|c| cond(&c))
    });
}

// ---------------------------------------------------------------------------------------
// Fault injection: seeds, trees, a kill -9 for the relay, a faulty network, a flooder.

/// Whether the long versions of the fault-injection tests run (`CUE_FAULTS_LONG=1`).
pub fn faults_long() -> bool {
    std::env::var("CUE_FAULTS_LONG").is_ok_and(|v| v == "1")
}

/// A small seeded generator (splitmix64) for fault schedules. The seed is printed, and
/// `CUE_FAULTS_SEED=S` replays it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The seed from `CUE_FAULTS_SEED`, else from the clock; printed with `test`'s name.
    pub fn seeded(test: &str) -> Rng {
        let seed = std::env::var("CUE_FAULTS_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (replay with CUE_FAULTS_SEED={seed})");
        Rng(seed)
    }

    /// A generator of its own, seeded from this one (for another thread).
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` in 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// Every regular file under `root` (relative path → bytes), `.cuedeck/` excluded. Files
/// that vanish during the walk are skipped.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".cuedeck" {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => walk(root, &path, out),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&path) {
                        out.insert(rel, bytes);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Whether a file name is a temporary that a save or a daemon write leaves for an instant
/// (cue's own `.cue-tmp-*`, the `.tmp` of [`Peer::save_atomically`]).
pub fn is_temporary(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with(".cue-tmp-") || name.ends_with(".tmp")
}

/// Waits until every peer holds the same tree, byte for byte, with no temporary left.
pub fn wait_converged(peers: &[&Peer]) {
    let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    let last = loop {
        let trees = peers.iter().map(|p| tree(p.root())).collect::<Vec<_>>();
        let same = trees.windows(2).all(|w| w[0] == w[1]);
        let clean = trees[0].keys().all(|k| !is_temporary(k));
        if same && clean {
            return;
        }
        if start.elapsed() > DEADLINE {
            break trees;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    // Say which files differ, to make the failure readable.
    let mut report = String::new();
    let all: std::collections::BTreeSet<&String> = last.iter().flat_map(|t| t.keys()).collect();
    for path in all {
        let versions: Vec<Option<usize>> = last.iter().map(|t| t.get(path).map(Vec::len)).collect();
        let first = last[0].get(path);
        if last.iter().any(|t| t.get(path) != first) || is_temporary(path) {
            report.push_str(&format!("\n  {path}: sizes {versions:?}"));
        }
    }
    panic!("timed out after {DEADLINE:?} waiting for {names:?} to converge:{report}");
}

impl Peer {
    /// Runs the real `sed -i -e SCRIPT` on a file, as a user editing in a shell would.
    pub fn sed_in_place(&self, rel: &str, script: &str) {
        let out = Command::new("sed")
            .arg("-i")
            .arg("-e")
            .arg(script)
            .arg(self.path(rel))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sed -i {script:?} {rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Saves bytes through a temporary `.NAME.tmp` and a rename (an atomic save), so no
    /// reader ever sees a half-written file.
    pub fn save_atomically(&self, rel: &str, content: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let tmp = p.with_file_name(format!(".{}.tmp", p.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, p).unwrap();
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target` that misbehaves on demand, like a bad
/// network between the daemons and the relay: it adds latency, stalls (holds every byte
/// for a while), cuts every open connection, and refuses new ones.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Debug)]
struct ProxyState {
    stop: std::sync::atomic::AtomicBool,
    refusing: std::sync::atomic::AtomicBool,
    stalled: std::sync::atomic::AtomicBool,
    /// While set, only new connections asking for this WebSocket path are passed on.
    only_path: std::sync::Mutex<Option<String>>,
    latency_ms: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<Vec<std::net::TcpStream>>,
    /// Connections accepted and passed on, cut, and refused.
    accepted: std::sync::atomic::AtomicU64,
    cut: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> FaultProxy {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(ProxyState {
            stop: Default::default(),
            refusing: Default::default(),
            stalled: Default::default(),
            only_path: Default::default(),
            latency_ms: Default::default(),
            open: Default::default(),
            accepted: Default::default(),
            cut: Default::default(),
            refused: Default::default(),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stop.load(Relaxed) {
                    return;
                }
                let Ok(mut client) = client else { continue };
                let only = st.only_path.lock().unwrap().clone();
                let request = match only {
                    Some(_) => read_request_head(&mut client),
                    None => Vec::new(),
                };
                let wrong_path = only.is_some_and(|path| {
                    let line = String::from_utf8_lossy(&request);
                    line.split_whitespace().nth(1) != Some(path.as_str())
                });
                if st.refusing.load(Relaxed) || wrong_path {
                    st.refused.fetch_add(1, Relaxed);
                    drop(client);
                    continue;
                }
                let Ok(mut server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                if std::io::Write::write_all(&mut server, &request).is_err() {
                    continue;
                }
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                st.accepted.fetch_add(1, Relaxed);
                {
                    let mut open = st.open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    pump(st.clone(), from, to);
                }
            }
        });
        FaultProxy { addr, state }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Delays every byte by `latency` (each direction).
    pub fn set_latency(&self, latency: Duration) {
        self.state.latency_ms.store(
            latency.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Holds every byte (nothing is lost: it flows again when the stall ends).
    pub fn set_stalled(&self, stalled: bool) {
        self.state
            .stalled
            .store(stalled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes every new connection at once while `refusing`.
    pub fn set_refusing(&self, refusing: bool) {
        self.state
            .refusing
            .store(refusing, std::sync::atomic::Ordering::Relaxed);
    }

    /// While `Some(path)`, refuses every new connection that asks for another WebSocket
    /// path (another room) than `path`.
    pub fn set_only_path(&self, path: Option<String>) {
        *self.state.only_path.lock().unwrap() = path;
    }

    /// Cuts every open connection, both ways, as a dropped network would.
    pub fn cut_all(&self) {
        let open = std::mem::take(&mut *self.state.open.lock().unwrap());
        for s in &open {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.state
            .cut
            .fetch_add(open.len() as u64 / 2, std::sync::atomic::Ordering::Relaxed);
    }

    /// Back to a healthy network: no latency, no stall, no refusals.
    pub fn heal(&self) {
        self.set_latency(Duration::ZERO);
        self.set_stalled(false);
        self.set_refusing(false);
    }

    /// (connections passed on, connections cut, connections refused) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.state.accepted.load(Relaxed),
            self.state.cut.load(Relaxed),
            self.state.refused.load(Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so its thread ends, and end every pump.
        let _ = std::net::TcpStream::connect(self.addr);
        self.cut_all();
    }
}

/// Copies `from` to `to` through a queue that releases each chunk once its latency has
/// passed and no stall holds it; when either side ends, both sockets are shut.
/// A connection's HTTP request head (up to its empty line, at most 16 KiB, waiting at
/// most 5 s), read so that the proxy can look at the path before passing it on.
fn read_request_head(client: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while head.len() < 16 * 1024 && !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let _ = client.set_read_timeout(None);
    head
}

fn pump(state: std::sync::Arc<ProxyState>, mut from: std::net::TcpStream, to: std::net::TcpStream) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::Relaxed;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_to = to.try_clone().unwrap();
    let reader_state = state.clone();
    std::thread::spawn(move || {
        let state = reader_state;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let due = Instant::now() + Duration::from_millis(state.latency_ms.load(Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
            if state.stop.load(Relaxed) {
                break;
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
        let _ = reader_to.shutdown(std::net::Shutdown::Both);
        // The writer ends when the queue is empty and this sender is gone.
    });
    let writer_state = state;
    std::thread::spawn(move || {
        let mut to = to;
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // A stall holds the bytes until it ends (or the proxy stops).
            while writer_state.stalled.load(Relaxed) && !writer_state.stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
