//! The client half, for service-to-service calls: send the tokens held, keep the advanced ones.
//!
//! # Example
//!
//! ```
//! use ryw_http::{ClientSessionLayer, DEFAULT_HEADER};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let session = ClientSessionLayer::new();
//! // A stand-in for the HTTP client: it answers with a token, as a ryw server does.
//! let token = ryw::SessionToken::new(ryw::SessionState::new(ryw::SessionId::from_u128(7))).encode()?;
//! let mut client = ServiceBuilder::new().layer(session.clone()).service(service_fn(
//!     move |request: http::Request<String>| {
//!         let token = token.clone();
//!         async move {
//!             let sent = request.headers().get(DEFAULT_HEADER).cloned();
//!             let response = http::Response::builder().header(DEFAULT_HEADER, token).body(())?;
//!             Ok::<_, http::Error>((sent, response))
//!         }
//!     },
//! ).map_response(|(sent, response)| { println!("sent {sent:?}"); response }));
//!
//! client.ready().await?.call(http::Request::new(String::new())).await?;
//! assert_eq!(session.tokens().len(), 1, "the token that came back is kept and sent next time");
//! # Ok(())
//! # }
//! ```

use crate::headers::{tokens_in, MAX_TOKENS_PER_REQUEST, REJECTED_HEADER, RESET_HEADER};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project::pin_project;
use ryw::{SessionState, SessionToken, TokenError};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

#[derive(Default)]
struct Held {
    tokens: Vec<(SessionState, String)>,
}

impl Held {
    fn offer(&mut self, encoded: &str) {
        // The client cannot verify (it does not hold the key): it decodes only to compare.
        let state = match SessionToken::decode(encoded) {
            Ok(t) => t.into_state(),
            Err(e) => {
                tracing::warn!(target: "ryw::http", error = %e, "server sent an undecodable session token");
                return;
            }
        };
        self.tokens.retain(|(held, _)| !state.covers(held));
        if self.tokens.iter().any(|(held, _)| held.covers(&state)) {
            return;
        }
        if self.tokens.len() == MAX_TOKENS_PER_REQUEST {
            tracing::warn!(
                target: "ryw::http",
                "more concurrent session tokens than a request carries; dropping the oldest"
            );
            self.tokens.remove(0);
        }
        self.tokens.push((state, encoded.to_owned()));
    }

    fn header_value(&self) -> Option<HeaderValue> {
        if self.tokens.is_empty() {
            return None;
        }
        let joined = self
            .tokens
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        HeaderValue::from_str(&joined).ok()
    }
}

/// A [`Layer`] that sends a session's tokens on every request and keeps the advanced ones from the
/// responses. Clones share the tokens: one layer (and its clones) is one session.
#[derive(Clone)]
pub struct ClientSessionLayer {
    held: Arc<Mutex<Held>>,
    header: HeaderName,
}

impl fmt::Debug for ClientSessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSessionLayer")
            .field("header", &self.header)
            .field("tokens", &self.lock().tokens.len())
            .finish()
    }
}

impl Default for ClientSessionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSessionLayer {
    /// A layer holding no token yet: the first response starts the session.
    pub fn new() -> Self {
        ClientSessionLayer {
            held: Arc::default(),
            header: HeaderName::from_static(crate::headers::DEFAULT_HEADER),
        }
    }

    /// Starts from a token kept earlier (it is only decoded here; the server verifies it).
    pub fn with_token(self, encoded: &str) -> Result<Self, TokenError> {
        SessionToken::decode(encoded)?;
        self.lock().offer(encoded);
        Ok(self)
    }

    /// Sends and reads the token in `name` instead of the default header.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The tokens held now (usually one; more after concurrent responses, until the next request
    /// merges them).
    pub fn tokens(&self) -> Vec<String> {
        self.lock().tokens.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Forgets the session: the next request starts a new one.
    pub fn clear(&self) {
        self.lock().tokens.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S> Layer<S> for ClientSessionLayer {
    type Service = ClientSession<S>;

    fn layer(&self, inner: S) -> ClientSession<S> {
        ClientSession {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ClientSessionLayer`].
///
/// # Clone
///
/// Cloning clones the inner service; the clone shares the session's tokens.
#[derive(Clone, Debug)]
pub struct ClientSession<S> {
    inner: S,
    layer: ClientSessionLayer,
}

impl<S> ClientSession<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientSession<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // A token the caller set explicitly wins.
        if !request.headers().contains_key(&self.layer.header) {
            if let Some(value) = self.layer.lock().header_value() {
                request
                    .headers_mut()
                    .insert(self.layer.header.clone(), value);
            }
        }
        ResponseFuture {
            future: self.inner.call(request),
            layer: Some(self.layer.clone()),
        }
    }
}

/// The future of [`ClientSession`]: takes the advanced token off the response.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    future: F,
    layer: Option<ClientSessionLayer>,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        if let Some(layer) = this.layer.take() {
            let headers = response.headers();
            let mut held = layer.lock();
            if headers.contains_key(RESET_HEADER) || headers.contains_key(REJECTED_HEADER) {
                // The server refused what we held: those tokens will never verify again.
                held.tokens.clear();
            }
            for token in tokens_in(headers.get_all(&layer.header).iter()).flatten() {
                held.offer(token);
            }
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ryw::version::{ScopeKey, StoreId, Version};
    use ryw::SessionId;
    use tower::{service_fn, ServiceExt};

    fn token(id: u128, scopes: &[(&str, u64)]) -> String {
        let mut s = SessionState::new(SessionId::from_u128(id));
        for (name, v) in scopes {
            s.advance(
                ScopeKey::new(StoreId::new(1), name.as_bytes()),
                Version::new(*v),
            );
        }
        SessionToken::new(s).encode().unwrap()
    }

    #[test]
    fn keeps_only_tokens_no_other_covers() {
        let mut held = Held::default();
        held.offer(&token(1, &[("a", 1)]));
        held.offer(&token(1, &[("a", 2)]));
        assert_eq!(held.tokens.len(), 1, "the newer token covers the older");
        held.offer(&token(1, &[("a", 1)]));
        assert_eq!(held.tokens.len(), 1, "an older token is ignored");
        held.offer(&token(1, &[("b", 1)]));
        assert_eq!(held.tokens.len(), 2, "incomparable tokens are both kept");
        held.offer(&token(1, &[("a", 2), ("b", 1)]));
        assert_eq!(held.tokens.len(), 1, "a merged token covers both");
        for i in 0..10u64 {
            held.offer(&token(1, &[(&format!("k{i}"), 1)]));
        }
        assert_eq!(held.tokens.len(), MAX_TOKENS_PER_REQUEST, "bounded");
        held.offer("not a token");
        assert_eq!(held.tokens.len(), MAX_TOKENS_PER_REQUEST);
    }

    #[tokio::test]
    async fn a_refused_session_is_dropped() {
        let layer = ClientSessionLayer::new()
            .with_token(&token(1, &[("a", 1)]))
            .unwrap();
        let fresh = token(2, &[]);
        let answer = fresh.clone();
        let service = layer.layer(service_fn(move |request: Request<()>| {
            let answer = answer.clone();
            async move {
                assert!(request.headers().contains_key(crate::DEFAULT_HEADER));
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .header(RESET_HEADER, "token_expired")
                        .header(crate::DEFAULT_HEADER, answer)
                        .body(())
                        .unwrap(),
                )
            }
        }));
        service.oneshot(Request::new(())).await.unwrap();
        assert_eq!(layer.tokens(), vec![fresh]);
    }
}
