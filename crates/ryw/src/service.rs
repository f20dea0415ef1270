//! The session layer's service: [`ReadYourWrites`] and its `call`.
//!
//! `call` starts a request in flight (`InFlight`) (reads the session, stamps a write, builds the read
//! fence) and sends its first attempt; the [`ResponseFuture`] drives the rest.

use crate::adapter::StoreAdapter;
use crate::config::LayerConfig;
use crate::error::Error;
use crate::future::ResponseFuture;
use crate::request::{SessionRequest, SessionResponse};
use crate::retry::{RetryPolicy, SessionRetryPolicy};
use crate::stamp::StampedWrite;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// Session stamping, read fencing and retry around a store service. Built by
/// [`ReadYourWritesLayer`](crate::ReadYourWritesLayer).
///
/// # Clone
///
/// The inner service is cloned into every request's future (to retry and re-read), and the store
/// request is cloned once per request and once per further attempt; both should be cheap.
pub struct ReadYourWrites<S, A: StoreAdapter, P = RetryPolicy> {
    inner: S,
    config: Arc<LayerConfig<A, P>>,
}

impl<S: Clone, A: StoreAdapter, P> Clone for ReadYourWrites<S, A, P> {
    fn clone(&self) -> Self {
        ReadYourWrites {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, A: StoreAdapter + fmt::Debug, P: fmt::Debug> fmt::Debug
    for ReadYourWrites<S, A, P>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadYourWrites")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, A: StoreAdapter, P> ReadYourWrites<S, A, P> {
    pub(crate) fn from_parts(inner: S, config: Arc<LayerConfig<A, P>>) -> Self {
        ReadYourWrites { inner, config }
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

    /// Stamps the write `request` carries as the layer would before its first attempt (a new
    /// [`crate::WriteId`] and timestamp from the session, conditions for writes-follow-reads),
    /// without sending it: for middleware that keeps writes to send later, as `ryw-outbox` does
    /// while the store is down. Send it with [`SessionRequest::from_stamped`]. The request and its
    /// clones then send it as a replay (the kept write may be delivered elsewhere); the kept
    /// write's deliveries in this process count their attempts with the request's, so each goes
    /// as itself only while no attempt of any copy may have applied, never as a second write.
    /// A request already stamped keeps its stamp; a read gives `None`.
    pub fn stamp(&self, request: &SessionRequest<A::Request>) -> Option<StampedWrite<A::Request>> {
        crate::stamp::keep_for_later(
            &self.config,
            request.session(),
            request.get_ref(),
            request.copies_write(),
        )
    }
}

impl<S, A, P> Service<SessionRequest<A::Request>> for ReadYourWrites<S, A, P>
where
    A: StoreAdapter,
    S: Service<A::Request, Response = A::Response> + Clone,
    S::Error: Into<A::Error>,
    P: SessionRetryPolicy<A::Request, A::Response, A::Error>,
{
    type Response = SessionResponse<A::Response>;
    type Error = Error<A::Error>;
    type Future = ResponseFuture<S, A, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::NotReady(e.into()))
    }

    #[inline]
    fn call(&mut self, request: SessionRequest<A::Request>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(inner, self.config.clone(), request)
    }
}
