//! A burst of new files: documents made ahead on other threads (`Engine::set_threads`)
//! are the documents one thread makes, so every effect is the same.

use cue_core::{Config, Effect, Engine, Input, Restored};
use cue_sim::{MemStore, World};

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
