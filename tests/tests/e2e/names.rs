//! Names that look the same (docs/reference.md §2.4): `café.md` typed on one machine in
//! Unicode NFC and on another in NFD, `README.md` beside `Readme.md`. The workspace never
//! holds two files whose names are equal after NFC normalisation and case folding: the
//! second becomes a conflict copy, on every peer, and nothing is lost. (So a folder that
//! ignores case, as a Mac's does, never has one overwrite the other.)

use std::collections::BTreeMap;
use std::path::Path;

use cue_e2e::{Peer, Relay, pair, tree, wait_converged, wait_for_file, wait_until};

use crate::exfat::Exfat;
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

/// name key → content, for a folder that may spell a name otherwise than another does.
fn by_key(root: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(root).into_iter().map(|(n, c)| (key(&n), c)).collect()
}

#[test]
fn a_folder_that_ignores_case_never_has_one_file_overwrite_another() {
    let Some(exfat) = Exfat::mount() else {
        return;
    };
    let relay = Relay::start();
    let a = Peer::new("alice");
    let b = Peer::new_in("bob", &exfat.path());
    // On alice's Linux disk: two files and two folders whose names differ in case only.
    a.write("Notes.md", "upper\n");
    a.write("notes.md", "lower\n");
    a.write("Docs/a.md", "a\n");
    a.write("docs/b.md", "b\n");
    a.init(&relay.url());
    b.join(&a.invite());
    a.start();
    b.start();
    wait_until("bob to hold all four files, none over another", || {
        let files = tree(b.root());
        files.len() == 4
            && ["upper\n", "lower\n", "a\n", "b\n"]
                .iter()
                .all(|c| files.values().any(|f| f == c.as_bytes()))
    });
    wait_until("the same four files on both, by name", || {
        by_key(a.root()) == by_key(b.root())
    });
    let (status, _) = b.status();
    let conflicts = status["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["kind"], "create");

    // Bob edits both files of the one folder his disk has, by its spelling there: edits
    // of the files alice has in two folders, not new files.
    let files = tree(b.root());
    let folder = files
        .keys()
        .find_map(|n| n.split_once('/'))
        .unwrap()
        .0
        .to_string();
    b.write(&format!("{folder}/a.md"), "a, edited by bob\n");
    b.write(&format!("{folder}/b.md"), "b, edited by bob\n");
    wait_for_file(&a, "Docs/a.md", "bob's edit of a", |c| {
        c == "a, edited by bob\n"
    });
    wait_for_file(&a, "docs/b.md", "bob's edit of b", |c| {
        c == "b, edited by bob\n"
    });

    // Bob's daemon starts again: its scan finds every file where it put it, and takes
    // nothing for new, edited or removed.
    let local_entries = |p: &Peer| {
        let log = p.cue_ok(&["activity", "log", "--json"]);
        log.lines()
            .filter(|l| {
                ["local_change", "delete", "rename"]
                    .iter()
                    .any(|k| l.contains(&format!("\"kind\":\"{k}\"")))
            })
            .count()
    };
    let before = local_entries(&b);
    b.stop();
    b.start();
    b.cue_ok(&["sync", "now", "--timeout", "30s"]);
    // (The files a write replaced are kept aside for a moment, for late writes.)
    wait_until("the same four files on both after the restart", || {
        tree(a.root()).len() == 4 && by_key(a.root()) == by_key(b.root())
    });
    assert_eq!(
        local_entries(&b),
        before,
        "{}",
        b.cue_ok(&["activity", "log"])
    );

    // A change of case only, made on the folder that ignores case, is a rename everywhere.
    let notes = tree(b.root())
        .into_keys()
        .find(|n| n.eq_ignore_ascii_case("notes.md"))
        .unwrap();
    std::fs::rename(b.root().join(&notes), b.root().join("NOTES.md")).unwrap();
    wait_until("bob's change of case to reach alice", || {
        a.read("NOTES.md").is_some() && tree(a.root()).len() == 4
    });
    assert_eq!(by_key(a.root()), by_key(b.root()));
    // One made on alice's side is a rename on bob's folder too.
    std::fs::rename(a.root().join("Docs/a.md"), a.root().join("Docs/A.md")).unwrap();
    wait_until("alice's change of case to reach bob's folder", || {
        tree(b.root()).keys().any(|n| n.ends_with("/A.md")) && tree(b.root()).len() == 4
    });
    // And one made while his daemon was stopped, found by the scan at its start.
    b.stop();
    std::fs::rename(b.root().join("NOTES.md"), b.root().join("nOtEs.md")).unwrap();
    b.start();
    wait_until(
        "bob's change of case made while stopped to reach alice",
        || a.read("nOtEs.md").is_some() && tree(a.root()).len() == 4,
    );
    a.stop();
    b.stop();
}
