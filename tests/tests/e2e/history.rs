//! A file's history (docs/reference.md §1.5): `cue history`, `cue show --at`, `cue sync
//! restore --at`, with or without a daemon.

use cue_e2e::*;

fn revs(p: &Peer, rel: &str) -> Vec<serde_json::Value> {
    let out = p.cue_ok(&["history", rel, "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn history_show_and_restore_at_a_version() {
    let (_relay, a, b) = pair();
    let v1 = "---\ntitle: Plan\n---\nfirst line\n";
    let v2 = "---\ntitle: Plan\n---\nfirst line\nsecond line\n";
    let v3 = "---\ntitle: The plan\n---\nfirst line\nsecond line\nbob's line\n";
    a.write("plan.md", v1);
    wait_for_file(&b, "plan.md", "v1", |c| c == v1);
    a.write("plan.md", v2);
    wait_for_file(&b, "plan.md", "v2", |c| c == v2);
    b.write("plan.md", v3);
    wait_for_file(&a, "plan.md", "v3", |c| c == v3);
    // Into a folder the watcher already watches (a file there made it sync).
    a.write("notes/readme.md", "notes\n");
    wait_for_file(&b, "notes/readme.md", "the folder", |_| true);
    std::fs::rename(a.path("plan.md"), a.path("notes/plan.md")).unwrap();
    wait_for_file(&b, "notes/plan.md", "the rename", |c| c == v3);

    // Newest first, by whom, what changed; the same on both devices, across the rename.
    let h = revs(&b, "notes/plan.md");
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[0]["device"], "bob");
    assert_eq!(
        (&h[0]["lines_added"], &h[0]["lines_removed"]),
        (&2.into(), &1.into())
    );
    assert_eq!(h[0]["frontmatter_changed"], serde_json::json!(["title"]));
    assert_eq!(h[0]["summary"], "+2 -1 lines; frontmatter: title");
    assert_eq!(h[1]["device"], "alice");
    assert_eq!(h[2]["size"], v1.len());
    assert_eq!(revs(&a, "notes/plan.md"), h);
    let text = b.cue_ok(&["history", "notes/plan.md"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().next().unwrap().contains("bob"), "{text}");
    assert!(text.contains("frontmatter: title"), "{text}");

    // A version, as it was.
    let oldest = h[2]["rev"].as_str().unwrap();
    assert_eq!(b.cue_ok(&["show", "notes/plan.md", "--at", oldest]), v1);
    let out = b.cue(&["show", "notes/plan.md", "--at", "ffffffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cue history"));

    // Brought back as a new edit, everywhere.
    let out = a.cue_ok(&["sync", "restore", "notes/plan.md", "--at", oldest]);
    assert!(out.contains("Restored"), "{out}");
    wait_for_file(&b, "notes/plan.md", "the restored version", |c| c == v1);
    wait_until("the restore to be the newest version", || {
        let h = revs(&b, "notes/plan.md");
        h.len() == 4 && h[0]["device"] == "alice"
    });

    // Not over changes cue has not taken in (no daemon to take them).
    a.stop();
    a.write("notes/plan.md", "unsynced edit\n");
    let out = a.cue(&["sync", "restore", "notes/plan.md", "--at", oldest]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not taken in"));
    assert_eq!(a.read("notes/plan.md").as_deref(), Some("unsynced edit\n"));
    b.stop();
}

#[test]
fn restore_takes_several_paths() {
    let (_relay, a, b) = pair();
    a.write("one.md", "1\n");
    a.write("two.md", "2\n");
    wait_for_file(&b, "two.md", "the files", |_| true);
    wait_for_file(&b, "one.md", "the files", |_| true);
    a.remove("one.md");
    a.remove("two.md");
    wait_until("the deletions to reach bob", || {
        b.read("one.md").is_none() && b.read("two.md").is_none()
    });
    let out = b.cue_ok(&["sync", "restore", "one.md", "two.md"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    wait_for_file(&a, "one.md", "one restored", |c| c == "1\n");
    wait_for_file(&a, "two.md", "two restored", |c| c == "2\n");
    let out = b.cue(&["sync", "restore", "one.md", "two.md", "--at", "abcd"]);
    // A usage error: --at names a version of one file.
    assert_eq!(out.status.code(), Some(2));
    a.stop();
    b.stop();
}

/// `cue export --automerge`: every document loads in the reference JavaScript automerge,
/// renders by docs/schema.md to the exact bytes on disk, and saves again to the same
/// bytes (`tests/automerge-js/check.mjs`; `.ci/run` installs its npm package).
#[test]
fn an_export_reads_back_in_javascript_automerge_byte_for_byte() {
    let checker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("automerge-js");
    if !checker.join("node_modules/@automerge/automerge").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "tests/automerge-js has no node_modules: .ci/run runs npm ci there"
        );
        eprintln!("npm ci in tests/automerge-js first: the export check is skipped");
        return;
    }
    let (_relay, a, b) = pair();
    a.write(
        "notes/plan.md",
        "---\n# kept comment\ntitle: Plan\ntags: [a, b]\nsteps:\n  - one\n  - two\n---\n# Plan\n\nfirst\n",
    );
    a.write("raw.md", "---\nnot: [valid\n---\nbody\n");
    a.write("plain.txt", "héllo wörld\n");
    std::fs::write(a.path("image.bin"), [0xffu8, 0, 1, 2, 0xfe]).unwrap();
    // A file made executable: its document has `exec`.
    a.write("run.sh", "#!/bin/sh\n");
    for f in ["plain.txt", "raw.md", "notes/plan.md", "run.sh"] {
        wait_for_file(&b, f, "the files", |_| true);
    }
    a.chmod("run.sh", 0o755);
    wait_until("run.sh executable on bob", || {
        b.mode("run.sh").is_some_and(|m| m & 0o100 != 0)
    });
    // Edits from both devices: documents with two actors' changes.
    b.write(
        "notes/plan.md",
        "---\n# kept comment\ntitle: The plan\ntags: [a, b, c]\nsteps:\n  - one\n  - two\n  - three\n---\n# Plan\n\nfirst\nsecond, from bob\n",
    );
    wait_for_file(&a, "notes/plan.md", "bob's edit", |c| {
        c.contains("from bob")
    });
    wait_until("the binary file on bob", || {
        b.read("image.bin").is_none() && b.path("image.bin").exists()
    });
    // Frontmatter taken away on one device while the other, offline, edits a field:
    // the edit shows on both (docs/schema.md, `fm_hidden`); and taken away with
    // nothing edited elsewhere, it stays away.
    a.write("away.md", "---\ntitle: Away\ntags: [a]\n---\nbody\n");
    a.write("gone.md", "---\ntitle: Gone\n---\nbody\n");
    a.write("mended.md", "---\ntags: [a\n---\nbody\n");
    for f in ["away.md", "gone.md", "mended.md"] {
        wait_for_file(&b, f, "the notes with frontmatter", |_| true);
    }
    b.stop();
    a.write("away.md", "body\n");
    a.write("gone.md", "body\n");
    b.write("away.md", "---\ntitle: Away\ntags: [a, bob]\n---\nbody\n");
    // Invalid YAML made valid on one device while the other edits the text.
    a.write("mended.md", "---\ntags: [a]\n---\nbody\n");
    b.write("mended.md", "---\ntags: [a, b\n---\nbody\n");
    b.start();
    let both = "---\ntitle: Away\ntags: [a, bob]\n---\nbody\n";
    wait_for_file(&a, "away.md", "bob's item", |c| c == both);
    wait_for_file(&b, "away.md", "the same on bob", |c| c == both);
    wait_for_file(&b, "gone.md", "the removal", |c| c == "body\n");
    let both = "---\ntags: [a, b\ntags: [a]\n---\nbody\n";
    wait_for_file(&a, "mended.md", "bob's text edit", |c| c == both);
    wait_for_file(&b, "mended.md", "the same on bob", |c| c == both);

    let out_dir = tempfile::tempdir().unwrap();
    let export = out_dir.path().join("export");
    let said = a.cue_ok(&["export", "--automerge", export.to_str().unwrap()]);
    assert!(said.contains("Exported 8 files"), "{said}");
    let run = std::process::Command::new("node")
        .arg(checker.join("check.mjs"))
        .arg(&export)
        .arg(a.path(""))
        .current_dir(&checker)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        report.lines().filter(|l| l.contains(": ok")).count(),
        8,
        "{report}"
    );
    // Not over an earlier export.
    let again = a.cue(&["export", "--automerge", export.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    a.stop();
    b.stop();
}

/// `cue sync now`: exit 0 once the online peers and this device hold each other's
/// changes (with or without a daemon here), exit 1 with the reason when no peer is
/// reachable in time.
#[test]
fn sync_now_exits_once_synced_or_says_why_not() {
    let (relay, a, b) = pair();
    a.write("x.md", "x\n");
    wait_for_file(&b, "x.md", "x", |_| true);
    // No daemon on bob: one is started for the while, and stopped after.
    b.stop();
    b.write("offline.md", "written while stopped\n");
    a.write("x.md", "x\ny\n");
    // A save is a change once alice's daemon has taken it in (its history shows it).
    let taken_in = |p: &Peer, rel: &str, n: usize| {
        let out = p.cue(&["history", rel, "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() >= n))
    };
    wait_until("alice to take in her edit", || taken_in(&a, "x.md", 2));
    let out = b.cue_ok(&["sync", "now", "--timeout", "30s"]);
    assert!(out.starts_with("Synced with alice"), "{out}");
    assert_eq!(
        a.read("offline.md").as_deref(),
        Some("written while stopped\n")
    );
    assert_eq!(b.read("x.md").as_deref(), Some("x\ny\n"));
    assert!(!b.running(), "the daemon sync now started is still running");
    // With the daemon running.
    b.start();
    a.write("z.md", "z\n");
    wait_until("alice to take in z.md", || taken_in(&a, "z.md", 1));
    let out = b.cue_ok(&["sync", "now"]);
    assert!(out.starts_with("Synced with alice"), "{out}");
    assert_eq!(b.read("z.md").as_deref(), Some("z\n"));
    // Nobody to sync with.
    a.stop();
    let out = b.cue(&["sync", "now", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no other device of the workspace is online"),
        "{err}"
    );
    drop(relay);
    b.stop();
}
