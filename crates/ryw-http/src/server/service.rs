//! The service a [`ServerSessionLayer`](crate::ServerSessionLayer) wraps around its inner service,
//! and the future that puts the session's token on the inner response.

use super::exchange::{Config, Presented, TokenStatus};
use super::rejection::BadTokenPolicy;
use crate::principal::Principal;
use http::{Request, Response};
use pin_project::pin_project;
use ryw::telemetry::TokenEvent;
use ryw::Session;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::Service;

/// The service of [`ServerSessionLayer`](crate::ServerSessionLayer).
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
    /// The service of a layer with `config` around `inner`.
    pub(super) fn new(inner: S, config: Arc<Config>) -> Self {
        ServerSession { inner, config }
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
        let (session, status, presented) = match self
            .config
            .open(request.headers(), principal.as_ref())
        {
            Ok(opened) => opened,
            Err(rejection) => {
                tracing::debug!(target: "ryw::http", code = rejection.code(), "bad session token");
                self.config.report(TokenEvent::Rejected {
                    code: rejection.code(),
                });
                match self.config.policy {
                    BadTokenPolicy::Reject => {
                        let mut response = rejection.to_response();
                        self.config
                            .transport
                            .clear_refused_cookie(request.headers(), response.headers_mut());
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
                        None,
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
                    presented,
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
    presented: Option<Presented>,
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

// The large variant is the common one (every served request); boxing it would put an allocation
// on every request to shrink the rare rejection.
#[allow(clippy::large_enum_variant)]
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
                    f.config.finish(
                        &f.session,
                        f.principal.as_ref(),
                        &f.status,
                        f.presented,
                        &mut response,
                    );
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
