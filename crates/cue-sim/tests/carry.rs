//! The daemon's carry-out rules (`cue_core::carry`) as the simulation runs them: the
//! start-up scan, refused writes, and writes the disk cannot make.

use cue_core::{ActivityKind, Config};
use cue_sim::World;

fn settle(w: &mut World) {
    w.settle(10);
    if let Err(e) = w.converged() {
        panic!("not converged: {e}");
    }
}

/// A file renamed while the daemon was stopped is found by content at start-up and synced
/// as a rename: a peer's concurrent edit of the old name lands in the new one, instead of
/// the old name coming back beside a copy.
#[test]
fn a_rename_while_the_daemon_was_stopped_is_a_rename() {
    let mut w = World::new(2, 11, Config::default());
    w.connect_all();
    w.write(0, "notes/a.md", b"hello\n");
    settle(&mut w);
    w.disconnect(1);
    w.write(1, "notes/a.md", b"hello\nfrom p1\n");
    // p0's daemon is stopped; the user renames the file in the meantime.
    w.disconnect(0);
    let content = w.peers[0].disk.remove("notes/a.md").unwrap();
    w.peers[0].disk.insert("notes/b.md".into(), content);
    w.restart(0);
    assert!(
        w.peers[0]
            .activity
            .iter()
            .any(|a| a.kind == ActivityKind::Rename && a.path.as_deref() == Some("notes/b.md")),
        "the start-up scan did not see a rename: {:?}",
        w.peers[0].activity
    );
    w.connect_all();
    settle(&mut w);
    for p in 0..2 {
        assert_eq!(w.read(p, "notes/a.md"), None, "peer {p}");
        assert_eq!(
            w.read(p, "notes/b.md").as_deref(),
            Some("hello\nfrom p1\n"),
            "peer {p}"
        );
    }
}

/// More than half of a workspace missing at start-up pauses deletions, as the daemon's
/// guard does: nothing is deleted on the other peer.
#[test]
fn most_files_missing_at_start_up_pause_deletions() {
    let mut w = World::new(2, 12, Config::default());
    w.connect_all();
    let files: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("n{i}.md"), format!("note {i}\n").into_bytes()))
        .collect();
    w.write_many(0, &files);
    settle(&mut w);
    w.disconnect(0);
    for i in 0..20 {
        w.peers[0].disk.remove(&format!("n{i}.md"));
    }
    w.restart(0);
    assert!(w.peers[0].guard.is_some());
    w.connect_all();
    w.settle(10);
    assert_eq!(
        w.peers[1].disk.len(),
        30,
        "a deletion went through the guard"
    );
}
