//! `cue demo`: the whole system on one machine, in temporary folders. A relay runs in
//! this process on 127.0.0.1; two devices (alice and bob) are real daemons, this same
//! executable started in the background as `cue sync start` does. Edits on each side are
//! timed until they are on the other's disk, a concurrent edit and a frontmatter change
//! show the merge, and everything is stopped and removed at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cue_daemon::control::{self, Request};
use cue_daemon::driver::{Driver, now_ms};
use cue_daemon::run::{socket_for, start_background};
use cue_daemon::workspace::Workspace;

/// Stops a demo daemon however the demo ends.
struct Daemon {
    root: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(socket) = socket_for(&self.root) {
            let _ = control::request(&socket, &Request::Stop, Duration::from_secs(10));
        }
    }
}

fn wait_for(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > deadline {
            bail!("the demo timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(start.elapsed())
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel)).ok()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Runs the demo; prints as it goes.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cue-demo-")
        .tempdir()
        .context("cannot make a temporary folder")?;
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;

    // The relay, in this process.
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = runtime.spawn(cue_relay::serve(
        cue_relay::Config::default(),
        listener,
        async move {
            let _ = relay_stopped.await;
        },
    ));
    let url = format!("ws://{addr}");
    println!("relay      listening on {url} (in this process)");

    // Two devices of one workspace.
    std::fs::write(
        a.join("plan.md"),
        "---\ntitle: Launch plan\ntags: [draft]\n---\n# Plan\n\n1. write the notes\n2. review them\n3. ship\n",
    )?;
    let wa = Workspace::init(&a, Some(&url), Some("alice"))?;
    {
        let _lock = cue_daemon::DaemonLock::acquire(&wa.dir())?;
        Driver::open(&wa, &wa.config)?.startup_scan(now_ms())?;
    }
    let token = wa.invite_token()?;
    Workspace::join(&b, &token, None, Some("bob"))?;
    println!("alice      cue sync init   -> {}", a.display());
    println!("bob        cue sync join   -> {}", b.display());
    start_background(&a, None, Duration::from_secs(30))?;
    let _da = Daemon { root: a.clone() };
    start_background(&b, None, Duration::from_secs(30))?;
    let _db = Daemon { root: b.clone() };
    let t = wait_for("bob's first sync", Duration::from_secs(20), || {
        read(&b, "plan.md").is_some()
    })?;
    println!(
        "bob        first sync: plan.md arrived {} after bob's daemon started",
        ms(t)
    );

    // Live edits, each way.
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let text = format!(
            "---\ntitle: Launch plan\ntags: [draft]\n---\n# Plan\n\n1. write the notes\n2. review them\n3. ship\n\nalice's note {i}\n"
        );
        let t0 = Instant::now();
        std::fs::write(a.join("plan.md"), &text)?;
        wait_for("alice's edit on bob", Duration::from_secs(10), || {
            read(&b, "plan.md").as_deref() == Some(text.as_str())
        })?;
        latencies.push(t0.elapsed());
    }
    let text = read(&b, "plan.md").ok_or_else(|| anyhow!("plan.md vanished"))?;
    let text = text.replace("3. ship", "3. ship on friday");
    let t0 = Instant::now();
    std::fs::write(b.join("plan.md"), &text)?;
    wait_for("bob's edit on alice", Duration::from_secs(10), || {
        read(&a, "plan.md").is_some_and(|c| c.contains("ship on friday"))
    })?;
    latencies.push(t0.elapsed());
    latencies.sort();
    println!(
        "live       6 saves synced: median {}, slowest {} (save on one disk -> on the other)",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    );

    // A concurrent edit of one file, and frontmatter changes on both sides at once.
    let base = read(&a, "plan.md").ok_or_else(|| anyhow!("plan.md vanished"))?;
    let on_a = base
        .replace("title: Launch plan", "title: Launch plan v2")
        .replace("1. write the notes", "1. write the notes (alice)");
    let on_b = base
        .replace("tags: [draft]", "tags: [draft, q4]")
        .replace("2. review them", "2. review them (bob)");
    std::fs::write(a.join("plan.md"), &on_a)?;
    std::fs::write(b.join("plan.md"), &on_b)?;
    let t = wait_for("both edits on both sides", Duration::from_secs(15), || {
        let (x, y) = (read(&a, "plan.md"), read(&b, "plan.md"));
        x == y
            && x.is_some_and(|c| {
                c.contains("(alice)") && c.contains("(bob)") && c.contains("v2") && c.contains("q4")
            })
    })?;
    println!(
        "concurrent alice retitled and edited line 1, bob tagged and edited line 2, at once: merged in {}",
        ms(t)
    );
    println!("\nplan.md, the same bytes on both machines:\n");
    for line in read(&a, "plan.md").unwrap_or_default().lines() {
        println!("    {line}");
    }

    let status = control::request(&socket_for(&a)?, &Request::Status, Duration::from_secs(5))?
        .status
        .ok_or_else(|| anyhow!("no status"))?;
    println!(
        "\nstatus     alice: {} files, {} pending, relay {}, peers: {}",
        status.files,
        status.pending_changes,
        if status.relay.connected {
            "connected"
        } else {
            "offline"
        },
        status
            .peers
            .iter()
            .map(|p| format!(
                "{} ({})",
                p.name,
                if p.online { "online" } else { "offline" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    drop(_db);
    drop(_da);
    let _ = stop_relay.send(());
    let _ = runtime.block_on(relay);
    runtime.shutdown_timeout(Duration::from_millis(200));
    println!(
        "done       stopped both daemons and the relay, removed the folders ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
