//! Carries ryw session tokens over HTTP, so a user's session follows them across app instances
//! that share nothing else.
//!
//! - [`ServerSessionLayer`] (for axum, hyper and tower-http stacks) reads the token from a header
//!   ([`DEFAULT_HEADER`] unless configured) or a cookie, verifies it with a
//!   [`TokenAuthority`](ryw::signing::TokenAuthority), puts the [`Session`](ryw::Session) into the
//!   request extensions for the handlers and the store layer, and writes the session's token on
//!   the response: the token the request came with when the session did not change (no signature
//!   computed; see [`ServerSessionLayer::renew_after`]), else a new one, signed. A bad token is
//!   rejected with a 4xx JSON body, or, if configured, replaced by a fresh session and reported in
//!   the [`RESET_HEADER`] response header.
//! - [`ClientSessionLayer`] does the client half for service-to-service calls: it sends the tokens
//!   it holds and keeps the advanced ones that come back.
//! - [`SessionRecordsLayer`], inside the server layer, keeps what a session coarsens out of its
//!   token in a record shared by the instances ([`ryw::record`]), so that another instance still
//!   fences those scopes exactly.
//! - With the `axum` feature (off by default), the module `ryw_http::axum` makes this
//!   axum-native: the request's session as an extractor (`CurrentSession`), a read's visibility
//!   as a response part (`VisibilityHeader`), and `ryw::Error` as a response (`RywError`, so that
//!   `?` works in handlers).
//!
//! # Concurrent requests of one session
//!
//! Tokens from concurrent requests merge by pointwise maximum, never "last completed wins":
//!
//! - the client layer keeps every token that is not covered by another (at most
//!   [`MAX_TOKENS_PER_REQUEST`]) and sends them all; the server merges what it is sent, so the next
//!   response carries one token again;
//! - the server layer merges each session with what the same instance last saw of it (a
//!   [`SessionStore`](ryw::SessionStore), in memory by default), so two concurrent requests served
//!   by one instance both answer with the merged state.
//!
//! Browsers keep only the last `Set-Cookie`: with the cookie transport, two concurrent requests
//! served by *different* instances can still answer with tokens that each miss the other's write,
//! and the cookie keeps one of them. The header transport with [`ClientSessionLayer`] (or a
//! client that merges the same way) does not have that gap.
//!
//! # Example
//!
//! ```
//! use axum::{routing::get, Extension, Router};
//! use ryw::signing::{SigningKey, TokenAuthority};
//! use ryw::Session;
//! use ryw_http::{ServerSessionLayer, TokenStatus, DEFAULT_HEADER};
//! use std::sync::Arc;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [42u8; 32])?));
//! let app = Router::new()
//!     .route(
//!         "/whoami",
//!         get(|Extension(session): Extension<Session>, Extension(status): Extension<TokenStatus>| async move {
//!             format!("{} ({status:?})", session.id())
//!         }),
//!     )
//!     .layer(ServerSessionLayer::new(authority.clone()));
//!
//! // No token: a new session, and its first token comes back on the response.
//! let response = app
//!     .clone()
//!     .oneshot(http::Request::get("/whoami").body(axum::body::Body::empty())?)
//!     .await?;
//! let token = response.headers()[DEFAULT_HEADER].to_str()?.to_owned();
//! let id = authority.verify(&token, None)?.state().id();
//!
//! // The next request, on any instance with the same key, continues that session.
//! let response = app
//!     .oneshot(
//!         http::Request::get("/whoami")
//!             .header(DEFAULT_HEADER, &token)
//!             .body(axum::body::Body::empty())?,
//!     )
//!     .await?;
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! assert_eq!(std::str::from_utf8(&body)?, format!("{id} (Continued)"));
//! # Ok(())
//! # }
//! ```
//!
//! The repository's guide goes further: docs/http.md (tokens, cookies, revocation, the
//! `ryw-visibility` header and its units per store) and docs/principals.md.

#[cfg(feature = "axum")]
pub mod axum;
pub mod client;
mod headers;
pub mod principal;
pub mod records;
pub mod server;

#[cfg(feature = "axum")]
pub use self::axum::{CurrentSession, MissingSessionLayer, RywError, VisibilityHeader};
pub use client::ClientSessionLayer;
/// The values of the session cookie's `SameSite` attribute
/// ([`ServerSessionLayer::cookie_same_site`]), from the `cookie` crate.
pub use cookie::SameSite;
pub use headers::{
    visibility_header, DEFAULT_HEADER, MAX_TOKENS_PER_REQUEST, REJECTED_HEADER, RESET_HEADER,
    VISIBILITY_HEADER,
};
pub use principal::{Principal, PrincipalRecordsLayer, PRINCIPAL_HEADER};
pub use records::SessionRecordsLayer;
pub use server::{BadTokenPolicy, ServerSessionLayer, TokenRejection, TokenStatus};
