//! The merge rules of docs/reference.md §3.1 across real daemons. Concurrency is made
//! deterministic by editing while both daemons are stopped, then starting them again.

use cue_e2e::{DEADLINE, Peer, pair, wait_for_file, wait_until};

/// Both peers hold `rel` with equal content satisfying `cond`. On a timeout the failure
/// shows what each held last, and each device's activity log.
fn wait_converged(a: &Peer, b: &Peer, rel: &str, what: &str, cond: impl Fn(&str) -> bool) {
    let mut last = (None, None);
    let done = cue_testkit::wait_until(&format!("{rel} to converge: {what}"), DEADLINE, || {
        last = (a.read(rel), b.read(rel));
        Ok(match &last {
            (Some(x), Some(y)) => x == y && cond(x),
            _ => false,
        })
    });
    if let Err(e) = done {
        let tail = |p: &Peer| {
            let log =
                std::fs::read_to_string(p.root().join(".cuedeck/daemon.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        panic!(
            "{e}\n{}: {:?}\n{}: {:?}\n{} activity:\n{}\n{} activity:\n{}\n{} daemon:\n{}\n{} daemon:\n{}",
            a.name,
            last.0,
            b.name,
            last.1,
            a.name,
            a.cue_ok(&["activity", "log"]),
            b.name,
            b.cue_ok(&["activity", "log"]),
            a.name,
            tail(a),
            b.name,
            tail(b)
        );
    }
}

/// The synced files of a peer (not `.cuedeck/`), sorted.
fn files(p: &Peer) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(p.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".cuedeck")
        .collect();
    out.sort();
    out
}

#[test]
fn frontmatter_last_writer_wins_and_arrays_union() {
    let (_relay, a, b) = pair();
    a.write(
        "fm.md",
        "---\ntitle: Start\ntags: [base]\nauthor: me\n---\nbody\n",
    );
    wait_for_file(&b, "fm.md", "the first version", |c| {
        c.contains("title: Start")
    });
    a.stop();
    b.stop();
    a.write(
        "fm.md",
        "---\ntitle: Alice\ntags: [base, from-a]\nauthor: me\n---\nbody\n",
    );
    b.write(
        "fm.md",
        "---\ntitle: Bob\ntags: [base, from-b]\nauthor: me\n---\nbody\n",
    );
    a.start();
    b.start();
    wait_converged(&a, &b, "fm.md", "tags united, one title", |c| {
        c.contains("from-a") && c.contains("from-b")
    });
    let merged = a.read("fm.md").unwrap();
    let titles = ["title: Alice", "title: Bob"];
    assert_eq!(
        titles.iter().filter(|t| merged.contains(**t)).count(),
        1,
        "one title wins, no interleaving: {merged}"
    );
    assert!(
        merged.contains("author: me\n") && merged.ends_with("---\nbody\n"),
        "{merged}"
    );
    wait_until("the lost title to be reported as a conflict", || {
        let (s, _) = a.status();
        s["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "frontmatter" && c["path"] == "fm.md")
    });
    // The conflict names the value kept (the one in the file) and the one set aside,
    // each with its device, in the same words in status, the activity log and resolve.
    let detail = if merged.contains("title: Alice") {
        r#"title: kept "Alice" (alice); set aside "Bob" (bob)"#
    } else {
        r#"title: kept "Bob" (bob); set aside "Alice" (alice)"#
    };
    for p in [&a, &b] {
        wait_until(&format!("{}'s status to name both titles", p.name), || {
            p.status().0["conflicts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["path"] == "fm.md" && c["detail"] == detail)
        });
    }
    let human = a.cue_ok(&["sync", "status"]);
    assert!(
        human.contains(&format!("fm.md (frontmatter): {detail}")),
        "{human}"
    );
    // The device that found the conflict first logged it (the other learnt of it
    // from the synced record).
    let log = a.cue_ok(&["activity", "log", "--json"]) + &b.cue_ok(&["activity", "log", "--json"]);
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["kind"] == "conflict")
        .collect();
    assert!(!entries.is_empty(), "{log}");
    assert!(entries.iter().all(|e| e["detail"] == detail), "{log}");
    let resolved = a.cue_ok(&["sync", "resolve", "fm.md"]);
    assert!(
        resolved.contains(&format!("fm.md (frontmatter): {detail}")),
        "{resolved}"
    );
    a.stop();
    b.stop();
}

#[test]
fn concurrent_creation_of_one_path_keeps_both() {
    let (_relay, a, b) = pair();
    wait_until("the peers to meet", || {
        a.status().0["peers"][0]["online"] == true
    });
    a.stop();
    b.stop();
    a.write("same.md", "alice's version\n");
    b.write("same.md", "bob's version\n");
    a.start();
    b.start();
    wait_until("a conflict copy on both sides", || {
        files(&a).len() == 2 && files(&a) == files(&b)
    });
    let names = files(&a);
    assert!(names.contains(&"same.md".to_string()), "{names:?}");
    let copy = names
        .iter()
        .find(|n| n.starts_with("same.conflict-"))
        .unwrap();
    assert!(copy.ends_with(".md"), "{copy}");
    let contents: Vec<String> = names.iter().map(|n| a.read(n).unwrap()).collect();
    assert!(contents.contains(&"alice's version\n".to_string()));
    assert!(contents.contains(&"bob's version\n".to_string()));
    for n in &names {
        wait_converged(&a, &b, n, "same content", |_| true);
    }
    wait_until("the create conflict listed", || {
        a.status().0["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "create")
    });
    // Deleting the copy resolves the conflict, on every peer.
    a.remove(copy);
    wait_until("the conflict to clear on bob", || {
        b.read(copy).is_none() && b.status().0["conflicts"].as_array().unwrap().is_empty()
    });
    a.stop();
    b.stop();
}

#[test]
fn a_rename_and_an_edit_both_land() {
    let (_relay, a, b) = pair();
    a.write("old.md", "line one\n");
    wait_for_file(&b, "old.md", "the file", |_| true);
    a.stop();
    b.stop();
    std::fs::rename(a.path("old.md"), a.path("new.md")).unwrap();
    b.write("old.md", "line one\nedited by bob\n");
    a.start();
    b.start();
    wait_converged(&a, &b, "new.md", "renamed, with bob's edit", |c| {
        c == "line one\nedited by bob\n"
    });
    wait_until("the old name gone everywhere", || {
        a.read("old.md").is_none() && b.read("old.md").is_none()
    });
    a.stop();
    b.stop();
}

#[test]
fn a_delete_concurrent_with_an_edit_keeps_the_edit() {
    let (_relay, a, b) = pair();
    a.write("contested.md", "v1\n");
    wait_for_file(&b, "contested.md", "the file", |_| true);
    a.stop();
    b.stop();
    a.remove("contested.md");
    b.write("contested.md", "v1\nstill needed\n");
    a.start();
    b.start();
    wait_converged(&a, &b, "contested.md", "the edit kept", |c| {
        c.contains("still needed")
    });
    a.stop();
    b.stop();
}

#[test]
fn concurrent_edits_to_one_file_while_online_merge() {
    let (_relay, a, b) = pair();
    let base = "alpha\nbeta\ngamma\ndelta\n";
    a.write("live.md", base);
    wait_for_file(&b, "live.md", "the base", |c| c == base);
    // Near-simultaneous saves on both sides, at different places.
    a.write("live.md", "ALPHA\nbeta\ngamma\ndelta\n");
    b.write("live.md", "alpha\nbeta\ngamma\nDELTA\n");
    wait_converged(&a, &b, "live.md", "both edits", |c| {
        c == "ALPHA\nbeta\ngamma\nDELTA\n"
    });
    a.stop();
    b.stop();
}
