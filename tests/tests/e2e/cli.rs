//! The commands' contract: status keys and exit codes, one daemon per workspace, stop,
//! and bad input answered with one line and the right exit code.

use cue_e2e::{Peer, Relay, pair, wait_until};

#[test]
fn status_json_has_the_contract_keys_and_exit_codes() {
    let (_relay, a, b) = pair();
    wait_until("alice to see bob online", || {
        let (s, _) = a.status();
        s["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "bob" && p["online"] == true))
    });
    let (s, code) = a.status();
    assert_eq!(code, 0, "a running daemon's status exits 0: {s}");
    assert_eq!(s["schema_version"], 1);
    assert_eq!(s["workspace_id"].as_str().unwrap().len(), 32);
    assert_eq!(s["device_id"].as_str().unwrap().len(), 64);
    assert_eq!(s["daemon"]["running"], true);
    assert!(s["daemon"]["pid"].is_u64());
    assert!(
        s["relay"]["url"]
            .as_str()
            .unwrap()
            .starts_with("ws://127.0.0.1:")
    );
    assert_eq!(s["relay"]["connected"], true);
    let peer = &s["peers"][0];
    assert_eq!(peer["device_id"], b.status().0["device_id"]);
    assert!(peer["last_sync"].is_string() || peer["last_sync"].is_null());
    for key in ["files", "pending_changes"] {
        assert!(s[key].is_u64(), "{key}: {s}");
    }
    for key in ["conflicts", "skipped"] {
        assert!(s[key].is_array(), "{key}: {s}");
    }
    assert!(s.get("last_full_resync").is_some());
    // Both devices name the same workspace.
    assert_eq!(s["workspace_id"], b.status().0["workspace_id"]);

    // A second start exits 1 and says one is running.
    let out = a.cue(&["sync", "start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Stop stops; status then exits 1 but still prints the JSON; stop again is fine.
    a.stop();
    let (s, code) = a.status();
    assert_eq!(code, 1);
    assert_eq!(s["daemon"]["running"], false);
    assert_eq!(s["relay"]["connected"], false);
    let out = a.cue(&["sync", "stop"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No cue daemon"));
}

#[test]
fn a_killed_daemon_never_blocks_the_next_start() {
    let relay = Relay::start();
    let a = Peer::new("alice");
    a.init(&relay.url());
    a.start();
    a.kill_daemon();
    // The pid file and socket are left behind; the lock decides.
    a.start();
    assert_eq!(a.status().1, 0);
    a.stop();
}

#[test]
fn a_start_right_after_a_kill_9_waits_for_the_dead_daemon() {
    let a = Peer::new("alice");
    a.init(cue_e2e::UNREACHABLE_RELAY);
    a.start();
    // Right after the kill the dead daemon's threads may still be exiting, its lock held:
    // the start waits for it instead of calling it running. Three times, as it used to
    // fail about two times in three.
    for round in 1..=3 {
        let killed = a.kill_daemon_now();
        let out = a.cue(&["sync", "start"]);
        assert!(
            out.status.success(),
            "round {round}: start after kill -9 of pid {killed} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started = a.live_daemon().expect("the new daemon runs");
        assert_ne!(started, killed, "round {round}");
        assert_eq!(a.status().1, 0, "round {round}");
    }
    a.stop();
}

#[test]
fn git_add_in_a_workspace_never_stages_cuedeck() {
    let git = |p: &Peer, args: &[&str]| {
        std::process::Command::new("git")
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(p.root())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
    };
    let p = Peer::new("gina");
    match git(&p, &["init", "-q"]) {
        Ok(out) if out.status.success() => {}
        // Not a failure of cue's: this machine has no usable git.
        _ => {
            eprintln!("git is not available; skipped");
            return;
        }
    }
    p.write("notes.md", "tracked\n");
    p.init(cue_e2e::UNREACHABLE_RELAY);
    assert!(p.path(".cuedeck/workspace.key").exists());
    let add = git(&p, &["add", "-A"]).unwrap();
    assert!(add.status.success(), "{add:?}");
    let status = git(&p, &["status", "--porcelain", "--untracked-files=all"]).unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("notes.md"), "the add worked: {status}");
    assert!(!status.contains(".cuedeck"), "{status}");
    let staged = git(&p, &["ls-files"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&staged.stdout).trim(), "notes.md");
}

#[test]
fn bad_input_is_one_line_and_the_right_exit_code() {
    let p = Peer::new("carol");
    // Not a workspace.
    for args in [
        &["sync", "status"][..],
        &["sync", "invite"],
        &["sync", "start"],
    ] {
        let out = p.cue(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cue sync init"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A wrong token, or a real one cut short, changes nothing on disk.
    let real = {
        let other = Peer::new("other");
        other.init(cue_e2e::UNREACHABLE_RELAY);
        other.invite()
    };
    for token in [
        "cueinv1qqqqqqqq",
        &real[..real.len() / 2],
        &real[..real.len() - 1],
    ] {
        let out = p.cue(&["sync", "join", token]);
        assert_eq!(out.status.code(), Some(1), "{token}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("token"), "{err}");
        assert!(!p.path(".cuedeck").exists());
    }
    // Usage errors (an unknown command or flag, a bad value) exit 2 with one line that
    // names the help to read.
    for (args, help) in [
        (&["sync", "frobnicate"][..], "cue sync --help"),
        (&["sync", "status", "--bogus"], "cue sync status --help"),
        (
            &["activity", "log", "--since", "yesterday"],
            "cue activity log --help",
        ),
        (&["sync", "join"], "cue sync join --help"),
    ] {
        let out = p.cue(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(help), "{args:?}: {err}");
    }
    assert!(!p.path(".cuedeck").exists());
    // A bad device name.
    let out = p.cue(&["sync", "init", "--name", "no spaces"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!p.path(".cuedeck").exists());
    // Restoring what was never deleted.
    p.init(cue_e2e::UNREACHABLE_RELAY);
    p.write("here.md", "kept as it is\n");
    let before = user_files(&p);
    let out = p.cue(&["sync", "restore", "never.md"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never deleted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Resolving a path with no conflict, with and without a daemon.
    let out = p.cue(&["sync", "resolve", "here.md"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no open conflict"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    p.start();
    for args in [
        &["sync", "resolve", "here.md"][..],
        &["sync", "restore", "here.md"],
    ] {
        let out = p.cue(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A second start: one line, exit 1.
    let out = p.cue(&["sync", "start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains("cue sync stop"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    p.stop();
    assert_eq!(user_files(&p), before, "nothing changed on disk");
}

/// The workspace's files (not `.cuedeck/`) with their contents.
fn user_files(p: &Peer) -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            if e.file_name() == ".cuedeck" {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(p.root(), p.root(), &mut out);
    out.sort();
    out
}

#[test]
fn activity_older_than_the_retention_is_dropped() {
    let p = Peer::new("hugo");
    p.init(cue_e2e::UNREACHABLE_RELAY);
    p.start();
    p.write("old.md", "old\n");
    wait_until("the change in the log", || {
        p.cue_ok(&["activity", "log"]).contains("old.md")
    });
    p.stop();
    // A retention of 0.00002 days (1.7 s): once the entry is older than that, the next
    // start drops it.
    let config = p.path(".cuedeck/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("activity_retention_days = 90.0"), "{text}");
    std::fs::write(
        &config,
        text.replace(
            "activity_retention_days = 90.0",
            "activity_retention_days = 0.00002",
        ),
    )
    .unwrap();
    let written = std::time::Instant::now();
    wait_until("the entry to be older than the retention", || {
        written.elapsed() > std::time::Duration::from_secs(2)
    });
    p.start();
    wait_until("the old entry to be dropped", || {
        !p.cue_ok(&["activity", "log"]).contains("old.md")
    });
    assert_eq!(p.read("old.md").as_deref(), Some("old\n"), "the file stays");
}

#[test]
fn activity_log_newest_last_since_n_json_and_follow() {
    use std::io::BufRead;
    let p = Peer::new("gina");
    p.init(cue_e2e::UNREACHABLE_RELAY);
    p.start();
    for name in ["one.md", "two.md", "three.md"] {
        p.write(name, name);
        wait_until("the change in the log", || {
            p.cue_ok(&["activity", "log"]).contains(name)
        });
    }
    let log = p.cue_ok(&["activity", "log", "--json"]);
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.len() >= 3, "{log}");
    let times: Vec<&str> = entries
        .iter()
        .map(|e| e["time"].as_str().unwrap())
        .collect();
    for t in &times {
        // RFC 3339 UTC: 2026-11-22T03:55:34.977Z
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "newest last");
    let paths: Vec<&str> = entries.iter().filter_map(|e| e["path"].as_str()).collect();
    let pos = |n: &str| paths.iter().position(|p| *p == n).unwrap();
    assert!(pos("one.md") < pos("two.md") && pos("two.md") < pos("three.md"));
    for e in &entries {
        assert_eq!(e["device"], "gina", "{e}");
        assert!(e["kind"].is_string(), "{e}");
    }

    // -n: the newest N.
    let last = p.cue_ok(&["activity", "log", "-n", "1", "--json"]);
    assert_eq!(last.lines().count(), 1);
    assert_eq!(last.trim(), log.lines().last().unwrap());
    // --since: durations and dates.
    for since in ["1d", "2h30m", "2000-01-01", "2000-01-01T00:00:00Z"] {
        let out = p.cue_ok(&["activity", "log", "--since", since, "--json"]);
        assert_eq!(out, log, "--since {since}");
    }
    let out = p.cue_ok(&["activity", "log", "--since", "2999-01-01"]);
    assert!(out.is_empty(), "{out}");

    // --follow: what happens next, as it happens.
    let mut follow = p
        .command(&["activity", "log", "--follow", "--json", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The follower connects on its own time: a save made before it did is not new to
    // it, so saves go on (a new file each half second) until one is followed.
    let deadline = std::time::Instant::now() + cue_e2e::DEADLINE;
    let mut followed = Vec::new();
    let mut k = 0;
    while !followed.iter().any(|l: &String| l.contains("four-"))
        && std::time::Instant::now() < deadline
    {
        p.write(&format!("four-{k}.md"), "four");
        k += 1;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => followed.push(line),
                Err(_) => break,
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        followed.iter().any(|l| l.contains("four-")),
        "followed: {followed:?}"
    );
    // Only new entries: nothing from before the follow began.
    assert!(
        !followed.iter().any(|l| l.contains("one.md")),
        "{followed:?}"
    );
    p.stop();
}

#[test]
fn an_unreachable_relay_is_offline_not_an_error() {
    // Port 9 (discard) on loopback: nothing listens.
    let p = Peer::new("dave");
    p.init(cue_e2e::UNREACHABLE_RELAY);
    p.start();
    let (s, code) = p.status();
    assert_eq!(code, 0);
    assert_eq!(s["relay"]["connected"], false);
    // In words: offline and retrying, with what to check.
    let out = p.cue(&["sync", "status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap().contains("offline, retrying"),
        "{text}"
    );
    assert!(
        text.contains("cannot reach the relay at ws://127.0.0.1:9"),
        "{text}"
    );
    p.write("x.md", "local work\n");
    wait_until("the offline edit to be taken in", || {
        p.status().0["files"] == 1
    });
    p.stop();
}

/// A port of 127.0.0.1 that nothing listens on: one the kernel gave out and took back.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn daemon_log(p: &Peer) -> String {
    std::fs::read_to_string(p.path(".cuedeck/daemon.log")).unwrap_or_default()
}

#[test]
fn an_unreachable_relay_says_why_and_where_the_log_is() {
    let port = closed_port();
    let url = format!("ws://127.0.0.1:{port}");
    let p = Peer::new("erin");
    p.init(&url);
    p.start();
    let refused = format!("connection refused by 127.0.0.1:{port}");
    wait_until("status to say why the relay cannot be reached", || {
        p.status().0["relay"]["reason"] == refused.as_str()
    });
    let (s, _) = p.status();
    assert_eq!(s["relay"]["connected"], false);
    let log_path = p.path(".cuedeck/daemon.log");
    let log_path = log_path.to_str().unwrap();
    assert_eq!(s["daemon"]["log"], log_path, "{s}");
    let text = p.cue_ok(&["sync", "status"]);
    assert!(
        text.contains(&format!("cannot reach the relay at {url}: {refused};")),
        "{text}"
    );
    assert!(text.contains(&format!("(details in {log_path})")), "{text}");
    // The log says the same, once, and never calls it a lost connection: there was none.
    wait_until("the daemon log to say why", || {
        daemon_log(&p).contains(&format!("cannot reach relay at {url}: {refused}"))
    });
    let log = daemon_log(&p);
    assert!(!log.contains("relay connection lost"), "{log}");
    p.stop();
}

#[test]
fn a_relay_that_goes_away_is_a_lost_connection_in_the_log() {
    let relay = Relay::start();
    let url = relay.url();
    let p = Peer::new("fred");
    p.init(&url);
    p.start();
    wait_until("the daemon to join the relay", || {
        p.status().0["relay"]["connected"] == true
    });
    assert!(p.status().0["relay"]["reason"].is_null());
    assert!(!daemon_log(&p).contains("cannot reach relay"));
    let addr = relay.stop();
    wait_until("the log to say the connection was lost", || {
        daemon_log(&p).contains("relay connection lost")
    });
    // Reconnecting to the stopped relay then fails with its reason.
    let refused = format!("connection refused by {addr}");
    wait_until("status to say why the relay cannot be reached", || {
        p.status().0["relay"]["reason"] == refused.as_str()
    });
    wait_until("the log to say why", || {
        daemon_log(&p).contains(&format!("cannot reach relay at {url}: {refused}"))
    });
    p.stop();
}

/// The mode bits of a file.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_auth_token_comes_from_a_file_or_the_environment_never_the_config() {
    const TOKEN: &str = "team-relay-token-7f3a";
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("relay-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_path = token_file.to_str().unwrap();
    let relay = Relay::start_with(cue_testkit::ANY_PORT, &["--auth-token-file", token_path]);

    // Alice gives the token in the environment, Bob in a file.
    let a = Peer::new("alice");
    a.init(&relay.url());
    let b = Peer::new("bob");
    b.join(&a.invite());
    let out = a
        .command(&["sync", "start"])
        .env("CUE_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    b.cue_ok(&["sync", "start", "--auth-token-file", token_path]);
    for p in [&a, &b] {
        wait_until(
            &format!("{} to join the relay with the token", p.name),
            || p.status().0["relay"]["connected"] == true,
        );
        wait_until(&format!("{} to see the other online", p.name), || {
            p.status().0["peers"][0]["online"] == true
        });
    }
    for p in [&a, &b] {
        // Not saved, not on the daemon's command line (which every user sees in `ps`).
        let config = p.path(".cuedeck/config.toml");
        assert!(!std::fs::read_to_string(&config).unwrap().contains(TOKEN));
        assert_eq!(mode(&config), 0o600, "{}'s config", p.name);
        let pid = p.status().0["daemon"]["pid"].as_u64().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(TOKEN),
            "{}",
            String::from_utf8_lossy(&cmdline)
        );
    }

    // Without the token the relay turns a device away, and status says why.
    let c = Peer::new("carol");
    c.join(&a.invite());
    c.start();
    wait_until("carol's status to say the relay wants a token", || {
        c.status().0["relay"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("rejected by the relay: it needs an auth token"))
    });
    let text = c.cue_ok(&["sync", "status"]);
    assert!(text.contains("CUE_AUTH_TOKEN"), "{text}");

    // An empty token file is an error that names it, not a silent "no token".
    std::fs::write(&token_file, "\n").unwrap();
    c.stop();
    let out = c.cue(&["sync", "start", "--auth-token-file", token_path]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is empty") && err.contains(token_path),
        "{err}"
    );
    for p in [&a, &b] {
        p.stop();
    }
}

#[test]
fn the_demo_runs_and_cleans_up() {
    let out = std::process::Command::new(cue_e2e::cue_bin())
        .arg("demo")
        .env_remove("CUE_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("the same bytes on both machines"), "{text}");
    assert!(text.contains("(alice)") && text.contains("(bob)"), "{text}");
    // Each figure says what it measures; counts agree with their nouns.
    assert!(
        text.contains("after bob's `cue sync start` began"),
        "{text}"
    );
    assert!(
        text.contains("6 saves synced, each timed from the save"),
        "{text}"
    );
    assert!(text.contains("on alice's disk after"), "{text}");
    assert!(text.contains("alice: 1 file, "), "{text}");
    assert!(!text.contains(" 1 files"), "{text}");
    assert!(
        text.contains("restore    bob ran `cue sync restore plan.md`"),
        "{text}"
    );
    assert!(text.contains("removed the folders"), "{text}");
}

#[test]
fn an_interrupted_demo_stops_its_daemons_and_removes_its_folder() {
    use rustix::process::{Pid, Signal, kill_process};
    use std::io::BufRead;
    for (signal, code) in [(Signal::INT, 130), (Signal::TERM, 143)] {
        let mut demo = std::process::Command::new(cue_e2e::cue_bin())
            .arg("demo")
            .env_remove("CUE_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
        // Both daemons run once bob's first sync is reported; the demo then goes on for
        // a second or more (the concurrent edit).
        let mut folder = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(bob) = line.strip_prefix("bob        cue sync join   -> ") {
                folder = std::path::Path::new(bob).parent().map(|p| p.to_owned());
            }
            if line.starts_with("bob        first sync") {
                break;
            }
        }
        let folder = folder.expect("the demo names its folders");
        let pids: Vec<u32> = ["alice", "bob"]
            .iter()
            .map(|who| {
                let pid =
                    std::fs::read_to_string(folder.join(who).join(".cuedeck/daemon.pid")).unwrap();
                pid.trim().parse().unwrap()
            })
            .collect();
        assert!(pids.iter().all(|&pid| !cue_testkit::gone(pid)), "{pids:?}");
        kill_process(Pid::from_raw(demo.id() as i32).unwrap(), signal).unwrap();
        let status = demo.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal:?}");
        wait_until("the demo's daemons to exit", || {
            pids.iter().all(|&pid| cue_testkit::gone(pid))
        });
        assert!(!folder.exists(), "{} is left behind", folder.display());
    }
}

/// Three `cue sync start` at once: one daemon runs, one start says it started it (with
/// its pid), the others exit 1 saying one is running. Two or three said "started" with
/// the pid of a daemon that had exited, having lost the race for the lock.
#[test]
fn starts_at_once_start_one_daemon_and_say_so() {
    let (_relay, a, _b) = pair();
    for _ in 0..3 {
        a.stop();
        let starts: Vec<std::process::Child> = (0..3)
            .map(|_| {
                a.command(&["sync", "start"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<std::process::Output> = starts
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let started: Vec<String> = outs
            .iter()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .collect();
        assert_eq!(started.len(), 1, "{outs:?}");
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert_eq!(o.status.code(), Some(1));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("already running"), "{err}");
        }
        let pid = a.status().0["daemon"]["pid"].as_u64().unwrap();
        assert!(started[0].contains(&format!("pid {pid}")), "{started:?}");
    }
    a.stop();
}

/// A device started again counts nothing as refused: the member entries it holds were
/// judged when they came. Every start counted each admission as a forged entry
/// (`bad_members`), so an honest workspace looked attacked.
#[test]
fn starting_again_counts_no_refused_input() {
    let (_relay, a, b) = pair();
    for _ in 0..2 {
        for p in [&a, &b] {
            p.stop();
            p.start();
        }
    }
    wait_until("both online again", || {
        [&a, &b]
            .iter()
            .all(|p| p.online_peers().is_ok_and(|n| n == 1))
    });
    for p in [&a, &b] {
        let refused = &p.status().0["refused_input"];
        assert_eq!(refused, &serde_json::json!({}), "{}: {refused}", p.name);
    }
    a.stop();
    b.stop();
}
