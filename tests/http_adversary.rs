//! Adversarial tests of the axum integration (`ServerSessionLayer`, `CurrentSession`,
//! `VisibilityHeader`, `RywError`) over DynamoDB: attacks on the promise through the public API.
//!
//! The app instances share nothing but the signing key and the table: each has its own
//! `ServerSessionLayer` (and session store), its own ryw layer and its own SDK client. Between the
//! SDK and moto sits a proxy of this file that can serve eventually consistent `GetItem`s from a
//! frozen copy of a table (a lagging replica), and inject store errors.
//!
//! Tests that need moto read `RYW_DYNAMODB_ENDPOINT` and are skipped (with a message) without it.
//! Each test's doc comment says which promise it attacks and what must hold.

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::operation::{
    delete_item::DeleteItemInput, get_item::GetItemInput, put_item::PutItemInput,
};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue::S, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::routing::get;
use axum::{Json, Router};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use ryw::signing::{InMemoryRevocationList, KeyRing, SigningKey, TokenAuthority};
use ryw::{ReadYourWrites, ReadYourWritesLayer, Session};
use ryw_dynamodb::{DynamoAdapter, DynamoError, DynamoRequest, DynamoService, TableSchema};
use ryw_http::{
    ClientSessionLayer, CurrentSession, Principal, RywError, ServerSessionLayer, TokenStatus,
    VisibilityHeader, DEFAULT_HEADER, MAX_TOKENS_PER_REQUEST, REJECTED_HEADER, VISIBILITY_HEADER,
};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tower::{Layer, Service, ServiceExt};

const SECRET: [u8; 32] = [7u8; 32];
/// A string the proxy puts into every error it injects: it must never reach a client.
const LEAK: &str = "LEAKED-STORE-DETAIL-arn:aws:dynamodb:secret-table-9f3a";

fn moto() -> Option<String> {
    match std::env::var("RYW_DYNAMODB_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
                "RYW_REQUIRE_SERVERS is set but RYW_DYNAMODB_ENDPOINT is not"
            );
            eprintln!(
                "skipped: RYW_DYNAMODB_ENDPOINT is not set (bash tests/run-all.sh starts moto)"
            );
            None
        }
    }
}

// ------------------------------------------------------------------------------------------
// The lagging, fault-injecting proxy between the SDK and moto.
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Injected {
    /// The operation it applies to (`PutItem`, `GetItem`, ...); `None`: every operation.
    target: Option<&'static str>,
    status: u16,
    error_type: &'static str,
    /// Only requests whose `ConsistentRead` is this; `None`: all.
    consistent: Option<bool>,
}

#[derive(Default)]
struct ProxyState {
    upstream: String,
    /// table -> key (`pk` as JSON) -> item: what eventually consistent GetItems see.
    frozen: Mutex<HashMap<String, HashMap<String, Value>>>,
    /// Forward writes to moto, then answer them with a 500 (the response is lost).
    fail_writes_after_apply: AtomicBool,
    inject: Mutex<Option<Injected>>,
    /// (operation, consistent) of every request.
    log: Mutex<Vec<(String, bool)>>,
}

#[derive(Clone)]
struct Proxy {
    endpoint: String,
    state: Arc<ProxyState>,
}

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request, \
    SignedHeaders=host, Signature=00";

async fn raw(upstream: &str, target: &str, body: &Value) -> Value {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<String>();
    let request = Request::post(format!("{upstream}/"))
        .header("x-amz-target", format!("DynamoDB_20120810.{target}"))
        .header("content-type", "application/x-amz-json-1.0")
        .header("authorization", AUTH)
        .body(body.to_string())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn dynamo_error(status: u16, error_type: &str) -> Response<Body> {
    let body = json!({
        "__type": format!("com.amazonaws.dynamodb.v20120810#{error_type}"),
        "message": format!("{error_type}: {LEAK}"),
        "Message": format!("{error_type}: {LEAK}"),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-errortype", error_type)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn is_write(target: &str) -> bool {
    matches!(
        target,
        "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems"
    )
}

async fn proxy_handle(State(p): State<Arc<ProxyState>>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let consistent = json["ConsistentRead"].as_bool() == Some(true);
    p.log.lock().unwrap().push((target.clone(), consistent));
    let injected = p.inject.lock().unwrap().clone();
    if let Some(i) = injected {
        if i.target.is_none_or(|t| t == target) && i.consistent.is_none_or(|c| c == consistent) {
            return dynamo_error(i.status, i.error_type);
        }
    }
    if target == "GetItem" && !consistent {
        let frozen = p.frozen.lock().unwrap();
        if let Some(table) = json["TableName"].as_str().and_then(|t| frozen.get(t)) {
            let key = json["Key"]["pk"].to_string();
            let body = match table.get(&key) {
                Some(item) => json!({ "Item": item }),
                None => json!({}),
            };
            return Response::builder()
                .header("content-type", "application/x-amz-json-1.0")
                .body(Body::from(body.to_string()))
                .unwrap();
        }
    }
    // Forward to moto.
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<String>();
    let mut forward = Request::builder().method(parts.method.clone()).uri(format!(
        "{}{}",
        p.upstream,
        parts.uri.path_and_query().map_or("/", |x| x.as_str())
    ));
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    let forward = forward
        .body(String::from_utf8(bytes.to_vec()).unwrap())
        .unwrap();
    let response = client.request(forward).await.unwrap();
    if is_write(&target) && p.fail_writes_after_apply.load(Ordering::SeqCst) {
        // Applied (or refused) at moto; the answer is lost.
        return dynamo_error(500, "InternalServerError");
    }
    let (rparts, rbody) = response.into_parts();
    let rbytes = rbody.collect().await.unwrap().to_bytes();
    let mut out = Response::builder().status(rparts.status);
    for (name, value) in &rparts.headers {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out = out.header(name, value);
        }
    }
    out.body(Body::from(rbytes)).unwrap()
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            ..Default::default()
        });
        let app = Router::new()
            .fallback(proxy_handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy {
            endpoint: format!("http://{addr}"),
            state,
        }
    }

    /// Eventually consistent GetItems of `table` see it as it is now, until the next freeze.
    async fn freeze(&self, table: &str) {
        let scan = raw(
            &self.state.upstream,
            "Scan",
            &json!({ "TableName": table, "ConsistentRead": true }),
        )
        .await;
        let mut items = HashMap::new();
        for item in scan["Items"].as_array().cloned().unwrap_or_default() {
            items.insert(item["pk"].to_string(), item);
        }
        self.state
            .frozen
            .lock()
            .unwrap()
            .insert(table.to_owned(), items);
    }

    fn thaw(&self) {
        self.state.frozen.lock().unwrap().clear();
    }

    fn inject(&self, injected: Option<Injected>) {
        *self.state.inject.lock().unwrap() = injected;
    }
}

/// The item `id` of `table` as moto holds it now (a strong read, straight to moto).
async fn strong_item(upstream: &str, table: &str, id: &str) -> Option<Value> {
    let out = raw(
        upstream,
        "GetItem",
        &json!({ "TableName": table, "Key": { "pk": { "S": id } }, "ConsistentRead": true }),
    )
    .await;
    out.get("Item").cloned()
}

fn sdk(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "adversary"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

static TABLES: AtomicU64 = AtomicU64::new(0);

async fn new_table(upstream: &str, name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let table = format!(
        "adv_{name}_{nanos}_{}",
        TABLES.fetch_add(1, Ordering::Relaxed)
    );
    sdk(upstream)
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    table
}

// ------------------------------------------------------------------------------------------
// An app instance: the README's service, plus a delete and a whoami.
// ------------------------------------------------------------------------------------------

type Posts = ReadYourWrites<DynamoService, DynamoAdapter>;

#[derive(Clone)]
struct AppState {
    posts: Posts,
    table: Arc<str>,
}

async fn put_post(
    State(s): State<AppState>,
    session: CurrentSession,
    Path(id): Path<String>,
    body: String,
) -> Result<(VisibilityHeader, Json<Value>), RywError<DynamoError>> {
    let put = PutItemInput::builder()
        .table_name(&*s.table)
        .item("pk", S(id))
        .item("body", S(body));
    let written = s
        .posts
        .clone()
        .oneshot(session.request(DynamoRequest::from(put)))
        .await?;
    let write_id = written.write_id().map(|w| w.to_string());
    Ok((
        VisibilityHeader(written.visibility().clone()),
        Json(json!({ "write_id": write_id })),
    ))
}

/// `PUT /create/{id}`: create only (the caller's own condition, `attribute_not_exists(pk)`).
async fn create_post(
    State(s): State<AppState>,
    session: CurrentSession,
    Path(id): Path<String>,
    body: String,
) -> Result<VisibilityHeader, RywError<DynamoError>> {
    let put = PutItemInput::builder()
        .table_name(&*s.table)
        .item("pk", S(id))
        .item("body", S(body))
        .condition_expression("attribute_not_exists(pk)");
    let written = s
        .posts
        .clone()
        .oneshot(session.request(DynamoRequest::from(put)))
        .await?;
    Ok(VisibilityHeader(written.visibility().clone()))
}

async fn get_post(
    State(s): State<AppState>,
    session: CurrentSession,
    Path(id): Path<String>,
) -> Result<(VisibilityHeader, Json<Value>), RywError<DynamoError>> {
    let get = GetItemInput::builder()
        .table_name(&*s.table)
        .key("pk", S(id));
    let read = s
        .posts
        .clone()
        .oneshot(session.request(DynamoRequest::from(get)))
        .await?;
    let body = read
        .get_ref()
        .item()
        .and_then(|item| item.get("body")?.as_s().ok())
        .cloned();
    Ok((
        VisibilityHeader(read.visibility().clone()),
        Json(json!({ "body": body })),
    ))
}

async fn delete_post(
    State(s): State<AppState>,
    session: CurrentSession,
    Path(id): Path<String>,
) -> Result<VisibilityHeader, RywError<DynamoError>> {
    let delete = DeleteItemInput::builder()
        .table_name(&*s.table)
        .key("pk", S(id));
    let deleted = s
        .posts
        .clone()
        .oneshot(session.request(DynamoRequest::from(delete)))
        .await?;
    Ok(VisibilityHeader(deleted.visibility().clone()))
}

async fn whoami(session: CurrentSession, status: Option<Extension<TokenStatus>>) -> Json<Value> {
    let status = status.map(|Extension(s)| format!("{s:?}"));
    let state = session.snapshot();
    Json(json!({
        "id": session.id().to_string(),
        "status": status,
        "write_seq": state.write_seq(),
    }))
}

fn authority() -> Arc<TokenAuthority> {
    Arc::new(TokenAuthority::new(KeyRing::new(
        SigningKey::new(1, SECRET).unwrap(),
    )))
}

fn routes(endpoint: &str, table: &str) -> Router<()> {
    let adapter = DynamoAdapter::new().table(TableSchema::new(table, "pk"));
    let posts: Posts = ReadYourWritesLayer::new(adapter).layer(DynamoService::new(sdk(endpoint)));
    Router::new()
        .route(
            "/posts/{id}",
            get(get_post).put(put_post).delete(delete_post),
        )
        .route("/whoami", get(whoami))
        .route("/create/{id}", axum::routing::put(create_post))
        .with_state(AppState {
            posts,
            table: table.into(),
        })
}

/// An instance: its own ryw layer, SDK client and `ServerSessionLayer`; an `x-user` header is the
/// authenticated principal (a stand-in for an authentication layer outside the session layer).
fn instance_with(endpoint: &str, table: &str, session: ServerSessionLayer) -> Router {
    routes(endpoint, table)
        .layer(session)
        .layer(tower::util::MapRequestLayer::new(
            |mut request: Request<Body>| {
                if let Some(user) = request.headers().get("x-user").cloned() {
                    request
                        .extensions_mut()
                        .insert(Principal::new(user.as_bytes()));
                }
                request
            },
        ))
}

fn instance(endpoint: &str, table: &str) -> Router {
    instance_with(endpoint, table, ServerSessionLayer::new(authority()))
}

// ------------------------------------------------------------------------------------------
// A client.
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn token(&self) -> String {
        self.headers
            .get(DEFAULT_HEADER)
            .unwrap_or_else(|| panic!("no token on {self:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    }
    fn visibility(&self) -> String {
        self.headers
            .get(VISIBILITY_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
    fn guaranteed(&self) -> bool {
        self.visibility().starts_with("guaranteed")
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn post(&self) -> Option<String> {
        self.json()["body"].as_str().map(str::to_owned)
    }
}

async fn send(app: &Router, request: Request<Body>) -> Resp {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn call(app: &Router, method: &str, path: &str, tokens: &[&str], body: &str) -> Resp {
    let mut request = Request::builder().method(method).uri(path);
    if !tokens.is_empty() {
        request = request.header(DEFAULT_HEADER, tokens.join(", "));
    }
    send(app, request.body(Body::from(body.to_owned())).unwrap()).await
}

/// `request` sent through `client` (the documented client half) to `app`.
async fn via(client: &ClientSessionLayer, app: &Router, request: Request<Body>) -> Response<Body> {
    let mut svc = client.layer(app.clone());
    ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap()
}

/// No 5xx, a JSON body `{"error": "token_...", "message": ..}` and the rejection header.
fn assert_typed_rejection(r: &Resp, what: &str) {
    assert!(
        r.status.is_client_error(),
        "{what}: expected a 4xx, got {} {}",
        r.status,
        r.body
    );
    let v = r.json();
    let code = v["error"].as_str().unwrap_or_default();
    assert!(
        code.starts_with("token_") && v["message"].is_string(),
        "{what}: body {}",
        r.body
    );
    assert_eq!(
        r.headers.get(REJECTED_HEADER).map(|v| v.to_str().unwrap()),
        Some(code),
        "{what}"
    );
}

// ==========================================================================================
// 1. Two instances behind a lagging replica.
// ==========================================================================================

/// Write through A, read through B (whose replica does not have the write yet) with the token:
/// the read is Guaranteed and shows the write. HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_is_read_through_b_under_lag() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "ab").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    proxy.freeze(&table).await; // the replica is empty
    let w = call(&a, "PUT", "/posts/1", &[], "hello").await;
    assert_eq!(w.status, 200, "{w:?}");
    assert_eq!(w.visibility(), "guaranteed; path=write");
    let r = call(&b, "GET", "/posts/1", &[&w.token()], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.guaranteed(), "{r:?}");
    assert_eq!(r.post().as_deref(), Some("hello"), "{r:?}");
    // A stranger reading through B sees the stale replica, and is told only `unfenced`.
    let s = call(&b, "GET", "/posts/1", &[], "").await;
    assert_eq!(s.post(), None);
    assert_eq!(s.visibility(), "guaranteed; path=unfenced");
}

/// Concurrent requests of one token, on A and B, each writing (sometimes the same item), then
/// merged per the docs (the client sends every token back, comma-separated): no later Guaranteed
/// read misses either write, and no two writes share a WriteId (checked in the responses and in
/// the items' `ryw_write_id_*` attributes). HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_token_on_two_instances_keep_both_fences() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "conc").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    let first = call(&a, "PUT", "/posts/seed", &[], "seed").await;
    let mut token = first.token();
    let mut write_ids = HashSet::new();
    write_ids.insert(first.json()["write_id"].as_str().unwrap().to_owned());
    let mut expected: HashMap<String, String> = HashMap::new();
    expected.insert("seed".into(), "seed".into());
    for round in 0..8 {
        proxy.freeze(&table).await; // the replica has everything before this round
        let (ka, kb) = if round % 3 == 2 {
            ("same".to_owned(), "same".to_owned())
        } else {
            (format!("a{round}"), format!("b{round}"))
        };
        let (va, vb) = (format!("A{round}"), format!("B{round}"));
        let (pa, pb) = (format!("/posts/{ka}"), format!("/posts/{kb}"));
        let t = [token.as_str()];
        let (ra, rb) = tokio::join!(call(&a, "PUT", &pa, &t, &va), call(&b, "PUT", &pb, &t, &vb),);
        for r in [&ra, &rb] {
            if ka == kb && r.status == 409 {
                // Two concurrent writes of one item: the one with the earlier clock yields
                // (LastWriterWins), as documented.
                assert_eq!(r.json()["error"], "write_conflict");
                continue;
            }
            assert_eq!(r.status, 200, "round {round}: {r:?}");
            let id = r.json()["write_id"].as_str().unwrap().to_owned();
            assert!(
                write_ids.insert(id.clone()),
                "round {round}: write id {id} twice"
            );
        }
        if ka == kb {
            // Last writer wins: whichever moto holds now.
            let item = strong_item(&upstream, &table, &ka).await.unwrap();
            expected.insert(ka.clone(), item["body"]["S"].as_str().unwrap().to_owned());
        } else {
            expected.insert(ka.clone(), va);
            expected.insert(kb.clone(), vb);
        }
        // The client merges: both tokens in one request, to the instance of the round.
        let via = if round % 2 == 0 { &b } else { &a };
        let merged = call(via, "GET", "/whoami", &[&ra.token(), &rb.token()], "").await;
        assert_eq!(merged.status, 200, "{merged:?}");
        token = merged.token();
        // Every item the session wrote, read through both instances under lag.
        for (id, body) in &expected {
            for (name, app) in [("A", &a), ("B", &b)] {
                let r = call(app, "GET", &format!("/posts/{id}"), &[&token], "").await;
                assert_eq!(r.status, 200, "{r:?}");
                if r.guaranteed() {
                    assert_eq!(
                        r.post().as_deref(),
                        Some(body.as_str()),
                        "round {round}: Guaranteed read of {id} through {name} misses the session's write ({})",
                        r.visibility()
                    );
                }
                assert!(r.guaranteed(), "round {round}: {id} via {name}: {r:?}");
            }
        }
    }
    // The store's own record of write ids: every item's recent ids, none shared by two items'
    // different writes (an id names one write).
    let scan = raw(
        &upstream,
        "Scan",
        &json!({ "TableName": table, "ConsistentRead": true }),
    )
    .await;
    let mut seen = HashMap::new();
    for item in scan["Items"].as_array().unwrap() {
        for i in 0..4 {
            if let Some(id) = item[format!("ryw_write_id_{i}")]["S"].as_str() {
                let pk = item["pk"]["S"].as_str().unwrap().to_owned();
                if let Some(other) = seen.insert(id.to_owned(), pk.clone()) {
                    panic!("write id {id} on {pk} and {other}");
                }
            }
        }
    }
}

/// docs/http.md "Concurrent requests": "Concurrent requests merge pointwise, never 'last
/// completed wins': the client layer keeps every token not covered by another and sends them all".
///
/// Five concurrent requests of one token, through `ClientSessionLayer` (the documented client
/// half), served by five instances (a load balancer spreading one client's burst), each writing
/// its own item. Each answer misses the four others' writes, so no answer covers another: the
/// client layer must keep all five (it keeps up to `MAX_TOKENS_PER_REQUEST`) and every later read
/// of the five items, through an instance that served none of them, reflects its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_five_concurrent_writes_keeps_every_fence() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "burst").await;
    let proxy = Proxy::start(&upstream).await;
    let instances: Vec<Router> = (0..6).map(|_| instance(&proxy.endpoint, &table)).collect();
    let client = ClientSessionLayer::new();
    // The session's first request.
    let first = via(
        &client,
        &instances[0],
        Request::get("/whoami").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(first.status(), 200);
    proxy.freeze(&table).await; // the replica never sees the burst
    let burst = (0..5).map(|i| {
        let (client, app) = (client.clone(), instances[i].clone());
        async move {
            let request: Request<Body> = Request::put(format!("/posts/w{i}"))
                .body(Body::from(format!("write {i}")))
                .unwrap();
            let response = via(&client, &app, request).await;
            assert_eq!(response.status(), 200);
        }
    });
    // All five in flight at once (the client sends the same token to each).
    let mut handles = Vec::new();
    for f in burst {
        handles.push(tokio::spawn(f));
    }
    for h in handles {
        h.await.unwrap();
    }
    // The next request merges what the client holds; then every write is read through the sixth
    // instance, which served none of them.
    let mut missed = Vec::new();
    for i in 0..5 {
        let request: Request<Body> = Request::get(format!("/posts/w{i}"))
            .body(Body::empty())
            .unwrap();
        let response = via(&client, &instances[5], request).await;
        let (parts, body) = response.into_parts();
        let r = Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&axum::body::to_bytes(body, usize::MAX).await.unwrap())
                .into_owned(),
        };
        assert_eq!(r.status, 200, "{r:?}");
        if r.guaranteed() && r.post().as_deref() != Some(format!("write {i}").as_str()) {
            missed.push(format!("w{i}: {} body {:?}", r.visibility(), r.post()));
        }
    }
    assert!(
        missed.is_empty(),
        "Guaranteed reads missing the session's own writes: {missed:?}"
    );
}

/// An old token at another instance: the session wrote v1 then v2 through A; the client presents
/// the token from after v1 (it lost the later response, or kept a copy). A, which saw v2, merges
/// the old token with it and holds v2. B never saw the newer token: the read is judged against the
/// session the token carries (README, status contract), so a Guaranteed read shows at least v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_token_at_another_instance_is_guaranteed_relative_to_that_token() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "old").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    let v1 = call(&a, "PUT", "/posts/p", &[], "v1").await;
    proxy.freeze(&table).await; // the replica has v1
    let old = v1.token();
    let v2 = call(&a, "PUT", "/posts/p", &[&old], "v2").await;
    assert_eq!(v2.status, 200);
    // At A, the old token is merged with what A saw: v2.
    let at_a = call(&a, "GET", "/posts/p", &[&old], "").await;
    assert!(
        !at_a.guaranteed() || at_a.post().as_deref() == Some("v2"),
        "{at_a:?}"
    );
    // At B, the guarantee of the token presented: at least v1.
    let at_b = call(&b, "GET", "/posts/p", &[&old], "").await;
    assert_eq!(at_b.status, 200);
    assert!(
        !at_b.guaranteed() || matches!(at_b.post().as_deref(), Some("v1" | "v2")),
        "B answers {:?} with `{}`",
        at_b.post(),
        at_b.visibility()
    );
}

/// A write whose answer is lost on every attempt: the proxy applies it at moto and answers 500.
/// The client gets `500 write_outcome_unknown`: "the write may or may not have applied; read the
/// data before writing again". It does what it is told, with the token of that response, through
/// B (replica lagging). The read
/// must not be `Guaranteed` without the post, which is in the table: the session requires what the
/// write gives the item if it applied, so the read goes strong and shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_unknown_outcome_is_not_hidden_by_a_guaranteed_read() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "ambig").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    let start = call(&a, "GET", "/whoami", &[], "").await;
    proxy.freeze(&table).await; // empty replica
    proxy
        .state
        .fail_writes_after_apply
        .store(true, Ordering::SeqCst);
    let w = call(&a, "PUT", "/posts/x", &[&start.token()], "mine").await;
    proxy
        .state
        .fail_writes_after_apply
        .store(false, Ordering::SeqCst);
    assert_eq!(w.status, 500, "{w:?}");
    assert_eq!(w.json()["error"], "write_outcome_unknown", "{w:?}");
    assert!(
        !w.body.contains(LEAK),
        "the store's message leaked: {}",
        w.body
    );
    let in_table = strong_item(&upstream, &table, "x").await;
    assert!(in_table.is_some(), "the write did apply at the store");
    let r = call(&b, "GET", "/posts/x", &[&w.token()], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.guaranteed() || r.post().as_deref() == Some("mine"),
        "the session's write applied, yet the read says `{}` with body {:?}",
        r.visibility(),
        r.post()
    );
}

/// Monotonic reads across instances: another session writes v1 then v2; our session reads v2
/// through A (fresh replica), then through B whose replica still has v1: never Guaranteed v1.
/// HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monotonic_reads_across_instances_under_lag() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "mono").await;
    let (pa, pb) = (Proxy::start(&upstream).await, Proxy::start(&upstream).await);
    let (a, b) = (
        instance(&pa.endpoint, &table),
        instance(&pb.endpoint, &table),
    );
    let w1 = call(&a, "PUT", "/posts/m", &[], "v1").await;
    pb.freeze(&table).await; // B's replica: v1
    let w2 = call(&a, "PUT", "/posts/m", &[&w1.token()], "v2").await;
    assert_eq!(w2.status, 200);
    // Our session (a new one) reads v2 through A.
    let r1 = call(&a, "GET", "/posts/m", &[], "").await;
    assert_eq!(r1.post().as_deref(), Some("v2"));
    let r2 = call(&b, "GET", "/posts/m", &[&r1.token()], "").await;
    assert_eq!(r2.status, 200, "{r2:?}");
    assert!(
        !r2.guaranteed() || r2.post().as_deref() == Some("v2"),
        "read went backwards: {r2:?}"
    );
    // Writes-follow-reads: a write after reading v2 lands after it (version past v2's).
    let w3 = call(&b, "PUT", "/posts/m", &[&r2.token()], "v3").await;
    assert_eq!(w3.status, 200, "{w3:?}");
    let item = strong_item(&upstream, &table, "m").await.unwrap();
    assert_eq!(item["body"]["S"], "v3");
    pa.thaw();
    pb.thaw();
}

/// A delete through A, read through B whose replica still has the item: never Guaranteed with
/// the deleted item; then a re-create through B, read through A whose replica has the original:
/// never Guaranteed with the original. HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_and_a_recreate_are_held_across_instances_under_lag() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "del").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    let w = call(&a, "PUT", "/posts/d", &[], "original").await;
    proxy.freeze(&table).await; // the replica has the original
    let d = call(&a, "DELETE", "/posts/d", &[&w.token()], "").await;
    assert_eq!(d.status, 200, "{d:?}");
    let r = call(&b, "GET", "/posts/d", &[&d.token()], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.guaranteed() || r.post().is_none(),
        "deleted, yet Guaranteed: {r:?}"
    );
    let c = call(&b, "PUT", "/posts/d", &[&r.token()], "again").await;
    assert_eq!(c.status, 200, "{c:?}");
    let r = call(&a, "GET", "/posts/d", &[&c.token()], "").await;
    assert!(
        !r.guaranteed() || r.post().as_deref() == Some("again"),
        "re-created, yet Guaranteed: {r:?}"
    );
}

/// Tokens of two different (anonymous) sessions in one request: the docs say their state moves
/// to a new session id and the fences are kept. Both writes are then seen through a third
/// instance under lag. HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_two_sessions_cycle_and_keep_both_fences() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "mix").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b, c) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    proxy.freeze(&table).await;
    let s1 = call(&a, "PUT", "/posts/one", &[], "1").await;
    let s2 = call(&b, "PUT", "/posts/two", &[], "2").await;
    let both = call(&c, "GET", "/whoami", &[&s1.token(), &s2.token()], "").await;
    assert_eq!(both.status, 200, "{both:?}");
    assert_eq!(both.json()["status"], "Cycled");
    for (id, body) in [("one", "1"), ("two", "2")] {
        let r = call(&c, "GET", &format!("/posts/{id}"), &[&both.token()], "").await;
        assert!(r.guaranteed() && r.post().as_deref() == Some(body), "{r:?}");
    }
    // A duplicate of one token (four times) continues it.
    let t = s1.token();
    let dup = call(&c, "GET", "/whoami", &[&t, &t, &t, &t], "").await;
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "Continued");
}

/// A session that wrote more items than its token holds exactly (40 > the 32-scope cap), all
/// through A, then reads every one through B under lag: the coarsened ones are fenced by the
/// horizon (escalated), so every Guaranteed read shows the write. HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_token_cap_keeps_every_write_across_instances() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "cap").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    proxy.freeze(&table).await;
    let mut token = call(&a, "GET", "/whoami", &[], "").await.token();
    for i in 0..40 {
        let w = call(
            &a,
            "PUT",
            &format!("/posts/k{i}"),
            &[&token],
            &format!("v{i}"),
        )
        .await;
        assert_eq!(w.status, 200, "{w:?}");
        token = w.token();
    }
    assert!(token.len() <= 1024, "token of {} chars", token.len());
    let mut missed = Vec::new();
    for i in 0..40 {
        let r = call(&b, "GET", &format!("/posts/k{i}"), &[&token], "").await;
        assert_eq!(r.status, 200, "{r:?}");
        if !r.guaranteed() || r.post() != Some(format!("v{i}")) {
            missed.push(format!("k{i}: {} {:?}", r.visibility(), r.post()));
        }
        token = r.token();
    }
    assert!(missed.is_empty(), "{missed:?}");
}

/// The replica lags and every strong read fails (the proxy answers ConsistentRead GetItems with
/// a 500): the read cannot be fenced, so it must not say `guaranteed` with the stale item; it is
/// `pending` (with the stale data) or an error. HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_escalation_is_never_guaranteed() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "esc").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    let w1 = call(&a, "PUT", "/posts/f", &[], "v1").await;
    proxy.freeze(&table).await;
    let w2 = call(&a, "PUT", "/posts/f", &[&w1.token()], "v2").await;
    proxy.inject(Some(Injected {
        target: Some("GetItem"),
        status: 500,
        error_type: "InternalServerError",
        consistent: Some(true),
    }));
    let r = call(&b, "GET", "/posts/f", &[&w2.token()], "").await;
    proxy.inject(None);
    assert!(!r.body.contains(LEAK), "{r:?}");
    assert!(
        !r.guaranteed() || r.post().as_deref() == Some("v2"),
        "stale and Guaranteed: {r:?}"
    );
    if r.status == 200 {
        assert!(r.visibility().starts_with("pending"), "{r:?}");
        assert_eq!(r.post().as_deref(), Some("v1"));
    } else {
        assert!(r.json()["error"].is_string(), "{r:?}");
    }
    // The session learnt nothing false: with the store healthy again, v2 is read.
    let r2 = call(
        &b,
        "GET",
        "/posts/f",
        &[&r.headers
            .get(DEFAULT_HEADER)
            .map_or(w2.token(), |t| t.to_str().unwrap().to_owned())],
        "",
    )
    .await;
    assert!(
        r2.guaranteed() && r2.post().as_deref() == Some("v2"),
        "{r2:?}"
    );
}

// ==========================================================================================
// 2. RywError: store errors.
// ==========================================================================================

/// Store errors of every kind, injected by the proxy with a recognisable message: the body never
/// carries it, the status and code follow the table of `RywError`'s docs, the body is JSON, and a
/// retryable one says `Retry-After`. HELD unless an assertion below says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_are_typed_and_never_leak_the_stores_message() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "errs").await;
    let proxy = Proxy::start(&upstream).await;
    let a = instance(&proxy.endpoint, &table);
    let start = call(&a, "PUT", "/posts/e", &[], "x").await;
    let token = start.token();
    let cases: &[(&str, &str, u16, &str, u16, &str)] = &[
        // (method, op, injected status, error type, expected status, expected code)
        (
            "GET",
            "GetItem",
            500,
            "InternalServerError",
            503,
            "store_unavailable",
        ),
        (
            "GET",
            "GetItem",
            400,
            "ThrottlingException",
            503,
            "store_unavailable",
        ),
        (
            "GET",
            "GetItem",
            400,
            "ValidationException",
            500,
            "store_failed",
        ),
        (
            "GET",
            "GetItem",
            400,
            "ResourceNotFoundException",
            500,
            "store_failed",
        ),
        (
            "GET",
            "GetItem",
            400,
            "AccessDeniedException",
            500,
            "store_failed",
        ),
        (
            "PUT",
            "PutItem",
            400,
            "ProvisionedThroughputExceededException",
            503,
            "store_unavailable",
        ),
        (
            "PUT",
            "PutItem",
            400,
            "ValidationException",
            500,
            "store_failed",
        ),
        (
            "PUT",
            "PutItem",
            500,
            "InternalServerError",
            500,
            "write_outcome_unknown",
        ),
        (
            "PUT",
            "PutItem",
            503,
            "ServiceUnavailable",
            500,
            "write_outcome_unknown",
        ),
        (
            "DELETE",
            "DeleteItem",
            400,
            "ValidationException",
            500,
            "store_failed",
        ),
    ];
    let mut problems = Vec::new();
    for &(method, op, status, error_type, want_status, want_code) in cases {
        proxy.inject(Some(Injected {
            target: Some(op),
            status,
            error_type,
            consistent: None,
        }));
        let r = call(&a, method, "/posts/e", &[&token], "y").await;
        proxy.inject(None);
        let what = format!("{op} {status} {error_type}");
        if r.body.contains(LEAK)
            || r.headers
                .iter()
                .any(|(_, v)| v.to_str().is_ok_and(|v| v.contains(LEAK)))
        {
            problems.push(format!("{what}: leaked: {r:?}"));
        }
        let v = r.json();
        if v["error"].as_str() != Some(want_code) || r.status.as_u16() != want_status {
            problems.push(format!(
                "{what}: got {} {}, expected {want_status} {want_code}",
                r.status, r.body
            ));
        }
        if r.status == 503 && r.headers.get("retry-after").is_none() {
            problems.push(format!("{what}: 503 without Retry-After"));
        }
        if r.headers.get("content-type").map(|v| v.as_bytes()) != Some(b"application/json") {
            problems.push(format!(
                "{what}: content type {:?}",
                r.headers.get("content-type")
            ));
        }
        // The session still travels on an error (a token comes back, and it verifies).
        match r.headers.get(DEFAULT_HEADER) {
            Some(t) => {
                if authority().verify(t.to_str().unwrap(), None).is_err() {
                    problems.push(format!("{what}: the answer's token does not verify"));
                }
            }
            None => problems.push(format!("{what}: no token on the error response")),
        }
    }
    // After the errors, the session's first write is still read back through its token.
    let r = call(&a, "GET", "/posts/e", &[&token], "").await;
    assert!(r.guaranteed(), "{r:?}");
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Store errors the client caused: creating a post that exists (the handler's own condition,
/// `attribute_not_exists(pk)`, fails) and a body too large for an item (moto answers
/// `ValidationException`). `RywError` answers a permanent store error `500 store_failed` (its
/// table; a handler maps the errors it expects before `?`), and its body never carries the
/// store's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caused_store_errors_are_a_500_without_the_stores_message() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "cond").await;
    let proxy = Proxy::start(&upstream).await;
    let a = instance(&proxy.endpoint, &table);
    let first = call(&a, "PUT", "/create/c", &[], "first").await;
    assert_eq!(first.status, 200, "{first:?}");
    let again = call(&a, "PUT", "/create/c", &[&first.token()], "second").await;
    let big = call(
        &a,
        "PUT",
        "/posts/big",
        &[&first.token()],
        &"x".repeat(500 * 1024),
    )
    .await;
    let mut problems = Vec::new();
    for (what, r) in [
        ("create of an existing post", &again),
        ("a 500 KB item", &big),
    ] {
        let body = r.body.to_lowercase();
        if body.contains("conditional") || body.contains("validation") || body.contains("size") {
            problems.push(format!("{what}: the store's message leaked: {}", r.body));
        }
        if r.status != StatusCode::INTERNAL_SERVER_ERROR || !r.body.contains("store_failed") {
            problems.push(format!("{what}: {} {}", r.status, r.body));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The same lost answer for a delete: the session deletes its post, the proxy applies the delete
/// and answers 500 on every attempt (`500 write_outcome_unknown`); the client reads through B,
/// whose replica still has the post. The read must not be `Guaranteed` with the post the session
/// may have deleted: it goes strong and shows the post gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_of_unknown_outcome_is_not_hidden_by_a_guaranteed_read() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "ambdel").await;
    let proxy = Proxy::start(&upstream).await;
    let (a, b) = (
        instance(&proxy.endpoint, &table),
        instance(&proxy.endpoint, &table),
    );
    let w = call(&a, "PUT", "/posts/x", &[], "mine").await;
    proxy.freeze(&table).await; // the replica has the post
    proxy
        .state
        .fail_writes_after_apply
        .store(true, Ordering::SeqCst);
    let d = call(&a, "DELETE", "/posts/x", &[&w.token()], "").await;
    proxy
        .state
        .fail_writes_after_apply
        .store(false, Ordering::SeqCst);
    assert_eq!(d.status, 500, "{d:?}");
    assert_eq!(d.json()["error"], "write_outcome_unknown", "{d:?}");
    assert!(
        strong_item(&upstream, &table, "x").await.is_none(),
        "the delete applied"
    );
    let r = call(&b, "GET", "/posts/x", &[&d.token()], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.guaranteed() || r.post().is_none(),
        "the session's delete applied, yet the read says `{}` with body {:?}",
        r.visibility(),
        r.post()
    );
}

/// A table this instance's adapter was never told about: the read cannot be fenced. The response
/// must not claim `guaranteed` (it is `unscoped`, or a `500 read_unscoped` by `RywError`). HELD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_table_is_never_guaranteed() {
    let Some(upstream) = moto() else { return };
    let table = new_table(&upstream, "undeclared").await;
    let proxy = Proxy::start(&upstream).await;
    // The adapter knows another table's schema only.
    let adapter = DynamoAdapter::new().table(TableSchema::new("some_other_table", "pk"));
    let posts: Posts =
        ReadYourWritesLayer::new(adapter).layer(DynamoService::new(sdk(&proxy.endpoint)));
    let app = Router::new()
        .route("/posts/{id}", get(get_post).put(put_post))
        .with_state(AppState {
            posts,
            table: table.as_str().into(),
        })
        .layer(ServerSessionLayer::new(authority()));
    let w = call(&app, "PUT", "/posts/u", &[], "u").await;
    proxy.freeze(&table).await;
    let r = call(&app, "GET", "/posts/u", &[&w.token()], "").await;
    assert!(
        !r.guaranteed(),
        "an unscoped read claims {}: {r:?}",
        r.visibility()
    );
    assert!(!r.body.contains(LEAK));
}

// ==========================================================================================
// 3. Hostile tokens (no store needed: the handlers touch no table).
// ==========================================================================================

fn offline() -> Router {
    instance("http://127.0.0.1:9", "unused")
}

async fn whoami_with(app: &Router, value: HeaderValue) -> Resp {
    let request = Request::get("/whoami")
        .header(DEFAULT_HEADER, value)
        .body(Body::empty())
        .unwrap();
    send(app, request).await
}

/// Every kind of bad token: a typed 4xx with a JSON code, the rejection header, the handler
/// never run, no panic, no 5xx. HELD unless an assertion below says otherwise.
#[tokio::test]
async fn bad_tokens_get_typed_rejections() {
    let app = offline();
    let ours = authority();
    let good = call(&app, "GET", "/whoami", &[], "").await.token();
    let now = ryw::signing::now_secs();
    let state = Session::new().snapshot();
    let other_key = TokenAuthority::new(SigningKey::new(1, [8u8; 32]).unwrap())
        .issue(&state, None)
        .unwrap();
    let other_id = TokenAuthority::new(SigningKey::new(9, [8u8; 32]).unwrap())
        .issue(&state, None)
        .unwrap();
    let expired = ours.issue_at(&state, None, now - 30 * 86_400).unwrap();
    let future = ours.issue_at(&state, None, now + 86_400).unwrap();
    let unsigned = Session::new().token().encode().unwrap();
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let truncated = good[..good.len() - 5].to_owned();
    let cases: Vec<(&str, HeaderValue, u16, &str)> = vec![
        ("garbage", HeaderValue::from_static("hello"), 400, ""),
        (
            "not base64",
            HeaderValue::from_static("!!!!$$$$"),
            400,
            "token_not_base64",
        ),
        (
            "oversize",
            HeaderValue::from_str(&"A".repeat(5_000)).unwrap(),
            400,
            "token_oversized",
        ),
        (
            "huge",
            HeaderValue::from_str(&"A".repeat(200_000)).unwrap(),
            400,
            "token_oversized",
        ),
        ("tampered", HeaderValue::from_str(&tampered).unwrap(), 0, ""),
        (
            "truncated",
            HeaderValue::from_str(&truncated).unwrap(),
            0,
            "",
        ),
        (
            "another key, same id",
            HeaderValue::from_str(&other_key).unwrap(),
            401,
            "token_bad_signature",
        ),
        (
            "unknown key id",
            HeaderValue::from_str(&other_id).unwrap(),
            401,
            "token_unknown_key",
        ),
        (
            "expired",
            HeaderValue::from_str(&expired).unwrap(),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            HeaderValue::from_str(&future).unwrap(),
            401,
            "token_not_yet_valid",
        ),
        (
            "unsigned",
            HeaderValue::from_str(&unsigned).unwrap(),
            401,
            "token_unsigned",
        ),
        (
            "invalid utf-8",
            HeaderValue::from_bytes(b"\xff\xfe\xfd").unwrap(),
            400,
            "token_not_text",
        ),
        (
            "obs-text in a token",
            HeaderValue::from_bytes(format!("{good}\u{e9}").as_bytes()).unwrap(),
            400,
            "token_not_text",
        ),
        (
            "one token more than a request carries",
            HeaderValue::from_str(&[good.as_str(); MAX_TOKENS_PER_REQUEST + 1].join(",")).unwrap(),
            400,
            "token_too_many",
        ),
        (
            "three hundred tokens",
            HeaderValue::from_str(&[good.as_str(); 300].join(",")).unwrap(),
            400,
            "token_too_many",
        ),
        (
            "a good and a forged",
            HeaderValue::from_str(&format!("{good},{other_key}")).unwrap(),
            401,
            "token_bad_signature",
        ),
        (
            "a good and garbage",
            HeaderValue::from_str(&format!("{good},zzz")).unwrap(),
            400,
            "",
        ),
        (
            "a good and an expired",
            HeaderValue::from_str(&format!("{good}, {expired}")).unwrap(),
            401,
            "token_expired",
        ),
        (
            "semicolons",
            HeaderValue::from_str(&format!("{good};{good}")).unwrap(),
            400,
            "",
        ),
        (
            "NUL-free control: tab inside",
            HeaderValue::from_str(&format!("{}\t{}", &good[..10], &good[10..])).unwrap(),
            0,
            "",
        ),
    ];
    let mut problems = Vec::new();
    for (what, value, status, code) in cases {
        let r = whoami_with(&app, value).await;
        if !r.status.is_client_error() {
            problems.push(format!("{what}: {} {}", r.status, r.body));
            continue;
        }
        let v = r.json();
        let got = v["error"].as_str().unwrap_or_default();
        if !got.starts_with("token_") || r.headers.get(REJECTED_HEADER).is_none() {
            problems.push(format!("{what}: untyped: {r:?}"));
        }
        if status != 0 && r.status.as_u16() != status {
            problems.push(format!(
                "{what}: status {} ({got}), expected {status}",
                r.status
            ));
        }
        if !code.is_empty() && got != code {
            problems.push(format!("{what}: code {got}, expected {code}"));
        }
        if r.body.contains("\"id\"") {
            problems.push(format!("{what}: the handler ran"));
        }
    }
    // As many header lines (not comma-separated): too many as well.
    let mut request = Request::get("/whoami");
    for _ in 0..=MAX_TOKENS_PER_REQUEST {
        request = request.header(DEFAULT_HEADER, &good);
    }
    let r = send(&app, request.body(Body::empty()).unwrap()).await;
    assert_typed_rejection(&r, "one header line too many");
    // Revoked.
    let list = Arc::new(InMemoryRevocationList::new());
    let revoking = Arc::new(
        TokenAuthority::new(SigningKey::new(1, SECRET).unwrap()).revocation_list(list.clone()),
    );
    let app2 = instance_with(
        "http://127.0.0.1:9",
        "unused",
        ServerSessionLayer::new(revoking.clone()),
    );
    let t = call(&app2, "GET", "/whoami", &[], "").await.token();
    let id = revoking.verify(&t, None).unwrap().state().id();
    list.revoke_session(id);
    let r = call(&app2, "GET", "/whoami", &[&t], "").await;
    assert_typed_rejection(&r, "revoked");
    assert_eq!(r.json()["error"], "token_revoked");
    assert_eq!(r.status, 401);
    // Whitespace and empty entries are not tokens.
    for value in [
        format!("  {good}  "),
        format!(",,{good},,"),
        format!("\t{good}"),
        format!(" , {good} , "),
        format!("{good}{}", ",".repeat(10_000)),
    ] {
        let r = whoami_with(&app, HeaderValue::from_str(&value).unwrap()).await;
        if r.status != 200 || r.json()["status"] != "Continued" {
            problems.push(format!("{value:?}: {r:?}"));
        }
    }
    for value in ["", " ", ",", ", , ,", &",".repeat(100_000)] {
        let r = whoami_with(&app, HeaderValue::from_str(value).unwrap()).await;
        if r.status != 200 || r.json()["status"] != "New" {
            problems.push(format!("{:?}: {r:?}", &value[..value.len().min(10)]));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Thousands of random mutations of a good token (flips, truncations, insertions, duplications,
/// swaps): every answer is a 200 for the very same session (a mutation the codec maps to the
/// same bytes) or a typed 4xx; never a 5xx, a panic or another session. HELD.
#[tokio::test]
async fn mutated_tokens_never_panic_nor_open_another_session() {
    let app = offline();
    let first = call(&app, "GET", "/whoami", &[], "").await;
    let good = first.token();
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.~ ";
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut problems = Vec::new();
    for round in 0..3_000 {
        let mut t = good.clone().into_bytes();
        for _ in 0..(1 + next() % 3) {
            let at = (next() as usize) % t.len().max(1);
            match next() % 6 {
                0 => t[at] = alphabet[(next() as usize) % alphabet.len()],
                1 => t.truncate(at),
                2 => t.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                3 => {
                    let copy = t.clone();
                    t.extend_from_slice(&copy);
                }
                4 => {
                    let j = (next() as usize) % t.len().max(1);
                    if j < t.len() && at < t.len() {
                        t.swap(at, j);
                    }
                }
                _ => t[at] ^= 1 << (next() % 6),
            }
            if t.is_empty() {
                t.push(b'A');
            }
        }
        let Ok(value) = HeaderValue::from_bytes(&t) else {
            continue;
        };
        let r = whoami_with(&app, value).await;
        if r.status == 200 {
            let got = r.json()["id"].as_str().unwrap_or_default().to_owned();
            let status = r.json()["status"].as_str().unwrap_or_default().to_owned();
            // An empty or all-separator header is a new session; anything else must be ours.
            if got != id && status != "New" {
                problems.push(format!(
                    "round {round}: {:?} opened session {got} ({status})",
                    String::from_utf8_lossy(&t)
                ));
            }
        } else if !r.status.is_client_error() || !r.json()["error"].is_string() {
            problems.push(format!("round {round}: {} {}", r.status, r.body));
        }
    }
    assert!(
        problems.is_empty(),
        "{:#?}",
        &problems[..problems.len().min(20)]
    );
}

/// Header and cookie both present and disagreeing (cookie transport on): the docs say the cookie
/// is read only when the header is absent. A bad cookie next to a good header is ignored; a bad
/// header next to a good cookie is rejected (typed), and the good cookie is not cleared. HELD.
#[tokio::test]
async fn header_and_cookie_disagreeing() {
    let app = instance_with(
        "http://127.0.0.1:9",
        "unused",
        ServerSessionLayer::new(authority()).cookie("sid"),
    );
    let t1 = call(&app, "GET", "/whoami", &[], "").await;
    let t2 = call(&app, "GET", "/whoami", &[], "").await;
    let (id1, tok1, tok2) = (t1.json()["id"].clone(), t1.token(), t2.token());
    let r = send(
        &app,
        Request::get("/whoami")
            .header(DEFAULT_HEADER, &tok1)
            .header(COOKIE, format!("sid={tok2}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id1, "the header's session");
    let r = send(
        &app,
        Request::get("/whoami")
            .header(DEFAULT_HEADER, &tok1)
            .header(COOKIE, "sid=garbage!!")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(
        &app,
        Request::get("/whoami")
            .header(DEFAULT_HEADER, "garbage")
            .header(COOKIE, format!("sid={tok2}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_typed_rejection(&r, "bad header, good cookie");
    assert!(
        r.headers.get(SET_COOKIE).is_none(),
        "the good cookie was cleared: {r:?}"
    );
    // Two cookies of the name, the first bad: typed rejection, no panic.
    let r = send(
        &app,
        Request::get("/whoami")
            .header(COOKIE, format!("sid=garbage; sid={tok2}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(r.status == 200 || r.status.is_client_error(), "{r:?}");
    // A cookie header of invalid UTF-8 next to nothing else: a new session, no panic.
    let r = send(
        &app,
        Request::get("/whoami")
            .header(COOKIE, HeaderValue::from_bytes(b"sid=\xff\xfe").unwrap())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(r.status == 200 || r.status.is_client_error(), "{r:?}");
}

/// A token bound to alice, presented by bob or anonymously: `401 token_wrong_principal`. An
/// anonymous token presented by alice moves to a new id (fixation defence). HELD.
#[tokio::test]
async fn principals_cannot_borrow_each_others_sessions() {
    let app = offline();
    let alice = send(
        &app,
        Request::get("/whoami")
            .header("x-user", "alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let token = alice.token();
    for user in [Some("bob"), None, Some("alice ")] {
        let mut request = Request::get("/whoami").header(DEFAULT_HEADER, &token);
        if let Some(user) = user {
            request = request.header("x-user", user);
        }
        let r = send(&app, request.body(Body::empty()).unwrap()).await;
        assert_typed_rejection(&r, &format!("{user:?}"));
        assert_eq!(r.json()["error"], "token_wrong_principal", "{user:?}");
        assert_eq!(r.status, 401);
    }
    let anon = call(&app, "GET", "/whoami", &[], "").await;
    let r = send(
        &app,
        Request::get("/whoami")
            .header("x-user", "alice")
            .header(DEFAULT_HEADER, anon.token())
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "Cycled");
    assert_ne!(r.json()["id"], anon.json()["id"]);
    // alice's own token and the planted anonymous one together: cycled, never the planted id.
    let r = send(
        &app,
        Request::get("/whoami")
            .header("x-user", "alice")
            .header(DEFAULT_HEADER, format!("{token},{}", anon.token()))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.json()["id"], anon.json()["id"]);
}

/// `CurrentSession` without `ServerSessionLayer`: a 500 whose body says what is missing;
/// `Option<CurrentSession>` is `None`. HELD.
#[tokio::test]
async fn the_missing_layer_is_a_clear_500() {
    let app = Router::new().route("/whoami", get(whoami)).route(
        "/maybe",
        get(|s: Option<CurrentSession>| async move { format!("{}", s.is_some()) }),
    );
    let r = call(&app, "GET", "/whoami", &[], "").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("ServerSessionLayer"), "{}", r.body);
    let r = call(&app, "GET", "/maybe", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "false");
}
