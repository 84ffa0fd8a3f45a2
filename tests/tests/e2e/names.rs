//! Names that look the same (docs/reference.md §2.4): `café.md` typed on one machine in
//! Unicode NFC and on another in NFD, `README.md` beside `Readme.md`. The workspace never
//! holds two files whose names are equal after NFC normalisation and case folding: the
//! second becomes a conflict copy, on every peer, and nothing is lost. (So a folder that
//! ignores case, as a Mac's does, never has one overwrite the other.)

use cue_e2e::{pair, tree, wait_converged, wait_until};
use unicode_normalization::UnicodeNormalization;

const NFC: &str = "caf\u{e9}.md";
const NFD: &str = "cafe\u{301}.md";

/// What a case-insensitive, normalisation-insensitive folder takes a name for.
fn key(name: &str) -> String {
    name.to_lowercase().nfc().collect()
}

#[test]
fn names_that_look_the_same_are_never_two_files() {
    let (_relay, a, b) = pair();
    a.stop();
    b.stop();
    // Made apart: the same name in two Unicode forms, and in two letter cases.
    a.write(NFC, "alice's café\n");
    b.write(NFD, "bob's café\n");
    a.write("Readme.md", "alice's readme\n");
    b.write("README.md", "bob's readme\n");
    a.start();
    b.start();
    wait_converged(&[&a, &b]);
    // Made here, both forms on one disk that keeps them apart (Linux).
    a.write("notes/r\u{e9}sum\u{e9}.md", "first form\n");
    a.write("notes/re\u{301}sume\u{301}.md", "second form\n");
    wait_until("the two résumés on bob's side", || {
        tree(b.root())
            .keys()
            .filter(|n| n.starts_with("notes/"))
            .count()
            == 2
    });
    wait_converged(&[&a, &b]);

    let files = tree(a.root());
    let names: Vec<&String> = files.keys().collect();
    let mut keys: Vec<String> = names.iter().map(|n| key(n)).collect();
    keys.dedup();
    assert_eq!(
        keys.len(),
        names.len(),
        "two names that look the same: {names:?}"
    );
    for content in [
        "alice's café\n",
        "bob's café\n",
        "alice's readme\n",
        "bob's readme\n",
        "first form\n",
        "second form\n",
    ] {
        assert!(
            files.values().any(|c| c == content.as_bytes()),
            "lost {content:?}: {names:?}"
        );
    }
    assert_eq!(
        names.iter().filter(|n| n.contains(".conflict-")).count(),
        3,
        "{names:?}"
    );

    // Each clash is listed under conflicts, on both peers, and said in human status.
    for peer in [&a, &b] {
        let (status, _) = peer.status();
        let conflicts = status["conflicts"].as_array().unwrap();
        assert_eq!(conflicts.len(), 3, "{}: {conflicts:?}", peer.name);
        assert!(
            conflicts.iter().all(|c| c["kind"] == "create"),
            "{conflicts:?}"
        );
        let human = peer.cue_ok(&["sync", "status"]);
        assert!(human.contains(".conflict-"), "{}: {human}", peer.name);
    }
    a.stop();
    b.stop();
}
