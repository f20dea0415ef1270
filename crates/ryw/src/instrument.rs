//! The request's span and what the layer's [`Observer`] hears of it.
//!
//! Everything here stays out of the request path's code: the span is opened only when a
//! subscriber wants it (one check otherwise), and the observer's calls and the span's events are
//! `#[cold]` functions. Inlined, even a disabled event's code changes how the request path
//! compiles (measured: +10 ns per request).

use crate::adapter::{ErrorClass, Operation, StoreAdapter};
use crate::config::LayerConfig;
use crate::error::Error;
use crate::fence::{Escalation, FenceStrategy, Staleness};
use crate::request::SessionResponse;
use crate::session::Session;
use crate::telemetry::{
    ConflictEvent, ConflictResolution, FailureKind, FenceMissEvent, Outcome, ReadVisibility,
    RequestEvent, RetryEvent,
};
use crate::version::Version;

/// What a request did, for its span and the observer, when it ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    pub(crate) op: Operation,
    /// Scopes fenced (or written).
    pub(crate) scopes: usize,
    /// Attempts sent to the store.
    pub(crate) attempts: u32,
    pub(crate) rereads: u32,
    pub(crate) escalation: Option<Escalation>,
    /// The strategy of the last attempt.
    pub(crate) strategy: FenceStrategy,
    /// When the request started, if an observer is installed (no clock read otherwise).
    pub(crate) started: Option<tokio::time::Instant>,
}

/// Opens the request's span, `ryw.request` at INFO level (target `ryw`), with its fields
/// declared up front, and fills in what is known when the request starts. The session id appears
/// only hashed (a one-way 64-bit digest), enough to follow one session across spans. Called only
/// when a subscriber may want it ([`tracing::level_enabled!`] at INFO, one check on the request
/// path); `None` when it does not.
#[cold]
#[inline(never)]
pub(crate) fn request_span<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    op: Operation,
    session: &Session,
    scopes: usize,
    strategy: FenceStrategy,
) -> Option<tracing::Span> {
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
    Some(span)
}

/// Tells the span and the observer how the request ended, and hands the answer back. Called
/// only when either is there to hear it, and kept out of the request path: taking even a
/// reference to the answer there would pin it to the stack on its way out (a copy and a stall
/// per request measured without any observer).
#[cold]
#[inline(never)]
pub(crate) fn finish<A: StoreAdapter, P, T, E>(
    config: &LayerConfig<A, P>,
    span: Option<&tracing::Span>,
    summary: &Summary,
    out: Result<SessionResponse<T>, Error<E>>,
) -> Result<SessionResponse<T>, Error<E>> {
    let outcome = match &out {
        Ok(response) if summary.op == Operation::Read => {
            Outcome::Read(ReadVisibility::of(response.visibility()))
        }
        Ok(_) => Outcome::Written,
        Err(error) => Outcome::Failed(failure_kind(error)),
    };
    if let Some(span) = span {
        record_outcome(span, summary, outcome);
    }
    let Some(observer) = &config.observer else {
        return out;
    };
    observer.request(&RequestEvent {
        store: config.adapter.store(),
        operation: summary.op,
        scopes: summary.scopes,
        attempts: summary.attempts,
        rereads: summary.rereads,
        escalation: summary.escalation,
        outcome,
        duration: summary.started.map(|s| s.elapsed()).unwrap_or_default(),
    });
    out
}

/// Records how the request ended on its span (`otel.status_code` is `error` for an error; a
/// pending read is not an error).
fn record_outcome(span: &tracing::Span, summary: &Summary, outcome: Outcome) {
    span.record("ryw.attempts", summary.attempts);
    span.record("ryw.rereads", summary.rereads);
    if let Some(reason) = summary.escalation {
        span.record("ryw.escalation.reason", reason.as_str());
    }
    match outcome {
        Outcome::Read(visibility) => {
            span.record("ryw.fence.strategy", summary.strategy.as_str());
            span.record("ryw.outcome", visibility.as_str());
            if let ReadVisibility::Guaranteed(path) | ReadVisibility::SessionOnly(path) = visibility
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

/// A retry about to be sent: the span's `retry` event (DEBUG, target `ryw::retry`) and the
/// observer's [`RetryEvent`].
#[cold]
#[inline(never)]
pub(crate) fn retried<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    op: Operation,
    class: Option<ErrorClass>,
    attempts: u32,
) {
    tracing::debug!(
        target: "ryw::retry",
        class = class.map_or("none", ErrorClass::as_str),
        attempts,
        "retry"
    );
    if let Some(observer) = &config.observer {
        observer.retry(&RetryEvent {
            store: config.adapter.store(),
            operation: op,
            class,
            attempts,
        });
    }
}

/// A read behind its fence: the span's `fence miss` event (DEBUG, target `ryw::fence`) and the
/// observer's [`FenceMissEvent`].
#[cold]
#[inline(never)]
pub(crate) fn fence_missed<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    staleness: &Staleness,
    attempts: u32,
    strategy: FenceStrategy,
) {
    tracing::debug!(
        target: "ryw::fence",
        required = staleness.required.get(),
        observed = staleness.observed.map(Version::get),
        horizon = staleness.horizon,
        attempts,
        strategy = strategy.as_str(),
        "fence miss"
    );
    if let Some(observer) = &config.observer {
        observer.fence_miss(&FenceMissEvent {
            store: config.adapter.store(),
            staleness: *staleness,
            strategy,
        });
    }
}

/// A conflict resolved or reported.
pub(crate) fn conflict<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    resolution: ConflictResolution,
) {
    if let Some(observer) = &config.observer {
        observer.conflict(&ConflictEvent {
            store: config.adapter.store(),
            resolution,
        });
    }
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
