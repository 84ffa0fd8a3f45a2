//! The daemon's carry-out rules (`cue_core::carry`) as the simulation runs them: the
//! start-up scan, refused writes, and writes the disk cannot make.

use std::collections::BTreeSet;

use cue_core::{ActivityKind, Config, Input};
use cue_sim::World;

/// A file renamed while the daemon was stopped is found by content at start-up and synced
/// as a rename: a peer's concurrent edit of the old name lands in the new one, instead of
/// the old name coming back beside a copy.
#[test]
fn a_rename_while_the_daemon_was_stopped_is_a_rename() {
    let mut w = World::new(2, 11, Config::default());
    w.connect_all();
    w.write(0, "notes/a.md", b"hello\n");
    w.settle_converged();
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
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(w.read(p, "notes/a.md"), None, "peer {p}");
        assert_eq!(
            w.read(p, "notes/b.md").as_deref(),
            Some("hello\nfrom p1\n"),
            "peer {p}"
        );
    }
}

/// A note renamed and edited while the daemon was stopped, edited on another device
/// meanwhile: the start-up scan takes the new name holding most of the old lines for
/// the rename and the edit it is, and the note stays one, with both edits, under its
/// new name (before: two notes, the old name kept alive by the other device's edit, the
/// new one holding this device's). A note deleted while stopped beside an unrelated new
/// one stays a deletion and a new note.
#[test]
fn a_note_renamed_and_edited_while_stopped_stays_one_note_with_both_edits() {
    const NOTE: &str = "# Plan\n\nfirst point\nsecond point\nthird point\n";
    for seed in 0..12 {
        let mut w = World::new(2, 300 + seed, Config::default());
        w.connect_all();
        w.write(0, "notes/plan.md", NOTE.as_bytes());
        w.write(0, "notes/old.md", b"an old note\nnobody wants\n");
        w.settle_converged();
        w.disconnect(0);
        w.write(
            1,
            "notes/plan.md",
            NOTE.replace("first point", "first point, from p1")
                .as_bytes(),
        );
        let disk = &mut w.peers[0].disk;
        disk.remove("notes/plan.md");
        // Renamed into another folder, with a line added and one changed.
        let edited = NOTE.replace("third point", "third point, from p0") + "p0 line\n";
        disk.insert("archive/plan-2026.md".into(), edited.into_bytes());
        disk.remove("notes/old.md");
        disk.insert("notes/new.md".into(), b"a new note\nof its own\n".to_vec());
        w.restart(0);
        w.connect_all();
        w.settle_converged();
        for p in 0..2 {
            let disk: Vec<(&String, String)> = (w.peers[p].disk.iter())
                .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
                .collect();
            let what = format!("seed {seed}, p{p}: {disk:?}");
            assert_eq!(
                w.read(p, "archive/plan-2026.md").as_deref(),
                Some(
                    "# Plan\n\nfirst point, from p1\nsecond point\nthird point, from p0\np0 line\n"
                ),
                "{what}"
            );
            assert_eq!(w.read(p, "notes/plan.md"), None, "{what}");
            assert_eq!(w.read(p, "notes/old.md"), None, "{what}");
            assert_eq!(
                w.read(p, "notes/new.md").as_deref(),
                Some("a new note\nof its own\n"),
                "{what}"
            );
            assert_eq!(w.peers[p].disk.len(), 2, "{what}");
        }
    }
}

/// A folder replaced by a file of its name while the daemon was stopped, and a file by a
/// folder: the start-up scan deletes the old ones before taking the new ones in, so the
/// new ones keep their names everywhere and nothing comes back as a conflict copy.
#[test]
fn a_folder_and_a_file_swapped_while_the_daemon_was_stopped_clash_with_nothing() {
    let mut w = World::new(2, 12, Config::default());
    w.connect_all();
    for path in [
        "notes/a.md",
        "notes/b.md",
        "plan",
        "c.md",
        "d.md",
        "e.md",
        "f.md",
    ] {
        w.write(0, path, path.as_bytes());
    }
    w.settle_converged();
    w.disconnect(0);
    let disk = &mut w.peers[0].disk;
    disk.remove("notes/a.md");
    disk.remove("notes/b.md");
    disk.insert("notes".into(), b"a file now\n".to_vec());
    disk.remove("plan");
    disk.insert("plan/q1.md".into(), b"a folder now\n".to_vec());
    w.restart(0);
    w.connect_all();
    w.settle_converged();
    for p in 0..2 {
        let files: Vec<&str> = w.peers[p].disk.keys().map(String::as_str).collect();
        assert_eq!(
            files,
            ["c.md", "d.md", "e.md", "f.md", "notes", "plan/q1.md"],
            "peer {p}"
        );
        assert!(w.status(p).conflicts.is_empty(), "peer {p}");
    }
}

/// More than half of a workspace missing at start-up pauses deletions, as the daemon's
/// guard does: nothing is deleted on the other peer.
#[test]
fn most_files_missing_at_start_up_pause_deletions() {
    let mut w = World::new(2, 12, Config::default());
    w.connect_all();
    let files = cue_sim::notes(30);
    w.write_many(0, &files);
    w.settle_converged();
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
    w.settle_converged();
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
    w.settle_converged();
    for p in 0..3 {
        assert_eq!(
            w.read(p, "a.md").as_deref(),
            Some("one\ntwo, written offline\n"),
            "peer {p} lost the offline edit"
        );
    }
    // And a deletion can still be restored seconds later, on any peer.
    w.delete(2, "a.md");
    w.settle_converged();
    w.advance(5_000);
    w.settle_converged();
    w.restore(0, "a.md").expect("restorable");
    w.settle_converged();
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
    w.settle_converged();
    w.delete(0, "a.md");
    w.settle_converged();
    w.advance(tombstone_ms / 2);
    assert!(w.restore(1, "a.md").is_ok());
    w.delete(1, "a.md");
    w.settle_converged();
    w.advance(tombstone_ms + 1_000);
    w.advance(1_000);
    w.settle_converged();
    assert!(w.restore(0, "a.md").is_err(), "the tombstone never expired");
}

/// Devices away for part of a deletion's `tombstone_days` hold its tombstone from their
/// return. The deleter purges it when its own time is up; the others have held it for
/// less and put it back, and the deleter (which dropped the file's document with its
/// purge) can still restore it. Time passes an eighth of `tombstone_days` at a time:
/// each device purges a deletion once, the one that held it last purging it for good,
/// so the purges and puts-back end (they went on for ever, each device purging again
/// once it had held the tombstone put back for its time).
#[test]
fn devices_that_held_a_deletion_for_different_times_purge_it_once_and_stop() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(3, 17, config);
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.write(0, "b.md", b"two\n");
    w.write(0, "c.md", b"three\n");
    w.settle_converged();
    w.disconnect(1);
    w.disconnect(2);
    w.delete(0, "a.md");
    w.delete(0, "c.md");
    w.advance(tombstone_ms / 4);
    w.connect(1);
    w.settle(5);
    w.advance(tombstone_ms / 4);
    w.connect(2);
    w.settle_converged();
    assert!(w.read(2, "a.md").is_none());
    let at_start = w.index_changes(0);
    // Half-way through: 0.5 T held on p0, 0.25 T on p1, none on p2.
    for step in 1..=24 {
        w.advance(tombstone_ms / 8);
        w.settle_converged();
        if step == 6 {
            // p0 purged both at T; p1 and p2 put them back: restorable, on p0 too.
            w.restore(0, "a.md")
                .expect("put back, restorable on the deleter");
            w.settle_converged();
            for p in 0..3 {
                assert_eq!(w.read(p, "a.md").as_deref(), Some("one\n"), "p{p}");
            }
        }
    }
    for p in 0..3 {
        assert!(w.restore(p, "c.md").is_err(), "p{p}: never purged");
        assert_eq!(w.read(p, "b.md").as_deref(), Some("two\n"));
        assert_eq!(w.read(p, "a.md").as_deref(), Some("one\n"));
    }
    let made = w.index_changes(0) - at_start;
    assert!(
        made <= 16,
        "{made} index changes for one purge and one restore"
    );
}

/// A deletion put back by a device that then leaves for good (removed, its disk lost):
/// the device that purged it first remembered its purge for as long as the tombstone
/// stood, so nobody purged it again and it stayed restorable for ever. Now it purges it
/// again four `tombstone_days` after its first purge.
#[test]
fn a_deletion_put_back_by_a_device_gone_for_good_is_purged_in_the_end() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(2, 19, config);
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.write(0, "b.md", b"two\n");
    w.settle_converged();
    w.disconnect(1);
    w.delete(0, "a.md");
    w.advance(tombstone_ms / 2);
    w.connect(1);
    w.settle_converged();
    w.advance(tombstone_ms / 2 + 1_000);
    w.settle_converged();
    w.advance(1_000);
    w.settle_converged();
    // p0 purged it; p1, which held it for half its time, put it back, and goes.
    assert_eq!(w.tombstones(0), 1, "put back");
    w.disconnect(1);
    for _ in 0..12 {
        w.advance(tombstone_ms / 2);
        w.settle(2);
    }
    assert!(w.restore(0, "a.md").is_err(), "never purged");
    assert_eq!(w.read(0, "b.md").as_deref(), Some("two\n"));
}

/// The folder of a disk gone for good, which the user tells cue to forget: the files
/// the disk held are not in the folder left behind, and nobody deleted them. They are
/// written into it again from their documents (deleted nowhere), a file made in the
/// bare folder meanwhile syncs, and one made there under a name the disk held loses
/// nothing: both contents stay.
#[test]
fn files_not_on_disk_and_not_deleted_are_written_again() {
    let mut w = World::new(2, 18, Config::default());
    w.connect_all();
    w.write(0, "media/a.md", b"track a\n");
    w.write(0, "media/b.md", b"track b\n");
    w.write(0, "notes.md", b"notes\n");
    w.settle_converged();
    // The disk gone: its files are not in the folder, and the daemon saw no removal;
    // nor the file made in the bare folder (below a disk not mounted, nothing is fed).
    w.peers[0].disk.retain(|p, _| !p.starts_with("media/"));
    w.peers[0]
        .disk
        .insert("media/b.md".into(), b"made in the bare folder\n".to_vec());
    w.input(
        0,
        Input::NotOnDisk {
            folder: "media".into(),
        },
    );
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(
            w.read(p, "media/a.md").as_deref(),
            Some("track a\n"),
            "p{p}"
        );
        assert_eq!(w.read(p, "notes.md").as_deref(), Some("notes\n"), "p{p}");
        let all: String = w.peers[p]
            .disk
            .iter()
            .filter(|(path, _)| path.starts_with("media/b"))
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(
            all.contains("track b"),
            "p{p} lost the disk's b.md: {all:?}"
        );
        assert!(
            all.contains("made in the bare folder"),
            "p{p} lost the new b.md: {all:?}"
        );
    }
    assert!(w.status(1).deletions_paused.is_none());
}

/// One peer turns a file into a folder of the same name while another edits the file:
/// no disk can hold both. The file moves to a conflict copy on every peer, the folder's
/// files stay, and nothing is deleted, before or after a restart.
#[test]
fn a_file_that_became_a_folder_elsewhere_is_kept_as_a_copy() {
    let mut w = World::new(2, 15, Config::default());
    w.connect_all();
    w.write(0, "t2/x", b"file x\n");
    w.write(0, "t2/y.md", b"y\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(1, "t2/x", b"file x\nedited on p1\n");
    w.delete(0, "t2/x");
    w.write(0, "t2/x/in.md", b"in\n");
    w.connect(1);
    w.settle_converged();
    for _ in 0..2 {
        for p in 0..2 {
            let disk = &w.peers[p].disk;
            assert_eq!(
                disk.get("t2/x/in.md").map(Vec::as_slice),
                Some(&b"in\n"[..]),
                "peer {p}"
            );
            assert_eq!(
                disk.get("t2/y.md").map(Vec::as_slice),
                Some(&b"y\n"[..]),
                "peer {p}"
            );
            let copy: Vec<_> = disk
                .iter()
                .filter(|(k, _)| k.starts_with("t2/x.conflict-"))
                .collect();
            assert_eq!(copy.len(), 1, "peer {p}: {:?}", disk.keys());
            assert_eq!(copy[0].1, b"file x\nedited on p1\n", "peer {p}");
            assert!(
                w.peers[p].write_failures.is_empty(),
                "peer {p}: {:?}",
                w.peers[p].write_failures
            );
        }
        assert_eq!(w.status(0).conflicts.len(), 1);
        w.restart(0);
        w.restart(1);
        w.settle_converged();
    }
}

/// A write the disk refuses is reported, retried, and never becomes a deletion: not
/// here, not at the next start, not on the peer that made the file.
#[test]
fn a_write_the_disk_refuses_never_becomes_a_deletion() {
    let mut w = World::new(2, 16, Config::default());
    w.connect_all();
    w.peers[1].refuse_writes_under.insert("locked".into());
    w.write(0, "locked/a.md", b"from p0\n");
    w.write(0, "open.md", b"open\n");
    w.settle(5);
    assert_eq!(w.read(1, "open.md").as_deref(), Some("open\n"));
    assert_eq!(w.read(1, "locked/a.md"), None);
    let status = w.status(1);
    assert_eq!(status.unwritable.len(), 1, "{status:?}");
    assert_eq!(status.unwritable[0].0, "locked/a.md");
    assert!(
        w.peers[1]
            .activity
            .iter()
            .any(|a| a.kind == ActivityKind::Error && a.path.as_deref() == Some("locked/a.md"))
    );
    // A restart's scan finds nothing missing: nothing is deleted anywhere.
    w.restart(1);
    w.settle(5);
    assert_eq!(w.read(0, "locked/a.md").as_deref(), Some("from p0\n"));
    // Once the disk accepts it, the retry writes it.
    w.peers[1].refuse_writes_under.clear();
    w.advance(61_000);
    w.settle_converged();
    assert_eq!(w.read(1, "locked/a.md").as_deref(), Some("from p0\n"));
    assert!(w.status(1).unwritable.is_empty());
}

/// A write the disk refuses stays listed (and retried) when a rename here comes just
/// after (a folder replaced by a symlink: `mv d d_real; ln -s d_real d`, while a peer
/// writes in `d`). The rename marked every refused write for a retry without making it,
/// and the next tick took the untried write for done: the file was no longer listed,
/// nor retried.
#[test]
fn a_refused_write_stays_listed_after_a_rename_here() {
    let mut w = World::new(2, 16, Config::default());
    w.connect_all();
    w.write(0, "d/x.md", b"x\n");
    w.settle_converged();
    w.peers[1].refuse_writes_under.insert("d".into());
    w.write(0, "d/y.md", b"from p0\n");
    w.settle(5);
    assert_eq!(w.status(1).unwritable.len(), 1);
    w.rename(1, "d/x.md", "d_real/x.md");
    w.advance(1_000);
    w.settle(5);
    let status = w.status(1);
    assert_eq!(status.unwritable.len(), 1, "{status:?}");
    assert_eq!(status.unwritable[0].0, "d/y.md");
    w.peers[1].refuse_writes_under.clear();
    w.advance(61_000);
    w.settle_converged();
    assert_eq!(w.read(1, "d/y.md").as_deref(), Some("from p0\n"));
}

/// Two peers holding `a.md` and `build/out.log`, the second then ignored on p1 (and the
/// rescan the new rule asks for made).
fn ignored_on_p1_after_syncing(seed: u64) -> World {
    let mut w = World::new(2, seed, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"a\n");
    w.write(0, "build/out.log", b"log 1\n");
    w.settle_converged();
    w.peers[1].ignored_here.insert("build/out.log".into());
    // The rules changed: the daemon rescans.
    w.startup_scan(1);
    w.settle(10);
    w
}

/// Ignoring a synced file (a `.cueignore` added later, or one that arrived from a peer)
/// stops syncing it from this peer and deletes it nowhere: not on the other peers, not
/// here when a peer deletes or changes it.
#[test]
fn ignoring_a_file_later_deletes_it_nowhere() {
    let mut w = ignored_on_p1_after_syncing(17);
    assert_eq!(w.read(0, "build/out.log").as_deref(), Some("log 1\n"));
    assert_eq!(w.read(1, "build/out.log").as_deref(), Some("log 1\n"));
    // A later change elsewhere is not written over the ignored file here...
    w.write(0, "build/out.log", b"log 2\n");
    w.settle(10);
    assert_eq!(w.read(1, "build/out.log").as_deref(), Some("log 1\n"));
    // ...nor does a deletion elsewhere remove it, nor a restart here delete it there.
    w.restart(1);
    w.settle(10);
    assert_eq!(w.read(0, "build/out.log").as_deref(), Some("log 2\n"));
    w.delete(0, "build/out.log");
    w.settle(10);
    assert_eq!(w.read(1, "build/out.log").as_deref(), Some("log 1\n"));
    assert_eq!(w.read(1, "a.md").as_deref(), Some("a\n"));
}

/// A file removed while it is ignored here (`rm -rf build/` with `build/` ignored) is
/// no deletion: not while the daemon runs (the watcher never reports it), nor at the
/// next start's scan.
#[test]
fn a_file_removed_while_ignored_is_deleted_nowhere() {
    let mut w = ignored_on_p1_after_syncing(18);
    w.peers[1].disk.remove("build/out.log");
    w.restart(1);
    w.settle(10);
    assert_eq!(w.read(0, "build/out.log").as_deref(), Some("log 1\n"));
    let deleted = |p: usize| {
        w.peers[p]
            .activity
            .iter()
            .any(|a| a.kind == ActivityKind::Delete)
    };
    assert!(!deleted(0) && !deleted(1));
}

/// A file removed while ignored, then the rule taken away: the removal was no deletion
/// then and is none now. The file stays on the other peers and comes back here (it
/// was deleted everywhere once the rule went).
#[test]
fn a_file_removed_while_ignored_comes_back_when_the_rule_goes() {
    // The rule taken away while the daemon runs, or while it is stopped (then the
    // start knows from its store what was ignored).
    for stopped in [false, true] {
        let mut w = ignored_on_p1_after_syncing(19);
        w.peers[1].disk.remove("build/out.log");
        w.advance(1_000);
        if stopped {
            w.restart(1);
            w.settle(5);
        }
        w.peers[1].ignored_here.remove("build/out.log");
        // The rules changed: the daemon rescans (or starts).
        if stopped {
            w.restart(1);
        } else {
            w.startup_scan(1);
        }
        w.settle_converged();
        for p in 0..2 {
            let there = w.read(p, "build/out.log");
            assert_eq!(there.as_deref(), Some("log 1\n"), "p{p}, stopped {stopped}");
            let deleted = (w.peers[p].activity.iter()).any(|a| a.kind == ActivityKind::Delete);
            assert!(!deleted, "p{p}, stopped {stopped}");
        }
    }
}

/// Two peers create the same new file at nearly the same moment: the remote version
/// arrives before this peer's watcher has reported its own (the write of the remote
/// version is refused, the file being there). The create rule holds at any timing: one
/// version keeps the path, the other becomes a conflict copy, listed on both peers.
#[test]
fn a_file_created_on_two_peers_at_once_keeps_both_versions_at_any_timing() {
    for watcher_first in [false, true] {
        let mut w = World::new(2, 17, Config::default());
        w.connect_all();
        w.write(0, "seed.md", b"seed\n");
        w.settle_converged();
        // p1's save is on disk; its watcher has not reported it yet.
        w.peers[1]
            .disk
            .insert("a/race1.md".into(), b"B side\n".to_vec());
        if watcher_first {
            w.write(1, "a/race1.md", b"B side\n");
            w.write(0, "a/race1.md", b"A side\n");
        } else {
            w.write(0, "a/race1.md", b"A side\n");
            w.settle(10);
            // The watcher's late report reads what the path holds by then.
            report_as_saved(&mut w, 1, "a/race1.md");
        }
        w.settle_converged();
        for p in 0..2 {
            let versions: Vec<&[u8]> = w.peers[p]
                .disk
                .iter()
                .filter(|(k, _)| k.starts_with("a/race1"))
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(versions.len(), 2, "peer {p}: {:?}", w.peers[p].disk.keys());
            assert!(
                versions.contains(&&b"A side\n"[..]),
                "peer {p}: {:?}",
                w.peers[p].disk
            );
            assert!(versions.contains(&&b"B side\n"[..]), "peer {p}");
            let conflicts = w.status(p).conflicts;
            assert_eq!(conflicts.len(), 1, "peer {p}: {conflicts:?}");
            assert_eq!(conflicts[0].path, "a/race1.md");
        }
    }
}

/// The watcher reports `path` at `peer` with whatever the disk holds there now.
fn report_as_saved(w: &mut World, peer: usize, path: &str) {
    if let Some(content) = w.peers[peer].disk.get(path).cloned() {
        let exec = w.peers[peer].exec.contains(path);
        w.input(
            peer,
            cue_core::Input::FileChanged {
                path: path.into(),
                content,
                exec,
            },
        );
    }
}

/// A program appends to a file in the very instant the daemon replaces it with a peer's
/// version (or removes it for a peer's deletion): the line it wrote is read back from the
/// replaced file and merged, on both peers.
#[test]
fn a_line_appended_while_the_file_is_replaced_is_kept() {
    let mut w = World::new(2, 18, Config::default());
    w.connect_all();
    w.write(0, "log.md", b"one\n");
    w.settle_converged();
    w.peers[1]
        .append_while_replaced
        .insert("log.md".into(), b"two (p1)\n".to_vec());
    w.write(0, "log.md", b"one\nthree (p0)\n");
    w.settle_converged();
    for p in 0..2 {
        let text = w.read(p, "log.md").unwrap();
        assert!(text.contains("two (p1)\n"), "peer {p}: {text:?}");
        assert!(text.contains("three (p0)\n"), "peer {p}: {text:?}");
    }
    // A peer deletes the file while a program appends to it here: the append is kept.
    w.peers[1]
        .append_while_replaced
        .insert("log.md".into(), b"four (p1)\n".to_vec());
    w.delete(0, "log.md");
    w.settle_converged();
    for p in 0..2 {
        let kept: Vec<String> = w.peers[p]
            .disk
            .values()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|t| t.contains("four (p1)"))
            .collect();
        assert_eq!(kept.len(), 1, "peer {p}: {:?}", w.peers[p].disk);
    }
}

/// What a peer learns from messages alone (a confirmation, when a peer last synced) is
/// committed without waiting for the disk; a power cut that loses it loses nothing
/// anyone saw: every peer still ends with every note, the same bytes.
#[test]
fn a_power_cut_after_confirmations_loses_nothing() {
    let mut w = World::new(3, 14, Config::default());
    w.connect_all();
    let files = cue_sim::notes(12);
    w.write_many(0, &files);
    w.settle_converged();
    w.write(1, "n3.md", b"edited on p1\n");
    w.settle_converged();
    // Everyone has confirmed everything by now: those confirmations were the last
    // commits, and the power cut takes them.
    let lost: usize = (0..3).map(|p| w.power_cut(p)).sum();
    assert!(
        lost > 0,
        "no commit was left unsynced: the test cuts nothing"
    );
    w.write(2, "n4.md", b"edited on p2 after the cut\n");
    w.settle_converged();
    for p in 0..3 {
        assert_eq!(
            w.read(p, "n3.md").as_deref(),
            Some("edited on p1\n"),
            "peer {p}"
        );
        assert_eq!(
            w.read(p, "n4.md").as_deref(),
            Some("edited on p2 after the cut\n"),
            "peer {p}"
        );
        for (path, _) in files.iter().filter(|(p, _)| p != "n3.md" && p != "n4.md") {
            assert!(w.read(p, path).is_some(), "peer {p} lost {path}");
        }
    }
}

/// Two devices holding `a.md` ("one") and `b.md`; p1 goes away, makes `edit` of `a.md`
/// if any, p0 deletes `a.md` and purges it (`tombstone_days` of 2 days pass), p1
/// comes back and they settle.
fn away_while_deleted_and_purged(seed: u64, edit: Option<&[u8]>) -> World {
    let config = Config {
        tombstone_ms: 2 * DAY_MS,
        ..Config::default()
    };
    let mut w = World::new(2, seed, config);
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.write(0, "b.md", b"two\n");
    w.settle_converged();
    w.disconnect(1);
    if let Some(edit) = edit {
        w.write(1, "a.md", edit);
    }
    w.delete(0, "a.md");
    w.settle(2);
    w.advance(3 * DAY_MS);
    w.advance(1_000);
    w.settle(2);
    assert!(w.restore(0, "a.md").is_err(), "purged on p0");
    w.connect(1);
    w.settle_converged();
    w
}

/// A device away longer than `tombstone_days` (and not so long that it syncs again
/// from scratch) comes back to a deletion made and purged meanwhile: the file it still
/// holds is deleted there too, and comes back nowhere.
#[test]
fn a_deletion_purged_while_a_device_was_away_stays_a_deletion() {
    let w = away_while_deleted_and_purged(15, None);
    for p in 0..2 {
        assert!(w.read(p, "a.md").is_none(), "a.md back on p{p}");
        assert_eq!(w.read(p, "b.md").as_deref(), Some("two\n"));
    }
}

/// The same, with the file edited on the device while it was away: an edit concurrent
/// with a deletion keeps the file, also when the deletion was purged meanwhile.
#[test]
fn an_edit_made_away_outlives_a_deletion_purged_meanwhile() {
    let w = away_while_deleted_and_purged(16, Some(b"one\ntwo, written away\n"));
    for p in 0..2 {
        assert_eq!(
            w.read(p, "a.md").as_deref(),
            Some("one\ntwo, written away\n"),
            "p{p}"
        );
    }
}

/// A peer's edit arrives just as the file is moved here (its folder renamed) and before
/// the watcher says so: the write, finding no file where it expected one, is put off;
/// the move is taken in, then the edit is written where the file went. It was written
/// at the old path at once, and the moved file's older content, read at the new one,
/// was taken for an edit undoing the peer's.
#[test]
fn a_peers_edit_arriving_as_the_file_is_moved_lands_where_it_went() {
    let mut w = World::online(2, 41);
    w.write(0, "Notes/n2.md", b"n2\n");
    w.settle_converged();
    w.write(1, "Notes/n2.md", b"n2 edited\n");
    // p0's folder moves; its watcher has not told the engine yet.
    let content = w.peers[0].disk.remove("Notes/n2.md").expect("synced");
    w.peers[0]
        .disk
        .insert("NOTES/n2.md".into(), content.clone());
    w.deliver_between(1, 0);
    w.input(
        0,
        Input::FileRenamed {
            from: "Notes/n2.md".into(),
            to: "NOTES/n2.md".into(),
            content,
            exec: false,
        },
    );
    w.advance(1_000);
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(
            w.read(p, "NOTES/n2.md").as_deref(),
            Some("n2 edited\n"),
            "p{p}"
        );
        assert_eq!(w.read(p, "Notes/n2.md"), None, "p{p}");
    }
}

/// The same, the file deleted here (its folder removed) as the peer's edit comes: the
/// deletion, taken in after the write found the file gone, is of the version the user
/// had, so the edit made at once keeps the file, as any does. Made of the document's
/// heads (the peer's edit merged in), the deletion took the edit with it.
#[test]
fn a_peers_edit_arriving_as_the_file_is_deleted_keeps_it() {
    let mut w = World::online(2, 42);
    w.write(0, "Notes/n2.md", b"n2\n");
    w.settle_converged();
    w.write(1, "Notes/n2.md", b"n2 edited\n");
    w.peers[0].disk.remove("Notes/n2.md").expect("synced");
    w.deliver_between(1, 0);
    w.input(
        0,
        Input::FileRemoved {
            path: "Notes/n2.md".into(),
        },
    );
    w.advance(1_000);
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(
            w.read(p, "Notes/n2.md").as_deref(),
            Some("n2 edited\n"),
            "p{p}"
        );
    }
}

/// A write that found its file gone and hears nothing of where it went (a path the
/// watcher does not report) is not put off for ever: after a few seconds the peer's
/// version is written where the file was.
#[test]
fn a_write_whose_file_is_gone_unreported_is_made_after_a_wait() {
    let mut w = World::online(2, 43);
    w.write(0, "a.md", b"one\n");
    w.settle_converged();
    w.write(1, "a.md", b"one\ntwo\n");
    w.peers[0].disk.remove("a.md").expect("synced");
    w.deliver_between(1, 0);
    assert_eq!(w.read(0, "a.md"), None, "put off at first");
    for _ in 0..8 {
        w.advance(1_000);
    }
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("one\ntwo\n"));
}

/// A second peer's write that finds its file gone, long after a first one that did
/// (whose file came back unreported, so the first wait was never closed by the
/// watcher), waits afresh: it is not written at once where the file was, as a wait
/// begun a minute ago would be.
#[test]
fn a_second_write_finding_its_file_gone_waits_afresh() {
    let mut w = World::online(2, 45);
    w.write(0, "a.md", b"one\n");
    w.settle_converged();
    w.write(1, "a.md", b"one\ntwo\n");
    let moved = w.peers[0].disk.remove("a.md").expect("synced");
    w.deliver_between(1, 0);
    assert_eq!(w.read(0, "a.md"), None, "put off at first");
    // Put back where it was, unreported: the retried write goes through.
    w.peers[0].disk.insert("a.md".into(), moved);
    w.advance(1_000);
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("one\ntwo\n"));
    w.advance(60_000);
    w.settle_converged();
    w.write(1, "a.md", b"one\ntwo\nthree\n");
    w.peers[0].disk.remove("a.md").expect("there");
    w.deliver_between(1, 0);
    assert_eq!(w.read(0, "a.md"), None, "put off again, from now");
}

/// A deletion after merging a peer's edit and its undo (the bytes on disk unchanged, so
/// nothing was written and the version on disk was not moved on) deletes the file:
/// named by that older version, the deletion left the peer's changes unseen and the
/// file came back everywhere.
#[test]
fn a_deletion_after_a_merge_that_changed_no_byte_takes_effect() {
    let mut w = World::online(2, 44);
    w.write(0, "a.md", b"one\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(1, "a.md", b"one\ntwo\n");
    w.write(1, "a.md", b"one\n");
    w.connect(1);
    w.settle_converged();
    w.delete(0, "a.md");
    w.advance(1_000);
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(w.read(p, "a.md"), None, "p{p}");
    }
}

/// Two peers with `a.md` and `b.md`; p1, offline, adds a line to `a.md`; on p0 the two
/// names are swapped on disk, not yet reported by the watcher.
fn swapped_while_p1_edits(seed: u64) -> World {
    let mut w = World::new(2, seed, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"note A\n");
    w.write(0, "b.md", b"note B\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(1, "a.md", b"note A\nfrom p1\n");
    for (path, bytes) in [("a.md", &b"note B\n"[..]), ("b.md", &b"note A\n"[..])] {
        w.peers[0].disk.insert(path.into(), bytes.to_vec());
    }
    w
}

/// What the watcher reports of the swap of [`swapped_while_p1_edits`]: both paths saved.
fn swap_saves() -> Vec<Input> {
    let saved = |path: &str, content: &[u8]| Input::FileChanged {
        path: path.into(),
        content: content.to_vec(),
        exec: false,
    };
    vec![saved("a.md", b"note B\n"), saved("b.md", b"note A\n")]
}

/// Two notes' names swapped faster than the watcher tells the moves apart (`mv a.md t;
/// mv b.md a.md; mv t b.md`): the batch holds two saves, each path with what the other
/// held. Taken as two renames, so a peer's edit made meanwhile to one note stays in
/// that note (as two rewrites, it landed in the other), and each keeps its history.
#[test]
fn two_names_swapped_at_once_are_two_renames() {
    let mut w = swapped_while_p1_edits(21);
    w.input_batch(0, swap_saves());
    w.connect(1);
    w.settle_converged();
    eprintln!("RESULT a={:?} b={:?}", w.read(0, "a.md"), w.read(0, "b.md"));
    for p in 0..2 {
        assert_eq!(w.read(p, "a.md").as_deref(), Some("note B\n"), "p{p}");
        assert_eq!(
            w.read(p, "b.md").as_deref(),
            Some("note A\nfrom p1\n"),
            "p{p}"
        );
    }
    let renames = (w.peers[0].activity.iter())
        .filter(|a| a.kind == ActivityKind::Rename)
        .count();
    assert_eq!(renames, 2);
}

/// Two notes' names (or their folders) swapped just as a peer's edit of one of them is
/// written here: the write finds the other note's bytes in its place. That is the other
/// note moved, not an edit of this one: the write waits for the watcher's report of the
/// swap (before, it was merged as an edit at once, and the peers never agreed: the disk
/// and the engine held different notes at `a.md`). Nothing is lost and every device ends
/// alike. (The swap itself is taken as two rewrites here, not two renames: the note whose
/// document is ahead of the disk is no part of a swap, `Engine::take_swaps`; the peer's
/// line lands in the note now at its path.)
#[test]
fn a_peers_edit_written_as_two_names_are_swapped_loses_nothing() {
    let mut w = swapped_while_p1_edits(23);
    w.connect(1);
    w.settle(20);
    // The write put off: what p0 believes `a.md` holds on disk is still the version
    // before p1's line, its document ahead (what a move of it is carried with).
    let peer = &mut w.peers[0];
    let on_disk = peer.engine.disk_content("a.md", &mut peer.store);
    assert_eq!(on_disk, Some((b"note A\n".to_vec(), false)));
    let document = peer.engine.read("a.md", &mut peer.store);
    assert_eq!(document.as_deref(), Some(&b"note A\nfrom p1\n"[..]));
    w.input_batch(0, swap_saves());
    w.settle_converged();
    for p in 0..2 {
        let a = w.read(p, "a.md").unwrap_or_default();
        let b = w.read(p, "b.md").unwrap_or_default();
        assert_eq!(a, "note B\nfrom p1\n", "p{p}");
        assert_eq!(b, "note A\n", "p{p}");
    }
}

/// A peer renames a note while this device's user is writing to it (a program saving
/// every few milliseconds, its last save not yet reported by the watcher): the removal
/// of the old name is refused, the disk holding the save. The save is an edit of the
/// note, which lands under its new name; the old name goes. (Before, the save was taken
/// for a new file at the old name: the note was split in two, its history with it.)
#[test]
fn a_save_under_the_old_name_of_a_note_renamed_elsewhere_follows_the_rename() {
    let mut w = World::new(2, 31, Config::default());
    w.connect_all();
    w.write(0, "n.md", b"start\n");
    w.settle_converged();
    // Saved on p1, not yet reported.
    w.peers[1]
        .disk
        .insert("n.md".into(), b"start\nfrom p1\n".to_vec());
    w.rename(0, "n.md", "renamed.md");
    w.settle(20);
    // The watcher reports the save at last.
    w.input(
        1,
        Input::FileChanged {
            path: "n.md".into(),
            content: b"start\nfrom p1\n".to_vec(),
            exec: false,
        },
    );
    w.settle_converged();
    for p in 0..2 {
        let files: Vec<&str> = w.peers[p].disk.keys().map(String::as_str).collect();
        assert_eq!(files, ["renamed.md"], "peer {p}");
        assert_eq!(
            w.read(p, "renamed.md").as_deref(),
            Some("start\nfrom p1\n"),
            "peer {p}"
        );
    }

    // The program appends in the very instant the old name is removed (the removal is
    // made, over the save): the save lands under the new name too, not in a copy.
    w.peers[1]
        .append_while_replaced
        .insert("renamed.md".into(), b"again\n".to_vec());
    w.rename(0, "renamed.md", "third.md");
    w.settle_converged();
    for p in 0..2 {
        let files: Vec<&str> = w.peers[p].disk.keys().map(String::as_str).collect();
        assert_eq!(files, ["third.md"], "peer {p}");
        assert_eq!(
            w.read(p, "third.md").as_deref(),
            Some("start\nfrom p1\nagain\n"),
            "peer {p}"
        );
    }

    // Renamed again with nothing saved meanwhile, and a new file made at once under the
    // old name here: a file of its own, not an edit of the moved one.
    w.rename(0, "third.md", "fourth.md");
    w.settle(20);
    w.write(1, "third.md", b"another note\n");
    w.settle_converged();
    for p in 0..2 {
        let files: Vec<&str> = w.peers[p].disk.keys().map(String::as_str).collect();
        assert_eq!(files, ["fourth.md", "third.md"], "peer {p}");
        assert_eq!(
            w.read(p, "fourth.md").as_deref(),
            Some("start\nfrom p1\nagain\n"),
            "peer {p}"
        );
    }
}

/// Two peers with `src.md` and `dst.md`; p0's user moves `src.md` over `dst.md` while a
/// program on p1 writes to `dst.md` (how it meets the carry-out is up to the caller).
///
/// The notes are made in the order the seed's parity says: the removals of a move are
/// carried out in the order of the files' ids, and each order is tried.
fn moved_over(seed: u64) -> World {
    let mut w = World::new(2, seed, Config::default());
    w.connect_all();
    let notes = [("src.md", "source text\n"), ("dst.md", "replaced text\n")];
    for (path, text) in if seed.is_multiple_of(2) {
        notes
    } else {
        [notes[1], notes[0]]
    } {
        w.write(0, path, text.as_bytes());
    }
    w.settle_converged();
    w
}

/// Every peer ends with two notes, the moved one (`source`) at `dst.md` and the replaced
/// one with the line the program wrote to it (`replaced`) beside it, each once, and
/// `src.md` gone; both peers alike.
fn assert_moved_over_keeps(w: &World, source: &str, replaced: &str) {
    for p in 0..2 {
        let disk = &w.peers[p].disk;
        let mut texts: Vec<String> = (disk.values())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        texts.sort();
        assert_eq!(texts, [replaced, source], "p{p}: {disk:?}");
        assert_eq!(
            w.read(p, "dst.md").as_deref(),
            Some(source),
            "p{p}: {disk:?}"
        );
    }
    assert_eq!(w.peers[0].disk, w.peers[1].disk);
}

fn assert_moved_over_keeps_both(w: &World) {
    assert_moved_over_keeps(w, "source text\n", "replaced text\nappended on p1\n");
}

/// A note moved over another (`mv src.md dst.md`) while a program on the other device
/// appends to the replaced one in the very instant the daemon there removes it: the
/// line is that note's (kept beside as a copy, the rule of a removed file's edit), not
/// an edit of the note moved in. (Before, it was taken for the moved note's edit, made
/// of the replaced note's text: the moved note's text was gone from every device.)
#[test]
fn a_line_appended_to_a_note_moved_over_as_it_goes_is_kept_beside() {
    for seed in [41, 42] {
        let mut w = moved_over(seed);
        w.peers[1]
            .append_while_replaced
            .insert("dst.md".into(), b"appended on p1\n".to_vec());
        w.rename(0, "src.md", "dst.md");
        w.settle_converged();
        assert_moved_over_keeps_both(&w);
    }
}

/// The same, the program's line saved just before (not yet reported): the removal of the
/// replaced note is refused, and so is the moved note's write over it.
#[test]
fn a_save_to_a_note_moved_over_before_it_goes_is_kept_beside() {
    for seed in [43, 44] {
        let mut w = moved_over(seed);
        w.peers[1]
            .disk
            .insert("dst.md".into(), b"replaced text\nappended on p1\n".to_vec());
        w.rename(0, "src.md", "dst.md");
        w.settle_converged();
        assert_moved_over_keeps_both(&w);
    }
}

/// The same, a program on p1 having saved to both notes just before (not yet reported):
/// both removals are refused. The moved note's save follows it (not a note of its own
/// at the old name: the move's write, put off, is no reason to split it).
#[test]
fn saves_to_both_notes_of_a_move_over_keep_each_in_its_note() {
    for seed in 40..60 {
        saves_to_both_notes_of_a_move_over(seed);
    }
}

fn saves_to_both_notes_of_a_move_over(seed: u64) {
    let mut w = moved_over(seed);
    w.peers[1]
        .disk
        .insert("dst.md".into(), b"replaced text\nappended on p1\n".to_vec());
    w.peers[1]
        .disk
        .insert("src.md".into(), b"source text\nsaved on p1\n".to_vec());
    w.rename(0, "src.md", "dst.md");
    w.settle_converged();
    assert_moved_over_keeps(
        &w,
        "source text\nsaved on p1\n",
        "replaced text\nappended on p1\n",
    );
}

/// A peer renames a note to a name this device's user has just made a note of (saved,
/// not yet reported): the write of the renamed note finds that note there. It is a
/// second note of that name, kept beside, not an edit of the renamed one (which took
/// the renamed note's text away on every device).
#[test]
fn a_note_renamed_to_a_name_just_made_here_keeps_both() {
    let mut w = World::new(2, 45, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"note a\n");
    w.settle_converged();
    w.peers[1]
        .disk
        .insert("b.md".into(), b"made on p1\n".to_vec());
    w.rename(0, "a.md", "b.md");
    w.settle_converged();
    for p in 0..2 {
        let disk = &w.peers[p].disk;
        let texts: BTreeSet<&[u8]> = disk.values().map(Vec::as_slice).collect();
        let want: BTreeSet<&[u8]> = [&b"note a\n"[..], b"made on p1\n"].into();
        assert_eq!(texts, want, "p{p}: {disk:?}");
        assert_eq!(disk.len(), 2, "p{p}: {disk:?}");
    }
    assert_eq!(w.peers[0].disk, w.peers[1].disk);
}

/// Two notes swapped on another device (`mv a.md t; mv b.md a.md; mv t b.md`) while a
/// program here appends to one of them, the line written in the instant the daemon
/// replaces it, or just before: the line stays in its note, now under the other name
/// (before, it went into the note moved into its old name, the program's note's text
/// with it).
#[test]
fn a_line_appended_here_to_a_note_swapped_elsewhere_stays_in_its_note() {
    for (seed, in_the_instant) in [(47, true), (49, false)] {
        let mut w = World::new(2, seed, Config::default());
        w.connect_all();
        w.write(0, "a.md", b"note A\n");
        w.write(0, "b.md", b"note B\n");
        w.settle_converged();
        if in_the_instant {
            w.peers[1]
                .append_while_replaced
                .insert("a.md".into(), b"from p1\n".to_vec());
        } else {
            w.peers[1]
                .disk
                .insert("a.md".into(), b"note A\nfrom p1\n".to_vec());
        }
        w.disconnect(1);
        w.rename(0, "a.md", "t.md");
        w.rename(0, "b.md", "a.md");
        w.rename(0, "t.md", "b.md");
        w.connect(1);
        w.settle_converged();
        for p in 0..2 {
            let disk = &w.peers[p].disk;
            let what = format!("p{p} (in the instant: {in_the_instant}): {disk:?}");
            assert_eq!(w.read(p, "a.md").as_deref(), Some("note B\n"), "{what}");
            assert_eq!(
                w.read(p, "b.md").as_deref(),
                Some("note A\nfrom p1\n"),
                "{what}"
            );
            assert_eq!(disk.len(), 2, "{what}");
        }
    }
}

/// A note moved over another on p0 while p1, offline, edited both; as p1 comes back
/// (its edits reaching p0 after the move: the replaced note lives again, beside the
/// moved one) a program on p1 has just saved a line to each (not yet reported). Every
/// line written anywhere is in some note at the end, on both devices alike.
#[test]
fn a_move_over_meeting_edits_of_both_notes_loses_no_line() {
    for seed in 60..90 {
        let mut w = moved_over(seed);
        w.disconnect(1);
        w.write(1, "src.md", b"source text\nsrc edit on p1\n");
        w.write(1, "dst.md", b"replaced text\ndst edit on p1\n");
        w.rename(0, "src.md", "dst.md");
        w.peers[1].disk.insert(
            "src.md".into(),
            b"source text\nsrc edit on p1\nsrc saved on p1\n".to_vec(),
        );
        w.peers[1].disk.insert(
            "dst.md".into(),
            b"replaced text\ndst edit on p1\ndst saved on p1\n".to_vec(),
        );
        w.connect(1);
        w.settle(20);
        // The watcher tells of the saves at last (what of them is still there).
        report_as_saved(&mut w, 1, "src.md");
        report_as_saved(&mut w, 1, "dst.md");
        w.settle_converged();
        for p in 0..2 {
            let disk = &w.peers[p].disk;
            let lines: BTreeSet<String> = (disk.values())
                .flat_map(|v| {
                    String::from_utf8_lossy(v)
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            for line in [
                "source text",
                "src edit on p1",
                "src saved on p1",
                "dst edit on p1",
                "dst saved on p1",
            ] {
                assert!(
                    lines.contains(line),
                    "seed {seed} p{p}: {line:?} lost: {disk:?}"
                );
            }
        }
        assert_eq!(w.peers[0].disk, w.peers[1].disk, "seed {seed}");
    }
}

/// On p0 a note is moved out of the way and another moved to its name (`mv dst.md
/// other.md; mv src.md dst.md`) while a program on p1 has just saved a line to each (not
/// yet reported): both removals on p1 are refused. Each line stays in its own note, under
/// the note's new name. (Before, the save at the moved note's old name was merged first,
/// and the note then written over the other's refused removal: the other's text came
/// back as its edit, and the moved note's text was gone.)
#[test]
fn two_notes_moved_along_while_saved_to_keep_each_line_in_its_note() {
    for seed in 40..60 {
        let mut w = moved_over(seed);
        w.peers[1]
            .disk
            .insert("src.md".into(), b"source text\nsrc saved on p1\n".to_vec());
        w.peers[1].disk.insert(
            "dst.md".into(),
            b"replaced text\ndst saved on p1\n".to_vec(),
        );
        // (Both moves reach p1 together.)
        w.disconnect(1);
        w.rename(0, "dst.md", "other.md");
        w.rename(0, "src.md", "dst.md");
        w.connect(1);
        w.settle_converged();
        for p in 0..2 {
            let disk = &w.peers[p].disk;
            let what = format!("seed {seed} p{p}: {disk:?}");
            assert_eq!(disk.len(), 2, "{what}");
            let dst = w.read(p, "dst.md");
            assert_eq!(
                dst.as_deref(),
                Some("source text\nsrc saved on p1\n"),
                "{what}"
            );
            let other = w.read(p, "other.md");
            assert_eq!(
                other.as_deref(),
                Some("replaced text\ndst saved on p1\n"),
                "{what}"
            );
        }
    }
}

/// A note deleted here (moved out, `rm`) while a peer edits it lives again (a deletion
/// meeting an edit keeps the edit): cue writes it back here with the peer's edit. The
/// user then puts back the copy they took away (`mv /tmp/f.md .`, a backup copied
/// back), perhaps edited meanwhile: an edit of the version they deleted, not of the one
/// cue wrote, which they never saw. The peer's line stays (before, the copy put back was
/// taken for an edit deleting it, on both devices). A save made to the note cue wrote
/// back is an edit of that one (nothing doubled). The same when the daemon restarted
/// between the deletion and the copy put back (the version deleted is the tombstone's
/// then: before, the copy was taken for an edit of cue's version, the peer's line lost).
#[test]
fn a_deleted_note_put_back_after_a_peer_edited_it_keeps_the_peers_edit() {
    for restarted in [false, true] {
        put_back_after_a_peer_edit(restarted);
    }
}

fn put_back_after_a_peer_edit(restarted: bool) {
    // What is put back, and the lines the note ends with (each once, in any order:
    // two lines added at one place by two devices are merged in automerge's order).
    let cases: [(&[u8], &[&str]); 3] = [
        (b"note\n", &["note", "B line"]),
        (b"note\nA line\n", &["note", "B line", "A line"]),
        (b"note\nB line\nA line\n", &["note", "B line", "A line"]),
    ];
    for (seed, (put_back, want)) in (70..).zip(cases) {
        let mut w = World::new(2, seed, Config::default());
        w.connect_all();
        w.write(0, "f.md", b"note\n");
        w.settle_converged();
        w.disconnect(1);
        w.delete(0, "f.md");
        w.write(1, "f.md", b"note\nB line\n");
        w.connect(1);
        w.settle_converged();
        assert_eq!(w.read(0, "f.md").as_deref(), Some("note\nB line\n"));
        if restarted {
            w.restart(0);
            w.settle_converged();
        }
        w.write(0, "f.md", put_back);
        w.settle_converged();
        for p in 0..2 {
            let what = format!(
                "put back {:?}, restarted {restarted}, p{p}",
                String::from_utf8_lossy(put_back)
            );
            let text = w.read(p, "f.md").unwrap_or_default();
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort_unstable();
            let mut want = want.to_vec();
            want.sort_unstable();
            assert_eq!(lines, want, "{what}");
            assert_eq!(w.peers[p].disk.len(), 1, "{what}: {:?}", w.peers[p].disk);
        }
    }
}

/// The same, p1 online, its line saved just before p0's deletion reached it (not yet
/// reported): p1's removal is refused, and the save is the note's edit (the note lives
/// again, the same note on both devices: it was a new note of the same name before, and
/// the copy put back on p0 then undid p1's line as an edit of that new note).
#[test]
fn a_note_deleted_while_saved_to_elsewhere_stays_one_note() {
    let mut w = World::new(2, 81, Config::default());
    w.connect_all();
    w.write(0, "f.md", b"note\n");
    w.settle_converged();
    w.peers[1]
        .disk
        .insert("f.md".into(), b"note\nB line\n".to_vec());
    w.delete(0, "f.md");
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(w.read(p, "f.md").as_deref(), Some("note\nB line\n"), "p{p}");
        assert_eq!(w.peers[p].disk.len(), 1, "p{p}: {:?}", w.peers[p].disk);
    }
    w.write(0, "f.md", b"note\n");
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(w.read(p, "f.md").as_deref(), Some("note\nB line\n"), "p{p}");
    }
}

/// p0's user moves a note over another (`mv src.md dst.md`, not yet reported) just as
/// p1's edits of both reach p0: the write of `dst.md` finds the moved note's bytes, the
/// version p0 believed at `src.md` before this round (its write of `src.md`, made in the
/// same round, finds it gone). That is the moved note, not an edit of the replaced one:
/// the write waits for the watcher's report of the move. (Taken for an edit, the
/// replaced note's text became the moved note's; p1's edit then kept that copy alive,
/// and the replaced note's own text was gone from both devices.)
#[test]
fn a_move_over_made_as_edits_of_both_notes_arrive_keeps_the_replaced_text() {
    for seed in [91, 92, 93, 94] {
        let mut w = moved_over(seed);
        let moved = w.peers[0].disk.remove("src.md").unwrap_or_default();
        w.peers[0].disk.insert("dst.md".into(), moved.clone());
        w.write(1, "src.md", b"source text\nsrc edit on p1\n");
        w.write(1, "dst.md", b"replaced text\ndst edit on p1\n");
        w.settle(20);
        w.input(
            0,
            Input::FileRenamed {
                from: "src.md".into(),
                to: "dst.md".into(),
                content: moved,
                exec: false,
            },
        );
        w.settle_converged();
        for p in 0..2 {
            let disk = &w.peers[p].disk;
            let holding = |line: &str| {
                (disk.values())
                    .filter(|v| String::from_utf8_lossy(v).lines().any(|l| l == line))
                    .count()
            };
            let what = format!("seed {seed} p{p}: {disk:?}");
            assert_eq!(holding("replaced text"), 1, "{what}");
            assert_eq!(holding("dst edit on p1"), 1, "{what}");
            assert_eq!(holding("source text"), 1, "{what}");
            assert_eq!(holding("src edit on p1"), 1, "{what}");
        }
        assert_eq!(w.peers[0].disk, w.peers[1].disk, "seed {seed}");
    }
}
