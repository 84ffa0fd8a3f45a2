//! One scenario per merge rule of docs/reference.md §3.1, across simulated peers. Each
//! fails without the rule it names.

use cue_core::{Config, ConflictKind};
use cue_sim::World;

#[test]
fn initial_sync_copies_files_to_a_new_peer() {
    let mut w = World::new(2, 1, Config::default());
    w.write(0, "a.md", b"# A\n");
    w.write(0, "dir/b.txt", b"bee");
    w.connect_all();
    w.settle_converged();
    assert_eq!(w.read(1, "a.md").as_deref(), Some("# A\n"));
    assert_eq!(w.read(1, "dir/b.txt").as_deref(), Some("bee"));
}

#[test]
fn live_edit_reaches_the_other_peer() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"hello\n");
    w.settle_converged();
    w.write(1, "a.md", b"hello world\n");
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("hello world\n"));
}

#[test]
fn concurrent_edits_to_different_places_both_survive() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"line one\nline two\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "a.md", b"line ONE\nline two\n");
    w.write(1, "a.md", b"line one\nline two!\n");
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("line ONE\nline two!\n"));
}

#[test]
fn concurrent_inserts_at_one_place_each_stay_whole() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"ab");
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "a.md", b"aXXXXb");
    w.write(1, "a.md", b"aYYYYb");
    w.connect(1);
    w.settle_converged();
    let merged = w.read(0, "a.md").unwrap();
    assert!(merged == "aXXXXYYYYb" || merged == "aYYYYXXXXb", "{merged}");
}

#[test]
fn frontmatter_scalar_last_writer_wins_and_loser_is_a_conflict() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"---\ntitle: One\nstatus: draft\n---\nbody\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "a.md", b"---\ntitle: Two\nstatus: draft\n---\nbody\n");
    w.write(1, "a.md", b"---\ntitle: Three\nstatus: draft\n---\nbody\n");
    w.connect(1);
    w.settle_converged();
    let merged = w.read(0, "a.md").unwrap();
    assert!(
        merged == "---\ntitle: Two\nstatus: draft\n---\nbody\n"
            || merged == "---\ntitle: Three\nstatus: draft\n---\nbody\n",
        "no interleaving: {merged}"
    );
    // The kept value is the one on disk, named with its device; the other is set aside
    // with its device's name (p0 wrote "Two", p1 "Three").
    let expected = if merged.contains("title: Two") {
        r#"title: kept "Two" (p0); set aside "Three" (p1)"#
    } else {
        r#"title: kept "Three" (p1); set aside "Two" (p0)"#
    };
    for p in 0..2 {
        let st = w.status(p);
        assert_eq!(st.conflicts.len(), 1, "peer {p}: {:?}", st.conflicts);
        assert_eq!(st.conflicts[0].kind, ConflictKind::Frontmatter);
        assert_eq!(st.conflicts[0].path, "a.md");
        assert_eq!(st.conflicts[0].detail, expected, "peer {p}");
    }
    let logged: Vec<_> = (0..2)
        .flat_map(|p| w.peers[p].activity.iter())
        .filter(|a| a.kind == cue_core::ActivityKind::Conflict)
        .collect();
    assert!(!logged.is_empty(), "the conflict is in an activity log");
    for a in logged {
        assert_eq!(a.detail.as_deref(), Some(expected), "activity log: {a:?}");
    }
    w.resolve(1, "a.md").unwrap();
    w.settle_converged();
    assert!(w.status(0).conflicts.is_empty());
}

/// A list made a value on one device while another adds an item to it: the value is
/// shown, and the list with the item added is set aside as a `frontmatter` conflict on
/// both devices (before, the item was gone and nothing said so).
#[test]
fn frontmatter_list_made_a_value_while_an_item_is_added_is_a_conflict() {
    let mut w = World::online(2, 9);
    w.write(0, "g.md", b"---\ntitle: T\ntags: [a, b]\n---\nBody\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "g.md", b"---\ntitle: T\ntags: none\n---\nBody\n");
    w.write(1, "g.md", b"---\ntitle: T\ntags: [a, b, c]\n---\nBody\n");
    w.connect(1);
    w.settle_converged();
    assert_eq!(
        w.read(0, "g.md").as_deref(),
        Some("---\ntitle: T\ntags: none\n---\nBody\n")
    );
    for p in 0..2 {
        let st = w.status(p);
        assert_eq!(st.conflicts.len(), 1, "peer {p}: {:?}", st.conflicts);
        assert_eq!(st.conflicts[0].kind, ConflictKind::Frontmatter);
        assert_eq!(
            st.conflicts[0].detail, r#"tags: kept "none" (p0); set aside "[a, b, c]" (p1)"#,
            "peer {p}"
        );
    }
}

#[test]
fn frontmatter_causal_change_is_not_a_conflict() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"---\ntitle: One\n---\n");
    w.settle_converged();
    w.write(1, "a.md", b"---\ntitle: Two\n---\n");
    w.settle_converged();
    w.write(0, "a.md", b"---\ntitle: Three\n---\n");
    w.settle_converged();
    assert_eq!(
        w.read(1, "a.md").as_deref(),
        Some("---\ntitle: Three\n---\n")
    );
    assert!(w.status(1).conflicts.is_empty());
}

#[test]
fn frontmatter_arrays_merge_as_a_union_with_causal_removals() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"---\ntags:\n  - a\n  - b\n---\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "a.md", b"---\ntags:\n  - a\n  - b\n  - c\n---\n");
    w.write(1, "a.md", b"---\ntags:\n  - b\n  - d\n  - c\n---\n");
    w.connect(1);
    w.settle_converged();
    let merged = w.read(0, "a.md").unwrap();
    // `a` was removed by peer 1 who had seen it; c was added by both: once.
    assert_eq!(merged.matches("- c").count(), 1, "{merged}");
    assert!(!merged.contains("- a"), "{merged}");
    assert!(merged.contains("- b") && merged.contains("- d"), "{merged}");
    assert!(w.status(0).conflicts.is_empty());
}

#[test]
fn changing_one_key_touches_only_its_line() {
    let mut w = World::online(2, 7);
    let original = "---\n# keep this comment\ntitle:   Spaced   # trailing\ntags: [a,b]\nnested:\n    deep: {x: 1}\nstatus: draft\n---\nbody\n";
    w.write(0, "a.md", original.as_bytes());
    w.settle_converged();
    assert_eq!(
        w.read(1, "a.md").as_deref(),
        Some(original),
        "byte-identical copy"
    );
    let edited = original.replace("status: draft", "status: done");
    w.write(1, "a.md", edited.as_bytes());
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some(edited.as_str()));
}

#[test]
fn invalid_frontmatter_merges_as_text() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"---\ntitle: [broken\nowner: x\n---\nbody\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(
        0,
        "a.md",
        b"---\ntitle: [broken, more\nowner: x\n---\nbody\n",
    );
    w.write(1, "a.md", b"---\ntitle: [broken\nowner: xy\n---\nbody\n");
    w.connect(1);
    w.settle_converged();
    assert_eq!(
        w.read(0, "a.md").as_deref(),
        Some("---\ntitle: [broken, more\nowner: xy\n---\nbody\n")
    );
}

#[test]
fn delete_then_restore_brings_back_the_last_content() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"precious\n");
    w.settle_converged();
    w.delete(1, "a.md");
    w.settle_converged();
    assert_eq!(w.read(0, "a.md"), None);
    assert!(w.restore(0, "never.md").is_err());
    w.restore(0, "a.md").unwrap();
    w.settle_converged();
    assert_eq!(w.read(1, "a.md").as_deref(), Some("precious\n"));
}

#[test]
fn delete_concurrent_with_edit_keeps_the_edit() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"v1\n");
    w.settle_converged();
    w.disconnect(1);
    w.delete(0, "a.md");
    w.write(1, "a.md", b"v1 edited\n");
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("v1 edited\n"));
}

#[test]
fn rename_and_concurrent_edit_both_land() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"text\n");
    w.settle_converged();
    w.disconnect(1);
    w.rename(0, "a.md", "b.md");
    w.write(1, "a.md", b"text edited\n");
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.read(1, "a.md"), None);
    assert_eq!(w.read(1, "b.md").as_deref(), Some("text edited\n"));
}

#[test]
fn concurrent_creation_keeps_both_as_a_conflict_copy() {
    let mut w = World::online(2, 7);
    w.disconnect(1);
    w.write(0, "notes.md", b"from zero\n");
    w.write(1, "notes.md", b"from one\n");
    w.connect(1);
    w.settle_converged();
    let files: Vec<String> = w.peers[0].disk.keys().cloned().collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let copy = files.iter().find(|f| f.contains(".conflict-")).unwrap();
    assert!(
        copy.starts_with("notes.conflict-p") && copy.ends_with(".md"),
        "{copy}"
    );
    let contents: Vec<String> = files.iter().map(|f| w.read(0, f).unwrap()).collect();
    assert!(
        contents.contains(&"from zero\n".to_string())
            && contents.contains(&"from one\n".to_string())
    );
    for p in 0..2 {
        let st = w.status(p);
        assert_eq!(st.conflicts.len(), 1);
        assert_eq!(st.conflicts[0].kind, ConflictKind::Create);
    }
    // Deleting the copy clears the conflict on every peer.
    let copy = copy.clone();
    w.delete(1, &copy);
    w.settle_converged();
    assert!(w.status(0).conflicts.is_empty());
}

#[test]
fn identical_concurrent_creations_are_one_file() {
    let mut w = World::online(2, 7);
    w.disconnect(1);
    w.write(0, "same.md", b"same\n");
    w.write(1, "same.md", b"same\n");
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.peers[0].disk.len(), 1);
    assert!(w.status(0).conflicts.is_empty());
}

#[test]
fn binary_last_writer_wins_and_loser_is_a_conflict_copy() {
    let mut w = World::online(2, 7);
    w.write(0, "img.png", &[0, 1, 2, 255]);
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "img.png", &[0, 1, 2, 254]);
    w.write(1, "img.png", &[0, 1, 2, 253]);
    w.connect(1);
    w.settle_converged();
    let files: Vec<String> = w.peers[0].disk.keys().cloned().collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let all: Vec<Vec<u8>> = w.peers[0].disk.values().cloned().collect();
    assert!(all.contains(&vec![0, 1, 2, 254]) && all.contains(&vec![0, 1, 2, 253]));
    assert_eq!(w.status(1).conflicts[0].kind, ConflictKind::Binary);
}

#[test]
fn same_changes_in_any_order_give_the_same_bytes() {
    for seed in 0..20 {
        let mut w = World::new(3, seed, Config::default());
        w.faults.reorder = true;
        w.connect_all();
        w.write(0, "a.md", b"---\ntags: [a]\n---\nbase\n");
        w.settle(5);
        w.write(0, "a.md", b"---\ntags: [a, b]\n---\nbase zero\n");
        w.write(1, "a.md", b"---\ntags: [a, c]\n---\none base\n");
        w.write(2, "a.md", b"---\ntags: [d, a]\n---\nbase two\n");
        w.settle_converged();
    }
}

#[test]
fn unchanged_files_are_never_rewritten_and_own_writes_do_not_echo() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"one\n");
    w.write(0, "b.md", b"two\n");
    w.settle_converged();
    let before = w.peers[1].activity.len();
    w.write(0, "a.md", b"one!\n");
    w.settle_converged();
    // Peer 1 saw one remote change (a.md) and nothing about b.md.
    let acts: Vec<_> = w.peers[1].activity[before..]
        .iter()
        .filter(|a| a.path.as_deref() == Some("b.md"))
        .collect();
    assert!(acts.is_empty(), "{acts:?}");
    // Peer 1's write of a.md coming back through the watcher is not a change.
    let pending = w.status(1).pending_changes;
    w.write(1, "a.md", b"one!\n");
    assert_eq!(w.status(1).pending_changes, pending);
}

#[test]
fn local_edit_not_yet_seen_is_merged_not_overwritten() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"one\ntwo\n");
    w.settle_converged();
    // Peer 1's user saves, but the watcher has not reported it yet.
    w.peers[1]
        .disk
        .insert("a.md".into(), b"one\ntwo\nthree\n".to_vec());
    w.write(0, "a.md", b"zero\none\ntwo\n");
    w.settle_converged();
    assert_eq!(
        w.read(1, "a.md").as_deref(),
        Some("zero\none\ntwo\nthree\n")
    );
}

#[test]
fn offline_work_syncs_when_peers_meet_and_restart_scans_changes() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"a\n");
    w.write(0, "b.md", b"b\n");
    w.settle_converged();
    w.disconnect(1);
    // Daemon stopped: the folder changes behind its back.
    w.peers[1]
        .disk
        .insert("a.md".into(), b"a edited offline\n".to_vec());
    w.peers[1].disk.remove("b.md");
    w.peers[1]
        .disk
        .insert("c.md".into(), b"new offline\n".to_vec());
    w.restart(1);
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("a edited offline\n"));
    assert_eq!(w.read(0, "b.md"), None);
    assert_eq!(w.read(0, "c.md").as_deref(), Some("new offline\n"));
}

#[test]
fn long_absence_triggers_a_full_resync_that_keeps_local_work() {
    let config = Config {
        max_offline_ms: 1_000,
        ..Config::default()
    };
    let mut w = World::new(2, 3, config);
    w.connect_all();
    w.write(0, "a.md", b"shared\n");
    w.settle_converged();
    w.disconnect(1);
    w.write(1, "mine.md", b"offline work\n");
    w.write(0, "theirs.md", b"their work\n");
    w.advance(5_000);
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.read(0, "mine.md").as_deref(), Some("offline work\n"));
    assert_eq!(w.read(1, "theirs.md").as_deref(), Some("their work\n"));
    assert!(w.status(1).last_full_resync_ms.is_some() || w.status(0).last_full_resync_ms.is_some());
}

#[test]
fn large_files_split_over_small_messages() {
    let config = Config {
        max_message_bytes: 1024,
        ..Config::default()
    };
    let mut w = World::new(2, 3, config);
    w.connect_all();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    w.write(0, "big.bin", &big);
    w.settle_converged();
    assert_eq!(w.peers[1].disk.get("big.bin"), Some(&big));
}

#[test]
fn files_over_the_size_limit_are_skipped_and_listed() {
    let config = Config {
        max_file_size: 10,
        ..Config::default()
    };
    let mut w = World::new(2, 3, config);
    w.connect_all();
    w.write(0, "big.txt", b"this is longer than ten bytes");
    w.settle_converged();
    assert_eq!(w.read(1, "big.txt"), None);
    assert_eq!(w.status(0).skipped, vec![("big.txt".to_string(), 29)]);
}

/// A peer's file arrives for a path where this device holds a file too large to sync:
/// the large file is left alone (not overwritten, not read again and again), and the
/// peer's file keeps its place on the other device.
#[test]
fn a_peer_file_never_replaces_a_file_too_large_here() {
    let config = Config {
        max_file_size: 10,
        ..Config::default()
    };
    let mut w = World::new(2, 4, config);
    w.connect_all();
    w.write(0, "big.txt", b"this is longer than ten bytes");
    w.write(1, "big.txt", b"small\n");
    w.settle_converged();
    assert_eq!(
        w.peers[0].disk.get("big.txt").map(Vec::as_slice),
        Some(&b"this is longer than ten bytes"[..])
    );
    assert_eq!(w.read(1, "big.txt").as_deref(), Some("small\n"));
    assert_eq!(w.status(0).skipped, vec![("big.txt".to_string(), 29)]);
    // The large file goes: that deletes nothing of the peer's, which now comes here.
    w.delete(0, "big.txt");
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(w.read(p, "big.txt").as_deref(), Some("small\n"), "peer {p}");
    }
}

#[test]
fn pending_changes_count_until_a_peer_confirms() {
    let mut w = World::new(2, 3, Config::default());
    w.connect(0);
    w.write(0, "a.md", b"x\n");
    assert!(w.status(0).pending_changes > 0);
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.status(0).pending_changes, 0);
}

#[test]
fn garbage_messages_are_counted_and_change_nothing() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"x\n");
    w.settle_converged();
    let from = w.peers[0].device;
    for bytes in [
        vec![],
        vec![1],
        vec![1, 255, 255, 255, 255, 255],
        vec![9; 100],
    ] {
        w.input(1, cue_core::Input::Message { from, bytes });
    }
    assert!(w.peers[1].engine.counters().bad_messages >= 3);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\n"));
}

#[test]
fn corrupt_documents_and_changes_from_a_peer_are_counted_and_change_nothing() {
    use cue_core::wire::{Item, Message, encode};
    use cue_core::{DocId, FileId};
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"keep me\n");
    w.settle_converged();
    let from = w.peers[0].device;
    let file = DocId::File(FileId([9; 16]));
    let items = vec![
        // Truncated / garbage whole documents, for a known and an unknown document.
        Item::Whole {
            doc: DocId::Index,
            bytes: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        },
        Item::Whole {
            doc: file,
            bytes: vec![1; 64],
        },
        // Garbage changes, and changes for a document nobody named.
        Item::Changes {
            doc: file,
            changes: vec![vec![0; 10], vec![]],
        },
        // Chunks that cannot be reassembled.
        Item::Chunk {
            id: 1,
            index: 5,
            total: 2,
            bytes: vec![1],
        },
        Item::Chunk {
            id: 2,
            index: 0,
            total: 0,
            bytes: vec![],
        },
    ];
    w.input(
        1,
        cue_core::Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    let c = w.peers[1].engine.counters().clone();
    assert!(c.bad_documents >= 2, "{c:?}");
    assert!(c.bad_changes >= 2, "{c:?}");
    assert!(c.dropped_chunks >= 2, "{c:?}");
    assert_eq!(w.read(1, "a.md").as_deref(), Some("keep me\n"));
    // And everything still works afterwards.
    w.write(1, "a.md", b"keep me, edited\n");
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("keep me, edited\n"));
}

#[test]
fn a_peer_path_escaping_the_workspace_is_never_written() {
    use cue_core::index::IndexDoc;
    use cue_core::wire::{Item, Message, encode};
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"x\n");
    w.settle_converged();
    // A hostile member edits the index by hand: the file's path now points outside.
    let stored = w.peers[0].store.docs[&cue_core::DocId::Index].clone();
    // (Under one of the sender's own actors: a live change under another's is refused.)
    let from = w.peers[0].device;
    let mut index = IndexDoc::load(&stored, cue_core::actor_for(&from, 99)).unwrap();
    let (file, _) = index.paths().into_iter().next().unwrap();
    for bad in [
        "../escape.md",
        "/etc/passwd",
        ".cuedeck/config.toml",
        "a/../../b",
        ".git/hooks/x",
        "a\0b",
    ] {
        index.set_path(&file, bad).unwrap();
        let change = index.commit(0).unwrap();
        let item = Item::Changes {
            doc: cue_core::DocId::Index,
            changes: vec![change.raw_bytes().to_vec()],
        };
        let items = vec![cue_sim::seal_as(&w.peers[0].key, 99, item)];
        w.input(
            1,
            cue_core::Input::Message {
                from,
                bytes: encode(&Message { items }),
            },
        );
        for p in w.peers[1].disk.keys() {
            assert!(cue_core::paths::valid_path(p).is_ok(), "peer 1 wrote {p:?}");
        }
    }
    assert!(w.peers[1].engine.counters().bad_paths > 0);
}

#[test]
fn restart_under_a_new_device_name_keeps_files_and_edits() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"one\n");
    w.write(0, "b.md", b"two\n");
    w.settle_converged();
    w.disconnect(1);
    w.peers[1]
        .disk
        .insert("a.md".into(), b"one, edited while stopped\n".to_vec());
    w.peers[1].name = "renamed".into();
    w.restart(1);
    w.connect(1);
    w.settle_converged();
    assert_eq!(
        w.read(0, "a.md").as_deref(),
        Some("one, edited while stopped\n")
    );
    assert_eq!(w.read(0, "b.md").as_deref(), Some("two\n"));
    assert!(w.status(0).peers.iter().any(|p| p.name == "renamed"));
}

#[test]
fn a_document_sent_with_the_wrong_content_is_corrected_from_the_document() {
    use cue_core::index::IndexDoc;
    use cue_core::wire::{Item, Message, encode};
    use cue_core::{DocId, FileDoc, FileId};
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"x\n");
    w.settle_converged();
    // A faulty member sends a new file whose content does not match its document (made
    // under one of its own actors: a live change under another's is refused).
    let actor = cue_core::actor_for(&w.peers[0].device, 99);
    let mut doc = FileDoc::new(actor.clone());
    doc.write("b.md", b"what the document says\n", 0).unwrap();
    let heads: Vec<[u8; 32]> = doc.heads().iter().map(|h| h.0).collect();
    let bytes = doc.save();
    let stored = w.peers[0].store.docs[&DocId::Index].clone();
    let mut index = IndexDoc::load(&stored, actor).unwrap();
    let file = FileId([7; 16]);
    index.set_path(&file, "b.md").unwrap();
    let change = index.commit(0).unwrap();
    let key = &w.peers[0].key;
    let items = vec![
        cue_sim::seal_as(
            key,
            99,
            Item::Changes {
                doc: DocId::Index,
                changes: vec![change.raw_bytes().to_vec()],
            },
        ),
        cue_sim::seal_as(
            key,
            99,
            Item::Adopt {
                doc: DocId::File(file),
                bytes,
                heads,
                content: b"a lie\n".to_vec(),
            },
        ),
    ];
    let from = w.peers[0].device;
    w.input(
        1,
        cue_core::Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    // Written at once as it came, then checked: the document wins, on both peers.
    assert_eq!(w.read(1, "b.md").as_deref(), Some("a lie\n"));
    w.settle_converged();
    assert_eq!(
        w.read(1, "b.md").as_deref(),
        Some("what the document says\n")
    );
    assert_eq!(
        w.read(0, "b.md").as_deref(),
        Some("what the document says\n")
    );
    assert!(w.peers[1].engine.counters().bad_documents >= 1);
}

#[test]
fn edited_documents_are_stored_whole_once_the_workspace_is_at_rest() {
    let mut w = World::online(2, 7);
    w.write(0, "a.md", b"# A\n");
    w.write(0, "b.md", b"# B\n");
    w.settle_converged();
    for i in 0..5 {
        w.write(0, "a.md", format!("# A\n\nedit {i}\n").as_bytes());
        w.write(1, "b.md", format!("# B\n\nedit {i}\n").as_bytes());
        w.settle_converged();
    }
    let increments = |w: &World, p: usize| w.peers[p].store.increments.values().sum::<usize>();
    assert!(
        increments(&w, 0) > 0 && increments(&w, 1) > 0,
        "edits are stored as increments while the workspace is busy"
    );
    // Quiet: a few ticks later every document (and the index) is one snapshot.
    for _ in 0..5 {
        w.advance(1_000);
    }
    assert_eq!(increments(&w, 0), 0);
    assert_eq!(increments(&w, 1), 0);
    // And the snapshots hold every edit: a restarted peer reads them back.
    w.restart(0);
    w.restart(1);
    w.settle_converged();
    assert_eq!(w.read(0, "a.md").as_deref(), Some("# A\n\nedit 4\n"));
    assert_eq!(w.read(1, "b.md").as_deref(), Some("# B\n\nedit 4\n"));
}

#[test]
fn saves_handled_as_one_batch_end_as_the_same_saves_one_by_one() {
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("d{}/n{i}.md", i % 4),
                format!("# {i}\n\nbody {i}\n").into_bytes(),
            )
        })
        .collect();
    // Two saves of one path in a batch: the later one wins, as one by one.
    let mut batch = files.clone();
    batch.push(("d0/n0.md".to_string(), b"# 0\n\nsaved twice\n".to_vec()));
    let mut one_by_one = World::online(2, 7);
    let mut batched = World::online(2, 7);
    for (path, bytes) in &batch {
        one_by_one.write(0, path, bytes);
    }
    batched.write_many(0, &batch);
    one_by_one.settle_converged();
    batched.settle_converged();
    assert_eq!(batched.peers[1].disk, one_by_one.peers[1].disk);
    assert_eq!(batched.peers[1].disk.len(), 40);
    assert_eq!(
        batched.read(1, "d0/n0.md").as_deref(),
        Some("# 0\n\nsaved twice\n")
    );
}

#[test]
fn pending_changes_are_kept_by_file_and_survive_a_restart() {
    let mut w = World::new(2, 5, Config::default());
    let files = cue_sim::notes(40);
    w.write_many(0, &files);
    w.settle(10);
    let pending = w.status(0).pending_changes;
    assert!(pending >= 40, "{pending}");
    // An edit of a file adds its change to that file's record, not to the engine's
    // state, which is rewritten whole and would grow with the workspace.
    let state = w.peers[0].store.state.clone();
    w.write(0, "n3.md", b"note 3, edited\n");
    w.settle(10);
    assert_eq!(w.status(0).pending_changes, pending + 1);
    assert_eq!(w.peers[0].store.state, state);
    w.restart(0);
    assert_eq!(w.status(0).pending_changes, pending + 1);
    w.connect_all();
    w.settle_converged();
    assert_eq!(w.status(0).pending_changes, 0);
    w.restart(0);
    assert_eq!(w.status(0).pending_changes, 0);
}

/// One device empties a file while another edits it, offline: the text the other typed
/// survives (nothing typed is lost), without the text around it that the first device
/// deleted; both end with the same bytes. docs/user-guide.md shows what this looks like.
#[test]
fn emptying_a_file_while_another_device_edits_it_keeps_the_typed_text() {
    let mut w = World::new(2, 31, Config::default());
    w.connect_all();
    w.write(0, "t.md", b"line one\nline two\n");
    w.settle(10);
    w.disconnect(0);
    w.disconnect(1);
    w.write(0, "t.md", b"");
    w.write(1, "t.md", b"line one B edit\nline two\nB new\n");
    w.connect_all();
    w.settle(10);
    w.converged().unwrap();
    let text = w.read(0, "t.md").unwrap();
    assert!(text.contains(" B edit"), "{text:?}");
    assert!(text.contains("B new\n"), "{text:?}");
    assert!(!text.contains("line"), "{text:?}");
    assert_eq!(text, " B editB new\n");
}

/// A folder copied to two machines, and a note edited on one before they first met (or a
/// device that joins again with its old folder while the others edited on): the other's
/// copy holds bytes the edited file already had at an earlier version, so the two are
/// one file with the edit, not a conflict copy. Both ways round, since which of the two
/// keeps its id depends on ids drawn at random.
#[test]
fn a_copy_of_an_earlier_version_is_the_same_file() {
    let plain: [&str; 3] = [
        "# Plan\n",
        "# Plan\n\nship it\n",
        "# Plan\n\nship it today\n",
    ];
    let with_frontmatter: [&str; 3] = [
        "---\ntitle: Plan\ntags: [q1]\n---\n# Plan\n",
        "---\ntitle: Plan\ntags: [q1, q2]\n---\n# Plan\n\nship it\n",
        "---\ntitle: Plan B\ntags: [q1, q2]\n---\n# Plan\n\nship it\n",
    ];
    for versions in [plain, with_frontmatter] {
        for seed in 0..4 {
            for stale in 0..2 {
                let fresh = 1 - stale;
                let mut w = World::online(2, seed);
                w.disconnect(1);
                for v in versions {
                    w.write(fresh, "n.md", v.as_bytes());
                }
                // The copy holds the version before last.
                w.write(stale, "n.md", versions[1].as_bytes());
                w.connect(1);
                w.settle_converged();
                for p in 0..2 {
                    let files: Vec<&String> = w.peers[p].disk.keys().collect();
                    assert_eq!(files, ["n.md"], "seed {seed}, stale {stale}, peer {p}");
                    assert_eq!(w.read(p, "n.md").as_deref(), Some(versions[2]));
                    assert!(w.status(p).conflicts.is_empty());
                }
            }
        }
    }
}

/// A copy edited on its own before the two met is not an earlier version of anything:
/// both edits stay, one in a conflict copy, as for any two creations that differ.
#[test]
fn a_copy_edited_on_both_sides_stays_a_conflict_copy() {
    for seed in 0..4 {
        let mut w = World::online(2, seed);
        w.disconnect(1);
        w.write(0, "n.md", b"# Plan\n");
        w.write(0, "n.md", b"# Plan\n\nship it\n");
        w.write(1, "n.md", b"# Plan\n");
        w.write(1, "n.md", b"# Plan\n\nwait\n");
        w.connect(1);
        w.settle_converged();
        let all: Vec<Vec<u8>> = w.peers[0].disk.values().cloned().collect();
        assert_eq!(all.len(), 2, "seed {seed}");
        assert!(all.contains(&b"# Plan\n\nship it\n".to_vec()));
        assert!(all.contains(&b"# Plan\n\nwait\n".to_vec()));
        assert_eq!(w.status(0).conflicts.len(), 1);
    }
}

/// Two devices settle the same pair differently when one holds few enough of the edited
/// file's changes to search its history and the other does not (`VERSION_SEARCH_CHANGES`):
/// one drops the copy as an earlier version of the file, the other moves the file aside
/// as a conflict copy. Merged, that left the edited file under its conflict-copy name
/// and nothing at its path whenever the copy had the smaller id. A conflict copy whose
/// kept file was dropped as one with another goes back to the path; every peer ends with
/// the edited note at its name. Seeds give both orders of the two ids.
#[test]
fn a_pair_settled_differently_on_two_devices_ends_with_the_note_at_its_name() {
    let first = "# Plan\n".to_string();
    let version = |i: usize| format!("{first}{}", "- a step\n".repeat(i));
    let past_the_bound = cue_core::doc::VERSION_SEARCH_CHANGES + 40;
    for seed in 0..6 {
        let mut w = World::new(3, seed, Config::default());
        w.connect(0);
        w.connect(1);
        w.write(0, "n.md", first.as_bytes());
        for i in 1..=200 {
            w.write(0, "n.md", version(i).as_bytes());
        }
        w.settle(10);
        assert_eq!(w.read(1, "n.md"), Some(version(200)));
        // Device 1 goes away; device 0 edits on, past the bound.
        w.disconnect(1);
        for i in 201..=past_the_bound {
            w.write(0, "n.md", version(i).as_bytes());
        }
        // Device 2 never met them and holds the first version, as a new file.
        w.write(2, "n.md", first.as_bytes());
        // Devices 1 and 2 come online; what devices 0 and 1 say to each other is held
        // back, so each meets device 2's copy alone and settles the pair by itself, at
        // the same moment. Then device 2 goes away before it passes on either.
        w.connect(1);
        w.connect(2);
        for _ in 0..8 {
            w.deliver_between(2, 0);
            w.deliver_between(2, 1);
            if w.peers[0].disk.len() == 2 {
                break;
            }
            w.deliver_between(0, 2);
            w.deliver_between(1, 2);
        }
        w.disconnect(2);
        // What device 0 did reaches device 1, not the other way round (device 0 may
        // have gone offline): device 1 puts the note back at its name by itself.
        w.deliver_between(0, 1);
        let files: Vec<&String> = w.peers[1].disk.keys().collect();
        assert_eq!(files, ["n.md"], "seed {seed}, device 1 alone");
        w.connect(2);
        w.settle_converged();
        for p in 0..3 {
            let files: Vec<&String> = w.peers[p].disk.keys().collect();
            assert_eq!(files, ["n.md"], "seed {seed}, device {p}");
            assert_eq!(
                w.read(p, "n.md"),
                Some(version(past_the_bound)),
                "seed {seed}, device {p}"
            );
            assert!(w.status(p).conflicts.is_empty(), "seed {seed}, device {p}");
        }
    }
}

/// A file whose kind changes on one device (a program writing bytes over a note, or
/// text over a binary file) while another writes it as it was: neither version is lost
/// (the one not shown is a conflict copy), and both devices end with the same files.
/// The text edit used to vanish from every disk, left only in the history.
#[test]
fn a_file_whose_kind_changes_while_another_device_writes_it_keeps_both() {
    let text = b"---\ntitle: plan\n---\none\ntwo\n".to_vec();
    let edited = b"---\ntitle: plan\n---\none\ntwo\nthree\n".to_vec();
    let bytes = vec![0, 1, 2, 255];
    let other_bytes = vec![0, 1, 2, 254];
    // (base, the switch, the write of the file as it was)
    let cases = [
        (text.clone(), bytes.clone(), edited.clone()),
        (bytes.clone(), text.clone(), other_bytes.clone()),
    ];
    for (base, switch, same_kind) in cases {
        for switcher in [0, 1] {
            let mut w = World::online(2, 8);
            w.write(0, "a.md", &base);
            w.settle_converged();
            w.disconnect(1);
            w.write(switcher, "a.md", &switch);
            w.write(1 - switcher, "a.md", &same_kind);
            w.connect(1);
            w.settle_converged();
            for p in 0..2 {
                let all: Vec<&Vec<u8>> = w.peers[p].disk.values().collect();
                assert!(
                    all.contains(&&switch) && all.contains(&&same_kind) && all.len() == 2,
                    "switcher p{switcher}, p{p}: {:?}",
                    w.peers[p].disk
                );
            }
            assert_eq!(w.status(1).conflicts.len(), 1);
        }
    }
}

/// A conflict copy the user deleted stays deleted once its deletion is purged: a device
/// away meanwhile, merging the document (which still holds both versions) when it comes
/// back, used to make the copy again, and every device got it back.
#[test]
fn a_deleted_conflict_copy_is_not_made_again_by_a_device_back_later() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(3, 9, config);
    w.connect_all();
    w.write(0, "img.png", &[0, 1, 2, 255]);
    w.settle_converged();
    // (p2 is away from here on: `settle`, not `settle_converged`, which counts it.)
    w.disconnect(2);
    w.disconnect(1);
    w.write(0, "img.png", &[0, 1, 2, 254]);
    w.write(1, "img.png", &[0, 1, 2, 253]);
    w.connect(1);
    w.settle(10);
    let copy = w.peers[0]
        .disk
        .keys()
        .find(|p| p.contains("conflict"))
        .cloned()
        .expect("a conflict copy");
    w.delete(0, &copy);
    w.settle(10);
    for _ in 0..3 {
        w.advance(tombstone_ms / 2);
        w.settle(10);
    }
    assert!(
        w.restore(0, &copy).is_err(),
        "the copy's deletion is purged"
    );
    w.connect(2);
    w.settle_converged();
    w.advance(60_000);
    w.settle_converged();
    for p in 0..3 {
        let paths: Vec<&String> = w.peers[p].disk.keys().collect();
        assert_eq!(paths, vec!["img.png"], "p{p}");
    }
}

/// One device writes bytes over a note while two others edit its text, their messages
/// arriving in any order: every device ends with the same files, the bytes at the path
/// and each text edit in a conflict copy of the note as its device left it (a copy's
/// content made of whatever a device had merged differed between devices, and the two
/// copies of one id never merged).
#[test]
fn a_switch_to_binary_against_two_text_edits_converges_in_any_order() {
    for seed in 0..6 {
        let mut w = World::new(3, 50 + seed, Config::default());
        w.faults.reorder = true;
        w.connect_all();
        w.write(0, "a.txt", b"base\n");
        w.settle_converged();
        for p in 0..3 {
            w.disconnect(p);
        }
        w.write(0, "a.txt", &[0, 1, 2, 255]);
        w.write(1, "a.txt", b"base\none\n");
        w.write(2, "a.txt", b"two\nbase\n");
        w.connect_all();
        w.settle_converged();
        let all: Vec<&Vec<u8>> = w.peers[0].disk.values().collect();
        for want in [
            &vec![0, 1, 2, 255],
            &b"base\none\n".to_vec(),
            &b"two\nbase\n".to_vec(),
        ] {
            assert!(all.contains(&want), "seed {seed}: {:?}", w.peers[0].disk);
        }
    }
}

/// A device that joins with a folder already full of the workspace's files (its store
/// removed and the folder kept, or the folder copied over before it joined) makes a
/// file of each; the others drop one of each pair as one file with theirs. Whichever
/// goes, the file stays on the joining device's disk the whole time: a dropped file
/// whose kept twin's document has not arrived yet is not removed to be written again
/// when it comes (a first sync of thousands of files takes seconds, and the index comes
/// first). What the users do meanwhile holds: an edit there, a rename there, a rename
/// elsewhere of the twin.
#[test]
fn a_folder_that_joins_full_never_loses_its_files_on_the_way() {
    use cue_core::Input;
    use cue_core::wire::{Item, Message, decode, encode};
    /// Delivers everything but the file documents p0 and p1 send p2, which go to
    /// `held`; `check` after each round.
    fn deliver_holding_documents(
        w: &mut World,
        held: &mut Vec<(usize, Item)>,
        check: &dyn Fn(&World),
    ) {
        for _ in 0..40 {
            for from in [0, 1] {
                for bytes in w.take_in_flight(from, 2) {
                    let msg = decode(&bytes).expect("a message");
                    let (docs, rest): (Vec<Item>, Vec<Item>) =
                        msg.items.into_iter().partition(|i| match i {
                            Item::Sealed { item, .. } => item.doc() != cue_core::DocId::Index,
                            _ => false,
                        });
                    held.extend(docs.into_iter().map(|i| (from, i)));
                    let from = w.peers[from].device;
                    let bytes = encode(&Message { items: rest });
                    w.input(2, Input::Message { from, bytes });
                }
            }
            for (from, to) in [(2, 0), (2, 1), (0, 1), (1, 0)] {
                w.deliver_between(from, to);
            }
            check(w);
            if w.in_flight() == 0 {
                w.advance(1_000);
            }
        }
    }
    let files = cue_sim::notes(40);
    for seed in 0..3 {
        let mut w = World::new(3, seed, Config::default());
        w.connect(0);
        w.connect(1);
        w.write_many(0, &files);
        w.settle(10);
        assert_eq!(w.peers[1].disk, w.peers[0].disk);
        // The joining device holds the same files, made by itself.
        w.write_many(2, &files);
        w.connect(2);
        let mut held = Vec::new();
        let all_there = |w: &World| {
            for (p, _) in &files {
                assert!(
                    w.peers[2].disk.contains_key(p),
                    "seed {seed}: {p} gone from the joining device"
                );
            }
        };
        deliver_holding_documents(&mut w, &mut held, &all_there);
        // The joining device's own files that were dropped, and those that stay.
        let (mut dropped, mut kept) = (Vec::new(), Vec::new());
        {
            let stored = &w.peers[2].store.docs[&cue_core::DocId::Index];
            let actor = cue_core::actor_for(&w.peers[2].device, 0);
            let index = cue_core::index::IndexDoc::load(stored, actor).unwrap();
            let own = w.peers[2].device;
            let tombs = index.tombstones();
            for (f, p) in index.paths() {
                if index.origin(&f) == Some(own) {
                    let to = if tombs.contains_key(&f) {
                        &mut dropped
                    } else {
                        &mut kept
                    };
                    to.push(p);
                }
            }
        }
        assert!(
            dropped.len() >= 3 && kept.len() >= 3,
            "{dropped:?} {kept:?}"
        );
        // The user edits, renames there, and another device renames, files of both
        // kinds.
        let edited = [dropped[0].clone(), kept[0].clone()];
        for p in &edited {
            w.write(2, p, format!("{p} edited while joining\n").as_bytes());
        }
        let renamed = [
            (2, dropped[1].clone(), "renamed-d.md"),
            (2, kept[1].clone(), "renamed-k.md"),
            (0, dropped[2].clone(), "moved-d.md"),
            (0, kept[2].clone(), "moved-k.md"),
        ];
        for (peer, from, to) in &renamed[..2] {
            w.rename(*peer, from, to);
        }
        deliver_holding_documents(&mut w, &mut held, &|w| {
            for (peer, from, to) in &renamed[..2] {
                assert!(w.peers[*peer].disk.contains_key(*to), "seed {seed}: {to}");
                assert!(
                    !w.peers[*peer].disk.contains_key(from),
                    "seed {seed}: {from}"
                );
            }
        });
        for (peer, from, to) in &renamed[2..] {
            w.rename(*peer, from, to);
        }
        deliver_holding_documents(&mut w, &mut held, &|_| {});
        for (_, from, _) in &renamed[2..] {
            assert!(
                !w.peers[2].disk.contains_key(from),
                "seed {seed}: the moved file's old name {from} left"
            );
        }
        for (from, item) in held {
            let from = w.peers[from].device;
            let bytes = encode(&Message { items: vec![item] });
            w.input(2, Input::Message { from, bytes });
        }
        w.settle_converged();
        assert_eq!(w.peers[2].disk.len(), files.len(), "seed {seed}");
        for (_, old, new) in &renamed {
            let was = files.iter().find(|(p, _)| p == old).unwrap().1.clone();
            assert_eq!(w.peers[0].disk.get(*new), Some(&was), "seed {seed}: {new}");
            assert_eq!(w.read(0, old), None, "seed {seed}");
        }
        for p in &edited {
            let now = format!("{p} edited while joining\n");
            assert_eq!(w.read(0, p), Some(now), "seed {seed}");
        }
        assert_eq!(
            w.restore(2, "."),
            Err(cue_core::CommandError::NotDeleted(".".into())),
            "seed {seed}: nothing to bring back"
        );
        // Nobody deleted anything: nothing paused, no deletion in the activity log.
        for p in 0..3 {
            assert_eq!(w.status(p).deletions_paused, None, "seed {seed}, peer {p}");
            let deletions = (w.peers[p].activity.iter())
                .filter(|a| a.kind == cue_core::ActivityKind::Delete)
                .count();
            assert_eq!(deletions, 0, "seed {seed}, peer {p}");
        }
    }
}

/// `cue sync restore .` brings back what was deleted, not the files dropped as one with
/// another (nobody deleted those; their bytes are an earlier version of the kept file).
/// Two devices made the same notes apart and one edited them before they met: its
/// files are kept, the others' dropped, whichever id is smaller. Deleted later and
/// restored, every note comes back edited.
#[test]
fn a_restore_brings_back_the_deleted_file_not_one_dropped_as_one_with_it() {
    let files = cue_sim::notes(20);
    let edited: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(p, b)| (p.clone(), [b.as_slice(), b"edited\n"].concat()))
        .collect();
    let mut w = World::new(2, 5, Config::default());
    w.write_many(0, &files);
    w.write_many(1, &files);
    w.write_many(1, &edited);
    w.connect_all();
    w.settle_converged();
    assert_eq!(w.tombstones(1), files.len(), "one of each pair dropped");
    for (p, _) in &files {
        w.delete(1, p);
    }
    w.settle(10);
    w.restore(1, ".").unwrap();
    w.settle(10);
    w.apply_deletions(0);
    w.settle_converged();
    for (p, b) in &edited {
        assert_eq!(
            w.read(1, p).as_deref(),
            Some(std::str::from_utf8(b).unwrap()),
            "{p}"
        );
    }
}

/// A file caught on its way to a size over `max_file_size` (a large file being copied
/// in, a new note grown at once), synced while it was small: once too large, the
/// beginning the other devices got is taken back, since the file never really held it.
/// They are left without the file, not with a cut one; the device that has it lists it
/// as skipped. A peer's edit of the beginning, made meanwhile, keeps it there.
#[test]
fn a_file_made_and_grown_past_the_limit_at_once_leaves_no_beginning_elsewhere() {
    let config = Config {
        max_file_size: 1_000,
        ..Config::default()
    };
    let big: Vec<u8> = (0..5_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for peer_edits in [false, true] {
        let mut w = World::new(2, 11, config.clone());
        w.connect_all();
        // (Messages delivered without time passing: all of it happens within seconds.)
        w.write(0, "copy.txt", &big[..400]);
        while w.step() {}
        assert_eq!(w.peers[1].disk.get("copy.txt").map(Vec::len), Some(400));
        if peer_edits {
            w.write(1, "copy.txt", b"the peer's own words\n");
            while w.step() {}
        }
        w.advance(1_000);
        w.write(0, "copy.txt", &big);
        w.settle(10);
        assert_eq!(w.peers[0].disk.get("copy.txt"), Some(&big), "left as it is");
        assert_eq!(w.status(0).skipped, vec![("copy.txt".to_string(), 5_000)]);
        if peer_edits {
            assert_eq!(
                w.read(1, "copy.txt").as_deref(),
                Some("the peer's own words\n")
            );
        } else {
            assert_eq!(w.read(1, "copy.txt"), None, "no cut copy elsewhere");
        }
        // Cut back under the limit, it is a file again everywhere.
        w.write(0, "copy.txt", b"small again\n");
        w.settle_converged();
        let on_1: Vec<&[u8]> = w.peers[1].disk.values().map(Vec::as_slice).collect();
        if peer_edits {
            // Two versions the other never saw: both kept, one as a conflict copy.
            assert_eq!(on_1.len(), 2, "{on_1:?}");
            assert!(on_1.contains(&&b"the peer's own words\n"[..]), "{on_1:?}");
        }
        assert!(on_1.contains(&&b"small again\n"[..]), "{on_1:?}");
    }
}
