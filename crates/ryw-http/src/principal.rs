//! One user, every device, over HTTP: a middleware inside [`ServerSessionLayer`] that fences
//! each request of an authenticated principal's session on the principal's record, and advances
//! the record with what the request did before the response goes out ([`ryw::principal`]).
//!
//! Without it, a user's phone and laptop hold two sessions, and the laptop's reads are not fenced
//! on the phone's writes. With it, a read on any device of the principal is `Guaranteed` only if
//! it reflects what the principal's other devices wrote (and read) before the request began,
//! whichever instance served them.
//!
//! Each request of an authenticated principal costs one strong read of the record before the
//! handler, and one append after it when the request raised anything. Anonymous requests pass
//! through untouched.
//!
//! Every response of a bound session says how the record went, in [`PRINCIPAL_HEADER`]:
//!
//! | value | meaning |
//! |---|---|
//! | `record=N` | the record (version `N`; 0 before the principal's first write) fenced the request |
//! | `record=unavailable` | the record store failed: reads are `session-only` |
//! | `record=untrusted` | the record was damaged, or older than this instance has seen: reads are `session-only` |
//! | `...; advanced=M` | what the request raised was appended: the record is at version `M` |
//! | `...; advanced=no` | the append failed: the writes applied, but the principal's other sessions are not fenced on them until this session's next request appends them |
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Router};
//! use ryw::principal::PrincipalRecords;
//! use ryw::record::InMemoryRecordStore;
//! use ryw::signing::{SigningKey, TokenAuthority};
//! use ryw_http::{PrincipalRecordsLayer, ServerSessionLayer};
//! use std::sync::Arc;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [42u8; 32])?));
//! // Shared by every instance (a DynamoDB table, a MongoDB collection), and a fingerprint key
//! // every instance holds and keeps.
//! let principals = Arc::new(PrincipalRecords::new(
//!     Arc::new(InMemoryRecordStore::new()),
//!     SigningKey::new(0, [7u8; 32])?,
//! ));
//! let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(
//!     ServiceBuilder::new()
//!         // .layer(your authentication, which inserts a ryw_http::Principal)
//!         .layer(ServerSessionLayer::new(authority))
//!         .layer(PrincipalRecordsLayer::new(principals)),
//! );
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! [`ServerSessionLayer`]: crate::ServerSessionLayer

use http::{HeaderValue, Request, Response};
use ryw::principal::{Advanced, Entered, PrincipalRecords};
use ryw::Session;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The authenticated principal of a request (a user id, a service name), put into the request
/// extensions by the application's authentication layer, which runs before
/// [`ServerSessionLayer`](crate::ServerSessionLayer).
///
/// Tokens issued to a principal are bound to it: presented by another principal (or by an
/// anonymous request), they are rejected as
/// [`VerifyError::WrongPrincipal`](ryw::signing::VerifyError::WrongPrincipal). The principal
/// itself never appears in the token, only a keyed 8-byte fingerprint.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<[u8]>);

impl Principal {
    /// A principal from its stable identifier.
    pub fn new(id: impl AsRef<[u8]>) -> Self {
        Principal(id.as_ref().into())
    }

    /// The identifier.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Identifiers may be personal data: only the length is shown.
        f.debug_struct("Principal")
            .field("len", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// The response header that says how the principal's record went for the request (see the
/// [module docs](self)).
pub const PRINCIPAL_HEADER: &str = "ryw-principal";

/// Fences the requests of authenticated principals' sessions on their principals' records;
/// place it inside (after) [`ServerSessionLayer`](crate::ServerSessionLayer), which puts the
/// [`Session`] into the request's extensions and binds it to the request's [`Principal`].
#[derive(Clone)]
pub struct PrincipalRecordsLayer {
    records: Arc<PrincipalRecords>,
}

impl fmt::Debug for PrincipalRecordsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalRecordsLayer")
            .field("records", &self.records)
            .finish()
    }
}

impl PrincipalRecordsLayer {
    /// A layer over this instance's `records`.
    pub fn new(records: Arc<PrincipalRecords>) -> Self {
        PrincipalRecordsLayer { records }
    }
}

impl<S> Layer<S> for PrincipalRecordsLayer {
    type Service = PrincipalRecordsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PrincipalRecordsService {
            inner,
            records: self.records.clone(),
        }
    }
}

/// The service of [`PrincipalRecordsLayer`].
///
/// # Clone
///
/// The inner service is cloned into each request's future (the ready one is the one called).
#[derive(Clone)]
pub struct PrincipalRecordsService<S> {
    inner: S,
    records: Arc<PrincipalRecords>,
}

impl<S> fmt::Debug for PrincipalRecordsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrincipalRecordsService")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for PrincipalRecordsService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service is the one called; the clone waits for the next request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let records = self.records.clone();
        let bound = match (
            request.extensions().get::<Principal>(),
            request.extensions().get::<Session>(),
        ) {
            (Some(principal), Some(session)) => Some((principal.clone(), session.clone())),
            _ => None,
        };
        Box::pin(async move {
            let Some((principal, session)) = bound else {
                return inner.call(request).await;
            };
            let entered = records.enter(principal.as_bytes(), &session).await;
            let response = inner.call(request).await;
            // Appended before the response goes out, whatever the handler answered: a write may
            // have applied before an error.
            let advanced = records.leave(principal.as_bytes(), &session).await;
            let mut response = response?;
            let mut value = match entered {
                Entered::Fenced { version } => format!("record={version}"),
                Entered::Unavailable => "record=unavailable".to_owned(),
                _ => "record=untrusted".to_owned(),
            };
            match advanced {
                Advanced::Appended(version) => value.push_str(&format!("; advanced={version}")),
                Advanced::Failed => value.push_str("; advanced=no"),
                _ => {}
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(PRINCIPAL_HEADER, v);
            }
            Ok(response)
        })
    }
}
