//! Test support: a client for the moto server that `tests/run-all.sh` starts, fresh tables, and
//! two clearly named test-only layers that inject what moto never does (stale reads, lost
//! responses). Every response that reaches the assertions comes from moto.
#![allow(dead_code)]

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use ryw_dynamodb::{DynamoError, DynamoOperation, DynamoRequest, DynamoResponse};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::Service;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The moto endpoint, or `None` (with a message) when the suite runs without servers.
pub(crate) fn endpoint() -> Option<String> {
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

pub(crate) fn client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "ryw-tests"))
        .build();
    Client::from_conf(config)
}

static TABLES: AtomicUsize = AtomicUsize::new(0);

/// Creates a fresh table keyed by `pk` (string) with a global index `by_author` on `author`.
pub(crate) async fn fresh_table(client: &Client) -> String {
    let name = format!(
        "t{}_{}",
        std::process::id(),
        TABLES.fetch_add(1, Ordering::Relaxed)
    );
    client
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("author"))
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("by_author")
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("author")
                        .key_type(KeyType::Hash)
                        .build()
                        .unwrap(),
                )
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create table");
    name
}

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .unwrap()
}

pub(crate) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(crate) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Reads an item with a consistent read, straight from moto (no ryw).
pub(crate) async fn peek(client: &Client, table: &str, pk: &str) -> Option<Item> {
    client
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// An item a lagging replica still serves, and for how many more reads.
type Held = (Option<Item>, usize);

type BoxFuture = Pin<Box<dyn Future<Output = Result<DynamoResponse, DynamoError>> + Send>>;

/// Items an eventually consistent query returns instead of moto's, and for how many queries.
type HeldQuery = (Vec<Item>, usize);

/// TEST ONLY. Plays a lagging replica: while a key is held, eventually consistent GetItem
/// responses for it carry the held (older) item instead of moto's, and eventually consistent
/// queries return no items. Consistent reads always pass through to moto untouched.
#[derive(Clone, Default)]
pub(crate) struct StaleReplicaForTests<S> {
    inner: S,
    held: Arc<Mutex<HashMap<String, Held>>>,
    queries_stale: Arc<Mutex<usize>>,
    query_snapshot: Arc<Mutex<Option<HeldQuery>>>,
    pub eventual_reads: Arc<AtomicUsize>,
    pub consistent_reads: Arc<AtomicUsize>,
}

impl<S> StaleReplicaForTests<S> {
    pub(crate) fn new(inner: S) -> Self {
        StaleReplicaForTests {
            inner,
            held: Default::default(),
            queries_stale: Default::default(),
            query_snapshot: Default::default(),
            eventual_reads: Default::default(),
            consistent_reads: Default::default(),
        }
    }

    /// The next `reads` eventually consistent reads of `pk` see `old` (None: not there yet).
    pub(crate) fn hold(&self, pk: &str, old: Option<Item>, reads: usize) {
        self.held
            .lock()
            .unwrap()
            .insert(pk.to_owned(), (old, reads));
    }

    /// The next `reads` eventually consistent queries return `items` (an older copy).
    pub(crate) fn hold_queries(&self, items: Vec<Item>, reads: usize) {
        *self.query_snapshot.lock().unwrap() = Some((items, reads));
    }

    /// The next `reads` eventually consistent queries return nothing.
    pub(crate) fn stale_queries(&self, reads: usize) {
        *self.queries_stale.lock().unwrap() = reads;
    }
}

impl<S> Service<DynamoRequest> for StaleReplicaForTests<S>
where
    S: Service<DynamoRequest, Response = DynamoResponse, Error = DynamoError, Future = BoxFuture>,
{
    type Response = DynamoResponse;
    type Error = DynamoError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DynamoError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: DynamoRequest) -> BoxFuture {
        let (eventual, key) = match req.operation() {
            DynamoOperation::GetItem(b) => {
                let pk = b
                    .get_key()
                    .as_ref()
                    .and_then(|k| k.get("pk"))
                    .and_then(|v| v.as_s().ok())
                    .cloned();
                (!b.get_consistent_read().unwrap_or(false), pk)
            }
            DynamoOperation::Query(q) => (!q.get_consistent_read().unwrap_or(false), None),
            _ => (false, None),
        };
        let is_query = matches!(req.operation(), DynamoOperation::Query(_));
        if matches!(
            req.operation(),
            DynamoOperation::GetItem(_) | DynamoOperation::Query(_)
        ) {
            if eventual {
                self.eventual_reads.fetch_add(1, Ordering::Relaxed);
            } else {
                self.consistent_reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        let held = self.held.clone();
        let queries = self.queries_stale.clone();
        let snapshot = self.query_snapshot.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if !eventual {
                return Ok(resp);
            }
            if is_query {
                if let Some((items, left)) = snapshot.lock().unwrap().as_mut() {
                    if *left > 0 {
                        *left -= 1;
                        let items = items.clone();
                        return Ok(with_output(resp, move |_| {
                            ryw_dynamodb::DynamoOutput::Query(
                                aws_sdk_dynamodb::operation::query::QueryOutput::builder()
                                    .count(items.len() as i32)
                                    .set_items(Some(items))
                                    .build(),
                            )
                        }));
                    }
                }
                let mut q = queries.lock().unwrap();
                if *q > 0 {
                    *q -= 1;
                    return Ok(with_output(resp, |o| match o {
                        ryw_dynamodb::DynamoOutput::Query(_) => ryw_dynamodb::DynamoOutput::Query(
                            aws_sdk_dynamodb::operation::query::QueryOutput::builder()
                                .count(0)
                                .build(),
                        ),
                        other => other,
                    }));
                }
                return Ok(resp);
            }
            let Some(key) = key else { return Ok(resp) };
            let mut held = held.lock().unwrap();
            match held.get_mut(&key) {
                Some((old, left)) if *left > 0 => {
                    *left -= 1;
                    let old = old.clone();
                    Ok(with_output(resp, move |_| {
                        ryw_dynamodb::DynamoOutput::GetItem(
                            aws_sdk_dynamodb::operation::get_item::GetItemOutput::builder()
                                .set_item(old)
                                .build(),
                        )
                    }))
                }
                _ => Ok(resp),
            }
        })
    }
}

/// Rebuilds a response with another output (the metadata ryw needs stays).
fn with_output(
    resp: DynamoResponse,
    f: impl FnOnce(ryw_dynamodb::DynamoOutput) -> ryw_dynamodb::DynamoOutput,
) -> DynamoResponse {
    resp.map_output(f)
}

/// TEST ONLY. Loses the responses of the next `n` writes *after* moto applied them: the caller
/// sees `DynamoError::NoResponse`, as after a timeout.
#[derive(Clone)]
pub(crate) struct LoseWriteResponsesForTests<S> {
    inner: S,
    remaining: Arc<AtomicUsize>,
    pub calls: Arc<AtomicUsize>,
}

impl<S> LoseWriteResponsesForTests<S> {
    pub(crate) fn new(inner: S, n: usize) -> Self {
        LoseWriteResponsesForTests {
            inner,
            remaining: Arc::new(AtomicUsize::new(n)),
            calls: Default::default(),
        }
    }
}

impl<S> Service<DynamoRequest> for LoseWriteResponsesForTests<S>
where
    S: Service<DynamoRequest, Response = DynamoResponse, Error = DynamoError, Future = BoxFuture>,
{
    type Response = DynamoResponse;
    type Error = DynamoError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DynamoError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: DynamoRequest) -> BoxFuture {
        let write = !matches!(
            req.operation(),
            DynamoOperation::GetItem(_) | DynamoOperation::Query(_)
        );
        if write {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        let remaining = self.remaining.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if write
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_ok()
            {
                return Err(DynamoError::NoResponse {
                    message: "response lost by the test layer".into(),
                    source: None,
                });
            }
            Ok(resp)
        })
    }
}

/// Another session's write, run by [`InterleaveThenLoseForTests`].
pub(crate) type Interleave =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// TEST ONLY. After moto applied the next write, runs another session's write, then loses the
/// first write's response (the layer retries it).
#[derive(Clone)]
pub(crate) struct InterleaveThenLoseForTests<S> {
    inner: S,
    other: Interleave,
    /// Writes still to interleave and lose.
    pub armed: Arc<AtomicUsize>,
    /// Drop the armed write before it reaches moto (instead of losing its response).
    pub drop_before_sending: bool,
}

impl<S> InterleaveThenLoseForTests<S> {
    pub(crate) fn new(
        inner: S,
        other: impl Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    ) -> Self {
        InterleaveThenLoseForTests {
            inner,
            other: Arc::new(other),
            armed: Default::default(),
            drop_before_sending: false,
        }
    }
}

impl<S> Service<DynamoRequest> for InterleaveThenLoseForTests<S>
where
    S: Service<DynamoRequest, Response = DynamoResponse, Error = DynamoError, Future = BoxFuture>,
{
    type Response = DynamoResponse;
    type Error = DynamoError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DynamoError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: DynamoRequest) -> BoxFuture {
        let armed = self.armed.clone();
        let other = self.other.clone();
        if self.drop_before_sending
            && armed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            return Box::pin(async move {
                other().await;
                Err(DynamoError::NoResponse {
                    message: "dropped before sending by the test layer".into(),
                    source: None,
                })
            });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            if armed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                other().await;
                return Err(DynamoError::NoResponse {
                    message: "response lost by the test layer".into(),
                    source: None,
                });
            }
            Ok(resp)
        })
    }
}

/// TEST ONLY. Holds the next request (while `armed`) until another session's writes ran, then
/// sends it: an attempt delayed in the network while other things happen.
#[derive(Clone)]
pub(crate) struct InterleaveBeforeSendingForTests<S> {
    inner: S,
    other: Interleave,
    /// Requests still to hold.
    pub armed: Arc<AtomicUsize>,
}

impl<S> InterleaveBeforeSendingForTests<S> {
    pub(crate) fn new(
        inner: S,
        other: impl Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    ) -> Self {
        InterleaveBeforeSendingForTests {
            inner,
            other: Arc::new(other),
            armed: Default::default(),
        }
    }
}

impl<S> Service<DynamoRequest> for InterleaveBeforeSendingForTests<S>
where
    S: Service<DynamoRequest, Response = DynamoResponse, Error = DynamoError, Future = BoxFuture>
        + Clone
        + Send
        + 'static,
{
    type Response = DynamoResponse;
    type Error = DynamoError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DynamoError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: DynamoRequest) -> BoxFuture {
        let held = self
            .armed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !held {
            return self.inner.call(req);
        }
        let other = self.other.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            other().await;
            tower::ServiceExt::ready(&mut inner).await?.call(req).await
        })
    }
}
