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
    let body: String = "Some text of a note, long enough to be realistic.\n".repeat(80);
    let t = Instant::now();
    for i in 0..n {
        let text = format!("---\ntitle: Note {i}\ntags: [a, b]\n---\n{body}");
        w.write(0, &format!("notes/n{i:05}.md"), text.as_bytes());
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
}
