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
