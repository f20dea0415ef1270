//! The server half: verify the token on the way in, re-issue it on the way out.
//!
//! See the [crate docs](crate) for an axum example. With hyper alone, wrap the service given to
//! `serve_connection` with `tower::ServiceBuilder::new().layer(ServerSessionLayer::new(..))` and a
//! `hyper_util::service::TowerToHyperService`.

use crate::{tokens_in, Principal, MAX_TOKENS_PER_REQUEST, REJECTED_HEADER, RESET_HEADER};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use pin_project::pin_project;
use ryw::signing::{TokenAuthority, VerifyError};
use ryw::{InMemorySessionStore, Session, SessionStore};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

/// What the server does with a request whose token does not verify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadTokenPolicy {
    /// Answer 400 (undecodable) or 401 (untrusted, expired, revoked, another principal's) with a
    /// JSON body `{"error": code, "message": text}` and the [`REJECTED_HEADER`] header, without
    /// calling the handler. The default.
    #[default]
    Reject,
    /// Serve the request in a fresh session and say so in the [`RESET_HEADER`] response header
    /// (value: the error code). The user loses their read-your-writes fence, never their request.
    StartFresh,
}

/// How the request's session came about; in the request extensions beside the
/// [`Session`] (see the [crate docs](crate)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenStatus {
    /// The request carried no token: a new session.
    New,
    /// The request's token (or tokens) verified: the session continues.
    Continued,
    /// The tokens verified, but their state moved to a new session id: an anonymous session met
    /// an authenticated principal (session fixation defence), or the request carried tokens of
    /// several sessions (one request continues at most one session id). Fences are kept; the
    /// old ids are not continued.
    Cycled,
    /// The token was bad and [`BadTokenPolicy::StartFresh`] replaced it by a new session.
    Reset {
        /// Why, as in [`TokenRejection::code`].
        code: &'static str,
    },
}

/// Why a request's tokens were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRejection {
    /// A token did not verify.
    Invalid(VerifyError),
    /// The request carried more than [`MAX_TOKENS_PER_REQUEST`] tokens.
    TooMany {
        /// How many.
        count: usize,
    },
    /// The token header is not visible ASCII.
    NotText,
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRejection::Invalid(e) => e.fmt(f),
            TokenRejection::TooMany { count } => write!(
                f,
                "request carries {count} session tokens, more than the {MAX_TOKENS_PER_REQUEST} allowed"
            ),
            TokenRejection::NotText => f.write_str("session token header is not visible ASCII"),
        }
    }
}

impl std::error::Error for TokenRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenRejection::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

impl TokenRejection {
    /// A stable snake_case code: [`VerifyError::code`], `token_too_many` or `token_not_text`.
    pub fn code(&self) -> &'static str {
        match self {
            TokenRejection::Invalid(e) => e.code(),
            TokenRejection::TooMany { .. } => "token_too_many",
            TokenRejection::NotText => "token_not_text",
        }
    }

    /// 400 for a token that is not a token at all; 401 for one that is not trusted (bad signature,
    /// unknown key, unsigned, expired, revoked, another principal's).
    pub fn status(&self) -> StatusCode {
        match self {
            TokenRejection::Invalid(e) if !e.is_malformed() => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The response [`BadTokenPolicy::Reject`] sends.
    pub fn to_response<B: From<String>>(&self) -> Response<B> {
        let body = format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}",
            self.code(),
            json_escape(&self.to_string())
        );
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(REJECTED_HEADER, HeaderValue::from_static(self.code()));
        response
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone)]
struct CookieConfig {
    name: String,
    secure: bool,
}

#[derive(Clone)]
struct Config {
    authority: Arc<TokenAuthority>,
    header: HeaderName,
    cookie: Option<CookieConfig>,
    policy: BadTokenPolicy,
    store: Option<Arc<dyn SessionStore>>,
}

impl Config {
    fn open(
        &self,
        headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> Result<(Session, TokenStatus), TokenRejection> {
        let mut tokens: Vec<&str> = Vec::new();
        for token in tokens_in(headers.get_all(&self.header).iter()) {
            let token = token.map_err(|()| TokenRejection::NotText)?;
            if tokens.len() == MAX_TOKENS_PER_REQUEST {
                return Err(TokenRejection::TooMany {
                    count: MAX_TOKENS_PER_REQUEST + 1,
                });
            }
            tokens.push(token);
        }
        if tokens.is_empty() {
            if let Some(cookie) = &self.cookie {
                if let Some(token) = cookie_value(headers, &cookie.name) {
                    tokens.push(token);
                }
            }
        }
        if tokens.is_empty() {
            return Ok((Session::new(), TokenStatus::New));
        }
        let authenticated = principal.is_some();
        let principal = principal.map(Principal::as_bytes);
        let mut states = Vec::with_capacity(tokens.len());
        let mut unbound = false;
        for token in tokens {
            let token = self
                .authority
                .verify(token, principal)
                .map_err(TokenRejection::Invalid)?;
            unbound |= token.binding().is_none();
            states.push(token.into_state());
        }
        let one_id = states.iter().all(|s| s.id() == states[0].id());
        // Fixation: an anonymous session that meets an authenticated principal is never continued
        // under its old id (which its creator, or whoever planted it, also holds): its state moves
        // to a new session id, as Rails' `reset_session` or Django's `cycle_key` do on login. And
        // one request continues at most one session id: tokens of several sessions move to a new
        // one too.
        if !one_id || (authenticated && unbound) {
            // The new session is as old as the oldest it absorbs (`SessionState::absorb`), so an
            // epoch revocation that covers any of them covers it too.
            let session = Session::new();
            for state in &states {
                session.absorb(state);
                if let Some(seen) = self.store.as_ref().and_then(|s| s.load(state.id())) {
                    session.absorb(&seen);
                }
            }
            return Ok((session, TokenStatus::Cycled));
        }
        let mut states = states.into_iter();
        let session = Session::from_state(states.next().expect("at least one token"));
        for state in states {
            session.merge(&state);
        }
        if let Some(store) = &self.store {
            if let Some(seen) = store.load(session.id()) {
                session.merge(&seen);
            }
        }
        Ok((session, TokenStatus::Continued))
    }

    fn finish<B>(
        &self,
        session: &Session,
        principal: Option<&Principal>,
        status: &TokenStatus,
        response: &mut Response<B>,
    ) {
        if let Some(store) = &self.store {
            // What a concurrent request of the session left here since this one started.
            if let Some(seen) = store.load(session.id()) {
                session.merge(&seen);
            }
        }
        let state = session.snapshot();
        if let Some(store) = &self.store {
            store.save(&state);
        }
        let headers = response.headers_mut();
        match self
            .authority
            .issue(&state, principal.map(Principal::as_bytes))
        {
            Ok(token) => {
                if let Some(cookie) = &self.cookie {
                    let mut value = format!(
                        "{}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
                        cookie.name,
                        self.authority.ttl().as_secs()
                    );
                    if cookie.secure {
                        value.push_str("; Secure");
                    }
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        headers.append(SET_COOKIE, v);
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&token) {
                    headers.insert(self.header.clone(), v);
                }
            }
            Err(e) => {
                tracing::warn!(target: "ryw::http", error = %e, "could not issue a session token");
            }
        }
        if let TokenStatus::Reset { code } = status {
            headers.insert(RESET_HEADER, HeaderValue::from_static(code));
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    for value in headers.get_all(COOKIE) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(v.trim_matches('"'));
                }
            }
        }
    }
    None
}

/// A [`Layer`] that carries the session token of every request; see the [crate docs](crate).
///
/// Put it after (inside) authentication, so that a [`Principal`] in the request extensions binds
/// the tokens it issues.
#[derive(Clone)]
pub struct ServerSessionLayer {
    config: Arc<Config>,
}

impl fmt::Debug for ServerSessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSessionLayer")
            .field("authority", &self.config.authority)
            .field("header", &self.config.header)
            .field("cookie", &self.config.cookie.as_ref().map(|c| &c.name))
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
                header: HeaderName::from_static(crate::DEFAULT_HEADER),
                cookie: None,
                policy: BadTokenPolicy::Reject,
                store: Some(Arc::new(
                    InMemorySessionStore::builder()
                        .max_sessions(100_000)
                        .build(),
                )),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Reads and writes the token in `name` instead of the default header.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.config().header = name;
        self
    }

    /// Also reads the token from the cookie `name` (when the header is absent) and sets it with
    /// `Set-Cookie` on every response (`Path=/; HttpOnly; SameSite=Lax; Secure`, `Max-Age` the
    /// token TTL). See the [crate docs](crate) for what cookies cannot merge.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.config().cookie = Some(CookieConfig {
            name: name.into(),
            secure: true,
        });
        self
    }

    /// Leaves `Secure` off the cookie (plain-HTTP development only).
    pub fn insecure_cookie(mut self) -> Self {
        if let Some(c) = &mut self.config().cookie {
            c.secure = false;
        }
        self
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

    /// Keeps no state between requests: the token is the only memory of a session.
    pub fn without_session_store(mut self) -> Self {
        self.config().store = None;
        self
    }
}

impl<S> Layer<S> for ServerSessionLayer {
    type Service = ServerSession<S>;

    fn layer(&self, inner: S) -> ServerSession<S> {
        ServerSession {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`ServerSessionLayer`].
///
/// # Clone
///
/// Cloning clones the inner service and shares the configuration.
#[derive(Clone)]
pub struct ServerSession<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for ServerSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSession")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ServerSession<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ServerSession<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let principal = request.extensions().get::<Principal>().cloned();
        let (session, status) = match self.config.open(request.headers(), principal.as_ref()) {
            Ok(opened) => opened,
            Err(rejection) => {
                tracing::debug!(target: "ryw::http", code = rejection.code(), "bad session token");
                match self.config.policy {
                    BadTokenPolicy::Reject => {
                        let mut response = rejection.to_response();
                        // A refused cookie is cleared: the browser would otherwise resend it
                        // (revoked, expired, signed by a retired key) until it expires.
                        if let Some(cookie) = &self.config.cookie {
                            let header_tokens =
                                tokens_in(request.headers().get_all(&self.config.header).iter())
                                    .next()
                                    .is_some();
                            if !header_tokens
                                && cookie_value(request.headers(), &cookie.name).is_some()
                            {
                                let mut value = format!(
                                    "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax",
                                    cookie.name
                                );
                                if cookie.secure {
                                    value.push_str("; Secure");
                                }
                                if let Ok(v) = HeaderValue::from_str(&value) {
                                    response.headers_mut().append(SET_COOKIE, v);
                                }
                            }
                        }
                        return ResponseFuture {
                            kind: Kind::Rejected {
                                response: Some(response),
                            },
                        };
                    }
                    BadTokenPolicy::StartFresh => (
                        Session::new(),
                        TokenStatus::Reset {
                            code: rejection.code(),
                        },
                    ),
                }
            }
        };
        // Concurrent requests carrying the same token may reach different instances: the core
        // gives each continuation its own lane of write ids (`ryw::WriteId`), so two different
        // writes never get the same idempotency key.
        request.extensions_mut().insert(session.clone());
        request.extensions_mut().insert(status.clone());
        ResponseFuture {
            kind: Kind::Inner {
                future: self.inner.call(request),
                finish: Some(Finish {
                    session,
                    principal,
                    status,
                    config: self.config.clone(),
                }),
            },
        }
    }
}

struct Finish {
    session: Session,
    principal: Option<Principal>,
    status: TokenStatus,
    config: Arc<Config>,
}

/// The future of [`ServerSession`]: the inner response with the advanced token on it.
#[pin_project]
pub struct ResponseFuture<F, B> {
    #[pin]
    kind: Kind<F, B>,
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[pin_project(project = KindProj)]
enum Kind<F, B> {
    Rejected {
        response: Option<Response<B>>,
    },
    Inner {
        #[pin]
        future: F,
        finish: Option<Finish>,
    },
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Inner { future, finish } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(f) = finish.take() {
                    f.config
                        .finish(&f.session, f.principal.as_ref(), &f.status, &mut response);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ryw::signing::SigningKey;
    use tower::{service_fn, ServiceExt};

    fn layer() -> (ServerSessionLayer, Arc<TokenAuthority>) {
        let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [3u8; 32]).unwrap()));
        (
            ServerSessionLayer::new(authority.clone()).cookie("sid"),
            authority,
        )
    }

    async fn echo_session(
        request: Request<String>,
    ) -> Result<Response<String>, std::convert::Infallible> {
        let session = request.extensions().get::<Session>().unwrap();
        let status = request.extensions().get::<TokenStatus>().unwrap();
        Ok(Response::new(format!("{} {status:?}", session.id())))
    }

    #[tokio::test]
    async fn cookie_transport_round_trip() {
        let (layer, authority) = layer();
        let service = layer.layer(service_fn(echo_session));
        let first = service
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        let set_cookie = first.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert!(set_cookie.starts_with("sid="), "{set_cookie}");
        assert!(set_cookie.contains("HttpOnly") && set_cookie.ends_with("; Secure"));
        let token = set_cookie["sid=".len()..set_cookie.find(';').unwrap()].to_owned();
        let id = authority.verify(&token, None).unwrap().state().id();

        let request = Request::builder()
            .header(COOKIE, format!("theme=dark; sid={token}; lang=en"))
            .body(String::new())
            .unwrap();
        let second = service.oneshot(request).await.unwrap();
        assert_eq!(second.into_body(), format!("{id} Continued"));
    }

    #[tokio::test]
    async fn a_cycled_session_is_as_old_as_what_it_absorbed() {
        // Found by the third adversarial round: cycling gave the new session a fresh start, so an
        // epoch revocation of the session it came from no longer applied to it.
        let list = Arc::new(ryw::signing::InMemoryRevocationList::new());
        let authority = Arc::new(
            TokenAuthority::builder(ryw::signing::KeyRing::new(
                SigningKey::new(1, [3u8; 32]).unwrap(),
            ))
            .revocations(list.clone())
            .build(),
        );
        let service = ServerSessionLayer::new(authority.clone()).layer(service_fn(echo_session));
        let now = ryw::signing::now_secs();
        let anonymous = authority
            .issue_at(&Session::new().snapshot(), None, now - 1_000)
            .unwrap();
        let mut request = Request::builder()
            .header(crate::DEFAULT_HEADER, anonymous)
            .body(String::new())
            .unwrap();
        request.extensions_mut().insert(Principal::new("alice"));
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(response.body().ends_with("Cycled"), "{}", response.body());
        let token = response.headers()[crate::DEFAULT_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        let cycled = authority.verify(&token, Some(b"alice")).unwrap();
        assert_eq!(cycled.state().started_at(), now - 1_000);
        list.revoke_issued_before(now - 500);
        assert!(authority
            .verify(&token, Some(b"alice"))
            .unwrap_err()
            .is_revoked());
    }

    #[tokio::test]
    async fn a_refused_cookie_is_cleared() {
        let (layer, _) = layer();
        let service = layer.layer(service_fn(echo_session));
        let request = Request::builder()
            .header(COOKIE, "sid=not-a-token")
            .body(String::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(
            set_cookie.starts_with("sid=;") && set_cookie.contains("Max-Age=0"),
            "{set_cookie}"
        );
        // A refused header token leaves cookies alone.
        let request = Request::builder()
            .header(crate::DEFAULT_HEADER, "not-a-token")
            .body(String::new())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(response.headers().get(SET_COOKIE).is_none());
        // An empty token header next to a refused cookie: the cookie was what was read, and is
        // cleared (found by the third adversarial round).
        for empty in ["", ","] {
            let request = Request::builder()
                .header(crate::DEFAULT_HEADER, empty)
                .header(COOKIE, "sid=not-a-token")
                .body(String::new())
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            assert!(
                response.headers().get(SET_COOKIE).is_some(),
                "header {empty:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_header_that_is_not_text_is_rejected() {
        let (layer, _) = layer();
        let service = layer.layer(service_fn(echo_session));
        let request = Request::builder()
            .header(
                crate::DEFAULT_HEADER,
                HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(
            response.body().contains("token_not_text"),
            "{}",
            response.body()
        );
    }

    #[test]
    fn rejection_bodies_are_json_escaped() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
