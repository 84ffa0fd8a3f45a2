//! A file's versions (`cue history`, `cue show --at`): every edit, newest first, by whom,
//! what it changed, and its exact content, across renames and devices.

use cue_core::{Config, HistoryError};
use cue_sim::World;

#[test]
fn every_edit_is_a_version_with_its_author_summary_and_content() {
    let mut w = World::new(2, 7, Config::default());
    w.connect_all();
    let v1 = "---\ntitle: Plan\n---\nfirst line\n";
    let v2 = "---\ntitle: Plan\n---\nfirst line\nsecond line\n";
    let v3 = "---\ntitle: The plan\ntags: [x]\n---\nfirst line\nsecond line\n";
    w.write(0, "plan.md", v1.as_bytes());
    w.settle(5);
    w.write(0, "plan.md", v2.as_bytes());
    w.settle(5);
    w.write(1, "plan.md", v3.as_bytes());
    w.settle(5);
    w.rename(1, "plan.md", "notes/plan.md");
    w.settle(5);

    for peer in 0..2 {
        let p = &mut w.peers[peer];
        let h = p.engine.history("notes/plan.md", &mut p.store).unwrap();
        // Newest first; the rename changed the index, not the file.
        assert_eq!(h.len(), 3, "{h:#?}");
        assert_eq!(h[0].device, "p1");
        assert_eq!(
            h[0].frontmatter,
            vec!["tags".to_string(), "title".to_string()]
        );
        assert_eq!(
            (h[1].device.as_str(), h[1].added, h[1].removed),
            ("p0", 1, 0)
        );
        assert_eq!(h[2].device, "p0");
        assert_eq!(h[2].size, v1.len());
        let at = |rev: &str, p: &mut cue_sim::Peer| {
            String::from_utf8(
                p.engine
                    .version("notes/plan.md", rev, &mut p.store)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(at(&h[2].rev, p), v1);
        assert_eq!(at(&h[1].rev[..6], p), v2);
        assert_eq!(at(&h[0].rev, p), v3);
    }
    let p = &mut w.peers[0];
    assert_eq!(
        p.engine
            .version("notes/plan.md", "ffffffffffff", &mut p.store),
        Err(HistoryError::NoVersion {
            path: "notes/plan.md".into(),
            rev: "ffffffffffff".into()
        })
    );
    assert!(matches!(
        p.engine.history("plan.md", &mut p.store),
        Err(HistoryError::NotAFile(_))
    ));
}
