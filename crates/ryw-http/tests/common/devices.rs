//! Two-instance HTTP deployments of the principal's record for the tests: an instance over a
//! simulated store (`PUT /k` writes, `GET /k` reads; `x-user` authenticates), and a device that
//! keeps the token each response gives it.

#![allow(dead_code)]

use http::{Method, Request, Response};
use ryw::principal::PrincipalRecords;
use ryw::signing::TokenAuthority;
use ryw::{ReadYourWritesLayer, Session};
use ryw_http::{
    visibility_header, Principal, PrincipalRecordsLayer, ServerSessionLayer, TokenStatus,
    DEFAULT_HEADER, VISIBILITY_HEADER,
};
use ryw_sim::{SimAdapter, SimRequest, SimStore};
use std::convert::Infallible;
use std::sync::Arc;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// One instance of the app.
pub(crate) type App = BoxCloneService<Request<String>, Response<String>, Infallible>;

/// One instance: `PUT /k` writes key `k`, `GET /k` reads it. The response says the read's
/// version (`x-version`), the session id (`x-session`) and how its token came about
/// (`x-status`); the visibility header says how the read was fenced. Authentication is a header,
/// `x-user`, turned into a `Principal` before the session layer.
pub(crate) fn instance(
    store: &SimStore,
    authority: Arc<TokenAuthority>,
    principals: Option<Arc<PrincipalRecords>>,
) -> App {
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let handler = service_fn(move |request: Request<String>| {
        let ryw = ryw.clone();
        async move {
            let session = request.extensions().get::<Session>().unwrap().clone();
            let status = request.extensions().get::<TokenStatus>().unwrap().clone();
            let key = request.uri().path().trim_start_matches('/').to_owned();
            let op = if request.method() == Method::PUT {
                SimRequest::put(key.as_str(), 1)
            } else {
                SimRequest::get(key.as_str())
            };
            let answer = ryw.oneshot(session.request(op)).await.unwrap();
            let mut response = Response::new(String::new());
            let h = response.headers_mut();
            h.insert(VISIBILITY_HEADER, visibility_header(answer.visibility()));
            h.insert("x-version", answer.get_ref().version.get().into());
            h.insert("x-session", session.id().to_string().parse().unwrap());
            h.insert("x-status", format!("{status:?}").parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let authenticate = tower::util::MapRequestLayer::new(|mut request: Request<String>| {
        if let Some(user) = request.headers().get("x-user").cloned() {
            request
                .extensions_mut()
                .insert(Principal::new(user.as_bytes()));
        }
        request
    });
    let server = ServerSessionLayer::new(authority);
    match principals {
        Some(p) => BoxCloneService::new(
            ServiceBuilder::new()
                .layer(authenticate)
                .layer(server)
                .layer(PrincipalRecordsLayer::new(p))
                .service(handler),
        ),
        None => BoxCloneService::new(
            ServiceBuilder::new()
                .layer(authenticate)
                .layer(server)
                .service(handler),
        ),
    }
}

/// A device: a user (or none) and the token it holds.
pub(crate) struct Device {
    pub(crate) user: Option<&'static str>,
    pub(crate) token: Option<String>,
}

impl Device {
    pub(crate) fn of(user: &'static str) -> Self {
        Device {
            user: Some(user),
            token: None,
        }
    }

    pub(crate) fn anonymous() -> Self {
        Device {
            user: None,
            token: None,
        }
    }

    pub(crate) fn request(&self, method: Method, key: &str) -> Request<String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/{key}"))
            .body(String::new())
            .unwrap();
        if let Some(user) = self.user {
            request
                .headers_mut()
                .insert("x-user", user.parse().unwrap());
        }
        if let Some(t) = self.token.as_deref() {
            request
                .headers_mut()
                .insert(DEFAULT_HEADER, t.parse().unwrap());
        }
        request
    }

    pub(crate) async fn send(
        &mut self,
        app: &mut App,
        method: Method,
        key: &str,
    ) -> Response<String> {
        let request = self.request(method, key);
        let response = app.ready().await.unwrap().call(request).await.unwrap();
        if let Some(t) = response.headers().get(DEFAULT_HEADER) {
            self.token = Some(t.to_str().unwrap().to_owned());
        }
        response
    }
}

/// The value of header `name` of `response` (empty when it has none).
pub(crate) fn header<'a>(response: &'a Response<String>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap())
}
