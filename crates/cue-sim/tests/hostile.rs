//! A member that sends what no honest engine would: each attack is bounded, counted and
//! leaves the rest working.

use cue_core::wire::{Item, Message, encode};
use cue_core::{Config, Input};
use cue_sim::World;

fn world() -> World {
    let mut w = World::new(2, 21, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"x\n");
    w.settle(5);
    w
}

/// Empty pieces of an item announced as `u32::MAX` pieces long cost memory like any
/// piece: the item is dropped once its pieces pass the bound, and counted.
#[test]
fn empty_chunk_pieces_cannot_grow_memory_without_bound() {
    let mut w = world();
    let from = w.peers[0].device;
    let before = w.peers[1].engine.counters().dropped_chunks;
    // 64 MiB of bound / 64 bytes a piece: about a million empty pieces fill it.
    let per_message = 50_000u32;
    for m in 0..24u32 {
        let items = (0..per_message)
            .map(|i| Item::Chunk {
                id: 7,
                index: m * per_message + i,
                total: u32::MAX,
                bytes: Vec::new(),
            })
            .collect();
        let bytes = encode(&Message { items });
        w.input(1, Input::Message { from, bytes });
    }
    assert!(
        w.peers[1].engine.counters().dropped_chunks > before,
        "1.2 million empty pieces were all kept"
    );
    // And the peer still syncs.
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
}

/// A member (hostile, or whose folder vanished) deletes every file at once: the others
/// hold the deletions, say so, and nothing is deleted until the user decides. `restore .`
/// brings everything back everywhere.
#[test]
fn a_peer_deleting_most_files_at_once_is_held_and_can_be_undone() {
    let mut w = World::new(3, 22, Config::default());
    w.connect_all();
    let files: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("n{i}.md"), format!("note {i}\n").into_bytes()))
        .collect();
    w.write_many(0, &files);
    w.settle(10);
    for (p, _) in &files {
        w.delete(2, p);
    }
    w.settle(10);
    // Hours later (tombstone expiry must not purge a held deletion either).
    w.advance(3_600_000);
    w.settle(5);
    for p in 0..2 {
        assert_eq!(w.peers[p].disk.len(), 30, "peer {p} deleted files");
        let paused = w.status(p).deletions_paused.expect("deletions paused");
        assert_eq!(paused.count, 30);
        assert!(paused.reason.contains("p2"), "{}", paused.reason);
    }
    w.restore(0, ".").expect("restore .");
    w.settle(10);
    for p in 0..3 {
        assert_eq!(w.peers[p].disk.len(), 30, "peer {p}");
    }
    assert!(w.status(0).deletions_paused.is_none());
    assert!(w.status(1).deletions_paused.is_none());
}

/// `apply-deletions` lets held deletions through, on that peer.
#[test]
fn held_deletions_go_through_when_applied() {
    let mut w = World::new(2, 23, Config::default());
    w.connect_all();
    let files: Vec<(String, Vec<u8>)> = (0..25)
        .map(|i| (format!("d/n{i}.md"), format!("note {i}\n").into_bytes()))
        .collect();
    w.write_many(0, &files);
    w.write(0, "keep.md", b"keep\n");
    w.settle(10);
    for (p, _) in &files {
        w.delete(0, p);
    }
    w.settle(10);
    assert_eq!(w.peers[1].disk.len(), 26);
    assert!(w.status(1).deletions_paused.is_some());
    w.apply_deletions(1);
    w.settle(10);
    assert_eq!(w.peers[1].disk.len(), 1);
    assert!(w.status(1).deletions_paused.is_none());
    // A few deletions later are not held.
    w.write(0, "x.md", b"x\n");
    w.settle(10);
    w.delete(0, "x.md");
    w.settle(10);
    assert_eq!(w.read(1, "x.md"), None);
}
