//! What a person at a terminal sees, and what a script does not: colour only on a
//! terminal and never with `NO_COLOR` or `--json`; progress bars on stderr only when it
//! is a terminal; log levels from `CUE_LOG` or `RUST_LOG`.

use cue_e2e::{OnTerminal, Peer, Relay, pair, run_on_terminal, wait_until};

const ESC: char = '\x1b';

#[test]
fn status_is_coloured_only_on_a_terminal_and_never_with_no_color_or_json() {
    let p = Peer::new("erin");
    p.init(cue_e2e::UNREACHABLE_RELAY);

    let run = run_on_terminal(p.command(&["sync", "status"]), OnTerminal::Stdout);
    assert_eq!(run.code, Some(1), "no daemon: exit 1 ({})", run.terminal);
    assert!(run.terminal.contains("not running"), "{:?}", run.terminal);
    assert!(
        run.terminal.contains(ESC),
        "colour on a terminal: {:?}",
        run.terminal
    );

    // NO_COLOR with any non-empty value turns it off (no-color.org); empty is unset.
    let mut cmd = p.command(&["sync", "status"]);
    cmd.env("NO_COLOR", "1");
    let run = run_on_terminal(cmd, OnTerminal::Stdout);
    assert!(run.terminal.contains("not running"), "{:?}", run.terminal);
    assert!(
        !run.terminal.contains(ESC),
        "NO_COLOR=1: {:?}",
        run.terminal
    );
    let mut cmd = p.command(&["sync", "status"]);
    cmd.env("NO_COLOR", "");
    let run = run_on_terminal(cmd, OnTerminal::Stdout);
    assert!(
        run.terminal.contains(ESC),
        "NO_COLOR empty: {:?}",
        run.terminal
    );

    // --json on a terminal: plain JSON.
    let run = run_on_terminal(p.command(&["sync", "status", "--json"]), OnTerminal::Stdout);
    assert!(!run.terminal.contains(ESC), "{:?}", run.terminal);
    let json: serde_json::Value = serde_json::from_str(run.terminal.trim()).unwrap();
    assert_eq!(json["daemon"]["running"], false);

    // Piped: no colour, the same words.
    let out = p.cue(&["sync", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(ESC), "{text:?}");
    let first = text.lines().next().unwrap();
    assert!(first.ends_with(": not running · 0 files"), "{text}");
    assert_eq!(
        text.lines().nth(1),
        Some("  (start syncing with `cue sync start`)")
    );
}

/// Whether `stderr` (of `init` or `join`) holds nothing but the relay's notes.
fn only_relay_notes(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    text.lines().all(|l| {
        l.starts_with("Relay: ws://127.0.0.1:") || l.starts_with("warning: ws://127.0.0.1:")
    }) && text.starts_with("Relay: ")
}

#[test]
fn progress_is_drawn_on_a_terminal_and_nothing_goes_to_a_piped_stderr() {
    let relay = Relay::start();
    let a = Peer::new("alice");
    for i in 0..40 {
        a.write(
            &format!("notes/n{i:02}.md"),
            &format!("# note {i}\n\nbody\n"),
        );
    }
    let out = a.cue(&["sync", "init", "--relay", &relay.url(), "--name", "alice"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("40 files imported"),
        "{out:?}"
    );
    // Off a terminal, no bar: stderr holds only which relay the workspace uses (and, for
    // this loopback relay, the warning that other machines cannot reach it).
    assert!(
        only_relay_notes(&out.stderr),
        "no bar off a terminal: {out:?}"
    );
    let out = a.cue(&["sync", "start"]);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{out:?}");
    let token = a.invite();

    // A joiner off a terminal: no bar, and `start` returns without waiting for the
    // first sync (the contract: it waits for the daemon, not the relay).
    let b = Peer::new("bob");
    b.write("mine.md", "bob's own\n");
    let out = b.cue(&["sync", "join", &token, "--name", "bob"]);
    assert!(
        out.status.success() && only_relay_notes(&out.stderr),
        "{out:?}"
    );
    let out = b.cue(&["sync", "start"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    wait_until("bob's first sync", || {
        b.status().0["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["last_sync"].is_string()))
    });
    assert!(b.read("notes/n39.md").is_some());

    // A joiner at a terminal: the import bar, then `start` follows the first sync
    // through the daemon until it is done.
    let c = Peer::new("carol");
    for i in 0..20 {
        c.write(&format!("local/c{i:02}.md"), &format!("carol {i}\n"));
    }
    let run = run_on_terminal(
        c.command(&["sync", "join", &token, "--name", "carol"]),
        OnTerminal::Stderr,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.terminal.contains("importing"), "{:?}", run.terminal);
    assert!(run.piped.contains("Joined workspace"), "{run:?}");
    let run = run_on_terminal(c.command(&["sync", "start"]), OnTerminal::Stderr);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.piped.contains("cue daemon started"), "{run:?}");
    assert!(
        run.terminal.contains("First sync done"),
        "{:?}",
        run.terminal
    );
    // When `start` returns after following it, the workspace is here.
    for i in 0..40 {
        assert!(c.read(&format!("notes/n{i:02}.md")).is_some(), "n{i:02}");
    }
    // And a second start at a terminal (a sync done) does not wait: it says it runs.
    let run = run_on_terminal(c.command(&["sync", "start"]), OnTerminal::Stderr);
    assert_eq!(run.code, Some(1));
    assert!(
        run.terminal.contains("already running"),
        "{:?}",
        run.terminal
    );
    a.stop();
    b.stop();
    c.stop();
}

#[test]
fn log_levels_come_from_cue_log_else_rust_log() {
    let p = Peer::new("frank");
    p.init(cue_e2e::UNREACHABLE_RELAY);
    let ready = || {
        std::fs::read_to_string(p.path(".cuedeck/daemon.log"))
            .unwrap_or_default()
            .matches("daemon ready")
            .count()
    };
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = p.command(&["sync", "start"]);
        cmd.env_remove("CUE_LOG").env_remove("RUST_LOG");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        assert!(cmd.output().unwrap().status.success());
        p.stop();
    };
    run(&[("CUE_LOG", "warn")]);
    assert_eq!(ready(), 0, "CUE_LOG=warn hides info");
    run(&[("RUST_LOG", "info")]);
    assert_eq!(ready(), 1, "RUST_LOG=info shows it");
    run(&[("CUE_LOG", "warn"), ("RUST_LOG", "info")]);
    assert_eq!(ready(), 1, "CUE_LOG wins over RUST_LOG");
    run(&[]);
    assert_eq!(ready(), 2, "info by default");
}

#[test]
fn status_shows_the_headline_and_one_line_a_peer() {
    let (_relay, a, _b) = pair();
    wait_until("alice and bob to have synced", || {
        a.status().0["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["online"] == true && p["last_sync"].is_string())
        }) && a.status().0["pending_changes"] == 0
    });
    let text = a.cue_ok(&["sync", "status"]);
    let mut lines = text.lines();
    let headline = lines.next().unwrap();
    assert!(
        headline.ends_with(": up to date · relay connected · 1 peer online"),
        "{text}"
    );
    assert_eq!(lines.next(), Some(""));
    assert_eq!(lines.next(), Some("Peers:"));
    let peer = lines.next().unwrap();
    assert!(peer.starts_with("  bob  online   last synced "), "{text}");
    assert_eq!(lines.next(), None, "{text}");
}
