//! The response future of [`crate::ReadYourWrites`], and the state of one request in flight.
//!
//! [`ResponseFuture`] owns the request in flight (`InFlight`): the session, the stamped store
//! request, the read fence and the counters of one logical request. After every store response,
//! one function (`InFlight::decide`) decides what happens: return, re-read, escalate, retry, or resolve a
//! conflict and send the rebased write. The future only carries that decision out (sleeping,
//! waiting for readiness, calling the inner service).

use crate::adapter::{ErrorClass, Observed, Operation, Scopes, StoreAdapter};
use crate::adaptive::StaleProgress;
use crate::clock::HybridTimestamp;
use crate::config::LayerConfig;
use crate::conflict::Resolution;
use crate::error::Error;
use crate::fence::{
    Escalation, FenceDecision, FencePath, FenceStrategy, ReadFence, StaleRead, StaleReadPolicy,
    Visibility,
};
use crate::instrument::{self, Summary};
use crate::request::{SessionRequest, SessionResponse};
use crate::retry::{Classified, SessionRetryPolicy};
use crate::session::{Session, StoreContext, WriteId};
use crate::stamp::{self, Copies, Stamp};
use crate::telemetry::ConflictResolution;
use pin_project::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
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
    /// Not sent: a clone of this write may have applied and it may not be replayed.
    AlreadySent(WriteId),
    Done,
}

/// One logical request in flight through the layer: everything that outlives a single attempt
/// against the store.
pub(crate) struct InFlight<A: StoreAdapter> {
    session: Session,
    /// The store request as stamped, before any fence: every attempt starts from a clone of it.
    base: A::Request,
    op: Operation,
    fence: ReadFence,
    /// The strategy of the attempt in flight.
    strategy: FenceStrategy,
    /// A write's stamp.
    stamp: Option<Stamp>,
    /// The session's clock when the request started.
    clock_at_start: HybridTimestamp,
    stale_reads: StaleReadPolicy,
    /// Attempts sent to the store so far.
    sent: u32,
    rereads: u32,
    conflicts: u32,
    /// The last stale response, returned as `Pending` if a re-read or escalation fails.
    /// And the request's span, when a subscriber wants it. Both rare: one box, allocated only
    /// for them, keeps the future as small as without them (a larger one is moved with a
    /// `memcpy` call, measured at +11 ns per request).
    cold: Option<Box<Cold<A>>>,
    /// An earlier attempt of this write failed in a way that may have applied: later attempts
    /// are replays ([`StoreAdapter::prepare_replay`]).
    may_have_applied: bool,
    /// The write shared with the request's clones, when it was cloned.
    copies: Option<Arc<Copies<A::Request>>>,
    /// When the request started, if an observer is installed (no clock read otherwise).
    started: Option<tokio::time::Instant>,
    /// Why the read went to the strong path, if it did.
    escalation: Option<Escalation>,
}

/// The rare parts of a request in flight, boxed.
struct Cold<A: StoreAdapter> {
    /// The last stale response, returned as `Pending` if a re-read or escalation fails.
    held: Option<(A::Response, StaleRead)>,
    /// The request's span, when a subscriber wants it.
    span: Option<tracing::Span>,
    /// When the first stale response of an adaptively fenced read arrived.
    stale_since: Option<tokio::time::Instant>,
    /// The delay of an adaptively fenced read's first re-read, if it was sent.
    first_reread: Option<Duration>,
    /// That re-read is in flight: its outcome is still to be learned.
    first_reread_pending: bool,
}

impl<A: StoreAdapter> Default for Cold<A> {
    fn default() -> Self {
        Cold {
            held: None,
            span: None,
            stale_since: None,
            first_reread: None,
            first_reread_pending: false,
        }
    }
}

/// What [`InFlight::decide`] decided after a store response.
enum Next<B, T> {
    /// The request is over.
    Return(T),
    /// The retry policy asked for another attempt after its backoff.
    Retry(B),
    /// The read was behind its fence: read again after the delay (with the strategy
    /// [`InFlight::decide`] chose, which may be an escalation to the strong path).
    ReRead(Duration),
    /// A conflict was resolved: send the rebased write now.
    Rebased,
}

type Out<A> =
    Result<SessionResponse<<A as StoreAdapter>::Response>, Error<<A as StoreAdapter>::Error>>;

impl<A: StoreAdapter> InFlight<A> {
    /// Reads the session, stamps a write (or takes the stamp a clone of the request was sent
    /// with), builds the fence and prepares the first attempt. Returns the state and the first
    /// store request, or the write's id when the request must not be sent: a clone of it may
    /// have applied, and the write may not be replayed.
    #[inline]
    pub(crate) fn start<P>(
        config: &LayerConfig<A, P>,
        request: SessionRequest<A::Request>,
    ) -> (Self, Result<A::Request, WriteId>) {
        let (session, mut base, stale_reads, copies) = request.into_parts();
        let adapter = &config.adapter;
        adapter.prepare(&mut base);
        let op = adapter.operation(&base);
        let mut scopes = Scopes::new();
        adapter.scopes(&base, &mut scopes);

        // Held across stamping, so that clones started concurrently share one stamp.
        let mut slot = match op {
            Operation::Write(_) => copies.as_deref().map(Copies::lock),
            Operation::Read => None,
        };
        let mut fence = ReadFence::new();
        let start = stamp::stamp_or_reuse(
            config,
            &session,
            op,
            &mut base,
            &scopes,
            slot.as_deref_mut(),
            &mut fence,
        );
        // A write kept for later goes as a replay from the request and its clones: a delivery
        // of it elsewhere may have applied.
        let kept = copies.as_deref().is_some_and(Copies::kept_elsewhere);
        let may_have_applied = start.may_have_applied || kept;
        let sent = match slot.as_deref_mut() {
            Some(Some(write)) => write.send(op, may_have_applied),
            _ => Ok(may_have_applied),
        };
        drop(slot);

        let strategy = match op {
            Operation::Read => fence.initial_strategy(&config.fence, config.support),
            _ => FenceStrategy::Verify,
        };
        let escalation = match op {
            Operation::Read => fence.escalation(&config.fence, strategy),
            _ => None,
        };
        let cold = if tracing::level_enabled!(tracing::Level::INFO) {
            instrument::request_span(config, op, &session, fence.requirements().len(), strategy)
                .map(|span| {
                    Box::new(Cold {
                        span: Some(span),
                        ..Cold::default()
                    })
                })
        } else {
            None
        };
        let in_flight = InFlight {
            session,
            base,
            op,
            fence,
            strategy,
            stamp: start.stamp,
            clock_at_start: start.clock,
            stale_reads: stale_reads.unwrap_or(config.fence.stale_reads),
            sent: 0,
            rereads: 0,
            conflicts: 0,
            cold,
            may_have_applied,
            copies,
            started: config
                .observer
                .as_ref()
                .map(|_| tokio::time::Instant::now()),
            escalation,
        };
        if let Err(stamp) = sent {
            tracing::debug!(target: "ryw::retry", "a clone of this write may have applied: not sent again");
            return (in_flight, Err(stamp.write_id));
        }
        let first = in_flight.attempt(adapter);
        (in_flight, Ok(first))
    }

    /// The request's span, if a subscriber wants it.
    #[inline]
    fn span(&self) -> Option<&tracing::Span> {
        self.cold.as_ref()?.span.as_ref()
    }

    /// Tells the span and the observer how the request ended ([`instrument::finish`]).
    fn finish<P>(&self, config: &LayerConfig<A, P>, out: Out<A>) -> Out<A> {
        let summary = Summary {
            op: self.op,
            scopes: self.fence.requirements().len(),
            attempts: self.sent,
            rereads: self.rereads,
            escalation: self.escalation,
            strategy: self.strategy,
            started: self.started,
        };
        instrument::finish(config, self.span(), &summary, out)
    }

    /// The store request of an attempt after the first. For a request that was cloned, every
    /// attempt any clone sent that may have applied makes this one a replay; a write that may
    /// not be replayed is then not sent (its id is returned instead).
    fn next_attempt(&mut self, adapter: &A) -> Result<A::Request, WriteId> {
        if let (Some(copies), Some(_)) = (&self.copies, self.stamp) {
            match copies.send(self.op, self.may_have_applied) {
                Ok(may_have_applied) => self.may_have_applied = may_have_applied,
                Err(stamp) => return Err(stamp.write_id),
            }
        }
        Ok(self.attempt(adapter))
    }

    /// The store request of the next attempt: the stamped request, marked as a replay when an
    /// earlier attempt may have applied, fenced with the current strategy.
    #[inline]
    fn attempt(&self, adapter: &A) -> A::Request {
        let mut request = self.base.clone();
        if self.may_have_applied {
            adapter.prepare_replay(&mut request);
        }
        if self.op == Operation::Read && !self.fence.is_unfenced() {
            adapter.apply_fence(&mut request, &self.fence, self.strategy);
        }
        request
    }

    /// The one decision point after a store response: classify an error once, hand a conflict
    /// to the resolver, apply the replay rule, let the retry policy retry, check a read against
    /// its fence and re-read or escalate when it is behind, or return.
    #[inline]
    fn decide<P>(
        &mut self,
        config: &LayerConfig<A, P>,
        retries: &mut Option<P::State>,
        result: Result<A::Response, A::Error>,
    ) -> Next<P::Future, Out<A>>
    where
        P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
    {
        self.sent += 1;
        let class = match &result {
            Err(e) => Some(config.adapter.classify(e)),
            Ok(_) => None,
        };
        if class == Some(ErrorClass::AMBIGUOUS) {
            self.may_have_applied = true;
        }
        if let Some(copies) = &self.copies {
            copies.answered(class);
        }
        // Conflicts are the resolver's, not the retry policy's.
        let mut result = match (class, result) {
            (Some(ErrorClass::Conflict), Err(error)) => {
                return match self.resolve_conflict(config, error) {
                    Ok(()) => Next::Rebased,
                    Err(e) => Next::Return(Err(e)),
                };
            }
            (_, result) => result,
        };
        // The replay rule is the layer's, whatever policy is installed: a transient failure the
        // rule does not allow to retry (an unreplayable write that may have applied), or an
        // unresolved replay, is never sent again.
        let forbidden = class.is_some_and(|c| stamp::never_again(self.op, c));
        // tower's contract: the policy sees every result once the request's retry state exists.
        // Until the first failure it does not: the policy hears of the success instead.
        if retries.is_none() && result.is_err() && !forbidden {
            *retries = Some(config.policy.start());
        }
        match retries.as_mut() {
            Some(_) if forbidden => {}
            Some(state) => {
                let classified = Classified {
                    operation: self.op,
                    error: class,
                };
                if let Some(backoff) =
                    config
                        .policy
                        .retry(state, &mut self.base, &mut result, classified)
                {
                    instrument::retried(config, self.op, class, self.sent);
                    return Next::Retry(backoff);
                }
            }
            None if self.sent == 1 && result.is_ok() => config.policy.first_attempt_succeeded(),
            None => {}
        }
        match result {
            Ok(response) => self.on_response(config, response),
            Err(error) => Next::Return(self.on_final_error(config, class, error)),
        }
    }

    #[inline]
    /// A read's answer (reads carry no write id).
    fn read_response(&self, response: A::Response, visibility: Visibility) -> Out<A> {
        Ok(SessionResponse::new(response, visibility, None, self.sent))
    }

    #[inline]
    fn on_response<B, P>(
        &mut self,
        config: &LayerConfig<A, P>,
        response: A::Response,
    ) -> Next<B, Out<A>> {
        let mut observed = Observed::new();
        config.adapter.observe(&self.base, &response, &mut observed);
        let known =
            self.op == Operation::Read && self.fence.already_known(&observed, self.clock_at_start);
        if !known {
            record(config, &self.session, &observed);
        }
        if let Operation::Write(_) = self.op {
            // A write that names no scope raises no requirement: no later read is fenced on it,
            // which the caller is told as for an unscoped read.
            let visibility = if self.fence.requirements().is_empty() {
                Visibility::Unscoped
            } else {
                Visibility::Guaranteed(FencePath::Write)
            };
            return Next::Return(Ok(SessionResponse::new(
                response,
                visibility,
                self.stamp.map(|s| s.write_id),
                self.sent,
            )));
        }
        if self.fence.requirements().is_empty() {
            // No scope named: nothing could be fenced, and nothing is claimed.
            tracing::debug!(target: "ryw::fence", "read names no scope: unscoped");
            return Next::Return(match self.stale_reads {
                StaleReadPolicy::Error => Err(Error::Unscoped),
                _ => self.read_response(response, Visibility::Unscoped),
            });
        }
        let checked = self.fence.check(self.strategy, &observed).and_then(|()| {
            self.fence
                .check_beyond(self.strategy, &observed, &self.session)
        });
        let staleness = match checked {
            Ok(()) => {
                if self.strategy == FenceStrategy::Verify && self.rereads > 0 {
                    self.learn_reread(config, true);
                }
                let visibility = self.fence.met(self.strategy, self.rereads);
                return Next::Return(self.read_response(response, visibility));
            }
            Err(staleness) => staleness,
        };
        let stale = StaleRead {
            staleness,
            attempts: self.sent,
            last_strategy: self.strategy,
        };
        instrument::fence_missed(config, &staleness, self.sent, self.strategy);
        match self.after_stale(config) {
            FenceDecision::Retry { strategy, delay } => {
                if strategy == FenceStrategy::Verify {
                    self.rereads += 1;
                }
                if strategy == FenceStrategy::Strong && self.escalation.is_none() {
                    self.escalation = Some(Escalation::StaleRead);
                }
                self.strategy = strategy;
                self.cold
                    .get_or_insert_with(|| Box::new(Cold::default()))
                    .held = Some((response, stale));
                Next::ReRead(delay)
            }
            _ => Next::Return(self.give_up(response, stale)),
        }
    }

    /// The next step after a stale response: the adaptive fence's when the layer learns its
    /// store's catch-up, else the fixed schedule's.
    #[cold]
    #[inline(never)]
    fn after_stale<P>(&mut self, config: &LayerConfig<A, P>) -> FenceDecision {
        let Some(learner) = &config.learner else {
            return self.fence.after_stale(
                &config.fence,
                config.support,
                self.strategy,
                self.rereads,
            );
        };
        self.learn_reread(config, false);
        let now = tokio::time::Instant::now();
        let cold = self.cold.get_or_insert_with(|| Box::new(Cold::default()));
        let since = *cold.stale_since.get_or_insert(now);
        let progress = StaleProgress {
            rereads: self.rereads,
            waited: now - since,
            first_delay: cold.first_reread,
        };
        let decision = learner.after_stale(&self.fence, config.support, self.strategy, progress);
        if let (
            0,
            FenceDecision::Retry {
                strategy: FenceStrategy::Verify,
                delay,
            },
        ) = (self.rereads, decision)
        {
            cold.first_reread = Some(delay);
            cold.first_reread_pending = true;
        }
        decision
    }

    /// Tells the learner whether the read's first re-read, when it is the response just
    /// answered, met the fence.
    #[cold]
    #[inline(never)]
    fn learn_reread<P>(&mut self, config: &LayerConfig<A, P>, met: bool) {
        let first = self.cold.as_deref_mut().and_then(|cold| {
            std::mem::take(&mut cold.first_reread_pending)
                .then_some(cold.first_reread)
                .flatten()
        });
        if let (Some(learner), Some(delay)) = (&config.learner, first) {
            learner.record_reread(delay, met);
        }
    }

    fn give_up(&self, response: A::Response, stale: StaleRead) -> Out<A> {
        match self.stale_reads.give_up(stale) {
            Ok(visibility) => self.read_response(response, visibility),
            Err(stale) => Err(Error::StaleRead(stale)),
        }
    }

    /// Whether an attempt of this write, or of a copy of it, may have applied: its own, or a
    /// copy's in flight, lost or applied. Read when the request ends in an error.
    fn may_have_applied(&self) -> bool {
        self.may_have_applied || self.copies.as_deref().is_some_and(Copies::outstanding)
    }

    fn on_final_error<P>(
        &mut self,
        config: &LayerConfig<A, P>,
        class: Option<ErrorClass>,
        error: A::Error,
    ) -> Out<A> {
        // A re-read or escalation failed: the earlier (stale) data is still worth returning.
        if let Some((response, mut stale)) = self.cold.as_mut().and_then(|c| c.held.take()) {
            stale.attempts = self.sent;
            return self.give_up(response, stale);
        }
        let transient = class.is_some_and(|c| c.is_transient());
        let ambiguous =
            class.is_some_and(|c| self.stamp.is_some() && stamp::is_ambiguous(self.op, c));
        let may_have_applied = self.op != Operation::Read && self.may_have_applied();
        if ambiguous || may_have_applied {
            self.record_unresolved(config);
        }
        if let (true, Some(stamp)) = (ambiguous, self.stamp) {
            return Err(Error::Ambiguous {
                write_id: stamp.write_id,
                source: error,
            });
        }
        Err(Error::Store {
            source: error,
            attempts: self.sent,
            transient,
            may_have_applied,
        })
    }

    /// A write whose outcome is unknown: the session requires what it gives its scopes if it
    /// applied, so its next reads show it, or go strong and show whether it did.
    fn record_unresolved<P>(&self, config: &LayerConfig<A, P>) {
        let mut observed = Observed::new();
        config.adapter.observe_unresolved(&self.base, &mut observed);
        record(config, &self.session, &observed);
    }

    fn resolve_conflict<P>(
        &mut self,
        config: &LayerConfig<A, P>,
        error: A::Error,
    ) -> Result<(), Error<A::Error>> {
        let may_have_applied = self.may_have_applied();
        let store_error = |error| Error::Store {
            source: error,
            attempts: self.sent,
            transient: false,
            may_have_applied,
        };
        let Some(stamp) = self.stamp else {
            return Err(store_error(error));
        };
        let Some(conflict) = config.adapter.conflict(&self.base, &error) else {
            return Err(store_error(error));
        };
        // Record the winner's version: the session has now seen it.
        let mut observed = Observed::new();
        observed.push(conflict.scope, conflict.current);
        if let Some(ts) = conflict.current_timestamp {
            observed.clock(ts);
        }
        record(config, &self.session, &observed);
        if may_have_applied {
            // An attempt of this write, or of a copy of it, may have applied and the store shows
            // no trace of it (it was superseded, or never landed): rebasing could apply it a
            // second time, and "conflict" would say it never applied.
            self.record_unresolved(config);
            return Err(Error::Ambiguous {
                write_id: stamp.write_id,
                source: error,
            });
        }
        if self.conflicts >= config.conflict_retries {
            instrument::conflict(config, ConflictResolution::Reported);
            return Err(Error::Conflict(Box::new(conflict)));
        }
        let rebased = match config.resolver.resolve(&self.base, &conflict) {
            Resolution::Overwrite => config.adapter.rebase(&mut self.base, &conflict),
            Resolution::Merge(mut merged) => {
                config.adapter.stamp_write(&mut merged, stamp, &self.fence);
                let ok = config.adapter.rebase(&mut merged, &conflict);
                if ok {
                    self.base = merged;
                }
                ok
            }
            _ => false,
        };
        if !rebased {
            instrument::conflict(config, ConflictResolution::Reported);
            return Err(Error::Conflict(Box::new(conflict)));
        }
        instrument::conflict(config, ConflictResolution::Rebased);
        tracing::debug!(target: "ryw::conflict", "write rebased onto the current version");
        self.conflicts += 1;
        Ok(())
    }
}

/// Merges what a response showed into the session (versions only move forward).
fn record<A: StoreAdapter, P>(config: &LayerConfig<A, P>, session: &Session, observed: &Observed) {
    let mut state = session.lock();
    if let Some((version, bytes)) = observed.context_shared() {
        state.advance_context(StoreContext {
            store: config.adapter.store(),
            version,
            bytes,
        });
    }
    for (scope, version) in observed.iter() {
        state.advance(scope, version);
    }
    for (scope, version) in observed.floors() {
        state.advance(scope, version);
    }
    if let Some(ts) = observed.seen_clock() {
        state.observe_clock(ts);
    }
}

/// The future returned by [`crate::ReadYourWrites`]: drives the attempts of one request (retries,
/// re-reads, escalation, conflict rounds) without boxing.
#[pin_project]
pub struct ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request>,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    #[pin]
    state: State<S::Future, P::Future>,
    inner: S,
    /// The request's retry state, created at its first failure only.
    retries: Option<P::State>,
    config: Arc<LayerConfig<A, P>>,
    request: InFlight<A>,
}

impl<S, A, P> fmt::Debug for ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request>,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("session", &self.request.session)
            .field("operation", &self.request.op)
            .field("attempts", &self.request.sent)
            .finish_non_exhaustive()
    }
}

impl<S, A, P> ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request>,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    /// Starts a request ([`InFlight::start`]) and sends its first attempt through `inner`
    /// (already ready), or answers [`Error::AlreadySent`] without calling it.
    #[inline]
    pub(crate) fn start(
        mut inner: S,
        config: Arc<LayerConfig<A, P>>,
        request: SessionRequest<A::Request>,
    ) -> Self {
        let (request, first) = InFlight::start(&config, request);
        let state = match first {
            Ok(first) => {
                // The store service's own span (a database call) is a child of this one.
                let _entered = request.span().map(tracing::Span::enter);
                State::Calling {
                    future: inner.call(first),
                }
            }
            Err(write_id) => State::AlreadySent(write_id),
        };
        ResponseFuture {
            state,
            inner,
            retries: None,
            config,
            request,
        }
    }
}

impl<S, A, P> Future for ResponseFuture<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request, Response = A::Response>,
    S::Error: Into<A::Error>,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    type Output = Out<A>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Entered while the future is polled, like `tracing::Instrumented`.
        let span = this.request.span().cloned();
        let _entered = span.as_ref().map(tracing::Span::enter);
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    match this.request.decide(this.config, this.retries, result) {
                        Next::Return(mut out) => {
                            if this.config.observer.is_some() || this.request.span().is_some() {
                                out = this.request.finish(this.config, out);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(out);
                        }
                        Next::Retry(sleep) => this.state.set(State::Backoff { sleep }),
                        Next::ReRead(delay) if delay.is_zero() => this.state.set(State::Ready),
                        Next::ReRead(delay) => this.state.set(State::Delay {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                        Next::Rebased => this.state.set(State::Ready),
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
                        let out = this
                            .request
                            .finish(this.config, Err(Error::NotReady(e.into())));
                        this.state.set(State::Done);
                        return Poll::Ready(out);
                    }
                    match this.request.next_attempt(&this.config.adapter) {
                        Ok(request) => {
                            let future = this.inner.call(request);
                            this.state.set(State::Calling { future });
                        }
                        Err(write_id) => this.state.set(State::AlreadySent(write_id)),
                    }
                }
                StateProj::AlreadySent(write_id) => {
                    let out = Err(Error::AlreadySent {
                        write_id: *write_id,
                    });
                    let out = this.request.finish(this.config, out);
                    this.state.set(State::Done);
                    return Poll::Ready(out);
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
