//! Engine-only cost of importing N files and of a first sync to a new peer, without any
//! IO: `cargo run --release -p cue-sim --example first_sync -- 1000`.

use std::time::Instant;

use cue_core::Config;
use cue_sim::World;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let config = Config {
        max_message_bytes: 60 * 1024,
        ..Config::default()
    };
    let mut w = World::new(2, 1, config);
    // As the daemon sets them: the machine's cores, at most 4.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    w.set_threads(0, threads);
    w.set_threads(1, threads);
    let body: String = "Some text of a note, long enough to be realistic.\n".repeat(80);
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let text = format!("---\ntitle: Note {i}\ntags: [a, b]\n---\n{body}");
            (format!("notes/n{i:05}.md"), text.into_bytes())
        })
        .collect();
    let t = Instant::now();
    // As `cue sync init`'s scan feeds them: 64 files a batch.
    for chunk in files.chunks(64) {
        w.write_many(0, chunk);
    }
    println!("import of {n} files: {:.2} s", t.elapsed().as_secs_f64());
    if std::env::var_os("IMPORT_ONLY").is_some() {
        return;
    }
    let t = Instant::now();
    w.connect_all();
    // Everything delivered: every file is on the new peer's disk.
    while w.step() {}
    let took = t.elapsed().as_secs_f64();
    let on_disk = w.peers[1].disk.len();
    println!(
        "first sync to a new peer: {took:.2} s, {on_disk} files on its disk, {} messages",
        w.messages_delivered
    );
    // Then the documents adopted with their content are checked, a few each tick.
    let t = Instant::now();
    let mut ticks = 0;
    while w.peers[1].engine.unverified() > 0 && ticks < 100_000 {
        w.advance(250);
        ticks += 1;
    }
    w.settle(5);
    println!(
        "adopted documents verified: {:.2} s of work over {ticks} ticks; converged: {}",
        t.elapsed().as_secs_f64(),
        w.converged().is_ok()
    );
    // Then 1,000 more notes copied into the source, 64 a batch as the watcher's events are
    // fed: whether a burst costs more in a bigger workspace.
    let more: Vec<(String, Vec<u8>)> = (n..n + 1000)
        .map(|i| {
            let text = format!("---\ntitle: Note {i}\ntags: [a, b]\n---\n{body}");
            (format!("notes/n{i:05}.md"), text.into_bytes())
        })
        .collect();
    let t = Instant::now();
    for chunk in more.chunks(64) {
        w.write_many(0, chunk);
    }
    let source = t.elapsed().as_secs_f64();
    w.settle(5);
    println!(
        "1,000 more notes: source {source:.2} s, on the other peer and settled {:.2} s",
        t.elapsed().as_secs_f64()
    );
}
