//! What the layer reports about its requests, for an application's metrics.
//!
//! The core depends on no telemetry library. An [`Observer`], installed with
//! [`ReadYourWritesLayer::observer`](crate::ReadYourWritesLayer::observer), hears of every
//! finished request (with its visibility or its error, its attempts, re-reads and escalation),
//! every retry, every fence miss and every conflict. The `ryw-otel` crate implements it with
//! OpenTelemetry instruments. Without an observer the layer does no extra work: no clock read, one
//! branch per request.
//!
//! Events carry no session id, key or token, so nothing an observer turns into a metric
//! attribute can explode its cardinality.
//!
//! # Example
//!
//! ```
//! use ryw::telemetry::{Observer, Outcome, RequestEvent};
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! /// Counts guaranteed reads.
//! #[derive(Debug, Default)]
//! struct Guaranteed(AtomicU64);
//!
//! impl Observer for Guaranteed {
//!     fn request(&self, event: &RequestEvent) {
//!         if let Outcome::Read(visibility) = event.outcome {
//!             if visibility.is_guaranteed() {
//!                 self.0.fetch_add(1, Ordering::Relaxed);
//!             }
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SimStore::new(SimConfig::default().seed(3));
//! let observer = Arc::new(Guaranteed::default());
//! let mut service = ServiceBuilder::new()
//!     .layer(
//!         ReadYourWritesLayer::new(SimAdapter::new())
//!             .clock(store.clock())
//!             .observer(observer.clone()),
//!     )
//!     .service(store.client(0));
//! let session = Session::new();
//! service.ready().await?.call(session.request(SimRequest::put("k", 1))).await?;
//! service.ready().await?.call(session.request(SimRequest::get("k"))).await?;
//! assert_eq!(observer.0.load(Ordering::Relaxed), 1);
//! # Ok(())
//! # }
//! ```

use crate::adapter::{ErrorClass, Operation};
pub use crate::fence::Escalation;
use crate::fence::{FencePath, FenceStrategy, Staleness, Visibility};
use crate::version::StoreId;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Hears what the layer does. Every method has an empty default; implement those you need.
/// Called on the request's task, inline: keep them short and never block.
pub trait Observer: fmt::Debug + Send + Sync + 'static {
    /// A request finished: its future returned a response or an error.
    fn request(&self, event: &RequestEvent) {
        let _ = event;
    }

    /// The retry policy sends a request again after an error.
    fn retry(&self, event: &RetryEvent) {
        let _ = event;
    }

    /// A read came back behind its fence (before any re-read or escalation decided on it).
    fn fence_miss(&self, event: &FenceMissEvent) {
        let _ = event;
    }

    /// A conditional write lost to another writer.
    fn conflict(&self, event: &ConflictEvent) {
        let _ = event;
    }

    /// A store service made one call to its database (each attempt is its own call).
    fn db_call(&self, event: &DbCallEvent<'_>) {
        let _ = event;
    }

    /// The HTTP layer (`ryw-http`) received, issued or refused a session token.
    fn token(&self, event: &TokenEvent) {
        let _ = event;
    }

    /// The outbox (`ryw-outbox`) deferred, replayed, dead-lettered or refused a write.
    fn outbox(&self, event: &OutboxEvent) {
        let _ = event;
    }
}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn request(&self, event: &RequestEvent) {
        (**self).request(event)
    }
    fn retry(&self, event: &RetryEvent) {
        (**self).retry(event)
    }
    fn fence_miss(&self, event: &FenceMissEvent) {
        (**self).fence_miss(event)
    }
    fn conflict(&self, event: &ConflictEvent) {
        (**self).conflict(event)
    }
    fn db_call(&self, event: &DbCallEvent<'_>) {
        (**self).db_call(event)
    }
    fn token(&self, event: &TokenEvent) {
        (**self).token(event)
    }
    fn outbox(&self, event: &OutboxEvent) {
        (**self).outbox(event)
    }
}

/// One finished request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestEvent {
    /// The store the adapter serves.
    pub store: StoreId,
    /// Read or write.
    pub operation: Operation,
    /// How many scopes the adapter named for it.
    pub scopes: usize,
    /// Attempts sent to the store (1 when nothing was retried or re-read).
    pub attempts: u32,
    /// Cheap re-reads after a read behind its fence.
    pub rereads: u32,
    /// Why the read went to the strong path, if it did.
    pub escalation: Option<Escalation>,
    /// How it ended.
    pub outcome: Outcome,
    /// From the call to the answer, in the layer's time source (tokio's clock).
    pub duration: Duration,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A read, with its visibility.
    Read(ReadVisibility),
    /// A write that applied (or was recognised as applied).
    Written,
    /// An error.
    Failed(FailureKind),
}

/// A read's [`Visibility`], summed up for telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadVisibility {
    /// [`Visibility::Guaranteed`], and how.
    Guaranteed(FencePath),
    /// [`Visibility::Pending`]: what was behind on the last attempt.
    Pending(Staleness),
    /// [`Visibility::Unscoped`].
    Unscoped,
    /// [`Visibility::Queued`]: a write of the session to the scope waits in an outbox.
    Queued,
    /// [`Visibility::SessionOnly`]: guaranteed for the session, not fenced against its
    /// principal's record, and how.
    SessionOnly(FencePath),
}

impl ReadVisibility {
    /// The summary of `visibility`.
    pub fn of(visibility: &Visibility) -> Self {
        match visibility {
            Visibility::Guaranteed(path) => ReadVisibility::Guaranteed(*path),
            Visibility::Pending(stale) => ReadVisibility::Pending(stale.staleness),
            Visibility::Queued(_) => ReadVisibility::Queued,
            Visibility::SessionOnly(path) => ReadVisibility::SessionOnly(*path),
            _ => ReadVisibility::Unscoped,
        }
    }

    /// `guaranteed`, `pending`, `unscoped`, `queued` or `session_only`, for metric attributes and
    /// span fields.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadVisibility::Guaranteed(_) => "guaranteed",
            ReadVisibility::Pending(_) => "pending",
            ReadVisibility::Unscoped => "unscoped",
            ReadVisibility::Queued => "queued",
            ReadVisibility::SessionOnly(_) => "session_only",
        }
    }

    /// True for [`ReadVisibility::Guaranteed`].
    pub fn is_guaranteed(self) -> bool {
        matches!(self, ReadVisibility::Guaranteed(_))
    }
}

/// The kind of a failed request's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The store failed; `transient` when retries ran out.
    Store {
        /// The last error was transient.
        transient: bool,
    },
    /// A write that may not be replayed may have applied ([`crate::Error::Ambiguous`]).
    Ambiguous,
    /// A clone of the write may have applied; not sent ([`crate::Error::AlreadySent`]).
    AlreadySent,
    /// A conditional write lost and the resolver kept the other version.
    Conflict,
    /// A strict read stayed stale.
    StaleRead,
    /// The inner service failed in `poll_ready`.
    NotReady,
    /// A strict read named no scope.
    Unscoped,
}

impl FailureKind {
    /// A short, stable name (`store_transient`, `ambiguous`, ...), for metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Store { transient: true } => "store_transient",
            FailureKind::Store { transient: false } => "store_permanent",
            FailureKind::Ambiguous => "ambiguous",
            FailureKind::AlreadySent => "already_sent",
            FailureKind::Conflict => "conflict",
            FailureKind::StaleRead => "stale_read",
            FailureKind::NotReady => "not_ready",
            FailureKind::Unscoped => "unscoped",
        }
    }
}

/// What the HTTP layer did with a session token. Sizes are in bytes of the token's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenEvent {
    /// A request came with a token that verified.
    Received {
        /// Its size.
        bytes: usize,
    },
    /// A response carries a newly signed token (a token answered unchanged is not counted).
    Issued {
        /// Its size.
        bytes: usize,
    },
    /// A request's tokens were refused.
    Rejected {
        /// Why: `VerifyError::code()` (`token_expired`, `token_bad_signature`, ...) or the HTTP
        /// layer's own (`token_too_many`, `token_not_text`).
        code: &'static str,
    },
}

/// What the outbox (`ryw-outbox`) did with a write. Reasons are short, stable names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxEvent {
    /// The write was kept for later: `failed` (past its retries), `store_down` (the breaker) or
    /// `behind` (an earlier write of its session is queued).
    Deferred {
        /// Why.
        reason: &'static str,
    },
    /// A queued write was applied by the replayer and left the outbox.
    Replayed,
    /// A queued write can no longer be replayed safely and became a dead letter: `expired`,
    /// `undecodable`, or the kind of the store's refusal (`store`, `conflict`, `ambiguous`, ...).
    DeadLettered {
        /// Why.
        reason: &'static str,
    },
    /// A write that should have been deferred was not kept: `full`, `storage`, `not_deferrable`.
    Refused {
        /// Why.
        reason: &'static str,
    },
}

/// A session id as spans show it: a one-way 64-bit digest, printed as 16 hex digits. It tells
/// one session's requests apart from another's without putting the id itself in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionHash(u64);

impl SessionHash {
    /// The digest of `id`.
    pub fn of(id: crate::session::SessionId) -> Self {
        let bits = id.as_u128();
        let hi = crate::hash::splitmix64((bits >> 64) as u64 ^ crate::hash::GAMMA);
        SessionHash(crate::hash::splitmix64(hi ^ bits as u64))
    }

    /// The digest's bits.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SessionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A retry about to be sent.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The store.
    pub store: StoreId,
    /// Read or write.
    pub operation: Operation,
    /// The class of the error retried (`None` when a custom policy retried a success).
    pub class: Option<ErrorClass>,
    /// Attempts sent so far.
    pub attempts: u32,
}

/// A read behind its fence.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct FenceMissEvent {
    /// The store.
    pub store: StoreId,
    /// What was behind, by how much.
    pub staleness: Staleness,
    /// The strategy of the attempt.
    pub strategy: FenceStrategy,
}

/// A conditional write that lost to another writer.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ConflictEvent {
    /// The store.
    pub store: StoreId,
    /// What came of it.
    pub resolution: ConflictResolution,
}

/// What came of a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictResolution {
    /// The resolver rebased the write onto the current version; it is sent again.
    Rebased,
    /// The conflict was reported to the caller.
    Reported,
}

impl ConflictResolution {
    /// A short, stable name, for metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictResolution::Rebased => "rebased",
            ConflictResolution::Reported => "reported",
        }
    }
}

/// One call of a store service to its database, as telemetry sees it: a CLIENT span named as
/// OpenTelemetry's conventions for database clients name it (`{db.operation.name}
/// {db.collection.name}`, target `ryw::db`, INFO level), child of the `ryw.request` span that
/// sent it, and, when the service has an observer, a [`DbCallEvent`] when it ends.
///
/// The store services of `ryw-dynamodb`, `ryw-mongodb` and `ryw-scylla` use it; a store service
/// of your own can too. [`DbCall::wanted`] tells whether anyone listens, so that a service
/// without an observer or a subscriber describes nothing.
///
/// ```
/// use ryw::telemetry::DbCall;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let observer = None;
/// let answer: Result<u32, std::io::Error> = if DbCall::wanted(observer.as_ref()) {
///     DbCall::new("redis", "GET")
///         .collection(Some("sessions".to_owned()))
///         .start(observer)
///         .run(async { Ok(7) }, |_e: &std::io::Error| "io")
///         .await
/// } else {
///     Ok(7)
/// };
/// assert_eq!(answer.unwrap(), 7);
/// # }
/// ```
#[derive(Debug)]
pub struct DbCall {
    system: &'static str,
    operation: &'static str,
    collection: Option<String>,
    namespace: Option<String>,
    consistent_read: Option<bool>,
    consistency_level: Option<&'static str>,
    observer: Option<Arc<dyn Observer>>,
    span: tracing::Span,
}

impl DbCall {
    /// True when a call would be reported: an observer is given, or a subscriber wants the
    /// `ryw::db` spans.
    #[inline]
    pub fn wanted(observer: Option<&Arc<dyn Observer>>) -> bool {
        observer.is_some() || tracing::enabled!(target: "ryw::db", tracing::Level::INFO)
    }

    /// A call of `operation` (`GetItem`, `find`, `SELECT`, ...) on `system` (`db.system.name`).
    pub fn new(system: &'static str, operation: &'static str) -> Self {
        DbCall {
            system,
            operation,
            collection: None,
            namespace: None,
            consistent_read: None,
            consistency_level: None,
            observer: None,
            span: tracing::Span::none(),
        }
    }

    /// Sets the table or collection (`db.collection.name`).
    pub fn collection(mut self, collection: Option<String>) -> Self {
        self.collection = collection;
        self
    }

    /// Sets the database or keyspace (`db.namespace`).
    pub fn namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Sets whether a DynamoDB read is strongly consistent (`aws.dynamodb.consistent_read`).
    pub fn consistent_read(mut self, consistent: Option<bool>) -> Self {
        self.consistent_read = consistent;
        self
    }

    /// Sets the CQL consistency level (`cassandra.consistency.level`).
    pub fn consistency_level(mut self, level: Option<&'static str>) -> Self {
        self.consistency_level = level;
        self
    }

    /// Opens the span, as a child of the current one (call it where the request is sent, in the
    /// service's `call`), and keeps `observer` to report to.
    pub fn start(mut self, observer: Option<Arc<dyn Observer>>) -> Self {
        use tracing::field::Empty;
        self.observer = observer;
        self.span = tracing::info_span!(
            target: "ryw::db",
            "db",
            otel.name = Empty,
            otel.kind = "client",
            otel.status_code = Empty,
            error.type = Empty,
            db.system.name = self.system,
            db.operation.name = self.operation,
            db.collection.name = self.collection.as_deref(),
            db.namespace = self.namespace.as_deref(),
            aws.dynamodb.consistent_read = self.consistent_read,
            cassandra.consistency.level = self.consistency_level,
        );
        if !self.span.is_disabled() {
            match &self.collection {
                Some(c) => self.span.record(
                    "otel.name",
                    tracing::field::display(format_args!("{} {c}", self.operation)),
                ),
                None => self.span.record("otel.name", self.operation),
            };
        }
        self
    }

    /// Runs the call inside its span and reports how it went: `error.type` (named by
    /// `error_type`) and `otel.status_code` on the span, a [`DbCallEvent`] to the observer.
    pub async fn run<T, E, F>(self, call: F, error_type: fn(&E) -> &'static str) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        use tracing::Instrument;
        let started = std::time::Instant::now();
        let result = call.instrument(self.span.clone()).await;
        let error = result.as_ref().err().map(error_type);
        if let Some(error) = error {
            self.span.record("error.type", error);
            self.span.record("otel.status_code", "error");
        }
        if let Some(observer) = &self.observer {
            observer.db_call(&DbCallEvent {
                system: self.system,
                operation: self.operation,
                collection: self.collection.as_deref(),
                namespace: self.namespace.as_deref(),
                duration: started.elapsed(),
                error_type: error,
                consistent_read: self.consistent_read,
                consistency_level: self.consistency_level,
            });
        }
        result
    }
}

/// One call of a store service to its database, described as OpenTelemetry's semantic conventions
/// for database clients do (`db.system.name`, `db.operation.name`, ...). The store services of
/// `ryw-dynamodb`, `ryw-mongodb` and `ryw-scylla` report them to an observer given with their
/// `observer` method.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DbCallEvent<'a> {
    /// `db.system.name`: `aws.dynamodb`, `mongodb`, `cassandra` (ScyllaDB speaks CQL).
    pub system: &'static str,
    /// `db.operation.name`: `GetItem`, `find`, `EXECUTE`, ...
    pub operation: &'a str,
    /// `db.collection.name`: the table or collection, when there is one.
    pub collection: Option<&'a str>,
    /// `db.namespace`: the database or keyspace, when known.
    pub namespace: Option<&'a str>,
    /// How long the call took.
    pub duration: Duration,
    /// `error.type` when the call failed: a short, stable name.
    pub error_type: Option<&'a str>,
    /// `aws.dynamodb.consistent_read`, for DynamoDB reads.
    pub consistent_read: Option<bool>,
    /// `cassandra.consistency.level`, for CQL requests.
    pub consistency_level: Option<&'a str>,
}

impl<'a> DbCallEvent<'a> {
    /// A call of `operation` on `system` that took `duration`.
    pub fn new(system: &'static str, operation: &'a str, duration: Duration) -> Self {
        DbCallEvent {
            system,
            operation,
            collection: None,
            namespace: None,
            duration,
            error_type: None,
            consistent_read: None,
            consistency_level: None,
        }
    }

    /// Sets the table or collection.
    pub fn collection(mut self, collection: Option<&'a str>) -> Self {
        self.collection = collection;
        self
    }

    /// Sets the database or keyspace.
    pub fn namespace(mut self, namespace: Option<&'a str>) -> Self {
        self.namespace = namespace;
        self
    }

    /// Sets the error type of a failed call.
    pub fn error_type(mut self, error_type: Option<&'a str>) -> Self {
        self.error_type = error_type;
        self
    }

    /// Sets whether a DynamoDB read was strongly consistent.
    pub fn consistent_read(mut self, consistent: Option<bool>) -> Self {
        self.consistent_read = consistent;
        self
    }

    /// Sets the CQL consistency level.
    pub fn consistency_level(mut self, level: Option<&'a str>) -> Self {
        self.consistency_level = level;
        self
    }
}
