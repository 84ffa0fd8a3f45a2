//! Honest changes travel through other members with their authors' seals (docs/security.md,
//! "Forged authorship"), whatever order they come in and whatever restarts come between:
//! a member never holds a change it cannot pass on as its author's.

use cue_core::Config;
use cue_sim::World;

/// Four peers, the first three online (the fourth is the new peer that will meet p2
/// alone). Documents are stored whole at each change: automerge's `save` keeps the
/// changes it set aside, as the stored form of a long-running daemon's documents does.
fn three_of_four(seed: u64) -> World {
    let config = Config {
        compact_after: 1,
        ..Config::default()
    };
    let mut w = World::new(4, seed, config);
    for p in 0..3 {
        w.connect(p);
    }
    w
}

/// p1's new file reaches p2 before p0's new file, on which p1's index change depends:
/// automerge keeps p1's change aside until p0's comes, and p1's seal for it waits too.
/// p2 restarts meanwhile, and catches up from p0 alone. Then a new peer that can catch up
/// only from p2 must still take p1's change as p1's: the seal that waited was lost at the
/// restart, and p2 sent p1's change with no seal that reached it, refused as forged by
/// every peer for ever (found by the random schedules, seed 143).
#[test]
fn a_seal_waiting_for_its_changes_survives_a_restart() {
    for seed in 0..4 {
        let mut w = three_of_four(seed);
        w.write(0, "a.md", b"a\n");
        w.settle(10);
        w.write(0, "c.md", b"c\n");
        w.deliver_between(0, 1);
        w.write(1, "b.md", b"b\n");
        w.deliver_between(1, 2);
        // p2 makes a file too, so its index (with p1's change set aside) is stored.
        w.write(2, "d.md", b"d\n");
        w.restart(2);
        w.disconnect(1);
        w.settle(10);
        for path in ["a.md", "b.md", "c.md", "d.md"] {
            assert!(w.read(2, path).is_some(), "seed {seed}: p2 lacks {path}");
        }
        // A new peer meets p2 alone.
        w.disconnect(0);
        w.connect(3);
        w.settle(10);
        for path in ["a.md", "b.md", "c.md", "d.md"] {
            assert!(
                w.read(3, path).is_some(),
                "seed {seed}: the new peer lacks {path}: {:?}",
                w.peers[3].engine.counters()
            );
        }
        assert_eq!(
            w.peers[3].engine.counters().forged_changes,
            0,
            "seed {seed}"
        );
    }
}

/// The same for a file's document: p1's edit reaches p2 before p0's edit it builds on,
/// and p2 restarts before p0's comes.
#[test]
fn a_seal_waiting_for_a_files_changes_survives_a_restart() {
    for seed in 0..4 {
        let mut w = three_of_four(seed);
        w.write(0, "a.md", b"one\n");
        w.settle(10);
        w.write(0, "a.md", b"one\ntwo\n");
        w.deliver_between(0, 1);
        w.write(1, "a.md", b"one\ntwo\nthree\n");
        w.deliver_between(1, 2);
        // p2 edits the file too, so its document (with p1's edit set aside) is stored.
        w.write(2, "a.md", b"zero\none\n");
        w.restart(2);
        w.disconnect(1);
        w.settle(10);
        let merged = "zero\none\ntwo\nthree\n";
        assert_eq!(w.read(2, "a.md").as_deref(), Some(merged), "seed {seed}");
        w.disconnect(0);
        w.connect(3);
        w.settle(10);
        assert_eq!(
            w.read(3, "a.md").as_deref(),
            Some(merged),
            "seed {seed}: {:?}",
            w.peers[3].engine.counters()
        );
        assert_eq!(
            w.peers[3].engine.counters().forged_changes,
            0,
            "seed {seed}"
        );
    }
}

/// p0's store and folder are put back from a backup after three runs it made since (each
/// with an edit and a new file), and it edits before it meets anyone: everything comes
/// back to it, its new edit reaches the others, and a new peer that catches up from p1
/// alone takes p0's changes of the missed runs as p0's. p0's first new seal names only
/// what it holds (not the missed runs' changes): were it to take the place of the missed
/// runs' seal everywhere, nobody could pass those changes on as p0's (refused as forged,
/// and p0 pulled for them without end).
#[test]
fn a_device_put_back_from_a_backup_gets_back_what_its_missed_runs_made() {
    for seed in 0..4 {
        let mut w = World::new(3, seed, Config::default());
        w.connect(0);
        w.connect(1);
        w.write(0, "notes.md", b"one\n");
        w.settle(10);
        let store = w.peers[0].store.clone();
        let disk = w.peers[0].disk.clone();
        for round in 0..3 {
            w.restart(0);
            w.write(0, "notes.md", format!("one\nround {round}\n").as_bytes());
            w.write(0, &format!("r{round}.md"), b"made after the backup\n");
            w.settle(10);
        }
        assert_eq!(
            w.read(1, "r2.md").as_deref(),
            Some("made after the backup\n")
        );
        // The backup comes back, offline; the next run's epoch is above the missed
        // runs' (the daemon's clock floor), and it edits at once.
        w.disconnect(0);
        w.peers[0].store = store.clone();
        w.peers[0].disk = disk.clone();
        w.peers[0].exec.clear();
        w.restart(0);
        w.write(0, "notes.md", b"one\nafter the restore\n");
        w.write(0, "later.md", b"made after the restore\n");
        w.connect(0);
        w.settle(20);
        assert_eq!(
            w.peers[0].disk,
            w.peers[1].disk,
            "seed {seed}: p0 {:?}; p1 {:?}",
            w.peers[0].engine.counters(),
            w.peers[1].engine.counters()
        );
        for round in 0..3 {
            assert!(w.read(0, &format!("r{round}.md")).is_some(), "seed {seed}");
        }
        assert!(
            w.read(1, "notes.md")
                .is_some_and(|c| c.contains("after the restore")),
            "seed {seed}"
        );
        // A new peer meets p1 alone.
        w.disconnect(0);
        w.connect(2);
        w.settle(20);
        if let Err(e) = w.converged() {
            panic!("seed {seed}: {e}: {:?}", w.peers[2].engine.counters());
        }
        for p in 0..3 {
            assert_eq!(
                w.peers[p].engine.counters().forged_changes,
                0,
                "seed {seed}: p{p}"
            );
        }
    }
}
