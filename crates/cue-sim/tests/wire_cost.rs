//! What a first sync puts on the wire, by item kind.

use std::collections::BTreeMap;

use cue_core::Config;
use cue_core::wire::decode;
use cue_sim::World;

fn first_sync(files: usize) -> BTreeMap<(usize, &'static str), (u64, u64)> {
    let mut w = World::new(2, 11, Config::default());
    let notes: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| {
            let body: String = (0..60)
                .map(|j| format!("word{} ", (i * 7 + j) % 97))
                .collect();
            (
                format!("notes/n{i:05}.md"),
                format!("# {i}\n{body}\n").into_bytes(),
            )
        })
        .collect();
    w.write_many(0, &notes);
    w.settle(10);
    w.traffic = Some(Vec::new());
    w.connect_all();
    // Adopted documents are checked a few a tick: settle until that is done too.
    let mut rounds = 0;
    while let Err(e) = w.converged() {
        rounds += 1;
        assert!(rounds < 500, "not converged: {e}");
        w.settle(1);
    }
    let mut by = BTreeMap::new();
    for (from, _, bytes) in w.traffic.take().unwrap_or_default() {
        let msg = match decode(&bytes) {
            Ok(msg) => msg,
            Err(e) => panic!("a message that does not decode: {e}"),
        };
        for item in &msg.items {
            let e = by.entry((from, item.kind())).or_insert((0, 0));
            e.0 += 1;
            e.1 += cue_core::wire::encode_item(item).len() as u64;
        }
    }
    by
}

/// Each file's document goes to the new peer once, whole with its content, and the index
/// once: nothing is sent twice. (`--nocapture` prints the bytes by item kind.)
#[test]
fn a_first_sync_sends_each_document_once() {
    let files = 300;
    let by = first_sync(files);
    for ((from, k), (count, bytes)) in &by {
        println!("{files} files: from peer {from}: {k:<10} {count:>6} items {bytes:>10} bytes");
    }
    let count = |from: usize, k: &'static str| by.get(&(from, k)).map_or(0, |c| c.0);
    assert_eq!(count(0, "adopt"), files as u64);
    // The index once, whole: the new peer's own first change (entering itself in the
    // member list) is unknown to the source, and all the index's changes one by one
    // would be three times the size.
    assert_eq!(count(0, "whole"), 1, "the index, once");
    assert_eq!(count(0, "changes"), 0);
    assert_eq!(count(0, "chunk"), 0);
    // The new peer sends back no document but its own small index.
    assert_eq!(count(1, "adopt"), 0);
    assert!(count(1, "whole") + count(1, "changes") <= 1);
}
