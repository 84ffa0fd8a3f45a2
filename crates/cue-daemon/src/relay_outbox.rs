//! What the relay client sends, in the order the main loop handed it.
//!
//! Order matters to the peers: a member's admission must reach a newcomer before that
//! member's engine messages, or the newcomer drops them as a stranger's (it cannot open
//! a message from a device it does not know is a member). The relay keeps the order of
//! one connection's frames, so the client must too. Two things used to break it, both
//! under a relay's rate limits: a frame refused for rate was sent again after the
//! relay's wait while frames handed later went out at once, and the refused frames
//! themselves came back in whatever order their waits ended.
//!
//! So frames wait here, in order, and go out only
//! - at the pace of the limits the relay announced on admission (its per-connection
//!   messages and bytes a second: the same `governor` quotas the relay checks, so that
//!   it has no reason to refuse them), and
//! - never ahead of a frame the relay refused: a refused frame goes back to its place
//!   among the waiting ones, and nothing goes until its wait is over. (A room's shared
//!   byte rate can still refuse a paced frame; frames already under way when the
//!   refusal comes may then overtake it: rare, and the engine's hello and pull recover
//!   what a peer dropped.)

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use cue_proto::{ClientFrame, Limits, PeerId, RefuseReason};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::time::Instant;

/// How long a sent frame is kept in case the relay refuses it for rate.
const KEEP_SENT: Duration = Duration::from_secs(5);
/// At most this many bytes of sent frames are kept for resending.
const KEEP_SENT_BYTES: usize = 64 * 1024 * 1024;
/// The relay peers that left during a connection are remembered, the latest this many:
/// messages to an older one are long since answered.
const LEFT_PEERS_KEPT: usize = 256;

/// The relay's per-connection rates, as it announced them.
struct Pace {
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
}

impl Pace {
    fn new(limits: &Limits) -> Self {
        let nonzero = |value: u64| {
            NonZeroU32::new(u32::try_from(value).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
        };
        // The relay's own quotas (relay/src/connection.rs): a message rate with a burst,
        // and a byte rate whose burst is one second's worth.
        Pace {
            messages: DefaultDirectRateLimiter::direct(
                Quota::per_second(nonzero(limits.messages_per_second))
                    .allow_burst(nonzero(limits.burst)),
            ),
            bytes: DefaultDirectRateLimiter::direct(Quota::per_second(nonzero(
                limits.bytes_per_second,
            ))),
        }
    }

    /// Takes the rate for a frame of `len` payload bytes, or says how long until it can.
    ///
    /// The bytes are taken first: a frame that may not go yet has then used a message
    /// of the budget at most, never a second's worth of bytes.
    fn take(&self, len: usize) -> Result<(), Duration> {
        let clock = DefaultClock::default();
        if let Some(n) = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX)) {
            match self.bytes.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => return Err(not_until.wait_time_from(clock.now())),
                // Bigger than a second's worth: it goes alone, and the relay judges it.
                Err(_) => {}
            }
        }
        self.messages
            .check()
            .map_err(|not_until| not_until.wait_time_from(clock.now()))
    }
}

/// Frames waiting to go, frames sent lately (kept [`KEEP_SENT`], [`KEEP_SENT_BYTES`] at
/// most, in case the relay refuses them for rate), and the peers that left the room
/// (direct messages to them are dropped).
pub(crate) struct Outbox {
    /// The wire id of the next attempt (a fresh one per attempt, so that a refusal
    /// always names the latest).
    next_id: u64,
    /// The place of the next frame handed over in the main loop's order.
    next_place: u64,
    /// Waiting to go, by place.
    waiting: VecDeque<(u64, ClientFrame)>,
    /// Sent: (wire id, place, when, frame).
    sent: VecDeque<(u64, u64, Instant, ClientFrame)>,
    sent_bytes: usize,
    /// A refused frame's wait: nothing goes before it is over.
    held_until: Option<Instant>,
    /// The rate says the next frame may go no sooner.
    paced_until: Option<Instant>,
    pace: Option<Pace>,
    /// Relay peers that left during this connection, the latest last, each with whether
    /// a message to it was dropped yet (the first drop is logged).
    left: VecDeque<(PeerId, bool)>,
    /// Direct messages to peers that had left: dropped here, or refused by the relay
    /// (`unknown_peer`) when sent before the leave was known.
    pub(crate) to_left_peers: u64,
    /// Frames the relay refused for rate this connection.
    pub(crate) refused: u64,
}

impl Outbox {
    /// An outbox paced to `limits` (`None`: unpaced).
    pub(crate) fn new(limits: Option<&Limits>) -> Self {
        Outbox {
            next_id: 1,
            next_place: 0,
            waiting: VecDeque::new(),
            sent: VecDeque::new(),
            sent_bytes: 0,
            held_until: None,
            paced_until: None,
            pace: limits.map(Pace::new),
            left: VecDeque::new(),
            to_left_peers: 0,
            refused: 0,
        }
    }

    /// A frame from the main loop: it waits behind every frame handed before it.
    pub(crate) fn push(&mut self, frame: ClientFrame) {
        self.waiting.push_back((self.next_place, frame));
        self.next_place += 1;
    }

    /// The relay said `peer` left the room: no direct message goes to it any more.
    pub(crate) fn peer_left(&mut self, peer: PeerId) {
        if self.left.len() >= LEFT_PEERS_KEPT {
            self.left.pop_front();
        }
        self.left.push_back((peer, false));
    }

    /// Whether `frame` is a direct message to a peer that left (counted, and the first
    /// such drop for a peer logged).
    fn is_for_a_peer_gone(&mut self, frame: &ClientFrame) -> bool {
        let ClientFrame::Direct { to, .. } = frame else {
            return false;
        };
        let Some((_, dropped_before)) = self.left.iter_mut().find(|(p, _)| p == to) else {
            return false;
        };
        if !*dropped_before {
            *dropped_before = true;
            tracing::debug!(peer = ?to, "dropping direct messages to a peer that left the room");
        }
        self.to_left_peers += 1;
        true
    }

    /// When frames are waiting but may not go yet: when to look again.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        match (self.held_until, self.paced_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The frames that may go at `now`, in order, each under a fresh wire id and kept
    /// in case the relay refuses it.
    pub(crate) fn ready(&mut self, now: Instant) -> Vec<ClientFrame> {
        if self.held_until.is_some_and(|t| t > now) {
            return Vec::new();
        }
        self.held_until = None;
        self.paced_until = None;
        let mut out = Vec::new();
        while let Some((place, frame)) = self.waiting.pop_front() {
            if self.is_for_a_peer_gone(&frame) {
                continue;
            }
            if let Some(pace) = &self.pace
                && let Err(wait) = pace.take(frame_len(&frame))
            {
                self.waiting.push_front((place, frame));
                self.paced_until = Some(now + wait);
                break;
            }
            let mut frame = frame;
            let id = self.next_id;
            self.next_id += 1;
            match &mut frame {
                ClientFrame::Broadcast { id: i, .. } | ClientFrame::Direct { id: i, .. } => *i = id,
                _ => {}
            }
            self.sent_bytes += frame_len(&frame);
            self.sent.push_back((id, place, now, frame.clone()));
            out.push(frame);
        }
        while let Some((_, _, t, frame)) = self.sent.front() {
            if now.duration_since(*t) > KEEP_SENT || self.sent_bytes > KEEP_SENT_BYTES {
                self.sent_bytes -= frame_len(frame);
                self.sent.pop_front();
            } else {
                break;
            }
        }
        out
    }

    /// The relay refused frame `id`: if for rate, it goes back to its place among the
    /// waiting frames, and nothing goes before its wait is over.
    pub(crate) fn refused(
        &mut self,
        id: Option<u64>,
        reason: RefuseReason,
        limit: u64,
        retry_after_ms: u64,
        now: Instant,
    ) {
        if reason == RefuseReason::UnknownPeer {
            // Sent before the relay's word that the peer left reached us: expected when a
            // peer leaves while messages to it are under way, and nothing to resend.
            self.to_left_peers += 1;
            tracing::debug!(?id, "the relay refused a message to a peer that left");
            return;
        }
        let found = id.and_then(|id| self.sent.iter().position(|(i, ..)| *i == id));
        match found {
            Some(pos) if reason.is_transient() => {
                let Some((_, place, _, frame)) = self.sent.remove(pos) else {
                    return;
                };
                self.sent_bytes -= frame_len(&frame);
                self.refused += 1;
                let wait = Duration::from_millis(retry_after_ms.clamp(10, 10_000));
                tracing::debug!(
                    reason = reason.as_str(),
                    ?wait,
                    "relay refused for rate; will resend"
                );
                let at = self.waiting.partition_point(|(p, _)| *p < place);
                self.waiting.insert(at, (place, frame));
                let until = now + wait;
                self.held_until = Some(self.held_until.map_or(until, |t| t.max(until)));
            }
            _ => tracing::warn!(
                reason = reason.as_str(),
                limit,
                ?id,
                "the relay refused a message"
            ),
        }
    }
}

fn frame_len(f: &ClientFrame) -> usize {
    match f {
        ClientFrame::Broadcast { payload, .. } | ClientFrame::Direct { payload, .. } => {
            payload.len()
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broadcast(n: u8) -> ClientFrame {
        ClientFrame::Broadcast {
            id: 0,
            payload: vec![n; 10],
        }
    }

    fn payloads(frames: &[ClientFrame]) -> Vec<u8> {
        frames
            .iter()
            .map(|f| match f {
                ClientFrame::Broadcast { payload, .. } | ClientFrame::Direct { payload, .. } => {
                    payload[0]
                }
                _ => 0,
            })
            .collect()
    }

    fn id_of(f: &ClientFrame) -> u64 {
        match f {
            ClientFrame::Broadcast { id, .. } | ClientFrame::Direct { id, .. } => *id,
            _ => 0,
        }
    }

    /// The flake this fixes: a member's admission refused for rate, its engine messages
    /// handed after it sent at once, the newcomer dropping them as a stranger's.
    #[test]
    fn frames_handed_after_a_refused_one_wait_for_it_and_all_go_in_order() {
        let mut out = Outbox::new(None);
        let t0 = Instant::now();
        out.push(broadcast(1));
        out.push(broadcast(2));
        let sent = out.ready(t0);
        assert_eq!(payloads(&sent), [1, 2]);
        // Both refused, the second first (the relay answers in order, but a test of the
        // worst case costs nothing).
        out.refused(Some(id_of(&sent[1])), RefuseReason::RateLimited, 3, 300, t0);
        out.refused(Some(id_of(&sent[0])), RefuseReason::RateLimited, 3, 200, t0);
        out.push(broadcast(3));
        assert!(out.ready(t0).is_empty(), "nothing goes during the wait");
        assert!(
            out.ready(t0 + Duration::from_millis(250)).is_empty(),
            "nor before the longest wait is over"
        );
        assert_eq!(out.next_wake(), Some(t0 + Duration::from_millis(300)));
        let again = out.ready(t0 + Duration::from_millis(300));
        assert_eq!(payloads(&again), [1, 2, 3]);
        assert!(id_of(&again[0]) > id_of(&sent[1]), "fresh ids");
        assert_eq!(out.refused, 2);
    }

    #[test]
    fn frames_go_at_the_relays_announced_pace_in_order() {
        // One message a second, two at once: the third waits about a second (the test
        // takes microseconds, far inside the refill).
        let limits = Limits {
            messages_per_second: 1,
            burst: 2,
            ..Limits::default()
        };
        let mut out = Outbox::new(Some(&limits));
        let t0 = Instant::now();
        for n in 1..=4 {
            out.push(broadcast(n));
        }
        assert_eq!(payloads(&out.ready(t0)), [1, 2]);
        let wake = out.next_wake().expect("frames wait");
        assert!(
            wake > t0 + Duration::from_millis(500) && wake <= t0 + Duration::from_secs(1),
            "{:?}",
            wake - t0
        );
        out.push(broadcast(5));
        assert!(
            out.ready(t0).is_empty(),
            "a later frame does not jump the queue"
        );
    }

    #[test]
    fn a_byte_rate_paces_big_frames() {
        let limits = Limits {
            bytes_per_second: 25,
            ..Limits::default()
        };
        let mut out = Outbox::new(Some(&limits));
        let t0 = Instant::now();
        for n in 1..=3 {
            out.push(broadcast(n));
        }
        // 10 bytes each, 25 a second: two go.
        assert_eq!(payloads(&out.ready(t0)), [1, 2]);
        assert!(out.next_wake().is_some());
    }

    #[test]
    fn direct_messages_to_a_peer_that_left_are_dropped_and_counted() {
        let mut out = Outbox::new(None);
        out.peer_left(PeerId(9));
        out.push(ClientFrame::Direct {
            id: 0,
            to: PeerId(9),
            payload: vec![1],
        });
        out.push(ClientFrame::Direct {
            id: 0,
            to: PeerId(8),
            payload: vec![2],
        });
        let now = Instant::now();
        assert_eq!(payloads(&out.ready(now)), [2]);
        assert_eq!(out.to_left_peers, 1);
        // A refusal for the same reason is counted, neither warned about nor resent.
        out.refused(Some(7), RefuseReason::UnknownPeer, 0, 0, now);
        assert_eq!(out.to_left_peers, 2);
        assert_eq!(out.next_wake(), None);
        // Only the latest leaves are remembered.
        for p in 100..100 + LEFT_PEERS_KEPT as u64 {
            out.peer_left(PeerId(p));
        }
        for to in [9, 100] {
            out.push(ClientFrame::Direct {
                id: 0,
                to: PeerId(to),
                payload: vec![3],
            });
        }
        assert_eq!(
            payloads(&out.ready(now)),
            [3],
            "the oldest leave is forgotten"
        );
        assert_eq!(out.to_left_peers, 3);
    }
}
