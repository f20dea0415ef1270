//! The `axum` feature: the session extractor, the visibility header part and the error
//! responses, in a Router behind [`ServerSessionLayer`] (and without it).

use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use ryw::clock::HybridTimestamp;
use ryw::conflict::Conflict;
use ryw::fence::{FencePath, FenceStrategy, StaleRead, Staleness};
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::{ScopeKey, SessionId, StoreId, Version, Visibility, WriteId};
use ryw_http::axum::{CurrentSession, RywError, VisibilityHeader};
use ryw_http::{visibility_header, ServerSessionLayer, DEFAULT_HEADER, VISIBILITY_HEADER};
use serde_json::{json, Value};
use std::fmt;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

fn authority() -> Arc<TokenAuthority> {
    Arc::new(TokenAuthority::new(SigningKey::new(1, [9u8; 32]).unwrap()))
}

async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

fn get_request(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_handler_gets_the_session_its_token_carries() {
    let authority = authority();
    let app = Router::new()
        .route(
            "/whoami",
            get(|session: CurrentSession| async move { session.id().to_string() }),
        )
        .route(
            "/inner",
            get(|CurrentSession(session): CurrentSession| async move { session.id().to_string() }),
        )
        .layer(ServerSessionLayer::new(authority.clone()));

    // A new session: the id the handler saw is the one its first token carries.
    let response = send(&app, get_request("/whoami")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let token = response.headers()[DEFAULT_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let id = authority.verify(&token, None).unwrap().state().id();
    assert_eq!(text(response).await, id.to_string());

    // Continued from the token, on either route.
    for path in ["/whoami", "/inner"] {
        let request = Request::get(path)
            .header(DEFAULT_HEADER, &token)
            .body(Body::empty())
            .unwrap();
        let response = send(&app, request).await;
        let again = response.headers()[DEFAULT_HEADER].to_str().unwrap();
        assert_eq!(authority.verify(again, None).unwrap().state().id(), id);
        assert_eq!(text(response).await, id.to_string(), "{path}");
    }
}

#[tokio::test]
async fn what_the_handler_teaches_its_session_reaches_the_token() {
    let scope = ScopeKey::new(StoreId::new(1), b"posts/1");
    let authority = authority();
    let app = Router::new()
        .route(
            "/",
            get(move |session: CurrentSession| async move {
                // As a read through the ryw layer would: the session now requires version 5.
                session.with_state(|state| state.advance(scope, Version::new(5)));
                let session: ryw::Session = session.into_inner();
                session.id().to_string()
            }),
        )
        .layer(ServerSessionLayer::new(authority.clone()));
    let response = send(&app, get_request("/")).await;
    let token = response.headers()[DEFAULT_HEADER].to_str().unwrap();
    let verified = authority.verify(token, None).unwrap();
    assert_eq!(verified.state().requirement(scope).version, Version::new(5));
    assert_eq!(text(response).await, verified.state().id().to_string());
}

#[tokio::test]
async fn without_the_layer_the_extractor_answers_500_and_says_why() {
    let app = Router::new().route(
        "/",
        get(|session: CurrentSession| async move { session.id().to_string() }),
    );
    let response = send(&app, get_request("/")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = text(response).await;
    assert!(
        body.contains("ServerSessionLayer is not installed in front of this route"),
        "{body}"
    );
}

#[tokio::test]
async fn an_optional_session_is_none_without_the_layer() {
    let handler = get(|session: Option<CurrentSession>| async move {
        match session {
            Some(_) => "some",
            None => "none",
        }
    });
    let bare = Router::new().route("/", handler.clone());
    let layered = Router::new()
        .route("/", handler)
        .layer(ServerSessionLayer::new(authority()));
    let response = send(&bare, get_request("/")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "none");
    assert_eq!(text(send(&layered, get_request("/")).await).await, "some");
}

fn write_id() -> WriteId {
    WriteId::new(SessionId::from_u128(0xabc), 2, 7)
}

fn stale_read() -> StaleRead {
    StaleRead {
        staleness: Staleness {
            scope: ScopeKey::new(StoreId::new(1), b"posts/1"),
            required: Version::new(12),
            observed: Some(Version::new(9)),
            horizon: false,
        },
        attempts: 2,
        last_strategy: FenceStrategy::Strong,
    }
}

/// Every visibility, with the header value it is written as.
fn visibilities() -> Vec<(Visibility, &'static str)> {
    vec![
        (
            Visibility::Guaranteed(FencePath::Verified),
            "guaranteed; path=verified",
        ),
        (
            Visibility::Pending(Box::new(stale_read())),
            "pending; behind=3; required=12; observed=9",
        ),
        (Visibility::Unscoped, "unscoped"),
        (Visibility::Queued(write_id()), "queued; write=7"),
        (
            Visibility::SessionOnly(FencePath::Escalated),
            "session-only; path=escalated",
        ),
    ]
}

#[tokio::test]
async fn the_visibility_header_says_each_visibility() {
    for (visibility, expected) in visibilities() {
        assert_eq!(visibility_header(&visibility), expected);

        // Among a handler's response parts, behind the layer.
        let part = VisibilityHeader(visibility.clone());
        let app = Router::new()
            .route(
                "/",
                get(move || async move { (part, Json(json!({ "value": 42 }))) }),
            )
            .layer(ServerSessionLayer::new(authority()));
        let response = send(&app, get_request("/")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[VISIBILITY_HEADER], expected);
        assert!(response.headers().contains_key(DEFAULT_HEADER));
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(text(response).await, "{\"value\":42}");

        // On its own, without the layer.
        let response = VisibilityHeader::from(visibility).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[VISIBILITY_HEADER], expected);
    }
}

/// A store error whose text and debug form hold what a client must not see.
#[derive(Debug)]
struct StoreError {
    detail: &'static str,
}

const SECRET: &str = "db-7.internal:5432 password=hunter2";

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection to {} refused", self.detail)
    }
}

impl std::error::Error for StoreError {}

fn store_error() -> StoreError {
    StoreError { detail: SECRET }
}

/// Every variant of `ryw::Error`, with the status, code and `Retry-After` it is answered with.
fn errors() -> Vec<(ryw::Error<StoreError>, StatusCode, &'static str, bool)> {
    let store = |transient, may_have_applied| ryw::Error::Store {
        source: store_error(),
        attempts: 3,
        transient,
        may_have_applied,
    };
    let conflict = Conflict::new(
        ScopeKey::new(StoreId::new(1), b"posts/1"),
        write_id(),
        HybridTimestamp::new(1_000),
        Some(Version::new(4)),
        Version::new(5),
    );
    vec![
        (
            store(true, false),
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            true,
        ),
        (
            store(false, false),
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            false,
        ),
        (
            store(true, true),
            StatusCode::INTERNAL_SERVER_ERROR,
            "write_outcome_unknown",
            false,
        ),
        (
            store(false, true),
            StatusCode::INTERNAL_SERVER_ERROR,
            "write_outcome_unknown",
            false,
        ),
        (
            ryw::Error::NotReady(store_error()),
            StatusCode::SERVICE_UNAVAILABLE,
            "store_not_ready",
            true,
        ),
        (
            ryw::Error::Ambiguous {
                write_id: write_id(),
                source: store_error(),
            },
            StatusCode::INTERNAL_SERVER_ERROR,
            "write_outcome_unknown",
            false,
        ),
        (
            ryw::Error::AlreadySent {
                write_id: write_id(),
            },
            StatusCode::INTERNAL_SERVER_ERROR,
            "write_already_sent",
            false,
        ),
        (
            ryw::Error::Conflict(Box::new(conflict)),
            StatusCode::CONFLICT,
            "write_conflict",
            false,
        ),
        (
            ryw::Error::StaleRead(Box::new(stale_read())),
            StatusCode::SERVICE_UNAVAILABLE,
            "stale_read",
            true,
        ),
        (
            ryw::Error::Unscoped,
            StatusCode::INTERNAL_SERVER_ERROR,
            "read_unscoped",
            false,
        ),
    ]
}

#[tokio::test]
async fn each_error_has_its_status_and_a_json_body_of_code_and_message() {
    for (error, status, code, retry) in errors() {
        let error = RywError::from(error);
        assert_eq!(error.status(), status, "{code}");
        assert_eq!(error.code(), code);
        let write_id = error.0.write_id();
        let stale = error.0.is_stale_read();

        let response = error.into_response();
        assert_eq!(response.status(), status, "{code}");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            retry.then_some(b"1".as_slice()),
            "{code}"
        );
        // A stale read says how far behind it was, as a pending read would.
        assert_eq!(
            response
                .headers()
                .get(VISIBILITY_HEADER)
                .map(|v| v.to_str().unwrap()),
            stale.then_some("pending; behind=3; required=12; observed=9"),
            "{code}"
        );

        let body: Value = serde_json::from_str(&text(response).await).unwrap();
        let fields = body.as_object().unwrap();
        assert_eq!(fields.len(), 2, "{body}");
        assert_eq!(body["error"], code);
        let message = body["message"].as_str().unwrap();
        assert!(!message.is_empty());
        // The write whose outcome is not known is named, so the client can look for it.
        if let Some(write_id) = write_id {
            assert!(message.contains(&write_id.to_string()), "{message}");
        }
    }
}

/// The events logged while `f` runs, each as its fields `name=value`.
fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Events(events.clone()), f);
    let events = events.lock().unwrap().clone();
    (out, events)
}

/// A subscriber that keeps the events' fields.
struct Events(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                self.0 += &format!("{}={value:?} ", field.name());
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn a_store_errors_details_stay_out_of_the_body_and_go_to_the_log() {
    for (error, _, code, _) in errors() {
        let has_store_error = error.store_error().is_some();
        let (response, events) = logged(|| RywError(error).into_response());
        let body = text(response).await;
        assert!(!body.contains("hunter2"), "{code}: {body}");
        assert!(!body.contains("db-7.internal"), "{code}: {body}");
        assert!(!body.contains("StoreError"), "{code}: {body}");
        // The error is logged once, with its code, and the store's error in full.
        assert_eq!(events.len(), 1, "{code}: {events:?}");
        assert!(
            events[0].contains(&format!("code=\"{code}\"")),
            "{events:?}"
        );
        if has_store_error {
            assert!(events[0].contains("StoreError"), "{events:?}");
            assert!(events[0].contains("hunter2"), "{events:?}");
        }
    }
}

#[tokio::test]
async fn a_handler_returns_a_ryw_error_with_the_question_mark() {
    async fn strict_read() -> Result<Json<Value>, RywError<StoreError>> {
        let read: Result<u64, ryw::Error<StoreError>> =
            Err(ryw::Error::StaleRead(Box::new(stale_read())));
        Ok(Json(json!({ "value": read? })))
    }
    let app = Router::new()
        .route("/", get(strict_read))
        .layer(ServerSessionLayer::new(authority()));
    let response = send(&app, get_request("/")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The session's token still comes back on the error response.
    assert!(response.headers().contains_key(DEFAULT_HEADER));
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["error"], "stale_read");
}

#[tokio::test]
async fn a_layer_response_gives_its_own_visibility_header() {
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
    use tower::Layer;

    let store = SimStore::new(SimConfig::default().seed(3));
    let posts = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let session = Session::new();
    let written = posts
        .clone()
        .oneshot(session.request(SimRequest::put("posts/1", 7)))
        .await
        .unwrap();
    let read = posts
        .oneshot(session.request(SimRequest::get("posts/1")))
        .await
        .unwrap();
    for response in [
        VisibilityHeader::from(&written).into_response(),
        VisibilityHeader::from(&read).into_response(),
    ] {
        assert!(response.headers()[VISIBILITY_HEADER]
            .to_str()
            .unwrap()
            .starts_with("guaranteed; path="));
    }
    assert_eq!(
        VisibilityHeader::from(&read),
        VisibilityHeader(read.visibility().clone())
    );
}
