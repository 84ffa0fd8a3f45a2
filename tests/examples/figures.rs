//! The daemon's figures (docs/benchmarks.md, "## Daemon"), measured on real processes on
//! loopback: save→peer latency over 50 saves, 1,000 × 4 KB files to a new peer, idle RSS
//! and CPU, and store size over raw bytes. Figures, not tests: nothing here asserts a
//! duration.
//!
//! `cargo build --release -p cue-cli -p cue-relay && cargo run --release -p cue-e2e --example figures`

#![allow(clippy::unwrap_used)] // a measuring script: any failure should stop it loudly

use std::time::{Duration, Instant};

use cue_e2e::{Peer, Relay, wait_until};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (100 a second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path, skip_logs: bool) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            total += dir_bytes(&p, skip_logs);
        } else if !(skip_logs && p.extension().is_some_and(|x| x == "log")) {
            total += m.len();
        }
    }
    total
}

/// Like `wait_until`, with room for slow machines: this measures, it does not judge.
fn wait_long(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let relay = Relay::start();
    let a = Peer::new("alice");
    let b = Peer::new("bob");
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    wait_until("the peers to meet", || {
        a.status().0["peers"][0]["online"] == true
    });

    // Save → peer latency: a save on alice until the content is on bob's disk.
    a.write("lat.md", "start\n");
    wait_until("first version", || b.read("lat.md").is_some());
    let mut lat = Vec::new();
    for i in 0..50 {
        let body = format!("start\nsave {i}\n");
        let t = Instant::now();
        a.write("lat.md", &body);
        while b.read("lat.md").as_deref() != Some(body.as_str()) {
            std::hint::spin_loop();
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "save {i} never arrived"
            );
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "save->peer latency over {} saves: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.95).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );

    // 1,000 × 4 KB files to a new peer.
    for i in 0..1000 {
        let line = format!("file {i} line of text that is about sixty four bytes long....\n");
        a.write(
            &format!("bulk/{:02}/f{i:04}.md", i % 20),
            &line.repeat(4096 / line.len()),
        );
    }
    wait_long("alice to take the 1,000 files in", || {
        a.status().0["files"].as_u64() == Some(1001)
    });
    let c = Peer::new("carol");
    c.join(&a.invite());
    let t = Instant::now();
    c.start();
    let import = t.elapsed();
    wait_long("carol to have all 1,000 files", || {
        (0..1000).all(|i| c.path(&format!("bulk/{:02}/f{i:04}.md", i % 20)).exists())
    });
    println!(
        "1,000 x 4 KB files to a new peer: {:.2} s from `cue sync start` to the last file on disk (start itself {:.2} s)",
        t.elapsed().as_secs_f64(),
        import.as_secs_f64()
    );

    // Idle: RSS and CPU over 10 s (scaled to a minute) with 1,000 files.
    let pid = a.daemon_pid().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(10));
    let after = cpu_ticks(pid);
    println!(
        "idle with 1,001 files: RSS {} MiB, CPU {:.2} s a minute",
        rss_kib(pid) / 1024,
        (after - before) as f64 / 100.0 * 6.0
    );
    let raw = dir_bytes(&a.path("bulk"), false);
    let store = dir_bytes(&a.path(".cuedeck"), true);
    println!(
        "store: {} KiB for {} KiB of files after import: {:.2} x raw",
        store / 1024,
        raw / 1024,
        store as f64 / raw as f64
    );
    for p in [&a, &b, &c] {
        p.stop();
    }
    drop(relay);
}
