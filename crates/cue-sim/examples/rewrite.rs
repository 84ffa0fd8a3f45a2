//! What a `git checkout` that changes every line of many notes costs the engines, with
//! no disk and no network: two peers hold N notes of 60 lines (one batch of new files,
//! synced), then one batch rewrites a word on every line of every note on the first, and
//! the second takes the changes in. Prints the source's time for the batch and the time
//! until both have settled, each per note (docs/benchmarks.md, "Session 11").
//!
//! `cargo run --release -p cue-sim --example rewrite -- [N]` (default 200)

use std::time::Instant;

use cue_sim::World;

/// A note of 60 lines, each of which names `version`.
fn note(i: usize, version: usize) -> Vec<u8> {
    let mut s = format!("---\ntitle: Note {i}\n---\n# Note {i}\n\n");
    for l in 0..60 {
        s.push_str(&format!(
            "line {l} of note {i}, version {version}: some words that fill the line up\n"
        ));
    }
    s.into_bytes()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let mut w = World::online(2, 3);
    let notes = |version| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("n{i}.md"), note(i, version)))
            .collect()
    };
    w.write_many(0, &notes(1));
    w.settle(10);
    let two = notes(2);
    let t = Instant::now();
    w.write_many(0, &two);
    let source = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    w.settle(10);
    let settle = t.elapsed().as_secs_f64() * 1e3;
    let arrived = two
        .iter()
        .all(|(path, bytes)| w.read(1, path).as_deref().map(str::as_bytes) == Some(&bytes[..]));
    println!(
        "{n} notes rewritten line by line: source {source:.0} ms ({:.2} ms a note), \
         then settled in {settle:.0} ms ({:.2} ms a note); all on the other peer: {arrived}",
        source / n as f64,
        settle / n as f64
    );
}
