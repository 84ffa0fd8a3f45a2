//! The executable bit (docs/reference.md "Modes"): synced by git's rule, as the owner's
//! `x` and nothing else of the mode; last writer wins; a `chmod` alone is a change.

use cue_core::Config;
use cue_sim::World;

#[test]
fn a_chmod_alone_syncs_both_ways() {
    let mut w = World::online(2, 11);
    w.write(0, "run.sh", b"#!/bin/sh\necho hi\n");
    w.settle_converged();
    assert_eq!(w.is_exec(1, "run.sh"), Some(false));
    w.chmod(0, "run.sh", true);
    assert_eq!(w.status(0).pending_changes, 1, "a chmod alone is a change");
    w.settle_converged();
    assert_eq!(w.is_exec(1, "run.sh"), Some(true));
    assert_eq!(w.read(1, "run.sh").as_deref(), Some("#!/bin/sh\necho hi\n"));
    w.chmod(1, "run.sh", false);
    w.settle_converged();
    assert_eq!(w.is_exec(0, "run.sh"), Some(false));
}

#[test]
fn concurrent_chmod_and_content_edit_both_land() {
    let mut w = World::online(2, 11);
    w.write(0, "run.sh", b"echo one\n");
    w.settle_converged();
    w.disconnect(1);
    w.chmod(0, "run.sh", true);
    w.write(1, "run.sh", b"echo one\necho two\n");
    w.connect(1);
    w.settle_converged();
    for peer in 0..2 {
        assert_eq!(w.is_exec(peer, "run.sh"), Some(true), "peer {peer}");
        assert_eq!(
            w.read(peer, "run.sh").as_deref(),
            Some("echo one\necho two\n"),
            "peer {peer}"
        );
    }
}

/// The edit arrives while the peer's own `chmod` has not been reported yet: the write is
/// refused (the disk's hash covers the bit), the chmod is merged, and both stand.
#[test]
fn a_chmod_not_yet_reported_is_merged_not_overwritten() {
    let mut w = World::online(2, 11);
    w.write(0, "run.sh", b"echo one\n");
    w.settle_converged();
    // Peer 1's user runs chmod +x; the watcher has not reported it.
    w.peers[1].exec.insert("run.sh".into());
    w.write(0, "run.sh", b"echo one\necho two\n");
    w.settle_converged();
    for peer in 0..2 {
        assert_eq!(w.is_exec(peer, "run.sh"), Some(true), "peer {peer}");
        assert_eq!(
            w.read(peer, "run.sh").as_deref(),
            Some("echo one\necho two\n")
        );
    }
}

#[test]
fn concurrent_chmods_pick_one_bit_everywhere() {
    let mut w = World::online(3, 11);
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    w.settle_converged();
    w.disconnect(1);
    w.disconnect(2);
    w.chmod(1, "run.sh", false);
    w.chmod(2, "run.sh", false);
    w.chmod(2, "run.sh", true);
    w.connect_all();
    // `converged` compares the bit on every peer.
    w.settle_converged();
}

#[test]
fn the_bit_survives_a_rename() {
    let mut w = World::online(2, 11);
    w.write(0, "tool.sh", b"echo\n");
    w.chmod(0, "tool.sh", true);
    w.settle_converged();
    w.rename(1, "tool.sh", "bin/tool.sh");
    w.settle_converged();
    assert_eq!(w.is_exec(0, "bin/tool.sh"), Some(true));
    assert_eq!(w.is_exec(0, "tool.sh"), None);
}

#[test]
fn a_binary_files_bit_syncs() {
    let mut w = World::online(2, 11);
    let elf = [0x7f, b'E', b'L', b'F', 0, 1, 2, 0xff];
    w.write(0, "prog", &elf);
    w.chmod(0, "prog", true);
    w.settle_converged();
    assert_eq!(w.is_exec(1, "prog"), Some(true));
    assert_eq!(
        w.peers[1].disk.get("prog").map(Vec::as_slice),
        Some(&elf[..])
    );
}

/// A new executable file reaches a new peer: documents sent with their content
/// (`Adopt`) carry no mode, so an executable one must not go that way.
#[test]
fn an_executable_file_reaches_a_peer_that_joins_later() {
    // With the document loaded (sent from memory) and after a restart (from the store).
    for restart in [false, true] {
        let mut w = World::new(2, 3, Config::default());
        w.write(0, "a.sh", b"echo a\n");
        w.chmod(0, "a.sh", true);
        w.write(0, "b.md", b"plain\n");
        if restart {
            w.restart(0);
        }
        w.connect_all();
        w.settle_converged();
        assert_eq!(w.is_exec(1, "a.sh"), Some(true), "restart {restart}");
        assert_eq!(w.is_exec(1, "b.md"), Some(false), "restart {restart}");
        assert_eq!(w.status(1).refused.bad_documents, 0, "restart {restart}");
    }
}

/// A file that is executable from its first save (its first document goes out whole
/// at once).
#[test]
fn a_file_created_executable_arrives_executable() {
    let mut w = World::online(2, 11);
    w.peers[0].exec.insert("new.sh".into());
    w.write(0, "new.sh", b"echo\n");
    w.settle_converged();
    assert_eq!(w.is_exec(1, "new.sh"), Some(true));
    assert_eq!(w.status(1).refused.bad_documents, 0);
}

/// `chmod +x` while the daemon was stopped: the start-up scan compares the bit too.
#[test]
fn a_chmod_made_while_stopped_is_found_at_start_up() {
    let mut w = World::online(2, 11);
    w.write(0, "run.sh", b"echo\n");
    w.settle_converged();
    w.disconnect(0);
    w.peers[0].exec.insert("run.sh".into());
    w.restart(0);
    w.connect(0);
    w.settle_converged();
    assert_eq!(w.is_exec(1, "run.sh"), Some(true));
}

/// The file this peer wrote executable comes back through its watcher as no change, and
/// a save that keeps the bit changes only the content.
#[test]
fn own_writes_of_the_bit_do_not_echo() {
    let mut w = World::online(2, 11);
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    w.settle_converged();
    let pending = w.status(1).pending_changes;
    w.chmod(1, "run.sh", true);
    assert_eq!(w.status(1).pending_changes, pending);
    w.write(1, "run.sh", b"echo\necho\n");
    w.settle_converged();
    assert_eq!(w.is_exec(0, "run.sh"), Some(true));
}

/// `cue history` says which versions changed the bit.
#[test]
fn history_says_plus_x_and_minus_x() {
    let mut w = World::online(2, 11);
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    w.write(0, "run.sh", b"echo\necho\n");
    w.settle_converged();
    w.chmod(1, "run.sh", false);
    w.settle_converged();
    let p = &mut w.peers[0];
    let h = p.engine.history("run.sh", &mut p.store).unwrap();
    let marks: Vec<Option<bool>> = h.iter().map(|v| v.exec).collect();
    // Newest first: -x, the edit, +x, the creation.
    assert_eq!(marks, [Some(false), None, Some(true), None]);
    assert_eq!((h[2].added, h[2].removed), (0, 0));
}
