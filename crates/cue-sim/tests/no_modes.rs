//! A folder that keeps no Unix modes (exFAT, FAT, some network mounts; docs/reference.md
//! §2.4 "Modes"): what its files' modes say is no news. The device never changes anyone's
//! bit, and everything else syncs as anywhere.

use cue_core::Config;
use cue_sim::World;

/// Peer 1 keeps no modes; peers 0 and 2 do.
fn world() -> World {
    let mut w = World::new(3, 17, Config::default());
    w.make_modes_unkept(1);
    w.connect_all();
    w.settle(5);
    w
}

fn settle(w: &mut World) {
    w.settle_converged();
    for peer in 0..3 {
        assert_eq!(w.status(peer).pending_changes, 0, "peer {peer}: pending");
    }
}

/// The `exec` marks of the versions of `path` as peer 0 has them, newest first.
fn marks(w: &mut World, path: &str) -> Vec<Option<bool>> {
    let p = &mut w.peers[0];
    let h = p.engine.history(path, &mut p.store).expect("history");
    h.iter().map(|v| v.exec).collect()
}

#[test]
fn an_executable_file_reaches_a_peer_without_modes_and_stays_executable() {
    let mut w = world();
    w.write(0, "run.sh", b"#!/bin/sh\necho hi\n");
    w.chmod(0, "run.sh", true);
    settle(&mut w);
    assert_eq!(w.read(1, "run.sh").as_deref(), Some("#!/bin/sh\necho hi\n"));
    assert_eq!(w.is_exec(1, "run.sh"), Some(false), "the folder shows no x");
    for peer in [0, 2] {
        assert_eq!(w.is_exec(peer, "run.sh"), Some(true), "peer {peer}");
    }
    // Nothing came back from peer 1: the creation and the chmod, no `-x`.
    assert_eq!(marks(&mut w, "run.sh"), [Some(true), None]);
    // Nothing loops either.
    w.settle(20);
    assert_eq!(marks(&mut w, "run.sh"), [Some(true), None]);

    // An edit there reaches the others with the bit kept.
    w.write(1, "run.sh", b"#!/bin/sh\necho hi\necho there\n");
    settle(&mut w);
    for peer in [0, 2] {
        assert_eq!(
            w.read(peer, "run.sh").as_deref(),
            Some("#!/bin/sh\necho hi\necho there\n")
        );
        assert_eq!(w.is_exec(peer, "run.sh"), Some(true), "peer {peer}");
    }
    assert_eq!(marks(&mut w, "run.sh"), [None, Some(true), None]);
}

#[test]
fn a_chmod_on_a_peer_with_modes_still_reaches_the_others() {
    let mut w = world();
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    settle(&mut w);
    w.chmod(2, "run.sh", false);
    settle(&mut w);
    assert_eq!(w.is_exec(0, "run.sh"), Some(false));
    // Peer 1's document has it too: its own save keeps `-x`.
    w.chmod(0, "run.sh", true);
    settle(&mut w);
    assert_eq!(w.is_exec(2, "run.sh"), Some(true));
    assert_eq!(
        marks(&mut w, "run.sh"),
        [Some(true), Some(false), Some(true), None]
    );
}

/// A `chmod` on the folder that keeps no modes does nothing, and a file it makes is not
/// executable anywhere.
#[test]
fn a_peer_without_modes_changes_no_bit() {
    let mut w = world();
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    w.write(1, "new.md", b"hello\n");
    settle(&mut w);
    w.chmod(1, "run.sh", false);
    w.chmod(1, "new.md", true);
    settle(&mut w);
    assert_eq!(w.is_exec(0, "run.sh"), Some(true));
    assert_eq!(w.is_exec(0, "new.md"), Some(false));
    assert_eq!(marks(&mut w, "run.sh"), [Some(true), None]);
    assert_eq!(marks(&mut w, "new.md"), [None]);
}

/// A rename there keeps the bit (the document's).
#[test]
fn a_rename_on_a_peer_without_modes_keeps_the_bit() {
    let mut w = world();
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    settle(&mut w);
    w.rename(1, "run.sh", "go.sh");
    settle(&mut w);
    assert_eq!(w.is_exec(0, "go.sh"), Some(true));
    assert_eq!(w.is_exec(2, "go.sh"), Some(true));
    assert_eq!(marks(&mut w, "go.sh"), [Some(true), None]);
}

/// Its daemon starts again: the start-up scan finds every file as the engine believes
/// it (the bytes), and nothing changes.
#[test]
fn a_restart_of_the_peer_without_modes_changes_nothing() {
    let mut w = world();
    w.write(0, "run.sh", b"echo\n");
    w.chmod(0, "run.sh", true);
    w.write(0, "note.md", b"text\n");
    settle(&mut w);
    let history = (marks(&mut w, "run.sh"), marks(&mut w, "note.md"));
    for _ in 0..2 {
        w.restart(1);
        settle(&mut w);
        assert_eq!((marks(&mut w, "run.sh"), marks(&mut w, "note.md")), history);
        assert_eq!(w.is_exec(0, "run.sh"), Some(true));
    }
    // Offline while peer 0 edits and chmods: caught up after the restart.
    w.disconnect(1);
    w.write(0, "run.sh", b"echo\necho\n");
    w.chmod(0, "note.md", true);
    w.restart(1);
    w.connect(1);
    settle(&mut w);
    assert_eq!(w.read(1, "run.sh").as_deref(), Some("echo\necho\n"));
    assert_eq!(w.is_exec(0, "run.sh"), Some(true));
    assert_eq!(w.is_exec(2, "note.md"), Some(true));
}
