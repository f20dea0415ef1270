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
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ryw::principal::PrincipalRecords;
use ryw::signing::TokenAuthority;
use ryw::{Session, SessionRequest, SessionResponse, Visibility, WriteId};
use ryw_http::{
    BadTokenPolicy, CurrentSession, Principal, PrincipalRecordsLayer, RywError, ServerSessionLayer,
    VisibilityHeader,
};
use ryw_sim::{SimError, SimRequest, SimResponse};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// A boxed future, for the store trait below.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A store's error, whichever store: what the handlers answer with [`RywError`].
pub(crate) type Failure = ryw::Error<Box<dyn std::error::Error + Send + Sync>>;

/// A store's `ryw::Error` as a [`Failure`].
pub(crate) fn boxed<E: std::error::Error + Send + Sync + 'static>(error: ryw::Error<E>) -> Failure {
    error.map_store(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
}

/// What a write returned.
pub(crate) struct Written {
    pub write_id: Option<WriteId>,
    pub visibility: Visibility,
}

/// What a read returned.
pub(crate) struct Read {
    pub value: Option<u64>,
    pub visibility: Visibility,
}

/// The posts as the handlers see them: a store behind the ryw layer. Implemented for the
/// simulated store and, with the `dynamodb` feature, for DynamoDB.
pub(crate) trait Posts: Send + Sync + 'static {
    /// Writes post `id`.
    fn put(&self, session: Session, id: String, value: u64) -> BoxFuture<Result<Written, Failure>>;
    /// Reads post `id`.
    fn get(&self, session: Session, id: String) -> BoxFuture<Result<Read, Failure>>;
}

/// The store of one app instance.
pub(crate) type PostStore = Arc<dyn Posts>;

/// The simulated store's service stack, as one type.
pub(crate) type SimStack = BoxCloneSyncService<
    SessionRequest<SimRequest>,
    SessionResponse<SimResponse>,
    ryw::Error<SimError>,
>;

/// Posts on the simulated store.
pub(crate) struct SimPosts(pub SimStack);

impl Posts for SimPosts {
    fn put(&self, session: Session, id: String, value: u64) -> BoxFuture<Result<Written, Failure>> {
        let service = self.0.clone();
        Box::pin(async move {
            let response = service
                .oneshot(session.request(SimRequest::put(format!("posts/{id}"), value)))
                .await
                .map_err(boxed)?;
            Ok(Written {
                write_id: response.write_id(),
                visibility: response.visibility().clone(),
            })
        })
    }

    fn get(&self, session: Session, id: String) -> BoxFuture<Result<Read, Failure>> {
        let service = self.0.clone();
        Box::pin(async move {
            let response = service
                .oneshot(session.request(SimRequest::get(format!("posts/{id}"))))
                .await
                .map_err(boxed)?;
            Ok(Read {
                value: response.get_ref().value(),
                visibility: response.visibility().clone(),
            })
        })
    }
}

/// Posts on the simulated store, from an instance's service stack.
pub(crate) fn sim_posts<S>(stack: S) -> PostStore
where
    S: tower::Service<
            SessionRequest<SimRequest>,
            Response = SessionResponse<SimResponse>,
            Error = ryw::Error<SimError>,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Arc::new(SimPosts(BoxCloneSyncService::new(stack)))
}

/// Posts on DynamoDB: items `{pk: "posts/<id>", value: N}` in one table.
#[cfg(feature = "dynamodb")]
pub mod dynamo {
    use super::{boxed, BoxFuture, Failure, Posts, Read, Written};
    use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
    use aws_sdk_dynamodb::types::AttributeValue;
    use ryw::{ReadYourWritesLayer, Session};
    use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
    use tower::{Layer, ServiceExt};

    /// One app instance's view of the table.
    pub struct DynamoPosts {
        service: ryw::ReadYourWrites<DynamoService, DynamoAdapter>,
        table: String,
    }

    impl DynamoPosts {
        /// An instance with its own service over `client`.
        pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
            let adapter = DynamoAdapter::new().table(TableSchema::new(table, "pk"));
            let service =
                ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client));
            DynamoPosts {
                service,
                table: table.to_owned(),
            }
        }
    }

    impl Posts for DynamoPosts {
        fn put(
            &self,
            session: Session,
            id: String,
            value: u64,
        ) -> BoxFuture<Result<Written, Failure>> {
            let request: DynamoRequest = PutItemInput::builder()
                .table_name(&self.table)
                .item("pk", AttributeValue::S(format!("posts/{id}")))
                .item("value", AttributeValue::N(value.to_string()))
                .into();
            let service = self.service.clone();
            Box::pin(async move {
                let response = service
                    .oneshot(session.request(request))
                    .await
                    .map_err(boxed)?;
                Ok(Written {
                    write_id: response.write_id(),
                    visibility: response.visibility().clone(),
                })
            })
        }

        fn get(&self, session: Session, id: String) -> BoxFuture<Result<Read, Failure>> {
            let request: DynamoRequest = GetItemInput::builder()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(format!("posts/{id}")))
                .into();
            let service = self.service.clone();
            Box::pin(async move {
                let response = service
                    .oneshot(session.request(request))
                    .await
                    .map_err(boxed)?;
                let value = response
                    .get_ref()
                    .item()
                    .and_then(|i| i.get("value"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok());
                Ok(Read {
                    value,
                    visibility: response.visibility().clone(),
                })
            })
        }
    }
}

/// The visibility status as the API reports it.
pub(crate) fn describe(visibility: &Visibility) -> String {
    match visibility {
        Visibility::Guaranteed(path) => format!("guaranteed ({path:?})"),
        Visibility::Pending(stale) => format!("pending ({stale})"),
        Visibility::SessionOnly(path) => format!("guaranteed for this device only ({path:?})"),
        _ => "unknown".to_owned(),
    }
}

async fn put_post(
    State(store): State<PostStore>,
    session: CurrentSession,
    Path(id): Path<String>,
    body: String,
) -> Result<Response, RywError<Box<dyn std::error::Error + Send + Sync>>> {
    let Ok(value) = body.trim().parse::<u64>() else {
        return Ok((
            StatusCode::BAD_REQUEST,
            "{\"error\":\"body must be a number\"}".to_owned(),
        )
            .into_response());
    };
    // A store error becomes a JSON answer with its status (`RywError`), through `?`.
    let written = store.put(session.into_inner(), id, value).await?;
    Ok((
        StatusCode::OK,
        VisibilityHeader(written.visibility.clone()),
        format!(
            "{{\"write_id\":\"{}\",\"visibility\":\"{}\"}}",
            written.write_id.map(|w| w.to_string()).unwrap_or_default(),
            describe(&written.visibility)
        ),
    )
        .into_response())
}

async fn get_post(
    State(store): State<PostStore>,
    session: CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, RywError<Box<dyn std::error::Error + Send + Sync>>> {
    let read = store.get(session.into_inner(), id).await?;
    // The read's visibility also goes out as the `ryw-visibility` header.
    Ok((
        StatusCode::OK,
        VisibilityHeader(read.visibility.clone()),
        format!(
            "{{\"value\":{},\"visibility\":\"{}\"}}",
            read.value.map_or("null".to_owned(), |v| v.to_string()),
            describe(&read.visibility)
        ),
    )
        .into_response())
}

/// The router of one app instance. With `principals`, a user's devices share the user's record:
/// each device reads what the others wrote.
pub(crate) fn router(
    store: PostStore,
    authority: Arc<TokenAuthority>,
    policy: BadTokenPolicy,
    principals: Option<Arc<PrincipalRecords>>,
) -> Router {
    Router::new()
        .route("/posts/{id}", get(get_post).put(put_post))
        .with_state(store)
        .layer(tower::util::option_layer(
            principals.map(PrincipalRecordsLayer::new),
        ))
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
pub(crate) async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}
