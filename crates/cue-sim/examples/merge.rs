//! Shows the engine merging two peers' offline edits, with no network and no disk:
//! `cargo run --release -p cue-sim --example merge`.

use cue_core::Config;
use cue_sim::World;

fn show(w: &World, peer: usize, path: &str) {
    println!(
        "--- {path} on {} ---\n{}",
        w.peers[peer].name,
        w.read(peer, path).unwrap_or_default()
    );
}

fn main() {
    let mut w = World::new(2, 1, Config::default());
    w.connect_all();
    w.write(
        0,
        "plan.md",
        b"---\ntitle: Plan\ntags: [work]\nstatus: draft\n---\n# Plan\n\nShip the engine.\n",
    );
    w.settle(5);
    show(&w, 1, "plan.md");

    println!("p0 and p1 go offline and both edit plan.md ...\n");
    w.disconnect(0);
    w.disconnect(1);
    w.write(0, "plan.md", b"---\ntitle: Plan\ntags: [work, q4]\nstatus: review\n---\n# Plan\n\nShip the engine.\nThen the daemon.\n");
    w.write(1, "plan.md", b"---\ntitle: The plan\ntags: [work, team]\nstatus: draft\n---\n# Plan\n\nFirst: ship the engine.\n");
    w.write(1, "notes.md", b"created offline on p1\n");

    println!("... and meet again.\n");
    w.connect_all();
    w.settle(10);
    show(&w, 0, "plan.md");
    show(&w, 0, "notes.md");
    match w.converged() {
        Ok(()) => println!(
            "both peers hold the same bytes ({} messages exchanged)",
            w.messages_delivered
        ),
        Err(e) => println!("NOT converged: {e}"),
    }
}
