//! Removing devices and rotating the secret (docs/security.md): every remaining peer
//! ends on one secret generation with the same bytes, a removed peer gets nothing new
//! and learns it was removed, and no edit of a remaining peer is lost.

use cue_core::{Config, Input};
use cue_sim::World;
use cue_sim::rotation::record;

/// `n` peers online, with a few files everyone holds.
fn world(n: usize, seed: u64) -> World {
    let mut w = World::new(n, seed, Config::default());
    w.connect_all();
    let files = cue_sim::notes(5);
    w.write_many(0, &files);
    w.settle(10);
    for i in 1..n {
        assert_eq!(w.read(i, "n4.md").as_deref(), Some("note 4\n"));
    }
    w
}

/// Settles messages and lobby exchanges until the remaining peers agree.
fn settle(w: &mut World) {
    for _ in 0..6 {
        w.settle(10);
        w.lobby();
    }
    w.settle(10);
}

fn assert_one_generation(w: &World, peers: &[usize]) {
    let g = w.peers[peers[0]].held;
    for &i in peers {
        assert_eq!(
            w.peers[i].held, g,
            "peer {i} holds generation {:?}, peer {} holds {:?}",
            w.peers[i].held, peers[0], g
        );
        assert_eq!(w.peers[i].engine.generation(), g, "peer {i}'s engine");
    }
}

/// Rotation records handed to every peer's engine (as the index would bring them).
fn records_to_everyone(w: &mut World, records: &[Vec<u8>]) {
    for i in 0..w.peers.len() {
        w.input(
            i,
            Input::Rotations {
                records: records.to_vec(),
            },
        );
    }
}

/// `from` writes a note: every peer of `reach` gets it, no peer of `not` does.
fn a_note_reaches(w: &mut World, from: usize, reach: &[usize], not: &[usize], seed: u64) {
    w.write(from, "after.md", b"after\n");
    settle(w);
    for &i in reach {
        let got = w.read(i, "after.md");
        assert_eq!(got.as_deref(), Some("after\n"), "seed {seed}: p{i}");
    }
    for &i in not {
        assert_eq!(w.read(i, "after.md"), None, "seed {seed}: p{i} got it");
    }
}

#[test]
fn a_removed_peer_gets_nothing_new_and_learns_it_was_removed() {
    let mut w = world(3, 1);
    w.rotate(0, &[2]);
    settle(&mut w);
    assert_one_generation(&w, &[0, 1]);
    assert_eq!(w.peers[0].held.number, 1);
    assert!(w.peers[2].engine.removed_here().is_some(), "2 was not told");
    assert_eq!(
        w.peers[2].held.number, 0,
        "the removed peer got the new secret"
    );

    // Edits after the removal reach the remaining peers only.
    w.write(0, "after.md", b"secret plans\n");
    w.write(1, "n1.md", b"note 1\nfrom p1\n");
    settle(&mut w);
    assert_eq!(w.read(1, "after.md").as_deref(), Some("secret plans\n"));
    assert_eq!(w.read(0, "n1.md").as_deref(), Some("note 1\nfrom p1\n"));
    assert_eq!(w.read(2, "after.md"), None);
    assert_eq!(w.read(2, "n1.md").as_deref(), Some("note 1\n"));
    // What it had stays with it.
    assert_eq!(w.read(2, "n4.md").as_deref(), Some("note 4\n"));
    w.converged().unwrap();

    // Its edits reach no one, and its admission admits it no more.
    w.write(2, "n2.md", b"vandalised\n");
    let (device, name) = (w.peers[2].device, w.peers[2].name.clone());
    w.input(
        0,
        Input::Admit {
            device,
            name,
            admission: Vec::new(),
        },
    );
    settle(&mut w);
    assert_eq!(w.read(0, "n2.md").as_deref(), Some("note 2\n"));
    assert!(!w.peers[0].engine.is_member(&device));
    let listed = w.peers[1].engine.devices();
    let entry = listed.iter().find(|d| d.device == device).unwrap();
    assert_eq!(entry.removed.unwrap().by, w.peers[0].device);
}

#[test]
fn peers_offline_during_a_rotation_catch_up_when_they_return() {
    let mut w = world(4, 2);
    // p1 is away with an edit of its own; p3 (to be removed) is away too.
    w.disconnect(1);
    w.disconnect(3);
    w.write(1, "n1.md", b"note 1\nwritten offline\n");
    w.rotate(0, &[3]);
    w.write(0, "n0.md", b"note 0\nafter the rotation\n");
    settle(&mut w);
    assert_one_generation(&w, &[0, 2]);

    w.connect(1);
    w.connect(3);
    settle(&mut w);
    assert_one_generation(&w, &[0, 1, 2]);
    assert_eq!(
        w.read(2, "n1.md").as_deref(),
        Some("note 1\nwritten offline\n")
    );
    assert_eq!(
        w.read(1, "n0.md").as_deref(),
        Some("note 0\nafter the rotation\n")
    );
    assert!(w.peers[3].engine.removed_here().is_some(), "3 never learnt");
    assert_eq!(w.read(3, "n0.md").as_deref(), Some("note 0\n"));
    w.converged().unwrap();
}

#[test]
fn two_rotations_at_once_converge_on_one_secret() {
    for seed in 0..20 {
        let mut w = world(4, 100 + seed);
        // Both rotate before either hears of the other's record.
        w.rotate(0, &[]);
        w.rotate(1, &[]);
        w.write(2, "n2.md", b"note 2\nduring\n");
        settle(&mut w);
        assert_one_generation(&w, &[0, 1, 2, 3]);
        assert_eq!(w.peers[0].held.number, 1, "seed {seed}");
        assert_eq!(w.read(0, "n2.md").as_deref(), Some("note 2\nduring\n"));
        w.converged().unwrap();
    }
}

/// Two members remove two devices at once: one record wins, and the other's author
/// removes again, so both devices end up removed and the rest on one secret.
#[test]
fn concurrent_removals_both_take_effect() {
    for seed in 0..10 {
        let mut w = world(5, 200 + seed);
        w.rotate(0, &[3]);
        w.rotate(1, &[4]);
        settle(&mut w);
        assert_one_generation(&w, &[0, 1, 2]);
        for removed in [3, 4] {
            let d = w.peers[removed].device;
            for i in 0..3 {
                assert!(
                    w.peers[i].engine.removed().contains_key(&d),
                    "seed {seed}: peer {i} still takes {removed} for a member"
                );
            }
            assert!(
                w.peers[removed].held != w.peers[0].held,
                "seed {seed}: removed peer {removed} holds the secret in use"
            );
        }
        w.write(2, "x.md", b"x\n");
        settle(&mut w);
        assert_eq!(w.read(0, "x.md").as_deref(), Some("x\n"));
        assert_eq!(w.read(3, "x.md"), None);
        assert_eq!(w.read(4, "x.md"), None);
    }
}

/// A peer catching up on many files when the peer it pulls from rotates: the pull's
/// answer is lost with the old room, and the catch-up completes in the new one.
#[test]
fn a_removal_during_a_pull_loses_nothing() {
    let mut w = world(3, 3);
    w.disconnect(1);
    let files: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("bulk/{i}.md"), format!("bulk {i}\n").into_bytes()))
        .collect();
    w.write_many(0, &files);
    w.write(1, "mine.md", b"p1 offline work\n");
    w.connect(1);
    // A few messages of the catch-up, then the rotation.
    for _ in 0..3 {
        w.step();
    }
    w.rotate(0, &[2]);
    settle(&mut w);
    assert_one_generation(&w, &[0, 1]);
    for (p, c) in &files {
        assert_eq!(
            w.read(1, p).as_deref(),
            Some(std::str::from_utf8(c).unwrap())
        );
    }
    assert_eq!(w.read(0, "mine.md").as_deref(), Some("p1 offline work\n"));
    w.converged().unwrap();
}

/// Records that do not chain, or whose author is not a member, change nothing.
#[test]
fn a_record_from_a_stranger_or_off_the_chain_is_ignored() {
    let mut w = world(2, 4);
    let stranger = cue_core::DeviceId([9; 32]);
    let target = w.peers[1].device;
    let member = w.peers[0].device;
    let bad = vec![
        record(1, [0; 32], stranger, 0, &[target]),
        record(2, [7; 32], member, 0, &[target]),
        b"garbage".to_vec(),
    ];
    w.input(1, Input::Rotations { records: bad });
    settle(&mut w);
    assert_eq!(w.peers[1].engine.generation().number, 0);
    assert!(w.peers[1].engine.removed().is_empty());
    assert!(w.peers[1].engine.counters().bad_rotations >= 1);
    w.write(0, "still.md", b"syncing\n");
    settle(&mut w);
    assert_eq!(w.read(1, "still.md").as_deref(), Some("syncing\n"));
}

/// `n` peers as `world` makes them, admitted one after the other by peer 0 (which made
/// the workspace), so that each joined after the one before it.
fn admitted_in_order(n: usize, seed: u64) -> World {
    let mut w = world(n, seed);
    for i in 1..n {
        w.advance(1_000);
        let device = w.peers[i].device;
        w.input(0, Input::Admitted { device });
    }
    settle(&mut w);
    w
}

/// Four peers admitted in order; peer 0 rotates, then peer 2 goes away and peer 1
/// removes peer 3 (generation 2): the device that was away and the removed one are both
/// left in the room of generation 1. (World, the one away, the removed one.)
fn removed_while_one_was_away(seed: u64) -> (World, usize, usize) {
    let mut w = admitted_in_order(4, seed);
    let (away, removed) = (2, 3);
    w.rotate(0, &[]);
    settle(&mut w);
    w.disconnect(away);
    w.rotate(1, &[removed]);
    settle(&mut w);
    (w, away, removed)
}

/// `author`'s own branch of records, generations 1 to `to`, the first removing
/// `first_removes`: what a removed device can still sign with the key it keeps.
fn own_branch(
    author: cue_core::DeviceId,
    to: u32,
    first_removes: &[cue_core::DeviceId],
) -> Vec<Vec<u8>> {
    let mut parent = [0; 32];
    let mut out = Vec::new();
    for generation in 1..=to {
        let removes = if generation == 1 { first_removes } else { &[] };
        let bytes = record(generation, parent, author, 5, removes);
        parent = *blake3::hash(&bytes).as_bytes();
        out.push(bytes);
    }
    out
}

/// A removed device signs records of its own from before its removal: a branch longer
/// than the workspace's, removing its remover. A device that was away meets it first,
/// in the old room, and carries them into everyone's index. Nobody takes them: the
/// removed device stays removed, its remover stays, and the device that was away joins
/// the others (before, it followed the longer branch, stayed in the old room with the
/// removed device, and its edits went to it alone).
#[test]
fn a_removed_device_cannot_take_its_place_back_with_a_longer_branch_of_its_own() {
    for seed in 0..4 {
        let (mut w, away, removed) = removed_while_one_was_away(300 + seed);
        assert!(
            w.peers[removed].engine.removed_here().is_some(),
            "seed {seed}"
        );
        let main = w.peers[0].held;
        // Its own branch: generations 1 to 4, the first (a generation before its
        // removal) removing its remover and the device that made the workspace.
        let d = w.peers[removed].device;
        let victims = [w.peers[1].device, w.peers[0].device];
        let forged = own_branch(d, 4, &victims);
        w.input(removed, Input::Rotations { records: forged });
        // The device that was away meets it first, in the old room.
        w.connect(away);
        w.settle(10);
        settle(&mut w);
        for i in 0..3 {
            let e = &w.peers[i].engine;
            assert_eq!(
                e.generation(),
                main,
                "seed {seed}: peer {i} left the workspace's chain"
            );
            assert!(
                e.removed().contains_key(&d),
                "seed {seed}: peer {i} readmitted it"
            );
            assert!(
                !e.removed().contains_key(&victims[0]) && !e.removed().contains_key(&victims[1]),
                "seed {seed}: peer {i} took the removed device's removals"
            );
            assert!(e.removed_here().is_none(), "seed {seed}: peer {i}");
        }
        assert_one_generation(&w, &[0, 1, 2]);
        w.write(away, "back.md", b"written by the device that was away\n");
        settle(&mut w);
        assert!(w.read(0, "back.md").is_some(), "seed {seed}");
        assert_eq!(w.read(removed, "back.md"), None, "seed {seed}");
    }
}

/// Two members remove each other at once: one record wins, its author stays, and the
/// other, which holds the losing record of the same generation (and its secret), learns
/// it was removed (it was sent the records after its generation: none).
#[test]
fn of_two_members_removing_each_other_one_stays_and_the_other_learns_it() {
    for seed in 0..6 {
        let mut w = admitted_in_order(3, 400 + seed);
        w.rotate(1, &[2]);
        w.rotate(2, &[1]);
        settle(&mut w);
        let removed: Vec<usize> = [1, 2]
            .into_iter()
            .filter(|&i| w.peers[0].engine.removed().contains_key(&w.peers[i].device))
            .collect();
        assert_eq!(removed.len(), 1, "seed {seed}");
        let (gone, stays) = (removed[0], 3 - removed[0]);
        assert!(
            w.peers[gone].engine.removed_here().is_some(),
            "seed {seed}: {:?} {:?} {} records",
            w.peers[gone].engine.generation(),
            w.peers[gone].held,
            w.peers[gone].engine.all_records().len()
        );
        assert!(
            w.peers[stays].engine.removed_here().is_none(),
            "seed {seed}"
        );
        assert_one_generation(&w, &[0, stays]);
    }
}

/// A removed device's records from before its removal, made afterwards, cannot put out
/// a member it did not remove at the time: the workspace's maker, whose rotations
/// would then never win again, still removes a device after them.
#[test]
fn a_removed_device_cannot_put_out_a_member_with_records_dated_before_its_removal() {
    for seed in 0..4 {
        let (mut w, away, removed) = removed_while_one_was_away(500 + seed);
        assert_eq!(w.peers[0].held.number, 2, "seed {seed}");
        // Its branch from generation 1, the first record removing the workspace's maker.
        let d = w.peers[removed].device;
        let maker = w.peers[0].device;
        let forged = own_branch(d, 4, &[maker]);
        w.input(removed, Input::Rotations { records: forged });
        w.connect(away);
        w.settle(10);
        settle(&mut w);
        assert_one_generation(&w, &[0, 1, 2]);
        // The maker removes the device that was away.
        w.rotate(0, &[away]);
        settle(&mut w);
        assert_one_generation(&w, &[0, 1]);
        let gone = w.peers[away].device;
        for i in [0, 1] {
            let e = &w.peers[i].engine;
            assert!(e.removed().contains_key(&gone), "seed {seed}: peer {i}");
            assert!(!e.removed().contains_key(&maker), "seed {seed}: peer {i}");
        }
        assert!(w.peers[away].engine.removed_here().is_some(), "seed {seed}");
    }
}

/// Two removed devices work together: one signs, dated before its removal, a removal
/// of the member that later removed the other (whose removal would then not count);
/// the other signs its own longer branch. A device that was away carries both in.
/// Neither comes back, and nobody is put out.
#[test]
fn two_removed_devices_together_cannot_take_their_places_back() {
    for seed in 0..4 {
        let mut w = admitted_in_order(6, 600 + seed);
        let (x, b, d, away) = (2, 3, 4, 5);
        w.rotate(0, &[]);
        settle(&mut w);
        w.rotate(1, &[b]);
        settle(&mut w);
        // Away from the next rotation: it meets the removed device in the old room.
        w.disconnect(away);
        w.rotate(x, &[d]);
        settle(&mut w);
        let main = w.peers[0].held;
        assert_eq!(main.number, 3, "seed {seed}");
        let (bd, dd, xd) = (w.peers[b].device, w.peers[d].device, w.peers[x].device);
        let mut forged = vec![record(1, [0; 32], bd, 5, &[xd])];
        forged.extend(own_branch(dd, 6, &[]));
        w.input(d, Input::Rotations { records: forged });
        w.connect(away);
        w.settle(10);
        settle(&mut w);
        let members = [0, 1, x, away];
        assert_one_generation(&w, &members);
        for i in members {
            let e = &w.peers[i].engine;
            assert_eq!(e.generation(), main, "seed {seed}: peer {i}");
            assert!(
                e.removed().contains_key(&bd) && e.removed().contains_key(&dd),
                "seed {seed}: peer {i}"
            );
            assert!(!e.removed().contains_key(&xd), "seed {seed}: peer {i}");
        }
    }
}

/// Member `peer`'s own change to the index's member list, `puts` (key, value) made over
/// what `over` holds under an actor of `peer`'s of `epoch`, sealed by `peer` and handed
/// to every other peer.
fn member_entries_from(
    w: &mut World,
    peer: usize,
    over: usize,
    epoch: u32,
    puts: &[(String, String)],
) {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT, ReadDoc};
    let from = w.peers[peer].device;
    let stored = w.peers[over].store.docs[&cue_core::DocId::Index].clone();
    let mut am = AutoCommit::load(&stored)
        .expect("the index loads")
        .with_actor(cue_core::actor_for(&from, epoch));
    let (_, members) = am
        .get(ROOT, "members")
        .expect("a map")
        .expect("the member list");
    for (k, v) in puts {
        am.put(&members, k.as_str(), v.as_str()).expect("put");
    }
    am.commit();
    let change = am
        .get_last_local_change()
        .expect("a change")
        .raw_bytes()
        .to_vec();
    let item = cue_core::wire::Item::Changes {
        doc: cue_core::DocId::Index,
        changes: vec![change],
    };
    let others: Vec<usize> = (0..w.peers.len()).filter(|&p| p != peer).collect();
    w.send_sealed(peer, epoch, item, &others);
    w.settle(10);
}

/// A member prepares its comeback while still a member: it writes an admitted-by entry
/// saying it admitted the device that made the workspace, and tries to write over the
/// maker's entry and over its future remover's admitted-by entry. None of it makes it
/// senior to its remover, which was admitted before it (its device id sorts after the
/// removed device's, so that an order left to device ids would fail): the maker is named
/// by a proof only it has, entries that stand are never written over, and a device
/// comes after the device that admitted it. Removed, its own longer branch still
/// changes nothing.
#[test]
fn a_member_cannot_make_itself_senior_with_admitted_by_entries_of_its_own() {
    for seed in 0..3 {
        let mut w = admitted_in_order(5, 700 + seed);
        // Admitted in that order, the later one's id lower.
        let (first, later) = (1..5)
            .flat_map(|i| (i + 1..5).map(move |j| (i, j)))
            .find(|&(i, j)| w.peers[j].device < w.peers[i].device)
            .expect("two peers whose ids sort against their order");
        let away = (1..5).find(|k| ![first, later].contains(k)).unwrap();
        let removed = later;
        let (maker, remover, d) = (
            w.peers[0].device,
            w.peers[first].device,
            w.peers[later].device,
        );
        // Its word about the maker is taken into the index (a new entry), but every
        // device still lists the maker as admitted by nobody: `cue sync devices` shows
        // the entry that ranks a device, and none ranks the maker ...
        let before = w.peers[0].engine.counters().bad_documents;
        member_entries_from(
            &mut w,
            removed,
            0,
            50,
            &[(format!("admitted:{maker}"), format!("{d}:9999999999999"))],
        );
        assert_eq!(w.peers[0].engine.counters().bad_documents, before);
        let listed = w.peers[0].engine.devices();
        let said = listed.iter().find(|x| x.device == maker).unwrap();
        assert_eq!(
            (said.admitted_by, said.joined_ms),
            (None, None),
            "seed {seed}"
        );
        // ... but not over the maker's entry, nor over its remover's admitted-by entry:
        // entries that stand are never written over.
        let proof = hex::encode(cue_sim::rotation::maker_proof(d));
        for (epoch, put) in [
            (51, (cue_core::MAKER_KEY.to_string(), proof)),
            (52, (format!("admitted:{remover}"), format!("{d}:0"))),
        ] {
            let before = w.peers[0].engine.counters().bad_documents;
            member_entries_from(&mut w, removed, 0, epoch, &[put]);
            assert!(
                w.peers[0].engine.counters().bad_documents > before,
                "seed {seed}: epoch {epoch}"
            );
        }
        settle(&mut w);
        w.rotate(0, &[]);
        settle(&mut w);
        w.disconnect(away);
        w.rotate(first, &[removed]);
        settle(&mut w);
        assert!(
            w.peers[removed].engine.removed_here().is_some(),
            "seed {seed}"
        );
        let main = w.peers[0].held;
        let forged = own_branch(d, 5, &[remover, maker]);
        w.input(removed, Input::Rotations { records: forged });
        w.connect(away);
        w.settle(10);
        settle(&mut w);
        let stay: Vec<usize> = (0..5).filter(|&i| i != removed).collect();
        assert_one_generation(&w, &stay);
        for i in stay {
            let e = &w.peers[i].engine;
            assert_eq!(e.generation(), main, "seed {seed}: peer {i}");
            assert!(e.removed().contains_key(&d), "seed {seed}: peer {i}");
            assert!(!e.removed().contains_key(&remover), "seed {seed}: peer {i}");
        }
    }
}

/// Two members remove each other while apart, and the workspace moves on without the
/// senior (admitted first) for a rotation more. When it comes back, its removal stands
/// (a junior cannot undo a senior's removal of it, or a removed device could always do
/// so), the branch of the junior's removal is void, and every other device moves back
/// to the senior's generation, an older one than the secret it held: nothing is
/// stuck, the edits made meanwhile are kept, and the junior learns it was removed.
#[test]
fn of_two_members_removing_each_other_apart_the_senior_stays_even_when_the_other_branch_grew() {
    for seed in 0..4 {
        let mut w = admitted_in_order(4, 800 + seed);
        let (senior, junior) = (1, 2);
        w.disconnect(senior);
        w.rotate(senior, &[junior]);
        w.write(senior, "senior.md", b"written while apart\n");
        w.rotate(junior, &[senior]);
        settle(&mut w);
        w.rotate(3, &[]);
        w.write(3, "n3.md", b"note 3\nafter the second rotation\n");
        settle(&mut w);
        assert_eq!(w.peers[0].held.number, 2, "seed {seed}");
        w.connect(senior);
        settle(&mut w);
        let gone = w.peers[junior].device;
        assert_one_generation(&w, &[0, senior, 3]);
        assert_eq!(
            w.peers[0].held.number, 1,
            "seed {seed}: moved back to the senior's"
        );
        for i in [0, senior, 3] {
            assert!(
                w.peers[i].engine.removed().contains_key(&gone),
                "seed {seed}: p{i}"
            );
            assert!(
                !w.peers[i]
                    .engine
                    .removed()
                    .contains_key(&w.peers[senior].device),
                "seed {seed}: p{i}"
            );
        }
        assert!(
            w.peers[junior].engine.removed_here().is_some(),
            "seed {seed}"
        );
        w.write(0, "after.md", b"after\n");
        settle(&mut w);
        for i in [0, senior, 3] {
            assert_eq!(
                w.read(i, "after.md").as_deref(),
                Some("after\n"),
                "seed {seed}: p{i}"
            );
            assert_eq!(
                w.read(i, "senior.md").as_deref(),
                Some("written while apart\n"),
                "seed {seed}: p{i}"
            );
            assert_eq!(
                w.read(i, "n3.md").as_deref(),
                Some("note 3\nafter the second rotation\n"),
                "seed {seed}: p{i}"
            );
        }
        assert_eq!(w.read(junior, "after.md"), None, "seed {seed}");
    }
}

/// Three members remove each other in a ring, at once (each before hearing of the
/// others): whatever stands, every device agrees on it, the devices that stay share one
/// secret and each other's edits, and no rotation is redone without end.
#[test]
fn three_members_removing_each_other_in_a_ring_end_on_one_secret() {
    for seed in 0..8 {
        let mut w = admitted_in_order(5, 900 + seed);
        // (Times that differ by seed: the records' hashes, and so which one wins.)
        w.advance(seed as i64 * 7);
        w.rotate(1, &[2]);
        w.rotate(2, &[3]);
        w.advance(1);
        w.rotate(3, &[1]);
        settle(&mut w);
        settle(&mut w);
        let removed = w.peers[0].engine.removed().clone();
        let stay: Vec<usize> = (0..5)
            .filter(|&i| !removed.contains_key(&w.peers[i].device))
            .collect();
        assert!(
            stay.contains(&0) && stay.contains(&4),
            "seed {seed}: {removed:?}"
        );
        assert!(stay.len() >= 3, "seed {seed}: one of the ring stays");
        assert_one_generation(&w, &stay);
        for &i in &stay {
            let theirs: Vec<_> = w.peers[i].engine.removed().keys().copied().collect();
            let ours: Vec<_> = removed.keys().copied().collect();
            assert_eq!(theirs, ours, "seed {seed}: p{i}");
        }
        assert!(
            w.peers[0].held.number <= 4,
            "seed {seed}: rotations redone: {:?}",
            w.peers[0].held
        );
        // Every device that stays can still rotate.
        for &i in &stay {
            let before = w.peers[0].held.number;
            w.rotate(i, &[]);
            settle(&mut w);
            assert_one_generation(&w, &stay);
            assert_eq!(
                w.peers[0].held.number,
                before + 1,
                "seed {seed}: p{i}'s rotation"
            );
        }
        w.write(4, "after.md", b"after\n");
        settle(&mut w);
        for i in 0..5 {
            let want = stay.contains(&i).then_some("after\n");
            assert_eq!(w.read(i, "after.md").as_deref(), want, "seed {seed}: p{i}");
        }
    }
}

/// The same ring, its three records given at once to devices that hear nothing else,
/// under many times (so each record wins in turn): a device removed by a removal that
/// stands for good but not by the winning branch (it may hold the current secret) is
/// removed again by a device that stays, so that no device is left a member whose
/// records are void everywhere, nor one removed for good that holds what comes next.
#[test]
fn a_ring_of_removals_never_leaves_a_member_whose_rotations_are_void() {
    let check = cue_sim::rotation::check();
    let mut winners = std::collections::BTreeSet::new();
    for t in 0..40i64 {
        let mut w = admitted_in_order(5, 950);
        w.rotate(0, &[]);
        settle(&mut w);
        let parent = w.peers[0].held;
        for i in 0..5 {
            w.disconnect(i);
        }
        let ids: Vec<cue_core::DeviceId> = (0..5).map(|i| w.peers[i].device).collect();
        let ring = vec![
            record(2, parent.winner, ids[1], t, &[ids[2]]),
            record(2, parent.winner, ids[2], t, &[ids[3]]),
            record(2, parent.winner, ids[3], t, &[ids[1]]),
        ];
        records_to_everyone(&mut w, &ring);
        let e = &w.peers[0].engine;
        winners.insert(e.generation().winner);
        let on_branch: std::collections::BTreeSet<cue_core::DeviceId> = e
            .records_after(0)
            .iter()
            .filter_map(|b| check(b))
            .flat_map(|m| m.removed)
            .collect();
        // (All three when the senior's removal voids the middle one's record: what
        // that record removed stays removed, `a_removal_made_while_its_author_was_...`.)
        assert!(
            (1..=3).contains(&e.removed().len()),
            "t {t}: {:?}",
            e.removed()
        );
        for d in e.removed().keys().filter(|d| !on_branch.contains(*d)) {
            let redone = (0..5)
                .filter(|&p| !e.removed().contains_key(&ids[p]))
                .any(|p| w.peers[p].engine.removals_to_redo().contains(d));
            assert!(
                redone,
                "t {t}: {d:?} removed off the branch, nobody removes it again"
            );
        }
        for (d, id) in ids.iter().enumerate().take(4).skip(1) {
            if !e.removed().contains_key(id) {
                assert!(
                    e.takes_records_from(id),
                    "t {t}: p{d} stays, its records void"
                );
            }
        }
    }
    assert!(winners.len() >= 2, "the times gave one winner only");
}

/// A senior removes a device; then a junior member puts out that senior with a longer
/// branch of its own from before that removal (it can: the senior is not there to undo
/// it). The senior is removed, and its removal of the other device still stands: the
/// device it removed, signing its own longer branch removing everyone in its way, gets
/// nothing back. (A removal for good that stopped counting once its author was removed
/// let it back in.)
#[test]
fn a_removal_for_good_stands_after_its_author_is_removed() {
    for seed in 0..4 {
        let mut w = admitted_in_order(5, 1000 + seed);
        let (senior, junior, target) = (1, 3, 4);
        let (s, j, t) = (
            w.peers[senior].device,
            w.peers[junior].device,
            w.peers[target].device,
        );
        w.rotate(senior, &[target]);
        settle(&mut w);
        assert!(w.peers[0].engine.removed().contains_key(&t), "seed {seed}");
        w.disconnect(senior);
        // The junior's branch from generation 0, removing the senior, with its secrets.
        let branch = own_branch(j, 3, &[s]);
        for (n, b) in branch.iter().enumerate() {
            w.peers[junior].secrets.insert(cue_core::Generation {
                number: n as u32 + 1,
                winner: *blake3::hash(b).as_bytes(),
            });
        }
        w.input(junior, Input::Rotations { records: branch });
        settle(&mut w);
        let stay = [0, 2, junior];
        assert_one_generation(&w, &stay);
        // The junior's branch won, and the junior removed the target again on it (the
        // removal stands, but the generation the junior made had been handed to it).
        assert_eq!(
            w.peers[0].held.number, 4,
            "seed {seed}: the junior's branch won"
        );
        let main = w.peers[0].held;
        for i in stay {
            let e = &w.peers[i].engine;
            assert!(e.removed().contains_key(&s), "seed {seed}: p{i}");
            assert!(
                e.removed().contains_key(&t),
                "seed {seed}: p{i}: the target is back"
            );
        }
        let forged = own_branch(t, 6, &[j, w.peers[0].device]);
        w.input(
            target,
            Input::Rotations {
                records: forged.clone(),
            },
        );
        w.input(2, Input::Rotations { records: forged });
        settle(&mut w);
        assert_one_generation(&w, &stay);
        for i in stay {
            let e = &w.peers[i].engine;
            assert_eq!(e.generation(), main, "seed {seed}: p{i}");
            assert!(e.removed().contains_key(&t), "seed {seed}: p{i}");
            assert!(!e.removed().contains_key(&j), "seed {seed}: p{i}");
        }
        a_note_reaches(&mut w, 2, &[junior], &[target], seed);
    }
}

/// A senior, away, removes a junior; meanwhile the junior rotated and another member
/// removed a third device on top of the junior's record. When the senior comes back the
/// junior's branch is void, but the third device's removal had taken effect: it stays
/// removed at once (never handed the secret of the senior's generation), and is removed
/// again on the branch.
#[test]
fn a_removal_built_on_a_voided_record_still_holds() {
    for seed in 0..4 {
        let mut w = admitted_in_order(5, 1100 + seed);
        let (senior, other, junior, third) = (1, 2, 3, 4);
        w.disconnect(senior);
        w.rotate(senior, &[junior]);
        let senior_gen = w.peers[senior].held;
        w.rotate(junior, &[]);
        settle(&mut w);
        w.rotate(other, &[third]);
        settle(&mut w);
        w.connect(senior);
        settle(&mut w);
        let stay = [0, senior, other];
        assert_one_generation(&w, &stay);
        let (j, t) = (w.peers[junior].device, w.peers[third].device);
        for i in stay {
            let e = &w.peers[i].engine;
            assert!(e.removed().contains_key(&j), "seed {seed}: p{i}");
            assert!(e.removed().contains_key(&t), "seed {seed}: p{i}");
        }
        assert!(
            !w.peers[third].secrets.contains(&senior_gen),
            "seed {seed}: the removed device was handed the senior's secret"
        );
        a_note_reaches(&mut w, 0, &[other], &[third, junior], seed);
    }
}

/// A thief with a removed device's key hands a device that was away its own branch and
/// that branch's secrets, so the device follows it; then the device learns of the
/// removal (a senior's, which voids that branch). The members never saw the branch, so
/// at first nothing tells them the device is on a generation passed over: the device
/// hands them its records, and they hand it the current secret.
#[test]
fn a_device_that_followed_a_voided_branch_comes_back() {
    for seed in 0..4 {
        let mut w = admitted_in_order(4, 1200 + seed);
        let (senior, away, removed) = (1, 2, 3);
        w.disconnect(away);
        w.rotate(senior, &[removed]);
        settle(&mut w);
        let main = w.peers[0].held;
        let removal = w.peers[0].engine.records_after(0);
        let d = w.peers[removed].device;
        let forged = own_branch(d, 3, &[w.peers[senior].device]);
        for (n, b) in forged.iter().enumerate() {
            w.peers[away].secrets.insert(cue_core::Generation {
                number: n as u32 + 1,
                winner: *blake3::hash(b).as_bytes(),
            });
        }
        w.input(away, Input::Rotations { records: forged });
        assert_eq!(
            w.peers[away].held.number, 3,
            "seed {seed}: it followed the branch"
        );
        w.input(away, Input::Rotations { records: removal });
        assert!(
            w.peers[away].engine.passed_over(w.peers[away].held),
            "seed {seed}"
        );
        w.connect(away);
        settle(&mut w);
        assert_one_generation(&w, &[0, senior, away]);
        assert_eq!(w.peers[away].held, main, "seed {seed}");
        w.write(away, "back.md", b"back\n");
        settle(&mut w);
        assert_eq!(
            w.read(0, "back.md").as_deref(),
            Some("back\n"),
            "seed {seed}"
        );
    }
}

/// A hostile member writes 1,100 made-up device ids into the member list and signs two
/// records of a generation already taken removing them; a junior then removes it. The
/// made-up devices never were members: nobody rotates again to remove them (before,
/// the junior was asked to, in one record of more than a record may hold that every
/// member refused, and went round making it again until its daemon crashed).
#[test]
fn removals_of_devices_that_never_were_members_cost_nobody_a_rotation() {
    for seed in 0..2 {
        let mut w = admitted_in_order(4, 1300 + seed);
        let (hostile, junior) = (2, 3);
        w.rotate(0, &[]);
        settle(&mut w);
        let mut fakes: Vec<cue_core::DeviceId> = (0..1_100u32)
            .map(|i| {
                let mut id = [0xee; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                cue_core::DeviceId(id)
            })
            .collect();
        fakes.sort();
        let puts: Vec<(String, String)> = fakes
            .iter()
            .map(|d| (d.to_string(), "made up".to_string()))
            .collect();
        member_entries_from(&mut w, hostile, 0, 60, &puts);
        let h = w.peers[hostile].device;
        let forks = vec![
            record(1, [0; 32], h, 7, &fakes[..550]),
            record(1, [0; 32], h, 8, &fakes[550..]),
        ];
        records_to_everyone(&mut w, &forks);
        settle(&mut w);
        w.rotate(junior, &[hostile]);
        settle(&mut w);
        let stay = [0, 1, junior];
        assert_one_generation(&w, &stay);
        for i in stay {
            let e = &w.peers[i].engine;
            assert!(e.removed().contains_key(&h), "seed {seed}: p{i}");
            assert!(
                e.removals_to_redo().is_empty(),
                "seed {seed}: p{i} has {} removals to redo",
                e.removals_to_redo().len()
            );
        }
        a_note_reaches(&mut w, junior, &[0], &[hostile], seed);
    }
}

/// While the workspace's maker is away, a member removes a third device; the maker,
/// senior to that member, removes the member at the same time. The member's removal is
/// void with all its records, but what it removed stays removed (it may be a stolen
/// device): the maker removes it again, and it never gets the maker's secret.
#[test]
fn a_removal_made_while_its_author_was_removed_for_good_still_holds() {
    for seed in 0..4 {
        let mut w = admitted_in_order(4, 1400 + seed);
        let (maker, member, third) = (0, 2, 3);
        w.disconnect(maker);
        w.rotate(member, &[third]);
        settle(&mut w);
        w.rotate(maker, &[member]);
        w.connect(maker);
        settle(&mut w);
        let stay = [maker, 1];
        assert_one_generation(&w, &stay);
        let (m, t) = (w.peers[member].device, w.peers[third].device);
        for i in stay {
            let e = &w.peers[i].engine;
            assert!(e.removed().contains_key(&m), "seed {seed}: p{i}");
            assert!(
                e.removed().contains_key(&t),
                "seed {seed}: p{i}: the third device is back"
            );
            assert!(e.removals_to_redo().is_empty(), "seed {seed}: p{i}");
        }
        assert!(
            w.peers[third].engine.removed_here().is_some(),
            "seed {seed}: the third device learns it was removed"
        );
        assert!(
            !w.peers[third].secrets.contains(&w.peers[maker].held),
            "seed {seed}: the removed device was handed the maker's secret"
        );
        a_note_reaches(&mut w, 1, &[maker], &[third], seed);
    }
}

/// A hostile member signs a rotation and keeps its secret to itself: every member's
/// index says the workspace is at that generation, and nobody else holds it. A member
/// still removes the hostile one, on top of that generation (before, a member had to
/// hold the current secret to rotate, and nobody could remove it ever).
#[test]
fn a_member_keeping_its_rotation_secret_to_itself_can_still_be_removed() {
    for seed in 0..4 {
        let mut w = admitted_in_order(4, 1500 + seed);
        let hostile = 2;
        let h = w.peers[hostile].device;
        let kept = record(1, [0; 32], h, 9, &[]);
        records_to_everyone(&mut w, std::slice::from_ref(&kept));
        settle(&mut w);
        assert_eq!(w.peers[0].engine.generation().number, 1, "seed {seed}");
        assert_eq!(w.peers[0].held.number, 0, "seed {seed}: nobody holds it");
        w.rotate(1, &[hostile]);
        settle(&mut w);
        let stay = [0, 1, 3];
        assert_one_generation(&w, &stay);
        assert_eq!(w.peers[0].held.number, 2, "seed {seed}");
        for i in stay {
            assert!(
                w.peers[i].engine.removed().contains_key(&h),
                "seed {seed}: p{i}"
            );
        }
        a_note_reaches(&mut w, 3, &[0], &[hostile], seed);
    }
}
