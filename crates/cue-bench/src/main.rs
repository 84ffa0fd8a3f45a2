//! `cue-bench`: the daemon's and relay's figures (docs/benchmarks.md, "## Daemon" and
//! "## Relay") on real processes over loopback.
//!
//! It starts a real `cue-relay` and real `cue` daemons in temporary folders and measures,
//! over repeated runs: save→peer latency with 2 and 10 peers, and with 2 peers while a
//! raw client floods another room of the relay (at 10 × its rate limit, then unpaced);
//! the first sync of 1,000 (and with `--big` 10,000) Markdown files of 4 KB to a newly
//! joined peer, the idle RSS and CPU of daemons holding those files, and store bytes over
//! raw bytes after import and after edits; bursts: notes copied into a running peer
//! (`--burst`, 1,000 and 3,000) and a `git checkout` changing notes in a running peer
//! (`--checkout`, 3,000), each until all are on the other peer. Last it runs the relay's load generator
//! (`cue-relay-load bench`) and keeps its output as it is. It writes a JSON file, prints
//! a Markdown table, and with `--docs docs/benchmarks.md` replaces that file's generated
//! section. Figures, never assertions: `--quick` runs everything in seconds for CI.
//!
//! ```sh
//! cargo build --release -p cue-cli -p cue-relay -p cue-relay-load -p cue-bench
//! target/release/cue-bench --docs docs/benchmarks.md   # the full run (several minutes)
//! target/release/cue-bench --quick                      # seconds, CI
//! ```

mod docs;
mod harness;
mod procfs;
mod relay_load;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use notify::Watcher;
use serde_json::{Value, json};

use cue_testkit::{ANY_PORT, Flooder, Kit, Pace, Peer, Relay, poll_until, wait_until};
use harness::{cluster, cluster_on};

#[derive(Debug, Parser)]
#[command(
    name = "cue-bench",
    about = "Benchmarks of cue daemons on real processes over loopback"
)]
struct Args {
    /// Seconds-long run of every measurement (few saves, 50 files, 2-second idle).
    #[arg(long)]
    quick: bool,
    /// Repeated runs of each measurement (each on fresh daemons).
    #[arg(long)]
    runs: Option<usize>,
    /// Saves measured per latency run (after 5 unmeasured warm-up saves).
    #[arg(long)]
    saves: Option<usize>,
    /// Peer counts for the latency runs, comma-separated; 0 skips them.
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<usize>>,
    /// Pause between one save arriving everywhere and the next save.
    #[arg(long, default_value_t = 50)]
    gap_ms: u64,
    /// Files for the first-sync, RSS, CPU and store runs; 0 skips them.
    #[arg(long)]
    files: Option<usize>,
    /// Also run the first sync (and idle figures) with 10,000 files, once.
    #[arg(long)]
    big: bool,
    /// File counts for the burst runs (copied into a running peer, timed until all are on
    /// the other), comma-separated; 0 skips them.
    #[arg(long, value_delimiter = ',')]
    burst: Option<Vec<usize>>,
    /// File counts for the git-checkout runs (a workspace that is a git repository whose
    /// two branches differ in that many 4 KB notes: `git checkout` of the other branch in
    /// a running peer, timed until every changed file has its new bytes on the other),
    /// comma-separated; 0 skips them.
    #[arg(long, value_delimiter = ',')]
    checkout: Option<Vec<usize>>,
    /// Workspace sizes for the curve, comma-separated (e.g. 1000,3000,10000,30000): at
    /// each, once, `cue sync init`, the first sync to a new peer and its checks, then
    /// 1,000 new notes copied in, with both daemons' RSS; per-file figures, to see that
    /// the work per file does not grow with the workspace. Empty by default.
    #[arg(long, value_delimiter = ',')]
    curve: Vec<usize>,
    /// Length of the idle window for CPU and RSS, seconds.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Edits a file for the store-after-edits figure (over 100 files; 0 skips it).
    #[arg(long)]
    edits: Option<usize>,
    /// The relay's rate limit (messages a second a peer, and burst) for the flood figure:
    /// room B's save→peer latency without a flood, then with a flooder in room A at 10 ×
    /// this rate, then unpaced. 0 skips the flood figure.
    #[arg(long, default_value_t = 100)]
    flood_rate: u64,
    /// Skip the relay's own figures (`cue-relay-load bench`, run as a child process: 10
    /// rooms × 10 peers, 3 s a scenario, 10,000 idle connections; tiny with `--quick`).
    #[arg(long)]
    no_relay_load: bool,
    /// Replace the section between `<!-- cue-bench:begin -->` and `<!-- cue-bench:end -->`
    /// of this Markdown file with this run (date, machine, command, table, relay-load
    /// output); without the markers, append a section holding them.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Where to write the results.
    #[arg(long, default_value = "target/cue-bench.json")]
    out: PathBuf,
    /// The `cue` binary (default: next to this one, or CUE_BIN).
    #[arg(long)]
    cue_bin: Option<PathBuf>,
    /// The `cue-relay` binary (default: next to this one, or CUE_RELAY_BIN).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The `cue-relay-load` binary (default: next to this one, or CUE_RELAY_LOAD_BIN).
    #[arg(long)]
    relay_load_bin: Option<PathBuf>,
}

/// Settings after `--quick` and the defaults are applied.
#[derive(Debug)]
struct Plan {
    quick: bool,
    runs: usize,
    saves: usize,
    warmup: usize,
    peers: Vec<usize>,
    gap: Duration,
    files: Vec<(usize, usize)>, // (file count, runs)
    burst: Vec<usize>,
    checkout: Vec<usize>,
    curve: Vec<usize>,
    /// Files a burst adds to the workspace at each point of the curve.
    curve_burst: usize,
    idle: Duration,
    deadline: Duration,
    edit_files: usize,
    edits: usize,
    flood_rate: u64,
    relay_load: Option<relay_load::Shape>,
}

impl Plan {
    fn from(a: &Args) -> Plan {
        let runs = a.runs.unwrap_or(if a.quick { 1 } else { 3 });
        let nfiles = a.files.unwrap_or(if a.quick { 50 } else { 1000 });
        let mut files = if nfiles > 0 {
            vec![(nfiles, runs)]
        } else {
            Vec::new()
        };
        if a.big {
            files.push((10_000, 1));
        }
        Plan {
            quick: a.quick,
            runs,
            saves: a.saves.unwrap_or(if a.quick { 10 } else { 100 }),
            warmup: if a.quick { 2 } else { 5 },
            peers: a
                .peers
                .clone()
                .unwrap_or(if a.quick { vec![2, 3] } else { vec![2, 10] })
                .into_iter()
                .filter(|n| *n >= 2)
                .collect(),
            gap: Duration::from_millis(a.gap_ms),
            files,
            burst: a
                .burst
                .clone()
                .unwrap_or(if a.quick { vec![100] } else { vec![1000, 3000] })
                .into_iter()
                .filter(|n| *n > 0)
                .collect(),
            checkout: a
                .checkout
                .clone()
                .unwrap_or(if a.quick { vec![100] } else { vec![3000] })
                .into_iter()
                .filter(|n| *n > 0)
                .collect(),
            idle: Duration::from_secs(a.idle_secs.unwrap_or(if a.quick { 2 } else { 60 })),
            curve: a.curve.iter().copied().filter(|n| *n > 0).collect(),
            curve_burst: if a.quick { 20 } else { 1000 },
            deadline: Duration::from_secs(if a.big || a.curve.iter().any(|n| *n >= 10_000) {
                600
            } else {
                120
            }),
            edit_files: if a.quick { 5 } else { 100 },
            edits: a.edits.unwrap_or(if a.quick { 3 } else { 100 }),
            flood_rate: a.flood_rate,
            relay_load: (!a.no_relay_load).then(|| {
                if a.quick {
                    relay_load::Shape::quick()
                } else {
                    relay_load::Shape::full()
                }
            }),
        }
    }
}

/// A Markdown note of exactly `size` bytes: frontmatter, a heading, and words drawn from
/// a small generator seeded by `i` (so notes differ and do not compress to nothing).
fn note(i: usize, size: usize, marker: &str) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "sync", "local", "first", "relay", "daemon", "merge", "edit", "peer", "note", "file",
        "change", "folder", "device", "offline", "commit", "history", "text", "line", "the", "a",
        "of", "and", "to", "in", "is", "that", "with", "for", "on", "markdown",
    ];
    let mut s = format!(
        "---\ntitle: Note {i}\ntags: [bench, t{}]\n---\n# Note {i}\n\n{marker}\n\n",
        i % 10
    );
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut col = 0;
    while s.len() < size {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[((x >> 33) as usize) % WORDS.len()];
        if col > 70 {
            s.push('\n');
            col = 0;
        } else if col > 0 {
            s.push(' ');
            col += 1;
        }
        s.push_str(w);
        col += w.len();
    }
    s.truncate(size - 1);
    s.push('\n');
    s.into_bytes()
}

fn note_path(i: usize) -> String {
    format!("notes/{:02}/note-{i:05}.md", i / 100)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    pct(&s, 50.0)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .filter(|x| !x.is_nan())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// One latency run: `n` peers, saves on the first, seen on every other.
fn latency_run(kit: &Kit, plan: &Plan, n: usize) -> anyhow::Result<Value> {
    let (_relay, peers) = cluster(kit, n, plan.deadline)?;
    let mut out = measure_latency(&peers[0], &peers[1..], plan, &format!("{n}"))?;
    out["peers"] = json!(n);
    out["load1"] = json!(procfs::load1());
    Ok(out)
}

/// Save→peer latency on running daemons: `plan.warmup` unmeasured then `plan.saves`
/// measured saves of one note on `sender`, each timed until every receiver's file holds
/// it (inotify on their folders, checked at least every 5 ms). `tag` makes this series'
/// markers unique. Returns the first and last receiver's percentiles and lost saves.
fn measure_latency(
    sender: &Peer,
    receivers: &[Peer],
    plan: &Plan,
    tag: &str,
) -> anyhow::Result<Value> {
    let rel = "lat.md";
    sender_write(sender, rel, &note(0, 4096, "marker: none"))?;
    for r in receivers {
        wait_until(&format!("{rel} on {}", r.name), plan.deadline, || {
            Ok(r.path(rel).exists())
        })?;
    }
    // One inotify watch per receiving folder; each event names its receiver.
    let (tx, rx) = mpsc::channel::<usize>();
    let mut watchers = Vec::new();
    for (k, r) in receivers.iter().enumerate() {
        let tx = tx.clone();
        let mut w = notify::recommended_watcher(move |_ev: notify::Result<notify::Event>| {
            let _ = tx.send(k);
        })?;
        w.watch(r.root(), notify::RecursiveMode::NonRecursive)?;
        watchers.push(w);
    }
    let nonce = std::process::id();
    let (mut first, mut last, mut lost) = (Vec::new(), Vec::new(), 0usize);
    let per_save = Duration::from_secs(10);
    for i in 0..plan.warmup + plan.saves {
        let marker = format!("marker: {nonce}-{tag}-{i}");
        let content = note(0, 4096, &marker);
        while rx.try_recv().is_ok() {}
        let mut seen: Vec<Option<Duration>> = vec![None; receivers.len()];
        let t0 = Instant::now();
        sender_write(sender, rel, &content)?;
        let has = |r: &Peer| {
            std::fs::read(r.path(rel))
                .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
        };
        while seen.iter().any(Option::is_none) && t0.elapsed() < per_save {
            let mut check = vec![false; receivers.len()];
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(k) => {
                    check[k] = true;
                    while let Ok(k) = rx.try_recv() {
                        check[k] = true;
                    }
                }
                // A missed event costs at most 5 ms: check everyone.
                Err(_) => check.iter_mut().for_each(|c| *c = true),
            }
            for (k, r) in receivers.iter().enumerate() {
                if check[k] && seen[k].is_none() && has(r) {
                    seen[k] = Some(t0.elapsed());
                }
            }
        }
        if seen.iter().any(Option::is_none) {
            lost += 1;
        } else if i >= plan.warmup {
            let got: Vec<f64> = seen.iter().flatten().map(|d| ms(*d)).collect();
            first.push(got.iter().copied().fold(f64::INFINITY, f64::min));
            last.push(got.iter().copied().fold(0.0, f64::max));
        }
        std::thread::sleep(plan.gap);
    }
    drop(watchers);
    first.sort_by(f64::total_cmp);
    last.sort_by(f64::total_cmp);
    let stats = |v: &[f64]| {
        json!({"p50": pct(v, 50.0), "p95": pct(v, 95.0), "p99": pct(v, 99.0),
               "max": v.last().copied().unwrap_or(f64::NAN), "n": v.len()})
    };
    Ok(json!({
        "first_receiver_ms": stats(&first),
        "all_receivers_ms": stats(&last),
        "lost": lost,
    }))
}

/// The flood figure: two daemons in room B on a relay limited to `plan.flood_rate`
/// messages a second a peer; save→peer latency first without a flood, then while one
/// raw client floods room A at 10 × that rate, then while it floods as fast as one
/// connection sends. Also what the flooder sent and was refused, and the relay's CPU.
fn flood_run(kit: &Kit, plan: &Plan, run: usize) -> anyhow::Result<Value> {
    let rate = plan.flood_rate;
    let r = rate.to_string();
    let relay = Relay::start(kit, ANY_PORT, &["--messages-per-second", &r, "--burst", &r])?;
    let peers = cluster_on(kit, &relay, 2, plan.deadline)?;
    let (sender, receivers) = (&peers[0], &peers[1..]);
    let relay_cpu = || procfs::cpu_secs(relay.pid());
    let hits_metric = r#"cue_relay_rate_limit_hits_total{limit="messages"}"#;

    let cpu0 = relay_cpu();
    let t = Instant::now();
    let mut none = measure_latency(sender, receivers, plan, &format!("calm-{run}"))?;
    none["relay_cpu_cores"] = json!(
        relay_cpu()
            .zip(cpu0)
            .map(|(b, a)| (b - a) / t.elapsed().as_secs_f64())
    );
    none["load1"] = json!(procfs::load1());
    let mut out = json!({ "rate_limit": rate, "no_flood": none });

    let seed = u64::from(std::process::id()) << 16 | run as u64;
    for (key, pace) in [
        ("flood_10x", Pace::PerSecond(10 * rate)),
        ("flood_unpaced", Pace::Unpaced),
    ] {
        let hits0 = relay.metric(hits_metric).ok();
        let cpu0 = relay_cpu();
        let flooder = Flooder::start(relay.addr, seed ^ key.len() as u64, pace, plan.deadline)
            .with_context(|| format!("starting the flooder ({key})"))?;
        wait_until(
            "the flooder to be told it is rate limited",
            plan.deadline,
            || Ok(flooder.rate_limited() > 0 || !flooder.alive()),
        )?;
        let mut lat = measure_latency(sender, receivers, plan, &format!("{key}-{run}"))?;
        let alive = flooder.alive();
        let report = flooder.stop();
        lat["relay_cpu_cores"] =
            json!(relay_cpu().zip(cpu0).map(|(b, a)| (b - a) / report.seconds));
        lat["relay_rate_limit_hits"] = json!(
            relay
                .metric(hits_metric)
                .ok()
                .zip(hits0)
                .map(|(b, a)| b - a)
        );
        lat["flooder"] = json!({
            "pace_per_second": match pace {
                Pace::PerSecond(n) => json!(n),
                Pace::Unpaced => json!("unpaced"),
            },
            "seconds": report.seconds,
            "sent": report.sent,
            "refused_rate_limited": report.rate_limited,
            "refused_other": report.refused_other,
            "sent_per_second": report.sent as f64 / report.seconds,
            "alive_at_end": alive,
            "ended_early": report.ended_early,
        });
        lat["load1"] = json!(procfs::load1());
        out[key] = lat;
    }
    Ok(out)
}

/// A save in place (truncate and write), as most editors do.
fn sender_write(p: &Peer, rel: &str, content: &[u8]) -> anyhow::Result<()> {
    let path = p.path(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
}

/// A relay and two peers of one workspace, `src` and `dst`, both running and online
/// to each other.
fn online_pair(kit: &Kit, plan: &Plan) -> anyhow::Result<(Relay, Peer, Peer)> {
    let relay = Relay::start(kit, ANY_PORT, &[])?;
    let src = Peer::new(kit, "src")?;
    let dst = Peer::new(kit, "dst")?;
    src.init(&relay.url())?;
    dst.join(&src.invite()?)?;
    src.start()?;
    dst.start()?;
    wait_until("the two peers to see each other", plan.deadline, || {
        let (a, b) = (src.status()?.0, dst.status()?.0);
        Ok(a["peers"][0]["online"] == true && b["peers"][0]["online"] == true)
    })?;
    Ok((relay, src, dst))
}

/// One burst run: two peers in sync, then `files` new notes copied into one of them as
/// fast as the disk takes them (as `cp -r` or unzipping a folder does); timed until every
/// one is on the other peer with its content. RSS peaks of both daemons.
fn burst_run(kit: &Kit, plan: &Plan, files: usize) -> anyhow::Result<Value> {
    let (_relay, src, dst) = online_pair(kit, plan)?;
    let (src_pid, dst_pid) = (
        src.live_daemon().context("no daemon running for src")?,
        dst.live_daemon().context("no daemon running for dst")?,
    );
    let notes: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| (note_path(i), note(i, 4096, "marker: burst")))
        .collect();
    let (src_cpu0, dst_cpu0) = (procfs::cpu_secs(src_pid), procfs::cpu_secs(dst_pid));
    let Copied {
        copied_s,
        taken_in,
        arrived,
    } = copy_in(&src, &dst, &notes, plan)?;
    // Read as soon as the last note is seen there (polled every 100 ms): CPU is steadier
    // than the time on a machine the two daemons share, and says which side works more.
    let (src_cpu, dst_cpu) = (
        cpu_since(procfs::cpu_secs(src_pid), src_cpu0),
        cpu_since(procfs::cpu_secs(dst_pid), dst_cpu0),
    );
    let load = procfs::load1();
    let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let out = json!({
        "files": files,
        "copied_s": copied_s,
        "taken_in_s": taken_in.map_or(f64::NAN, |d| d.as_secs_f64()),
        "all_on_peer_s": arrived.as_secs_f64(),
        "src_peak_mib": mib(procfs::hwm_kib(src_pid)),
        "dst_peak_mib": mib(procfs::hwm_kib(dst_pid)),
        "src_rss_mib": mib(procfs::rss_kib(src_pid)),
        "src_cpu_s": src_cpu,
        "dst_cpu_s": dst_cpu,
        "load1": load,
    });
    src.stop()?;
    dst.stop()?;
    Ok(out)
}

/// CPU seconds a process spent between two readings (`procfs::cpu_secs`); NaN when
/// either is missing.
fn cpu_since(after: Option<f64>, before: Option<f64>) -> f64 {
    match (after, before) {
        (Some(a), Some(b)) => a - b,
        _ => f64::NAN,
    }
}

/// What copying notes into a running peer took (`copy_in`).
struct Copied {
    /// Writing them.
    copied_s: f64,
    /// Until the source daemon held every file of its workspace.
    taken_in: Option<Duration>,
    /// Until every one was on the other peer with its content.
    arrived: Duration,
}

/// `notes` copied into `src`'s folder as fast as the disk takes them (as `cp -r` or
/// unzipping a folder does), timed until every one is on `dst` with its content.
fn copy_in(
    src: &Peer,
    dst: &Peer,
    notes: &[(String, Vec<u8>)],
    plan: &Plan,
) -> anyhow::Result<Copied> {
    let before = src.status()?.0["files"].as_u64().unwrap_or(0);
    let all = before + notes.len() as u64;
    let t = Instant::now();
    for (path, content) in notes {
        sender_write(src, path, content)?;
    }
    let copied_s = t.elapsed().as_secs_f64();
    let mut missing: Vec<usize> = (0..notes.len()).collect();
    // When the source daemon had taken every file in (its status counts them).
    let mut taken_in: Option<Duration> = None;
    let every = Duration::from_millis(100);
    let arrived = poll_until("every file on the other peer", plan.deadline, every, || {
        if taken_in.is_none() && src.status()?.0["files"].as_u64() == Some(all) {
            taken_in = Some(t.elapsed());
        }
        missing.retain(|&i| std::fs::read(dst.path(&notes[i].0)).map_or(true, |c| c != notes[i].1));
        Ok(missing.is_empty())
    })
    .map(|_| t.elapsed());
    match arrived {
        Ok(arrived) => Ok(Copied {
            copied_s,
            taken_in,
            arrived,
        }),
        Err(e) => bail!("{e} ({} of {} missing)", missing.len(), notes.len()),
    }
}

/// Runs git in `dir` (as a user would, with a name for commits); an error says what
/// failed.
fn git(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One git-checkout run: two peers in sync over `files` notes committed on branch `one`
/// of a git repository in the source's folder (`.git/` is never synced; `.cuedeck/` is
/// excluded from the repository); branch `two` changes every note (made in a clone
/// outside the folder and pushed back, so the folder does not change). Timed: `git
/// checkout two` in the source, until every note has its new bytes on the other peer.
fn checkout_run(kit: &Kit, plan: &Plan, files: usize) -> anyhow::Result<Value> {
    let (_relay, src, dst) = online_pair(kit, plan)?;
    let one: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| (note_path(i), note(i, 4096, "marker: branch one")))
        .collect();
    for (path, content) in &one {
        sender_write(&src, path, content)?;
    }
    let every = Duration::from_millis(100);
    let mut missing: Vec<usize> = (0..files).collect();
    poll_until("branch one on the other peer", plan.deadline, every, || {
        missing.retain(|&i| std::fs::read(dst.path(&one[i].0)).map_or(true, |c| c != one[i].1));
        Ok(missing.is_empty())
    })?;
    // The other peer checks the notes it adopted in the background (see `Synced`): done
    // before the checkout, so that the figure is the checkout's alone.
    wait_until(
        "the other peer to check what it adopted",
        plan.deadline,
        || Ok(dst.status()?.0["files_unverified"] == 0),
    )?;
    git(src.root(), &["init", "-q", "-b", "one"])?;
    std::fs::write(src.path(".git/info/exclude"), ".cuedeck/\n")?;
    git(src.root(), &["add", "-A"])?;
    git(src.root(), &["commit", "-q", "-m", "one"])?;
    let clone = Peer::new(kit, "clone")?;
    let other = clone.path("two");
    let from = src.root().to_string_lossy().into_owned();
    git(clone.root(), &["clone", "-q", &from, "two"])?;
    let two: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| (note_path(i), note(i, 4096, "marker: branch two")))
        .collect();
    for (path, content) in &two {
        std::fs::write(other.join(path), content)?;
    }
    git(&other, &["checkout", "-q", "-b", "two"])?;
    git(&other, &["commit", "-q", "-a", "-m", "two"])?;
    git(&other, &["push", "-q", "origin", "two"])?;
    let (src_pid, dst_pid) = (
        src.live_daemon().context("no daemon running for src")?,
        dst.live_daemon().context("no daemon running for dst")?,
    );
    let (src_cpu0, dst_cpu0) = (procfs::cpu_secs(src_pid), procfs::cpu_secs(dst_pid));
    let t = Instant::now();
    git(src.root(), &["checkout", "-q", "two"])?;
    let checkout_s = t.elapsed().as_secs_f64();
    let mut missing: Vec<usize> = (0..files).collect();
    let arrived = poll_until(
        "every changed note on the other peer",
        plan.deadline,
        every,
        || {
            missing.retain(|&i| std::fs::read(dst.path(&two[i].0)).map_or(true, |c| c != two[i].1));
            Ok(missing.is_empty())
        },
    )
    .map(|_| t.elapsed());
    let arrived = match arrived {
        Ok(d) => d,
        Err(e) => bail!("{e} ({} of {files} missing)", missing.len()),
    };
    let load = procfs::load1();
    let out = json!({
        "files": files,
        "git_checkout_s": checkout_s,
        "all_on_peer_s": arrived.as_secs_f64(),
        "src_cpu_s": cpu_since(procfs::cpu_secs(src_pid), src_cpu0),
        "dst_cpu_s": cpu_since(procfs::cpu_secs(dst_pid), dst_cpu0),
        "load1": load,
    });
    src.stop()?;
    dst.stop()?;
    Ok(out)
}

/// A workspace of `files` notes imported (`cue sync init`) with its daemon running, and a
/// new peer joined, synced and done checking what it adopted: both still running.
struct Synced {
    relay: Relay,
    src: Peer,
    new: Peer,
    src_pid: u32,
    new_pid: u32,
    /// Import, first sync and check figures (see `import_and_first_sync`).
    figures: serde_json::Map<String, Value>,
}

fn import_and_first_sync(kit: &Kit, plan: &Plan, files: usize) -> anyhow::Result<Synced> {
    let relay = Relay::start(kit, ANY_PORT, &[])?;
    let src = Peer::new(kit, "src")?;
    for i in 0..files {
        sender_write(&src, &note_path(i), &note(i, 4096, "marker: none"))?;
    }
    let raw = (files * 4096) as f64;
    let t = Instant::now();
    src.init(&relay.url())?;
    let init_s = t.elapsed().as_secs_f64();
    // The import is `cue sync init`'s: measured as it leaves the store, and again below
    // with the daemon running (its WAL and SQLite's shared-memory index then count too).
    let store_init = procfs::dir_bytes(&src.path(".cuedeck"), true) as f64;
    src.start()?;
    wait_until(
        "the source daemon to hold every file",
        plan.deadline,
        || Ok(src.status()?.0["files"].as_u64() == Some(files as u64)),
    )?;
    let store_import = procfs::dir_bytes(&src.path(".cuedeck"), true) as f64;
    let src_pid = src.live_daemon().context("no daemon running for src")?;

    let new = Peer::new(kit, "new")?;
    new.join(&src.invite()?)?;
    let (in0, out0) = (
        relay.metric("cue_relay_bytes_in_total")?,
        relay.metric("cue_relay_bytes_out_total")?,
    );
    let t = Instant::now();
    new.start()?;
    let started_s = t.elapsed().as_secs_f64();
    let mut missing: Vec<usize> = (0..files).collect();
    let mut pass = 0u64;
    let sync = wait_until("every file on the new peer", plan.deadline, || {
        pass += 1;
        missing.retain(|&i| {
            std::fs::read(new.path(&note_path(i)))
                .map_or(true, |c| c != note(i, 4096, "marker: none"))
        });
        Ok(missing.is_empty())
    })
    .map(|_| t.elapsed());
    let sync = match sync {
        Ok(d) => d,
        Err(e) => bail!("{e} ({} of {files} missing)", missing.len()),
    };
    let load_sync = procfs::load1();
    let (in1, out1) = (
        relay.metric("cue_relay_bytes_in_total")?,
        relay.metric("cue_relay_bytes_out_total")?,
    );
    let new_pid = new.live_daemon().context("no daemon running for new")?;
    let new_peak = procfs::hwm_kib(new_pid);

    // The new peer checks the documents it adopted with their content, tick after tick:
    // background work after the first sync, timed here, not counted as idle.
    let t = Instant::now();
    wait_until(
        "the new peer to check what it adopted",
        plan.deadline,
        || Ok(new.status()?.0["files_unverified"] == 0),
    )?;
    let verify_s = t.elapsed().as_secs_f64();
    let figures = json!({
        "files": files,
        "raw_bytes": raw,
        "init_s": init_s,
        "start_returned_s": started_s,
        "first_sync_s": sync.as_secs_f64(),
        "first_sync_passes": pass,
        "verify_after_sync_s": verify_s,
        "wire_bytes_in": in1 - in0,
        "wire_bytes_out": out1 - out0,
        "new_peer_peak_rss_mib": new_peak.map(|k| k as f64 / 1024.0),
        "load1_sync": load_sync,
        "store_over_raw_import": store_init / raw,
        "store_bytes_import": store_init,
        "store_over_raw_import_running": store_import / raw,
    });
    let Value::Object(figures) = figures else {
        bail!("figures are an object");
    };
    Ok(Synced {
        relay,
        src,
        new,
        src_pid,
        new_pid,
        figures,
    })
}

/// One first-sync run: a workspace made over `files` notes, a new peer joins; then both
/// sit idle.
fn first_sync_run(kit: &Kit, plan: &Plan, files: usize) -> anyhow::Result<Value> {
    let Synced {
        relay,
        src,
        new,
        src_pid,
        new_pid,
        mut figures,
    } = import_and_first_sync(kit, plan, files)?;
    let raw = (files * 4096) as f64;
    // Idle: once both say nothing is pending, CPU over the window, RSS at its end.
    wait_until("both daemons to settle", plan.deadline, || {
        let (a, b) = (src.status()?.0, new.status()?.0);
        Ok(a["pending_changes"] == 0 && b["pending_changes"] == 0)
    })?;
    let cpu0 = (procfs::cpu_secs(src_pid), procfs::cpu_secs(new_pid));
    let relay_cpu0 = procfs::cpu_secs(relay.pid());
    let mut series = Vec::new();
    let t = Instant::now();
    let mut prev = cpu0.0;
    while t.elapsed() < plan.idle {
        std::thread::sleep(Duration::from_secs(1).min(plan.idle));
        let now = procfs::cpu_secs(src_pid);
        series.push(now.zip(prev).map(|(a, b)| a - b));
        prev = now;
    }
    let window = t.elapsed().as_secs_f64();
    let cpu1 = (procfs::cpu_secs(src_pid), procfs::cpu_secs(new_pid));
    let per_min = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) * 60.0 / window);
    let relay_cpu = per_min(relay_cpu0, procfs::cpu_secs(relay.pid()));
    let idle = json!({
        "store_over_raw_after_sync_src": procfs::dir_bytes(&src.path(".cuedeck"), true) as f64 / raw,
        "store_over_raw_after_sync_new": procfs::dir_bytes(&new.path(".cuedeck"), true) as f64 / raw,
        "idle_window_s": window,
        "idle_cpu_s_per_min_src": per_min(cpu0.0, cpu1.0),
        "idle_cpu_s_per_min_new": per_min(cpu0.1, cpu1.1),
        "idle_cpu_s_per_min_relay": relay_cpu,
        "idle_cpu_series_src": series,
        "idle_rss_mib_src": procfs::rss_kib(src_pid).map(|k| k as f64 / 1024.0),
        "idle_rss_mib_new": procfs::rss_kib(new_pid).map(|k| k as f64 / 1024.0),
        "load1_idle": procfs::load1(),
    });
    if let Value::Object(idle) = idle {
        figures.extend(idle);
    }
    Ok(Value::Object(figures))
}

/// One point of the curve (`--curve`): a workspace of `files` notes imported, synced to
/// a new peer and checked (`import_and_first_sync`), the RSS of both daemons then; then
/// 1,000 new notes (`Plan::curve_burst`) copied into the source, until all are on the new peer, and
/// both daemons' RSS peaks. Per-file figures show whether work grows with the workspace.
fn curve_run(kit: &Kit, plan: &Plan, files: usize) -> anyhow::Result<Value> {
    let Synced {
        relay: _relay,
        src,
        new,
        src_pid,
        new_pid,
        mut figures,
    } = import_and_first_sync(kit, plan, files)?;
    let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let (src_rss, new_rss) = (mib(procfs::rss_kib(src_pid)), mib(procfs::rss_kib(new_pid)));
    let notes: Vec<(String, Vec<u8>)> = (files..files + plan.curve_burst)
        .map(|i| (note_path(i), note(i, 4096, "marker: burst")))
        .collect();
    let burst = copy_in(&src, &new, &notes, plan)?;
    let curve = json!({
        "rss_after_sync_mib_src": src_rss,
        "rss_after_sync_mib_new": new_rss,
        "burst_files": plan.curve_burst,
        "burst_all_on_peer_s": burst.arrived.as_secs_f64(),
        "burst_taken_in_s": burst.taken_in.map_or(f64::NAN, |d| d.as_secs_f64()),
        "peak_mib_src": mib(procfs::hwm_kib(src_pid)),
        "peak_mib_new": mib(procfs::hwm_kib(new_pid)),
        "load1_burst": procfs::load1(),
    });
    if let Value::Object(curve) = curve {
        figures.extend(curve);
    }
    src.stop()?;
    new.stop()?;
    Ok(Value::Object(figures))
}

/// Store bytes over raw bytes after `edits` rounds of edits to every one of `files`
/// notes, each round taken in by both daemons (the second one's files show it) before
/// the next, so that every edit is its own change and compaction runs as in use.
fn edits_run(kit: &Kit, plan: &Plan) -> anyhow::Result<Value> {
    let files = plan.edit_files;
    let relay = Relay::start(kit, ANY_PORT, &[])?;
    let a = Peer::new(kit, "a")?;
    for i in 0..files {
        sender_write(&a, &note_path(i), &note(i, 4096, "marker: none"))?;
    }
    a.init(&relay.url())?;
    a.start()?;
    let b = Peer::new(kit, "b")?;
    b.join(&a.invite()?)?;
    b.start()?;
    let arrived = |r: &str| -> anyhow::Result<bool> {
        Ok((0..files)
            .all(|i| std::fs::read(b.path(&note_path(i))).is_ok_and(|c| c == note(i, 4096, r))))
    };
    wait_until("the first sync", plan.deadline, || arrived("marker: none"))?;
    let t = Instant::now();
    for round in 0..plan.edits {
        let marker = format!("marker: edit {round}");
        for i in 0..files {
            sender_write(&a, &note_path(i), &note(i, 4096, &marker))?;
        }
        wait_until("a round of edits on the other peer", plan.deadline, || {
            arrived(&marker)
        })?;
    }
    let took = t.elapsed().as_secs_f64();
    wait_until("both daemons to settle", plan.deadline, || {
        let (x, y) = (a.status()?.0, b.status()?.0);
        Ok(x["pending_changes"] == 0 && y["pending_changes"] == 0)
    })?;
    // The store at rest: the daemons compact edited documents and then, once quiet,
    // truncate SQLite's WAL.
    let wal_empty = |p: &Peer| {
        std::fs::metadata(p.path(".cuedeck/store.sqlite3-wal")).map_or(true, |m| m.len() == 0)
    };
    wait_until("both stores to come to rest", plan.deadline, || {
        Ok(wal_empty(&a) && wal_empty(&b))
    })?;
    let raw = (files * 4096) as f64;
    let activity = |p: &Peer| activity_bytes(&p.path(".cuedeck/store.sqlite3")).unwrap_or(0.0);
    Ok(json!({
        "files": files,
        "edits_per_file": plan.edits,
        "activity_over_raw_editor": activity(&a) / raw,
        "activity_over_raw_receiver": activity(&b) / raw,
        "edits_s": took,
        "store_over_raw_editor": procfs::dir_bytes(&a.path(".cuedeck"), true) as f64 / raw,
        "store_over_raw_receiver": procfs::dir_bytes(&b.path(".cuedeck"), true) as f64 / raw,
        "load1": procfs::load1(),
    }))
}

/// Bytes of the activity log inside a store: the pages of its table and (in stores made
/// before it was dropped) its index, counted by SQLite's `dbstat`.
fn activity_bytes(store: &std::path::Path) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open_with_flags(
        store,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let bytes: f64 = conn.query_row(
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat \
         WHERE name IN ('activity', 'activity_by_time')",
        [],
        |r| r.get(0),
    )?;
    Ok(bytes)
}

/// A figure of a table: its words, goal, key in a run's JSON, unit and digits.
type Figure = (
    String,
    Option<(f64, &'static str)>,
    &'static str,
    &'static str,
    usize,
);

/// The two daemons' CPU for a burst or a checkout (`src_cpu_s`, `dst_cpu_s`).
fn cpu_figures() -> [Figure; 2] {
    [
        (
            "… source daemon CPU for it".to_string(),
            None,
            "src_cpu_s",
            "CPU-s",
            2,
        ),
        (
            "… receiving daemon CPU for it".to_string(),
            None,
            "dst_cpu_s",
            "CPU-s",
            2,
        ),
    ]
}

/// One row of the table: a figure over runs (median [min–max]) against its goal.
struct Row {
    figure: String,
    goal: Option<(f64, &'static str)>, // (at most, how it is written)
    values: Vec<f64>,
    unit: &'static str,
    load: Vec<f64>,
    digits: usize,
}

impl Row {
    fn render(&self, quick: bool) -> String {
        let m = median(&self.values);
        let (lo, hi) = min_max(&self.values);
        let d = self.digits;
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        let result = if self.values.len() > 1 {
            format!("{m:.d$}{unit} [{lo:.d$}–{hi:.d$}]")
        } else {
            format!("{m:.d$}{unit}")
        };
        let (goal, verdict) = match self.goal {
            None => ("—".to_string(), "—".to_string()),
            Some((_, text)) if quick => (text.to_string(), "(quick run)".to_string()),
            Some((g, text)) if m <= g => (text.to_string(), "**met**".to_string()),
            Some((_, text)) => (text.to_string(), "**missed**".to_string()),
        };
        let (llo, lhi) = min_max(&self.load);
        let load = if (llo - lhi).abs() < 0.05 {
            format!("{llo:.1}")
        } else {
            format!("{llo:.1}–{lhi:.1}")
        };
        format!(
            "| {} | {goal} | {result} | {verdict} | {load} |",
            self.figure
        )
    }
}

fn field(runs: &[Value], path: &[&str]) -> Vec<f64> {
    runs.iter()
        .map(|r| {
            path.iter()
                .fold(r, |v, k| &v[*k])
                .as_f64()
                .unwrap_or(f64::NAN)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan::from(&args);
    let kit = harness::kit(args.cue_bin.clone(), args.relay_bin.clone())?;
    let relay_load_bin = plan
        .relay_load
        .as_ref()
        .map(|_| harness::relay_load_bin(args.relay_load_bin.clone()))
        .transpose()?;
    eprintln!("cue-bench: {plan:?}");
    let started = Instant::now();
    let date = docs::utc_now();
    let command = docs::command_line();
    let loadavg_start = docs::loadavg();
    let mut rows: Vec<Row> = Vec::new();
    let mut results = json!({
        "quick": plan.quick,
        "date": date,
        "command": command,
        "machine": docs::machine(),
        "loadavg_start": loadavg_start,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load1_start": procfs::load1(),
        "cue_bin": kit.cue.display().to_string(),
        "latency": [],
        "first_sync": [],
        "burst": [],
        "checkout": [],
        "curve": [],
    });

    for &n in &plan.peers {
        let mut runs = Vec::new();
        for run in 0..plan.runs {
            let r = latency_run(&kit, &plan, n)
                .with_context(|| format!("latency run {run} with {n} peers"))?;
            eprintln!("latency, {n} peers, run {run}: {r}");
            runs.push(r);
        }
        let load = field(&runs, &["load1"]);
        for (p, goal) in [
            ("p50", Some((15.0, "≤ 15 ms"))),
            ("p95", Some((30.0, "≤ 30 ms"))),
            ("p99", None),
        ] {
            rows.push(Row {
                figure: format!("save→peer {p}, {n} peers"),
                goal,
                values: field(&runs, &["first_receiver_ms", p]),
                unit: "ms",
                load: load.clone(),
                digits: 1,
            });
        }
        if n > 2 {
            for p in ["p50", "p95", "p99"] {
                rows.push(Row {
                    figure: format!("save→all {} receivers {p}, {n} peers", n - 1),
                    goal: None,
                    values: field(&runs, &["all_receivers_ms", p]),
                    unit: "ms",
                    load: load.clone(),
                    digits: 1,
                });
            }
        }
        let lost: f64 = field(&runs, &["lost"]).iter().sum();
        if lost > 0.0 {
            eprintln!("warning: {lost} saves never arrived within 10 s ({n} peers)");
        }
        if let Some(a) = results["latency"].as_array_mut() {
            a.push(json!({"peers": n, "runs": runs}));
        }
    }

    if plan.flood_rate > 0 {
        let mut runs = Vec::new();
        for run in 0..plan.runs {
            let r = flood_run(&kit, &plan, run).with_context(|| format!("flood run {run}"))?;
            eprintln!("flood, run {run}: {r}");
            runs.push(r);
        }
        flood_rows(&mut rows, &runs, plan.flood_rate);
        results["flood"] = json!({"rate_limit": plan.flood_rate, "runs": runs});
    }

    for &files in &plan.burst {
        let mut runs = Vec::new();
        for run in 0..plan.runs {
            let r = burst_run(&kit, &plan, files)
                .with_context(|| format!("burst run {run} with {files} files"))?;
            eprintln!("burst, {files} files, run {run}: {r}");
            runs.push(r);
        }
        let load = field(&runs, &["load1"]);
        let goal = match files {
            3000 => Some((2.0, "≤ 2 s")),
            10_000 => Some((6.0, "≤ 6 s")),
            _ => None,
        };
        for (figure, goal, key, unit, digits) in [
            (
                format!("burst: {files} × 4 KB copied into a running peer → all on the other"),
                goal,
                "all_on_peer_s",
                "s",
                2,
            ),
            (
                "… source daemon RSS peak".to_string(),
                None,
                "src_peak_mib",
                "MiB",
                1,
            ),
            (
                "… receiving daemon RSS peak".to_string(),
                None,
                "dst_peak_mib",
                "MiB",
                1,
            ),
        ]
        .into_iter()
        .chain(cpu_figures())
        {
            rows.push(Row {
                figure,
                goal,
                values: field(&runs, &[key]),
                unit,
                load: load.clone(),
                digits,
            });
        }
        if let Some(a) = results["burst"].as_array_mut() {
            a.push(json!({"files": files, "runs": runs}));
        }
    }

    for &files in &plan.checkout {
        let mut runs = Vec::new();
        for run in 0..plan.runs {
            let r = checkout_run(&kit, &plan, files)
                .with_context(|| format!("checkout run {run} with {files} files"))?;
            eprintln!("checkout, {files} files, run {run}: {r}");
            runs.push(r);
        }
        let load = field(&runs, &["load1"]);
        let goal = (files == 3000).then_some((3.0, "≤ 3 s"));
        for (figure, goal, key, unit, digits) in [(
            format!("git checkout changing {files} × 4 KB in a running peer → all on the other"),
            goal,
            "all_on_peer_s",
            "s",
            2,
        )]
        .into_iter()
        .chain(cpu_figures())
        {
            rows.push(Row {
                figure,
                goal,
                values: field(&runs, &[key]),
                unit,
                load: load.clone(),
                digits,
            });
        }
        if let Some(a) = results["checkout"].as_array_mut() {
            a.push(json!({"files": files, "runs": runs}));
        }
    }

    for &(files, nruns) in &plan.files {
        let mut runs = Vec::new();
        for run in 0..nruns {
            let r = first_sync_run(&kit, &plan, files)
                .with_context(|| format!("first-sync run {run} with {files} files"))?;
            eprintln!("first sync, {files} files, run {run}: {r}");
            runs.push(r);
        }
        let load_sync = field(&runs, &["load1_sync"]);
        let load_idle = field(&runs, &["load1_idle"]);
        let big = files >= 10_000;
        let nf = if files >= 1000 {
            format!("{},{:03}", files / 1000, files % 1000)
        } else {
            files.to_string()
        };
        let idle_s = plan.idle.as_secs();
        let mut push = |figure: String,
                        goal: Option<(f64, &'static str)>,
                        path: &[&str],
                        unit: &'static str,
                        scale: f64,
                        digits: usize,
                        load: &Vec<f64>| {
            rows.push(Row {
                figure,
                goal,
                values: field(&runs, path).iter().map(|v| v * scale).collect(),
                unit,
                load: load.clone(),
                digits,
            })
        };
        push(
            format!("`cue sync init` of {nf} × 4 KB"),
            big.then_some((5.0, "≤ 5 s")),
            &["init_s"],
            "s",
            1.0,
            2,
            &load_sync,
        );
        push(
            format!("first sync, {nf} × 4 KB to a new peer"),
            Some(if big {
                (5.0, "≤ 5 s")
            } else {
                (1.0, "≤ 1.0 s")
            }),
            &["first_sync_s"],
            "s",
            1.0,
            2,
            &load_sync,
        );
        push(
            "… then every adopted document checked, after".to_string(),
            big.then_some((30.0, "≤ 30 s")),
            &["verify_after_sync_s"],
            "s",
            1.0,
            1,
            &load_sync,
        );
        push(
            "… bytes through the relay (in / payload)".to_string(),
            None,
            &["wire_bytes_in"],
            "MiB",
            1.0 / 1048576.0,
            2,
            &load_sync,
        );
        push(
            "… bytes delivered by the relay (out / payload)".to_string(),
            None,
            &["wire_bytes_out"],
            "MiB",
            1.0 / 1048576.0,
            2,
            &load_sync,
        );
        push(
            "… new peer's peak RSS during it".to_string(),
            None,
            &["new_peer_peak_rss_mib"],
            "MiB",
            1.0,
            1,
            &load_sync,
        );
        push(
            format!("daemon RSS idle at {nf} files (source)"),
            Some(if big {
                (64.0, "≤ 64 MiB")
            } else {
                (40.0, "≤ 40 MiB")
            }),
            &["idle_rss_mib_src"],
            "MiB",
            1.0,
            1,
            &load_idle,
        );
        push(
            format!("daemon RSS idle at {nf} files (new peer)"),
            Some(if big {
                (64.0, "≤ 64 MiB")
            } else {
                (40.0, "≤ 40 MiB")
            }),
            &["idle_rss_mib_new"],
            "MiB",
            1.0,
            1,
            &load_idle,
        );
        push(
            "store / raw after import (`cue sync init`; `.cuedeck/` but logs)".to_string(),
            Some((0.5, "≤ 0.5")),
            &["store_over_raw_import"],
            "×",
            1.0,
            3,
            &load_sync,
        );
        push(
            "… the same once the daemon holds it (with its WAL and `-shm` file)".to_string(),
            None,
            &["store_over_raw_import_running"],
            "×",
            1.0,
            3,
            &load_sync,
        );
        push(
            "store / raw on the new peer after first sync".to_string(),
            None,
            &["store_over_raw_after_sync_new"],
            "×",
            1.0,
            2,
            &load_sync,
        );
        push(
            format!("idle CPU, {nf} files (source), over {idle_s} s"),
            (!big).then_some((0.1, "≤ 0.1 CPU-s/min")),
            &["idle_cpu_s_per_min_src"],
            "CPU-s/min",
            1.0,
            3,
            &load_idle,
        );
        push(
            format!("idle CPU, {nf} files (new peer), over {idle_s} s"),
            (!big).then_some((0.1, "≤ 0.1 CPU-s/min")),
            &["idle_cpu_s_per_min_new"],
            "CPU-s/min",
            1.0,
            3,
            &load_idle,
        );
        if let Some(a) = results["first_sync"].as_array_mut() {
            a.push(json!({"files": files, "runs": runs}));
        }
    }

    for &files in &plan.curve {
        let r = curve_run(&kit, &plan, files)
            .with_context(|| format!("curve run with {files} files"))?;
        eprintln!("curve, {files} files: {r}");
        curve_rows(&mut rows, &r, files, plan.curve_burst);
        if let Some(a) = results["curve"].as_array_mut() {
            a.push(r);
        }
    }

    if plan.edits > 0 {
        let r = edits_run(&kit, &plan).context("store-after-edits run")?;
        eprintln!("store after edits: {r}");
        let load = vec![r["load1"].as_f64().unwrap_or(0.0)];
        for (who, key, log) in [
            (
                "editing",
                "store_over_raw_editor",
                "activity_over_raw_editor",
            ),
            (
                "receiving",
                "store_over_raw_receiver",
                "activity_over_raw_receiver",
            ),
        ] {
            let total = r[key].as_f64().unwrap_or(f64::NAN);
            let activity = r[log].as_f64().unwrap_or(f64::NAN);
            let figure = |what: &str| {
                format!(
                    "store / raw after {} edits a file ({} files), {who} peer{what}",
                    plan.edits, plan.edit_files
                )
            };
            for (figure, goal, value) in [
                (figure(""), None, total),
                (figure(": activity log"), None, activity),
                (
                    figure(", without the activity log"),
                    Some((1.0, "≤ 1.0")),
                    total - activity,
                ),
            ] {
                rows.push(Row {
                    figure,
                    goal,
                    values: vec![value],
                    unit: "×",
                    load: load.clone(),
                    digits: 2,
                });
            }
        }
        results["edits"] = r;
    }

    // Last: the relay's own figures, from its load generator (it wants both cores).
    let mut failed = None;
    let relay_load_md = match (&plan.relay_load, &relay_load_bin) {
        (Some(shape), Some(bin)) => {
            let deadline = Duration::from_secs(if plan.quick { 120 } else { 900 });
            let r = relay_load::run(bin, &kit.relay, shape, deadline)
                .context("running cue-relay-load")?;
            let md = relay_load_markdown(&r);
            if r["ok"] != true {
                eprintln!("cue-relay-load failed: {}", r["stderr_tail"]);
                failed = Some(format!(
                    "cue-relay-load failed ({}): {}",
                    r["exit"], r["stderr_tail"]
                ));
            }
            results["relay_load"] = r;
            Some(md)
        }
        _ => None,
    };

    let mut table = String::from(
        "| figure | goal | result: median [min–max] over runs | verdict | load avg (1 min) |\n\
         | --- | --- | ---: | --- | ---: |\n",
    );
    for r in &rows {
        table.push_str(&r.render(plan.quick));
        table.push('\n');
    }
    results["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    results["table"] = json!(table);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    println!("{table}");
    if let Some(md) = &relay_load_md {
        println!("{md}");
    }
    if let Some(path) = &args.docs {
        let section = docs_section(
            &plan,
            &DocsRun {
                date: &date,
                command: &command,
                loadavg_start: &loadavg_start,
                elapsed_s: started.elapsed().as_secs_f64(),
                table: &table,
                relay_load: relay_load_md.as_deref(),
            },
        );
        let doc = match std::fs::read_to_string(path) {
            Ok(doc) => doc,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let doc = docs::splice(&doc, &section).with_context(|| path.display().to_string())?;
        std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("cue-bench: wrote its section of {}", path.display());
    }
    eprintln!(
        "cue-bench: {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    match failed {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// The rows of one point of the curve (`curve_run`): times per file, RSS.
fn curve_rows(rows: &mut Vec<Row>, r: &Value, files: usize, burst: usize) {
    let load = vec![r["load1_sync"].as_f64().unwrap_or(f64::NAN)];
    let get = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    let per_file = |key: &str, n: usize| get(key) * 1e3 / n as f64;
    let nf = if files >= 1000 {
        format!("{},{:03}", files / 1000, files % 1000)
    } else {
        files.to_string()
    };
    for (figure, value, unit, digits) in [
        (
            format!("curve, {nf} files: `cue sync init`, per file"),
            per_file("init_s", files),
            "ms",
            2,
        ),
        (
            format!("curve, {nf} files: first sync to a new peer, per file"),
            per_file("first_sync_s", files),
            "ms",
            2,
        ),
        (
            format!("curve, {nf} files: adopted documents checked, per file"),
            per_file("verify_after_sync_s", files),
            "ms",
            2,
        ),
        (
            format!("curve, {nf} files: {burst} more copied in → on the other, per file"),
            per_file("burst_all_on_peer_s", burst),
            "ms",
            2,
        ),
        (
            format!("curve, {nf} files: RSS after the first sync (source / new peer)"),
            get("rss_after_sync_mib_src"),
            "MiB",
            1,
        ),
        (
            "… new peer".to_string(),
            get("rss_after_sync_mib_new"),
            "MiB",
            1,
        ),
        (
            format!("curve, {nf} files: RSS peak over it all (source / new peer)"),
            get("peak_mib_src"),
            "MiB",
            1,
        ),
        ("… new peer".to_string(), get("peak_mib_new"), "MiB", 1),
    ] {
        rows.push(Row {
            figure,
            goal: None,
            values: vec![value],
            unit,
            load: load.clone(),
            digits,
        });
    }
}

/// The rows of the flood figure: latency percentiles without and with each flood, and
/// what each flooder sent and was refused.
fn flood_rows(rows: &mut Vec<Row>, runs: &[Value], rate: u64) {
    let load = |key: &str| field(runs, &[key, "load1"]);
    let phases = [
        ("no_flood", "no flood".to_string()),
        (
            "flood_10x",
            format!("flood in another room at 10 × ({} msg/s)", 10 * rate),
        ),
        (
            "flood_unpaced",
            "flood in another room, unpaced (one connection's fastest)".to_string(),
        ),
    ];
    for (key, what) in &phases {
        for p in ["p50", "p95", "p99"] {
            rows.push(Row {
                figure: format!("save→peer {p}, 2 peers, relay limit {rate} msg/s, {what}"),
                goal: None,
                values: field(runs, &[key, "first_receiver_ms", p]),
                unit: "ms",
                load: load(key),
                digits: 1,
            });
        }
        let lost: f64 = field(runs, &[key, "lost"]).iter().sum();
        if lost > 0.0 {
            eprintln!("warning: {lost} saves never arrived within 10 s ({what})");
        }
    }
    for (key, what) in &phases[1..] {
        for (figure, path, unit, digits) in [
            ("messages sent", "sent", "", 0),
            ("… refused for rate", "refused_rate_limited", "", 0),
            ("… flood lasted", "seconds", "s", 1),
        ] {
            rows.push(Row {
                figure: if figure.starts_with('…') {
                    figure.to_string()
                } else {
                    format!("{what}: flooder's {figure}")
                },
                goal: None,
                values: field(runs, &[key, "flooder", path]),
                unit,
                load: load(key),
                digits,
            });
        }
        rows.push(Row {
            figure: "… relay CPU during it".to_string(),
            goal: None,
            values: field(runs, &[key, "relay_cpu_cores"]),
            unit: "cores",
            load: load(key),
            digits: 2,
        });
    }
}

/// The relay-load output for the Markdown: the command, then its stdout verbatim.
fn relay_load_markdown(r: &Value) -> String {
    let mut md = format!(
        "Relay: `{}` (deliveries a second, hop latency, RSS with idle connections; its \
         output verbatim, {:.0} s{}):\n\n",
        r["command"].as_str().unwrap_or("cue-relay-load"),
        r["elapsed_s"].as_f64().unwrap_or(f64::NAN),
        match r["nofile_soft"].as_u64() {
            Some(n) => format!(", open-file limit {n}"),
            None => String::new(),
        }
    );
    md.push_str(&docs::fenced(r["stdout"].as_str().unwrap_or(""), "text"));
    if r["ok"] != true {
        md.push_str(&format!(
            "\n**cue-relay-load failed** ({}):\n\n{}",
            r["exit"],
            docs::fenced(r["stderr_tail"].as_str().unwrap_or(""), "text")
        ));
    }
    md
}

/// What the generated section of the docs says about a run.
struct DocsRun<'a> {
    date: &'a str,
    command: &'a str,
    loadavg_start: &'a str,
    elapsed_s: f64,
    table: &'a str,
    relay_load: Option<&'a str>,
}

/// The generated section of docs/benchmarks.md (between its markers).
fn docs_section(plan: &Plan, run: &DocsRun<'_>) -> String {
    let mut s = String::new();
    if plan.quick {
        s.push_str(
            "**A quick run** (`--quick`: seconds-long, a few saves, 50 files, tiny relay \
             load; it shows the harness works, these are not the figures).\n\n",
        );
    }
    s.push_str(&format!(
        "- date: {}\n- machine: {}; load average at start {} (1, 5, 15 min)\n\
         - command: `{}` (after `cargo build --release -p cue-cli -p cue-relay -p cue-relay-load -p cue-bench`)\n\
         - took {:.0} s\n\n",
        run.date,
        docs::machine(),
        run.loadavg_start,
        run.command,
        run.elapsed_s
    ));
    s.push_str(run.table);
    if let Some(md) = run.relay_load {
        s.push('\n');
        s.push_str(md);
    }
    s
}
