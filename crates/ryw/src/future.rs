//! The response future of [`crate::ReadYourWrites`].

use crate::adapter::{Applied, ErrorClass, Observed, Operation, Replay, StoreAdapter, WriteStamp};
use crate::clock::HybridTimestamp;
use crate::conflict::Resolution;
use crate::error::Error;
use crate::fence::{
    FenceDecision, FencePath, FenceStrategy, ReadFence, StaleRead, StaleReadPolicy, Staleness,
    Visibility,
};
use crate::layer::LayerConfig;
use crate::retry::SessionRetryPolicy;
use crate::session::{Session, WriteId};
use crate::version::Version;
use crate::SessionResponse;
use pin_project::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::retry::Policy;
use tower::Service;

#[pin_project(project = StateProj)]
enum State<F, B> {
    Calling {
        #[pin]
        future: F,
    },
    Backoff {
        #[pin]
        sleep: B,
    },
    Delay {
        // Boxed: re-reads are the cold path, and the future stays small without it.
        sleep: Pin<Box<tokio::time::Sleep>>,
    },
    Ready,
    Done,
}

/// Per-request bookkeeping, kept apart from the pinned state.
pub(crate) struct Attempt<A: StoreAdapter> {
    pub(crate) session: Session,
    pub(crate) base: A::Request,
    pub(crate) op: Operation,
    pub(crate) fence: ReadFence,
    pub(crate) strategy: FenceStrategy,
    pub(crate) stamp: Option<(WriteId, HybridTimestamp)>,
    /// The session's clock when the request started.
    pub(crate) clock_at_start: HybridTimestamp,
    pub(crate) stale_reads: StaleReadPolicy,
    pub(crate) attempts: u32,
    pub(crate) rereads: u32,
    pub(crate) conflicts: u32,
    pub(crate) held: Option<Box<(A::Response, StaleRead)>>,
    /// An earlier attempt of this write failed in a way that may have applied: later attempts
    /// are replays ([`StoreAdapter::prepare_replay`]).
    pub(crate) may_have_applied: bool,
}

/// The future returned by [`crate::ReadYourWrites`]: drives the attempts of one request (retries,
/// re-reads, escalation, conflict rounds) without boxing.
#[pin_project]
pub struct ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request>,
    P: Policy<A::Request, A::Response, A::Error>,
{
    #[pin]
    state: State<S::Future, P::Future>,
    inner: S,
    /// Cloned from the shared prototype at the first failure only.
    policy: Option<P>,
    shared: Arc<LayerConfig<A, P>>,
    attempt: Attempt<A>,
}

impl<S, A, P> fmt::Debug for ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request>,
    P: Policy<A::Request, A::Response, A::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("session", &self.attempt.session)
            .field("operation", &self.attempt.op)
            .field("attempts", &self.attempt.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, A, P> ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request, Response = A::Response, Error = A::Error>,
    P: Policy<A::Request, A::Response, A::Error>,
{
    pub(crate) fn new(
        future: S::Future,
        inner: S,
        shared: Arc<LayerConfig<A, P>>,
        attempt: Attempt<A>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            inner,
            policy: None,
            shared,
            attempt,
        }
    }
}

impl<S, A, P> Future for ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request, Response = A::Response, Error = A::Error>,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    type Output = Result<SessionResponse<A::Response>, Error<A::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    let at = &mut *this.attempt;
                    at.attempts += 1;
                    let class = match &result {
                        Err(e) => Some(this.shared.adapter.classify(e)),
                        Ok(_) => None,
                    };
                    if class == Some(ErrorClass::AMBIGUOUS) {
                        at.may_have_applied = true;
                    }
                    // Conflicts are the resolver's, not the retry policy's.
                    let mut result = match (class, result) {
                        (Some(ErrorClass::Conflict), Err(error)) => {
                            match resolve_conflict(this.shared, at, error) {
                                Ok(()) => {
                                    this.state.set(State::Ready);
                                    continue;
                                }
                                Err(e) => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(e));
                                }
                            }
                        }
                        (_, result) => result,
                    };
                    // The replay rule is the layer's, whatever policy is installed: a transient
                    // failure the rule does not allow to retry (an unreplayable write that may
                    // have applied), or an unresolved replay, is never sent again.
                    let forbidden = match class {
                        Some(ErrorClass::Unresolved) => true,
                        Some(c) => c.is_transient() && !crate::retry::may_retry(at.op, c),
                        None => false,
                    };
                    // tower's contract: the policy sees every result once it exists. Until the
                    // first failure it does not: the prototype hears of the success instead.
                    if this.policy.is_none() && result.is_err() && !forbidden {
                        *this.policy = Some(this.shared.policy.clone());
                    }
                    match this.policy.as_mut() {
                        Some(_) if forbidden => {}
                        Some(policy) => {
                            if let Some(backoff) = policy.retry(&mut at.base, &mut result) {
                                this.state.set(State::Backoff { sleep: backoff });
                                continue;
                            }
                        }
                        None if at.attempts == 1 => this.shared.policy.first_attempt_succeeded(),
                        None => {}
                    }
                    let outcome = match result {
                        Ok(response) => on_response(this.shared, at, response),
                        Err(error) => Step::Done(on_final_error(at, class, error)),
                    };
                    match outcome {
                        Step::Done(out) => {
                            this.state.set(State::Done);
                            return Poll::Ready(out);
                        }
                        Step::Again(delay) if delay.is_zero() => this.state.set(State::Ready),
                        Step::Again(delay) => this.state.set(State::Delay {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Delay { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if let Err(e) = ready!(this.inner.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::NotReady(e)));
                    }
                    let at = &*this.attempt;
                    let mut request = at.base.clone();
                    if at.may_have_applied {
                        this.shared.adapter.prepare_replay(&mut request);
                    }
                    if at.op == Operation::Read && !at.fence.is_unfenced() {
                        this.shared
                            .adapter
                            .apply_fence(&mut request, &at.fence, at.strategy);
                    }
                    let future = this.inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

enum Step<T> {
    Done(T),
    Again(std::time::Duration),
}

type Out<A> =
    Result<SessionResponse<<A as StoreAdapter>::Response>, Error<<A as StoreAdapter>::Error>>;

fn on_response<A: StoreAdapter, P>(
    shared: &LayerConfig<A, P>,
    at: &mut Attempt<A>,
    response: A::Response,
) -> Step<Out<A>> {
    let mut observed = Observed::new();
    shared.adapter.observe(&at.base, &response, &mut observed);
    if !already_known(at, &observed) {
        record(shared, &at.session, &observed);
    }
    if let Operation::Write(_) = at.op {
        return Step::Done(Ok(SessionResponse::new(
            response,
            Visibility::Guaranteed(FencePath::Write),
            at.stamp.map(|(w, _)| w),
            at.attempts,
        )));
    }
    if at.fence.requirements().is_empty() {
        // No scope named: nothing could be fenced, and nothing is claimed.
        tracing::debug!(target: "ryw::fence", "read names no scope: unscoped");
        return Step::Done(match at.stale_reads {
            StaleReadPolicy::Error => Err(Error::Unscoped),
            _ => Ok(SessionResponse::new(
                response,
                Visibility::Unscoped,
                None,
                at.attempts,
            )),
        });
    }
    let checked = at
        .fence
        .check(at.strategy, &observed)
        .and_then(|()| beyond_the_fence(at, &observed));
    match checked {
        Ok(()) => {
            let path = if at.fence.is_unfenced() {
                FencePath::Unfenced
            } else {
                match at.strategy {
                    FenceStrategy::Verify if at.rereads == 0 => FencePath::Verified,
                    FenceStrategy::Verify => FencePath::ReRead,
                    FenceStrategy::ServerWait => FencePath::ServerWait,
                    FenceStrategy::Escalate => FencePath::Escalated,
                }
            };
            Step::Done(Ok(SessionResponse::new(
                response,
                Visibility::Guaranteed(path),
                None,
                at.attempts,
            )))
        }
        Err(staleness) => {
            let stale = StaleRead {
                staleness,
                attempts: at.attempts,
                last_strategy: at.strategy,
            };
            tracing::debug!(target: "ryw::fence", attempts = at.attempts, strategy = ?at.strategy, "read behind its fence");
            match at
                .fence
                .after_stale(&shared.fence, shared.support, at.strategy, at.rereads)
            {
                FenceDecision::Retry { strategy, delay } => {
                    if strategy == FenceStrategy::Verify {
                        at.rereads += 1;
                    }
                    at.strategy = strategy;
                    at.held = Some(Box::new((response, stale)));
                    Step::Again(delay)
                }
                _ => Step::Done(give_up(at, response, stale)),
            }
        }
    }
}

/// A cheap read may return scopes it did not name up front (the items of a query): each must
/// still reflect what the session requires of it, or the read is stale like any other.
fn beyond_the_fence<A: StoreAdapter>(
    at: &Attempt<A>,
    observed: &Observed,
) -> Result<(), Staleness> {
    if observed.is_strong() || at.strategy != FenceStrategy::Verify {
        return Ok(());
    }
    let mut extra = observed
        .iter()
        .filter(|(scope, _)| at.fence.requirement(*scope).is_none())
        .peekable();
    if extra.peek().is_none() {
        return Ok(());
    }
    let state = at.session.lock();
    for (scope, seen) in extra {
        let r = state.vector().requirement(scope);
        let required = r.version.max(r.horizon.unwrap_or(Version::ZERO));
        if seen < required {
            return Err(Staleness {
                scope,
                required,
                observed: Some(seen),
                horizon: r.horizon.is_some() && r.horizon > Some(r.version),
            });
        }
    }
    Ok(())
}

/// True when the session already held everything `observed` shows when the request started
/// (state only grows, so it still does): the common steady-state read skips the second lock.
fn already_known<A: StoreAdapter>(at: &Attempt<A>, observed: &Observed) -> bool {
    at.op == Operation::Read
        && observed.seen_clock().is_none_or(|c| c <= at.clock_at_start)
        && observed
            .seen_context()
            .is_none_or(|(v, _)| at.fence.context().is_some_and(|c| c.version >= v))
        && observed.iter().all(|(scope, v)| {
            v == crate::Version::ZERO || at.fence.requirement(scope).is_some_and(|r| r.version >= v)
        })
}

fn give_up<A: StoreAdapter>(at: &Attempt<A>, response: A::Response, stale: StaleRead) -> Out<A> {
    match at.stale_reads {
        StaleReadPolicy::Error => Err(Error::StaleRead(Box::new(stale))),
        _ => Ok(SessionResponse::new(
            response,
            Visibility::Pending(Box::new(stale)),
            None,
            at.attempts,
        )),
    }
}

fn on_final_error<A: StoreAdapter>(
    at: &mut Attempt<A>,
    class: Option<ErrorClass>,
    error: A::Error,
) -> Out<A> {
    // A re-read or escalation failed: the earlier (stale) data is still worth returning.
    if let Some(held) = at.held.take() {
        let (response, mut stale) = *held;
        stale.attempts = at.attempts;
        return give_up(at, response, stale);
    }
    let transient = class.is_some_and(|c| c.is_transient());
    if let (
        Operation::Write(Replay::Never),
        Some(ErrorClass::Transient(Applied::Unknown)),
        Some((write_id, _)),
    )
    | (_, Some(ErrorClass::Unresolved), Some((write_id, _))) = (at.op, class, at.stamp)
    {
        return Err(Error::Ambiguous {
            write_id,
            source: error,
        });
    }
    Err(Error::Store {
        source: error,
        attempts: at.attempts,
        transient,
    })
}

fn resolve_conflict<A: StoreAdapter, P>(
    shared: &LayerConfig<A, P>,
    at: &mut Attempt<A>,
    error: A::Error,
) -> Result<(), Error<A::Error>> {
    let store_error = |error| Error::Store {
        source: error,
        attempts: at.attempts,
        transient: false,
    };
    let Some((write_id, timestamp)) = at.stamp else {
        return Err(store_error(error));
    };
    let Some(conflict) = shared.adapter.conflict(&at.base, &error) else {
        return Err(store_error(error));
    };
    // Record the winner's version: the session has now seen it.
    let mut observed = Observed::new();
    observed.push(conflict.scope, conflict.current);
    if let Some(ts) = conflict.current_timestamp {
        observed.clock(ts);
    }
    record(shared, &at.session, &observed);
    if at.conflicts >= shared.conflict_retries {
        return Err(Error::Conflict(Box::new(conflict)));
    }
    let rebased = match shared.resolver.resolve(&at.base, &conflict) {
        Resolution::Overwrite => shared.adapter.rebase(&mut at.base, &conflict),
        Resolution::Merge(mut merged) => {
            shared.adapter.stamp_write(
                &mut merged,
                &WriteStamp {
                    write_id,
                    timestamp,
                    fence: &at.fence,
                },
            );
            let ok = shared.adapter.rebase(&mut merged, &conflict);
            if ok {
                at.base = merged;
            }
            ok
        }
        _ => false,
    };
    if !rebased {
        return Err(Error::Conflict(Box::new(conflict)));
    }
    tracing::debug!(target: "ryw::conflict", "write rebased onto the current version");
    at.conflicts += 1;
    Ok(())
}

/// Merges what a response showed into the session (versions only move forward).
pub(crate) fn record<A: StoreAdapter, P>(
    shared: &LayerConfig<A, P>,
    session: &Session,
    observed: &Observed,
) {
    let mut state = session.lock();
    if let Some((version, bytes)) = observed.context_shared() {
        state.advance_context(crate::session::StoreContext {
            store: shared.adapter.store(),
            version,
            bytes,
        });
    }
    for (scope, version) in observed.iter() {
        state.advance(scope, version);
    }
    if let Some(ts) = observed.seen_clock() {
        state.observe_clock(ts);
    }
}
