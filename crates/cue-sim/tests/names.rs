//! Names that look the same, and folders that ignore letter case (docs/reference.md
//! §2.4): the workspace never holds two live files whose names are equal after Unicode
//! NFC normalisation and case folding, so no filesystem ever takes two of its files for
//! one, and no device shows two files that look identical.

use cue_core::paths::name_key;
use cue_core::{Config, ConflictKind};
use cue_sim::World;

const NFC: &str = "caf\u{e9}.md";
const NFD: &str = "cafe\u{301}.md";

/// The files on a peer's disk as (name, content), in name order.
fn files(w: &World, peer: usize) -> Vec<(String, String)> {
    w.peers[peer]
        .disk
        .iter()
        .map(|(p, b)| (p.clone(), String::from_utf8_lossy(b).into_owned()))
        .collect()
}

/// Two devices, offline, each create a file under one of `names`; then they meet.
fn created_apart(names: [&str; 2], contents: [&str; 2]) -> World {
    let mut w = World::new(2, 3, Config::default());
    w.write(0, names[0], contents[0].as_bytes());
    w.write(1, names[1], contents[1].as_bytes());
    w.connect_all();
    w.settle_converged();
    w
}

/// Both contents are kept, under two names that do not look the same, and the clash is
/// listed as a conflict on every peer.
fn assert_kept_apart(w: &mut World, contents: [&str; 2]) {
    for p in 0..2 {
        let on_disk = files(w, p);
        assert_eq!(on_disk.len(), 2, "peer {p}: {on_disk:?}");
        let keys: Vec<String> = on_disk.iter().map(|(n, _)| name_key(n)).collect();
        assert_ne!(keys[0], keys[1], "peer {p}: {on_disk:?}");
        for c in contents {
            assert!(on_disk.iter().any(|(_, b)| b == c), "peer {p} lost {c:?}");
        }
        assert!(
            on_disk.iter().any(|(n, _)| n.contains(".conflict-")),
            "peer {p}: {on_disk:?}"
        );
        let st = w.status(p);
        assert_eq!(st.conflicts.len(), 1, "peer {p}: {:?}", st.conflicts);
        assert_eq!(st.conflicts[0].kind, ConflictKind::Create);
    }
}

#[test]
fn names_equal_after_nfc_normalisation_are_one_file() {
    let mut w = created_apart([NFC, NFD], ["from p0\n", "from p1\n"]);
    assert_kept_apart(&mut w, ["from p0\n", "from p1\n"]);
    // The same bytes under both forms are one file, as two creations of one path are.
    let w = created_apart([NFC, NFD], ["same\n", "same\n"]);
    for p in 0..2 {
        assert_eq!(files(&w, p).len(), 1, "peer {p}: {:?}", files(&w, p));
    }
}

#[test]
fn names_differing_only_in_case_are_never_two_files() {
    let mut w = created_apart(["Notes.md", "notes.md"], ["upper\n", "lower\n"]);
    assert_kept_apart(&mut w, ["upper\n", "lower\n"]);
}

#[test]
fn a_file_and_a_folder_differing_only_in_case_are_kept_apart() {
    let mut w = created_apart(["Plans", "plans/q1.md"], ["a file\n", "in a folder\n"]);
    for p in 0..2 {
        let on_disk = files(&w, p);
        assert_eq!(on_disk.len(), 2, "peer {p}: {on_disk:?}");
        assert!(
            on_disk.iter().any(|(n, _)| n == "plans/q1.md"),
            "peer {p}: {on_disk:?}"
        );
        assert!(
            on_disk
                .iter()
                .any(|(n, b)| n.starts_with("Plans.conflict-") && b == "a file\n"),
            "peer {p}: {on_disk:?}"
        );
        assert_eq!(w.status(p).conflicts.len(), 1);
    }
}

/// One device on a folder that keeps case (Linux), one on a folder that ignores it (a
/// Mac, exFAT): files the first holds under names differing in case must each keep their
/// content on the second.
#[test]
fn a_folder_that_ignores_case_never_overwrites_one_file_with_another() {
    let mut w = World::new(2, 5, Config::default());
    w.make_case_insensitive(1);
    w.write(0, "Notes.md", b"upper\n");
    w.write(0, "notes.md", b"lower\n");
    // Two folders on the first disk, one on the second.
    w.write(0, "Docs/a.md", b"a\n");
    w.write(0, "docs/b.md", b"b\n");
    w.connect_all();
    w.settle_converged();
    let on_1 = files(&w, 1);
    for c in ["upper\n", "lower\n", "a\n", "b\n"] {
        assert!(on_1.iter().any(|(_, b)| b == c), "lost {c:?}: {on_1:?}");
    }
    assert_eq!(on_1.len(), 4, "{on_1:?}");

    // One folder there: one of the two files sits in a folder spelled otherwise than its
    // path in the workspace.
    let folders: Vec<&str> = on_1
        .iter()
        .filter_map(|(n, _)| n.split_once('/'))
        .map(|(d, _)| d)
        .collect();
    assert_eq!(folders[0], folders[1], "{on_1:?}");
    // The second device edits both: edits, not new files nor removals.
    w.write(1, "DOCS/a.md", b"a, edited on a Mac\n");
    w.write(1, "DOCS/b.md", b"b, edited on a Mac\n");
    w.settle_converged();
    assert_eq!(
        w.read(0, "Docs/a.md").as_deref(),
        Some("a, edited on a Mac\n")
    );
    assert_eq!(
        w.read(0, "docs/b.md").as_deref(),
        Some("b, edited on a Mac\n")
    );
    assert_eq!(files(&w, 0).len(), 4, "{:?}", files(&w, 0));

    // Its start-up scan finds every file where the engine put it, at any spelling.
    w.restart(1);
    w.settle_converged();
    assert_eq!(files(&w, 0).len(), 4, "{:?}", files(&w, 0));
    assert_eq!(files(&w, 1).len(), 4, "{:?}", files(&w, 1));
    assert!(w.status(1).conflicts.len() <= 1);
}

#[test]
fn a_change_of_case_only_is_a_rename_on_a_folder_that_ignores_case_too() {
    let mut w = World::new(2, 9, Config::default());
    w.make_case_insensitive(1);
    w.write(0, "readme.md", b"hello\n");
    w.connect_all();
    w.settle_converged();
    w.rename(0, "readme.md", "README.md");
    w.settle_converged();
    // Renamed there too: the same name everywhere.
    assert_eq!(
        files(&w, 1),
        vec![("README.md".to_string(), "hello\n".to_string())]
    );
    // An edit there still reaches the other device's renamed file.
    w.write(1, "README.md", b"hello again\n");
    w.settle_converged();
    assert_eq!(w.read(0, "README.md").as_deref(), Some("hello again\n"));
    assert_eq!(files(&w, 0).len(), 1, "{:?}", files(&w, 0));
}

/// A document adopted with its content (as a first sync sends files) for a path that
/// clashes with a live file's (the same name; a folder of it; a file where its folder
/// is), after the path itself came in an earlier message: the clash is settled as any
/// other (both contents kept under names that can both be on disk), not taken for a
/// file that merely joined the workspace (`Engine::became_live`).
#[test]
fn a_document_adopted_under_a_clashing_name_is_kept_apart() {
    use cue_core::wire::{Message, encode};
    use cue_core::{FileId, Input};
    for (live, adopted) in [("Notes.md", "notes.md"), ("a/b.md", "A"), ("a", "A/b.md")] {
        let mut w = World::online(2, 5);
        w.write(1, live, b"live\n");
        w.settle_converged();
        // Peer 0's device names a new file in the index, then sends its document with
        // the content, in two messages.
        let file = FileId([7; 16]);
        let items = cue_sim::new_file_items(&w, 0, file, adopted, b"adopted\n", b"adopted\n");
        assert_eq!(items.len(), 2);
        let from = w.peers[0].device;
        for item in items {
            let bytes = encode(&Message { items: vec![item] });
            w.input(1, Input::Message { from, bytes });
        }
        w.settle_converged();
        for p in 0..2 {
            let on_disk = files(&w, p);
            assert_eq!(
                on_disk.len(),
                2,
                "{live} / {adopted}, peer {p}: {on_disk:?}"
            );
            for c in ["live\n", "adopted\n"] {
                assert!(on_disk.iter().any(|(_, b)| b == c), "peer {p} lost {c:?}");
            }
            assert!(
                on_disk.iter().any(|(n, _)| n.contains(".conflict-")),
                "{live} / {adopted}, peer {p}: {on_disk:?}"
            );
        }
    }
}

/// The same clashes made on one device, the second file saved after the first synced: a
/// new local file joins the live view alone only when its path clashes with no live
/// file's (`commit_index_keeping_view`, then `became_live` at its first content);
/// otherwise the clash is settled as any other, on both peers.
#[test]
fn a_file_saved_under_a_clashing_name_on_the_same_device_is_kept_apart() {
    // Both contents on the peer's disk, under names that can both be on any disk.
    let apart = |w: &World, p: usize, case: &str| {
        let on_disk = files(w, p);
        assert_eq!(on_disk.len(), 2, "{case}, peer {p}: {on_disk:?}");
        for c in ["live\n", "new\n"] {
            assert!(on_disk.iter().any(|(_, b)| b == c), "peer {p} lost {c:?}");
        }
        let keys: Vec<String> = on_disk.iter().map(|(n, _)| name_key(n)).collect();
        let (a, b) = (&keys[0], &keys[1]);
        assert!(
            a != b && !a.starts_with(&format!("{b}/")) && !b.starts_with(&format!("{a}/")),
            "{case}, peer {p}: names that cannot both be on a disk: {on_disk:?}"
        );
    };
    for (live, new) in [("Notes.md", "notes.md"), ("a/b.md", "A"), ("a", "A/b.md")] {
        let case = format!("{live} / {new}");
        let mut w = World::online(2, 7);
        w.write(0, live, b"live\n");
        w.settle_converged();
        // Alone, so that it is this device that sees the clash (the other would settle
        // it too, once it hears of the new file).
        w.disconnect(0);
        w.write(0, new, b"new\n");
        w.settle(20);
        apart(&w, 0, &case);
        w.connect_all();
        w.settle_converged();
        for p in 0..2 {
            apart(&w, p, &case);
        }
    }
}

/// A peer's rename onto a name that clashes with a file made here at the same time (the
/// same name but for case; a folder of it; a file where its folder is) arrives as a path
/// change alone, which the receiver takes without looking at every file
/// (`Engine::paths_changed`) only when nothing clashes. Here the renaming peer goes
/// offline before it hears of the new file, so the receiver alone must settle the
/// clash: both contents kept, under names that can both be on a disk, the rename done.
#[test]
fn a_peers_rename_onto_a_clashing_name_is_kept_apart() {
    for (made, renamed_to) in [("notes.md", "Notes.md"), ("a/b.md", "A"), ("a", "A/b.md")] {
        let case = format!("{made} / {renamed_to}");
        let mut w = World::online(2, 11);
        w.write(0, "x.md", b"renamed\n");
        w.write(0, "other.md", b"other\n");
        w.settle_converged();
        // The rename first in flight, then the new file: the rename reaches peer 1, and
        // peer 0 leaves before the new file reaches it.
        w.rename(0, "x.md", renamed_to);
        w.write(1, made, b"made\n");
        while w.read(1, "x.md").is_some() && w.step() {}
        w.disconnect(0);
        w.settle(20);
        let apart = |w: &World, p: usize| {
            let on_disk = files(w, p);
            assert_eq!(on_disk.len(), 3, "{case}, peer {p}: {on_disk:?}");
            for c in ["made\n", "renamed\n", "other\n"] {
                assert!(
                    on_disk.iter().any(|(_, b)| b == c),
                    "{case}: peer {p} lost {c:?}"
                );
            }
            assert!(
                !on_disk.iter().any(|(n, _)| n == "x.md"),
                "{case}, peer {p}: the rename was not done: {on_disk:?}"
            );
            let keys: Vec<String> = on_disk.iter().map(|(n, _)| name_key(n)).collect();
            for (i, a) in keys.iter().enumerate() {
                for b in keys.iter().skip(i + 1) {
                    assert!(
                        a != b
                            && !a.starts_with(&format!("{b}/"))
                            && !b.starts_with(&format!("{a}/")),
                        "{case}, peer {p}: names that cannot both be on a disk: {on_disk:?}"
                    );
                }
            }
        };
        apart(&w, 1);
        w.connect_all();
        w.settle_converged();
        apart(&w, 0);
        apart(&w, 1);
        assert_eq!(files(&w, 0), files(&w, 1), "{case}");
    }
}

/// Paths a peer moves, one message after another, into a workspace of many files: each
/// move is taken alone (`Engine::paths_changed`); what is on disk is what a peer that
/// looked at every file would have, on both peers.
#[test]
fn a_peers_moves_in_a_big_workspace_land_where_they_should() {
    let mut w = World::online(2, 13);
    let files_in: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("d{}/n{i}.md", i % 7),
                format!("note {i}\n").into_bytes(),
            )
        })
        .collect();
    for chunk in files_in.chunks(64) {
        w.write_many(0, chunk);
    }
    // (The documents adopted whole are checked a few a tick.)
    w.settle(40);
    w.settle_converged();
    for i in (0..300).step_by(17) {
        w.rename(0, &format!("d{}/n{i}.md", i % 7), &format!("moved/m{i}.md"));
        w.settle(5);
    }
    // A move onto a name a moved file just left, and a swap through a third name.
    w.rename(0, "moved/m0.md", "moved/tmp.md");
    w.rename(0, "moved/m17.md", "moved/m0.md");
    w.rename(0, "moved/tmp.md", "moved/m17.md");
    w.settle_converged();
    assert_eq!(files(&w, 0), files(&w, 1));
    let on_disk = files(&w, 1);
    assert_eq!(on_disk.len(), 300);
    assert!(on_disk.contains(&("moved/m0.md".to_string(), "note 17\n".to_string())));
    assert!(on_disk.contains(&("moved/m17.md".to_string(), "note 0\n".to_string())));
    assert!(on_disk.contains(&("d1/n1.md".to_string(), "note 1\n".to_string())));
}

/// A local rename onto a name that clashes with a live file (on a disk that keeps case:
/// the same name but for case; a folder of it; a file where its folder is) is settled
/// as any clash, here and on the peer; a rename or deletion that clashes with nothing
/// is taken for its file alone (`Engine::commit_index_for`).
#[test]
fn a_local_rename_onto_a_clashing_name_is_kept_apart() {
    for (live, renamed_to) in [("Notes.md", "notes.md"), ("a/b.md", "A"), ("a", "A/b.md")] {
        let case = format!("{live} / {renamed_to}");
        let mut w = World::online(2, 17);
        w.write(0, live, b"live\n");
        w.write(0, "x.md", b"renamed\n");
        w.write(0, "gone.md", b"gone\n");
        w.settle_converged();
        // Alone, so that this device settles it.
        w.disconnect(1);
        w.delete(0, "gone.md");
        w.rename(0, "x.md", renamed_to);
        w.settle(20);
        let apart = |w: &World, p: usize| {
            let on_disk = files(w, p);
            assert_eq!(on_disk.len(), 2, "{case}, peer {p}: {on_disk:?}");
            for c in ["live\n", "renamed\n"] {
                assert!(
                    on_disk.iter().any(|(_, b)| b == c),
                    "{case}: peer {p} lost {c:?}"
                );
            }
            let keys: Vec<String> = on_disk.iter().map(|(n, _)| name_key(n)).collect();
            let (a, b) = (&keys[0], &keys[1]);
            assert!(
                a != b && !a.starts_with(&format!("{b}/")) && !b.starts_with(&format!("{a}/")),
                "{case}, peer {p}: names that cannot both be on a disk: {on_disk:?}"
            );
        };
        apart(&w, 0);
        w.connect_all();
        w.settle_converged();
        apart(&w, 0);
        apart(&w, 1);
        assert_eq!(files(&w, 0), files(&w, 1), "{case}");
    }
}

/// A device joining with its folder full, whose names are spelled in the other Unicode
/// form (a folder copied from a Mac: NFD), has its files dropped as one with the
/// others' (NFC): nothing is shown as a deletion nor paused by the guard, and every
/// file stays.
#[test]
fn a_folder_joining_full_under_the_other_unicode_form_is_no_mass_deletion() {
    let nfc: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("caf\u{e9} {i}.md"),
                format!("note {i}\n").into_bytes(),
            )
        })
        .collect();
    let nfd: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("cafe\u{301} {i}.md"),
                format!("note {i}\n").into_bytes(),
            )
        })
        .collect();
    let mut w = World::new(3, 5, Config::default());
    w.connect(0);
    w.connect(1);
    w.write_many(0, &nfc);
    w.settle(10);
    w.write_many(2, &nfd);
    w.connect(2);
    w.settle_converged();
    for p in 0..3 {
        assert_eq!(w.peers[p].disk.len(), 30, "peer {p}: {:?}", files(&w, p));
        assert_eq!(w.status(p).deletions_paused, None, "peer {p}");
        let deletions = (w.peers[p].activity.iter())
            .filter(|a| a.kind == cue_core::ActivityKind::Delete)
            .count();
        assert_eq!(deletions, 0, "peer {p}");
    }
}
