//! The relay's own figures (deliveries a second, hop latency, RSS with idle connections)
//! from its load generator, `cue-relay-load bench`, run as a child process. Its output is
//! kept as opaque text: this harness only passes it through.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::procfs;
use cue_testkit::wait_until;

/// The shape of a `cue-relay-load bench` run (its flags).
#[derive(Debug, Clone)]
pub struct Shape {
    pub rooms: usize,
    pub peers: usize,
    pub size: usize,
    pub seconds: f64,
    pub window: u64,
    pub idle: usize,
}

impl Shape {
    /// docs/benchmarks.md's relay section.
    pub fn full() -> Shape {
        Shape {
            rooms: 10,
            peers: 10,
            size: 300,
            seconds: 3.0,
            window: 16,
            idle: 10_000,
        }
    }

    /// Seconds-long: every scenario, tiny.
    pub fn quick() -> Shape {
        Shape {
            rooms: 2,
            peers: 2,
            size: 300,
            seconds: 0.25,
            window: 4,
            idle: 100,
        }
    }

    pub fn args(&self) -> Vec<String> {
        [
            "bench".to_string(),
            "--rooms".into(),
            self.rooms.to_string(),
            "--peers".into(),
            self.peers.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--window".into(),
            self.window.to_string(),
            "--idle".into(),
            self.idle.to_string(),
        ]
        .into()
    }
}

/// Raises this process's soft limit on open files to its hard limit (inherited by the
/// children: the generator holds `idle` client sockets, the relay it starts as many
/// server sockets). Returns (soft before, soft after).
fn raise_nofile() -> (Option<u64>, Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = rustix::process::Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("cue-bench: could not raise RLIMIT_NOFILE: {e}");
        }
    }
    (before.current, getrlimit(Resource::Nofile).current)
}

/// Runs `cue-relay-load bench` with `shape` (its idle connections lowered to fit the
/// open-file limit), at most `deadline`; `relay` is passed on as `--relay-bin` unless it
/// is the `cue-relay` next to the generator (its default). Returns what it printed, its
/// exit status and the command, whether it succeeded or not.
pub fn run(bin: &Path, relay: &Path, shape: &Shape, deadline: Duration) -> anyhow::Result<Value> {
    let (nofile_before, nofile) = raise_nofile();
    let mut shape = shape.clone();
    // Each side of the idle figure needs one descriptor a connection, plus some spare.
    let spare = 256;
    if let Some(limit) = nofile
        && (shape.idle as u64).saturating_add(spare) > limit
    {
        let fit = limit.saturating_sub(spare) as usize;
        eprintln!(
            "cue-bench: RLIMIT_NOFILE is {limit}: {} idle connections instead of {}",
            fit, shape.idle
        );
        shape.idle = fit;
    }
    let mut args = shape.args();
    let default_relay: PathBuf = bin.with_file_name("cue-relay");
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if !same(relay, &default_relay) {
        args.push("--relay-bin".into());
        args.push(relay.display().to_string());
    }
    let command = std::iter::once(bin.display().to_string())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>();
    eprintln!("cue-bench: {}", crate::docs::shell_words(&command));
    let load_start = procfs::load1();
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // Both pipes drained on their own threads, so a full pipe never stalls the child.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let mut status = None;
    let waited = wait_until("cue-relay-load to finish", deadline, || {
        status = child.try_wait()?;
        Ok(status.is_some())
    });
    if waited.is_err() {
        // The relays it started would outlive a killed generator: stop them first, by
        // their pids, then the generator.
        for pid in procfs::children(child.id()) {
            cue_testkit::kill(pid);
        }
        let _ = child.kill();
        status = child.wait().ok();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let ok = waited.is_ok() && status.is_some_and(|s| s.success());
    // The last lines of stderr are enough to say why it failed.
    let tail: String = {
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    Ok(json!({
        "command": crate::docs::shell_words(&command),
        "args": args,
        "ok": ok,
        "timed_out": waited.is_err(),
        "exit": status.map(|s| s.to_string()),
        "elapsed_s": t.elapsed().as_secs_f64(),
        "nofile_soft_before": nofile_before,
        "nofile_soft": nofile,
        "load1_start": load_start,
        "load1_end": procfs::load1(),
        "stdout": stdout,
        "stderr_tail": tail,
    }))
}
