//! Bursts: documents made ahead on other threads (`Engine::set_threads`) are the
//! documents one thread makes, so every effect is the same; documents adopted in a first
//! sync and checked on other threads end as one thread's check leaves them, a lie among
//! them caught; and thousands of files
//! created, renamed and deleted in one watcher batch (`World::burst`) against another
//! peer's concurrent edits lose nothing.

use std::collections::BTreeMap;

use cue_core::{Config, Effect, Engine, Input, Restored};
use cue_sim::{DiskOp, Faults, MemStore, World};

fn engine(threads: usize) -> Engine {
    let (mut e, _) = Engine::new(
        cue_core::seal::SealKey::from_seed(&[3; 32]),
        "p",
        1,
        Config {
            max_file_size: 10_000,
            ..Config::default()
        },
        Restored::default(),
        1_700_000_000_000,
    );
    e.set_threads(threads);
    e
}

fn changed(path: &str, content: &[u8], exec: bool) -> Input {
    Input::FileChanged {
        path: path.to_string(),
        content: content.to_vec(),
        exec,
    }
}

/// A batch as a `cp -r` gives it, with the cases `local_change` treats apart: Markdown
/// with frontmatter, a binary, an executable, a path twice (the second an edit), one
/// too large, one invalid, and a path that already has a file.
fn batches() -> Vec<Vec<Input>> {
    let mut first: Vec<Input> = (0..40)
        .map(|i| {
            let body = format!("---\ntitle: note {i}\ntags: [a, b]\n---\n# Note {i}\n\n")
                + &"some text for a note\n".repeat(i % 7 + 1);
            changed(
                &format!("notes/{:02}/n{i}.md", i % 5),
                body.as_bytes(),
                false,
            )
        })
        .collect();
    first.push(changed("bin/blob", &[0, 159, 146, 150, 0, 1], false));
    first.push(changed("bin/run.sh", b"#!/bin/sh\necho hi\n", true));
    first.push(changed("twice.txt", b"first\n", false));
    first.push(changed("twice.txt", b"first\nsecond\n", false));
    first.push(changed("large.txt", &vec![b'x'; 20_000], false));
    first.push(changed(".cuedeck/nope", b"no\n", false));
    let mut second: Vec<Input> = (40..60)
        .map(|i| {
            changed(
                &format!("more/m{i}.txt"),
                format!("line {i}\n").as_bytes(),
                false,
            )
        })
        .collect();
    second.push(changed("notes/00/n0.md", b"# rewritten\n", false));
    vec![first, second]
}

fn run(threads: usize) -> (Vec<Vec<Effect>>, MemStore) {
    let mut e = engine(threads);
    let mut store = MemStore::default();
    let mut all = Vec::new();
    for (i, batch) in batches().into_iter().enumerate() {
        let effects = e.handle_batch(1_700_000_000_000 + 1000 * i as i64, batch, &mut store);
        all.push(effects);
    }
    (all, store)
}

#[test]
fn documents_made_on_several_threads_are_the_documents_one_thread_makes() {
    let (one, _) = run(1);
    for threads in [2, 3, 8] {
        let (many, _) = run(threads);
        assert_eq!(one, many, "{threads} threads");
    }
}

#[test]
fn a_burst_made_on_several_threads_reaches_the_other_peer_whole() {
    let mut w = World::new(2, 17, Config::default());
    w.set_threads(0, 2);
    w.connect_all();
    w.settle(50);
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            (
                format!("notes/{:02}/n{i}.md", i % 10),
                format!("# Note {i}\n\n{}", "text of the note\n".repeat(i % 13 + 1)).into_bytes(),
            )
        })
        .collect();
    w.write_many(0, &files);
    w.settle(500);
    w.converged().unwrap();
    for (path, bytes) in &files {
        assert_eq!(
            w.read(1, path).as_deref().map(str::as_bytes),
            Some(bytes.as_slice()),
            "{path}"
        );
    }
}

/// A first sync of 40 notes to a new peer that checks what it adopts on `threads`
/// threads, while a faulty member sends it a note whose content is not what the note's
/// document says. What the new peer ends with: its disk, documents found bad, forged
/// changes taken out.
fn first_sync_with_a_lie(threads: usize) -> (BTreeMap<String, Vec<u8>>, u64, u64) {
    use cue_core::wire::{Message, encode};
    let mut w = World::new(2, 23, Config::default());
    w.set_threads(1, threads);
    let notes: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("n{i}.md"),
                format!("# Note {i}\n\ntext\n").into_bytes(),
            )
        })
        .collect();
    w.write_many(0, &notes);
    // The lie, under one of the member's own actors (a live change under another's is
    // refused), with the index change that names its path.
    let file = cue_core::FileId([7; 16]);
    let items = cue_sim::new_file_items(
        &w,
        0,
        file,
        "lie.md",
        b"what the document says\n",
        b"a lie\n",
    );
    assert_eq!(items.len(), 2);
    // Every message delivered, no time passing: the notes are on the new peer, none
    // checked yet; then the lie comes, written as it came.
    w.connect_all();
    while w.step() {}
    let from = w.peers[0].device;
    let bytes = encode(&Message { items });
    w.input(1, Input::Message { from, bytes });
    assert_eq!(w.read(1, "lie.md").as_deref(), Some("a lie\n"));
    assert_eq!(w.peers[1].engine.unverified(), 41);
    w.settle_converged();
    assert_eq!(w.peers[1].engine.unverified(), 0);
    let c = w.peers[1].engine.counters();
    (w.peers[1].disk.clone(), c.bad_documents, c.forged_changes)
}

#[test]
fn adopted_documents_checked_on_several_threads_end_as_on_one() {
    let one = first_sync_with_a_lie(1);
    assert_eq!(one.0.len(), 41);
    assert_eq!(one.0["lie.md"], b"what the document says\n");
    assert_eq!(one.0["n7.md"], b"# Note 7\n\ntext\n");
    assert_eq!((one.1, one.2), (1, 0));
    for threads in [2, 3] {
        assert_eq!(first_sync_with_a_lie(threads), one, "{threads} threads");
    }
}

// ------------------------------------------------------------ bursts against edits

fn base(i: usize) -> String {
    format!("# base {i}\n\nbody of note {i}\n")
}

fn base_path(i: usize) -> String {
    format!("base/n{i}.md")
}

/// Another peer's edit of a base note: a line on top.
fn edited(i: usize) -> String {
    format!("p1 was here {i}\n{}", base(i))
}

/// How the burst rewrites a base note: a line at the end.
fn rewritten(i: usize) -> String {
    format!("{}p0 rewrote {i}\n", base(i))
}

fn new_note(i: usize) -> Vec<u8> {
    format!("# new {i}\n\n{}", "line of a new note\n".repeat(i % 5 + 1)).into_bytes()
}

/// The same path, created on the other peer while the burst creates it.
const CLASH: &str = "new/f7.md";
const CLASH_THEIRS: &[u8] = b"p1 made this f7 too\n";

/// How the other peers learn of it.
#[derive(Clone, Copy, Debug)]
enum Net {
    /// Online, messages in order.
    Online,
    /// Online, the relay drops, duplicates and reorders until the end.
    Faulty,
    /// The editing peer is offline during the burst and its edits, and catches up after.
    Offline,
}

/// Three peers share 600 notes. In ONE watcher batch peer 0 creates 2,000 files, renames
/// 300 notes and 100 of its new files, deletes 200 notes and 100 of its new files, and
/// rewrites 40 notes, while peer 1 (before any of it arrives) edits notes the burst
/// renames, deletes, rewrites and leaves alone, and creates a path the burst creates.
/// After settling every peer holds the same bytes, and they are what the contract says:
/// the burst's files, each rename carrying peer 1's edit, each deleted note peer 1
/// edited kept with the edit (a delete concurrent with an edit keeps the edit), both
/// edits of a rewritten note merged, and both versions of the path created twice.
fn burst_against_edits(net: Net, seed: u64) {
    let mut w = World::new(3, seed, Config::default());
    w.set_threads(0, 2);
    w.connect_all();
    w.settle(5);
    let notes: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| (base_path(i), base(i).into_bytes()))
        .collect();
    w.write_many(2, &notes);
    // (A new peer checks adopted documents a few a tick.)
    w.settle(200);
    if let Err(e) = w.converged() {
        panic!("the first sync: {e}");
    }

    let mut expected: BTreeMap<String, Vec<u8>> = notes.iter().cloned().collect();
    let mut ops = Vec::new();
    for i in 0..2000 {
        ops.push(DiskOp::Write(format!("new/f{i}.md"), new_note(i)));
    }
    for i in 0..300 {
        ops.push(DiskOp::Rename(base_path(i), format!("moved/n{i}.md")));
    }
    for i in 300..500 {
        ops.push(DiskOp::Remove(base_path(i)));
    }
    for i in 500..540 {
        ops.push(DiskOp::Write(base_path(i), rewritten(i).into_bytes()));
    }
    for i in 10..110 {
        ops.push(DiskOp::Rename(
            format!("new/f{i}.md"),
            format!("fresh/f{i}.md"),
        ));
    }
    for i in 110..210 {
        ops.push(DiskOp::Remove(format!("new/f{i}.md")));
    }
    for op in &ops {
        match op {
            DiskOp::Write(p, b) => {
                expected.insert(p.clone(), b.clone());
            }
            DiskOp::Remove(p) => {
                expected.remove(p);
            }
            DiskOp::Rename(from, to) => {
                if let Some(b) = expected.remove(from) {
                    expected.insert(to.clone(), b);
                }
            }
        }
    }

    match net {
        Net::Online => {}
        Net::Faulty => {
            w.faults = Faults {
                drop: 0.05,
                duplicate: 0.05,
                reorder: true,
            };
        }
        Net::Offline => w.disconnect(1),
    }
    w.burst(0, &ops);
    // Peer 1 edits before anything of the burst reaches it.
    let mut edits = Vec::new();
    for i in (0..40).chain(300..340).chain(500..520).chain(560..580) {
        edits.push((base_path(i), edited(i).into_bytes()));
    }
    for (path, bytes) in &edits {
        w.write(1, path, bytes);
    }
    w.write(1, CLASH, CLASH_THEIRS);
    for i in 0..40 {
        expected.insert(format!("moved/n{i}.md"), edited(i).into_bytes());
    }
    for i in 300..340 {
        expected.insert(base_path(i), edited(i).into_bytes());
    }
    for i in 500..520 {
        expected.insert(
            base_path(i),
            format!("p1 was here {i}\n{}", rewritten(i)).into_bytes(),
        );
    }
    for i in 560..580 {
        expected.insert(base_path(i), edited(i).into_bytes());
    }

    w.faults = Faults::default();
    w.connect_all();
    w.settle(400);
    w.converged()
        .unwrap_or_else(|e| panic!("{net:?}: not converged: {e}"));
    for peer in 0..3 {
        let disk = &w.peers[peer].disk;
        let mut extra: Vec<&String> = disk.keys().filter(|p| !expected.contains_key(*p)).collect();
        // The path created twice: one version keeps it, the other is a conflict copy.
        let copy = extra
            .pop()
            .unwrap_or_else(|| panic!("{net:?}: peer {peer}: no conflict copy"));
        assert!(
            extra.is_empty(),
            "{net:?}: peer {peer}: files nobody made: {extra:?}"
        );
        let mut both = [disk[CLASH].clone(), disk[copy].clone()];
        both.sort();
        let mut made = [new_note(7), CLASH_THEIRS.to_vec()];
        made.sort();
        assert_eq!(both, made, "{net:?}: peer {peer}: {CLASH} and {copy}");
        for (path, bytes) in &expected {
            if path == CLASH {
                continue;
            }
            assert_eq!(
                disk.get(path)
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                Some(String::from_utf8_lossy(bytes).into_owned()),
                "{net:?}: peer {peer}: {path}"
            );
        }
        assert!(
            w.peers[peer].write_failures.is_empty() && w.peers[peer].guard.is_none(),
            "{net:?}: peer {peer}: {:?} {:?}",
            w.peers[peer].write_failures,
            w.peers[peer].guard
        );
    }
}

#[test]
fn a_burst_in_one_batch_against_concurrent_edits_loses_nothing() {
    burst_against_edits(Net::Online, 1);
}

#[test]
fn a_burst_in_one_batch_over_a_faulty_relay_loses_nothing() {
    burst_against_edits(Net::Faulty, 2);
}

#[test]
fn a_burst_in_one_batch_against_offline_edits_loses_nothing() {
    burst_against_edits(Net::Offline, 3);
}

/// A `git checkout` of another branch, as git does it: each file that differs is
/// unlinked and written again, files only on the old branch are unlinked, files only on
/// the new one written, all in one watcher batch, while peer 1 edits files the checkout
/// changes and removes. Peer 1's edits merge into the new branch's text, and the files
/// it edited that the checkout removed stay with its edit.
#[test]
fn a_checkout_in_one_batch_against_concurrent_edits_loses_nothing() {
    let mut w = World::new(2, 4, Config::default());
    w.connect_all();
    w.settle(5);
    let notes: Vec<(String, Vec<u8>)> = (0..1200)
        .map(|i| (base_path(i), base(i).into_bytes()))
        .collect();
    w.write_many(0, &notes);
    w.settle(200);
    w.converged().unwrap();
    let branch = |i: usize| format!("# base {i}\n\nbody of note {i} on the other branch\n");
    let mut expected: BTreeMap<String, Vec<u8>> = notes.iter().cloned().collect();
    let mut ops = Vec::new();
    for i in 0..1000 {
        ops.push(DiskOp::Remove(base_path(i)));
        ops.push(DiskOp::Write(base_path(i), branch(i).into_bytes()));
        expected.insert(base_path(i), branch(i).into_bytes());
    }
    for i in 1000..1100 {
        ops.push(DiskOp::Remove(base_path(i)));
        expected.remove(&base_path(i));
    }
    for i in 0..100 {
        ops.push(DiskOp::Write(format!("only-there/o{i}.md"), new_note(i)));
        expected.insert(format!("only-there/o{i}.md"), new_note(i));
    }
    w.burst(0, &ops);
    for i in (0..50).chain(1000..1020) {
        w.write(1, &base_path(i), edited(i).as_bytes());
    }
    for i in 0..50 {
        expected.insert(
            base_path(i),
            format!("p1 was here {i}\n{}", branch(i)).into_bytes(),
        );
    }
    for i in 1000..1020 {
        expected.insert(base_path(i), edited(i).into_bytes());
    }
    w.settle(200);
    w.converged().unwrap();
    for peer in 0..2 {
        let disk: BTreeMap<String, String> = w.peers[peer]
            .disk
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let want: BTreeMap<String, String> = expected
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        if disk != want {
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, v)| disk.get(*k) != Some(v))
                .take(5)
                .map(|(k, v)| (k, v, disk.get(k)))
                .collect();
            let extra: Vec<_> = disk
                .keys()
                .filter(|k| !want.contains_key(*k))
                .take(5)
                .collect();
            panic!("peer {peer}: wrong or missing (want, have): {wrong:?}; extra: {extra:?}");
        }
    }
}

// ------------------------------------------------ documents loaded ahead on threads

/// A `git checkout` on peer 0 rewrites 100 of 120 notes every peer has, in one watcher
/// batch, while peer 1 (before any of it arrives) edits 30 of them. Every peer runs
/// `threads` threads, which load the documents a batch edits and a message changes
/// ahead (`preload_docs`), with a cache of 8 documents, far smaller than the batch.
/// Returns every peer's disk once settled.
fn checkout_against_edits(threads: usize) -> Vec<BTreeMap<String, Vec<u8>>> {
    let mut w = World::new(
        3,
        31,
        Config {
            cache_docs: 8,
            ..Config::default()
        },
    );
    for peer in 0..3 {
        w.set_threads(peer, threads);
    }
    w.connect_all();
    w.settle(5);
    let notes: Vec<(String, Vec<u8>)> = (0..120)
        .map(|i| (base_path(i), base(i).into_bytes()))
        .collect();
    w.write_many(2, &notes);
    w.settle(200);
    if let Err(e) = w.converged() {
        panic!("{threads} threads: the first sync: {e}");
    }
    let ops: Vec<DiskOp> = (0..100)
        .map(|i| DiskOp::Write(base_path(i), rewritten(i).into_bytes()))
        .collect();
    w.burst(0, &ops);
    for i in 0..30 {
        w.write(1, &base_path(i), edited(i).as_bytes());
    }
    w.settle(400);
    if let Err(e) = w.converged() {
        panic!("{threads} threads: not converged: {e}");
    }
    // Both edits of a note kept, merged.
    for i in 0..120 {
        let want = match i {
            0..30 => format!("p1 was here {i}\n{}", rewritten(i)),
            30..100 => rewritten(i),
            _ => base(i),
        };
        assert_eq!(
            w.read(2, &base_path(i)).as_deref(),
            Some(want.as_str()),
            "{threads} threads"
        );
    }
    (0..3).map(|peer| w.peers[peer].disk.clone()).collect()
}

#[test]
fn documents_loaded_ahead_on_several_threads_end_as_on_one() {
    let one = checkout_against_edits(1);
    for threads in [2, 3] {
        assert!(
            checkout_against_edits(threads) == one,
            "{threads} threads end otherwise than one"
        );
    }
}

/// A pull is answered a chunk of documents at a time (`Config::answer_chunk_bytes`), the
/// rest at the next inputs and ticks: a first sync of many notes never has the whole
/// workspace to be sent made at once (every input the source handles makes at most a
/// chunk of it, plus one document), and still ends with every note on the new peer.
#[test]
fn a_first_sync_is_answered_a_chunk_at_a_time_and_completes() {
    let chunk = 32 * 1024;
    let config = Config {
        answer_chunk_bytes: chunk,
        ..Config::default()
    };
    let mut w = World::new(2, 21, config);
    let body = "A line of a note, long enough to weigh something.\n".repeat(80);
    let notes: Vec<(String, Vec<u8>)> = (0..120)
        .map(|i| {
            (
                format!("n/{i:03}.md"),
                format!("# {i}\n{body}").into_bytes(),
            )
        })
        .collect();
    w.write_many(0, &notes);
    w.connect(0);
    w.connect(1);
    let mut most = 0;
    let mut sent = 0;
    while let Some((from, len)) = w.next_in_flight() {
        let before = w.in_flight_bytes_from(0) - if from == 0 { len } else { 0 };
        w.step();
        let made = w.in_flight_bytes_from(0) - before;
        most = most.max(made);
        sent += made;
    }
    // A note's answer is its document and its content: about 10 KB here.
    assert!(sent > 4 * chunk, "{sent}");
    assert!(
        most <= chunk + 16 * 1024,
        "one input made {most} bytes to send"
    );
    w.settle(20);
    w.settle_converged();
    assert_eq!(w.peers[1].disk.len(), notes.len());
}

/// Adopted documents are checked once they stop coming (their loads would take a core
/// from the rest of the burst), but a member that sends documents without a pause cannot
/// keep a lie among them on the others' disks: after 30 s the checks go on regardless,
/// and the lie is found and put right while the stream still flows.
#[test]
fn a_lie_in_a_stream_of_documents_without_a_pause_is_put_right_within_half_a_minute() {
    use cue_core::wire::{Item, Message, encode};
    let mut w = World::new(2, 31, Config::default());
    w.write_many(0, &cue_sim::notes(1));
    w.connect_all();
    w.settle_converged();
    let items = cue_sim::new_file_items(
        &w,
        0,
        cue_core::FileId([7; 16]),
        "lie.md",
        b"what the document says\n",
        b"a lie\n",
    );
    let from = w.peers[0].device;
    w.input(
        1,
        Input::Message {
            from,
            bytes: encode(&Message { items }),
        },
    );
    assert_eq!(w.read(1, "lie.md").as_deref(), Some("a lie\n"));
    // Then a document every 100 ms, for at most 60 s.
    let actor = cue_core::actor_for(&w.peers[0].device, 99);
    let mut put_right_after_ms = None;
    for i in 0..600u32 {
        let mut doc = cue_core::FileDoc::new(actor.clone());
        let content = format!("streamed {i}\n");
        doc.write("s.md", content.as_bytes(), 0).unwrap();
        let mut id = [0xEE; 16];
        id[12..].copy_from_slice(&i.to_be_bytes());
        let item = Item::Adopt {
            doc: cue_core::DocId::File(cue_core::FileId(id)),
            heads: doc.heads().iter().map(|h| h.0).collect(),
            bytes: doc.save(),
            content: content.into_bytes(),
        };
        let items = vec![cue_sim::seal_as(&w.peers[0].key, 99, item)];
        w.input(
            1,
            Input::Message {
                from,
                bytes: encode(&Message { items }),
            },
        );
        w.advance(100);
        if w.read(1, "lie.md").as_deref() == Some("what the document says\n") {
            put_right_after_ms = Some(i64::from(i + 1) * 100);
            break;
        }
    }
    let after = put_right_after_ms.expect("the lie was still on disk after 60 s of the stream");
    assert!(
        after <= 31_000,
        "the lie was put right only after {after} ms"
    );
    assert_eq!(w.peers[1].engine.counters().bad_documents, 1);
}
