//! An axum service over DynamoDB with read-your-writes: `PUT /posts/{id}` writes a post, `GET
//! /posts/{id}` reads it and says in the `ryw-visibility` header whether the read reflects the
//! session's writes. The session travels in the signed `ryw-session` header; store errors are
//! answered as JSON with their status (`RywError`). This file is the README's example: a test
//! (`tests/readme.rs`) checks that the README's snippet is an excerpt of it.
//!
//! ```text
//! DYNAMODB_ENDPOINT=http://127.0.0.1:8000 cargo run --features dynamodb --example axum_dynamodb
//! curl -si -X PUT localhost:3000/posts/1 -d hello        # answers a ryw-session token
//! curl -si localhost:3000/posts/1 -H "ryw-session: <token>"
//! ```
//!
//! It serves on `RYW_ADDR` (default `127.0.0.1:3000`) until stopped, in the table `posts`
//! (created if missing), with the signing secret `RYW_SIGNING_SECRET` (at least 32 bytes; a
//! random key when unset). With `--check` it serves on a free port, makes one write and one read
//! through the same session as a client would, checks the answers, deletes the table if it
//! created it, and exits (`tests/run-all.sh` runs it that way against moto).

#[path = "shared/dynamodb.rs"]
mod shared;

use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
use aws_sdk_dynamodb::types::AttributeValue::S;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::{ReadYourWrites, ReadYourWritesLayer};
use ryw_dynamodb::{DynamoAdapter, DynamoError, DynamoRequest, DynamoService, TableSchema};
use ryw_http::{CurrentSession, RywError, ServerSessionLayer, VisibilityHeader};
use std::sync::Arc;
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The table of posts, keyed by the string `pk`.
const TABLE: &str = "posts";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let check = std::env::args().any(|arg| arg == "--check");
    let endpoint = std::env::var("DYNAMODB_ENDPOINT").ok();
    let client = shared::client(endpoint.as_deref()).await;
    let created = client
        .describe_table()
        .table_name(TABLE)
        .send()
        .await
        .is_err();
    if created {
        shared::create_table(&client, TABLE).await?;
    }
    let key = match std::env::var("RYW_SIGNING_SECRET") {
        Ok(secret) => SigningKey::new(1, secret)?,
        Err(_) => SigningKey::generate(1),
    };
    let app = app(client.clone(), key);
    let addr = match check {
        true => "127.0.0.1:0".to_owned(),
        false => std::env::var("RYW_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned()),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    if !check {
        println!("serving on http://{addr}, table {TABLE}");
        axum::serve(listener, app).await?;
        return Ok(());
    }
    tokio::spawn(async move { axum::serve(listener, app).await });
    let outcome = check::write_then_read(addr).await;
    if created {
        client.delete_table().table_name(TABLE).send().await?;
    }
    outcome
}

type Posts = ReadYourWrites<DynamoService, DynamoAdapter>;

fn app(client: aws_sdk_dynamodb::Client, key: SigningKey) -> Router {
    let adapter = DynamoAdapter::new().table(TableSchema::new(TABLE, "pk"));
    let posts: Posts = ReadYourWritesLayer::new(adapter).layer(DynamoService::new(client));
    let authority = Arc::new(TokenAuthority::new(KeyRing::new(key)));
    Router::new()
        .route("/posts/{id}", get(read_post).put(write_post))
        .with_state(posts)
        .layer(ServerSessionLayer::new(authority)) // the signed token in `ryw-session`
}

async fn write_post(
    State(posts): State<Posts>,
    session: CurrentSession,
    Path(id): Path<String>,
    body: String,
) -> Result<VisibilityHeader, RywError<DynamoError>> {
    let put = PutItemInput::builder().table_name(TABLE);
    let put = DynamoRequest::from(put.item("pk", S(id)).item("body", S(body)));
    let written = posts.oneshot(session.request(put)).await?;
    Ok(VisibilityHeader::from(&written))
}

async fn read_post(
    State(posts): State<Posts>,
    session: CurrentSession,
    Path(id): Path<String>,
) -> Result<(VisibilityHeader, String), RywError<DynamoError>> {
    let get = GetItemInput::builder().table_name(TABLE).key("pk", S(id));
    let read = posts
        .oneshot(session.request(DynamoRequest::from(get)))
        .await?;
    let body = read
        .get_ref()
        .item()
        .and_then(|item| item.get("body")?.as_s().ok());
    let body = body.cloned().unwrap_or_default();
    Ok((VisibilityHeader::from(&read), body)) // ryw-visibility: guaranteed; ...
}

/// The `--check` mode's client: one write and one read in one session, as a browser or an app
/// would make them, carrying the token the write was answered with.
mod check {
    use super::BoxError;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use ryw_http::DEFAULT_HEADER;

    pub(super) async fn write_then_read(addr: std::net::SocketAddr) -> Result<(), BoxError> {
        let client = Client::builder(TokioExecutor::new()).build_http::<String>();
        let put = http::Request::put(format!("http://{addr}/posts/1")).body("hello".to_owned())?;
        let written = client.request(put).await?;
        let status = written.status();
        let token = written.headers().get(DEFAULT_HEADER).cloned();
        println!(
            "PUT /posts/1 hello: {status}, {:?}",
            written.headers().get("ryw-visibility")
        );
        let Some(token) = token.filter(|_| status.is_success()) else {
            return Err(format!("the write was answered {status} without a session token").into());
        };
        let get = http::Request::get(format!("http://{addr}/posts/1"))
            .header(DEFAULT_HEADER, token)
            .body(String::new())?;
        let read = client.request(get).await?;
        let status = read.status();
        let visibility = read.headers().get("ryw-visibility").cloned();
        let body = read.into_body().collect().await?.to_bytes();
        println!("GET /posts/1: {status}, {visibility:?}, {body:?}");
        let guaranteed = visibility.is_some_and(|v| v.as_bytes().starts_with(b"guaranteed"));
        if !status.is_success() || &body[..] != b"hello" || !guaranteed {
            return Err("the read did not return the session's own write as guaranteed".into());
        }
        Ok(())
    }
}
