//! Overlapping edits (docs/reference.md §3.1): concurrent edits of one paragraph on two
//! devices are both kept, and each device's status and activity log say so with both
//! names until `cue sync resolve` clears the notice there. Concurrency is made
//! deterministic by editing while both daemons are stopped, then starting them again.

use cue_e2e::{Peer, pair, wait_for_file, wait_until};

const PLAN: &str = "# Plan\n\nWe meet on Monday.\nBring the notes.\n\nBudget is tight.\n";

/// Both peers hold `rel` with equal content satisfying `cond`.
fn wait_converged(a: &Peer, b: &Peer, rel: &str, what: &str, cond: impl Fn(&str) -> bool) {
    wait_until(&format!("{rel} to converge: {what}"), || {
        match (a.read(rel), b.read(rel)) {
            (Some(x), Some(y)) => x == y && cond(&x),
            _ => false,
        }
    });
}

/// The `activity log --json` entries of `p` of kind `kind`.
/// The entries of `activity log --json` of `kind`; every entry's kind is one of the
/// contract's (an overlapping-edit notice is a `conflict` there).
fn logged(p: &Peer, kind: &str) -> Vec<serde_json::Value> {
    const KINDS: [&str; 10] = [
        "local_change",
        "remote_change",
        "delete",
        "restore",
        "rename",
        "conflict",
        "full_resync",
        "peer_joined",
        "peer_left",
        "error",
    ];
    let all: Vec<serde_json::Value> = p
        .cue_ok(&["activity", "log", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect();
    for e in &all {
        assert!(
            KINDS.iter().any(|k| e["kind"] == *k),
            "kind outside the contract: {e}"
        );
    }
    all.into_iter().filter(|e| e["kind"] == kind).collect()
}

fn overlaps(p: &Peer) -> Vec<serde_json::Value> {
    p.status().0["overlaps"].as_array().unwrap().clone()
}

/// Both hold PLAN, then stop.
fn plan_on_both_then_stopped(a: &Peer, b: &Peer) {
    a.write("plan.md", PLAN);
    wait_for_file(b, "plan.md", "the first version", |c| c == PLAN);
    a.stop();
    b.stop();
}

#[test]
fn concurrent_edits_of_one_paragraph_are_noticed_on_both_devices() {
    let (_relay, a, b) = pair();
    plan_on_both_then_stopped(&a, &b);
    a.write(
        "plan.md",
        &PLAN.replace("Monday", "Tuesday").replace("tight", "fine"),
    );
    b.write(
        "plan.md",
        &PLAN.replace("Bring the notes.", "Bring the slides."),
    );
    a.start();
    b.start();
    wait_converged(&a, &b, "plan.md", "both edits kept", |c| {
        c.contains("Tuesday") && c.contains("slides") && c.contains("fine")
    });

    // One notice on each device (the budget paragraph only alice changed), naming both.
    let detail = r#"line 3 ("We meet on Tuesday."): edited at the same time on alice and bob"#;
    for p in [&a, &b] {
        wait_until(&format!("{}'s status to list the overlap", p.name), || {
            !overlaps(p).is_empty()
        });
        let found = overlaps(p);
        assert_eq!(found.len(), 1, "{}: {found:?}", p.name);
        let o = &found[0];
        assert_eq!(o["path"], "plan.md", "{o}");
        assert_eq!(o["line"], 3, "{o}");
        assert_eq!(o["excerpt"], "We meet on Tuesday.", "{o}");
        assert_eq!(o["devices"], serde_json::json!(["alice", "bob"]), "{o}");
        assert!(o["time"].as_str().unwrap().ends_with('Z'), "{o}");
        let human = p.cue_ok(&["sync", "status"]);
        assert!(
            human
                .lines()
                .next()
                .unwrap()
                .ends_with("· 1 overlapping edit"),
            "{human}"
        );
        assert!(human.contains(&format!("plan.md, {detail}")), "{human}");
        assert!(human.contains("`cue sync resolve PATH`"), "{human}");
        let entries = logged(p, "conflict");
        assert_eq!(entries.len(), 1, "{}: {entries:?}", p.name);
        assert_eq!(entries[0]["path"], "plan.md");
        assert_eq!(entries[0]["detail"], detail);
        // The entry is about the other device, whose edit met this one's.
        let other = if p.name == "alice" { "bob" } else { "alice" };
        assert_eq!(entries[0]["device"], other);
    }
    // No conflict: the body's edits are all kept.
    assert!(a.status().0["conflicts"].as_array().unwrap().is_empty());

    // The notice outlives a restart, and shows without a daemon too.
    b.stop();
    let (offline, code) = b.status();
    assert_eq!(code, 1, "no daemon runs");
    assert_eq!(
        offline["overlaps"].as_array().unwrap().len(),
        1,
        "{offline}"
    );
    b.start();
    assert_eq!(overlaps(&b).len(), 1);

    // `resolve` clears it on the device it runs on, and says what it cleared.
    let resolved = a.cue_ok(&["sync", "resolve", "plan.md"]);
    assert!(
        resolved.contains("Cleared the overlapping edits noticed in plan.md")
            && resolved.contains(&format!("plan.md, {detail}")),
        "{resolved}"
    );
    assert!(overlaps(&a).is_empty());
    let human = a.cue_ok(&["sync", "status"]);
    assert!(!human.contains("overlapping"), "{human}");
    assert_eq!(overlaps(&b).len(), 1, "bob's notice is bob's own");
    // Nothing left to clear.
    let again = a.cue(&["sync", "resolve", "plan.md"]);
    assert_eq!(again.status.code(), Some(1));
    // Without a daemon, `resolve` clears it on the store.
    b.stop();
    let resolved = b.cue_ok(&["sync", "resolve", "plan.md"]);
    assert!(
        resolved.contains("Cleared the overlapping edits"),
        "{resolved}"
    );
    let (offline, _) = b.status();
    assert!(
        offline["overlaps"].as_array().unwrap().is_empty(),
        "{offline}"
    );
    a.stop();
}

#[test]
fn edits_of_different_paragraphs_or_in_turn_say_nothing() {
    let (_relay, a, b) = pair();
    plan_on_both_then_stopped(&a, &b);
    // Apart: alice the first paragraph, bob the last.
    let both = PLAN.replace("Monday", "Tuesday").replace("tight", "fine");
    a.write("plan.md", &PLAN.replace("Monday", "Tuesday"));
    b.write("plan.md", &PLAN.replace("tight", "fine"));
    a.start();
    b.start();
    wait_converged(&a, &b, "plan.md", "both edits kept", |c| c == both);
    // Together, one after the other, in the same paragraph.
    let next = both.replace("Tuesday", "Wednesday");
    a.write("plan.md", &next);
    wait_for_file(&b, "plan.md", "alice's edit", |c| c == next);
    let last = next.replace("notes", "slides");
    b.write("plan.md", &last);
    wait_converged(&a, &b, "plan.md", "bob's edit", |c| c == last);
    wait_until("nothing pending on either side", || {
        a.status().0["pending_changes"] == 0 && b.status().0["pending_changes"] == 0
    });
    for p in [&a, &b] {
        assert!(overlaps(p).is_empty(), "{}: {:?}", p.name, overlaps(p));
        assert!(logged(p, "conflict").is_empty(), "{}", p.name);
        assert!(!p.cue_ok(&["sync", "status"]).contains("overlapping"));
    }
    a.stop();
    b.stop();
}
