//! The layer's default retry policy, and the state of one request's retries.
//!
//! The policy is configuration shared by every request of a layer (its attempt cap, backoff,
//! budget and jitter seed); what one request has spent lives in its own [`RetryState`], created
//! at that request's first failure, as the scylla driver separates its `RetryPolicy` from each
//! query's `RetrySession`.
//!
//! # Example
//!
//! ```
//! use ryw::adapter::{ErrorClass, Operation};
//! use ryw::retry::{Classified, RetryPolicy, SessionRetryPolicy};
//!
//! let policy = RetryPolicy::new().max_retries(1);
//! let timeout = Classified::new(Operation::Read, Some(ErrorClass::RETRYABLE));
//! let retry = |state: &mut _| {
//!     SessionRetryPolicy::<(), (), ()>::retry(&policy, state, &mut (), &mut Err(()), timeout)
//! };
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut state = SessionRetryPolicy::<(), (), ()>::start(&policy);
//! assert!(retry(&mut state).is_some());
//! // The cap is this request's: its second failure is not retried, another request's may be.
//! assert!(retry(&mut state).is_none());
//! assert_eq!(state.retries(), 1);
//! let mut another = SessionRetryPolicy::<(), (), ()>::start(&policy);
//! assert!(retry(&mut another).is_some());
//! # });
//! ```

use super::{Backoff, Classified, RetryBudget, SessionRetryPolicy};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The default retry policy: transient errors only, replays only when safe, backoff with jitter,
/// a per-request attempt cap and a shared [`RetryBudget`].
///
/// # Clone
///
/// A clone is the same policy: it shares the budget and the jitter seed. What a request has
/// spent is in its [`RetryState`], never in the policy.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    shared: Arc<Shared>,
    max_retries: u32,
    backoff: Backoff,
}

#[derive(Debug)]
struct Shared {
    budget: RetryBudget,
    seed: AtomicU64,
}

/// What one request has spent of its retries: created at its first failure
/// ([`SessionRetryPolicy::start`]).
#[derive(Clone, Debug, Default)]
pub struct RetryState {
    retries: u32,
    /// The request's jitter stream (0 until its first retry draws it from the shared seed).
    rng: u64,
}

impl RetryState {
    /// Retries made so far by this request.
    pub fn retries(&self) -> u32 {
        self.retries
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
            shared: Arc::new(Shared {
                budget,
                seed: AtomicU64::new(0x853c_49e6_748f_ea9b),
            }),
            max_retries: 3,
            backoff: Backoff::default(),
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

    /// A uniform draw in `[0, 1)` from the request's jitter stream.
    fn next_unit(&self, state: &mut RetryState) -> f64 {
        if state.rng == 0 {
            // Each request gets its own stream, derived deterministically from the shared seed,
            // at its first retry: the common, successful request touches no shared counter.
            state.rng = self
                .shared
                .seed
                .fetch_add(crate::hash::GAMMA, Ordering::Relaxed)
                | 1;
        }
        state.rng = state.rng.wrapping_add(crate::hash::GAMMA);
        let z = crate::hash::splitmix64(state.rng);
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl<Req, Res, E> SessionRetryPolicy<Req, Res, E> for RetryPolicy {
    type Future = tokio::time::Sleep;
    type State = RetryState;

    fn start(&self) -> RetryState {
        RetryState::default()
    }

    fn retry(
        &self,
        state: &mut RetryState,
        _: &mut Req,
        result: &mut Result<Res, E>,
        classified: Classified,
    ) -> Option<Self::Future> {
        if result.is_ok() {
            self.shared.budget.record_request();
            return None;
        }
        let class = classified.error?;
        if !crate::stamp::may_retry(classified.operation, class)
            || state.retries >= self.max_retries
        {
            return None;
        }
        if !self.shared.budget.try_withdraw() {
            tracing::debug!(target: "ryw::retry", "retry budget spent");
            return None;
        }
        let unit = self.next_unit(state);
        let delay = self.backoff.delay(state.retries, unit);
        state.retries += 1;
        tracing::trace!(target: "ryw::retry", retry = state.retries, delay_us = delay.as_micros() as u64, "backoff");
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
    fn every_request_draws_its_own_jitter() {
        // tower's ExponentialBackoffMaker clones one generator into every backoff, so requests
        // that fail together retry together; each request of this policy draws its own stream.
        let policy = RetryPolicy::new().seed(7);
        let (mut a, mut b) = (RetryState::default(), RetryState::default());
        let xs: Vec<f64> = (0..3).map(|_| policy.next_unit(&mut a)).collect();
        let ys: Vec<f64> = (0..3).map(|_| policy.next_unit(&mut b)).collect();
        assert_ne!(xs, ys);
        // Still reproducible from the seed.
        let again = RetryPolicy::new().seed(7);
        let mut c = RetryState::default();
        assert_eq!(
            (0..3).map(|_| again.next_unit(&mut c)).collect::<Vec<_>>(),
            xs
        );
    }

    #[test]
    fn a_clone_of_the_policy_shares_its_budget_and_keeps_no_counters() {
        let policy = RetryPolicy::with_budget(RetryBudget::new(0.0, 1)).max_retries(5);
        let clone = policy.clone();
        let read = Classified::new(
            crate::adapter::Operation::Read,
            Some(crate::adapter::ErrorClass::RETRYABLE),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            type P =
                dyn SessionRetryPolicy<(), (), (), Future = tokio::time::Sleep, State = RetryState>;
            let retry = |p: &P, state: &mut RetryState| p.retry(state, &mut (), &mut Err(()), read);
            let mut state = RetryState::default();
            assert!(retry(&policy, &mut state).is_some());
            // The one retry in reserve is spent, whichever clone asks.
            let mut other = RetryState::default();
            assert!(retry(&clone, &mut other).is_none());
        });
    }
}
