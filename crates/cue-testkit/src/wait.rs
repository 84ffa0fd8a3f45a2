//! Waiting for a condition: polls with a deadline, never a fixed sleep, so a wait costs
//! as little as the condition takes to come true and a failure says what it waited for.

use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `cond` until it holds, for at most `deadline`; pauses grow from 1 ms to 20 ms.
/// Returns how long it took.
pub fn wait_until(
    what: &str,
    deadline: Duration,
    cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    poll_until(what, deadline, Duration::from_millis(20), cond)
}

/// [`wait_until`] with pauses that grow up to `max_pause`: a condition that runs a
/// process (`cue sync status`) is better looked at less often on a busy machine.
pub fn poll_until(
    what: &str,
    deadline: Duration,
    max_pause: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(max_pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_never_holds_times_out_with_what_was_awaited() {
        let e = wait_until("nothing", Duration::from_millis(20), || Ok(false))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("timed out after 20ms waiting for nothing")
        );
    }

    #[test]
    fn the_condition_is_polled_until_it_holds_and_its_errors_end_the_wait() {
        let mut n = 0;
        assert!(
            wait_until("the third look", Duration::from_secs(5), || {
                n += 1;
                Ok(n == 3)
            })
            .is_ok()
        );
        assert!(wait_until("an error", Duration::from_secs(5), || anyhow::bail!("no")).is_err());
    }
}
