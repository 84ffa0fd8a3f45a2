//! Real processes on 127.0.0.1: a `cue-relay` and `cue` daemons in temporary folders
//! (the approach of the end-to-end harness in `tests/src/lib.rs`). Every wait polls a
//! condition with a deadline; every process started here is stopped by its pid when its
//! handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// The binaries this harness runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub cue: PathBuf,
    pub relay: PathBuf,
    /// `cue-relay-load`, when the relay-load figures are asked for.
    pub relay_load: Option<PathBuf>,
}

impl Bins {
    /// `cue` and `cue-relay` from the flags, else `CUE_BIN`/`CUE_RELAY_BIN`, else next to
    /// this executable (`target/release/`); the same for `cue-relay-load`
    /// (`CUE_RELAY_LOAD_BIN`) when `relay_load` is `Some`.
    pub fn locate(
        cue: Option<PathBuf>,
        relay: Option<PathBuf>,
        relay_load: Option<Option<PathBuf>>,
    ) -> anyhow::Result<Bins> {
        let here = std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("no folder for the current executable"))?;
        let pick = |flag: Option<PathBuf>, env: &str, name: &str| -> anyhow::Result<PathBuf> {
            let p = flag
                .or_else(|| std::env::var_os(env).map(PathBuf::from))
                .unwrap_or_else(|| here.join(name));
            if !p.exists() {
                bail!(
                    "{} not found: `cargo build --release -p cue-cli -p cue-relay`, or set {env}",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Bins {
            cue: pick(cue, "CUE_BIN", "cue")?,
            relay: pick(relay, "CUE_RELAY_BIN", "cue-relay")?,
            relay_load: relay_load
                .map(|flag| pick(flag, "CUE_RELAY_LOAD_BIN", "cue-relay-load"))
                .transpose()?,
        })
    }
}

/// Polls `cond` until it holds, at most `deadline`; pauses grow from 1 ms to 20 ms.
pub fn wait_until(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// kill -9 `pid` (a process this harness started, directly or through a child).
pub fn kill(pid: u32) {
    signal(pid, rustix::process::Signal::KILL);
}

/// Whether process `pid` has exited (no thread left that is not a zombie).
pub fn gone(pid: u32) -> bool {
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

/// A `cue-relay` on a free port of 127.0.0.1, default limits.
#[derive(Debug)]
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
}

impl Relay {
    pub fn start(bins: &Bins) -> anyhow::Result<Relay> {
        Relay::start_with(bins, &[])
    }

    /// A relay with extra flags (limits: `--messages-per-second N --burst N`).
    pub fn start_with(bins: &Bins, flags: &[&str]) -> anyhow::Result<Relay> {
        let mut child = Command::new(&bins.relay)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bins.relay.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("relay stdout"))?;
        // `listening on ADDR` once bound; a dead relay closes stdout, ending the read.
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("relay did not start: {line:?}"))?
            .parse()?;
        Ok(Relay { child, addr })
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's `/metrics` counters (name without labels → value).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let mut s = TcpStream::connect(self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name).then(|| v.parse().ok())?
            })
            .ok_or_else(|| anyhow!("metric {name} not in /metrics"))
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
    cue: PathBuf,
}

impl Peer {
    pub fn new(bins: &Bins, name: &str) -> anyhow::Result<Peer> {
        Ok(Peer {
            // CUE_BENCH_KEEP=1 leaves the folders behind, to look into their stores.
            dir: tempfile::Builder::new()
                .prefix(&format!("cue-bench-{name}-"))
                .disable_cleanup(std::env::var_os("CUE_BENCH_KEEP").is_some())
                .tempdir()?,
            name: name.to_string(),
            cue: bins.cue.clone(),
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Runs `cue -C <folder> args...`; fails unless it exits 0; returns stdout.
    pub fn cue(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.cue)
            .arg("-C")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "`cue {}` on {} failed ({}): {}{}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    pub fn init(&self, relay: &str) -> anyhow::Result<()> {
        self.cue(&["sync", "init", "--relay", relay, "--name", &self.name])
            .map(drop)
    }

    pub fn invite(&self) -> anyhow::Result<String> {
        Ok(self.cue(&["sync", "invite"])?.trim().to_string())
    }

    pub fn join(&self, token: &str) -> anyhow::Result<()> {
        self.cue(&["sync", "join", token, "--name", &self.name])
            .map(drop)
    }

    pub fn start(&self) -> anyhow::Result<()> {
        self.cue(&["sync", "start"]).map(drop)
    }

    /// `cue sync status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.cue)
            .arg("-C")
            .arg(self.root())
            .args(["sync", "status", "--json"])
            .stdin(Stdio::null())
            .output()?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "status --json on {} is not JSON: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The daemon's pid, from `status --json` (daemon.pid).
    pub fn daemon_pid(&self) -> anyhow::Result<u32> {
        let s = self.status()?;
        s["daemon"]["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| anyhow!("no daemon pid in the status of {}", self.name))
    }

    /// How many peers the daemon reports online.
    pub fn online_peers(&self) -> anyhow::Result<usize> {
        let s = self.status()?;
        Ok(s["peers"]
            .as_array()
            .map(|a| a.iter().filter(|p| p["online"] == true).count())
            .unwrap_or(0))
    }

    /// The pid in the pid file, if it is a live `cue` working on this folder.
    fn live_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.path(".cuedeck/daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let root = self.root().to_string_lossy().into_owned();
        (!gone(pid) && String::from_utf8_lossy(&cmdline).contains(&root)).then_some(pid)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // No daemon outlives its folder: TERM, a bounded wait, then KILL.
        if let Some(pid) = self.live_pid() {
            signal(pid, rustix::process::Signal::TERM);
            let start = Instant::now();
            while !gone(pid) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !gone(pid) {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A workspace: one relay, `n` peers (the first made it, the others joined its invite),
/// every daemon started and every peer seeing all others online.
pub fn cluster(bins: &Bins, n: usize, deadline: Duration) -> anyhow::Result<(Relay, Vec<Peer>)> {
    let relay = Relay::start(bins)?;
    let peers = cluster_on(bins, &relay, n, deadline)?;
    Ok((relay, peers))
}

/// A workspace of `n` peers on a running relay, as [`cluster`].
pub fn cluster_on(
    bins: &Bins,
    relay: &Relay,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::new();
    for i in 0..n {
        peers.push(Peer::new(bins, &format!("p{i}"))?);
    }
    peers[0].init(&relay.url())?;
    let token = peers[0].invite()?;
    for p in &peers[1..] {
        p.join(&token)?;
    }
    for p in &peers {
        p.start()?;
    }
    for p in &peers {
        wait_until(
            &format!("{} to see {} peers online", p.name, n - 1),
            deadline,
            || Ok(p.online_peers()? == n - 1),
        )?;
    }
    Ok(peers)
}
