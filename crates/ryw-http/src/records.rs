//! Sessions' records over HTTP: a middleware inside [`ServerSessionLayer`] that gives each
//! request's session the record its token names before the handler runs, and writes what the
//! request coarsened before the token is issued ([`ryw::record`]).
//!
//! Without it, a session that touched more scopes than its token keeps reads every coarsened
//! store on the strong path once it reaches another instance; with it, that instance fences those
//! reads on the exact entries of the record, loaded once per session and record version.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use ryw::record::{InMemoryRecordStore, SessionRecords};
//! use ryw::signing::{SigningKey, TokenAuthority};
//! use ryw_http::{ServerSessionLayer, SessionRecordsLayer};
//! use std::sync::Arc;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [42u8; 32])?));
//! // One per instance, over a record store every instance shares (a DynamoDB table, a MongoDB
//! // collection; in memory for a single instance).
//! let records = Arc::new(SessionRecords::new(Arc::new(InMemoryRecordStore::new())));
//! let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(
//!     ServiceBuilder::new()
//!         .layer(ServerSessionLayer::new(authority))
//!         .layer(SessionRecordsLayer::new(records)),
//! );
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! [`ServerSessionLayer`]: crate::ServerSessionLayer

use http::Request;
use ryw::record::SessionRecords;
use ryw::Session;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Loads and writes sessions' records around a handler; place it inside (after)
/// [`ServerSessionLayer`](crate::ServerSessionLayer), which puts the [`Session`] into the
/// request's extensions and issues its token once the handler has answered. A request without a
/// session passes through.
#[derive(Clone)]
pub struct SessionRecordsLayer {
    records: Arc<SessionRecords>,
}

impl fmt::Debug for SessionRecordsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecordsLayer")
            .field("records", &self.records)
            .finish()
    }
}

impl SessionRecordsLayer {
    /// A layer over this instance's `records`.
    pub fn new(records: Arc<SessionRecords>) -> Self {
        SessionRecordsLayer { records }
    }
}

impl<S> Layer<S> for SessionRecordsLayer {
    type Service = SessionRecordsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionRecordsService {
            inner,
            records: self.records.clone(),
        }
    }
}

/// The service of [`SessionRecordsLayer`].
///
/// # Clone
///
/// The inner service is cloned into each request's future (the ready one is the one called).
#[derive(Clone)]
pub struct SessionRecordsService<S> {
    inner: S,
    records: Arc<SessionRecords>,
}

impl<S> fmt::Debug for SessionRecordsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecordsService")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for SessionRecordsService<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service is the one called; the clone waits for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let records = self.records.clone();
        let session = request.extensions().get::<Session>().cloned();
        Box::pin(async move {
            if let Some(session) = &session {
                records.load(session).await;
            }
            let response = inner.call(request).await;
            if let Some(session) = &session {
                records.flush(session).await;
            }
            response
        })
    }
}
