//! Healing a split room: a device alone in its relay room while it knows others who
//! should be there connects again.
//!
//! Relays run as a fleet behind a load balancer that hashes the room path
//! (docs/deploy.md). When an instance goes and comes back, the peers of a room that
//! reconnect at different moments can land on different instances: each then sits
//! connected, alone, and nothing syncs. Nothing in the relay protocol can tell a peer
//! that its partners are elsewhere, so the peer itself notices: connected, no other peer
//! in the room, while the workspace has other members (or, in the lobby, while waiting
//! for the member who made our invite). After a delay drawn between
//! [`FIRST_WAIT_MIN`] and [`FIRST_WAIT_MAX`] (jittered, so that two split peers do not
//! swap instances in step) it reconnects, which lands it where the balancer now sends
//! the room. Still alone after that, it waits twice as long each time, up to
//! [`MAX_WAIT`]: a member that is really alone (everyone else offline) costs a
//! reconnection every few minutes, no more. The wait starts again from the first as
//! soon as a peer is seen.
//!
//! Bound: a split room reunites within [`FIRST_WAIT_MAX`] of the balancer routing the
//! room to one instance again (plus the reconnection, milliseconds), provided the other
//! side is still there; when both sides reconnect at once, the next attempt (the wait
//! doubled) reunites them.

use std::time::{Duration, Instant};

/// The first wait alone before reconnecting, drawn in [MIN, MAX).
pub const FIRST_WAIT_MIN: Duration = Duration::from_secs(10);
pub const FIRST_WAIT_MAX: Duration = Duration::from_secs(30);
/// The longest wait while alone.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// One connection's record of being alone (see the module docs).
#[derive(Debug, Clone)]
pub struct Alone {
    since: Option<Instant>,
    /// How long to stay alone before the next reconnection.
    wait: Duration,
    /// Reconnections made while alone since a peer was last seen.
    attempts: u32,
}

impl Alone {
    /// `jitter` in [0, 1) places the first wait between the bounds.
    pub fn new(jitter: f64) -> Alone {
        Alone {
            since: None,
            wait: first_wait(jitter),
            attempts: 0,
        }
    }

    /// After an event or a tick: whether to reconnect now. `alone`: connected, and no
    /// other peer in the room; `expected`: some other device should be in this room.
    /// `jitter` in [0, 1) draws the next wait.
    pub fn check(&mut self, now: Instant, alone: bool, expected: bool, jitter: f64) -> bool {
        if !alone {
            // A peer is here, or we are not connected (a reconnection under way keeps
            // its backoff until a peer is seen: [`Alone::met`]).
            self.since = None;
            return false;
        }
        if !expected {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < self.wait {
            return false;
        }
        self.since = None;
        self.attempts += 1;
        self.wait = (first_wait(jitter) * 2u32.saturating_pow(self.attempts)).min(MAX_WAIT);
        true
    }

    /// A peer was seen in the room: the next time alone waits the first wait again.
    pub fn met(&mut self, jitter: f64) {
        if self.attempts > 0 {
            self.attempts = 0;
            self.wait = first_wait(jitter);
        }
    }
}

fn first_wait(jitter: f64) -> Duration {
    let span = FIRST_WAIT_MAX - FIRST_WAIT_MIN;
    FIRST_WAIT_MIN + span.mul_f64(jitter.clamp(0.0, 0.999))
}

/// A jitter in [0, 1) from the OS's randomness (0.5 if it fails).
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / 65536.0
    } else {
        0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_while_others_are_expected_reconnects_after_the_wait_then_backs_off() {
        let t0 = Instant::now();
        let mut a = Alone::new(0.0);
        // Not alone, or alone with nobody expected: never.
        assert!(!a.check(t0, false, true, 0.0));
        assert!(!a.check(t0 + MAX_WAIT * 2, true, false, 0.0));
        // Alone and expected: after the first wait (10 s with this jitter).
        assert!(!a.check(t0, true, true, 0.0));
        assert!(!a.check(t0 + Duration::from_secs(9), true, true, 0.0));
        assert!(a.check(t0 + Duration::from_secs(10), true, true, 0.0));
        // Still alone after reconnecting: twice as long (20 s), then 40 s...
        let t1 = t0 + Duration::from_secs(11);
        assert!(!a.check(t1, true, true, 0.0));
        assert!(!a.check(t1 + Duration::from_secs(19), true, true, 0.0));
        assert!(a.check(t1 + Duration::from_secs(20), true, true, 0.0));
        let t2 = t1 + Duration::from_secs(21);
        assert!(!a.check(t2, true, true, 0.0));
        assert!(a.check(t2 + Duration::from_secs(40), true, true, 0.0));
        // ... never more than the cap.
        let mut t = t2 + Duration::from_secs(41);
        for _ in 0..10 {
            assert!(!a.check(t, true, true, 0.0));
            assert!(a.check(t + MAX_WAIT, true, true, 0.0));
            t += MAX_WAIT + Duration::from_secs(1);
        }
        // A peer seen: back to the first wait.
        a.met(0.0);
        assert!(!a.check(t, false, true, 0.0));
        assert!(!a.check(t, true, true, 0.0));
        assert!(a.check(t + Duration::from_secs(10), true, true, 0.0));
    }

    #[test]
    fn the_first_wait_is_spread_between_its_bounds() {
        assert_eq!(first_wait(0.0), FIRST_WAIT_MIN);
        assert!(first_wait(0.999) < FIRST_WAIT_MAX);
        assert!(first_wait(0.5) > Duration::from_secs(19));
    }
}
