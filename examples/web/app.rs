//! The application of `examples/web.rs`, also driven by the HTTP tests of `ryw-http`
//! (`crates/ryw-http/tests/http/main.rs`): posts kept in a store behind the ryw layer, served
//! over HTTP by axum with the session carried by [`ServerSessionLayer`].
//!
//! Routes:
//! - `PUT /posts/{id}` with a number as the body: writes it; answers `{"write_id": ..}`.
//! - `GET /posts/{id}`: reads it; answers `{"value": n or null, "visibility": ".."}`.
//!
//! An `x-user` request header stands for authentication: it becomes the request's
//! [`Principal`], so the tokens issued are bound to that user.

#![allow(dead_code)]

use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use ryw::signing::TokenAuthority;
use ryw::{Session, SessionRequest, SessionResponse, Visibility};
use ryw_http::{BadTokenPolicy, Principal, ServerSessionLayer};
use ryw_sim::{SimError, SimRequest, SimResponse};
use std::sync::Arc;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The store as the handlers see it: the ryw layer over one instance's store client.
pub type PostStore = BoxCloneSyncService<
    SessionRequest<SimRequest>,
    SessionResponse<SimResponse>,
    ryw::Error<SimError>,
>;

/// The visibility status as the API reports it.
pub fn describe(visibility: &Visibility) -> String {
    match visibility {
        Visibility::Guaranteed(path) => format!("guaranteed ({path:?})"),
        Visibility::Pending(stale) => format!("pending ({stale})"),
        _ => "unknown".to_owned(),
    }
}

async fn put_post(
    State(store): State<PostStore>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    body: String,
) -> (StatusCode, String) {
    let Ok(value) = body.trim().parse::<u64>() else {
        return (
            StatusCode::BAD_REQUEST,
            "{\"error\":\"body must be a number\"}".into(),
        );
    };
    let request = session.request(SimRequest::put(format!("posts/{id}"), value));
    match store.oneshot(request).await {
        Ok(response) => (
            StatusCode::OK,
            format!(
                "{{\"write_id\":\"{}\",\"visibility\":\"{}\"}}",
                response
                    .write_id()
                    .map(|w| w.to_string())
                    .unwrap_or_default(),
                describe(response.visibility())
            ),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{{\"error\":\"{e}\"}}"),
        ),
    }
}

async fn get_post(
    State(mut store): State<PostStore>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> (StatusCode, String) {
    let request = session.request(SimRequest::get(format!("posts/{id}")));
    let result = match store.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(response) => (
            StatusCode::OK,
            format!(
                "{{\"value\":{},\"visibility\":\"{}\"}}",
                response
                    .get_ref()
                    .value()
                    .map_or("null".to_owned(), |v| v.to_string()),
                describe(response.visibility())
            ),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{{\"error\":\"{e}\"}}"),
        ),
    }
}

/// The router of one app instance.
pub fn router(store: PostStore, authority: Arc<TokenAuthority>, policy: BadTokenPolicy) -> Router {
    Router::new()
        .route("/posts/{id}", get(get_post).put(put_post))
        .with_state(store)
        .layer(
            ServiceBuilder::new()
                // Stand-in authentication: runs first, so the session layer sees the principal.
                .map_request(|mut request: Request<axum::body::Body>| {
                    if let Some(user) = request.headers().get("x-user").cloned() {
                        request
                            .extensions_mut()
                            .insert(Principal::new(user.as_bytes()));
                    }
                    request
                })
                .layer(ServerSessionLayer::new(authority).on_bad_token(policy)),
        )
}

/// Serves `router` on a free loopback port; returns its address.
pub async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}
