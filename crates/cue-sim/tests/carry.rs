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

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A peer whose clock is far ahead must not expire the others' tombstones at once: its
/// purge would drop the deleted file's document for everyone, and a concurrent offline
/// edit (which brings a deleted file back) would be lost. Expiry is decided from when
/// each peer itself saw the tombstone.
#[test]
fn a_peer_with_a_clock_far_ahead_loses_no_edit_and_no_restore() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(3, 13, config);
    w.peers[2].clock_offset_ms = tombstone_ms + 10 * DAY_MS;
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    settle(&mut w);
    w.disconnect(1);
    w.write(1, "a.md", b"one\ntwo, written offline\n");
    w.delete(0, "a.md");
    // Ticks pass on every peer; p2 sees a tombstone written "10 days before tombstone_days
    // ago" by its clock.
    for _ in 0..5 {
        w.advance(1_000);
        w.settle(2);
    }
    w.connect(1);
    settle(&mut w);
    for p in 0..3 {
        assert_eq!(
            w.read(p, "a.md").as_deref(),
            Some("one\ntwo, written offline\n"),
            "peer {p} lost the offline edit"
        );
    }
    // And a deletion can still be restored seconds later, on any peer.
    w.delete(2, "a.md");
    settle(&mut w);
    w.advance(5_000);
    settle(&mut w);
    w.restore(0, "a.md").expect("restorable");
    settle(&mut w);
    assert!(w.read(2, "a.md").is_some());
}

/// Tombstones still expire, by each peer's own clock, after `tombstone_ms`.
#[test]
fn tombstones_expire_after_tombstone_days_of_a_peers_own_clock() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(2, 14, config);
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    settle(&mut w);
    w.delete(0, "a.md");
    settle(&mut w);
    w.advance(tombstone_ms / 2);
    assert!(w.restore(1, "a.md").is_ok());
    w.delete(1, "a.md");
    settle(&mut w);
    w.advance(tombstone_ms + 1_000);
    w.advance(1_000);
    settle(&mut w);
    assert!(w.restore(0, "a.md").is_err(), "the tombstone never expired");
}
