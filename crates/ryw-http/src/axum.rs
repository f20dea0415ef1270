//! axum-native sessions (the `axum` feature): the request's session as an extractor, a read's
//! visibility as a response part, and ryw's errors as responses.
//!
//! [`ServerSessionLayer`] puts each request's [`ryw::Session`] into its extensions and writes the
//! session's token on the response. A handler behind it takes:
//!
//! - [`CurrentSession`], the session, as an extractor (a `500` [`MissingSessionLayer`] when the
//!   layer is not installed in front of the route; `Option<CurrentSession>` is `None` then);
//! - [`VisibilityHeader`], a response part that writes a read's [`ryw::Visibility`] in the
//!   [`VISIBILITY_HEADER`] header, in the format of [`visibility_header`];
//! - [`RywError`], a [`ryw::Error`] as a response (status and JSON body per variant, see there),
//!   with `From<ryw::Error<E>>` so that `?` converts.
//!
//! These are local types because axum's traits cannot be implemented here for `ryw::Session`,
//! `ryw::Visibility` or `ryw::Error`: both the traits and the types are foreign to this crate.
//!
//! # Example
//!
//! ```
//! use axum::extract::{Path, State};
//! use axum::routing::get;
//! use axum::{Json, Router};
//! use ryw::signing::{SigningKey, TokenAuthority};
//! use ryw::{ReadYourWrites, ReadYourWritesLayer};
//! use ryw_http::axum::{CurrentSession, RywError, VisibilityHeader};
//! use ryw_http::{ServerSessionLayer, DEFAULT_HEADER, VISIBILITY_HEADER};
//! use ryw_sim::{SimAdapter, SimClient, SimConfig, SimError, SimRequest, SimStore};
//! use serde_json::{json, Value};
//! use std::sync::Arc;
//! use tower::{Layer, ServiceExt};
//!
//! /// The posts: a store behind the ryw layer (here, the simulated one).
//! type Posts = ReadYourWrites<SimClient, SimAdapter>;
//!
//! async fn put_post(
//!     State(posts): State<Posts>,
//!     session: CurrentSession,
//!     Path(id): Path<String>,
//!     Json(value): Json<u64>,
//! ) -> Result<Json<Value>, RywError<SimError>> {
//!     // A ryw::Error becomes a response through `?`.
//!     let written = posts.oneshot(session.request(SimRequest::put(format!("posts/{id}"), value))).await?;
//!     Ok(Json(json!({ "write_id": written.write_id().map(|w| w.to_string()) })))
//! }
//!
//! async fn get_post(
//!     State(posts): State<Posts>,
//!     session: CurrentSession,
//!     Path(id): Path<String>,
//! ) -> Result<(VisibilityHeader, Json<Value>), RywError<SimError>> {
//!     let read = posts.oneshot(session.request(SimRequest::get(format!("posts/{id}")))).await?;
//!     let body = json!({ "value": read.get_ref().value() });
//!     Ok((VisibilityHeader::from(&read), Json(body)))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SimStore::new(SimConfig::default().seed(7));
//! let posts: Posts = ReadYourWritesLayer::new(SimAdapter::new())
//!     .clock(store.clock())
//!     .layer(store.client(0));
//! let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [42u8; 32])?));
//! let app = Router::new()
//!     .route("/posts/{id}", get(get_post).put(put_post))
//!     .with_state(posts)
//!     .layer(ServerSessionLayer::new(authority));
//!
//! // A write, in a new session: its token comes back on the response.
//! let response = app
//!     .clone()
//!     .oneshot(
//!         http::Request::put("/posts/1")
//!             .header("content-type", "application/json")
//!             .body(axum::body::Body::from("42"))?,
//!     )
//!     .await?;
//! assert_eq!(response.status(), 200);
//! let token = response.headers()[DEFAULT_HEADER].clone();
//!
//! // The read that follows, in the same session, sees the write, and says so.
//! let response = app
//!     .oneshot(
//!         http::Request::get("/posts/1")
//!             .header(DEFAULT_HEADER, token)
//!             .body(axum::body::Body::empty())?,
//!     )
//!     .await?;
//! assert!(response.headers()[VISIBILITY_HEADER].to_str()?.starts_with("guaranteed"));
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! assert_eq!(serde_json::from_slice::<Value>(&body)?, json!({ "value": 42 }));
//! # Ok(())
//! # }
//! ```
//!
//! [`ServerSessionLayer`]: crate::server::ServerSessionLayer

use crate::headers::{visibility_header, VISIBILITY_HEADER};
use crate::server::rejection::error_body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use ryw::{Session, Visibility};
use std::convert::Infallible;
use std::fmt;
use std::ops::Deref;

/// The request's [`ryw::Session`], as an axum extractor: the session that
/// [`ServerSessionLayer`](crate::server::ServerSessionLayer) continued from the request's token
/// (or started) and put into the request's extensions.
///
/// It derefs to the [`Session`], so `session.request(..)` and `session.id()` work on it as they
/// do on the session; [`CurrentSession::into_inner`] (or the field) gives the session itself.
/// Without the layer in front of the route, the extraction fails with [`MissingSessionLayer`]
/// (a `500`); take `Option<CurrentSession>` in a handler that also serves without a session.
///
/// The name says what it is: the session of the request being served (a clone of the handle the
/// layer holds, so what the handler's reads and writes teach it reaches the token the layer
/// issues), distinct from [`ryw::Session`], which a handler may still name in the same scope.
///
/// ```
/// use ryw_http::axum::CurrentSession;
///
/// async fn whoami(session: CurrentSession) -> String {
///     session.id().to_string()
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::get(whoami);
/// ```
#[derive(Clone, Debug)]
pub struct CurrentSession(pub Session);

impl CurrentSession {
    /// The session.
    pub fn into_inner(self) -> Session {
        self.0
    }
}

impl Deref for CurrentSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentSession {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .map(CurrentSession)
            .ok_or(MissingSessionLayer(()))
    }
}

/// `Option<CurrentSession>`: `None` when no [`ServerSessionLayer`](crate::server::ServerSessionLayer)
/// is in front of the route.
impl<S: Send + Sync> OptionalFromRequestParts<S> for CurrentSession {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Session>()
            .cloned()
            .map(CurrentSession))
    }
}

/// The rejection of [`CurrentSession`]: the request has no session, because no
/// [`ServerSessionLayer`](crate::server::ServerSessionLayer) is installed in front of the route (a
/// programming error, not the client's).
///
/// As a response: `500 Internal Server Error` with a plain-text body that says so (also logged,
/// at error level, with the `ryw::http` target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSessionLayer(());

impl MissingSessionLayer {
    /// The text of the response and of [`Display`](fmt::Display).
    const MESSAGE: &'static str = "the request has no ryw session: ryw_http::ServerSessionLayer \
        is not installed in front of this route (add it to the Router with \
        `.layer(ServerSessionLayer::new(authority))`)";
}

impl fmt::Display for MissingSessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::MESSAGE)
    }
}

impl std::error::Error for MissingSessionLayer {}

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!(target: "ryw::http", "{}", Self::MESSAGE);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            Self::MESSAGE,
        )
            .into_response()
    }
}

/// A response part that writes a read's [`ryw::Visibility`] in the [`VISIBILITY_HEADER`] header
/// (`ryw-visibility`), in the format of [`visibility_header`]: `guaranteed; path=verified`,
/// `pending; behind=N; required=R; observed=O`, `queued; write=S`, `session-only; path=..`,
/// `unscoped`.
///
/// Return it among a handler's response parts, `(VisibilityHeader(visibility), Json(body))`; on
/// its own it is a `200` with an empty body. It writes the header itself, so it needs no layer;
/// a visibility also put into the response extensions (`Extension(visibility)`) is written by
/// [`ServerSessionLayer`](crate::server::ServerSessionLayer) over it.
///
/// ```
/// use axum::response::IntoResponse;
/// use ryw::fence::FencePath;
/// use ryw::Visibility;
/// use ryw_http::axum::VisibilityHeader;
///
/// let response = (VisibilityHeader(Visibility::Guaranteed(FencePath::Verified)), "42").into_response();
/// assert_eq!(response.headers()["ryw-visibility"], "guaranteed; path=verified");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibilityHeader(pub Visibility);

impl From<Visibility> for VisibilityHeader {
    fn from(visibility: Visibility) -> Self {
        VisibilityHeader(visibility)
    }
}

impl<T> From<&ryw::SessionResponse<T>> for VisibilityHeader {
    /// The visibility of a response of the ryw layer, so that a handler writes
    /// `(VisibilityHeader::from(&read), body)` (see the module's example).
    fn from(response: &ryw::SessionResponse<T>) -> Self {
        VisibilityHeader(response.visibility().clone())
    }
}

impl IntoResponseParts for VisibilityHeader {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Infallible> {
        res.headers_mut()
            .insert(VISIBILITY_HEADER, visibility_header(&self.0));
        Ok(res)
    }
}

impl IntoResponse for VisibilityHeader {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}

/// A [`ryw::Error`] as an axum response, so that a handler returning
/// `Result<_, RywError<E>>` can use `?` on the ryw layer's results.
///
/// The response has a status chosen by what the client can do about the error, and a JSON body
/// `{"error": code, "message": text}` (the shape of the token rejections' bodies), whose code
/// is stable and whose message never includes the store's error: that error, with everything
/// else, is logged with `tracing` (target `ryw::http`; error level for a `500`, warn for a
/// `503`, debug for a `409`).
///
/// | Variant | Status | `error` |
/// |---|---|---|
/// | [`Store`](ryw::Error::Store), transient (retries exhausted), not applied | `503`, `Retry-After: 1` | `store_unavailable` |
/// | [`Store`](ryw::Error::Store), permanent, not applied | `500` | `store_failed` |
/// | [`Store`](ryw::Error::Store) that may have applied | `500` | `write_outcome_unknown` |
/// | [`NotReady`](ryw::Error::NotReady) (nothing was sent) | `503`, `Retry-After: 1` | `store_not_ready` |
/// | [`Ambiguous`](ryw::Error::Ambiguous) | `500` | `write_outcome_unknown` |
/// | [`AlreadySent`](ryw::Error::AlreadySent) | `500` | `write_already_sent` |
/// | [`Conflict`](ryw::Error::Conflict) | `409` | `write_conflict` |
/// | [`StaleRead`](ryw::Error::StaleRead) | `503`, `Retry-After: 1`, `ryw-visibility: pending; ..` | `stale_read` |
/// | [`Unscoped`](ryw::Error::Unscoped) | `500` | `read_unscoped` |
/// | a variant added to `ryw::Error` later | `500` | `internal_error` |
///
/// Why:
///
/// - `503` with `Retry-After` says "nothing happened, try again": the store was unavailable or
///   not ready and nothing applied, or a strict read stayed behind the session's writes (a later
///   read converges; the response also carries the [`VISIBILITY_HEADER`] of the stale read, so a
///   client can show how far behind it was).
/// - A write whose outcome is not known ([`is_ambiguous`](ryw::Error::is_ambiguous), or a store
///   error after an attempt that [`may_have_applied`](ryw::Error::may_have_applied)) is a `500`,
///   not a `503`, which would invite a blind retry that can apply it twice, and not a `409`, which
///   says the request was refused: the client must read before it writes again. The message
///   names the write id when there is one. On DynamoDB and ScyllaDB the session then requires
///   what the write gives its items if it applied, so that read shows it or goes to the strong
///   path ([`StoreAdapter::observe_unresolved`](ryw::adapter::StoreAdapter::observe_unresolved)).
/// - `409` is kept for the one case where the write lost to the resource's current state (the
///   other writer's version was kept): read, then decide.
/// - [`Unscoped`](ryw::Error::Unscoped) is a configuration gap of the server (the adapter named
///   no scope for the read), and a permanent store error is nothing the client can retry: `500`.
///   That includes errors the request caused (a condition of the handler's own that failed, an
///   item too large): a handler answers those itself before `?`, from
///   [`store_error`](ryw::Error::store_error).
///
/// To fold ryw's errors into an application's own error type, implement `From<ryw::Error<E>>`
/// for it and answer `RywError(error).into_response()` for that variant.
///
/// ```
/// use axum::response::IntoResponse;
/// use ryw_http::axum::RywError;
///
/// let response = RywError::from(ryw::Error::<std::io::Error>::Unscoped).into_response();
/// assert_eq!(response.status(), 500);
/// ```
#[derive(Debug)]
pub struct RywError<E>(pub ryw::Error<E>);

impl<E> RywError<E> {
    /// The error.
    pub fn into_inner(self) -> ryw::Error<E> {
        self.0
    }

    /// The response's status (see the table above).
    pub fn status(&self) -> StatusCode {
        self.kind().status
    }

    /// The response's stable code, its body's `error` (see the table above).
    pub fn code(&self) -> &'static str {
        self.kind().code
    }

    /// How the error is answered.
    fn kind(&self) -> Kind {
        use ryw::Error;
        match &self.0 {
            Error::Store {
                may_have_applied: true,
                ..
            }
            | Error::Ambiguous { .. } => Kind::OUTCOME_UNKNOWN,
            Error::Store {
                transient: true, ..
            } => Kind::STORE_UNAVAILABLE,
            Error::Store { .. } => Kind::STORE_FAILED,
            Error::NotReady(_) => Kind::STORE_NOT_READY,
            Error::AlreadySent { .. } => Kind::ALREADY_SENT,
            Error::Conflict(_) => Kind::CONFLICT,
            Error::StaleRead(_) => Kind::STALE_READ,
            Error::Unscoped => Kind::UNSCOPED,
            _ => Kind::INTERNAL,
        }
    }

    /// The body's message: what the client may do, never the store's error.
    fn message(&self) -> String {
        let kind = self.kind();
        match self.0.write_id() {
            Some(write_id) => format!("{} (write {write_id})", kind.message),
            None => kind.message.to_owned(),
        }
    }
}

impl<E> From<ryw::Error<E>> for RywError<E> {
    fn from(error: ryw::Error<E>) -> Self {
        RywError(error)
    }
}

impl<E: fmt::Display> fmt::Display for RywError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RywError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

impl<E: fmt::Debug> IntoResponse for RywError<E> {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let error = &self.0;
        if kind.status.is_server_error() && !kind.retry {
            tracing::error!(target: "ryw::http", code = kind.code, ?error, "request failed");
        } else if kind.retry {
            tracing::warn!(target: "ryw::http", code = kind.code, ?error, "request failed");
        } else {
            tracing::debug!(target: "ryw::http", code = kind.code, ?error, "request failed");
        }
        let json = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        let body = error_body(kind.code, &self.message());
        let mut response = match &self.0 {
            ryw::Error::StaleRead(stale) => {
                let pending = VisibilityHeader(Visibility::Pending(stale.clone()));
                (kind.status, json, pending, body).into_response()
            }
            _ => (kind.status, json, body).into_response(),
        };
        if kind.retry {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// How a [`RywError`] is answered.
#[derive(Clone, Copy)]
struct Kind {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    /// Whether the response says `Retry-After: 1`.
    retry: bool,
}

impl Kind {
    const STORE_UNAVAILABLE: Kind = Kind {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "store_unavailable",
        message: "the store is unavailable and the request was not applied; try again later",
        retry: true,
    };
    const STORE_FAILED: Kind = Kind {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "store_failed",
        message: "the store could not serve the request, which was not applied",
        retry: false,
    };
    const STORE_NOT_READY: Kind = Kind {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "store_not_ready",
        message: "the store is not ready and the request was not sent; try again later",
        retry: true,
    };
    const OUTCOME_UNKNOWN: Kind = Kind {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "write_outcome_unknown",
        message: "the write may or may not have applied; read the data before writing again",
        retry: false,
    };
    const ALREADY_SENT: Kind = Kind {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "write_already_sent",
        message: "the write was already sent and may have applied, so it was not sent again; \
            read the data before writing again",
        retry: false,
    };
    const CONFLICT: Kind = Kind {
        status: StatusCode::CONFLICT,
        code: "write_conflict",
        message: "the write lost to a concurrent write, whose version was kept; read the data \
            before writing again",
        retry: false,
    };
    const STALE_READ: Kind = Kind {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "stale_read",
        message: "the data does not show this session's writes yet; try again shortly",
        retry: true,
    };
    const UNSCOPED: Kind = Kind {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "read_unscoped",
        message: "the server could not check this read against the session's writes \
            (a configuration error)",
        retry: false,
    };
    const INTERNAL: Kind = Kind {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal_error",
        message: "the request failed",
        retry: false,
    };
}
