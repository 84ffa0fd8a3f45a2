//! The `cue` binary's argument handling, run as a process (its presence here also makes
//! `cargo nextest run --workspace` build `target/*/cue` for the end-to-end tests).

use std::process::Command;

fn cue(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_cue"))
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run cue")
}

#[test]
fn version_and_help_exit_0() {
    assert!(cue(&["--version"]).status.success());
    let help = cue(&["sync", "init", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Example"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(cue(&["sync", "nope"]).status.code(), Some(2));
    assert_eq!(cue(&["sync", "status", "--nope"]).status.code(), Some(2));
    assert_eq!(cue(&[]).status.code(), Some(2));
}

/// A bad value, or a combination the command does not take, is a usage error too
/// (found after parsing, still exit 2 and one line saying what to write).
#[test]
fn bad_values_and_combinations_exit_2() {
    for args in [
        &["sync", "now", "--timeout", "soon"][..],
        &["sync", "invite", "--expires", "a week"],
        &["watch"],
        &["sync", "restore", "a.md", "b.md", "--at", "abcd"],
    ] {
        let out = cue(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn outside_a_workspace_says_what_to_do() {
    let out = cue(&["sync", "status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cue sync init"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn completions_for_the_usual_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cue(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("sync"),
            "{shell}"
        );
    }
    assert_eq!(cue(&["completions", "tcsh-ish"]).status.code(), Some(2));
}

/// `cue sync init` in `dir` with a relay other machines can reach, as device `name`.
fn init_in(dir: &std::path::Path, name: &str) -> std::process::Output {
    cue_in(
        dir,
        &[
            "sync",
            "init",
            "--relay",
            "wss://relay.example.org",
            "--name",
            name,
        ],
    )
}

/// `cue -C DIR args...`.
fn cue_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cue"))
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_remove("CUE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run cue")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `restore` of a path outside the workspace is an error, never "everything deleted"
/// (which `.` asks for, the deletions the guard holds included).
#[test]
fn restore_of_a_path_outside_the_workspace_restores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).expect("mkdir");
    assert!(init_in(&ws, "desk").status.success());
    let out = cue_in(&ws, &["sync", "restore", "../elsewhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("outside the workspace"),
        "{}",
        stderr(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Restored"));
}

#[test]
fn a_mistyped_invite_is_one_line_said_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let out = init_in(&a, "a");
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(cue_in(&a, &["sync", "invite"]).stdout).expect("utf-8");
    let token = token.trim();
    // One character changed to another of the alphabet.
    let at = 20;
    let swapped = if token.as_bytes()[at] == b'q' {
        "p"
    } else {
        "q"
    };
    let mistyped = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
    let out = cue_in(&b, &["sync", "join", &mistyped]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("cue: error: "), "{err}");
    assert_eq!(
        err.matches("checksum does not match").count(),
        1,
        "said once: {err}"
    );
    assert!(!b.join(".cuedeck").exists());
}

#[test]
fn relay_help_has_its_flags_and_not_the_workspace_option() {
    let out = cue(&["relay", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--log-format"), "{help}");
    assert!(help.contains("--listen"), "{help}");
    assert!(!help.contains("-C <DIR>"), "{help}");
    let out = cue(&["sync", "status", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("-C <DIR>"));
}

#[test]
fn help_says_where_the_auth_token_can_come_from() {
    for args in [
        &["sync", "start", "--help"][..],
        &["watch", "--help"],
        &["relay", "--help"],
    ] {
        let out = cue(args);
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--auth-token-file <PATH>"), "{help}");
        assert!(help.contains("`ps`"), "the flag's risk is said: {help}");
        let var = if args[0] == "relay" {
            "CUE_RELAY_AUTH_TOKEN"
        } else {
            "CUE_AUTH_TOKEN"
        };
        assert!(help.contains(&format!("[env: {var}]")), "{help}");
    }
}

#[test]
fn init_says_which_relay_and_warns_when_only_this_machine_reaches_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");

    // Without --relay: the default, on loopback, said and warned about, with the way out.
    let out = cue_in(&a, &["sync", "init", "--name", "laptop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let mut lines = err.lines();
    assert_eq!(
        lines.next(),
        Some("Relay: ws://127.0.0.1:8080 (the default)"),
        "{err}"
    );
    let warning = lines.next().unwrap_or_default();
    assert!(
        warning.starts_with("warning: ws://127.0.0.1:8080 "),
        "{err}"
    );
    assert!(
        warning.contains("other machines cannot reach it")
            && warning.contains("cue sync start --relay URL"),
        "{err}"
    );
    // The invite carries it: said again, on stderr, the token alone on stdout.
    let out = cue_in(&a, &["sync", "invite"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        stderr(&out).contains("warning: this token carries the relay ws://127.0.0.1:8080"),
        "{}",
        stderr(&out)
    );

    // With a relay other machines can reach: said, no warning.
    let out = init_in(&b, "desktop");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "Relay: wss://relay.example.org (from --relay)"
    );
    let out = cue_in(&b, &["sync", "invite"]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn activity_times_are_local_for_people_and_utc_in_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path();
    std::fs::write(ws.join("a.md"), "a\n").expect("write");
    let out = init_in(ws, "a");
    assert!(out.status.success(), "{}", stderr(&out));
    // A deletion and a restore, without a daemon: entries in the log.
    std::fs::remove_file(ws.join("a.md")).expect("rm");
    assert!(cue_in(ws, &["sync", "restore", "a.md"]).status.success());
    let log = |tz: &str, json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cue"));
        cmd.arg("-C")
            .arg(ws)
            .args(["activity", "log"])
            .env("TZ", tz);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("run cue");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let tokyo = log("Asia/Tokyo", false);
    assert!(tokyo.contains("restore"), "{tokyo}");
    for line in tokyo.lines() {
        // 2026-11-22 12:55:34 +09:00  restore  a  a.md
        assert_eq!(line.get(19..27), Some(" +09:00 "), "{line}");
    }
    let utc = log("UTC", false);
    assert!(
        utc.lines().all(|l| l.get(19..27) == Some(" +00:00 ")),
        "{utc}"
    );
    for line in log("Asia/Tokyo", true).lines() {
        let time = line
            .split("\"time\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a time");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    }
}

/// A daemon that holds the workspace's lock but does not answer on its control socket
/// (busy merging a large file, stuck) is running: `status` says so, from the store, and
/// exits 0, rather than "not running" (which invites a second `start` that cannot run).
#[test]
fn status_of_a_daemon_that_does_not_answer_says_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    assert!(init_in(dir.path(), "laptop").status.success());
    // This process holds the lock, as a daemon does, and answers nothing.
    let _lock = cue_daemon::lock::DaemonLock::acquire(&dir.path().join(".cuedeck")).unwrap();
    let out = cue_in(dir.path(), &["sync", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["daemon"]["running"], true);
    assert_eq!(json["daemon"]["answering"], false);
    assert_eq!(json["daemon"]["pid"], std::process::id());
    let out = cue_in(dir.path(), &["sync", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("running, not answering"), "{text}");
}
