//! A fence that learns the store's lag: when a cheap re-read is worth sending after a stale read,
//! and how long to wait for it.
//!
//! A fixed schedule ([`FenceConfig::verify_then_escalate`]) re-reads after the same delay whatever
//! the store does: a store whose replicas lag 300 ms pays a wasted re-read and then escalates; a
//! store that catches up in 2 ms waits 10 ms for nothing. An [`AdaptiveFence`] learns, per layer
//! (one store), how long a replica takes to catch up after a read missed its fence, and for each
//! stale read:
//!
//! - re-reads cheaply once the catch-up is likely (by default at the learned p90), when that delay
//!   fits the latency budget;
//! - otherwise re-reads at the latest delay learned within the budget when its re-reads meet the
//!   fence often enough to be cheaper than a strong read (the break-even), or escalates at once;
//! - never sends more cheap re-reads than its budget allows: at most
//!   [`max_rereads`](AdaptiveFence::max_rereads) per read (one by default, plus one after an
//!   exploration), and a token bucket over the layer that earns 1.25 re-reads per fence miss, so
//!   that a replica that never catches up cannot multiply the read load: once learned, such a
//!   replica gets one re-read in [`canary_every`](AdaptiveFence::canary_every) misses.
//!
//! Until [`warm_up`](AdaptiveFence::warm_up) re-reads have been learned, it follows the fixed
//! schedule of its [`base`](AdaptiveFence::base) configuration (by default
//! [`FenceConfig::default`]'s: one re-read after 10 ms), capped by the budget.
//!
//! # What is learned, and from what
//!
//! The time a replica takes to catch up is never seen directly: a re-read sent `d` after the first
//! stale response only shows whether the replica had caught up by then. The learner records the
//! outcome of each read's first re-read, with its delay, in a [`CatchUpSketch`], whose estimate
//! of the share of catch-ups within each delay is the maximum-likelihood one for such
//! observations (per-delay success rates made non-decreasing). Most re-reads go at the learned
//! quantile; one in [`explore_every`](AdaptiveFence::explore_every) goes earlier (to find out
//! whether the store became faster; when that misses, the read is re-read at the learned delay,
//! so exploring costs a cheap read, not a strong one). While stale reads escalate at once, one
//! in [`canary_every`](AdaptiveFence::canary_every) is still re-read at the budget (to find out
//! whether the store recovered). What was learned fades with every miss
//! ([`half_life`](AdaptiveFence::half_life)).
//!
//! # The default, and its budget
//!
//! [`ReadYourWritesLayer::new`](crate::ReadYourWritesLayer::new) installs
//! [`AdaptiveFence::default`]: a 10 ms latency budget, the delay of the fixed default
//! ([`FenceConfig::default`]). So no stale read waits longer for a re-read than with the fixed
//! default, and the learner only ever decides to wait less, or not at all:
//!
//! - a store that catches up in 2 ms is re-read after about 2 ms instead of 10;
//! - a store whose replicas lag hundreds of milliseconds escalates at once, instead of paying
//!   a re-read that almost never helps and 10 ms for it (one miss in 128 still re-reads, to notice
//!   a recovery);
//! - in between, it re-reads when that meets the fence at least half the time (the break-even
//!   when a strong read costs twice a cheap one), as the fixed default does, and escalates at
//!   once when it does not.
//!
//! Until 16 re-reads have been learned it is the fixed default. On the simulated store
//! (`cargo run --example adaptive`), against the fixed default: replicas lagging 20 ms on
//! average get the same strong reads and latency (a re-read after 10 ms pays off there);
//! replicas lagging 300 ms or 1 s get the same strong reads (one per really stale read), a
//! third fewer cheap reads, and about half the p99 read latency. The fixed schedule stays one
//! call away ([`ReadYourWritesLayer::fence`](crate::ReadYourWritesLayer::fence)); a caller who
//! can wait longer to save strong reads raises the budget
//! ([`AdaptiveFence::new`]`(Duration::from_millis(50))`: a third of the strong reads at 20 ms of
//! lag, at a p99 of about 55 ms).
//!
//! # Cost
//!
//! Nothing on the happy path: a read that meets its fence never touches the learner. A stale read
//! takes one short lock for the decision and one for the re-read's outcome; the decision reads
//! the clock once.
//!
//! # The status contract
//!
//! Learning changes when and how often a stale read is read again, never what it is reported as:
//! a read is `Guaranteed` only when a response met the fence (verified, waited for, or read
//! strongly); a read that stays stale ends `Pending` (or [`crate::Error::StaleRead`]).
//!
//! # Example
//!
//! ```
//! use ryw::adaptive::AdaptiveFence;
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SimStore::new(SimConfig::default().seed(7));
//! // Wait at most 25 ms for a replica to catch up before reading strongly.
//! let layer = ReadYourWritesLayer::new(SimAdapter::new())
//!     .adaptive_fence(AdaptiveFence::new(Duration::from_millis(25)))
//!     .clock(store.clock());
//! let mut service = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(store.client(0));
//!
//! let session = Session::new();
//! for n in 0..40 {
//!     let put = SimRequest::put("posts/1", n);
//!     service.ready().await?.call(session.request(put)).await?;
//!     let read = service.ready().await?.call(session.request(SimRequest::get("posts/1"))).await?;
//!     assert!(read.visibility().is_guaranteed());
//!     assert_eq!(read.get_ref().value(), Some(n));
//! }
//! // Every clone of the layer shares what it learned.
//! let learned = layer.fence_learner().expect("an adaptive fence").snapshot();
//! assert!(learned.misses > 0);
//! # Ok(())
//! # }
//! ```

use crate::fence::{
    FenceConfig, FenceDecision, FenceStrategy, FenceSupport, ReadFence, StaleReadPolicy,
};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

mod sketch;

pub use sketch::CatchUpSketch;
use sketch::{bound, bucket_of};

/// The adaptive fence: what it may spend, and how it learns. See the [module docs](self).
///
/// Installed with [`ReadYourWritesLayer::adaptive_fence`](crate::ReadYourWritesLayer::adaptive_fence);
/// it is the layer's default ([`AdaptiveFence::default`]: a 10 ms budget).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdaptiveFence {
    /// The first strategy, escalation, and what a stale read returns, as for a fixed fence; its
    /// re-read schedule (`rereads`, `reread_delay`) applies until the learner is warm.
    pub base: FenceConfig,
    /// The longest a stale read waits for a cheap re-read, counted from its first stale
    /// response. A re-read that would have to wait longer is not sent: the read escalates at
    /// once. Zero: never re-read.
    pub latency_budget: Duration,
    /// The share of catch-ups a re-read waits for, per mille (900: the learned p90).
    pub quantile_permille: u16,
    /// When no delay within the budget is known to reach the quantile, a re-read at the latest
    /// delay learned within it is still sent when such re-reads meet the fence at least this
    /// often, per mille (500: the break-even when a strong read costs twice a cheap one, as on
    /// DynamoDB); otherwise the read escalates at once. A store that cannot escalate re-reads
    /// whatever this says.
    pub break_even_permille: u16,
    /// Cheap re-reads of one read at most, once warm, besides the one that follows an
    /// exploration that missed (0: a warm learner escalates every stale read at once).
    pub max_rereads: u32,
    /// Cheap re-reads the layer earns per fence miss, per mille (1,250: one and a quarter, room
    /// for explorations): cheap re-reads never outnumber fence misses by more than this ratio
    /// plus the burst.
    pub rereads_per_miss_permille: u32,
    /// The most re-reads the layer saves up (at least one), and starts with.
    pub reread_burst: u32,
    /// Re-read outcomes learned before the learned schedule replaces the fixed one.
    pub warm_up: u32,
    /// One first re-read in this many goes earlier than the learned delay, to find out whether
    /// the store became faster (0: never).
    pub explore_every: u32,
    /// While stale reads escalate at once, one in this many is still re-read at the budget, to
    /// find out whether the store recovered (0: never). Kept rare, so that these canaries stay
    /// out of the latency tail.
    pub canary_every: u32,
    /// Fence misses after which what was learned before weighs half (0: never forgets). Counted
    /// in misses rather than in re-reads, so that while stale reads escalate at once, the few
    /// canaries soon outweigh what was learned before.
    pub half_life: u32,
}

impl Default for AdaptiveFence {
    /// A 10 ms budget (the fixed default's delay: no stale read waits longer than with it),
    /// re-reads at the learned p90, break-even at 50%, one re-read per read, 1.25 re-reads earned
    /// per miss with a burst of 32, warm after 16 outcomes, one exploration in 8 misses, one
    /// canary in 128, a half-life of 512 misses.
    fn default() -> Self {
        Self::new(Duration::from_millis(10))
    }
}

impl AdaptiveFence {
    /// An adaptive fence with a latency budget and the defaults for everything else (see
    /// [`AdaptiveFence::default`]).
    pub const fn new(latency_budget: Duration) -> Self {
        AdaptiveFence {
            base: FenceConfig::verify_then_escalate(1, Duration::from_millis(10)),
            latency_budget,
            quantile_permille: 900,
            break_even_permille: 500,
            max_rereads: 1,
            rereads_per_miss_permille: 1_250,
            reread_burst: 32,
            warm_up: 16,
            explore_every: 8,
            canary_every: 128,
            half_life: 512,
        }
    }

    /// Sets the base configuration (first strategy, escalation, stale reads, and the schedule
    /// used until warm).
    pub fn base(mut self, base: FenceConfig) -> Self {
        self.base = base;
        self
    }

    /// Sets what a read that stays stale returns.
    pub fn stale_reads(mut self, policy: StaleReadPolicy) -> Self {
        self.base.stale_reads = policy;
        self
    }

    /// Sets the share of catch-ups a re-read waits for, per mille (clamped to 1..=1000).
    pub const fn quantile(mut self, permille: u16) -> Self {
        self.quantile_permille = if permille == 0 {
            1
        } else if permille > 1_000 {
            1_000
        } else {
            permille
        };
        self
    }

    /// Sets the break-even share, per mille (see [`AdaptiveFence::break_even_permille`]).
    pub const fn break_even(mut self, permille: u16) -> Self {
        self.break_even_permille = permille;
        self
    }

    /// Sets the most cheap re-reads of one read.
    pub const fn max_rereads(mut self, n: u32) -> Self {
        self.max_rereads = n;
        self
    }

    /// Sets the layer's re-read budget: re-reads earned per fence miss (per mille) and the most
    /// saved up.
    pub const fn reread_budget(mut self, per_miss_permille: u32, burst: u32) -> Self {
        self.rereads_per_miss_permille = per_miss_permille;
        self.reread_burst = burst;
        self
    }

    /// Sets how many re-read outcomes are learned before the learned schedule applies.
    pub const fn warm_up(mut self, outcomes: u32) -> Self {
        self.warm_up = outcomes;
        self
    }

    /// Sets how often a first re-read explores an earlier delay (one in `n`; 0: never).
    pub const fn explore_every(mut self, n: u32) -> Self {
        self.explore_every = n;
        self
    }

    /// Sets how often a stale read that would escalate at once is re-read at the budget instead
    /// (one in `n`; 0: never).
    pub const fn canary_every(mut self, n: u32) -> Self {
        self.canary_every = n;
        self
    }

    /// Sets the half-life of what is learned, in fence misses (0: never forgets).
    pub const fn half_life(mut self, misses: u32) -> Self {
        self.half_life = misses;
        self
    }
}

impl FenceConfig {
    /// This configuration as the base of an [`AdaptiveFence`] with `latency_budget`: the first
    /// strategy, escalation and stale-read policy stay, and this re-read schedule applies until
    /// the learner is warm.
    pub fn adaptive(self, latency_budget: Duration) -> AdaptiveFence {
        AdaptiveFence::new(latency_budget).base(self)
    }
}

/// Weight a bucket of the learner's sketch needs before a re-read delay may stop at it.
const MIN_BUCKET_WEIGHT: f64 = 4.0;

/// What one layer has learned of its store, shared by every request of the layer (and of its
/// clones). Built by [`ReadYourWritesLayer::adaptive_fence`](crate::ReadYourWritesLayer::adaptive_fence);
/// read it with [`ReadYourWritesLayer::fence_learner`](crate::ReadYourWritesLayer::fence_learner).
///
/// Touched only by reads that missed their fence, under a short lock.
pub struct FenceLearner {
    config: AdaptiveFence,
    /// What the weight of what was learned is multiplied by at each fence miss.
    keep: f64,
    state: Mutex<LearnerState>,
}

struct LearnerState {
    sketch: CatchUpSketch,
    /// Saved-up cheap re-reads, in thousandths.
    tokens: u64,
    misses: u64,
    rereads: u64,
    escalated_at_once: u64,
}

impl fmt::Debug for FenceLearner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceLearner")
            .field("config", &self.config)
            .field("learned", &self.snapshot())
            .finish()
    }
}

/// A snapshot of what a [`FenceLearner`] has learned and spent.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct LearnedCatchUp {
    /// Re-read outcomes learned.
    pub outcomes: u64,
    /// Whether the learned schedule applies (at least [`AdaptiveFence::warm_up`] outcomes).
    pub warm: bool,
    /// The learned delay by which the configured share of replicas caught up, if known.
    pub catch_up: Option<Duration>,
    /// The estimated share of re-reads at the latency budget that meet their fence, if known.
    pub within_budget: Option<f64>,
    /// Reads whose first cheap attempt missed its fence.
    pub misses: u64,
    /// Cheap re-reads granted.
    pub rereads: u64,
    /// Stale reads sent to the strong path (or given up) without a re-read, once warm.
    pub escalated_at_once: u64,
}

impl FenceLearner {
    /// A learner that knows nothing yet (it follows the base schedule until warm).
    pub fn new(config: AdaptiveFence) -> Self {
        let sketch = CatchUpSketch::new().min_weight(MIN_BUCKET_WEIGHT);
        let tokens = u64::from(config.reread_burst) * 1_000;
        let keep = match config.half_life {
            0 => 1.0,
            n => 0.5f64.powf(1.0 / f64::from(n)),
        };
        FenceLearner {
            config,
            keep,
            state: Mutex::new(LearnerState {
                sketch,
                tokens,
                misses: 0,
                rereads: 0,
                escalated_at_once: 0,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdaptiveFence {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, LearnerState> {
        crate::locks::lock(&self.state)
    }

    /// What has been learned and spent so far.
    pub fn snapshot(&self) -> LearnedCatchUp {
        let state = self.lock();
        let c = &self.config;
        LearnedCatchUp {
            outcomes: state.sketch.observations(),
            warm: state.sketch.observations() >= u64::from(c.warm_up),
            catch_up: state.sketch.quantile(quantile(c.quantile_permille)),
            within_budget: state.sketch.caught_up_by(c.latency_budget),
            misses: state.misses,
            rereads: state.rereads,
            escalated_at_once: state.escalated_at_once,
        }
    }

    /// Records the outcome of a read's first cheap re-read, sent `delay` after its first stale
    /// response: whether it met the fence.
    pub fn record_reread(&self, delay: Duration, met: bool) {
        self.lock().sketch.record_probe(delay, met);
    }

    /// The next step after a stale attempt made with `last`, `progress` into the read: the
    /// adaptive counterpart of [`ReadFence::after_stale`].
    ///
    /// A cheap re-read is possible after a stale verified read of a fence without a store horizon
    /// whose cheap responses can show that they meet it (as with a fixed schedule); it is sent
    /// when the learned schedule (or, until warm, the base schedule) and the re-read budget allow
    /// it and the wait fits the latency budget. Otherwise the read escalates when the base
    /// configuration and the store allow, or gives up.
    pub fn after_stale(
        &self,
        fence: &ReadFence,
        support: FenceSupport,
        last: FenceStrategy,
        progress: StaleProgress,
    ) -> FenceDecision {
        let base = &self.config.base;
        let can_escalate = last != FenceStrategy::Strong
            && base.escalate_on_stale
            && support.supports(FenceStrategy::Strong);
        if last == FenceStrategy::Verify && !fence.has_horizon() && fence.verifiable() {
            if let Some(delay) = self.plan(progress, can_escalate) {
                return FenceDecision::Retry {
                    strategy: FenceStrategy::Verify,
                    delay,
                };
            }
        }
        if can_escalate {
            return FenceDecision::Retry {
                strategy: FenceStrategy::Strong,
                delay: Duration::ZERO,
            };
        }
        FenceDecision::GiveUp
    }

    /// The delay of the next cheap re-read, if one is to be sent (and takes a token for it).
    fn plan(&self, progress: StaleProgress, can_escalate: bool) -> Option<Duration> {
        let c = &self.config;
        let StaleProgress {
            rereads,
            waited,
            first_delay,
        } = progress;
        let mut s = self.lock();
        if rereads == 0 {
            s.misses += 1;
            if self.keep < 1.0 {
                s.sketch.fade(self.keep);
            }
            let cap = u64::from(c.reread_burst.max(1)) * 1_000;
            s.tokens = (s.tokens + u64::from(c.rereads_per_miss_permille)).min(cap);
        }
        let budget = c.latency_budget;
        let warm = s.sketch.observations() >= u64::from(c.warm_up);
        let delay = if !warm {
            // Cold: the base schedule, within the budget.
            (rereads < c.base.rereads).then_some(c.base.reread_delay.min(budget))
        } else if rereads == 0 {
            let every = |n: u32| n > 0 && s.misses.is_multiple_of(u64::from(n));
            let turn = Turn {
                explore: every(c.explore_every),
                canary: every(c.canary_every),
            };
            (c.max_rereads > 0)
                .then(|| first(c, &s.sketch, turn, can_escalate))
                .flatten()
        } else {
            later(c, &s.sketch, rereads, waited, first_delay, can_escalate)
        };
        let granted = delay
            .filter(|d| !budget.is_zero() && waited + *d <= budget)
            .filter(|_| s.tokens >= 1_000);
        match granted {
            Some(_) => {
                s.tokens -= 1_000;
                s.rereads += 1;
            }
            None if warm && rereads == 0 => s.escalated_at_once += 1,
            None => {}
        }
        granted
    }
}

/// How far a stale read has come, for [`FenceLearner::after_stale`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaleProgress {
    /// Cheap re-reads sent so far.
    pub rereads: u32,
    /// Time since the read's first stale response.
    pub waited: Duration,
    /// The delay of the read's first cheap re-read, if one was sent.
    pub first_delay: Option<Duration>,
}

/// The quantile of `permille`, in `(0, 1]`.
fn quantile(permille: u16) -> f64 {
    f64::from(permille.clamp(1, 1_000)) / 1_000.0
}

/// The bucket of the learned delay, if it is within the budget.
fn learned_bucket(c: &AdaptiveFence, sketch: &CatchUpSketch) -> Option<usize> {
    sketch
        .quantile_bucket(quantile(c.quantile_permille))
        .filter(|&b| b <= bucket_of(c.latency_budget))
}

/// Whether this miss is one that explores an earlier delay, or one that is re-read at the
/// budget while others escalate at once.
#[derive(Clone, Copy)]
struct Turn {
    explore: bool,
    canary: bool,
}

/// The delay of a warm learner's first re-read of a read, or `None` to escalate at once.
fn first(
    c: &AdaptiveFence,
    sketch: &CatchUpSketch,
    turn: Turn,
    can_escalate: bool,
) -> Option<Duration> {
    let budget = c.latency_budget;
    let within = bucket_of(budget);
    let at = |b: usize| bound(b).min(budget);
    if let Some(b) = learned_bucket(c, sketch) {
        // Exploring: two buckets earlier (a delay about 30% shorter); a miss there is re-read
        // at the learned delay ([`later`]).
        return Some(if turn.explore && b >= 2 {
            at(b - 2)
        } else {
            at(b)
        });
    }
    // No delay within the budget is known to reach the quantile. Without a strong path, the
    // budget gives a re-read its best chance. Otherwise: re-read at the latest delay known when
    // it is worth it (exploring two buckets later now and then), or escalate.
    if !can_escalate {
        return Some(budget);
    }
    // A share below the break-even by less than its uncertainty (two standard deviations at
    // most, 1 / sqrt(weight): 25 points after 16 re-reads, 4 after 600) keeps the re-reads, and
    // their evidence, coming.
    let break_even = f64::from(c.break_even_permille) / 1_000.0;
    match sketch.best_up_to(within) {
        Some((b, share, weight)) if share + 1.0 / weight.sqrt() >= break_even => {
            Some(if turn.explore {
                at((b + 2).min(within))
            } else {
                at(b)
            })
        }
        // Not worth it so far, but later delays within the budget are unknown: explore the
        // budget, the best chance a re-read has.
        Some((b, ..)) if b < within && turn.explore => Some(budget),
        // Not worth it even at the budget: escalate, but for a rare canary.
        Some(_) if turn.canary => Some(budget),
        Some(_) => None,
        // Nothing known within the budget (or what was has faded): the base schedule again.
        None => (c.base.rereads > 0).then_some(c.base.reread_delay.min(budget)),
    }
}

/// The delay of a later re-read, after `rereads` stale ones, `waited` after the first stale
/// response. A first re-read that explored before the learned delay is followed by one at that
/// delay (at once if it has passed), beyond [`AdaptiveFence::max_rereads`]. Otherwise, within
/// that limit, each further re-read waits for the next tenfold smaller share of replicas still
/// behind (the p99 after the p90), when that is within the budget (or at the budget, for a
/// store that cannot escalate).
fn later(
    c: &AdaptiveFence,
    sketch: &CatchUpSketch,
    rereads: u32,
    waited: Duration,
    first_delay: Option<Duration>,
    can_escalate: bool,
) -> Option<Duration> {
    let budget = c.latency_budget;
    if let (1, Some(b), Some(first)) = (rereads, learned_bucket(c, sketch), first_delay) {
        let learned = bound(b).min(budget);
        if first < learned {
            return Some(learned.saturating_sub(waited));
        }
    }
    if rereads >= c.max_rereads {
        return None;
    }
    let behind = (1.0 - quantile(c.quantile_permille)) / 10f64.powi(rereads.min(6) as i32);
    let target = match sketch.quantile_bucket(1.0 - behind) {
        Some(b) if b <= bucket_of(budget) => bound(b).min(budget),
        _ if !can_escalate => budget,
        _ => return None,
    };
    target.checked_sub(waited).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{Requirement, ScopeKey, StoreId, Version};
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fence() -> ReadFence {
        ReadFence::from_requirements([Requirement {
            scope: ScopeKey::new(StoreId::new(1), b"k"),
            version: Version::new(9),
            horizon: None,
        }])
    }

    fn strong() -> FenceSupport {
        FenceSupport::new().strong_reads(true)
    }

    /// Drives one stale read through the learner: `caught_up` is the catch-up time of this read
    /// (`None`: never); returns the decisions' delays and whether it ended on the strong path.
    fn stale_read(learner: &FenceLearner, caught_up: Option<Duration>) -> (Vec<Duration>, bool) {
        let fence = fence();
        let mut waited = Duration::ZERO;
        let mut delays = Vec::new();
        let mut rereads = 0;
        loop {
            let progress = StaleProgress {
                rereads,
                waited,
                first_delay: delays.first().copied(),
            };
            match learner.after_stale(&fence, strong(), FenceStrategy::Verify, progress) {
                FenceDecision::Retry {
                    strategy: FenceStrategy::Verify,
                    delay,
                } => {
                    waited += delay;
                    delays.push(delay);
                    let met = caught_up.is_some_and(|c| c <= waited);
                    if rereads == 0 {
                        learner.record_reread(delay, met);
                    }
                    rereads += 1;
                    if met {
                        return (delays, false);
                    }
                    // The re-read's round trip.
                    waited += Duration::from_millis(1);
                }
                FenceDecision::Retry {
                    strategy: FenceStrategy::Strong,
                    ..
                } => return (delays, true),
                _ => return (delays, false),
            }
        }
    }

    #[test]
    fn cold_it_follows_the_base_schedule_within_the_budget() {
        let learner = FenceLearner::new(AdaptiveFence::default());
        let (delays, strong) = stale_read(&learner, None);
        assert_eq!((delays, strong), (vec![ms(10)], true));
        let tight = FenceLearner::new(AdaptiveFence::new(ms(4)));
        assert_eq!(stale_read(&tight, None), (vec![ms(4)], true));
        let none = FenceLearner::new(AdaptiveFence::new(Duration::ZERO));
        assert_eq!(stale_read(&none, Some(ms(1))), (vec![], true));
    }

    #[test]
    fn a_fast_store_is_re_read_sooner() {
        let learner = FenceLearner::new(AdaptiveFence::default());
        let (mut followed_up, mut escalated) = (0, 0);
        for _ in 0..600 {
            let (delays, strong) = stale_read(&learner, Some(ms(2)));
            followed_up += usize::from(delays.len() == 2);
            escalated += usize::from(strong);
        }
        // Explorations below 2 ms miss, and are re-read at the learned delay: never escalated.
        assert!(followed_up > 10, "{followed_up}");
        assert_eq!(escalated, 0);
        let learned = learner.snapshot();
        assert!(learned.warm);
        let catch_up = learned.catch_up.unwrap();
        assert!(catch_up <= ms(3), "{learned:?}");
        let (delays, strong) = stale_read(&learner, Some(ms(2)));
        assert!(
            !strong && delays.len() == 1 && delays[0] <= ms(3),
            "{delays:?}"
        );
    }

    #[test]
    fn a_slow_store_escalates_at_once_but_keeps_a_canary() {
        let learner = FenceLearner::new(AdaptiveFence::default());
        let mut rereads = 0;
        for _ in 0..800 {
            let (delays, strong) = stale_read(&learner, Some(ms(300)));
            assert!(strong);
            rereads += delays.len();
        }
        // 16 to warm up, then one canary in 128.
        assert!(rereads <= 16 + 800 / 128 + 1, "{rereads}");
        assert!(learner.snapshot().escalated_at_once >= 700);
        // The store recovers: canaries at the budget notice.
        for _ in 0..1_500 {
            stale_read(&learner, Some(ms(1)));
        }
        let (delays, strong) = stale_read(&learner, Some(ms(1)));
        assert!(!strong && delays.len() == 1, "{:?}", learner.snapshot());
    }

    #[test]
    fn a_store_that_cannot_escalate_re_reads_at_the_budget() {
        let learner = FenceLearner::new(AdaptiveFence::new(ms(50)));
        let fence = fence();
        for _ in 0..100 {
            let d = learner.after_stale(
                &fence,
                FenceSupport::new(),
                FenceStrategy::Verify,
                StaleProgress::default(),
            );
            let FenceDecision::Retry { delay, .. } = d else {
                panic!("{d:?}");
            };
            learner.record_reread(delay, false);
            assert!(delay <= ms(50));
        }
        assert_eq!(
            learner.after_stale(
                &fence,
                FenceSupport::new(),
                FenceStrategy::Verify,
                StaleProgress::default()
            ),
            FenceDecision::Retry {
                strategy: FenceStrategy::Verify,
                delay: ms(50)
            }
        );
        assert_eq!(
            learner.after_stale(
                &fence,
                FenceSupport::new(),
                FenceStrategy::Verify,
                StaleProgress {
                    rereads: 1,
                    waited: ms(51),
                    first_delay: Some(ms(50)),
                }
            ),
            FenceDecision::GiveUp
        );
    }

    #[test]
    fn re_reads_never_outrun_the_layer_budget() {
        // A store that cannot escalate always wants a re-read; three per read allowed, half a
        // re-read earned per miss, nothing saved up.
        let config = AdaptiveFence::new(ms(100))
            .max_rereads(3)
            .reread_budget(500, 0)
            .warm_up(0);
        let learner = FenceLearner::new(config);
        let fence = fence();
        let mut rereads = 0;
        for _ in 0..1_000 {
            let mut done = 0;
            let mut first_delay = None;
            while let FenceDecision::Retry { delay, .. } = learner.after_stale(
                &fence,
                FenceSupport::new(),
                FenceStrategy::Verify,
                StaleProgress {
                    rereads: done,
                    waited: ms(u64::from(done)),
                    first_delay,
                },
            ) {
                if done == 0 {
                    learner.record_reread(delay, false);
                    first_delay = Some(delay);
                }
                done += 1;
            }
            rereads += done;
        }
        assert_eq!(rereads, 500);
        assert_eq!(learner.snapshot().rereads, 500);
    }

    #[test]
    fn horizons_and_unverifiable_fences_are_never_re_read() {
        let learner = FenceLearner::new(AdaptiveFence::default().warm_up(0));
        let horizon = ReadFence::from_requirements([Requirement {
            scope: ScopeKey::new(StoreId::new(1), b"k"),
            version: Version::new(9),
            horizon: Some(Version::new(12)),
        }]);
        for f in [horizon, fence().server_side_only()] {
            assert_eq!(
                learner.after_stale(
                    &f,
                    strong(),
                    FenceStrategy::Verify,
                    StaleProgress::default()
                ),
                FenceDecision::Retry {
                    strategy: FenceStrategy::Strong,
                    delay: Duration::ZERO
                }
            );
            assert_eq!(
                learner.after_stale(
                    &f,
                    strong(),
                    FenceStrategy::Strong,
                    StaleProgress::default()
                ),
                FenceDecision::GiveUp
            );
        }
    }

    proptest! {
        /// Whatever the learner decides, a read is reported `Guaranteed` only when a response
        /// met the fence, and the decisions end.
        #[test]
        fn adaptive_decisions_never_make_a_stale_read_guaranteed(
            history in proptest::collection::vec((0u64..400, any::<bool>()), 0..200),
            catch_up in proptest::option::of(0u64..400),
            strong_ok in any::<bool>(),
            budget in 0u64..60,
            max_rereads in 0u32..4,
            escalate in any::<bool>(),
        ) {
            let base = FenceConfig { escalate_on_stale: escalate, ..FenceConfig::default() };
            let learner = FenceLearner::new(
                base.adaptive(ms(budget)).max_rereads(max_rereads).warm_up(4),
            );
            for (d, met) in history {
                learner.record_reread(ms(d), met);
            }
            let fence = fence();
            let scope = ScopeKey::new(StoreId::new(1), b"k");
            let support = strong();
            let mut strategy = FenceStrategy::Verify;
            let mut waited = Duration::ZERO;
            let mut rereads = 0;
            let mut first_delay = None;
            let mut attempts = 0;
            let visibility_guaranteed = loop {
                attempts += 1;
                prop_assert!(attempts < 100, "decisions must end");
                // The replica holds version 9 once caught up; the strong path when it answers.
                let mut observed = crate::fence::Observed::new();
                let fresh = match strategy {
                    FenceStrategy::Strong => strong_ok,
                    _ => catch_up.is_some_and(|c| ms(c) <= waited),
                };
                observed.push(scope, Version::new(if fresh { 9 } else { 8 }));
                if fence.check(strategy, &observed).is_ok() {
                    prop_assert!(fresh, "a stale response met the fence");
                    break true;
                }
                let progress = StaleProgress { rereads, waited, first_delay };
                match learner.after_stale(&fence, support, strategy, progress) {
                    FenceDecision::Retry { strategy: next, delay } => {
                        prop_assert!(support.supports(next));
                        if next == FenceStrategy::Verify {
                            // One more than allowed only after an exploration.
                            prop_assert!(rereads < max_rereads.max(1) + 1);
                            prop_assert!(waited + delay <= ms(budget));
                            first_delay.get_or_insert(delay);
                            rereads += 1;
                        } else {
                            prop_assert!(escalate);
                        }
                        waited += delay + Duration::from_millis(1);
                        strategy = next;
                    }
                    _ => break false,
                }
            };
            if !visibility_guaranteed {
                // Pending: the data was behind, and the learner gave up.
                prop_assert!(strategy != FenceStrategy::Strong || !strong_ok);
            }
        }
    }
}
