//! The executable bit across real daemons (docs/reference.md "Modes"): `chmod +x` and
//! `-x` sync as git does it, no other mode bit does, and a `chmod` made while the daemon
//! was stopped is found when it starts. A folder that keeps no modes (exFAT) takes no
//! bit from what its files show, and spreads none.

use cue_e2e::{Peer, Relay, pair, wait_until};

use crate::exfat::Exfat;

fn is_exec(peer: &Peer, rel: &str) -> bool {
    peer.mode(rel).is_some_and(|m| m & 0o100 != 0)
}

fn nothing_pending(peers: &[&Peer]) {
    wait_until("nothing pending", || {
        peers.iter().all(|p| p.status().0["pending_changes"] == 0)
    });
}

#[test]
fn chmod_plus_and_minus_x_sync_and_no_other_mode_bit_does() {
    let (_relay, a, b) = pair();
    a.write("run.sh", "#!/bin/sh\necho hi\n");
    a.chmod("run.sh", 0o644);
    wait_until("run.sh on bob", || b.read("run.sh").is_some());
    nothing_pending(&[&a, &b]);
    assert!(!is_exec(&b, "run.sh"));

    // Other bits are bob's own: taking group and others' read away syncs nothing, and
    // the +x that comes later keeps them as they are here.
    b.chmod("run.sh", 0o600);
    // The owner's x alone is the bit (git's rule): bob gets x where he has r.
    a.chmod("run.sh", 0o744);
    wait_until("run.sh executable on bob", || is_exec(&b, "run.sh"));
    assert_eq!(b.mode("run.sh"), Some(0o700));
    assert_eq!(b.read("run.sh"), a.read("run.sh"));
    assert_eq!(a.mode("run.sh"), Some(0o744));

    // -x on bob clears every x bit on alice, and nothing else.
    b.chmod("run.sh", 0o600);
    wait_until("run.sh no longer executable on alice", || {
        !is_exec(&a, "run.sh")
    });
    assert_eq!(a.mode("run.sh"), Some(0o644));
    assert_eq!(b.read("run.sh"), a.read("run.sh"));

    // A binary file created executable arrives executable, and an edit keeps the bit.
    std::fs::write(a.path("prog"), [0x7f, b'E', b'L', b'F', 0, 0xff]).unwrap();
    a.chmod("prog", 0o755);
    wait_until("prog executable on bob", || is_exec(&b, "prog"));
    assert_eq!(
        std::fs::read(b.path("prog")).unwrap(),
        [0x7f, b'E', b'L', b'F', 0, 0xff]
    );
    b.write("run.sh", "#!/bin/sh\necho bye\n");
    wait_until("bob's edit on alice", || {
        a.read("run.sh").as_deref() == Some("#!/bin/sh\necho bye\n")
    });
    assert!(is_exec(&a, "prog") && !is_exec(&a, "run.sh"));
    // The daemons' own mode changes do not echo back as changes.
    nothing_pending(&[&a, &b]);
    a.stop();
    b.stop();
}

#[test]
fn a_chmod_made_while_the_daemon_was_stopped_syncs_after_it_starts() {
    let (_relay, a, b) = pair();
    a.write("tool.sh", "echo tool\n");
    wait_until("tool.sh on bob", || b.read("tool.sh").is_some());
    nothing_pending(&[&a, &b]);
    a.stop();
    a.chmod("tool.sh", 0o755);
    a.start();
    wait_until("tool.sh executable on bob", || is_exec(&b, "tool.sh"));
    assert_eq!(b.read("tool.sh").as_deref(), Some("echo tool\n"));
    // And back, with the other daemon stopped this time.
    b.stop();
    b.chmod("tool.sh", 0o644);
    b.start();
    wait_until("tool.sh no longer executable on alice", || {
        !is_exec(&a, "tool.sh")
    });
    a.stop();
    b.stop();
}

/// `cue sync restore --at` brings back content, not a mode: an executable file stays
/// executable everywhere. `cue history` says which version made it executable.
#[test]
fn restore_at_keeps_the_executable_bit_and_history_shows_it() {
    let (_relay, a, b) = pair();
    a.write("run.sh", "echo one\n");
    wait_until("v1 on bob", || {
        b.read("run.sh").as_deref() == Some("echo one\n")
    });
    a.write("run.sh", "echo two\n");
    wait_until("v2 on bob", || {
        b.read("run.sh").as_deref() == Some("echo two\n")
    });
    a.chmod("run.sh", 0o755);
    wait_until("run.sh executable on bob", || is_exec(&b, "run.sh"));

    let history = |p: &Peer| -> Vec<serde_json::Value> {
        serde_json::from_str(&p.cue_ok(&["history", "run.sh", "--json"])).unwrap()
    };
    let h = history(&b);
    let marks: Vec<&serde_json::Value> = h.iter().map(|v| &v["mode_changed"]).collect();
    assert_eq!(
        marks,
        [
            &serde_json::json!("+x"),
            &serde_json::Value::Null,
            &serde_json::Value::Null
        ],
        "{h:#?}"
    );
    assert!(b.cue_ok(&["history", "run.sh"]).contains("; +x"));

    let oldest = h[2]["rev"].as_str().unwrap().to_string();
    a.cue_ok(&["sync", "restore", "run.sh", "--at", &oldest]);
    wait_until("the restored version on bob", || {
        b.read("run.sh").as_deref() == Some("echo one\n")
    });
    nothing_pending(&[&a, &b]);
    assert!(is_exec(&a, "run.sh") && is_exec(&b, "run.sh"));
    a.stop();
    b.stop();
}

/// Bob's folder is exFAT: every file reads 0600 whatever was asked (the mount's `fmask`),
/// and `chmod` does nothing. His daemon finds it at start and never takes a bit from what
/// his files show: alice's executable file stays executable, nothing is pending, and
/// bob's edits reach her with the bit kept, before and after his daemon starts again.
#[test]
fn a_folder_that_keeps_no_modes_spreads_no_bit() {
    let Some(exfat) = Exfat::mount() else {
        return;
    };
    let relay = Relay::start();
    let a = Peer::new("alice");
    let b = Peer::new_in("bob", &exfat.path());
    a.write("run.sh", "#!/bin/sh\necho hi\n");
    a.chmod("run.sh", 0o755);
    a.write("note.md", "hello\n");
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    wait_until("both files on bob", || {
        b.read("run.sh").as_deref() == Some("#!/bin/sh\necho hi\n")
            && b.read("note.md").as_deref() == Some("hello\n")
    });
    assert_eq!(b.mode("run.sh"), Some(0o600), "the mount's mode");
    nothing_pending(&[&a, &b]);
    assert_eq!(b.status().0["modes_kept"], false);
    assert_eq!(a.status().0["modes_kept"], true);
    assert!(
        b.cue_ok(&["sync", "status"])
            .contains("keeps no Unix modes")
    );
    let no_minus_x = |p: &Peer| {
        let h: Vec<serde_json::Value> =
            serde_json::from_str(&p.cue_ok(&["history", "run.sh", "--json"])).unwrap();
        assert!(
            h.iter().all(|v| v["mode_changed"] != "-x"),
            "{}: {h:#?}",
            p.name
        );
    };

    // Bob edits: the content reaches alice, the bit stays.
    b.write("run.sh", "#!/bin/sh\necho bye\n");
    wait_until("bob's edit on alice", || {
        a.read("run.sh").as_deref() == Some("#!/bin/sh\necho bye\n")
    });
    nothing_pending(&[&a, &b]);
    assert!(is_exec(&a, "run.sh"));
    assert_eq!(a.mode("run.sh"), Some(0o755));
    no_minus_x(&a);

    // Alice's edits and chmods still reach bob's documents: a -x there and an edit
    // by bob keep it.
    a.chmod("note.md", 0o755);
    a.write("run.sh", "#!/bin/sh\necho again\n");
    wait_until("alice's edit on bob", || {
        b.read("run.sh").as_deref() == Some("#!/bin/sh\necho again\n")
    });
    nothing_pending(&[&a, &b]);
    assert!(is_exec(&a, "note.md") && is_exec(&a, "run.sh"));

    // Bob's daemon starts again: its scan finds every file as it left it.
    b.stop();
    b.start();
    b.cue_ok(&["sync", "now", "--timeout", "30s"]);
    b.write("note.md", "hello, from bob\n");
    wait_until("bob's edit after his restart on alice", || {
        a.read("note.md").as_deref() == Some("hello, from bob\n")
    });
    nothing_pending(&[&a, &b]);
    assert!(is_exec(&a, "note.md") && is_exec(&a, "run.sh"));
    no_minus_x(&a);
    let status = b.cue_ok(&["sync", "status"]);
    assert!(!status.contains("error"), "{status}");
    a.stop();
    b.stop();
}
