//! The layer and the builder of its configuration: the token header and cookie, what a bad token
//! gets, the session store, renewal and telemetry.

use super::exchange::Config;
use super::rejection::BadTokenPolicy;
use super::service::ServerSession;
use super::transport::{CookieAttributes, Transport};
use crate::headers::DEFAULT_HEADER;
use cookie::SameSite;
use http::header::HeaderName;
use ryw::signing::TokenAuthority;
use ryw::telemetry::Observer;
use ryw::{InMemorySessionStore, SessionStore};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower::Layer;

/// A [`Layer`] that carries the session token of every request; see the [crate docs](crate).
///
/// Put it after (inside) authentication, so that a [`Principal`](crate::Principal) in the request
/// extensions binds the tokens it issues.
#[derive(Clone)]
pub struct ServerSessionLayer {
    config: Arc<Config>,
}

impl fmt::Debug for ServerSessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSessionLayer")
            .field("authority", &self.config.authority)
            .field("header", &self.config.transport.header)
            .field("cookie", &self.config.transport.cookie)
            .field(
                "cookie_attributes",
                &self.config.transport.cookie_attributes,
            )
            .field("policy", &self.config.policy)
            .field("session_store", &self.config.store.is_some())
            .finish()
    }
}

impl ServerSessionLayer {
    /// A layer that verifies and issues tokens with `authority`, in the [`DEFAULT_HEADER`]
    /// header, rejecting bad tokens, with an in-memory session store of the sessions this
    /// instance served recently (for merging concurrent requests).
    ///
    /// [`DEFAULT_HEADER`]: crate::DEFAULT_HEADER
    pub fn new(authority: Arc<TokenAuthority>) -> Self {
        ServerSessionLayer {
            config: Arc::new(Config {
                authority,
                transport: Transport {
                    header: HeaderName::from_static(DEFAULT_HEADER),
                    cookie: None,
                    cookie_attributes: CookieAttributes::default(),
                },
                policy: BadTokenPolicy::Reject,
                renew_after: None,
                observer: None,
                store: Some(Arc::new(InMemorySessionStore::new().max_sessions(100_000))),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Reads and writes the token in `name` instead of the default header.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config().transport.header = name;
        self
    }

    /// Also reads the token from the cookie `name` (when the header is absent) and sets it with
    /// `Set-Cookie` on every response: `HttpOnly`, `Max-Age` what is left of the token's life,
    /// and by default `SameSite=Lax; Path=/; Secure` with no `Domain`
    /// ([`cookie_same_site`](Self::cookie_same_site), [`cookie_path`](Self::cookie_path),
    /// [`cookie_secure`](Self::cookie_secure), [`cookie_domain`](Self::cookie_domain); they
    /// may be set before or after this). See the [crate docs](crate) for what cookies cannot
    /// merge.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.config().transport.cookie = Some(name.into());
        self
    }

    /// The cookie's `Domain`: the browser sends it to `domain` and all its subdomains (a cookie
    /// for `example.com` goes to `api.example.com` too). Default: none, a host-only cookie, sent
    /// back only to the host that set it.
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.config().transport.cookie_attributes.domain = Some(domain.into());
        self
    }

    /// The cookie's `Path`: the browser sends it only with requests whose path is `path` or
    /// below it. Default: `/`, every request to the host.
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.config().transport.cookie_attributes.path = path.into();
        self
    }

    /// The cookie's `SameSite`: whether the browser sends it with requests that another site
    /// starts. Default: [`SameSite::Lax`], sent with same-site requests and with top-level
    /// navigations from other sites (following a link), not with their subrequests (forms that
    /// `POST`, images, `fetch`). [`SameSite::Strict`] sends it with same-site requests only;
    /// [`SameSite::None`] with every request, and browsers accept that only with `Secure`.
    pub fn cookie_same_site(mut self, same_site: SameSite) -> Self {
        self.config().transport.cookie_attributes.same_site = same_site;
        self
    }

    /// Whether the cookie is `Secure`: the browser sends it over HTTPS only. Default: `true`.
    /// Leave it on except for plain-HTTP development ([`insecure_cookie`](Self::insecure_cookie)).
    pub fn cookie_secure(mut self, secure: bool) -> Self {
        self.config().transport.cookie_attributes.secure = secure;
        self
    }

    /// Leaves `Secure` off the cookie (plain-HTTP development only): `cookie_secure(false)`.
    pub fn insecure_cookie(self) -> Self {
        self.cookie_secure(false)
    }

    /// What a bad token gets (default [`BadTokenPolicy::Reject`]).
    pub fn on_bad_token(mut self, policy: BadTokenPolicy) -> Self {
        self.config().policy = policy;
        self
    }

    /// Merges every session with what this store holds of it, and saves it after every response
    /// (default: an in-memory store of 100,000 sessions).
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.config().store = Some(store);
        self
    }

    /// How old a token may be before a request that leaves its session unchanged gets a new one
    /// (default: half the authority's TTL).
    ///
    /// A request that changes nothing (no write, nothing newer observed, nothing merged) is
    /// answered with the very token it came with: no signature is computed, and a cookie is left
    /// as it is. Past this age the token is re-issued with a fresh expiry, as sliding-session
    /// cookies renew, so a client that keeps coming back keeps its session; a client that goes
    /// idle keeps it for at least the TTL minus this age. A token signed by a key that is no
    /// longer the current one is always re-issued. `Duration::ZERO` re-issues on every response.
    pub fn renew_after(mut self, age: Duration) -> Self {
        self.config().renew_after = Some(age);
        self
    }

    /// Keeps no state between requests: the token is the only memory of a session.
    pub fn without_session_store(mut self) -> Self {
        self.config().store = None;
        self
    }

    /// Reports every token received, issued or refused to `observer`
    /// ([`Observer::token`]): `ryw-otel` turns them into token sizes and rejections by code.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.config().observer = Some(Arc::new(observer));
        self
    }

    /// The session store the layer keeps (the default in-memory one unless replaced), for
    /// telemetry: `ryw_otel::observe_session_store` reports how many sessions it holds and has
    /// evicted.
    pub fn store(&self) -> Option<Arc<dyn SessionStore>> {
        self.config.store.clone()
    }
}

impl<S> Layer<S> for ServerSessionLayer {
    type Service = ServerSession<S>;

    fn layer(&self, inner: S) -> ServerSession<S> {
        ServerSession::new(inner, self.config.clone())
    }
}
