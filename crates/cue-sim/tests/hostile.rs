//! A member that sends what no honest engine would: each attack is bounded, counted and
//! leaves the rest working.

use cue_core::wire::{Item, Message, decode, encode};
use cue_core::{Config, Input};
use cue_sim::World;
use cue_sim::bomb::{Kind, bomb};

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
    let files = cue_sim::notes(30);
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

/// Deletions applied with `apply-deletions` are decided: they no longer count toward the
/// guard's window. A peer's change moments later that deletes nothing here (the deleting
/// device restoring one note) does not trip the guard again on the deletions already
/// carried out, which it wrote back (found by exploration: the notes back on that device
/// only, the two folders different, 6 of 6), nor does one more deletion.
#[test]
fn deletions_applied_are_not_held_again_by_the_next_change() {
    let mut w = World::new(2, 24, Config::default());
    w.connect_all();
    let files: Vec<(String, Vec<u8>)> = (1..=25)
        .map(|i| (format!("n{i}.md"), format!("note {i}\n").into_bytes()))
        .collect();
    w.write_many(0, &files);
    w.write(0, "x.md", b"x\n");
    w.settle(10);
    w.disconnect(1);
    w.write(1, "n2.md", b"note 2\nedited on p1\n");
    for (p, _) in &files {
        w.delete(0, p);
    }
    w.connect(1);
    // (All delivered with no time passing: the user applies them within seconds.)
    while w.step() {}
    assert!(w.status(1).deletions_paused.is_some());
    assert_eq!(w.apply_deletions(1), 24);
    while w.step() {}
    assert_eq!(w.peers[1].disk.len(), 2, "{:?}", w.peers[1].disk.keys());
    // Moments later: one more deletion, and one note restored.
    w.delete(0, "x.md");
    w.restore(0, "n1.md").expect("restore n1.md");
    w.settle(10);
    for p in 0..2 {
        let mut files: Vec<&str> = w.peers[p].disk.keys().map(String::as_str).collect();
        files.sort_unstable();
        assert_eq!(files, ["n1.md", "n2.md"], "peer {p}");
        assert!(w.status(p).deletions_paused.is_none(), "peer {p}");
    }
}

/// A member sends changes and documents that inflate to more than the bound (automerge
/// would inflate them whole before any check): each is refused unparsed and counted as
/// oversized, and the peer keeps syncing.
#[test]
fn a_decompression_bomb_is_refused_before_automerge_inflates_it() {
    let mut w = world();
    let from = w.peers[0].device;
    let f = cue_core::FileId([9; 16]);
    let items = vec![
        Item::Changes {
            doc: cue_core::DocId::Index,
            changes: vec![bomb(Kind::Change, 65)],
        },
        // Two changes of 40 MiB each: the bound is per item.
        Item::Changes {
            doc: cue_core::DocId::Index,
            changes: vec![bomb(Kind::Change, 40), bomb(Kind::Change, 40)],
        },
        Item::Whole {
            doc: cue_core::DocId::File(f),
            bytes: bomb(Kind::Document, 65),
        },
        Item::Adopt {
            doc: cue_core::DocId::File(f),
            bytes: bomb(Kind::Document, 65),
            heads: vec![[1; 32]],
            content: b"x".to_vec(),
        },
    ];
    let bytes = encode(&Message { items });
    assert!(bytes.len() < 300_000, "{}", bytes.len());
    w.input(1, Input::Message { from, bytes });
    let c = w.peers[1].engine.counters().clone();
    assert_eq!(c.oversized_items, 4, "{c:?}");
    let status = w.status(1);
    assert_eq!(status.unverified, 0, "a bomb was adopted");
    // What `status --json` shows as `refused_input`.
    assert_eq!(status.refused.nonzero(), vec![("oversized_items", 4)]);
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
    // The count survives a restart.
    w.restart(1);
    assert_eq!(w.peers[1].engine.counters().oversized_items, 4);
}

/// A change to the stored document `bytes` (its body prefixed with `FORGED `) under the
/// current actor of `victim`, with its next sequence number: what a member forges.
fn forge(bytes: &[u8], w: &World, victim: usize) -> Vec<u8> {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let actor = cue_core::actor_for(&w.peers[victim].device, w.peers[victim].epoch);
    let mut doc = AutoCommit::load(bytes)
        .expect("a stored document")
        .with_actor(actor);
    let body = doc
        .get(ROOT, "body")
        .ok()
        .flatten()
        .expect("a file document has a body")
        .1;
    doc.splice_text(&body, 0, 0, "FORGED ").expect("an edit");
    doc.commit();
    doc.get_last_local_change()
        .expect("the forged change")
        .raw_bytes()
        .to_vec()
}

/// The one file's document id and stored bytes on `peer`.
fn only_file(w: &World, peer: usize) -> (cue_core::FileId, Vec<u8>) {
    w.peers[peer]
        .store
        .docs
        .iter()
        .find_map(|(d, b)| match d {
            cue_core::DocId::File(f) => Some((*f, b.clone())),
            cue_core::DocId::Index => None,
        })
        .expect("a file document")
}

/// A member forges a change under another member's actor and next sequence number, and
/// sends it live with one of its own. The forged change is refused and counted, its own
/// applies, and the genuine author's next change (which has that sequence number) still
/// reaches everyone.
#[test]
fn a_forged_change_is_refused_and_the_authors_next_change_still_applies() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let mut w = World::new(3, 24, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.settle(5);
    let (f, bytes) = only_file(&w, 0);
    let forged = forge(&bytes, &w, 0);
    // And a change of the hostile member's own, in the same item.
    let hostile_actor = cue_core::actor_for(&w.peers[2].device, w.peers[2].epoch);
    let mut own = AutoCommit::load(&bytes).unwrap().with_actor(hostile_actor);
    let body = own.get(ROOT, "body").unwrap().unwrap().1;
    own.splice_text(&body, 3, 0, " two").unwrap();
    own.commit();
    let own = own.get_last_local_change().unwrap().raw_bytes().to_vec();
    let from = w.peers[2].device;
    // Sealed as the hostile member seals its own changes (its seal cannot reach the
    // forged one: that is another device's).
    let item = Item::Changes {
        doc: cue_core::DocId::File(f),
        changes: vec![forged, own],
    };
    let msg = encode(&Message {
        items: vec![cue_sim::seal_as(&w.peers[2].key, w.peers[2].epoch, item)],
    });
    w.input(1, Input::Message { from, bytes: msg });
    w.settle(5);
    assert_eq!(w.peers[1].engine.counters().forged_changes, 1);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("one two\n"));
    // The genuine author edits: its change has the sequence number the forgery took.
    w.write(0, "a.md", b"one two\nthree\n");
    w.settle(10);
    for p in 0..3 {
        assert_eq!(
            w.read(p, "a.md").as_deref(),
            Some("one two\nthree\n"),
            "p{p}"
        );
    }
    w.converged().unwrap();
}

/// `PullDone` ids `from` sent `to` in the traffic log.
fn pulls_answered(w: &World, from: usize, to: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for (f, t, bytes) in w.traffic.as_deref().unwrap_or_default() {
        if (*f, *t) != (from, to) {
            continue;
        }
        for item in cue_core::wire::decode(bytes)
            .map(|m| m.items)
            .unwrap_or_default()
        {
            if let Item::PullDone { id } = item {
                ids.push(id);
            }
        }
    }
    ids
}

fn deliver(w: &mut World) {
    while w.step() {}
}

/// A member asks for the whole workspace a hundred times at once (a few bytes each): a
/// few are answered, the rest are counted and the latest waits for the asker's
/// allowance. The same member's honest catch-up later completes within seconds, not
/// after its pull times out, and other peers are not slowed.
#[test]
fn a_flood_of_pulls_is_answered_a_few_times_and_a_catch_up_still_completes() {
    let mut w = World::new(3, 25, Config::default());
    w.connect_all();
    let files = cue_sim::notes(20);
    w.write_many(0, &files);
    w.settle(5);
    w.traffic = Some(Vec::new());
    let from = w.peers[1].device;
    for id in 1000..1100 {
        let pull = Item::Pull {
            id,
            full: true,
            complete: true,
            entries: Vec::new(),
        };
        let bytes = encode(&Message { items: vec![pull] });
        w.input(0, Input::Message { from, bytes });
    }
    deliver(&mut w);
    let answered = pulls_answered(&w, 0, 1);
    assert_eq!(answered.len(), 3, "{answered:?}");
    assert_eq!(w.peers[0].engine.counters().excess_pulls, 97);
    // The latest is answered once the asker has room again.
    w.advance(10_001);
    deliver(&mut w);
    assert_eq!(pulls_answered(&w, 0, 1).last(), Some(&1099));

    // An honest catch-up by the same member: offline while p0 edits, then back.
    w.disconnect(1);
    w.write(0, "new.md", b"made while p1 was away\n");
    deliver(&mut w);
    w.connect(1);
    deliver(&mut w);
    w.advance(10_001);
    deliver(&mut w);
    assert_eq!(
        w.read(1, "new.md").as_deref(),
        Some("made while p1 was away\n")
    );
    // Another peer's catch-up is not slowed by the flood.
    w.disconnect(2);
    w.write(0, "other.md", b"for p2\n");
    deliver(&mut w);
    w.connect(2);
    deliver(&mut w);
    assert_eq!(w.read(2, "other.md").as_deref(), Some("for p2\n"));
    w.settle(3);
    w.converged().unwrap();
}

/// A member asks for one document hundreds of thousands of times in one pull (two bytes
/// an entry): each document is answered once. (Each entry was answered: the whole
/// index saved and held in memory as many times, gigabytes for one message.)
#[test]
fn a_pull_naming_one_document_many_times_is_answered_once() {
    let mut w = World::new(2, 32, Config::default());
    w.connect_all();
    w.write_many(0, &cue_sim::notes(5));
    w.settle(5);
    w.traffic = Some(Vec::new());
    let from = w.peers[1].device;
    let (f, _) = only_file(&w, 0);
    let mut entries = vec![(cue_core::DocId::Index, Vec::new()); 200_000];
    entries.extend(vec![(cue_core::DocId::File(f), Vec::new()); 1_000]);
    let pull = Item::Pull {
        id: 7,
        full: false,
        complete: false,
        entries,
    };
    let bytes = encode(&Message { items: vec![pull] });
    w.input(0, Input::Message { from, bytes });
    deliver(&mut w);
    let mut index_items = 0;
    let mut file_items = 0;
    for (_, _, bytes) in w
        .traffic
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|t| (t.0, t.1) == (0, 1))
    {
        for item in decode(bytes).map(|m| m.items).unwrap_or_default() {
            use cue_core::wire::Sealable;
            let doc = match item {
                Item::Whole { doc, .. } | Item::Changes { doc, .. } | Item::Adopt { doc, .. } => {
                    doc
                }
                Item::Sealed { item, .. } => match item {
                    Sealable::Whole { doc, .. }
                    | Sealable::Changes { doc, .. }
                    | Sealable::Adopt { doc, .. } => doc,
                },
                _ => continue,
            };
            match doc {
                cue_core::DocId::Index => index_items += 1,
                cue_core::DocId::File(_) => file_items += 1,
            }
        }
    }
    assert_eq!((index_items, file_items), (1, 1));
    assert_eq!(pulls_answered(&w, 0, 1), [7]);
}

/// A member can make device ids of its own (it may invite them), each with its own
/// allowance of heavy pulls: heavy pulls are also bounded for all askers together, and an
/// honest peer's catch-up still completes in seconds.
#[test]
fn heavy_pulls_from_many_devices_of_one_member_are_bounded_together() {
    let mut w = World::new(2, 26, Config::default());
    w.connect_all();
    let files = cue_sim::notes(20);
    w.write_many(0, &files);
    w.settle(5);
    let before = w.peers[0].engine.counters().excess_pulls;
    for i in 0..40u8 {
        let from = cue_core::DeviceId([i.wrapping_add(100); 32]);
        let pull = Item::Pull {
            id: u64::from(i),
            full: true,
            complete: true,
            entries: Vec::new(),
        };
        let bytes = encode(&Message { items: vec![pull] });
        w.input(0, Input::Message { from, bytes });
    }
    // Eight answered at once (each asker within its own allowance), the rest wait.
    assert_eq!(w.peers[0].engine.counters().excess_pulls - before, 32);

    // An honest catch-up meanwhile.
    w.disconnect(1);
    w.write(0, "new.md", b"made while p1 was away\n");
    deliver(&mut w);
    w.connect(1);
    deliver(&mut w);
    w.advance(5_000);
    deliver(&mut w);
    assert_eq!(
        w.read(1, "new.md").as_deref(),
        Some("made while p1 was away\n")
    );
    w.settle(3);
    w.converged().unwrap();
}

/// A fake admission for the simulation: version, device, name, and a "signature" only
/// the device can make (here: a keyed hash of device and name with the device's id as
/// the key stands in for its ed25519 signature; a member forging one for another device
/// is modelled by a wrong signature).
fn admission(device: &cue_core::DeviceId, name: &str, valid: bool) -> Vec<u8> {
    let mut out = vec![2];
    out.extend(device.0);
    out.push(name.len() as u8);
    out.extend(name.as_bytes());
    let sig = blake3::keyed_hash(&device.0, name.as_bytes());
    let sig = if valid { *sig.as_bytes() } else { [0; 32] };
    out.extend(sig);
    out.extend(sig);
    out
}

fn check_admissions(w: &mut World) {
    for p in &mut w.peers {
        p.engine
            .set_admission_check(std::sync::Arc::new(|d, bytes: &[u8]| {
                let n = usize::from(*bytes.get(33)?);
                let name = std::str::from_utf8(bytes.get(34..34 + n)?).ok()?;
                (bytes.get(1..33)? == d.0 && admission(d, name, true) == bytes).then(|| name.into())
            }));
    }
}

/// A member edits the member list by hand: adds a stranger, admits a device with a
/// forged admission, renames another member and deletes a third. None of it is taken;
/// each bad entry is counted. An entry with a valid admission is taken, whoever wrote it.
#[test]
fn the_member_list_takes_only_admitted_or_self_written_entries() {
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};
    use cue_core::index::IndexDoc;
    let mut w = World::new(3, 26, Config::default());
    check_admissions(&mut w);
    w.connect_all();
    w.write(0, "a.md", b"x\n");
    w.settle(5);
    let (d0, d1) = (w.peers[0].device, w.peers[1].device);
    let stranger = cue_core::DeviceId([0xee; 32]);
    let invited = cue_core::DeviceId([0xdd; 32]);
    let forged = cue_core::DeviceId([0xcc; 32]);
    // Under one of the hostile member's own actors (another epoch).
    let from = w.peers[2].device;
    let stored = w.peers[2].store.docs[&cue_core::DocId::Index].clone();
    let mut index = IndexDoc::load(&stored, cue_core::actor_for(&from, 99)).unwrap();
    let hex = |b: &[u8]| format!("{}{}", cue_core::ADMISSION_PREFIX, hex::encode(b));
    index.set_member(&stranger, "stranger").unwrap();
    index.set_member(&d0, "renamed").unwrap();
    index
        .set_member(&forged, &hex(&admission(&forged, "forged", false)))
        .unwrap();
    index
        .set_member(&invited, &hex(&admission(&invited, "invited", true)))
        .unwrap();
    let am = index.automerge();
    let members = am.get(ROOT, "members").unwrap().unwrap().1;
    am.delete(&members, d1.to_string()).unwrap();
    let change = index.commit(0).unwrap();
    let item = Item::Changes {
        doc: cue_core::DocId::Index,
        changes: vec![change.raw_bytes().to_vec()],
    };
    let msg = encode(&Message {
        items: vec![cue_sim::seal_as(&w.peers[2].key, 99, item)],
    });
    w.input(0, Input::Message { from, bytes: msg });
    // p1 learns it from p0 at the next anti-entropy round (a pull answer: relayed).
    w.advance(31_000);
    w.settle(5);
    for p in [0, 1] {
        let m = w.peers[p].engine.members();
        assert_eq!(m.get(&d0).map(String::as_str), Some("p0"), "p{p}: {m:?}");
        assert_eq!(m.get(&d1).map(String::as_str), Some("p1"), "p{p}: {m:?}");
        assert!(!m.contains_key(&stranger), "p{p}: {m:?}");
        assert!(!m.contains_key(&forged), "p{p}: {m:?}");
        assert_eq!(
            m.get(&invited).map(String::as_str),
            Some("invited"),
            "p{p}: {m:?} {:?}",
            w.peers[p].engine.counters()
        );
        assert_eq!(w.peers[p].engine.counters().bad_members, 3, "p{p}");
    }
    // Still so after a restart (the members taken are kept; the verdicts redone).
    w.restart(1);
    check_admissions(&mut w);
    w.settle(3);
    let m = w.peers[1].engine.members();
    assert!(m.contains_key(&d1) && !m.contains_key(&stranger), "{m:?}");
}

/// p1 is away while p2 writes a file (b.md); p0 goes away; p1 comes back and catches up
/// from p2 alone: returns once p1 has asked p2 for what it lacks, so that what p2
/// sends next is taken as part of the answer.
fn p1_catching_up_from_p2_alone(w: &mut World) {
    w.disconnect(1);
    w.write(2, "b.md", b"b\n");
    w.settle(5);
    w.disconnect(0);
    w.traffic = Some(Vec::new());
    w.connect(1);
    let asked = |w: &World| {
        w.traffic.iter().flatten().any(|(from, to, bytes)| {
            (*from, *to) == (1, 2)
                && decode(bytes).is_ok_and(|m| {
                    m.items
                        .iter()
                        .any(|i| matches!(i, Item::Pull { id, .. } if *id != 0))
                })
        })
    };
    let mut steps = 0;
    while !asked(w) {
        assert!(w.step() && steps < 1000, "p1 never pulled from p2");
        steps += 1;
    }
}

/// A member answers a peer's catch-up pull (where every member's changes legitimately
/// travel) with a change forged under another member's actor and its next sequence
/// number. No seal of the genuine author reaches the forgery: it is refused and counted,
/// and the author's own next change (with that very sequence number) reaches everyone.
#[test]
fn a_change_forged_into_a_pull_answer_is_refused_and_the_authors_next_change_applies() {
    let mut w = World::new(3, 27, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.settle(5);
    w.converged().unwrap();
    let (f, bytes) = only_file(&w, 2);
    let forged = forge(&bytes, &w, 0);
    p1_catching_up_from_p2_alone(&mut w);
    // p2's answer carries the forgery.
    let item = Item::Changes {
        doc: cue_core::DocId::File(f),
        changes: vec![forged],
    };
    let bytes = encode(&Message { items: vec![item] });
    let from = w.peers[2].device;
    w.input(1, Input::Message { from, bytes });
    w.settle(10);
    assert_eq!(w.peers[1].engine.counters().forged_changes, 1);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("one\n"));
    assert_eq!(w.read(1, "b.md").as_deref(), Some("b\n"));
    // The genuine author's next change has the sequence number the forgery took.
    w.connect(0);
    w.write(0, "a.md", b"one\ntwo\n");
    w.settle(10);
    for p in 0..3 {
        assert_eq!(w.read(p, "a.md").as_deref(), Some("one\ntwo\n"), "p{p}");
    }
    w.converged().unwrap();
}

/// A whole document with content (`Adopt`, how a first sync sends files) that holds a
/// change forged under another member's actor: written as it came, then checked with the
/// rest of what adopted documents are checked for; the forged change is taken out, the
/// sender's own kept, and the disk follows.
#[test]
fn a_forged_change_inside_an_adopted_document_is_taken_out() {
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};
    use cue_core::index::IndexDoc;
    use cue_core::{DocId, FileDoc, FileId};
    let mut w = World::online(3, 28);
    w.write(0, "a.md", b"x\n");
    w.settle_converged();
    // The hostile p2 makes a file of its own, then a change to it under p0's actor.
    let own = cue_core::actor_for(&w.peers[2].device, 99);
    let mut doc = FileDoc::new(own.clone());
    doc.write("b.md", b"mine\n", 0).unwrap();
    let mut am = doc
        .automerge()
        .clone()
        .with_actor(cue_core::actor_for(&w.peers[0].device, 1));
    let body = am.get(ROOT, "body").unwrap().unwrap().1;
    am.splice_text(&body, 0, 0, "FORGED ").unwrap();
    am.commit();
    let heads: Vec<[u8; 32]> = am.get_heads().iter().map(|h| h.0).collect();
    let bytes = am.save();
    let stored = w.peers[2].store.docs[&DocId::Index].clone();
    let mut index = IndexDoc::load(&stored, own).unwrap();
    let file = FileId([9; 16]);
    index.set_path(&file, "b.md").unwrap();
    let change = index.commit(0).unwrap();
    let key = &w.peers[2].key;
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
                content: b"FORGED mine\n".to_vec(),
            },
        ),
    ];
    let from = w.peers[2].device;
    let bytes = encode(&Message { items });
    w.input(1, Input::Message { from, bytes });
    w.settle_converged();
    assert!(w.peers[1].engine.counters().forged_changes >= 1);
    for p in 0..3 {
        assert_eq!(w.read(p, "b.md").as_deref(), Some("mine\n"), "p{p}");
    }
}

/// One message of many items, each just under the inflation bound: the sender's budget
/// of inflated bytes lets a few go to automerge at once and the rest wait for later
/// ticks (in order), so the receiver's main loop is never held for all of them, others'
/// edits keep arriving meanwhile, and every item is handled in the end.
#[test]
fn a_message_of_many_large_items_is_handled_a_few_at_a_time() {
    let mut w = World::online(3, 29);
    w.write(0, "a.md", b"x\n");
    w.settle_converged();
    let from = w.peers[2].device;
    let items: Vec<Item> = (0..8u8)
        .map(|i| Item::Whole {
            doc: cue_core::DocId::File(cue_core::FileId([0xb0 + i; 16])),
            bytes: bomb(Kind::Document, 40),
        })
        .collect();
    let bytes = encode(&Message { items });
    let before = w.peers[1].engine.counters().bad_documents;
    w.input(1, Input::Message { from, bytes });
    let handled = |w: &World| w.peers[1].engine.counters().bad_documents - before;
    // 128 MiB at once: three items of 40 MiB.
    assert_eq!(handled(&w), 3);
    // Another member's edit is not held up.
    w.write(0, "a.md", b"x\ny\n");
    w.settle(1);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
    // Then 64 MiB a second: the other five within a few seconds.
    for _ in 0..10 {
        w.advance(1_000);
    }
    assert_eq!(handled(&w), 8);
    assert_eq!(w.peers[1].engine.counters().oversized_items, 0);
}

/// A document of a few hundred bytes whose run-length encoded columns claim millions or
/// billions of operations (automerge reserves memory for each when it loads a document:
/// 1.2 GiB for 16 Mi, an abort for 1 Gi): refused before automerge sees it, counted, and
/// the peer keeps syncing.
#[test]
fn a_document_claiming_billions_of_operations_is_refused() {
    let mut w = world();
    let from = w.peers[0].device;
    let items: Vec<Item> = [16usize, 1024]
        .iter()
        .enumerate()
        .map(|(i, &mi)| Item::Whole {
            doc: cue_core::DocId::File(cue_core::FileId([0xc0 + i as u8; 16])),
            bytes: bomb(Kind::RunLength, mi),
        })
        .collect();
    let bytes = encode(&Message { items });
    assert!(bytes.len() < 1000, "{}", bytes.len());
    w.input(1, Input::Message { from, bytes });
    assert_eq!(w.peers[1].engine.counters().oversized_items, 2);
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
}

/// The class of forgeries, over many seeds: while two members edit, a third keeps
/// sending changes forged under their actors (their next sequence numbers, or one far
/// ahead), bare or wrapped in its own seal, at random moments (some land while a peer is
/// catching up from it, where other members' changes legitimately come from it). No
/// forgery is ever applied, every edit of the two reaches everyone, and all converge.
#[test]
fn random_forgeries_during_editing_never_apply() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    use rand::{RngExt, SeedableRng};
    for seed in 0..40u64 {
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut w = World::new(
            3,
            100 + seed,
            Config {
                anti_entropy_ms: 5_000,
                ..Config::default()
            },
        );
        w.connect_all();
        let paths = ["a.md", "b.md", "c.md"];
        let mut content: std::collections::BTreeMap<&str, String> = Default::default();
        let mut forged = 0;
        for step in 0..120 {
            match rng.random_range(0..10) {
                0..=5 => {
                    let p = rng.random_range(0..2);
                    let path = paths[rng.random_range(0..paths.len())];
                    let mut text = w.read(p, path).unwrap_or_default();
                    text.push_str(&format!("<m{step}>\n"));
                    w.write(p, path, text.as_bytes());
                    content.insert(path, text);
                }
                6..=7 => {
                    // The hostile p2 forges a change to a file it holds.
                    let docs: Vec<(cue_core::FileId, Vec<u8>)> = w.peers[2]
                        .store
                        .docs
                        .iter()
                        .filter_map(|(d, b)| match d {
                            cue_core::DocId::File(f) => Some((*f, b.clone())),
                            cue_core::DocId::Index => None,
                        })
                        .collect();
                    if docs.is_empty() {
                        continue;
                    }
                    let (f, bytes) = &docs[rng.random_range(0..docs.len())];
                    let victim = rng.random_range(0..2);
                    let actor = cue_core::actor_for(&w.peers[victim].device, w.peers[victim].epoch);
                    let Ok(mut doc) = AutoCommit::load(bytes) else {
                        continue;
                    };
                    let mut doc = doc.fork().with_actor(actor);
                    let Some((_, body)) = doc.get(ROOT, "body").ok().flatten() else {
                        continue;
                    };
                    doc.splice_text(&body, 0, 0, "FORGED ").unwrap();
                    doc.commit();
                    let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
                    let item = Item::Changes {
                        doc: cue_core::DocId::File(*f),
                        changes: vec![change],
                    };
                    let item = if rng.random_bool(0.5) {
                        cue_sim::seal_as(&w.peers[2].key, w.peers[2].epoch, item)
                    } else {
                        item
                    };
                    let to = rng.random_range(0..2);
                    let from = w.peers[2].device;
                    let bytes = encode(&Message { items: vec![item] });
                    w.input(to, Input::Message { from, bytes });
                    forged += 1;
                }
                8 => {
                    let p = rng.random_range(0..3);
                    w.disconnect(p);
                    w.settle(1);
                    w.connect(p);
                }
                _ => {
                    for _ in 0..rng.random_range(1..20) {
                        w.step();
                    }
                }
            }
        }
        w.settle(20);
        w.converged().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (path, text) in &content {
            let got = w.read(0, path).unwrap_or_default();
            assert!(!got.contains("FORGED"), "seed {seed}: {path}: {got:?}");
            for line in text.lines() {
                assert!(
                    got.contains(line),
                    "seed {seed}: {path} lost {line:?}: {got:?}"
                );
            }
        }
        assert!(forged > 0);
    }
}

/// Seals wrap a document's changes only, never other seals: a message of items nested
/// ten thousand deep (what would overflow the stack of a decoder that recursed) is
/// refused as malformed, and the peer keeps syncing.
#[test]
fn seals_nested_in_seals_are_refused_not_recursed_into() {
    let mut w = world();
    let from = w.peers[0].device;
    let mut bytes = vec![cue_core::wire::WIRE_VERSION, 1];
    for _ in 0..10_000 {
        // `Item::Sealed` (variant 8) with no seals, then what it wraps.
        bytes.extend([8, 0]);
    }
    let before = w.peers[1].engine.counters().bad_messages;
    w.input(1, Input::Message { from, bytes });
    assert_eq!(w.peers[1].engine.counters().bad_messages, before + 1);
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
}

/// The bound on claimed operations never refuses honest deletions: two devices empty the
/// same large file while apart (each change deletes 200,000 characters in a few bytes,
/// which the other device no longer holds), and they meet again.
#[test]
fn concurrent_deletions_of_a_large_file_are_not_taken_for_a_bomb() {
    let mut w = World::online(2, 30);
    let big: String = (0..20_000).map(|i| format!("line {i:04}\n")).collect();
    assert!(big.len() >= 200_000);
    w.write(0, "log.md", big.as_bytes());
    w.settle_converged();
    w.disconnect(0);
    w.disconnect(1);
    w.write(0, "log.md", b"");
    w.write(1, "log.md", b"kept\n");
    w.connect(0);
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.read(0, "log.md").as_deref(), Some("kept\n"));
    for p in 0..2 {
        let c = w.peers[p].engine.counters();
        assert_eq!(
            (c.oversized_items, c.forged_changes, c.bad_changes),
            (0, 0, 0),
            "p{p}"
        );
    }
}

/// A device's own changes spread over many messages (a burst of new files: one index
/// change a file, small messages) each carry a seal that reaches them: none is taken for
/// a forgery on the way, and nothing waits for a pull to come right.
#[test]
fn a_burst_in_many_messages_is_never_taken_for_forgeries() {
    let mut w = World::new(
        2,
        31,
        Config {
            max_message_bytes: 2048,
            ..Config::default()
        },
    );
    w.connect_all();
    w.write_many(0, &cue_sim::notes(200));
    let mut rounds = 0;
    while let Err(e) = w.converged() {
        rounds += 1;
        assert!(rounds < 100, "not converged: {e}");
        w.settle(1);
    }
    for p in 0..2 {
        let c = w.peers[p].engine.counters();
        assert_eq!((c.forged_changes, c.bad_changes), (0, 0), "p{p}: {c:?}");
    }
}

/// Documents of a hundred-odd bytes whose change columns claim many empty changes:
/// automerge 0.12 spends about 1.3 KiB and 1.5 µs on each claimed change (65,536 took
/// 85 MiB and 100 ms; a million made it panic, an unwrap in its column library). Refused
/// before automerge sees them, counted, and the peer keeps syncing; and should such bytes
/// reach automerge anyway, its panic is caught as a refusal.
#[test]
fn documents_claiming_many_empty_changes_are_refused() {
    let mut w = world();
    let from = w.peers[0].device;
    let items: Vec<Item> = [1u64 << 16, 1 << 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| Item::Whole {
            doc: cue_core::DocId::File(cue_core::FileId([0xd0 + i as u8; 16])),
            bytes: cue_sim::bomb::claiming(Kind::EmptyChanges, n),
        })
        .collect();
    let bytes = encode(&Message { items });
    assert!(bytes.len() < 400, "{}", bytes.len());
    let refused = |w: &World| {
        let c = w.peers[1].engine.counters();
        (c.oversized_items, c.bad_documents)
    };
    assert_eq!(refused(&w), (0, 0));
    w.input(1, Input::Message { from, bytes });
    // The first over its allowance of changes, the second's columns no longer
    // consistent (a count rewritten inside a value): neither reached automerge.
    assert_eq!(refused(&w), (1, 1));
    assert!(cue_core::doc::load_automerge(&bomb(Kind::EmptyChanges, 1)).is_err());
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
}

/// A member mangles its own changes (one to three bytes of each, checksums mended) and
/// sends them sealed, to the index and to a file, hundreds of times: automerge 0.12
/// panics applying about a quarter of such changes and is left with a document it cannot
/// save and load again by a fifth. The victim never goes down, never stores a document
/// it cannot load, keeps every honest edit, and everyone still converges.
#[test]
fn mangled_changes_never_crash_or_spoil_a_peer() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    use rand::SeedableRng;
    let mut w = World::new(3, 31, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"# Notes\nfirst line\n");
    w.settle(5);
    // The member's own genuine changes: one to the file, one to the index (a new file).
    let attacker = 2;
    let key = cue_sim::key_for(attacker);
    let actor = cue_core::actor_for(&w.peers[attacker].device, w.peers[attacker].epoch);
    let (file, stored) = only_file(&w, attacker);
    let mut doc = AutoCommit::load(&stored).unwrap().with_actor(actor.clone());
    let body = doc.get(ROOT, "body").unwrap().unwrap().1;
    doc.splice_text(&body, 2, 3, "Mangled").unwrap();
    doc.commit();
    let file_change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    w.write(attacker, "b.md", b"mine\n");
    w.settle(5);
    let mut index =
        AutoCommit::load(&w.peers[attacker].store.docs[&cue_core::DocId::Index]).unwrap();
    let index_change = index
        .get_changes(&[])
        .into_iter()
        .rev()
        .find(|c| c.actor_id() == &actor)
        .expect("the member's index change")
        .raw_bytes()
        .to_vec();

    let from = w.peers[attacker].device;
    let epoch = w.peers[attacker].epoch;
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let mut sent = 0;
    while sent < 400 {
        let (doc, change) = if sent % 2 == 0 {
            (cue_core::DocId::File(file), &file_change)
        } else {
            (cue_core::DocId::Index, &index_change)
        };
        let Some(m) = cue_sim::bomb::mangled(change, &mut rng) else {
            continue;
        };
        if automerge::Change::from_bytes(m.clone()).is_err() {
            continue; // automerge's own parsing refuses it: nothing to learn
        }
        sent += 1;
        let item = cue_sim::seal_as(
            &key,
            epoch,
            Item::Changes {
                doc,
                changes: vec![m],
            },
        );
        let bytes = encode(&Message { items: vec![item] });
        w.input(1, Input::Message { from, bytes });
    }
    let c = w.peers[1].engine.counters();
    assert!(c.bad_changes + c.bad_documents > 0, "{c:?}");
    // Every document the victim stored loads, and saves whole into what loads again.
    for (d, bytes) in &w.peers[1].store.docs {
        let mut loaded = cue_core::doc::load_automerge(bytes)
            .unwrap_or_else(|e| panic!("{d:?} stored unloadable: {e}"));
        let heads = loaded.get_heads();
        let again = cue_core::doc::load_automerge(&loaded.save())
            .unwrap_or_else(|e| panic!("{d:?} saves into what does not load: {e}"))
            .get_heads();
        assert_eq!(again, heads, "{d:?}");
    }
    // Honest work goes on: edits from both honest peers and the member's genuine file.
    w.write(0, "a.md", b"# Notes\nfirst line\nsecond line\n");
    w.write(1, "c.md", b"from the victim\n");
    w.settle(10);
    let mut rounds = 0;
    while let Err(e) = w.converged() {
        rounds += 1;
        assert!(rounds < 100, "not converged: {e}");
        w.settle(1);
    }
    // A mangled change that is still a well-formed change of the member's is an edit
    // of the member's like any other (its text may have come out different).
    for p in 0..3 {
        let a = w.read(p, "a.md").unwrap_or_default();
        assert!(a.ends_with("first line\nsecond line\n"), "p{p}: {a:?}");
        assert_eq!(w.read(p, "b.md").as_deref(), Some("mine\n"));
        assert_eq!(w.read(p, "c.md").as_deref(), Some("from the victim\n"));
    }
}

/// A member sends a document mangled so that automerge loads it but panics giving its
/// changes back (30 in 376 mangled copies that load do), whole and for adoption: the
/// whole one is refused when it comes, the adopted one when it is verified; the victim
/// never goes down, answers catch-ups, and honest work converges.
#[test]
fn a_document_that_loads_but_cannot_give_its_changes_back_is_refused() {
    use rand::SeedableRng;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut w = world();
    let attacker = 0;
    let (_, stored) = only_file(&w, attacker);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mangled = (0..100_000)
        .find_map(|_| {
            let m = cue_sim::bomb::mangled(&stored, &mut rng)?;
            let mut d = cue_core::doc::load_automerge(&m).ok()?;
            catch_unwind(AssertUnwindSafe(|| d.get_changes(&[]).len()))
                .is_err()
                .then_some((m, d.get_heads()))
        })
        .expect("a mangled document that loads and panics");
    let (bytes, heads) = mangled;
    let heads: Vec<[u8; 32]> = heads.iter().map(|h| h.0).collect();
    let from = w.peers[attacker].device;
    let items = vec![
        Item::Whole {
            doc: cue_core::DocId::File(cue_core::FileId([0xe0; 16])),
            bytes: bytes.clone(),
        },
        Item::Adopt {
            doc: cue_core::DocId::File(cue_core::FileId([0xe1; 16])),
            bytes,
            heads,
            content: b"x\n".to_vec(),
        },
    ];
    let bad_before = w.peers[1].engine.counters().bad_documents;
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    w.settle(10);
    assert_eq!(w.peers[1].engine.counters().bad_documents, bad_before + 2);
    // Honest work goes on, and a peer that was away catches up from the victim.
    w.write(1, "b.md", b"after\n");
    w.write(0, "a.md", b"x\ny\n");
    w.settle(10);
    let mut rounds = 0;
    while let Err(e) = w.converged() {
        rounds += 1;
        assert!(rounds < 100, "not converged: {e}");
        w.settle(1);
    }
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
    assert_eq!(w.read(0, "b.md").as_deref(), Some("after\n"));
}

/// A member's change that claims a million deletions in 155 bytes, in a note of 300
/// characters: automerge 0.12 spends about 500 bytes and 2 µs a claimed deletion before
/// it finds most delete nothing (8.7 GB and 39 s for 16 Mi, then a panic). A change
/// cannot honestly delete more than its document holds, with what comes with it: such a
/// claim is refused before automerge reads it, counted, and the note stays as it is.
#[test]
fn a_change_claiming_more_deletions_than_its_document_holds_is_refused() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let mut w = World::new(2, 33, Config::default());
    w.connect_all();
    let text = "x".repeat(300);
    w.write(0, "a.md", text.as_bytes());
    w.settle(5);
    let attacker = 0;
    let actor = cue_core::actor_for(&w.peers[attacker].device, w.peers[attacker].epoch);
    let (file, stored) = only_file(&w, attacker);
    let mut doc = AutoCommit::load(&stored).unwrap().with_actor(actor);
    let body = doc.get(ROOT, "body").unwrap().unwrap().1;
    let len = doc.length(&body);
    doc.splice_text(&body, 0, len as isize, "").unwrap();
    doc.commit();
    let deletion = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let claimed = cue_sim::bomb::deletions_claiming(&deletion, len as u64, 1 << 20).unwrap();
    assert_eq!(
        automerge::Change::from_bytes(claimed.clone())
            .unwrap()
            .len(),
        1 << 20
    );
    let item = cue_sim::seal_as(
        &cue_sim::key_for(attacker),
        w.peers[attacker].epoch,
        Item::Changes {
            doc: cue_core::DocId::File(file),
            changes: vec![claimed],
        },
    );
    let from = w.peers[attacker].device;
    let before = w.peers[1].engine.counters().bad_changes;
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items: vec![item] }),
        },
    );
    assert_eq!(w.peers[1].engine.counters().bad_changes, before + 1);
    assert_eq!(w.read(1, "a.md").as_deref(), Some(text.as_str()));
    w.write(0, "a.md", b"short now\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("short now\n"));
}

/// A member's change that marks text (bold, a link: cue never makes marks, and marks out
/// of order applied by automerge 0.12 leave a document whose save no longer loads) is
/// refused before automerge reads it, counted, and the note stays as it is.
#[test]
fn a_change_with_text_marks_is_refused() {
    use automerge::marks::{ExpandMark, Mark};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let mut w = world();
    let attacker = 0;
    let actor = cue_core::actor_for(&w.peers[attacker].device, w.peers[attacker].epoch);
    let (file, stored) = only_file(&w, attacker);
    let mut doc = AutoCommit::load(&stored).unwrap().with_actor(actor);
    let body = doc.get(ROOT, "body").unwrap().unwrap().1;
    doc.mark(
        &body,
        Mark::new("bold".into(), true, 0, 1),
        ExpandMark::None,
    )
    .unwrap();
    doc.commit();
    let marked = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let item = cue_sim::seal_as(
        &cue_sim::key_for(attacker),
        w.peers[attacker].epoch,
        Item::Changes {
            doc: cue_core::DocId::File(file),
            changes: vec![marked],
        },
    );
    let from = w.peers[attacker].device;
    let before = w.peers[1].engine.counters().bad_documents;
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items: vec![item] }),
        },
    );
    assert_eq!(w.peers[1].engine.counters().bad_documents, before + 1);
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
}

/// A member sends changes cue never makes that would leave a file's document without a
/// content (its `kind` removed or made a number) or take a map of the index away
/// (`path` deleted, made a number, `tomb` made a list): each is refused whole and counted;
/// no file leaves any disk, the index still loads at the next start, and files still sync.
#[test]
fn changes_that_take_a_documents_shape_away_are_refused() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};
    let mut w = World::new(3, 31, Config::default());
    w.connect_all();
    let files = cue_sim::notes(6);
    w.write_many(0, &files);
    w.settle_converged();
    let attacker = 2;
    let from = w.peers[attacker].device;
    let send = |w: &mut World, doc: cue_core::DocId, epoch: u32, edit: &dyn Fn(&mut AutoCommit)| {
        let stored = w.peers[0].store.docs[&doc].clone();
        let actor = cue_core::actor_for(&from, epoch);
        let mut am = AutoCommit::load(&stored).unwrap().with_actor(actor);
        edit(&mut am);
        am.commit();
        let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
        let item = Item::Changes {
            doc,
            changes: vec![change],
        };
        let bytes = encode(&Message {
            items: vec![cue_sim::seal_as(&w.peers[attacker].key, epoch, item)],
        });
        let before: Vec<u64> = (0..2)
            .map(|p| w.peers[p].engine.counters().bad_documents)
            .collect();
        for p in [0, 1] {
            let bytes = bytes.clone();
            w.input(p, Input::Message { from, bytes });
        }
        w.settle(10);
        for p in [0, 1] {
            assert!(
                w.peers[p].engine.counters().bad_documents > before[p],
                "p{p}, epoch {epoch}"
            );
            for (path, bytes) in &files {
                assert_eq!(
                    w.read(p, path).as_deref(),
                    std::str::from_utf8(bytes).ok(),
                    "p{p}"
                );
            }
        }
    };
    let stored = &w.peers[0].store.docs[&cue_core::DocId::Index];
    let index = cue_core::index::IndexDoc::load(stored, automerge::ActorId::random()).unwrap();
    let first = index.paths().into_iter().find(|(_, p)| *p == files[0].0);
    let file = cue_core::DocId::File(first.unwrap().0);
    send(&mut w, file, 90, &|am| am.delete(ROOT, "kind").unwrap());
    send(&mut w, file, 91, &|am| am.put(ROOT, "kind", 7).unwrap());
    let index = cue_core::DocId::Index;
    send(&mut w, index, 92, &|am| am.delete(ROOT, "path").unwrap());
    send(&mut w, index, 93, &|am| am.put(ROOT, "path", 1).unwrap());
    send(&mut w, index, 94, &|am| {
        am.put_object(ROOT, "tomb", ObjType::List).unwrap();
    });
    send(&mut w, index, 95, &|am| {
        am.put_object(ROOT, "path", ObjType::Map).unwrap();
    });
    for p in [0, 1] {
        w.restart(p);
    }
    w.settle_converged();
    w.write(1, &files[1].0, b"edited\n");
    w.write(0, "new.md", b"new\n");
    w.settle_converged();
    for p in 0..3 {
        assert_eq!(w.read(p, &files[1].0).as_deref(), Some("edited\n"), "p{p}");
        assert_eq!(w.read(p, "new.md").as_deref(), Some("new\n"), "p{p}");
        assert_eq!(
            w.read(p, &files[2].0).as_deref(),
            std::str::from_utf8(&files[2].1).ok()
        );
    }
}

/// A member answers a peer's catch-up pull with changes under made-up devices, each
/// sealed by its own made-up key (a member can make keys at will): only members' seals
/// count, so none applies, each is counted, and the note stays as it was.
#[test]
fn changes_under_made_up_devices_in_a_pull_answer_are_refused() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let mut w = World::new(3, 28, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.settle_converged();
    let (f, stored) = only_file(&w, 0);
    p1_catching_up_from_p2_alone(&mut w);
    let items: Vec<Item> = (0..40u8)
        .map(|k| {
            let key = cue_core::seal::SealKey::from_seed(&[k.wrapping_add(100); 32]);
            let actor = cue_core::actor_for(&key.device(), 1);
            let mut doc = AutoCommit::load(&stored).unwrap().with_actor(actor);
            let body = doc.get(ROOT, "body").unwrap().unwrap().1;
            doc.splice_text(&body, 0, 0, "MADE UP ").unwrap();
            doc.commit();
            let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
            cue_sim::seal_as(
                &key,
                1,
                Item::Changes {
                    doc: cue_core::DocId::File(f),
                    changes: vec![change],
                },
            )
        })
        .collect();
    let from = w.peers[2].device;
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    w.settle(10);
    assert_eq!(w.peers[1].engine.counters().forged_changes, 40);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("one\n"));
    assert_eq!(w.read(1, "b.md").as_deref(), Some("b\n"));
}

/// Two operations a byte of what a document inflates to is no bound when the bytes are
/// zeros that deflate a thousandfold (`bomb padded 16`: 8 KB took a victim 1.2 GiB and
/// 4 s; two a byte of an item's 64 MiB would be 128 Mi operations, about 10 GB). An item
/// asks automerge for at most what the largest file rewritten once does (32 Mi
/// operations and a little at the default 16 MiB); a document claiming 34 Mi operations
/// beside 17 MiB of zeros (17 KB sent) is refused before automerge builds them, and
/// nothing else stops.
#[test]
fn a_document_padded_to_fit_its_bytes_is_held_to_the_largest_file() {
    let mut w = world();
    let from = w.peers[0].device;
    let bytes = cue_sim::bomb::padded_run_length(34 << 20, (17 << 20) + 4096);
    assert!(bytes.len() < 32 << 10, "{}", bytes.len());
    // Loaded when it comes, or adopted unread and loaded when it is verified.
    let items = vec![
        Item::Whole {
            doc: cue_core::DocId::File(cue_core::FileId([0xc7; 16])),
            bytes: bytes.clone(),
        },
        Item::Adopt {
            doc: cue_core::DocId::File(cue_core::FileId([0xc8; 16])),
            bytes,
            heads: vec![[7; 32]],
            content: b"x".to_vec(),
        },
    ];
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    assert_eq!(w.peers[1].engine.counters().oversized_items, 2);
    w.write(0, "a.md", b"x\ny\n");
    w.settle(5);
    assert_eq!(w.read(1, "a.md").as_deref(), Some("x\ny\n"));
}

/// A member's (p2's) change to the index, `edit`, made over what p0 holds under an actor
/// of p2's own (`epoch`: p2 itself may lack what it sent before, which went to p0 and
/// p1 alone), sealed by p2 and sent to p0 and p1 alone; then settled.
fn index_change_from_p2(w: &mut World, epoch: u32, edit: &dyn Fn(&mut cue_core::index::IndexDoc)) {
    let from = w.peers[2].device;
    let stored = w.peers[0].store.docs[&cue_core::DocId::Index].clone();
    let mut index = cue_core::index::IndexDoc::load(&stored, cue_core::actor_for(&from, epoch))
        .expect("the index loads");
    edit(&mut index);
    let change = index.commit(0).expect("a change");
    let item = Item::Changes {
        doc: cue_core::DocId::Index,
        changes: vec![change.raw_bytes().to_vec()],
    };
    w.send_sealed(2, epoch, item, &[0, 1]);
    w.settle(10);
}

/// A member takes every file's path out of the index without deleting the files (no
/// tombstone: nothing `restore` could bring back, nothing the mass-deletion guard
/// counts) and gives one a path no device may write: each file would leave every disk.
/// The others take it as the deletion it is: held by the guard (a mass deletion), and
/// brought back by `restore .`; one file's path taken away is a deletion `restore`
/// undoes. (The whole map replaced is refused: `changes_that_take_a_documents_shape_away_are_refused`.)
#[test]
fn paths_taken_away_without_a_deletion_are_deletions_that_can_be_undone() {
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};
    use cue_core::index::IndexDoc;
    let mut w = World::online(3, 29);
    // (The guard holds deletions of more than half of 20 files or more.)
    let files = cue_sim::notes(30);
    w.write_many(0, &files);
    w.settle_converged();
    let send = |w: &mut World, epoch: u32, edit: &dyn Fn(&mut IndexDoc)| {
        index_change_from_p2(w, epoch, edit);
    };
    let on_disk = |w: &World, p: usize, what: &str| {
        for (path, bytes) in &files {
            assert_eq!(
                w.read(p, path).as_deref(),
                std::str::from_utf8(bytes).ok(),
                "p{p} lost {path} to {what}"
            );
        }
    };
    let everywhere_after_restore = |w: &mut World, what: &str| {
        for p in [0, 1] {
            on_disk(w, p, what);
            assert!(
                w.status(p).deletions_paused.is_some(),
                "p{p}: {what} not held"
            );
        }
        w.restore(0, ".").expect("restore .");
        w.restore(1, ".").expect("restore .");
        w.settle_converged();
        for p in 0..3 {
            on_disk(w, p, what);
        }
    };
    let delete_paths = |index: &mut IndexDoc, how_many: usize| {
        let ids: Vec<_> = index.paths().into_keys().take(how_many).collect();
        let am = index.automerge();
        let paths = am.get(ROOT, "path").unwrap().unwrap().1;
        for (n, id) in ids.iter().enumerate() {
            if n == 0 {
                am.put(&paths, id.to_string(), "../outside.md").unwrap();
            } else {
                am.delete(&paths, id.to_string()).unwrap();
            }
        }
    };
    send(&mut w, 99, &|index| delete_paths(index, usize::MAX));
    assert!(w.peers[0].engine.counters().bad_paths >= 30);
    everywhere_after_restore(&mut w, "paths deleted");
    // One file: a deletion (not held), undone by `restore`.
    send(&mut w, 97, &|index| delete_paths(index, 2));
    let gone: Vec<&String> = files
        .iter()
        .map(|(p, _)| p)
        .filter(|p| w.read(0, p).is_none())
        .collect();
    assert_eq!(gone.len(), 2, "two files deleted");
    assert!(w.status(0).deletions_paused.is_none());
    let gone: Vec<String> = gone.into_iter().cloned().collect();
    for path in &gone {
        w.restore(0, path).expect("restore");
    }
    w.settle_converged();
    for p in 0..3 {
        on_disk(&w, p, "two paths deleted");
    }
    // And the files still sync.
    w.write(1, &files[3].0, b"edited\n");
    w.settle_converged();
    assert_eq!(w.read(0, &files[3].0).as_deref(), Some("edited\n"));
}

/// A member deletes files in slices the guard lets through, then purges their
/// tombstones at once, as `tombstone_days` does when they are old: `restore` found
/// nothing on any device (the documents stayed in every store). Now a device puts back
/// the path and tombstone of every deletion it has seen for less than
/// `tombstone_days`: the files come back with `restore`, everywhere. A tombstone purged
/// when its time is up here goes, and one never seen here (set and purged while the
/// device was away) stays purged.
#[test]
fn tombstones_purged_before_their_time_are_put_back_and_restorable() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(3, 31, config);
    w.connect_all();
    let files = cue_sim::notes(6);
    w.write_many(0, &files);
    w.settle_converged();
    // The member's own deletions, honest-looking: two slices under the guard.
    for (path, _) in &files[..2] {
        w.delete(2, path);
        w.settle_converged();
    }
    // (Purged at once: before any tick has noted the tombstones.)
    // (`junk`: a key beside the index's maps, which the engine's summary of what a
    // change touched does not know: every tombstone is then looked at.)
    let purge = |w: &mut World, epoch: u32, junk: bool| {
        index_change_from_p2(w, epoch, &|index| {
            for f in index.tombstones().into_keys() {
                index.purge(&f).unwrap();
            }
            if junk {
                use automerge::transaction::Transactable;
                index.automerge().put(automerge::ROOT, "junk", 1).unwrap();
            }
        });
    };
    purge(&mut w, 99, false);
    w.settle_converged();
    for (path, bytes) in &files[..2] {
        w.restore(1, path)
            .expect("the deletion is still restorable");
        w.settle_converged();
        for p in 0..3 {
            assert_eq!(
                w.read(p, path).as_deref(),
                std::str::from_utf8(bytes).ok(),
                "p{p}: {path} not restored"
            );
        }
    }
    // Again, with a change the summary does not cover.
    w.delete(2, &files[2].0);
    w.settle_converged();
    purge(&mut w, 97, true);
    w.settle_converged();
    w.restore(0, &files[2].0)
        .expect("restorable after a purge the summary did not cover");
    w.settle_converged();
    assert!(w.read(1, &files[2].0).is_some());
    // Deleted again and left alone: purged when its time is up, and stays purged.
    w.delete(0, &files[0].0);
    w.settle_converged();
    w.advance(tombstone_ms + 1_000);
    w.advance(1_000);
    w.settle_converged();
    assert!(
        w.restore(1, &files[0].0).is_err(),
        "a tombstone whose time is up was put back"
    );
    // Half-way through its time: a purge is still put back.
    w.delete(1, &files[1].0);
    w.settle_converged();
    w.advance(tombstone_ms / 2);
    w.settle_converged();
    purge(&mut w, 98, false);
    w.settle_converged();
    w.restore(0, &files[1].0)
        .expect("restorable after a purge half-way");
}

/// Deletions the guard holds wait for the user, however long: the deleter purging them
/// when its `tombstone_days` are up used to take them from the device that held them
/// (nothing left to restore there). Now that device puts them back, and `restore .`
/// still brings the files back, everywhere.
#[test]
fn held_deletions_outlive_the_deleters_purge() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(3, 32, config);
    w.connect_all();
    let files = cue_sim::notes(30);
    w.write_many(0, &files);
    w.settle_converged();
    for (path, _) in &files[..20] {
        w.delete(2, path);
    }
    w.settle(10);
    assert!(w.status(0).deletions_paused.is_some(), "held on p0");
    let at_start = w.index_changes(0);
    // Five times `tombstone_days`, half of it at a time: the deleter purges, p0 and p1
    // put them back, once at the deleter's time and once four `tombstone_days` later
    // (a purge is remembered that long), and that is all (past four, they were purged
    // and put back at every tick).
    for _ in 0..10 {
        w.advance(tombstone_ms / 2);
        w.settle(10);
        w.advance(1_000);
        w.settle(10);
    }
    let made = w.index_changes(0) - at_start;
    assert!(made <= 6, "{made} index changes");
    w.restore(0, ".")
        .expect("held deletions restorable after the purge");
    w.settle(10);
    for p in [0, 2] {
        for (path, bytes) in &files {
            assert_eq!(
                w.read(p, path).as_deref(),
                std::str::from_utf8(bytes).ok(),
                "p{p}: {path}"
            );
        }
    }
}

/// A member that answers every pull with nothing and then announces a new state, over
/// and over, sorting first among the peers: a device coming back still catches up
/// from the others (each peer whose state differs gets its turn to be asked).
#[test]
fn a_member_answering_pulls_with_nothing_cannot_keep_a_device_from_catching_up() {
    let mut w = World::new(3, 30, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"x\n");
    w.settle_converged();
    // The hostile one sorts first among the two p1 can pull from.
    let (hostile, honest) = if w.peers[0].device < w.peers[2].device {
        (0, 2)
    } else {
        (2, 0)
    };
    w.disconnect(1);
    w.write(honest, "new.md", b"made while p1 was away\n");
    w.settle(3);
    // The hostile one's own engine is out of the way; what it says to p1 is made here.
    w.disconnect(hostile);
    w.connect(1);
    let from = w.peers[hostile].device;
    for round in 0..40u8 {
        // The end of whatever pull p1 made of it (nothing sent), then a new state.
        let mut items: Vec<Item> = (0..64).map(|id| Item::PullDone { id }).collect();
        items.push(Item::Hello {
            digest: [round.wrapping_add(1); 32],
            reply: false,
        });
        let bytes = encode(&Message { items });
        w.input(1, Input::Message { from, bytes });
        w.advance(200);
        deliver(&mut w);
        if w.read(1, "new.md").is_some() {
            break;
        }
    }
    assert_eq!(
        w.read(1, "new.md").as_deref(),
        Some("made while p1 was away\n"),
        "p1 never pulled from p{honest}"
    );
}

/// A member deletes from the index the rotation record that removed a device (which
/// would take it back in) and the entry that says who admitted another: each change is
/// refused whole and counted, the device stays removed, and files still sync.
#[test]
fn changes_that_take_a_rotation_record_or_an_admission_away_are_refused() {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let mut w = World::new(4, 32, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"a\n");
    w.settle(10);
    for i in 1..4 {
        w.advance(1_000);
        let device = w.peers[i].device;
        w.input(0, Input::Admitted { device });
    }
    w.settle(10);
    let gone = w.peers[3].device;
    w.rotate(0, &[3]);
    for _ in 0..4 {
        w.settle(10);
        w.lobby();
    }
    for p in 0..3 {
        assert!(w.peers[p].engine.removed().contains_key(&gone), "p{p}");
    }
    let attacker = 2;
    let from = w.peers[attacker].device;
    let stored = w.peers[0].store.docs[&cue_core::DocId::Index].clone();
    let keys: Vec<String> = {
        let am = AutoCommit::load(&stored).unwrap();
        let (_, members) = am.get(ROOT, "members").unwrap().unwrap();
        am.keys(&members).collect()
    };
    let record = keys
        .iter()
        .find(|k| k.starts_with("rotation:"))
        .unwrap()
        .clone();
    let admission = format!("admitted:{}", w.peers[1].device);
    assert!(keys.contains(&admission), "{keys:?}");
    for (epoch, key) in [(90, record), (91, admission)] {
        let stored = w.peers[0].store.docs[&cue_core::DocId::Index].clone();
        let mut am = AutoCommit::load(&stored)
            .unwrap()
            .with_actor(cue_core::actor_for(&from, epoch));
        let (_, members) = am.get(ROOT, "members").unwrap().unwrap();
        am.delete(&members, key.as_str()).unwrap();
        am.commit();
        let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
        let item = Item::Changes {
            doc: cue_core::DocId::Index,
            changes: vec![change],
        };
        let bytes = encode(&Message {
            items: vec![cue_sim::seal_as(&w.peers[attacker].key, epoch, item)],
        });
        for p in [0, 1] {
            let before = w.peers[p].engine.counters().bad_documents;
            w.input(
                p,
                Input::Message {
                    from,
                    bytes: bytes.clone(),
                },
            );
            w.settle(10);
            assert!(
                w.peers[p].engine.counters().bad_documents > before,
                "p{p}: {key}"
            );
            assert!(
                w.peers[p].engine.removed().contains_key(&gone),
                "p{p}: {key}"
            );
        }
    }
    w.write(1, "b.md", b"b\n");
    for _ in 0..4 {
        w.settle(10);
        w.lobby();
    }
    for p in 0..3 {
        assert_eq!(w.read(p, "b.md").as_deref(), Some("b\n"), "p{p}");
        assert!(w.peers[p].engine.removed().contains_key(&gone), "p{p}");
    }
    assert_eq!(w.read(3, "b.md"), None);
}

/// A member sends a new note of its own whose document's bytes are damaged (checksums
/// that fail), with content of its choosing. Stored unread, the document would fail to
/// load only at its check, and could be taken for one our own store damaged: the
/// content taken in again as a new file of ours, under our name. It is refused when it
/// comes and counted; nothing of it reaches a disk, and honest work goes on.
#[test]
fn a_damaged_document_from_a_peer_is_refused_not_taken_for_ours() {
    let mut w = World::new(3, 24, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"x\n");
    w.settle(10);
    let file = cue_core::FileId([0xd1; 16]);
    let evil = b"words put in p1's mouth\n";
    let mut items = cue_sim::new_file_items(&w, 2, file, "n.md", evil, evil);
    for item in &mut items {
        if let Item::Sealed {
            item: cue_core::wire::Sealable::Adopt { bytes, .. },
            ..
        } = item
        {
            // The checksum's first byte: what follows still walks as automerge's.
            bytes[4] ^= 0x40;
        }
    }
    let bad_before = w.peers[1].engine.counters().bad_documents;
    let from = w.peers[2].device;
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    w.advance(60_000);
    w.settle(20);
    assert!(w.peers[1].engine.counters().bad_documents > bad_before);
    w.write(0, "a.md", b"x\ny\n");
    w.settle(20);
    for p in 0..3 {
        assert_eq!(w.read(p, "a.md").as_deref(), Some("x\ny\n"), "p{p}");
        assert!(
            w.peers[p].disk.values().all(|b| b != evil),
            "p{p}: {:?}",
            w.peers[p].disk.keys()
        );
    }
}

/// `p2`'s items for a new file `file` holding `content`, without the index change that
/// would name it: a document for a file no member made.
fn unnamed_items(w: &World, file: cue_core::FileId, content: &[u8]) -> Vec<Item> {
    cue_sim::new_file_items(w, 2, file, "x.md", content, content)
        .into_iter()
        .filter(|i| !matches!(i, Item::Sealed { item, .. } if item.doc() == cue_core::DocId::Index))
        .collect()
}

/// Bytes no compression makes smaller, `n` of them, different for each `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A member sends documents for files it never names in the index, many small ones and
/// some large: each peer keeps at most 1,024 such documents and 32 MiB of them (the
/// oldest go first, counted in `unnamed_documents`), none for more than ten minutes,
/// and the workspace syncs on.
#[test]
fn documents_for_files_nobody_names_are_bounded_and_dropped() {
    let mut w = World::new(3, 24, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"x\n");
    w.settle(10);
    let from = w.peers[2].device;
    let send = |w: &mut World, items: Vec<Item>| {
        for p in [0, 1] {
            let bytes = encode(&Message {
                items: items.clone(),
            });
            w.input(p, Input::Message { from, bytes });
        }
        // (No time passes.)
        while w.step() {}
    };
    // 1,100 small notes, fifty a message.
    for batch in 0..22u64 {
        let mut items = Vec::new();
        for i in 0..50 {
            let file = cue_core::FileId(
                *blake3::hash(&(batch * 50 + i).to_le_bytes())
                    .as_bytes()
                    .first_chunk()
                    .unwrap(),
            );
            items.extend(unnamed_items(
                &w,
                file,
                format!("note {batch} {i}\n").as_bytes(),
            ));
        }
        send(&mut w, items);
    }
    for p in [0, 1] {
        let held = w.unnamed_documents(p);
        assert!(held.len() <= 1024, "p{p}: {} documents kept", held.len());
        assert!(
            held.len() >= 1000,
            "p{p}: the newest are kept ({})",
            held.len()
        );
        assert!(w.peers[p].engine.counters().unnamed_documents >= 76, "p{p}");
    }
    // Forty binary files of 1 MiB each.
    for i in 0..40u64 {
        let file = cue_core::FileId([0xb0 ^ i as u8; 16]);
        let items = unnamed_items(&w, file, &noise(i, 1 << 20));
        send(&mut w, items);
    }
    for p in [0, 1] {
        let bytes: usize = w.unnamed_documents(p).iter().map(|(_, b)| b).sum();
        assert!(bytes <= (33 << 20), "p{p}: {bytes} bytes kept");
    }
    // Ten minutes later, nothing is left of them.
    for _ in 0..11 {
        w.advance(60_000);
    }
    w.settle(5);
    for p in [0, 1] {
        assert_eq!(w.unnamed_documents(p), Vec::new(), "p{p}");
    }
    w.write(0, "a.md", b"x\ny\n");
    w.settle(10);
    for p in 0..3 {
        assert_eq!(w.read(p, "a.md").as_deref(), Some("x\ny\n"), "p{p}");
    }
    w.converged().unwrap();
}

/// A document that comes before the index entry naming its file (the entry held up on
/// the way) and is dropped once kept for ten minutes unnamed comes again once the entry
/// does: the new file reaches the peer with its bytes, nothing lost. Its author is not
/// told it is held there meanwhile (its changes stay pending).
#[test]
fn a_document_dropped_before_its_path_came_is_sent_again() {
    let mut w = World::new(2, 25, Config::default());
    w.connect_all();
    w.write(0, "a.md", b"x\n");
    w.settle(10);
    w.write(0, "b.md", b"the new note\n");
    let from = w.peers[0].device;
    let mut file_items = Vec::new();
    for bytes in w.take_in_flight(0, 1) {
        let msg = decode(&bytes).expect("a message");
        file_items.extend(msg.items.into_iter().filter(
            |i| matches!(i, Item::Sealed { item, .. } if item.doc() != cue_core::DocId::Index),
        ));
    }
    assert!(!file_items.is_empty(), "the new note's document was sent");
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items: file_items }),
        },
    );
    assert_eq!(w.unnamed_documents(1).len(), 1, "kept at first");
    let pending = w.status(0).pending_changes;
    assert!(pending > 0);
    w.deliver_between(1, 0);
    assert_eq!(
        w.status(0).pending_changes,
        pending,
        "not acknowledged while unnamed"
    );
    w.disconnect(1);
    for _ in 0..11 {
        w.advance(60_000);
    }
    assert_eq!(w.unnamed_documents(1), Vec::new(), "dropped unnamed");
    assert_eq!(w.peers[1].engine.counters().unnamed_documents, 1);
    w.connect(1);
    w.settle(20);
    assert_eq!(w.read(1, "b.md").as_deref(), Some("the new note\n"));
    w.converged().unwrap();
}

/// A deletion a peer purged when this device had held it its time too leaves no
/// document behind here (it used to stay in the store for good, named by nothing): once
/// the workspace has synced, ten minutes on it is gone, and it is not counted as a
/// peer's refused input.
#[test]
fn a_deletion_a_peer_purged_leaves_no_document_behind() {
    let config = Config::default();
    let tombstone_ms = config.tombstone_ms;
    let mut w = World::new(3, 33, config);
    w.connect_all();
    w.write(0, "a.md", b"one\n");
    w.write(0, "b.md", b"two\n");
    w.settle_converged();
    w.delete(0, "a.md");
    w.settle_converged();
    w.advance(1_000);
    w.settle_converged();
    // Its time up on every device, before their next tick purges it: p2's purge comes.
    w.now_ms += tombstone_ms + 1_000;
    index_change_from_p2(&mut w, 99, &|index| {
        for f in index.tombstones().into_keys() {
            index.purge(&f).unwrap();
        }
    });
    w.settle_converged();
    assert!(w.restore(1, "a.md").is_err(), "the purge was taken");
    assert_eq!(w.unnamed_documents(1).len(), 1, "left behind at first");
    for _ in 0..12 {
        w.advance(60_000);
        w.settle_converged();
    }
    for p in [0, 1] {
        assert_eq!(w.unnamed_documents(p), Vec::new(), "p{p}");
        assert_eq!(w.peers[p].engine.counters().unnamed_documents, 0, "p{p}");
    }
    assert_eq!(w.read(2, "b.md").as_deref(), Some("two\n"));
}

/// A tombstone of time 0 is what the clash rule sets on a file dropped as one with
/// another (no deletion: its bytes live on in that file). A member writing such
/// tombstones on every file, with no other file at their paths, deletes them all: the
/// guard holds it as the mass deletion it is, and `restore .` brings everything back.
#[test]
fn deletions_dressed_as_files_dropped_as_one_are_held_and_can_be_undone() {
    let mut w = World::new(3, 23, Config::default());
    w.connect_all();
    let files = cue_sim::notes(30);
    w.write_many(0, &files);
    w.settle(10);
    let heads: Vec<(cue_core::FileId, Vec<automerge::ChangeHash>)> = w.peers[0]
        .store
        .docs
        .iter()
        .filter_map(|(d, bytes)| match d {
            cue_core::DocId::File(f) => {
                let mut doc = automerge::AutoCommit::load(bytes).ok()?;
                Some((*f, doc.get_heads()))
            }
            cue_core::DocId::Index => None,
        })
        .collect();
    assert_eq!(heads.len(), 30);
    index_change_from_p2(&mut w, 7, &|index| {
        for (f, h) in &heads {
            let tomb = cue_core::index::Tombstone {
                time_ms: 0,
                heads: h.clone(),
            };
            index.set_tombstone(f, &tomb).unwrap();
        }
    });
    for p in 0..2 {
        assert_eq!(w.peers[p].disk.len(), 30, "peer {p} deleted files");
        let paused = w.status(p).deletions_paused.expect("deletions paused");
        assert_eq!(paused.count, 30, "peer {p}");
    }
    w.restore(0, ".").expect("restore .");
    w.settle(10);
    for p in 0..3 {
        assert_eq!(w.peers[p].disk.len(), 30, "peer {p}");
    }
    // A few, under the guard's bound: deleted, shown as deletions, and `restore .`
    // brings them back.
    w.advance(60_000);
    index_change_from_p2(&mut w, 8, &|index| {
        for (f, h) in &heads[..3] {
            let tomb = cue_core::index::Tombstone {
                time_ms: 0,
                heads: h.clone(),
            };
            index.set_tombstone(f, &tomb).unwrap();
        }
    });
    assert_eq!(w.peers[0].disk.len(), 27);
    let shown = (w.peers[0].activity.iter())
        .filter(|a| a.kind == cue_core::ActivityKind::Delete)
        .count();
    assert_eq!(shown, 33, "shown as deletions");
    w.restore(0, ".").expect("restore .");
    w.settle(10);
    for p in 0..3 {
        assert_eq!(w.peers[p].disk.len(), 30, "peer {p}");
    }
}
