//! A damaged store (a record that no longer decodes: a bad disk sector, a half-restored
//! backup, a bug of an older version) never costs the user a file: whatever record is
//! lost, the next start keeps every file on disk with its bytes, and the peers end with
//! the same files (docs/ARCHITECTURE.md, "A damaged store").

use cue_core::{DocId, FileId};
use cue_sim::World;

/// Bytes no record decodes from.
const GARBAGE: &[u8] = &[0x85, 0x6f, 0x4a, 0x83, 1, 2, 3, 4, 5];

/// Two peers that synced three notes, then p0 alone made a fourth and edited one
/// (changes the other has never seen), all in p0's store.
fn p0_with_work_only_it_holds(seed: u64) -> World {
    let mut w = World::online(2, seed);
    w.write(0, "a.md", b"alpha\n");
    w.write(0, "notes/b.md", b"beta\n");
    w.write(1, "c.md", b"gamma\n");
    w.settle_converged();
    w.disconnect(0);
    w.write(0, "d.md", b"delta, made offline\n");
    w.write(0, "a.md", b"alpha, edited offline\n");
    w
}

/// What p0's folder must still hold after any damage.
const P0_FILES: [(&str, &str); 4] = [
    ("a.md", "alpha, edited offline\n"),
    ("notes/b.md", "beta\n"),
    ("c.md", "gamma\n"),
    ("d.md", "delta, made offline\n"),
];

/// Whether p0's activity log has an error entry saying `what`.
fn logged(w: &World, what: &str) -> bool {
    w.peers[0].activity.iter().any(|a| {
        a.kind == cue_core::ActivityKind::Error
            && a.detail.as_deref().is_some_and(|d| d.contains(what))
    })
}

fn assert_p0_keeps_its_files(w: &World, when: &str) {
    for (path, text) in P0_FILES {
        assert_eq!(w.read(0, path).as_deref(), Some(text), "{path} {when}");
    }
}

/// After the damage, p0 works on and meets p1 again: both end with every file, the
/// edits made alone included, and nothing else (no copies).
fn meet_again_and_check(mut w: World) {
    w.write(0, "notes/b.md", b"beta, edited after the damage\n");
    w.connect(0);
    w.settle_converged();
    for p in 0..2 {
        assert_eq!(
            w.read(p, "a.md").as_deref(),
            Some("alpha, edited offline\n")
        );
        assert_eq!(
            w.read(p, "notes/b.md").as_deref(),
            Some("beta, edited after the damage\n")
        );
        assert_eq!(w.read(p, "c.md").as_deref(), Some("gamma\n"));
        assert_eq!(w.read(p, "d.md").as_deref(), Some("delta, made offline\n"));
        let paths: Vec<&String> = w.peers[p].disk.keys().collect();
        assert_eq!(paths.len(), 4, "p{p} holds {paths:?}");
    }
}

#[test]
fn a_damaged_index_removes_no_file_and_the_peers_still_converge() {
    for seed in 0..4 {
        let mut w = p0_with_work_only_it_holds(seed);
        w.peers[0].store.docs.insert(DocId::Index, GARBAGE.to_vec());
        w.restart(0);
        assert!(w.peers[0].engine.counters().bad_documents >= 1);
        assert!(logged(&w, "stored index was damaged"));
        assert_p0_keeps_its_files(&w, "after a start with a damaged index");
        // A second start (the index rebuilt and stored) keeps them too.
        w.restart(0);
        assert_p0_keeps_its_files(&w, "after a second start");
        meet_again_and_check(w);
    }
}

/// The peer that lost its index was alone with its files: nobody could send them back.
#[test]
fn a_device_alone_with_a_damaged_index_keeps_its_files() {
    let mut w = World::online(1, 3);
    w.write(0, "a.md", b"only here\n");
    w.write(0, "x/y.md", b"also only here\n");
    w.peers[0].store.docs.insert(DocId::Index, GARBAGE.to_vec());
    w.restart(0);
    assert_eq!(w.read(0, "a.md").as_deref(), Some("only here\n"));
    assert_eq!(w.read(0, "x/y.md").as_deref(), Some("also only here\n"));
    // Its files are still synced: an edit, a rename and a deletion are taken in.
    w.write(0, "a.md", b"only here, edited\n");
    w.rename(0, "x/y.md", "x/z.md");
    w.settle(10);
    w.restart(0);
    assert_eq!(w.read(0, "a.md").as_deref(), Some("only here, edited\n"));
    assert_eq!(w.read(0, "x/z.md").as_deref(), Some("also only here\n"));
    assert_eq!(w.read(0, "x/y.md"), None);
}

fn file_id_of(w: &World, peer: usize, path: &str) -> FileId {
    let stored = &w.peers[peer].store.docs[&DocId::Index];
    let index =
        cue_core::index::IndexDoc::load(stored, cue_core::actor_for(&w.peers[peer].device, 999))
            .expect("the stored index loads");
    index.files_at(path)[0]
}

/// p0's records of a.md and d.md are damaged: a.md was edited and d.md made while p1
/// was away, so p1 has neither change.
fn damage(w: &mut World, what: &str) {
    for path in ["a.md", "d.md"] {
        let id = file_id_of(w, 0, path);
        let store = &mut w.peers[0].store;
        match what {
            "record" => store.metas.insert(id, GARBAGE.to_vec()),
            _ => store.docs.insert(DocId::File(id), GARBAGE.to_vec()),
        };
    }
}

#[test]
fn a_damaged_file_record_loses_no_edit() {
    for seed in 0..4 {
        let mut w = p0_with_work_only_it_holds(seed);
        damage(&mut w, "record");
        w.restart(0);
        assert!(w.peers[0].engine.counters().bad_documents >= 2);
        assert!(logged(&w, "stored record was damaged"));
        assert_p0_keeps_its_files(&w, "after a start with damaged records");
        meet_again_and_check(w);
    }
}

/// A damaged document: the changes only it held are gone from the store, but the file
/// on disk is read back and taken in again as a new file, so a.md's edit and d.md reach
/// p1. p1 sends back the a.md it holds (the version before the edit): the two meet at
/// a.md as two files made at one path, and both are kept, one under a conflict-copy
/// name, alike on both peers. Before, the damaged documents' files stopped syncing (and
/// d.md, never loaded, went to p1 as the damaged bytes, refused there).
#[test]
fn a_damaged_document_loses_no_edit() {
    for seed in 0..4 {
        let mut w = p0_with_work_only_it_holds(seed);
        damage(&mut w, "document");
        w.restart(0);
        assert_p0_keeps_its_files(&w, "after a start with damaged documents");
        w.write(0, "notes/b.md", b"beta, edited after the damage\n");
        w.connect(0);
        w.settle_converged();
        assert!(w.peers[0].engine.counters().bad_documents >= 2);
        assert!(logged(&w, "stored document was damaged"));
        for p in 0..2 {
            let texts: Vec<&[u8]> = w.peers[p].disk.values().map(Vec::as_slice).collect();
            for text in ["alpha\n", "alpha, edited offline\n"] {
                assert!(
                    texts.contains(&text.as_bytes()),
                    "p{p} lacks {text:?}: {:?}",
                    w.peers[p].disk.keys()
                );
            }
            assert_eq!(w.read(p, "d.md").as_deref(), Some("delta, made offline\n"));
            assert_eq!(w.read(p, "c.md").as_deref(), Some("gamma\n"));
            assert_eq!(
                w.read(p, "notes/b.md").as_deref(),
                Some("beta, edited after the damage\n")
            );
            assert_eq!(w.peers[p].disk.len(), 5, "{:?}", w.peers[p].disk.keys());
        }
    }
}
