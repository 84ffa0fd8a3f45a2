//! `cue demo`: the whole system on one machine, in temporary folders. A relay runs in
//! this process on 127.0.0.1; two devices (alice and bob) are real daemons, this same
//! executable started in the background as `cue sync start` does. Edits on each side are
//! timed until they are on the other's disk, a concurrent edit and a frontmatter change
//! show the merge, a deletion and a restore show the tombstone, and everything is stopped
//! and removed at the end, or at Ctrl-C (SIGINT) or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cue_daemon::DaemonLock;
use cue_daemon::control::{self, Request};
use cue_daemon::driver::{Driver, now_ms};
use cue_daemon::run::{socket_for, start_background};
use cue_daemon::workspace::CUEDECK_DIR;
use cue_daemon::workspace::Workspace;

use crate::status_view::plural;

/// What the demo leaves behind until it cleans up: its folder and the daemons started
/// in it. Shared with the signal handler, which cleans up if the demo is interrupted.
#[derive(Debug, Default)]
struct Leftovers {
    folder: Option<PathBuf>,
    daemons: Vec<PathBuf>,
    /// Set once the demo's own clean-up has begun (or the handler's).
    cleaning: bool,
}

/// Stops the daemon of the workspace at `root`: through its control socket, else (still
/// starting, or not answering) by SIGTERM to the pid its lock names; returns once no
/// daemon holds the lock, or after a few seconds.
fn stop_daemon(root: &Path) {
    let dir = root.join(CUEDECK_DIR);
    let until = Instant::now() + Duration::from_secs(10);
    let mut asked = false;
    while let Ok(Some(pid)) = DaemonLock::probe(&dir) {
        if Instant::now() > until {
            return;
        }
        if !asked {
            asked = socket_for(root).is_ok_and(|socket| {
                control::request(&socket, &Request::Stop, Duration::from_secs(5)).is_ok()
            });
            if !asked && let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                asked = true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a demo daemon however the demo ends.
struct Daemon {
    root: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_daemon(&self.root);
    }
}

/// On SIGINT or SIGTERM: stops the daemons, removes the folder and exits as a shell
/// reports the signal (130, 143), unless the demo's own clean-up has begun (then it
/// finishes on its own).
fn on_signal(
    runtime: &tokio::runtime::Runtime,
    leftovers: Arc<Mutex<Leftovers>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = runtime.enter();
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT")?;
    runtime.spawn(async move {
        let code = tokio::select! {
            _ = terminate.recv() => 143,
            _ = interrupt.recv() => 130,
        };
        let _ = tokio::task::spawn_blocking(move || {
            let mut left = leftovers.lock().unwrap_or_else(|p| p.into_inner());
            if left.cleaning {
                return;
            }
            left.cleaning = true;
            eprintln!("\ninterrupted: stopping the demo's daemons and removing its folder");
            for root in &left.daemons {
                stop_daemon(root);
            }
            if let Some(folder) = &left.folder {
                let _ = std::fs::remove_dir_all(folder);
            }
            std::process::exit(code);
        })
        .await;
    });
    Ok(())
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
    // The runtime first: the signal handler lives in it from the start.
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let leftovers = Arc::new(Mutex::new(Leftovers::default()));
    on_signal(&runtime, leftovers.clone())?;
    let note =
        |f: &dyn Fn(&mut Leftovers)| f(&mut leftovers.lock().unwrap_or_else(|p| p.into_inner()));

    let tmp = tempfile::Builder::new()
        .prefix("cue-demo-")
        .tempdir()
        .context("cannot make a temporary folder")?;
    note(&|l| l.folder = Some(tmp.path().to_owned()));
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;

    // The relay, in this process.
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
    let token = {
        let _lock = DaemonLock::acquire(&wa.dir())?;
        let mut driver = Driver::open(&wa, &wa.config)?;
        driver.startup_scan(now_ms())?;
        let made = cue_daemon::devices::invite(
            &wa,
            true,
            driver.store_mut(),
            now_ms(),
            cue_daemon::invites::DEFAULT_EXPIRY_MS,
            Some(1),
            0,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        made["token"].as_str().unwrap_or_default().to_string()
    };
    Workspace::join(&b, &token, None, Some("bob"))?;
    println!("alice      cue sync init   -> {}", a.display());
    println!("bob        cue sync join   -> {}", b.display());
    // Noted before each start, so that an interrupted start is stopped too.
    note(&|l| l.daemons.push(a.clone()));
    start_background(&a, None, None, Duration::from_secs(30))?;
    let da = Daemon { root: a.clone() };
    note(&|l| l.daemons.push(b.clone()));
    let t0 = Instant::now();
    start_background(&b, None, None, Duration::from_secs(30))?;
    let db = Daemon { root: b.clone() };
    wait_for("bob's first sync", Duration::from_secs(20), || {
        read(&b, "plan.md").is_some()
    })?;
    println!(
        "bob        first sync: plan.md on bob's disk {} after bob's `cue sync start` began \
         (daemon start-up, relay join, transfer)",
        ms(t0.elapsed())
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
        "live       {} synced, each timed from the save on one disk to the same bytes on the other: \
         median {}, slowest {}",
        plural(latencies.len() as u64, "save", "saves"),
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
    let merged = |c: &str| {
        c.contains("(alice)") && c.contains("(bob)") && c.contains("v2") && c.contains("q4")
    };
    let t0 = Instant::now();
    std::fs::write(a.join("plan.md"), &on_a)?;
    std::fs::write(b.join("plan.md"), &on_b)?;
    let (mut on_alice, mut on_bob) = (None, None);
    wait_for("both edits on both sides", Duration::from_secs(15), || {
        let (x, y) = (read(&a, "plan.md"), read(&b, "plan.md"));
        if on_alice.is_none() && x.as_deref().is_some_and(merged) {
            on_alice = Some(t0.elapsed());
        }
        if on_bob.is_none() && y.as_deref().is_some_and(merged) {
            on_bob = Some(t0.elapsed());
        }
        x == y && on_alice.is_some() && on_bob.is_some()
    })?;
    let (on_alice, on_bob) = (on_alice.unwrap_or_default(), on_bob.unwrap_or_default());
    println!(
        "concurrent alice retitled and edited line 1 while bob tagged and edited line 2, both saved at once:\n\
         \x20          the merge of the two on alice's disk after {}, on bob's after {} (from the saves)",
        ms(on_alice),
        ms(on_bob),
    );
    println!("\nplan.md, the same bytes on both machines:\n");
    for line in read(&a, "plan.md").unwrap_or_default().lines() {
        println!("    {line}");
    }

    // One frontmatter key set to two values at once: a conflict, said on both devices.
    let base = read(&a, "plan.md").ok_or_else(|| anyhow!("plan.md vanished"))?;
    let set = |value: &str| base.replacen("---\n", &format!("---\nstatus: {value}\n"), 1);
    std::fs::write(a.join("plan.md"), set("review"))?;
    std::fs::write(b.join("plan.md"), set("done"))?;
    let conflict_on = |root: &std::path::Path| -> Option<control::ConflictReport> {
        let status = control::request(
            &socket_for(root).ok()?,
            &Request::Status,
            Duration::from_secs(5),
        )
        .ok()?
        .status?;
        status
            .conflicts
            .into_iter()
            .find(|c| c.kind == "frontmatter")
    };
    // Polled gently: each look is a status request to each daemon.
    let t0 = Instant::now();
    let mut conflict = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if read(&a, "plan.md") == read(&b, "plan.md") {
            conflict = conflict_on(&a).filter(|_| conflict_on(&b).is_some());
            if conflict.is_some() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match conflict {
        Some(c) => println!(
            "\nconflict   alice set `status: review` while bob set `status: done`; both devices keep the same one and say so:\n\
             \x20          {}: {}\n\
             \x20          (`cue sync status` lists it until `cue sync resolve {}`)",
            c.path, c.detail, c.path
        ),
        None => println!(
            "\nconflict   alice set `status: review` and bob `status: done`, but one save reached the other \
             device first: a plain edit, no conflict this time"
        ),
    }

    // A deletion reaches the other device; a restore brings the file back on both.
    let t0 = Instant::now();
    std::fs::remove_file(a.join("plan.md"))?;
    wait_for("the deletion on bob", Duration::from_secs(10), || {
        !b.join("plan.md").exists()
    })?;
    let deleted = t0.elapsed();
    let t0 = Instant::now();
    let response = control::request(
        &socket_for(&b)?,
        &Request::Restore {
            path: "plan.md".into(),
        },
        Duration::from_secs(10),
    )?;
    if !response.ok {
        bail!(
            "the demo's restore failed: {}",
            response.error.unwrap_or_default()
        );
    }
    wait_for("the restore on both", Duration::from_secs(10), || {
        read(&a, "plan.md").is_some_and(|c| merged(&c)) && read(&b, "plan.md").is_some()
    })?;
    println!(
        "\ndelete     alice deleted plan.md: gone from bob's disk after {}\n\
         restore    bob ran `cue sync restore plan.md`: back on both disks after {}, last content and all",
        ms(deleted),
        ms(t0.elapsed())
    );

    let status = control::request(&socket_for(&a)?, &Request::Status, Duration::from_secs(5))?
        .status
        .ok_or_else(|| anyhow!("no status"))?;
    println!(
        "\nstatus     alice: {}, {} pending, relay {}, peers: {}",
        plural(status.files, "file", "files"),
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

    // From here the demo cleans up itself; a signal now waits for it.
    note(&|l| l.cleaning = true);
    drop(db);
    drop(da);
    let _ = stop_relay.send(());
    let _ = runtime.block_on(relay);
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(tmp);
    println!(
        "done       stopped both daemons and the relay, removed the folders ({:.1} s in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
