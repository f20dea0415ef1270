//! Retrying transient failures: backoff with jitter, a shared budget, and the replay rule.
//!
//! [`RetryPolicy`] drives the session layer's retries. The layer classifies every error once, with
//! its adapter, and hands the policy the class ([`Classified`]): the policy retries only errors
//! classified as transient; an attempt that may have applied is replayed only when the write may
//! be replayed ([`crate::adapter::Replay::Safe`]); and because the request it replays is the one
//! already stamped, every replay carries the write's original [`crate::session::WriteId`] (and
//! timestamp). Any [`tower::retry::Policy`] can be installed instead ([`SessionRetryPolicy`]).
//!
//! Retries draw on a [`RetryBudget`] shared by all requests of a layer, so an outage produces a
//! bounded number of extra attempts instead of a retry storm.
//!
//! # Example
//!
//! ```
//! use ryw::retry::{Backoff, RetryBudget};
//! use std::time::Duration;
//!
//! let backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
//! // Full jitter: somewhere in [0, min(max, base * 2^attempt)].
//! assert!(backoff.delay(3, 0.5) <= Duration::from_millis(40));
//!
//! let budget = RetryBudget::new(0.2, 2);
//! assert!(budget.try_withdraw() && budget.try_withdraw());
//! assert!(!budget.try_withdraw()); // reserve spent, no deposits yet
//! for _ in 0..5 {
//!     budget.record_request();
//! }
//! assert!(budget.try_withdraw()); // 5 requests at 20% earn one retry
//! ```

use crate::adapter::{ErrorClass, Operation};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const UNIT: i64 = 1000;

/// A retry budget: every request deposits `ratio` of a retry, every retry withdraws one, with a
/// reserve for quiet periods and a ceiling so a long calm spell does not bank unlimited retries.
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    deposit: i64,
    ceiling: i64,
}

impl RetryBudget {
    /// `ratio` retries per request (0.2 = at most 20% extra load), starting with `reserve`
    /// retries. The balance never exceeds `reserve` plus 100 requests' worth.
    pub fn new(ratio: f32, reserve: u32) -> Self {
        let deposit = (ratio.clamp(0.0, 1000.0) * UNIT as f32) as i64;
        let reserve = i64::from(reserve) * UNIT;
        RetryBudget {
            balance: AtomicI64::new(reserve),
            deposit,
            ceiling: reserve + deposit * 100,
        }
    }

    /// Records one request (a deposit).
    #[inline]
    pub fn record_request(&self) {
        // In steady state the balance sits at its ceiling: a plain load, no read-modify-write.
        if self.balance.load(Ordering::Relaxed) >= self.ceiling {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.deposit).min(self.ceiling))
            });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= UNIT).then_some(b - UNIT)
            })
            .is_ok()
    }
}

impl Default for RetryBudget {
    /// 20% extra load, 10 retries in reserve.
    fn default() -> Self {
        RetryBudget::new(0.2, 10)
    }
}

impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        self.record_request();
    }

    fn withdraw(&self) -> bool {
        self.try_withdraw()
    }
}

/// Exponential backoff with full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's maximum delay.
    pub base: Duration,
    /// The cap on any delay.
    pub max: Duration,
}

impl Backoff {
    /// Backoff from `base`, doubling, capped at `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay before retry number `attempt` (0-based), for a uniform draw `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

impl Default for Backoff {
    /// 10 ms base, 1 s cap.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The default retry policy: transient errors only, replays only when safe, backoff with jitter,
/// a per-request attempt cap and a shared [`RetryBudget`].
///
/// # Clone
///
/// Cloned per request (attempt counters are per request); the budget and jitter seed are shared.
#[derive(Debug)]
pub struct RetryPolicy {
    shared: Arc<PolicyState>,
    max_retries: u32,
    backoff: Backoff,
    retries: u32,
    rng: u64,
}

#[derive(Debug)]
struct PolicyState {
    budget: RetryBudget,
    seed: AtomicU64,
}

impl Clone for RetryPolicy {
    fn clone(&self) -> Self {
        // The jitter stream is drawn from the shared seed at the first retry, not here: the
        // common, successful request touches no shared counter.
        RetryPolicy {
            shared: self.shared.clone(),
            max_retries: self.max_retries,
            backoff: self.backoff,
            retries: 0,
            rng: 0,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// The default policy: 3 retries, [`Backoff::default`], [`RetryBudget::default`].
    pub fn new() -> Self {
        Self::with_budget(RetryBudget::default())
    }

    /// A policy drawing on `budget`.
    pub fn with_budget(budget: RetryBudget) -> Self {
        RetryPolicy {
            shared: Arc::new(PolicyState {
                budget,
                seed: AtomicU64::new(0x853c_49e6_748f_ea9b),
            }),
            max_retries: 3,
            backoff: Backoff::default(),
            retries: 0,
            rng: 0,
        }
    }

    /// At most `n` retries per request.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The backoff between retries.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Seeds the jitter (simulations use it for reproducible runs).
    pub fn seed(self, seed: u64) -> Self {
        self.shared.seed.store(seed, Ordering::Relaxed);
        self
    }

    /// The shared budget.
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// Retries made so far by this request.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    fn next_unit(&mut self) -> f64 {
        if self.rng == 0 {
            // Each request gets its own stream, derived deterministically from the shared seed.
            self.rng = self
                .shared
                .seed
                .fetch_add(crate::mix::GAMMA, Ordering::Relaxed)
                | 1;
        }
        self.rng = self.rng.wrapping_add(crate::mix::GAMMA);
        let z = crate::mix::splitmix64(self.rng);
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the layer knows of one attempt's result, classified once with its adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classified {
    /// The request's operation.
    pub operation: Operation,
    /// The error's class; `None` when the attempt succeeded.
    pub error: Option<ErrorClass>,
}

impl Classified {
    /// The classification of an attempt of `operation` that ended with `error` (`None`: success).
    pub const fn new(operation: Operation, error: Option<ErrorClass>) -> Self {
        Classified { operation, error }
    }
}

/// A retry policy for the session layer. The layer clones the policy for a request at that
/// request's first failure and from then on calls [`retry`](SessionRetryPolicy::retry) with
/// every result (as `tower::retry::Retry` does), with the error already classified; requests
/// whose first attempt succeeds never clone it, and tell the prototype instead.
///
/// Whatever the policy says, the layer never sends again a write that may have applied unless
/// it may be replayed ([`crate::stamp::may_retry`]).
///
/// Every [`tower::retry::Policy`] is one when wrapped in [`TowerPolicy`]:
///
/// ```
/// use ryw::retry::{SessionRetryPolicy, TowerPolicy};
/// use std::future::Ready;
///
/// /// Retries every error once, immediately.
/// #[derive(Clone, Debug, Default)]
/// struct Once(bool);
///
/// impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Once {
///     type Future = Ready<()>;
///     fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Ready<()>> {
///         (result.is_err() && !std::mem::replace(&mut self.0, true)).then(|| std::future::ready(()))
///     }
///     fn clone_request(&mut self, req: &Req) -> Option<Req> {
///         Some(req.clone())
///     }
/// }
///
/// fn installable<P: SessionRetryPolicy<String, (), std::io::Error>>(_: &P) {}
/// installable(&TowerPolicy(Once::default()));
/// ```
pub trait SessionRetryPolicy<Req, Res, E>: Clone {
    /// What the layer waits on before the next attempt.
    type Future: Future<Output = ()>;

    /// Whether to send `request` again after `result`: `Some(backoff)` retries once the future
    /// completes. `classified` is the layer's classification of the result.
    fn retry(
        &mut self,
        request: &mut Req,
        result: &mut Result<Res, E>,
        classified: Classified,
    ) -> Option<Self::Future>;

    /// A request succeeded at its first attempt (the policy was not cloned for it). Budgets
    /// count it here. The default does nothing.
    fn first_attempt_succeeded(&self) {}
}

/// Any [`tower::retry::Policy`] as a [`SessionRetryPolicy`] (it ignores the classification).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TowerPolicy<P>(pub P);

impl<P, Req, Res, E> SessionRetryPolicy<Req, Res, E> for TowerPolicy<P>
where
    P: tower::retry::Policy<Req, Res, E> + Clone,
{
    type Future = P::Future;

    fn retry(
        &mut self,
        request: &mut Req,
        result: &mut Result<Res, E>,
        _: Classified,
    ) -> Option<Self::Future> {
        self.0.retry(request, result)
    }
}

impl<Req, Res, E> SessionRetryPolicy<Req, Res, E> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Req,
        result: &mut Result<Res, E>,
        classified: Classified,
    ) -> Option<Self::Future> {
        if result.is_ok() {
            self.shared.budget.record_request();
            return None;
        }
        let class = classified.error?;
        if !crate::stamp::may_retry(classified.operation, class) || self.retries >= self.max_retries
        {
            return None;
        }
        if !self.shared.budget.try_withdraw() {
            tracing::debug!(target: "ryw::retry", "retry budget spent");
            return None;
        }
        let unit = self.next_unit();
        let delay = self.backoff.delay(self.retries, unit);
        self.retries += 1;
        tracing::trace!(target: "ryw::retry", retry = self.retries, delay_us = delay.as_micros() as u64, "backoff");
        Some(tokio::time::sleep(delay))
    }

    fn first_attempt_succeeded(&self) {
        self.shared.budget.record_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(10));
        assert_eq!(b.delay(10, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(40, 0.0), Duration::ZERO);
    }

    #[test]
    fn every_request_draws_its_own_jitter() {
        // tower's ExponentialBackoffMaker clones one generator into every backoff, so requests
        // that fail together retry together; each clone of this policy draws its own stream.
        let prototype = RetryPolicy::new().seed(7);
        let (mut a, mut b) = (prototype.clone(), prototype.clone());
        let xs: Vec<f64> = (0..3).map(|_| a.next_unit()).collect();
        let ys: Vec<f64> = (0..3).map(|_| b.next_unit()).collect();
        assert_ne!(xs, ys);
        // Still reproducible from the seed.
        let again = RetryPolicy::new().seed(7);
        let mut c = again.clone();
        assert_eq!((0..3).map(|_| c.next_unit()).collect::<Vec<_>>(), xs);
    }

    #[test]
    fn budget_ceiling() {
        let b = RetryBudget::new(1.0, 0);
        for _ in 0..1000 {
            b.record_request();
        }
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        assert_eq!(n, 100);
    }
}
