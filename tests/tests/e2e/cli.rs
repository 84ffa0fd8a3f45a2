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
    // A wrong token changes nothing on disk.
    let out = p.cue(&["sync", "join", "cueinv1qqqqqqqq"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!p.path(".cuedeck").exists());
    // Usage errors exit 2.
    assert_eq!(p.cue(&["sync", "frobnicate"]).status.code(), Some(2));
    assert_eq!(p.cue(&["sync", "status", "--bogus"]).status.code(), Some(2));
    // A bad device name.
    let out = p.cue(&["sync", "init", "--name", "no spaces"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!p.path(".cuedeck").exists());
    // Restoring what was never deleted.
    p.cue_ok(&[
        "sync",
        "init",
        "--relay",
        "ws://127.0.0.1:9",
        "--name",
        "carol",
    ]);
    let out = p.cue(&["sync", "restore", "never.md"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never deleted"));
}

#[test]
fn an_unreachable_relay_is_offline_not_an_error() {
    // Port 9 (discard) on loopback: nothing listens.
    let p = Peer::new("dave");
    p.cue_ok(&[
        "sync",
        "init",
        "--relay",
        "ws://127.0.0.1:9",
        "--name",
        "dave",
    ]);
    p.start();
    let (s, code) = p.status();
    assert_eq!(code, 0);
    assert_eq!(s["relay"]["connected"], false);
    p.write("x.md", "local work\n");
    wait_until("the offline edit to be taken in", || {
        p.status().0["files"] == 1
    });
    p.stop();
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
    assert!(text.contains("removed the folders"), "{text}");
}
