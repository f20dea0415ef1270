//! The outbox layer: above [`ryw::ReadYourWritesLayer`], it keeps writes the store cannot take
//! and answers them [`Written::Deferred`]; reads that cannot show a queued write say so.

use crate::breaker::Breaker;
use crate::entry::{DurableRequest, Entry};
use crate::store::{Outbox, OutboxError};
use crate::sync::lock;
use ryw::adapter::{Operation, Replay, Scopes, StoreAdapter};
use ryw::telemetry::{Observer, OutboxEvent};
use ryw::{ReadYourWrites, SessionRequest, SessionResponse, StampedWrite, WriteId};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// A service that can stamp a write to send later, without sending it now:
/// [`ReadYourWrites::stamp`].
pub trait StampForLater<R> {
    /// See [`ReadYourWrites::stamp`].
    fn stamp_for_later(&self, request: &SessionRequest<R>) -> Option<StampedWrite<R>>;
}

impl<S, A: StoreAdapter, P> StampForLater<A::Request> for ReadYourWrites<S, A, P> {
    fn stamp_for_later(
        &self,
        request: &SessionRequest<A::Request>,
    ) -> Option<StampedWrite<A::Request>> {
        self.stamp(request)
    }
}

/// What a request through the outbox layer became.
///
/// # Copies of one request get one answer
///
/// A request sent more than once as clones of itself (a hedge, tower's `Retry` above this
/// layer) is one write. Once one copy applied it, every other copy is answered
/// [`Written::AlreadyApplied`] and never queued; once one copy was deferred, every other copy is
/// answered with that same [`Deferred`]. A copy that would defer while another is on its way to
/// the store waits for that one's answer first.
#[derive(Debug)]
#[non_exhaustive]
pub enum Written<T> {
    /// The store answered (a read, or a write that applied), as the session layer answered.
    Applied(SessionResponse<T>),
    /// The write is kept in the outbox, durably, and will be applied exactly once when the store
    /// answers again (or end as a dead letter, with its reason). Not a success yet.
    Deferred(Deferred),
    /// Another copy of this request (a clone sent by a hedge or a retry) applied the write, and
    /// got the store's response: this copy was not sent, and nothing was queued.
    AlreadyApplied(WriteId),
}

impl<T> Written<T> {
    /// The session layer's response, if the store answered this copy.
    pub fn applied(self) -> Option<SessionResponse<T>> {
        match self {
            Written::Applied(r) => Some(r),
            Written::Deferred(_) | Written::AlreadyApplied(_) => None,
        }
    }

    /// The deferral, if the write was kept for later.
    pub fn deferred(&self) -> Option<&Deferred> {
        match self {
            Written::Deferred(d) => Some(d),
            Written::Applied(_) | Written::AlreadyApplied(_) => None,
        }
    }

    /// True when the write applied: this copy's response ([`Written::Applied`]) or another
    /// copy's ([`Written::AlreadyApplied`]).
    pub fn is_applied(&self) -> bool {
        matches!(self, Written::Applied(_) | Written::AlreadyApplied(_))
    }
}

/// What the copies of one request know of their write ([`SessionRequest::copies`]).
#[derive(Debug, Default)]
struct Copies {
    state: std::sync::Mutex<CopiesState>,
    settled: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct CopiesState {
    /// Copies on their way to the store.
    sending: u32,
    /// What became of the write, once a copy knows.
    outcome: Option<Outcome>,
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Applied(WriteId),
    Deferred(Deferred),
}

impl Copies {
    fn lock(&self) -> std::sync::MutexGuard<'_, CopiesState> {
        lock(&self.state)
    }

    /// The outcome another copy settled, as this copy's answer.
    fn answer<T>(outcome: Outcome) -> Written<T> {
        match outcome {
            Outcome::Applied(id) => Written::AlreadyApplied(id),
            Outcome::Deferred(d) => Written::Deferred(d),
        }
    }

    /// Waits until no other copy is on its way to the store, or one settled the write: the
    /// settled outcome, if any.
    async fn settled_by_others(&self) -> Option<Outcome> {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if state.outcome.is_some() || state.sending == 0 {
                    return state.outcome;
                }
            }
            notified.await;
        }
    }

    /// One copy is no longer on its way, with what it learnt.
    fn done(&self, outcome: Option<Outcome>) {
        let mut state = self.lock();
        state.sending -= 1;
        if state.outcome.is_none() {
            state.outcome = outcome;
        }
        drop(state);
        self.settled.notify_waiters();
    }

    fn settle(&self, outcome: Outcome) {
        let mut state = self.lock();
        if state.outcome.is_none() {
            state.outcome = Some(outcome);
        }
        drop(state);
        self.settled.notify_waiters();
    }
}

/// Marks a copy as sent until dropped (also when its future is dropped mid-way, as a hedge
/// drops the slower copy).
struct Sending<'a> {
    copies: Option<&'a Copies>,
    outcome: Option<Outcome>,
}

impl Sending<'_> {
    fn start(copies: Option<&Copies>) -> Sending<'_> {
        if let Some(c) = copies {
            c.lock().sending += 1;
        }
        Sending {
            copies,
            outcome: None,
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.copies {
            c.done(self.outcome);
        }
    }
}

/// A write kept in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// The write's id: the replay sends it under this id, and the store recognises it.
    pub write_id: WriteId,
    /// Its place in the outbox.
    pub seq: u64,
    /// Why it was not sent now.
    pub reason: DeferReason,
}

/// Why a write was deferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeferReason {
    /// It failed with a transient error past its retry budget (it may have applied: the replay
    /// goes as a replay).
    Failed,
    /// The circuit breaker says the store is down: it was not sent.
    StoreDown,
    /// An earlier write of its session is queued: it queues behind it, so the session's writes
    /// apply in the order they were made. Not sent.
    Behind,
}

impl Deferred {
    /// [`ryw::Visibility::Queued`] with the write's id: what an HTTP handler puts into its `202
    /// Accepted` response's extensions, for `ryw-http` to send as `ryw-visibility: queued;
    /// write=N`.
    pub fn visibility(&self) -> ryw::Visibility {
        ryw::Visibility::Queued(self.write_id)
    }
}

impl DeferReason {
    /// `failed`, `store_down` or `behind`, for telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::Failed => "failed",
            DeferReason::StoreDown => "store_down",
            DeferReason::Behind => "behind",
        }
    }
}

/// The outbox layer's errors. Each says whether the write may have applied
/// ([`OutboxServiceError::may_have_applied`]):
///
/// | error | may have applied |
/// |---|---|
/// | [`Layer`](OutboxServiceError::Layer) | as [`ryw::Error::may_have_applied`] says: an ambiguous write, or a store error after an attempt that may have applied |
/// | [`Outbox`](OutboxServiceError::Outbox), [`NotDeferrable`](OutboxServiceError::NotDeferrable) | only if its `cause` may have (`None`: nothing was sent) |
/// | [`QueuedBefore`](OutboxServiceError::QueuedBefore) | never: nothing was sent |
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxServiceError<E: std::error::Error + 'static> {
    /// The session layer's error, unchanged: a read, a write that may not be replayed
    /// ([`Replay::Never`]), or a failure that retrying later cannot mend.
    #[error(transparent)]
    Layer(ryw::Error<E>),
    /// The write should have been deferred but the outbox could not keep it (full, or its
    /// storage failed). Nothing was kept; `cause` is why it was not applied now.
    #[error("write not deferred: {error}")]
    Outbox {
        /// Why the outbox refused it.
        error: OutboxError,
        /// The error the write failed with, if it was sent.
        cause: Option<ryw::Error<E>>,
    },
    /// A write that may not be replayed ([`Replay::Never`]), so may not be deferred either, made
    /// while an earlier write of its session is queued: sent now, it would apply before that one.
    /// Not sent; send it again once the outbox has replayed the session's writes.
    #[error("write not sent: an earlier write of its session ({write_id}) is still queued")]
    QueuedBefore {
        /// The session's latest queued write.
        write_id: WriteId,
    },
    /// The write's store request has no durable encoding ([`DurableRequest::encode`] refused it,
    /// or the session is too large to keep).
    #[error("write not deferred: {reason}")]
    NotDeferrable {
        /// Why.
        reason: String,
        /// The error the write failed with, if it was sent.
        cause: Option<ryw::Error<E>>,
    },
}

impl<E: std::error::Error + 'static> OutboxServiceError<E> {
    /// Whether the write may have applied despite the error (see the table on the type): false
    /// means it definitely did not, and nothing of it is queued.
    pub fn may_have_applied(&self) -> bool {
        match self {
            OutboxServiceError::Layer(e) => e.may_have_applied(),
            OutboxServiceError::Outbox { cause, .. }
            | OutboxServiceError::NotDeferrable { cause, .. } => {
                cause.as_ref().is_some_and(ryw::Error::may_have_applied)
            }
            OutboxServiceError::QueuedBefore { .. } => false,
        }
    }
}

/// Keeps writes the store cannot take in an [`Outbox`]; see the [crate docs](crate).
#[derive(Clone)]
pub struct OutboxLayer<A> {
    outbox: Arc<Outbox>,
    adapter: A,
    breaker: Arc<Breaker>,
    observer: Option<Arc<dyn Observer>>,
}

impl<A> fmt::Debug for OutboxLayer<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxLayer")
            .field("outbox", &self.outbox)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<A> OutboxLayer<A> {
    /// A layer keeping writes in `outbox`, with `adapter` (the session layer's) telling reads
    /// from writes and naming their scopes, and the default [`Breaker`].
    pub fn new(outbox: Arc<Outbox>, adapter: A) -> Self {
        OutboxLayer {
            outbox,
            adapter,
            breaker: Arc::new(Breaker::default()),
            observer: None,
        }
    }

    /// Reports every write deferred or refused to `observer` ([`Observer::outbox`]).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Uses `breaker` (shared with the [`crate::Replayer`], which closes it when the store
    /// answers again).
    pub fn breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = breaker;
        self
    }
}

impl<S, A: Clone> Layer<S> for OutboxLayer<A> {
    type Service = OutboxService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        OutboxService {
            inner,
            outbox: self.outbox.clone(),
            adapter: self.adapter.clone(),
            breaker: self.breaker.clone(),
            observer: self.observer.clone(),
        }
    }
}

/// The service of [`OutboxLayer`].
#[derive(Clone)]
pub struct OutboxService<S, A> {
    inner: S,
    outbox: Arc<Outbox>,
    adapter: A,
    breaker: Arc<Breaker>,
    observer: Option<Arc<dyn Observer>>,
}

impl<S, A> fmt::Debug for OutboxService<S, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxService")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, A> Service<SessionRequest<A::Request>> for OutboxService<S, A>
where
    A: StoreAdapter,
    A::Request: DurableRequest + Send + 'static,
    A::Response: Send + 'static,
    A::Error: std::error::Error + Send + Sync + 'static,
    S: Service<
            SessionRequest<A::Request>,
            Response = SessionResponse<A::Response>,
            Error = ryw::Error<A::Error>,
        > + StampForLater<A::Request>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Written<A::Response>;
    type Error = OutboxServiceError<A::Error>;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per call: a write deferred without sending needs none, and an
        // inner service that cannot get ready is a store that is down.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SessionRequest<A::Request>) -> Self::Future {
        let mut inner = self.inner.clone();
        let outbox = self.outbox.clone();
        let breaker = self.breaker.clone();
        let observer = self.observer.clone();
        let op = self.adapter.operation(request.get_ref());
        // The scopes matter only to a read while writes are queued, and to a write deferred.
        let scopes = match op {
            Operation::Read if outbox.is_empty() => Vec::new(),
            _ => {
                let mut base = request.get_ref().clone();
                self.adapter.prepare(&mut base);
                let mut scopes = Scopes::new();
                self.adapter.scopes(&base, &mut scopes);
                scopes.iter().collect()
            }
        };
        Box::pin(async move {
            // A continuation rebuilt from a token issued before a replay of its writes learns
            // what the replay produced.
            outbox.catch_up(request.session());
            let session = request.session().id();
            match op {
                Operation::Read => {
                    let queued = outbox.queued_write(session, &scopes);
                    let response = send::<S, A>(&mut inner, request).await?;
                    Ok(Written::Applied(match queued {
                        Some(write_id) => response.queued(write_id),
                        None => response,
                    }))
                }
                Operation::Write(Replay::Never) => {
                    // It may not be deferred (it must never be sent twice), and sent now it would
                    // apply before the session's earlier writes still queued: refused, typed.
                    if let Some(write_id) = outbox.latest_queued(session) {
                        let refused = Err(OutboxServiceError::QueuedBefore { write_id });
                        return report(observer.as_deref(), refused);
                    }
                    let _in_flight = outbox.write_started(session);
                    Ok(Written::Applied(send::<S, A>(&mut inner, request).await?))
                }
                Operation::Write(_) => {
                    // Until this write is settled, the replayer leaves the session alone: a
                    // write of it deferred meanwhile must not be applied before this one.
                    let _in_flight = outbox.write_started(session);
                    // The copies of this request, if it has any: one write, one answer.
                    let copies = request.copies::<Copies>();
                    let copies = copies.as_deref();
                    if let Some(outcome) = copies.and_then(|c| c.lock().outcome) {
                        return Ok(Copies::answer(outcome));
                    }
                    let now = if outbox.has_queued(session) {
                        Some(DeferReason::Behind)
                    } else if breaker.is_open() {
                        Some(DeferReason::StoreDown)
                    } else {
                        None
                    };
                    if let Some(reason) = now {
                        // Another copy on its way to the store may apply it: its answer first.
                        if let Some(c) = copies {
                            if let Some(outcome) = c.settled_by_others().await {
                                return Ok(Copies::answer(outcome));
                            }
                        }
                        let stamped = inner.stamp_for_later(&request);
                        let out = defer(&outbox, &request, stamped, scopes, reason, None);
                        settle_deferred(copies, &out);
                        return report(observer.as_deref(), out);
                    }
                    let keep = request.clone();
                    let mut sending = Sending::start(copies);
                    let sent = send::<S, A>(&mut inner, request).await;
                    match sent {
                        Ok(response) => {
                            breaker.succeeded();
                            sending.outcome = response.write_id().map(Outcome::Applied);
                            Ok(Written::Applied(response))
                        }
                        Err(OutboxServiceError::Layer(error)) if deferrable(&error) => {
                            breaker.failed();
                            drop(sending);
                            if let Some(c) = copies {
                                if let Some(outcome) = c.settled_by_others().await {
                                    return Ok(Copies::answer(outcome));
                                }
                            }
                            // Sent: the stamp it went with. Refused before sending: a new one.
                            let stamped = keep.stamped().or_else(|| inner.stamp_for_later(&keep));
                            let out = defer(
                                &outbox,
                                &keep,
                                stamped,
                                scopes,
                                DeferReason::Failed,
                                Some(error),
                            );
                            settle_deferred(copies, &out);
                            report(observer.as_deref(), out)
                        }
                        Err(e) => {
                            // The store answered (a refusal, a conflict): it is up.
                            breaker.succeeded();
                            Err(e)
                        }
                    }
                }
                _ => Ok(Written::Applied(send::<S, A>(&mut inner, request).await?)),
            }
        })
    }
}

/// Tells the other copies of a request that its write was deferred.
fn settle_deferred<T, E: std::error::Error + 'static>(
    copies: Option<&Copies>,
    out: &Result<Written<T>, OutboxServiceError<E>>,
) {
    if let (Some(c), Ok(Written::Deferred(d))) = (copies, out) {
        c.settle(Outcome::Deferred(*d));
    }
}

/// Tells the observer what became of a write that was to be deferred.
fn report<T, E: std::error::Error + 'static>(
    observer: Option<&dyn Observer>,
    out: Result<Written<T>, OutboxServiceError<E>>,
) -> Result<Written<T>, OutboxServiceError<E>> {
    let Some(observer) = observer else {
        return out;
    };
    let event = match &out {
        Ok(Written::Deferred(d)) => OutboxEvent::Deferred {
            reason: d.reason.as_str(),
        },
        Err(OutboxServiceError::Outbox {
            error: OutboxError::Full { .. },
            ..
        }) => OutboxEvent::Refused { reason: "full" },
        Err(OutboxServiceError::Outbox {
            error: OutboxError::Invalid(_),
            ..
        }) => OutboxEvent::Refused {
            reason: "not_deferrable",
        },
        Err(OutboxServiceError::Outbox { .. }) => OutboxEvent::Refused { reason: "storage" },
        Err(OutboxServiceError::NotDeferrable { .. }) => OutboxEvent::Refused {
            reason: "not_deferrable",
        },
        Err(OutboxServiceError::QueuedBefore { .. }) => OutboxEvent::Refused {
            reason: "queued_before",
        },
        _ => return out,
    };
    observer.outbox(&event);
    out
}

/// A failure that waiting for the store can mend: transient errors past the retry budget, and an
/// inner service that could not get ready (connection refused, load shed). The layer defers such
/// a write; the replayer leaves such an entry for a later pass.
pub(crate) fn deferrable<E>(error: &ryw::Error<E>) -> bool {
    matches!(
        error,
        ryw::Error::Store {
            transient: true,
            ..
        } | ryw::Error::NotReady(_)
    )
}

async fn send<S, A>(
    inner: &mut S,
    request: SessionRequest<A::Request>,
) -> Result<SessionResponse<A::Response>, OutboxServiceError<A::Error>>
where
    A: StoreAdapter,
    A::Error: std::error::Error + 'static,
    S: Service<
        SessionRequest<A::Request>,
        Response = SessionResponse<A::Response>,
        Error = ryw::Error<A::Error>,
    >,
{
    inner
        .ready()
        .await
        .map_err(OutboxServiceError::Layer)?
        .call(request)
        .await
        .map_err(OutboxServiceError::Layer)
}

fn defer<R, T, E>(
    outbox: &Outbox,
    request: &SessionRequest<R>,
    stamped: Option<StampedWrite<R>>,
    scopes: Vec<ryw::ScopeKey>,
    reason: DeferReason,
    cause: Option<ryw::Error<E>>,
) -> Result<Written<T>, OutboxServiceError<E>>
where
    R: DurableRequest,
    E: std::error::Error + 'static,
{
    let Some(stamped) = stamped else {
        return Err(OutboxServiceError::NotDeferrable {
            reason: "the session layer did not stamp it".into(),
            cause,
        });
    };
    // Sent again (a clone, a retry) while it is queued: the same write, already kept.
    if let Some(seq) = outbox.queued_seq(stamped.write_id) {
        return Ok(Written::Deferred(Deferred {
            write_id: stamped.write_id,
            seq,
            reason,
        }));
    }
    let mut bytes = Vec::new();
    if let Err(e) = stamped.request.encode(&mut bytes) {
        return Err(OutboxServiceError::NotDeferrable {
            reason: e.reason.into(),
            cause,
        });
    }
    // Nothing is kept that could not be read back: a write answered "deferred" can be replayed.
    if let Err(e) = R::decode(&bytes) {
        return Err(OutboxServiceError::NotDeferrable {
            reason: format!("its encoding does not decode: {e}"),
            cause,
        });
    }
    let session = match request.session().token().encode() {
        Ok(token) => token,
        Err(e) => {
            return Err(OutboxServiceError::NotDeferrable {
                reason: e.to_string(),
                cause,
            })
        }
    };
    let entry = Entry {
        write_id: stamped.write_id,
        timestamp: stamped.timestamp,
        may_have_applied: stamped.may_have_applied,
        deferred_at: ryw::signing::now_secs(),
        scopes,
        session,
        request: bytes,
    };
    match outbox.append_live(&entry, request.session()) {
        Ok(seq) => {
            tracing::info!(target: "ryw::outbox", seq, ?reason, "write deferred");
            Ok(Written::Deferred(Deferred {
                write_id: stamped.write_id,
                seq,
                reason,
            }))
        }
        Err(error) => Err(OutboxServiceError::Outbox { error, cause }),
    }
}
