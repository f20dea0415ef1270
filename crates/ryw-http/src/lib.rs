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

pub mod client;
pub mod principal;
pub mod records;
pub mod server;

pub use client::ClientSessionLayer;
pub use principal::{PrincipalRecordsLayer, PRINCIPAL_HEADER};
pub use records::SessionRecordsLayer;
pub use server::{BadTokenPolicy, ServerSessionLayer, TokenRejection, TokenStatus};

use std::fmt;
use std::sync::Arc;

/// The header a token travels in unless configured otherwise: `ryw-session`.
///
/// A request may carry several tokens of one client (from concurrent responses), as repeated
/// headers or comma-separated (base64url has no commas).
pub const DEFAULT_HEADER: &str = "ryw-session";

/// The response header that says a bad token was replaced by a fresh session
/// ([`BadTokenPolicy::StartFresh`]); its value is the error code
/// ([`VerifyError::code`](ryw::signing::VerifyError::code)), such as `token_expired`.
pub const RESET_HEADER: &str = "ryw-session-reset";

/// The response header on a rejected request ([`BadTokenPolicy::Reject`]), and on a served one
/// whose session could not be carried in a token any more (`token_oversized`: the session ends);
/// its value is the error code. [`ClientSessionLayer`] drops the tokens it holds when it sees it,
/// so the next request starts a new session.
pub const REJECTED_HEADER: &str = "ryw-session-rejected";

/// The response header that tells the client whether what it read reflects its session's
/// writes, so that a UI can say "saving…" until its write is visible:
///
/// - `guaranteed` (with the fence path: `guaranteed; path=escalated`);
/// - `pending; behind=N; required=R; observed=O`: the data may lack the session's writes, by `N`
///   versions (a later read converges);
/// - `unscoped`: nothing could be fenced (a configuration gap);
/// - `queued; write=S`: the session's write number `S` waits in an outbox (`ryw-outbox`, the
///   store was down): a read cannot show it yet, and a write answered so is kept, not applied.
///   Answer a deferred write with `202 Accepted` and this header (put
///   `ryw_outbox::Deferred::visibility()` into the response extensions), so the client knows it
///   is queued.
///
/// The handler puts the read's [`ryw::Visibility`] into the response extensions (with axum,
/// return `Extension(visibility)` among the response parts); [`ServerSessionLayer`] turns it into
/// this header. [`visibility_header`] gives the value for other stacks.
pub const VISIBILITY_HEADER: &str = "ryw-visibility";

/// The value of [`VISIBILITY_HEADER`] for `visibility`.
///
/// ```
/// use ryw::fence::FencePath;
/// use ryw::Visibility;
///
/// let v = ryw_http::visibility_header(&Visibility::Guaranteed(FencePath::Escalated));
/// assert_eq!(v, "guaranteed; path=escalated");
/// ```
pub fn visibility_header(visibility: &ryw::Visibility) -> http::HeaderValue {
    let text = match visibility {
        ryw::Visibility::Guaranteed(path) => format!("guaranteed; path={}", path.as_str()),
        ryw::Visibility::Pending(stale) => {
            let s = &stale.staleness;
            let observed = s.observed.map_or(0, |v| v.get());
            format!(
                "pending; behind={}; required={}; observed={observed}",
                s.required.get().saturating_sub(observed),
                s.required.get(),
            )
        }
        ryw::Visibility::Queued(write_id) => format!("queued; write={}", write_id.seq),
        ryw::Visibility::SessionOnly(path) => format!("session-only; path={}", path.as_str()),
        _ => "unscoped".to_owned(),
    };
    // Only ASCII letters, digits and punctuation: always a valid header value.
    http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static("unscoped"))
}

/// The most tokens one request may carry (and a client keeps).
pub const MAX_TOKENS_PER_REQUEST: usize = 4;

/// The authenticated principal of a request (a user id, a service name), put into the request
/// extensions by the application's authentication layer, which runs before
/// [`ServerSessionLayer`].
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

/// Splits the values of a token header into tokens: repeated headers and comma-separated values.
/// A value that is not visible ASCII yields one `Err(())`.
pub(crate) fn tokens_in<'a>(
    values: impl Iterator<Item = &'a http::HeaderValue> + 'a,
) -> impl Iterator<Item = Result<&'a str, ()>> + 'a {
    values.flat_map(|v| {
        let (text, not_text) = match v.to_str() {
            Ok(text) => (text, None),
            Err(_) => ("", Some(Err(()))),
        };
        not_text.into_iter().chain(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Ok),
        )
    })
}

#[cfg(test)]
mod tests {
    use ryw::fence::{FencePath, FenceStrategy, StaleRead, Staleness};
    use ryw::version::{ScopeKey, StoreId, Version};
    use ryw::Visibility;

    #[test]
    fn a_pending_read_says_how_far_behind_it_is() {
        let stale = StaleRead {
            staleness: Staleness {
                scope: ScopeKey::new(StoreId::new(1), b"k"),
                required: Version::new(12),
                observed: Some(Version::new(9)),
                horizon: false,
            },
            attempts: 2,
            last_strategy: FenceStrategy::Strong,
        };
        assert_eq!(
            super::visibility_header(&Visibility::Pending(Box::new(stale))),
            "pending; behind=3; required=12; observed=9"
        );
        assert_eq!(super::visibility_header(&Visibility::Unscoped), "unscoped");
        let write = ryw::WriteId::new(ryw::SessionId::from_u128(1), 2, 7);
        assert_eq!(
            super::visibility_header(&Visibility::Queued(write)),
            "queued; write=7"
        );
        assert_eq!(
            super::visibility_header(&Visibility::Guaranteed(FencePath::Verified)),
            "guaranteed; path=verified"
        );
    }
}
