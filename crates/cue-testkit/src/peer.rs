//! One device: a temporary folder and the `cue` commands run on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustix::process::Signal;

use crate::process::{gone, kill, signal};
use crate::{Kit, wait_until};

/// How long a daemon may take to exit when its peer is dropped before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// A device: its folder, removed when dropped (unless the kit keeps folders), and no
/// daemon working on it outlives it.
#[derive(Debug)]
pub struct Peer {
    pub dir: tempfile::TempDir,
    pub name: String,
    cue: PathBuf,
    env: Vec<(String, String)>,
    keep: bool,
}

impl Peer {
    /// An empty folder for a device called `name`.
    pub fn new(kit: &Kit, name: &str) -> anyhow::Result<Peer> {
        Peer::new_in(kit, name, &std::env::temp_dir())
    }

    /// [`Peer::new`] with its folder made inside `parent` (a folder on another
    /// filesystem, say).
    pub fn new_in(kit: &Kit, name: &str, parent: &Path) -> anyhow::Result<Peer> {
        Ok(Peer {
            dir: tempfile::Builder::new()
                .prefix(&format!("{}-{name}-", kit.label))
                .disable_cleanup(kit.keep)
                .tempdir_in(parent)?,
            name: name.to_owned(),
            cue: kit.cue.clone(),
            env: kit.env.clone(),
            keep: kit.keep,
        })
    }

    /// This peer's `cue` (and the daemon it starts) run with `key=value` in their
    /// environment too.
    pub fn with_env(mut self, key: &str, value: &str) -> Peer {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// `cue -C <folder> args...` to run, for a caller that sets its environment or
    /// streams.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cue);
        cmd.arg("-C")
            .arg(self.root())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cue -C <folder> args...`, whatever its exit status. It never hangs on a
    /// background daemon: the daemon's streams are not ours.
    pub fn cue(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running {}", self.cue.display()))
    }

    /// Runs `cue`; fails unless it exits 0; returns stdout.
    pub fn cue_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cue(args)?;
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

    /// `cue sync init` here.
    pub fn init(&self, relay: &str) -> anyhow::Result<()> {
        self.cue_ok(&["sync", "init", "--relay", relay, "--name", &self.name])
            .map(drop)
    }

    /// `cue sync join TOKEN` here.
    pub fn join(&self, token: &str) -> anyhow::Result<()> {
        self.cue_ok(&["sync", "join", token, "--name", &self.name])
            .map(drop)
    }

    /// `cue sync invite`: the token.
    pub fn invite(&self) -> anyhow::Result<String> {
        Ok(self.cue_ok(&["sync", "invite"])?.trim().to_owned())
    }

    pub fn start(&self) -> anyhow::Result<()> {
        self.cue_ok(&["sync", "start"]).map(drop)
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        self.cue_ok(&["sync", "stop"]).map(drop)
    }

    /// `cue sync status --json`, parsed, with its exit code.
    pub fn status(&self) -> anyhow::Result<(serde_json::Value, i32)> {
        let out = self.cue(&["sync", "status", "--json"])?;
        let json = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "status --json on {} is not JSON: {}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((json, out.status.code().unwrap_or(-1)))
    }

    /// Whether this peer's daemon is running (its status says so).
    pub fn running(&self) -> anyhow::Result<bool> {
        let (s, code) = self.status()?;
        Ok(code == 0 && s["daemon"]["running"] == true)
    }

    /// How many peers the daemon reports online.
    pub fn online_peers(&self) -> anyhow::Result<usize> {
        let (s, _) = self.status()?;
        Ok(s["peers"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|p| p["online"] == true).count()))
    }

    /// The pid in the daemon's pid file (which can be stale).
    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path(".cuedeck/daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the daemon working on this folder, if one runs.
    pub fn live_daemon(&self) -> Option<u32> {
        self.daemon_pid().filter(|&pid| self.owns(pid))
    }

    /// kill -9 the daemon, as a crash would, and wait (at most `deadline`) until it is
    /// gone, its lock free.
    pub fn kill_daemon(&self, deadline: Duration) -> anyhow::Result<()> {
        let pid = self
            .daemon_pid()
            .ok_or_else(|| anyhow!("{} has no daemon pid file", self.name))?;
        if !self.owns(pid) {
            bail!("pid {pid} is not {}'s daemon", self.name);
        }
        kill(pid);
        wait_until("the killed daemon to be gone", deadline, || Ok(gone(pid)))?;
        Ok(())
    }

    /// Whether `pid` is a live `cue` process working on this folder (a pid file can be
    /// stale and its pid reused).
    fn owns(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let root = self.root().to_string_lossy().into_owned();
        !gone(pid) && String::from_utf8_lossy(&cmdline).contains(&root)
    }
}

/// How many of its daemon's last log lines a peer prints when its test fails.
const LOG_LINES_ON_FAILURE: usize = 60;

impl Drop for Peer {
    fn drop(&mut self) {
        // A failing test (a CI run's flake above all) says what the daemon did: its log
        // is gone with the folder otherwise.
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.path(".cuedeck/daemon.log"))
        {
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_LINES_ON_FAILURE);
            eprintln!(
                "--- the last {} lines of {}'s daemon log ---",
                lines.len() - from,
                self.name
            );
            for line in &lines[from..] {
                eprintln!("{} | {line}", self.name);
            }
        }
        // Whatever happened, no daemon outlives its folder, nor writes into it while it
        // is removed. A kept folder is there to be looked into: its daemon is asked to
        // stop (TERM) so that it leaves its store at rest; otherwise kill -9. Either way
        // wait for it to be gone, and kill it if it takes too long.
        let Some(pid) = self.live_daemon() else {
            return;
        };
        signal(
            pid,
            if self.keep {
                Signal::TERM
            } else {
                Signal::KILL
            },
        );
        let start = Instant::now();
        while !gone(pid) && start.elapsed() < EXIT_GRACE {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !gone(pid) {
            kill(pid);
        }
    }
}
