//! The response future of [`crate::ReadYourWrites`], and the state of one request in flight.
//!
//! [`ResponseFuture`] owns the request in flight (`InFlight`): the session, the stamped store
//! request, the read fence and the counters of one logical request. After every store response,
//! one function (`InFlight::decide`) decides what happens: return, re-read, escalate, retry, or resolve a
//! conflict and send the rebased write. The future only carries that decision out (sleeping,
//! waiting for readiness, calling the inner service).

use crate::adapter::{
    Applied, ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter, WriteStamp,
};
use crate::adaptive::StaleProgress;
use crate::clock::HybridTimestamp;
use crate::config::LayerConfig;
use crate::conflict::Resolution;
use crate::error::Error;
use crate::fence::{
    FenceDecision, FencePath, FenceStrategy, ReadFence, StaleRead, StaleReadPolicy, Staleness,
    Verification, Visibility,
};
use crate::request::{Sent, SentWrite, SessionRequest, SessionResponse};
use crate::retry::{Classified, SessionRetryPolicy};
use crate::session::{Session, StoreContext, WriteId};
use crate::telemetry::{
    ConflictEvent, ConflictResolution, Escalation, FailureKind, FenceMissEvent, Observer, Outcome,
    ReadVisibility, RequestEvent, RetryEvent,
};
use crate::version::Version;
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
    stamp: Option<(WriteId, HybridTimestamp)>,
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
    /// The stamp shared with the request's clones, when it was cloned.
    shared_write: Option<Arc<SentWrite<A::Request>>>,
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

/// Opens the request's span, `ryw.request` at INFO level (target `ryw`), with its fields
/// declared up front, if a subscriber wants it, and fills in what is known when the request
/// starts. The session id appears only hashed (a one-way 64-bit digest), enough to follow one
/// session across spans. Without a subscriber, this is one check.
#[inline]
fn request_span<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    op: Operation,
    session: &Session,
    scopes: usize,
    strategy: FenceStrategy,
) -> Option<Box<Cold<A>>> {
    if tracing::level_enabled!(tracing::Level::INFO) {
        new_request_span(config, op, session, scopes, strategy)
    } else {
        None
    }
}

#[cold]
#[inline(never)]
fn new_request_span<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    op: Operation,
    session: &Session,
    scopes: usize,
    strategy: FenceStrategy,
) -> Option<Box<Cold<A>>> {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        target: "ryw",
        "ryw.request",
        otel.kind = "internal",
        otel.status_code = Empty,
        error.type = Empty,
        ryw.operation = op.as_str(),
        ryw.store.id = config.adapter.store().get(),
        ryw.scopes = scopes,
        ryw.session.hash = %crate::telemetry::SessionHash::of(session.id()),
        ryw.fence.strategy = Empty,
        ryw.fence.path = Empty,
        ryw.escalation.reason = Empty,
        ryw.attempts = Empty,
        ryw.rereads = Empty,
        ryw.outcome = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    if op == Operation::Read {
        span.record("ryw.fence.strategy", strategy.as_str());
    }
    Some(Box::new(Cold {
        span: Some(span),
        ..Cold::default()
    }))
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
        let (session, mut base, stale_reads, shared_write) = request.into_parts();
        let adapter = &config.adapter;
        adapter.prepare(&mut base);
        let op = adapter.operation(&base);
        let mut scopes = Scopes::new();
        adapter.scopes(&base, &mut scopes);

        // Held across stamping, so that clones started concurrently share one stamp.
        let mut slot = match op {
            Operation::Write(_) => shared_write.as_deref().map(SentWrite::lock),
            Operation::Read => None,
        };
        let reused = slot.as_deref().and_then(Option::as_ref).map(|s| {
            (
                (s.write_id, s.timestamp),
                s.stamped.clone(),
                s.outstanding > 0,
            )
        });
        let fence;
        let mut stamp = None;
        let clock_at_start;
        {
            let mut state = session.lock();
            let by_version =
                op != Operation::Read || adapter.verification(&base) == Verification::Versions;
            fence = fence_of(&state, adapter, &scopes, by_version);
            if let (Operation::Write(_), None) = (op, &reused) {
                stamp = Some(state.next_write(config.clock.now_micros()));
            }
            clock_at_start = state.clock();
        }
        let mut may_have_applied = false;
        if let Some((sent_stamp, stamped, outstanding)) = reused {
            // A clone was sent: send the very request it sent, stamped as it was. Prepared again:
            // a stamped write rebuilt elsewhere (`SessionRequest::from_stamped`, an outbox entry)
            // does not carry the adapter's configuration the store service needs.
            stamp = Some(sent_stamp);
            base = stamped;
            adapter.prepare(&mut base);
            may_have_applied = outstanding;
        } else if let Some((write_id, timestamp)) = stamp {
            adapter.stamp_write(
                &mut base,
                &WriteStamp {
                    write_id,
                    timestamp,
                    fence: &fence,
                },
            );
            if let Some(slot) = slot.as_deref_mut() {
                *slot = Some(Sent {
                    write_id,
                    timestamp,
                    stamped: base.clone(),
                    outstanding: 0,
                });
            }
        }
        let refused = may_have_applied && op == Operation::Write(Replay::Never);
        if let (false, Some(Some(sent))) = (refused, slot.as_deref_mut()) {
            sent.outstanding += 1;
        }
        drop(slot);

        let strategy = match op {
            Operation::Read => fence.initial_strategy(&config.fence, config.support),
            _ => FenceStrategy::Verify,
        };
        let escalation = match (op, strategy) {
            (Operation::Read, FenceStrategy::Strong)
                if config.fence.initial == FenceStrategy::Strong =>
            {
                Some(Escalation::Configured)
            }
            (Operation::Read, FenceStrategy::Strong) if !fence.has_horizon() => {
                Some(Escalation::Unverifiable)
            }
            (Operation::Read, FenceStrategy::Strong) => Some(Escalation::Horizon),
            _ => None,
        };
        let cold = request_span(config, op, &session, fence.requirements().len(), strategy);
        let in_flight = InFlight {
            session,
            base,
            op,
            fence,
            strategy,
            stamp,
            clock_at_start,
            stale_reads: stale_reads.unwrap_or(config.fence.stale_reads),
            sent: 0,
            rereads: 0,
            conflicts: 0,
            cold,
            may_have_applied,
            shared_write,
            started: config
                .observer
                .as_ref()
                .map(|_| tokio::time::Instant::now()),
            escalation,
        };
        if let (true, Some((write_id, _))) = (refused, stamp) {
            tracing::debug!(target: "ryw::retry", "a clone of this write may have applied: not sent again");
            return (in_flight, Err(write_id));
        }
        let first = in_flight.attempt(adapter);
        (in_flight, Ok(first))
    }

    /// The request's span, if a subscriber wants it.
    #[inline]
    fn span(&self) -> Option<&tracing::Span> {
        self.cold.as_ref()?.span.as_ref()
    }

    /// Tells the span and the observer how the request ended, and hands the answer back. Called
    /// only when either is there to hear it, and kept out of the request path: taking even a
    /// reference to the answer there would pin it to the stack on its way out (a copy and a
    /// stall per request measured without any observer).
    #[cold]
    #[inline(never)]
    fn finish<P>(&self, config: &LayerConfig<A, P>, out: Out<A>) -> Out<A> {
        let outcome = match &out {
            Ok(response) if self.op == Operation::Read => {
                Outcome::Read(ReadVisibility::of(response.visibility()))
            }
            Ok(_) => Outcome::Written,
            Err(error) => Outcome::Failed(failure_kind(error)),
        };
        if let Some(span) = self.span() {
            self.record_outcome(span, outcome);
        }
        let Some(observer) = &config.observer else {
            return out;
        };
        observer.request(&RequestEvent {
            store: config.adapter.store(),
            operation: self.op,
            scopes: self.fence.requirements().len(),
            attempts: self.sent,
            rereads: self.rereads,
            escalation: self.escalation,
            outcome,
            duration: self.started.map(|s| s.elapsed()).unwrap_or_default(),
        });
        out
    }

    /// Records how the request ended on its span (`otel.status_code` is `error` for an error;
    /// a pending read is not an error).
    fn record_outcome(&self, span: &tracing::Span, outcome: Outcome) {
        span.record("ryw.attempts", self.sent);
        span.record("ryw.rereads", self.rereads);
        if let Some(reason) = self.escalation {
            span.record("ryw.escalation.reason", reason.as_str());
        }
        match outcome {
            Outcome::Read(visibility) => {
                span.record("ryw.fence.strategy", self.strategy.as_str());
                span.record("ryw.outcome", visibility.as_str());
                if let ReadVisibility::Guaranteed(path) | ReadVisibility::SessionOnly(path) =
                    visibility
                {
                    span.record("ryw.fence.path", path.as_str());
                }
            }
            Outcome::Written => {
                span.record("ryw.outcome", "written");
            }
            Outcome::Failed(kind) => {
                span.record("ryw.outcome", kind.as_str());
                span.record("error.type", kind.as_str());
                span.record("otel.status_code", "error");
            }
        }
    }

    /// The store request of an attempt after the first. For a request that was cloned, every
    /// attempt any clone sent that may have applied makes this one a replay; a write that may
    /// not be replayed is then not sent (its id is returned instead).
    fn next_attempt(&mut self, adapter: &A) -> Result<A::Request, WriteId> {
        if let (Some(shared), Some((write_id, _))) = (&self.shared_write, self.stamp) {
            if let Some(sent) = shared.lock().as_mut() {
                self.may_have_applied |= sent.outstanding > 0;
                if self.may_have_applied && self.op == Operation::Write(Replay::Never) {
                    return Err(write_id);
                }
                sent.outstanding += 1;
            }
        }
        Ok(self.attempt(adapter))
    }

    /// Tells the request's clones that the attempt just answered did not apply.
    fn did_not_apply(&self, class: Option<ErrorClass>) {
        let not_applied = matches!(
            class,
            Some(ErrorClass::Transient(Applied::No) | ErrorClass::Conflict | ErrorClass::Permanent)
        );
        if let (true, Some(shared)) = (not_applied, &self.shared_write) {
            if let Some(sent) = shared.lock().as_mut() {
                sent.outstanding = sent.outstanding.saturating_sub(1);
            }
        }
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
        policy: &mut Option<P>,
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
        self.did_not_apply(class);
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
        let forbidden = match class {
            Some(ErrorClass::Unresolved) => true,
            Some(c) => c.is_transient() && !crate::retry::may_retry(self.op, c),
            None => false,
        };
        // tower's contract: the policy sees every result once it exists. Until the first
        // failure it does not: the prototype hears of the success instead.
        if policy.is_none() && result.is_err() && !forbidden {
            *policy = Some(config.policy.clone());
        }
        match policy.as_mut() {
            Some(_) if forbidden => {}
            Some(policy) => {
                let classified = Classified {
                    operation: self.op,
                    error: class,
                };
                if let Some(backoff) = policy.retry(&mut self.base, &mut result, classified) {
                    retry_event(class, self.sent);
                    if let Some(observer) = &config.observer {
                        report_retry(
                            &**observer,
                            RetryEvent {
                                store: config.adapter.store(),
                                operation: self.op,
                                class,
                                attempts: self.sent,
                            },
                        );
                    }
                    return Next::Retry(backoff);
                }
            }
            None if self.sent == 1 && result.is_ok() => config.policy.first_attempt_succeeded(),
            None => {}
        }
        match result {
            Ok(response) => self.on_response(config, response),
            Err(error) => Next::Return(self.on_final_error(class, error)),
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
        if !self.already_known(&observed) {
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
                self.stamp.map(|(w, _)| w),
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
        let checked = self
            .fence
            .check(self.strategy, &observed)
            .and_then(|()| self.beyond_the_fence(&observed));
        let staleness = match checked {
            Ok(()) => {
                let path = if self.fence.is_unfenced() {
                    FencePath::Unfenced
                } else {
                    match self.strategy {
                        FenceStrategy::Verify if self.rereads == 0 => FencePath::Verified,
                        FenceStrategy::Verify => {
                            self.learn_reread(config, true);
                            FencePath::ReRead
                        }
                        FenceStrategy::ServerWait => FencePath::ServerWait,
                        FenceStrategy::Strong => FencePath::Escalated,
                    }
                };
                let visibility = if self.fence.session_only() {
                    Visibility::SessionOnly(path)
                } else {
                    Visibility::Guaranteed(path)
                };
                return Next::Return(self.read_response(response, visibility));
            }
            Err(staleness) => staleness,
        };
        let stale = StaleRead {
            staleness,
            attempts: self.sent,
            last_strategy: self.strategy,
        };
        fence_miss_event(&staleness, self.sent, self.strategy);
        if let Some(observer) = &config.observer {
            report_fence_miss(
                &**observer,
                FenceMissEvent {
                    store: config.adapter.store(),
                    staleness,
                    strategy: self.strategy,
                },
            );
        }
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

    /// A cheap read may return scopes it did not name up front (the items of a query): each must
    /// still reflect what the session requires of it, or the read is stale like any other.
    fn beyond_the_fence(&self, observed: &Observed) -> Result<(), Staleness> {
        if observed.is_strong() || self.strategy != FenceStrategy::Verify {
            return Ok(());
        }
        let mut extra = observed
            .iter()
            .filter(|(scope, _)| self.fence.requirement(*scope).is_none())
            .peekable();
        if extra.peek().is_none() {
            return Ok(());
        }
        let state = self.session.lock();
        for (scope, seen) in extra {
            let r = state.requirement(scope);
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
    #[inline]
    fn already_known(&self, observed: &Observed) -> bool {
        self.op == Operation::Read
            // A requirement met may be the principal's: the session takes it as its own.
            && !self.fence.shared()
            && observed
                .seen_clock()
                .is_none_or(|c| c <= self.clock_at_start)
            && observed
                .seen_context()
                .is_none_or(|(v, _)| self.fence.context().is_some_and(|c| c.version >= v))
            && observed.iter().all(|(scope, v)| self.knows(scope, v))
            && observed.floors().all(|(scope, v)| self.knows(scope, v))
    }

    /// Whether the session required at least `version` of `scope` when the request started.
    #[inline]
    fn knows(&self, scope: crate::version::ScopeKey, version: Version) -> bool {
        version == Version::ZERO
            || self
                .fence
                .requirement(scope)
                .is_some_and(|r| r.version >= version)
    }

    fn give_up(&self, response: A::Response, stale: StaleRead) -> Out<A> {
        match self.stale_reads {
            StaleReadPolicy::Error => Err(Error::StaleRead(Box::new(stale))),
            _ => self.read_response(response, Visibility::Pending(Box::new(stale))),
        }
    }

    fn on_final_error(&mut self, class: Option<ErrorClass>, error: A::Error) -> Out<A> {
        // A re-read or escalation failed: the earlier (stale) data is still worth returning.
        if let Some((response, mut stale)) = self.cold.as_mut().and_then(|c| c.held.take()) {
            stale.attempts = self.sent;
            return self.give_up(response, stale);
        }
        let transient = class.is_some_and(|c| c.is_transient());
        if let (
            Operation::Write(Replay::Never),
            Some(ErrorClass::Transient(Applied::Unknown)),
            Some((write_id, _)),
        )
        | (_, Some(ErrorClass::Unresolved), Some((write_id, _))) = (self.op, class, self.stamp)
        {
            return Err(Error::Ambiguous {
                write_id,
                source: error,
            });
        }
        Err(Error::Store {
            source: error,
            attempts: self.sent,
            transient,
            may_have_applied: self.may_have_applied && self.op != Operation::Read,
        })
    }

    fn resolve_conflict<P>(
        &mut self,
        config: &LayerConfig<A, P>,
        error: A::Error,
    ) -> Result<(), Error<A::Error>> {
        let may_have_applied = self.may_have_applied;
        let store_error = |error| Error::Store {
            source: error,
            attempts: self.sent,
            transient: false,
            may_have_applied,
        };
        let Some((write_id, timestamp)) = self.stamp else {
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
        if self.conflicts >= config.conflict_retries {
            report_conflict(config, ConflictResolution::Reported);
            return Err(Error::Conflict(Box::new(conflict)));
        }
        let rebased = match config.resolver.resolve(&self.base, &conflict) {
            Resolution::Overwrite => config.adapter.rebase(&mut self.base, &conflict),
            Resolution::Merge(mut merged) => {
                config.adapter.stamp_write(
                    &mut merged,
                    &WriteStamp {
                        write_id,
                        timestamp,
                        fence: &self.fence,
                    },
                );
                let ok = config.adapter.rebase(&mut merged, &conflict);
                if ok {
                    self.base = merged;
                }
                ok
            }
            _ => false,
        };
        if !rebased {
            report_conflict(config, ConflictResolution::Reported);
            return Err(Error::Conflict(Box::new(conflict)));
        }
        report_conflict(config, ConflictResolution::Rebased);
        tracing::debug!(target: "ryw::conflict", "write rebased onto the current version");
        self.conflicts += 1;
        Ok(())
    }
}

fn report_conflict<A: StoreAdapter, P>(config: &LayerConfig<A, P>, resolution: ConflictResolution) {
    if let Some(observer) = &config.observer {
        observer.conflict(&ConflictEvent {
            store: config.adapter.store(),
            resolution,
        });
    }
}

// The observer's calls and the span's events stay out of the request path's code: inlined,
// even a disabled event's code changes how the request path compiles (measured: +10 ns).

/// The `retry` event of the request's span (DEBUG, target `ryw::retry`).
#[cold]
#[inline(never)]
fn retry_event(class: Option<ErrorClass>, attempts: u32) {
    tracing::debug!(
        target: "ryw::retry",
        class = class.map_or("none", ErrorClass::as_str),
        attempts,
        "retry"
    );
}

/// The `fence miss` event of the request's span (DEBUG, target `ryw::fence`).
#[cold]
#[inline(never)]
fn fence_miss_event(staleness: &Staleness, attempts: u32, strategy: FenceStrategy) {
    tracing::debug!(
        target: "ryw::fence",
        required = staleness.required.get(),
        observed = staleness.observed.map(Version::get),
        horizon = staleness.horizon,
        attempts,
        strategy = strategy.as_str(),
        "fence miss"
    );
}

#[cold]
#[inline(never)]
fn report_retry(observer: &dyn Observer, event: RetryEvent) {
    observer.retry(&event);
}

#[cold]
#[inline(never)]
fn report_fence_miss(observer: &dyn Observer, event: FenceMissEvent) {
    observer.fence_miss(&event);
}

/// The kind of a failed request's error, for an observer.
fn failure_kind<E>(error: &Error<E>) -> FailureKind {
    match error {
        Error::Store { transient, .. } => FailureKind::Store {
            transient: *transient,
        },
        Error::Ambiguous { .. } => FailureKind::Ambiguous,
        Error::AlreadySent { .. } => FailureKind::AlreadySent,
        Error::Conflict(_) => FailureKind::Conflict,
        Error::StaleRead(_) => FailureKind::StaleRead,
        Error::NotReady(_) => FailureKind::NotReady,
        Error::Unscoped => FailureKind::Unscoped,
    }
}

/// What the session requires of `scopes`, and its context at the adapter's store.
#[inline]
fn fence_of<A: StoreAdapter>(
    state: &crate::session::SessionState,
    adapter: &A,
    scopes: &Scopes,
    by_version: bool,
) -> ReadFence {
    let mut fence = ReadFence::new();
    fence.set_verifiable(by_version);
    fence.set_session_only(state.principal_unavailable());
    fence.set_shared(state.has_principal());
    for scope in scopes.iter() {
        fence.push(state.requirement(scope));
    }
    if let Some(c) = state.context(adapter.store()) {
        fence.set_context(Some(c.clone()));
    }
    fence
}

/// Stamps the write `request` carries as its first attempt would be stamped, without sending it
/// ([`crate::ReadYourWrites::stamp`]), and records the stamp on the request and its clones as an
/// attempt that may apply: whoever sends it later (a clone, a retry) sends this very write, as
/// a replay. A request already stamped (a clone of a sent one, or
/// [`SessionRequest::from_stamped`]) keeps its stamp. `None` for a read.
pub(crate) fn stamp_only<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    request: &SessionRequest<A::Request>,
) -> Option<crate::request::StampedWrite<A::Request>> {
    let adapter = &config.adapter;
    let mut base = request.get_ref().clone();
    adapter.prepare(&mut base);
    if adapter.operation(&base) == Operation::Read {
        return None;
    }
    // Held across stamping, as a send holds it: clones stamped at once share one stamp.
    let mut slot = request.shared_write().lock();
    if let Some(sent) = slot.as_mut() {
        // Kept for later by someone: it may apply whenever they send it.
        sent.outstanding = sent.outstanding.max(1);
        return Some(crate::request::StampedWrite {
            write_id: sent.write_id,
            timestamp: sent.timestamp,
            request: sent.stamped.clone(),
            may_have_applied: true,
        });
    }
    let mut scopes = Scopes::new();
    adapter.scopes(&base, &mut scopes);
    let (fence, (write_id, timestamp)) = {
        let mut state = request.session().lock();
        let fence = fence_of(&state, adapter, &scopes, true);
        (fence, state.next_write(config.clock.now_micros()))
    };
    adapter.stamp_write(
        &mut base,
        &WriteStamp {
            write_id,
            timestamp,
            fence: &fence,
        },
    );
    *slot = Some(Sent {
        write_id,
        timestamp,
        stamped: base.clone(),
        outstanding: 1,
    });
    Some(crate::request::StampedWrite {
        write_id,
        timestamp,
        request: base,
        may_have_applied: false,
    })
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
    /// Cloned from the layer's prototype at the first failure only.
    policy: Option<P>,
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
            policy: None,
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
                    match this.request.decide(this.config, this.policy, result) {
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
