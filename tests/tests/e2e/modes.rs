//! The executable bit across real daemons (docs/reference.md "Modes"): `chmod +x` and
//! `-x` sync as git does it, no other mode bit does, and a `chmod` made while the daemon
//! was stopped is found when it starts.

use cue_e2e::{Peer, pair, wait_until};

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
