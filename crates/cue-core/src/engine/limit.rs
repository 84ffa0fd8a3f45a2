//! How often a peer's pulls are answered. A pull is a few bytes, but one that lists
//! every document (`complete`), asks for whole ones (`full`) or names many makes us read
//! and send the whole workspace: each asker gets [`HEAVY_PULL_BURST`] of those, then one
//! every [`HEAVY_PULL_PERIOD_MS`]. A heavy pull over that waits, the latest one per asker
//! (an honest peer's catch-up is answered late, well within its pull timeout, never
//! lost); a light one over its own allowance is dropped (the asker asks again with its
//! next changes, and anti-entropy heals the rest). Both are counted (`excess_pulls`).
//!
//! A member can make new device ids (it may invite), each with its own allowance, so
//! heavy pulls are also bounded for all askers together: [`HEAVY_PULLS_ALL_BURST`] at
//! once, then one every [`HEAVY_PULLS_ALL_PERIOD_MS`]; a pull over that waits too.
//!
//! The limiters are governor's (GCRA), keyed by asker, on a clock the engine sets from its
//! inputs' time: no clock is read, and a seed replays.

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use super::*;

/// Heavy pulls answered at once per asker, before the period applies.
pub(super) const HEAVY_PULL_BURST: u32 = 3;
/// Then one heavy pull per asker this often (well under the asker's 60 s pull timeout).
pub(super) const HEAVY_PULL_PERIOD_MS: u64 = 10_000;
/// Heavy pulls answered at once for all askers together (a team restarting together, a
/// few peers catching up), before the period applies.
pub(super) const HEAVY_PULLS_ALL_BURST: u32 = 8;
/// Then one heavy pull (any asker's) this often.
pub(super) const HEAVY_PULLS_ALL_PERIOD_MS: u64 = 2_000;
/// A pull naming more documents than this without `complete` costs as much as one that
/// names them all: it is heavy.
pub(super) const LIGHT_PULL_DOCS: usize = 16;
/// Light pulls (missing dependencies of a document or a few) per asker: a burst, then
/// this many a second.
const LIGHT_PULL_BURST: u32 = 64;
const LIGHT_PULLS_PER_SECOND: u32 = 8;

type Limiter = RateLimiter<
    DeviceId,
    // A fixed hasher: the engine draws no randomness (the map is only looked up).
    HashMapStateStore<DeviceId, BuildHasherDefault<DefaultHasher>>,
    FakeRelativeClock,
    NoOpMiddleware<<FakeRelativeClock as Clock>::Instant>,
>;

/// A heavy pull waiting for its asker's allowance.
#[derive(Debug, Clone)]
pub(super) struct DeferredPull {
    pub(super) id: u64,
    pub(super) full: bool,
    pub(super) complete: bool,
    pub(super) entries: Vec<(DocId, Heads)>,
    /// When it was put to wait (an order): the waiting are answered oldest first, so that
    /// askers who keep asking go to the back.
    pub(super) queued: u64,
}

pub(super) struct PullLimiter {
    clock: FakeRelativeClock,
    /// The engine time the clock was last set to.
    at_ms: Option<i64>,
    heavy: Limiter,
    light: Limiter,
    /// Heavy pulls of all askers together.
    heavy_all: RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        FakeRelativeClock,
        NoOpMiddleware<<FakeRelativeClock as Clock>::Instant>,
    >,
    /// Askers that took from their own heavy allowance, then found none shared left.
    paid: BTreeSet<DeviceId>,
}

impl std::fmt::Debug for PullLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullLimiter")
            .field("at_ms", &self.at_ms)
            .finish_non_exhaustive()
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl PullLimiter {
    pub(super) fn new() -> PullLimiter {
        let clock = FakeRelativeClock::default();
        let heavy = Quota::with_period(Duration::from_millis(HEAVY_PULL_PERIOD_MS))
            .map(|q| q.allow_burst(nonzero(HEAVY_PULL_BURST)))
            .unwrap_or_else(|| Quota::per_minute(nonzero(6)));
        let light = Quota::per_second(nonzero(LIGHT_PULLS_PER_SECOND))
            .allow_burst(nonzero(LIGHT_PULL_BURST));
        let heavy_all = Quota::with_period(Duration::from_millis(HEAVY_PULLS_ALL_PERIOD_MS))
            .map(|q| q.allow_burst(nonzero(HEAVY_PULLS_ALL_BURST)))
            .unwrap_or_else(|| Quota::per_minute(nonzero(30)));
        PullLimiter {
            heavy: RateLimiter::hashmap_with_clock_and_hasher(
                heavy,
                clock.clone(),
                BuildHasherDefault::default(),
            ),
            light: RateLimiter::hashmap_with_clock_and_hasher(
                light,
                clock.clone(),
                BuildHasherDefault::default(),
            ),
            heavy_all: RateLimiter::direct_with_clock(heavy_all, clock.clone()),
            paid: BTreeSet::new(),
            clock,
            at_ms: None,
        }
    }

    /// Moves the limiter's clock to the engine's time (never back: a driver's clock that
    /// steps back only makes pulls wait longer).
    pub(super) fn set_time(&mut self, now_ms: i64) {
        match self.at_ms {
            Some(t) if now_ms > t => {
                self.clock
                    .advance(Duration::from_millis(now_ms.abs_diff(t)));
                self.at_ms = Some(now_ms);
            }
            Some(_) => {}
            None => self.at_ms = Some(now_ms),
        }
    }

    /// Whether `from` may have a pull of this weight answered now (taking it if so).
    /// A heavy pull takes from the asker's allowance first, so that an asker over its own
    /// never uses up what all askers share; one that got its own but not the shared one
    /// keeps what it took (`paid`) for its next try.
    pub(super) fn allow(&mut self, from: &DeviceId, heavy: bool) -> bool {
        if !heavy {
            return self.light.check_key(from).is_ok();
        }
        if !self.paid.contains(from) && self.heavy.check_key(from).is_err() {
            return false;
        }
        if self.heavy_all.check().is_ok() {
            self.paid.remove(from);
            true
        } else {
            self.paid.insert(*from);
            false
        }
    }

    /// Forgets askers whose allowance is whole again.
    pub(super) fn forget_idle(&self) {
        self.heavy.retain_recent();
        self.light.retain_recent();
    }
}

impl Engine {
    /// A pull from `from`: answered now if its asker's allowance has room (see the
    /// module docs), else kept (heavy) or dropped (light), and counted.
    pub(super) fn pull_asked(
        &mut self,
        from: DeviceId,
        pull: DeferredPull,
        store: &mut dyn DocStore,
    ) {
        let heavy = pull.full || pull.complete || pull.entries.len() > LIGHT_PULL_DOCS;
        if self.pull_limits.allow(&from, heavy) {
            if heavy {
                // Its latest pull supersedes one that was waiting.
                self.deferred_pulls.remove(&from);
            }
            self.on_pull(from, pull.id, pull.full, pull.complete, pull.entries, store);
            return;
        }
        self.state.counters.excess_pulls += 1;
        self.state_dirty = true;
        if heavy {
            self.deferred_queue += 1;
            let queued = self.deferred_queue;
            self.deferred_pulls
                .insert(from, DeferredPull { queued, ..pull });
        }
    }

    /// Answers the waiting pulls whose askers have room again.
    pub(super) fn answer_deferred_pulls(&mut self, store: &mut dyn DocStore) {
        let mut askers: Vec<(u64, DeviceId)> = self
            .deferred_pulls
            .iter()
            .map(|(d, p)| (p.queued, *d))
            .collect();
        askers.sort();
        let askers = askers.into_iter().map(|(_, d)| d);
        for from in askers {
            if !self.peers.get(&from).is_some_and(|p| p.online) {
                self.deferred_pulls.remove(&from);
                continue;
            }
            if self.pull_limits.allow(&from, true)
                && let Some(p) = self.deferred_pulls.remove(&from)
            {
                self.on_pull(from, p.id, p.full, p.complete, p.entries, store);
            }
        }
        self.pull_limits.forget_idle();
    }
}
