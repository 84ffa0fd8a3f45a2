//! What a catch-up reports while it runs: the progress that `cue sync start` and
//! `cue sync status` show during a first sync.

use cue_core::Config;
use cue_sim::World;

#[test]
fn a_first_sync_reports_files_held_of_the_total_as_they_arrive() {
    // Small messages: each document travels on its own, so progress is visible.
    let config = Config {
        max_message_bytes: 400,
        ..Config::default()
    };
    let mut w = World::new(2, 3, config);
    for i in 0..12 {
        w.write(
            0,
            &format!("n{i:02}.md"),
            format!("# note {i}\n").as_bytes(),
        );
    }
    w.connect_all();
    let mut seen = Vec::new();
    while w.step() {
        if let Some(c) = w.status(1).catch_up {
            seen.push((c.files_held, c.files_total));
        }
    }
    w.settle(5);
    assert!(w.converged().is_ok());
    // The index came first: the total was known while files were still arriving.
    assert!(
        seen.iter().any(|&(held, total)| total == 12 && held < 12),
        "{seen:?}"
    );
    // Never more held than the total, and the count only grows.
    assert!(seen.iter().all(|&(held, total)| held <= total), "{seen:?}");
    assert!(seen.windows(2).all(|p| p[0].0 <= p[1].0), "{seen:?}");
    // Done: no catch-up running, every file here, a sync with the peer recorded.
    let status = w.status(1);
    assert_eq!(status.catch_up, None);
    assert_eq!(status.files, 12);
    assert!(status.peers.iter().any(|p| p.last_sync_ms.is_some()));
}
