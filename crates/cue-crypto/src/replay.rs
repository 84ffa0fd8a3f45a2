//! Sequence numbers: handing them out without ever reusing one, and checking them on
//! receipt so that a replayed envelope is dropped and a withheld one is noticed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::{OpenError, Stream};
use crate::keys::DeviceId;

/// How far behind the highest sequence number a late envelope is still accepted (once).
/// The relay forwards one connection's frames in order, so reordering comes only from
/// resends after a refusal; 1024 covers ten seconds at the relay's default rate.
pub const REPLAY_WINDOW: u64 = 1024;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// A broadcast stream skipped ahead while sender and receiver were both connected: the
/// relay (or the network) may have withheld `expected .. got`. The envelope at `got` was
/// accepted; the engine should ask the sender for a resync and say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Whose broadcast stream.
    pub sender: DeviceId,
    /// The sequence number that should have come next.
    pub expected: u64,
    /// The sequence number that came.
    pub got: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    highest: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`) set: `highest - i` was seen.
    seen: [u64; WORDS],
    /// Whether a jump past `highest + 1` is a gap worth reporting. False after a
    /// disconnection of either side, until the next envelope sets a new baseline.
    armed: bool,
}

impl Window {
    fn new(seq: u64) -> Self {
        let mut seen = [0; WORDS];
        seen[0] = 1;
        Self {
            highest: seq,
            seen,
            armed: true,
        }
    }

    fn bit(&self, i: u64) -> bool {
        self.seen[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, i: u64) {
        self.seen[(i / 64) as usize] |= 1 << (i % 64);
    }

    /// Moves the window forward by `k`: what was `highest - i` becomes bit `i + k`.
    fn shift(&mut self, k: u64) {
        if k >= REPLAY_WINDOW {
            self.seen = [0; WORDS];
            return;
        }
        let words = (k / 64) as usize;
        let bits = (k % 64) as u32;
        for j in (0..WORDS).rev() {
            let lo = j.checked_sub(words).map_or(0, |s| self.seen[s]);
            let carry = match j.checked_sub(words + 1) {
                Some(s) if bits > 0 => self.seen[s] >> (64 - bits),
                _ => 0,
            };
            self.seen[j] = lo << bits | carry;
        }
    }
}

/// Per (sender, stream): the highest sequence number seen and which of the
/// [`REPLAY_WINDOW`] before it were seen. Serialisable, so the daemon persists it with the
/// store and a restart does not reopen the door to replays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayGuard {
    #[serde(with = "entries")]
    windows: BTreeMap<(DeviceId, Stream), Window>,
}

/// Maps with tuple keys are not valid JSON objects; store them as a list of pairs so
/// the guard serialises in any serde format.
mod entries {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<(DeviceId, Stream), Window>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(DeviceId, Stream), Window>, D::Error> {
        let pairs = Vec::<((DeviceId, Stream), Window)>::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

impl ReplayGuard {
    /// An empty guard: the first envelope of each stream sets its baseline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `seq` from `sender` on `stream`. Rejects an exact replay and anything older
    /// than the window (it cannot tell those apart); accepts a late envelope inside the
    /// window once. Reports a [`Gap`] when a broadcast stream skips ahead while armed.
    pub fn accept(
        &mut self,
        sender: DeviceId,
        stream: Stream,
        seq: u64,
    ) -> Result<Option<Gap>, OpenError> {
        let replayed = OpenError::Replayed {
            sender,
            stream,
            seq,
        };
        let Some(w) = self.windows.get_mut(&(sender, stream)) else {
            self.windows.insert((sender, stream), Window::new(seq));
            return Ok(None);
        };
        if seq > w.highest {
            let jump = seq - w.highest;
            let gap = (w.armed && jump > 1 && stream == Stream::Broadcast).then(|| Gap {
                sender,
                expected: w.highest + 1,
                got: seq,
            });
            w.shift(jump);
            w.set(0);
            w.highest = seq;
            w.armed = true;
            return Ok(gap);
        }
        let back = w.highest - seq;
        if back >= REPLAY_WINDOW || w.bit(back) {
            return Err(replayed);
        }
        w.set(back);
        Ok(None)
    }

    /// This device lost its connection to the relay: whatever was sent meanwhile is gone
    /// for good (the relay keeps nothing), so the next jump in any stream is expected.
    pub fn on_disconnect(&mut self) {
        for w in self.windows.values_mut() {
            w.armed = false;
        }
    }

    /// `sender` left the room (or crashed): the next jump in its streams is expected.
    pub fn on_peer_left(&mut self, sender: &DeviceId) {
        for ((s, _), w) in self.windows.iter_mut() {
            if s == sender {
                w.armed = false;
            }
        }
    }

    /// Drops all state about `sender` (a removed member).
    pub fn forget(&mut self, sender: &DeviceId) {
        self.windows.retain(|(s, _), _| s != sender);
    }

    /// Keeps at most `max` windows, dropping those whose highest number is lowest (where
    /// senders number from their clock, as in the lobby: the senders heard from longest
    /// ago). For a guard anyone may fill with new keys: each costs a window for good.
    /// A sender dropped can have one old envelope of its taken again.
    pub fn bound(&mut self, max: usize) {
        while self.windows.len() > max {
            let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.highest)
                .map(|(k, _)| *k)
            else {
                return;
            };
            self.windows.remove(&oldest);
        }
    }

    /// The highest sequence number seen from `sender` on `stream`.
    pub fn highest(&self, sender: &DeviceId, stream: &Stream) -> Option<u64> {
        self.windows.get(&(*sender, *stream)).map(|w| w.highest)
    }
}

/// Default reservation size: one durable write per 1,000 envelopes sent.
pub const DEFAULT_SEQ_BLOCK: u64 = 1000;

/// What [`SeqAllocator::allocate`] asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SeqNext {
    /// Use this sequence number.
    Ready(u64),
    /// Durably store this high-water mark (write and fsync), call
    /// [`SeqAllocator::persisted`] with it, then ask again.
    PersistFirst(u64),
    /// All 2^64 numbers are used; the device needs a new key. Unreachable in practice.
    Exhausted,
}

/// Hands out sequence numbers for one (device, stream) from a block reserved on disk, so
/// a number is never reused after a crash: the persisted mark is always above every
/// number handed out, and a restart resumes from it (skipping the unused rest of the
/// block, which receivers see as a gap across a disconnection: normal).
///
/// Use one allocator for the broadcast stream (receivers check it for gaps) and one
/// per recipient or one shared by all direct streams (a shared counter is still strictly
/// increasing on each stream, and direct streams are not checked for gaps).
///
/// ```
/// # use cue_crypto::{SeqAllocator, SeqNext};
/// let mut on_disk = 0; // what the daemon stored, 0 for a new device
/// let mut seqs = SeqAllocator::resume(on_disk);
/// let seq = loop {
///     match seqs.allocate() {
///         SeqNext::Ready(n) => break n,
///         SeqNext::PersistFirst(mark) => { on_disk = mark; seqs.persisted(mark) }
///         SeqNext::Exhausted => unreachable!(),
///     }
/// };
/// assert_eq!((seq, on_disk), (0, 1000));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqAllocator {
    next: u64,
    reserved_until: u64,
    block: u64,
}

impl SeqAllocator {
    /// Resumes from the persisted high-water mark (0 for a new device), with blocks of
    /// [`DEFAULT_SEQ_BLOCK`].
    pub fn resume(persisted: u64) -> Self {
        Self::with_block(persisted, DEFAULT_SEQ_BLOCK)
    }

    /// Like [`SeqAllocator::resume`] with a chosen block size (at least 1).
    pub fn with_block(persisted: u64, block: u64) -> Self {
        Self {
            next: persisted,
            reserved_until: persisted,
            block: block.max(1),
        }
    }

    /// The next number, or what must be persisted before it may be used.
    pub fn allocate(&mut self) -> SeqNext {
        if self.next < self.reserved_until {
            let n = self.next;
            self.next += 1;
            return SeqNext::Ready(n);
        }
        if self.next == u64::MAX {
            return SeqNext::Exhausted;
        }
        SeqNext::PersistFirst(self.next.saturating_add(self.block))
    }

    /// The caller has durably stored `mark`; numbers below it may now be handed out.
    pub fn persisted(&mut self, mark: u64) {
        self.reserved_until = self.reserved_until.max(mark);
    }

    /// The next number that would be handed out (for status and tests).
    pub fn peek(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const A: DeviceId = DeviceId([1; 32]);

    #[test]
    fn allocator_never_reuses_across_crashes() {
        let mut disk = 0;
        let mut used = BTreeSet::new();
        for round in 0..5u64 {
            let mut a = SeqAllocator::with_block(disk, 7);
            // Crash after a varying number of messages.
            for _ in 0..(round * 5 + 3) {
                let n = loop {
                    match a.allocate() {
                        SeqNext::Ready(n) => break n,
                        SeqNext::PersistFirst(m) => {
                            assert!(m > disk);
                            disk = m;
                            a.persisted(m);
                        }
                        SeqNext::Exhausted => unreachable!(),
                    }
                };
                assert!(n < disk);
                assert!(used.insert(n), "reused {n}");
            }
        }
    }

    #[test]
    fn allocator_exhaustion_is_reported() {
        let mut a = SeqAllocator::resume(u64::MAX - 1);
        let SeqNext::PersistFirst(m) = a.allocate() else {
            panic!()
        };
        assert_eq!(m, u64::MAX);
        a.persisted(m);
        assert_eq!(a.allocate(), SeqNext::Ready(u64::MAX - 1));
        assert_eq!(a.allocate(), SeqNext::Exhausted);
    }

    #[test]
    fn replays_rejected_reordering_accepted_once() {
        let mut g = ReplayGuard::new();
        assert_eq!(g.accept(A, Stream::Broadcast, 10), Ok(None));
        assert!(g.accept(A, Stream::Broadcast, 10).is_err());
        assert_eq!(g.accept(A, Stream::Broadcast, 11), Ok(None));
        let gap = g.accept(A, Stream::Broadcast, 14).unwrap();
        assert_eq!(
            gap,
            Some(Gap {
                sender: A,
                expected: 12,
                got: 14
            })
        );
        assert_eq!(g.accept(A, Stream::Broadcast, 12), Ok(None));
        assert!(g.accept(A, Stream::Broadcast, 12).is_err());
        assert!(g.accept(A, Stream::Broadcast, 0).is_ok());
        g.accept(A, Stream::Broadcast, 5000).unwrap();
        assert!(
            g.accept(A, Stream::Broadcast, 5000 - REPLAY_WINDOW)
                .is_err()
        );
        assert!(
            g.accept(A, Stream::Broadcast, 5000 - REPLAY_WINDOW + 1)
                .is_ok()
        );
        // Streams are independent.
        assert_eq!(g.accept(A, Stream::Direct(A), 10), Ok(None));
    }

    #[test]
    fn a_bounded_guard_keeps_the_senders_heard_from_last() {
        let mut g = ReplayGuard::new();
        for i in 0..10u8 {
            g.accept(DeviceId([i; 32]), Stream::Broadcast, 1_000 + u64::from(i))
                .unwrap();
        }
        g.bound(4);
        assert_eq!(g.windows.len(), 4);
        assert_eq!(
            g.highest(&DeviceId([9; 32]), &Stream::Broadcast),
            Some(1_009)
        );
        assert_eq!(g.highest(&DeviceId([5; 32]), &Stream::Broadcast), None);
        // Those kept still refuse their replays.
        assert!(
            g.accept(DeviceId([9; 32]), Stream::Broadcast, 1_009)
                .is_err()
        );
    }

    #[test]
    fn gaps_across_disconnection_are_normal() {
        let mut g = ReplayGuard::new();
        g.accept(A, Stream::Broadcast, 1).unwrap();
        g.on_disconnect();
        assert_eq!(g.accept(A, Stream::Broadcast, 50), Ok(None));
        assert!(g.accept(A, Stream::Broadcast, 52).unwrap().is_some());
        g.on_peer_left(&A);
        assert_eq!(g.accept(A, Stream::Broadcast, 2000), Ok(None));
        // Direct streams never report gaps.
        g.accept(A, Stream::Direct(A), 1).unwrap();
        assert_eq!(g.accept(A, Stream::Direct(A), 9), Ok(None));
    }

    #[test]
    fn guard_survives_serialisation() {
        let mut g = ReplayGuard::new();
        g.accept(A, Stream::Broadcast, 7).unwrap();
        g.accept(A, Stream::Direct(DeviceId([2; 32])), 3).unwrap();
        let bytes = postcard::to_allocvec(&g).unwrap();
        let mut back: ReplayGuard = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, g);
        assert!(back.accept(A, Stream::Broadcast, 7).is_err());
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<ReplayGuard>(&json).unwrap(), g);
    }

    proptest! {
        /// The bitmap window behaves exactly like a set of seen numbers restricted to the
        /// last REPLAY_WINDOW below the maximum.
        #[test]
        fn guard_matches_model(seqs in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut g = ReplayGuard::new();
            let mut seen = BTreeSet::new();
            let mut max: Option<u64> = None;
            for s in seqs {
                let model_ok = match max {
                    None => true,
                    Some(m) => !seen.contains(&s) && (s > m || m - s < REPLAY_WINDOW),
                };
                let got = g.accept(A, Stream::Broadcast, s);
                prop_assert_eq!(got.is_ok(), model_ok, "seq {}", s);
                if model_ok {
                    seen.insert(s);
                    max = Some(max.map_or(s, |m| m.max(s)));
                }
            }
        }
    }
}
