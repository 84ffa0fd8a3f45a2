//! How fast a peer's automerge bytes are handed to automerge. Each item is bounded
//! (`MAX_INFLATED_ITEM`, measured before automerge sees it), but a message may hold many
//! items: fifteen just under the bound in one 1 MB message held the main loop 1.4–2.6 s
//! (docs/benchmarks.md, "An engine under a decompression bomb"). So each sender also has
//! a budget of inflated bytes over time ([`BURST_MIB`] at once, then [`MIB_PER_SECOND`]):
//! an item over it waits, with everything the sender sends after it (order is kept: a
//! pull's end comes after its answer), and is handled when the budget has room again, at
//! a later tick. Nothing is refused for being large: honest messages can inflate far past
//! any fixed bound (files of zeros compress a thousandfold), they only wait.
//!
//! What waits is bounded too ([`MAX_WAITING_BYTES`] of a sender's items as they came,
//! [`MAX_WAITING_ALL_BYTES`] for everyone): past that an item is dropped and counted
//! (`oversized_items`), and anti-entropy brings what an honest peer meant later.
//!
//! governor's GCRA, keyed by sender, on the engine's clock (as `limit.rs`).

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU32;

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use super::*;

/// Inflated MiB a sender's items may cost at once (two items at the bound)...
pub(super) const BURST_MIB: u32 = 128;
/// ... and then each second.
pub(super) const MIB_PER_SECOND: u32 = 64;
/// The budget is counted in KiB (a small item costs what it inflates to, not a MiB).
const KIB_PER_MIB: u32 = 1024;
/// A sender's waiting items, as they came (compressed), at most.
pub(super) const MAX_WAITING_BYTES: usize = 32 << 20;
/// Everyone's waiting items, at most.
pub(super) const MAX_WAITING_ALL_BYTES: usize = 128 << 20;

type Limiter = RateLimiter<
    DeviceId,
    HashMapStateStore<DeviceId, BuildHasherDefault<DefaultHasher>>,
    FakeRelativeClock,
    NoOpMiddleware<<FakeRelativeClock as Clock>::Instant>,
>;

/// An item waiting for its sender's budget: what it still owes of its cost in KiB
/// (`None` until it is measured, when its turn comes), its size as it came, the item.
type Waiting = (Option<u32>, usize, Item);

/// What [`Pacer::next`] gives back.
pub(super) enum Next {
    /// An item that has paid its cost: to be handled.
    Ready(Item),
    /// An item that waited as it came: to be measured, then put back first in line
    /// (`Pacer::put_back`) or refused.
    Unmeasured(Item),
}

pub(super) struct Pacer {
    clock: FakeRelativeClock,
    at_ms: Option<i64>,
    limiter: Limiter,
    waiting: BTreeMap<DeviceId, VecDeque<Waiting>>,
    /// Bytes waiting, by sender and in all.
    bytes: BTreeMap<DeviceId, usize>,
    all_bytes: usize,
    /// Senders an item of which was dropped while others of theirs wait (see `wait`).
    dropping: BTreeSet<DeviceId>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("waiting", &self.waiting.len())
            .field("all_bytes", &self.all_bytes)
            .finish_non_exhaustive()
    }
}

/// What an item weighs in the waiting bound: its automerge bytes and content as they came.
pub(super) fn size(item: &Item) -> usize {
    match item {
        Item::Changes { changes, .. } => changes.iter().map(Vec::len).sum(),
        Item::Whole { bytes, .. } => bytes.len(),
        Item::Adopt { bytes, content, .. } => bytes.len() + content.len(),
        Item::Sealed { item, seals } => {
            let inner = match item {
                wire::Sealable::Changes { changes, .. } => changes.iter().map(Vec::len).sum(),
                wire::Sealable::Whole { bytes, .. } => bytes.len(),
                wire::Sealable::Adopt { bytes, content, .. } => bytes.len() + content.len(),
            };
            inner + seals.iter().map(|s| 80 + 32 * s.heads.len()).sum::<usize>()
        }
        Item::Pull { entries, .. } | Item::Ack { entries } => entries.len() * 64,
        _ => 64,
    }
}

impl Pacer {
    pub(super) fn new() -> Pacer {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_second(nz(MIB_PER_SECOND * KIB_PER_MIB))
            .allow_burst(nz(BURST_MIB * KIB_PER_MIB));
        Pacer {
            limiter: RateLimiter::hashmap_with_clock_and_hasher(
                quota,
                clock.clone(),
                BuildHasherDefault::default(),
            ),
            clock,
            at_ms: None,
            waiting: BTreeMap::new(),
            bytes: BTreeMap::new(),
            all_bytes: 0,
            dropping: BTreeSet::new(),
        }
    }

    /// Moves the clock to the engine's time (never back).
    pub(super) fn set_time(&mut self, now_ms: i64) {
        match self.at_ms {
            Some(t) if now_ms > t => {
                self.clock
                    .advance(std::time::Duration::from_millis(now_ms.abs_diff(t)));
                self.at_ms = Some(now_ms);
            }
            Some(_) => {}
            None => self.at_ms = Some(now_ms),
        }
    }

    /// What of `kib` an item of `from` still owes once it pays what the budget has now:
    /// all of it while earlier items of its wait (order is kept), none when it may go.
    fn owes(&mut self, from: &DeviceId, kib: u32) -> u32 {
        if self.waiting.contains_key(from) {
            return kib;
        }
        self.pay(from, kib)
    }

    /// Pays `kib` from the budget of `from` as far as it goes, a burst at most at a
    /// time: an item that costs several bursts (a change claiming millions of
    /// deletions) waits for a full budget several times over, so that its work is paced
    /// like everything else. Returns what is left to pay.
    fn pay(&mut self, from: &DeviceId, kib: u32) -> u32 {
        let mut left = kib;
        while left > 0 {
            let part = left.min(BURST_MIB * KIB_PER_MIB);
            if !self.take(from, part) {
                break;
            }
            left -= part;
        }
        left
    }

    fn take(&mut self, from: &DeviceId, kib: u32) -> bool {
        match NonZeroU32::new(kib) {
            None => true,
            // `pay` never asks more than the burst, so capacity is never short; if it
            // ever were, the item goes now rather than never.
            Some(n) => !matches!(self.limiter.check_key_n(from, n), Ok(Err(_))),
        }
    }

    /// Puts an item to wait, measured (`Some` of what it owes) or not; false (nothing
    /// kept) past the bounds. Once an item of a sender is dropped, so is everything it
    /// sends until what waits of it has gone: a later item must never go before an
    /// earlier one (a pull's end before a dropped part of its answer would end a
    /// catch-up with a document missing).
    fn wait(&mut self, from: DeviceId, owed: Option<u32>, item: Item) -> bool {
        let n = size(&item);
        let mine = self.bytes.get(&from).copied().unwrap_or(0);
        if self.dropping.contains(&from)
            || mine + n > MAX_WAITING_BYTES
            || self.all_bytes + n > MAX_WAITING_ALL_BYTES
        {
            if self.waiting.contains_key(&from) {
                self.dropping.insert(from);
            }
            return false;
        }
        self.bytes.insert(from, mine + n);
        self.all_bytes += n;
        self.waiting
            .entry(from)
            .or_default()
            .push_back((owed, n, item));
        true
    }

    /// Puts a measured item back first in line (it came out of [`Pacer::next`]
    /// unmeasured): it was counted in the bounds when it came.
    fn put_back(&mut self, from: DeviceId, owed: u32, item: Item) {
        let n = size(&item);
        *self.bytes.entry(from).or_default() += n;
        self.all_bytes += n;
        self.waiting
            .entry(from)
            .or_default()
            .push_front((Some(owed), n, item));
    }

    /// The next waiting item of `from`: one that has paid its cost, or one to measure.
    fn next(&mut self, from: &DeviceId) -> Option<Next> {
        let owed = self.waiting.get(from)?.front()?.0;
        if let Some(owed) = owed {
            let left = self.pay(from, owed);
            if left > 0 {
                if let Some(front) = self.waiting.get_mut(from).and_then(|q| q.front_mut()) {
                    front.0 = Some(left);
                }
                return None;
            }
        }
        let queue = self.waiting.get_mut(from)?;
        let (_, n, item) = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(from);
            self.dropping.remove(from);
        }
        if let Some(b) = self.bytes.get_mut(from) {
            *b = b.saturating_sub(n);
            if *b == 0 {
                self.bytes.remove(from);
            }
        }
        self.all_bytes = self.all_bytes.saturating_sub(n);
        Some(match owed {
            Some(_) => Next::Ready(item),
            None => Next::Unmeasured(item),
        })
    }

    /// Whether items of `from` wait.
    pub(super) fn has_waiting(&self, from: &DeviceId) -> bool {
        self.waiting.contains_key(from)
    }

    fn senders(&self) -> Vec<DeviceId> {
        self.waiting.keys().copied().collect()
    }
}

impl Engine {
    /// Handles `item` of `from` now, or puts it to wait for the sender's budget (see the
    /// module docs). `cost` is what its automerge bytes inflate to, and more for
    /// operations that carry no bytes and seals to check (`peers.rs`).
    pub(super) fn paced_item(
        &mut self,
        from: DeviceId,
        item: Item,
        cost: u64,
        store: &mut dyn DocStore,
        acks: &mut Vec<(DocId, Heads)>,
    ) {
        let owed = self.pacer.owes(&from, kib(cost));
        if owed == 0 {
            return self.item_now(from, item, store, acks);
        }
        if !self.pacer.wait(from, Some(owed), item) {
            self.state.counters.oversized_items += 1;
            self.state_dirty = true;
        }
    }

    /// Puts `item` to wait behind its sender's waiting items, as it came (measured when
    /// its turn comes).
    pub(super) fn wait_unmeasured(&mut self, from: DeviceId, item: Item) {
        if !self.pacer.wait(from, None, item) {
            self.state.counters.oversized_items += 1;
            self.state_dirty = true;
        }
    }

    /// Handles the waiting items whose senders' budgets have room again, in order.
    pub(super) fn release_waiting(&mut self, store: &mut dyn DocStore) {
        for from in self.pacer.senders() {
            let mut acks = Vec::new();
            while let Some(next) = self.pacer.next(&from) {
                match next {
                    Next::Ready(item) => self.item_now(from, item, store, &mut acks),
                    Next::Unmeasured(item) => {
                        if let Some((item, cost)) = self.checked(item) {
                            self.pacer.put_back(from, kib(cost), item);
                        }
                    }
                }
            }
            if !acks.is_empty() {
                self.send(from, Item::Ack { entries: acks });
            }
        }
    }
}

/// A cost in bytes as the budget counts it (KiB, rounded up).
fn kib(cost: u64) -> u32 {
    u32::try_from(cost.div_ceil(1 << 10)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small items cost what they inflate to: a burst of thousands of notes (a few KiB
    /// each) never waits, while items near the bound do after two.
    #[test]
    fn the_budget_counts_bytes_not_items() {
        let mut p = Pacer::new();
        p.set_time(0);
        let from = DeviceId([1; 32]);
        assert!((0..10_000).all(|_| p.owes(&from, 4) == 0));
        let big = DeviceId([2; 32]);
        let near_bound = 63 * KIB_PER_MIB;
        assert_eq!(p.owes(&big, near_bound), 0);
        assert_eq!(p.owes(&big, near_bound), 0);
        assert_eq!(p.owes(&big, near_bound), near_bound);
        // A second later there is room for one more.
        p.set_time(1_000);
        assert_eq!(p.owes(&big, near_bound), 0);
    }

    /// An item that costs several bursts (a change claiming millions of deletions)
    /// waits for a full budget as many times; it never goes at once.
    #[test]
    fn an_item_over_the_burst_pays_burst_by_burst() {
        let mut p = Pacer::new();
        p.set_time(0);
        let from = DeviceId([3; 32]);
        let burst = BURST_MIB * KIB_PER_MIB;
        assert_eq!(p.owes(&from, 4), 0);
        // Three bursts' worth: nothing now (4 KiB are spent), a burst when the budget is
        // full again (1 s later), then one every 2 s (64 MiB a second).
        let owed = p.owes(&from, 3 * burst);
        assert_eq!(owed, 3 * burst);
        assert!(p.wait(from, Some(owed), Item::Ack { entries: vec![] }));
        let mut released_at = None;
        for s in 1..=10 {
            p.set_time(s * 1_000);
            if p.next(&from).is_some() {
                released_at = Some(s);
                break;
            }
        }
        assert_eq!(released_at, Some(5));
    }

    /// Past the waiting bound an item is dropped, and so is everything its sender sends
    /// after it until what waited has gone: a later item never goes before an earlier.
    #[test]
    fn after_a_dropped_item_nothing_of_its_sender_jumps_the_queue() {
        let mut p = Pacer::new();
        p.set_time(0);
        let from = DeviceId([4; 32]);
        let burst = BURST_MIB * KIB_PER_MIB;
        let item = |bytes: usize| Item::Whole {
            doc: DocId::Index,
            bytes: vec![0; bytes],
        };
        // Spend the budget, then fill what may wait.
        assert_eq!(p.owes(&from, burst), 0);
        assert!(p.wait(from, Some(1), item(MAX_WAITING_BYTES - 1024)));
        // Too large to wait: dropped; a small one after it is dropped too.
        assert!(!p.wait(from, Some(1), item(4096)));
        assert!(!p.wait(from, Some(1), item(16)));
        // Once what waited has gone, its items are taken again.
        p.set_time(2_000);
        assert!(p.next(&from).is_some());
        assert!(p.next(&from).is_none());
        assert!(p.wait(from, Some(1), item(16)));
    }

    /// An item that waited as it came comes back to be measured when its turn comes,
    /// and once measured and put back first in line, pays before anything after it.
    #[test]
    fn an_unmeasured_item_is_measured_in_its_turn() {
        let mut p = Pacer::new();
        p.set_time(0);
        let from = DeviceId([5; 32]);
        let burst = BURST_MIB * KIB_PER_MIB;
        assert_eq!(p.owes(&from, burst), 0);
        assert!(p.wait(from, Some(4), Item::Ack { entries: vec![] }));
        assert!(p.wait(
            from,
            None,
            Item::Hello {
                digest: [1; 32],
                reply: false
            }
        ));
        assert!(p.wait(from, None, Item::Ack { entries: vec![] }));
        p.set_time(2_000);
        assert!(matches!(p.next(&from), Some(Next::Ready(Item::Ack { .. }))));
        let Some(Next::Unmeasured(item)) = p.next(&from) else {
            panic!("the second item comes back to be measured");
        };
        assert!(matches!(item, Item::Hello { .. }));
        // Measured at more than is left: it waits first in line, the third behind it.
        p.put_back(from, burst, item);
        assert!(p.next(&from).is_none());
        p.set_time(4_000);
        assert!(matches!(
            p.next(&from),
            Some(Next::Ready(Item::Hello { .. }))
        ));
        assert!(matches!(
            p.next(&from),
            Some(Next::Unmeasured(Item::Ack { .. }))
        ));
    }
}
