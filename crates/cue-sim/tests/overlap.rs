//! Overlapping edits (docs/reference.md §3.1): when a merge joins concurrent edits of one
//! paragraph from two devices, both are kept and the activity log and status say so,
//! naming both devices; edits of different paragraphs, and edits one after the other,
//! say nothing.

use cue_core::{ActivityKind, OverlapInfo};
use cue_sim::World;

const BASE: &str =
    "---\ntitle: Plan\n---\n# Plan\n\nWe meet on Monday.\nBring the notes.\n\nBudget is tight.\n";

/// A world of `n` peers holding `plan.md` (BASE) everywhere.
fn with_plan(n: usize) -> World {
    let mut w = World::online(n, 11);
    w.write(0, "plan.md", BASE.as_bytes());
    w.settle_converged();
    w
}

fn overlap_entries(w: &World, peer: usize) -> Vec<&cue_core::Activity> {
    w.peers[peer]
        .activity
        .iter()
        .filter(|a| a.kind == ActivityKind::Overlap)
        .collect()
}

/// p0 and p1 rewrite the same paragraph while apart (p1 offline), then meet.
fn same_paragraph_offline(w: &mut World) {
    w.disconnect(1);
    w.write(0, "plan.md", BASE.replace("Monday", "Tuesday").as_bytes());
    w.write(
        1,
        "plan.md",
        BASE.replace("Bring the notes.", "Bring the slides.")
            .as_bytes(),
    );
    w.connect(1);
    w.settle_converged();
}

#[test]
fn concurrent_edits_of_one_paragraph_are_noticed_on_both_devices_with_both_names() {
    let mut w = with_plan(2);
    same_paragraph_offline(&mut w);
    let merged = w.read(0, "plan.md").unwrap();
    assert!(
        merged.contains("Tuesday") && merged.contains("slides"),
        "both edits kept: {merged}"
    );
    // The paragraph starts on line 6 of the file: three lines of frontmatter come first.
    let expected = OverlapInfo {
        path: "plan.md".into(),
        line: 6,
        excerpt: "We meet on Tuesday.".into(),
        devices: vec!["p0".into(), "p1".into()],
        time_ms: 0,
    };
    for p in 0..2 {
        let st = w.status(p);
        assert_eq!(st.overlaps.len(), 1, "peer {p}: {:?}", st.overlaps);
        let got = OverlapInfo {
            time_ms: 0,
            ..st.overlaps[0].clone()
        };
        assert_eq!(got, expected, "peer {p}");
        assert!(st.overlaps[0].time_ms > 0);
        let logged = overlap_entries(&w, p);
        assert_eq!(logged.len(), 1, "peer {p}: {logged:?}");
        assert_eq!(logged[0].path.as_deref(), Some("plan.md"));
        assert_eq!(
            logged[0].detail.as_deref(),
            Some(r#"line 6 ("We meet on Tuesday."): edited at the same time on p0 and p1"#)
        );
        // The entry is about the other device, whose edit met this one's.
        assert_eq!(logged[0].device, if p == 0 { "p1" } else { "p0" });
    }
    // No field conflict: the frontmatter was not touched.
    assert!(w.status(0).conflicts.is_empty());
}

#[test]
fn a_notice_survives_a_restart_and_resolve_clears_it_on_that_device_only() {
    let mut w = with_plan(2);
    same_paragraph_offline(&mut w);
    w.restart(1);
    w.settle_converged();
    assert_eq!(w.status(1).overlaps.len(), 1, "kept across a restart");
    w.resolve(1, "plan.md").unwrap();
    w.settle_converged();
    assert!(w.status(1).overlaps.is_empty());
    assert_eq!(w.status(0).overlaps.len(), 1, "p0's notice is p0's own");
    // Resolving again finds nothing to clear.
    assert!(w.resolve(1, "plan.md").is_err());
    // A notice follows its file when it is renamed.
    w.rename(0, "plan.md", "old-plan.md");
    w.settle_converged();
    assert_eq!(w.status(0).overlaps[0].path, "old-plan.md");
    w.resolve(0, "old-plan.md").unwrap();
    assert!(w.status(0).overlaps.is_empty());
}

#[test]
fn concurrent_edits_of_different_paragraphs_say_nothing() {
    let mut w = with_plan(2);
    w.disconnect(1);
    w.write(0, "plan.md", BASE.replace("Monday", "Tuesday").as_bytes());
    w.write(1, "plan.md", BASE.replace("tight", "fine").as_bytes());
    // And a frontmatter change against a body change.
    w.write(
        1,
        "plan.md",
        BASE.replace("tight", "fine")
            .replace("title: Plan", "title: Plans")
            .as_bytes(),
    );
    w.connect(1);
    w.settle_converged();
    let merged = w.read(1, "plan.md").unwrap();
    assert!(
        merged.contains("Tuesday") && merged.contains("fine"),
        "{merged}"
    );
    for p in 0..2 {
        assert!(w.status(p).overlaps.is_empty(), "peer {p}");
        assert!(overlap_entries(&w, p).is_empty(), "peer {p}");
    }
}

#[test]
fn edits_one_after_the_other_say_nothing() {
    let mut w = with_plan(2);
    // Live, each on top of the other's.
    w.write(0, "plan.md", BASE.replace("Monday", "Tuesday").as_bytes());
    w.settle_converged();
    w.write(1, "plan.md", BASE.replace("Monday", "Wednesday").as_bytes());
    w.settle_converged();
    // Offline, one side only: a fast-forward when they meet.
    w.disconnect(1);
    w.write(0, "plan.md", BASE.replace("Monday", "Friday").as_bytes());
    w.connect(1);
    w.settle_converged();
    assert!(w.read(1, "plan.md").unwrap().contains("Friday"));
    for p in 0..2 {
        assert!(w.status(p).overlaps.is_empty(), "peer {p}");
        assert!(overlap_entries(&w, p).is_empty(), "peer {p}");
    }
}

/// A third device that merges the two edits itself names the two editors, not itself.
#[test]
fn a_third_device_names_the_two_that_edited() {
    let mut w = with_plan(3);
    w.disconnect(1);
    w.write(0, "plan.md", BASE.replace("Monday", "Tuesday").as_bytes());
    // p2 takes p0's edit while p1 is away (p1 differs until it is back).
    w.settle(10);
    assert!(w.read(2, "plan.md").unwrap().contains("Tuesday"));
    w.write(
        1,
        "plan.md",
        BASE.replace("Bring the notes.", "Bring the slides.")
            .as_bytes(),
    );
    w.connect(1);
    w.settle_converged();
    let st = w.status(2);
    assert_eq!(st.overlaps.len(), 1, "{:?}", st.overlaps);
    assert_eq!(st.overlaps[0].devices, vec!["p0", "p1"]);
    // The entry is about the edit merged in: p1's, which p2 had not seen.
    let logged = overlap_entries(&w, 2);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].device, "p1");
}

/// A save here whose report reaches the engine after a peer's change to the same
/// paragraph was merged (the write of that change is refused: the disk holds the save)
/// is merged as an edit of the older version, and noticed.
#[test]
fn a_save_merged_with_a_change_that_arrived_meanwhile_is_noticed() {
    let mut w = with_plan(2);
    // p1's user saves; the watcher has not reported it yet.
    let saved = BASE.replace("Bring the notes.", "Bring the slides.");
    w.peers[1]
        .disk
        .insert("plan.md".into(), saved.clone().into_bytes());
    w.write(0, "plan.md", BASE.replace("Monday", "Tuesday").as_bytes());
    w.settle_converged();
    let merged = w.read(1, "plan.md").unwrap();
    assert!(
        merged.contains("Tuesday") && merged.contains("slides"),
        "{merged}"
    );
    for p in 0..2 {
        let st = w.status(p);
        assert_eq!(st.overlaps.len(), 1, "peer {p}: {:?}", st.overlaps);
        assert_eq!(st.overlaps[0].devices, vec!["p0", "p1"], "peer {p}");
    }
    let logged = overlap_entries(&w, 1);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].device, "p0");
}

/// Two people still typing in one paragraph: the open notice is kept up to date and
/// logged once; once resolved, the next overlap is logged again.
#[test]
fn an_open_notice_is_logged_once_while_the_overlap_goes_on() {
    let mut w = with_plan(2);
    same_paragraph_offline(&mut w);
    let second = w.read(0, "plan.md").unwrap();
    w.disconnect(1);
    w.write(
        0,
        "plan.md",
        second.replace("Tuesday", "Thursday").as_bytes(),
    );
    w.write(1, "plan.md", second.replace("slides", "charts").as_bytes());
    w.connect(1);
    w.settle_converged();
    let st = w.status(0);
    assert_eq!(st.overlaps.len(), 1, "{:?}", st.overlaps);
    assert_eq!(st.overlaps[0].excerpt, "We meet on Thursday.");
    assert_eq!(overlap_entries(&w, 0).len(), 1);
    w.resolve(0, "plan.md").unwrap();
    let third = w.read(0, "plan.md").unwrap();
    w.disconnect(1);
    w.write(0, "plan.md", third.replace("Thursday", "Friday").as_bytes());
    w.write(1, "plan.md", third.replace("charts", "maps").as_bytes());
    w.connect(1);
    w.settle_converged();
    assert_eq!(w.status(0).overlaps.len(), 1);
    assert_eq!(overlap_entries(&w, 0).len(), 2);
}

/// Both sides rewrote every paragraph (each reformatted the file): the first ones are
/// listed, the rest counted in one entry.
#[test]
fn a_merge_of_two_whole_rewrites_lists_the_first_paragraphs_and_counts_the_rest() {
    let mut w = World::online(2, 11);
    let base: String = (0..40)
        .map(|i| format!("Paragraph {i} here.\n\n"))
        .collect();
    w.write(0, "long.md", base.as_bytes());
    w.settle_converged();
    w.disconnect(1);
    w.write(0, "long.md", base.replace(" here", " there").as_bytes());
    w.write(
        1,
        "long.md",
        base.replace("Paragraph", "Section").as_bytes(),
    );
    w.connect(1);
    w.settle_converged();
    let st = w.status(0);
    assert_eq!(st.overlaps.len(), 16, "{:?}", st.overlaps);
    assert_eq!(st.overlaps[0].line, 1);
    let logged = overlap_entries(&w, 0);
    assert_eq!(logged.len(), 17);
    assert_eq!(
        logged[16].detail.as_deref(),
        Some("24 more paragraphs further down were edited at the same time on p0 and p1")
    );
}
