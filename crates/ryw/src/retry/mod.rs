//! Retrying transient failures: a policy with per-request state ([`policy`](RetryPolicy)), a
//! shared [budget](RetryBudget) and [backoff](Backoff) with jitter, split as `tower::retry` splits
//! them. The replay rule, which no policy can override, is the layer's ([`crate::stamp`]).
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

mod backoff;
mod budget;
mod policy;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use policy::{RetryPolicy, RetryState};

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

/// A retry policy for the session layer, with the state of one request's retries apart from
/// it. The policy is shared by every request of the layer; at a request's first failure the
/// layer asks it for that request's [`State`](SessionRetryPolicy::State) ([`start`]) and from
/// then on calls [`retry`] with every result (as `tower::retry::Retry` does), with the error
/// already classified. Requests whose first attempt succeeds never create a state, and tell the
/// policy instead ([`first_attempt_succeeded`]).
///
/// Whatever the policy says, the layer never sends again a write that may have applied unless
/// it may be replayed ([`crate::stamp::may_retry`]).
///
/// [`start`]: SessionRetryPolicy::start
/// [`retry`]: SessionRetryPolicy::retry
/// [`first_attempt_succeeded`]: SessionRetryPolicy::first_attempt_succeeded
///
/// Every [`tower::retry::Policy`] is one when wrapped in [`TowerPolicy`] (its state is a clone
/// of the tower policy, made for each request that fails):
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
pub trait SessionRetryPolicy<Req, Res, E> {
    /// What the layer waits on before the next attempt.
    type Future: Future<Output = ()>;
    /// What one request has spent of its retries.
    type State;

    /// The state of a request that has just failed for the first time.
    fn start(&self) -> Self::State;

    /// Whether to send `request` again after `result`: `Some(backoff)` retries once the future
    /// completes. `state` is this request's; `classified` is the layer's classification of the
    /// result.
    fn retry(
        &self,
        state: &mut Self::State,
        request: &mut Req,
        result: &mut Result<Res, E>,
        classified: Classified,
    ) -> Option<Self::Future>;

    /// A request succeeded at its first attempt (no state was created for it). Budgets count it
    /// here. The default does nothing.
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
    type State = P;

    fn start(&self) -> P {
        self.0.clone()
    }

    fn retry(
        &self,
        state: &mut P,
        request: &mut Req,
        result: &mut Result<Res, E>,
        _: Classified,
    ) -> Option<Self::Future> {
        state.retry(request, result)
    }
}
