//! Read-your-writes, monotonic reads, monotonic writes and writes-follow-reads for distributed
//! NoSQL stores, as [tower] middleware.
//!
//! An application reads from replicas (or with eventual consistency) for speed and cost; its users
//! must still see what they just wrote, across app instances. ryw gives every logical client a
//! [`Session`]: a write sequence, a hybrid clock and a bounded version vector of the high-water
//! marks its reads must reflect. [`ReadYourWrites`] wraps a store service and, per request:
//!
//! - stamps writes with a [`WriteId`] (the idempotency key, reused by every retry) and a hybrid
//!   clock reading;
//! - fences reads: the store waits for the version, the read is escalated, or a cheap read is
//!   verified and re-read on a miss ([`fence`]);
//! - records the versions every response shows, so the session only moves forward;
//! - retries transient failures with backoff, jitter and a budget, replaying a write only when the
//!   store can recognise the replay ([`retry`]);
//! - hands lost conditional writes to a resolver ([`conflict`]);
//! - and returns a [`Visibility`] with every response: guaranteed, or pending with the required and
//!   observed versions (or a typed stale-read error, if asked).
//!
//! The session travels as a compact [`SessionToken`] (about 90 to 105 base64url characters for 4
//! scopes, capped at 1 KiB), so a second app instance given only the token continues the session.
//! Before a token goes to a client, [`signing`] signs it (HMAC-SHA256 with key rotation, expiry,
//! revocation, principal binding); the `ryw-http` crate carries it in a header or cookie.
//!
//! What is store-specific lives in a [`StoreAdapter`]; adapters exist for MongoDB, ScyllaDB and
//! DynamoDB in their own crates, and `ryw-sim` has a simulated replicated store.
//!
//! # Example
//!
//! ```
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SimStore::new(SimConfig::default().seed(7));
//! let mut service = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
//!     .service(store.client(0));
//!
//! let session = Session::new();
//! service.ready().await?.call(session.request(SimRequest::put("posts/1", 1))).await?;
//!
//! // The replica near this instance lags; the fence makes the read see the write anyway.
//! let read = service.ready().await?.call(session.request(SimRequest::get("posts/1"))).await?;
//! assert!(read.visibility().is_guaranteed());
//! assert_eq!(read.get_ref().value(), Some(1));
//!
//! // Another instance, given only the token, continues the session.
//! let token = session.token().encode()?;
//! let elsewhere = Session::from_encoded(&token)?;
//! let mut other = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
//!     .service(store.client(1));
//! let read = other.ready().await?.call(elsewhere.request(SimRequest::get("posts/1"))).await?;
//! assert_eq!(read.get_ref().value(), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees and the status contract
//!
//! For every read whose [`Visibility`] is `Guaranteed`, and for every scope the read touches, the
//! response reflects at least the highest version of that scope the session has written or read
//! before the read started (read-your-writes and monotonic reads). Writes are stamped with a
//! sequence and a hybrid clock after everything the session has seen (monotonic writes and
//! writes-follow-reads where the store orders by client time or conditions on versions). A write is
//! only replayed under its original [`WriteId`]. A `Pending` read carries the data, the version it
//! needed and the version it saw; nothing is reported as guaranteed that was not verified, waited
//! for, or read on the strong path.
//!
//! [tower]: https://docs.rs/tower

pub mod adapter;
pub mod clock;
pub mod conflict;
pub mod error;
pub mod fence;
pub mod future;
mod layer;
mod mix;
pub mod retry;
pub mod revocation;
pub mod session;
pub mod signing;
pub mod store;
pub mod token;
pub mod version;

pub use adapter::StoreAdapter;
pub use error::Error;
pub use fence::{FenceConfig, FenceStrategy, StaleReadPolicy, Visibility};
pub use layer::ReadYourWritesLayer;
pub use session::{Session, SessionId, SessionState, WriteId};
pub use store::{InMemorySessionStore, SessionStore};
pub use token::{SessionToken, TokenError};
pub use version::{ScopeKey, StoreId, Version, VersionVector};

use crate::adapter::{Operation, Scopes, WriteStamp};
use crate::fence::ReadFence;
use crate::future::{Attempt, ResponseFuture};
use crate::layer::LayerConfig;
use crate::retry::{RetryPolicy, SessionRetryPolicy};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// A store request paired with the session it belongs to.
#[derive(Clone, Debug)]
pub struct SessionRequest<R> {
    session: Session,
    request: R,
    stale_reads: Option<StaleReadPolicy>,
}

impl<R> SessionRequest<R> {
    /// Pairs `request` with `session` (see also [`Session::request`]).
    #[inline]
    pub fn new(session: Session, request: R) -> Self {
        SessionRequest {
            session,
            request,
            stale_reads: None,
        }
    }

    /// Overrides the layer's [`StaleReadPolicy`] for this request (for example, strict reads for
    /// a payment page).
    pub fn stale_reads(mut self, policy: StaleReadPolicy) -> Self {
        self.stale_reads = Some(policy);
        self
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The store request.
    pub fn get_ref(&self) -> &R {
        &self.request
    }

    /// The store request, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.request
    }

    /// Takes the store request out.
    pub fn into_inner(self) -> R {
        self.request
    }
}

/// A store response with its visibility status.
#[derive(Clone, Debug)]
pub struct SessionResponse<T> {
    response: T,
    visibility: Visibility,
    write_id: Option<WriteId>,
    attempts: u32,
}

impl<T> SessionResponse<T> {
    pub(crate) fn new(
        response: T,
        visibility: Visibility,
        write_id: Option<WriteId>,
        attempts: u32,
    ) -> Self {
        SessionResponse {
            response,
            visibility,
            write_id,
            attempts,
        }
    }

    /// The visibility status.
    #[inline]
    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    /// The write id, for writes.
    pub fn write_id(&self) -> Option<WriteId> {
        self.write_id
    }

    /// Attempts made against the store (1 when nothing was retried or re-read).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The store response.
    #[inline]
    pub fn get_ref(&self) -> &T {
        &self.response
    }

    /// The store response, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.response
    }

    /// Takes the store response out.
    #[inline]
    pub fn into_inner(self) -> T {
        self.response
    }

    /// Splits into the store response and the status.
    pub fn into_parts(self) -> (T, Visibility) {
        (self.response, self.visibility)
    }
}

/// Session stamping, read fencing and retry around a store service. Built by
/// [`ReadYourWritesLayer`].
///
/// # Clone
///
/// The inner service is cloned into every request's future (to retry and re-read), and the store
/// request is cloned once per request and once per further attempt; both should be cheap.
pub struct ReadYourWrites<S, A: StoreAdapter, P = RetryPolicy<A>> {
    inner: S,
    shared: Arc<LayerConfig<A, P>>,
}

impl<S: Clone, A: StoreAdapter, P> Clone for ReadYourWrites<S, A, P> {
    fn clone(&self) -> Self {
        ReadYourWrites {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, A: StoreAdapter + fmt::Debug, P: fmt::Debug> fmt::Debug
    for ReadYourWrites<S, A, P>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadYourWrites")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, A: StoreAdapter, P> ReadYourWrites<S, A, P> {
    pub(crate) fn from_parts(inner: S, shared: Arc<LayerConfig<A, P>>) -> Self {
        ReadYourWrites { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Takes the inner service out.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, A, P> Service<SessionRequest<A::Request>> for ReadYourWrites<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request, Response = A::Response, Error = A::Error> + Clone,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    type Response = SessionResponse<A::Response>;
    type Error = Error<A::Error>;
    type Future = ResponseFuture<S, A, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::NotReady)
    }

    fn call(&mut self, req: SessionRequest<A::Request>) -> Self::Future {
        let SessionRequest {
            session,
            request: mut base,
            stale_reads,
        } = req;
        let shared = &*self.shared;
        let adapter = &shared.adapter;
        let op = adapter.operation(&base);
        let mut scopes = Scopes::new();
        adapter.scopes(&base, &mut scopes);

        let mut fence = ReadFence::new();
        let mut stamp = None;
        let clock_at_start;
        {
            let mut state = session.lock();
            for scope in scopes.iter() {
                fence.push(state.vector().requirement(scope));
            }
            if let Some(c) = state.context(adapter.store()) {
                fence.set_context(Some(c.clone()));
            }
            if let Operation::Write(_) = op {
                stamp = Some(state.next_write(shared.clock.now_micros()));
            }
            clock_at_start = state.clock();
        }

        let strategy = match op {
            Operation::Read => fence.initial_strategy(&shared.fence, shared.support),
            _ => FenceStrategy::Verify,
        };
        let mut first = match stamp {
            Some((write_id, timestamp)) => {
                adapter.stamp_write(
                    &mut base,
                    &WriteStamp {
                        write_id,
                        timestamp,
                        fence: &fence,
                    },
                );
                base.clone()
            }
            None => base.clone(),
        };
        if op == Operation::Read && !fence.is_unfenced() {
            adapter.apply_fence(&mut first, &fence, strategy);
        }

        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(first);
        ResponseFuture::new(
            future,
            inner,
            self.shared.clone(),
            Attempt {
                session,
                base,
                op,
                fence,
                strategy,
                stamp,
                clock_at_start,
                stale_reads: stale_reads.unwrap_or(shared.fence.stale_reads),
                attempts: 0,
                rereads: 0,
                conflicts: 0,
                held: None,
                may_have_applied: false,
            },
        )
    }
}
