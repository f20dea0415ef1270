//! TEST ONLY. A replica that applied a partition's writes out of order, in front of moto.
//!
//! moto has one copy of every table and never serves a stale read. [`OutOfOrderReplicaForTests`]
//! is an HTTP proxy between the SDK and moto: every request goes to moto unchanged, except an
//! eventually consistent `Query` of the primary table, which is sent to moto as a query of a
//! second table, the replica. The test writes to the primary through the proxy (or directly) and
//! copies to the replica, by hand, the items whose writes the replica has applied: copying a later
//! write and not an earlier one of the same partition makes the replica hold a view that a store
//! replicating partitions in order never serves. `ConsistentRead` queries reach the primary
//! untouched. Every response, replica or primary, is moto's own, unchanged.

use crate::http_relay::{answer, find, forward, header, read_request};
use crate::support::Item;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The proxy. Stops when dropped.
pub(crate) struct OutOfOrderReplicaForTests {
    /// The endpoint to give the SDK.
    pub(crate) url: String,
    /// Eventually consistent queries served by the replica.
    pub(crate) eventual_queries: Arc<AtomicUsize>,
    /// `ConsistentRead` queries sent to the primary.
    pub(crate) consistent_queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for OutOfOrderReplicaForTests {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What each connection needs to route its request.
#[derive(Clone)]
struct Route {
    moto: String,
    /// `"TableName":"<primary>"`, as the SDK serialises it.
    primary: Vec<u8>,
    /// `"TableName":"<replica>"`.
    replica: Vec<u8>,
    eventual: Arc<AtomicUsize>,
    consistent: Arc<AtomicUsize>,
}

impl OutOfOrderReplicaForTests {
    /// Proxies `moto`, serving the eventually consistent queries of `primary` from `replica`.
    pub(crate) async fn start(moto: &str, primary: &str, replica: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let route = Route {
            moto: moto
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            primary: format!(r#""TableName":"{primary}""#).into_bytes(),
            replica: format!(r#""TableName":"{replica}""#).into_bytes(),
            eventual: Arc::default(),
            consistent: Arc::default(),
        };
        let (eventual_queries, consistent_queries) =
            (route.eventual.clone(), route.consistent.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let route = route.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &route).await;
                });
            }
        });
        OutOfOrderReplicaForTests {
            url,
            eventual_queries,
            consistent_queries,
            task,
        }
    }

    /// Queries sent so far: (eventually consistent, consistent).
    pub(crate) fn queries(&self) -> (usize, usize) {
        (
            self.eventual_queries.load(Ordering::SeqCst),
            self.consistent_queries.load(Ordering::SeqCst),
        )
    }
}

/// One request per connection (answered with `connection: close`).
async fn serve(mut client: TcpStream, route: &Route) -> io::Result<()> {
    let (head, mut body) = read_request(&mut client).await?;
    let is_query = header(&head, "x-amz-target").is_some_and(|t| t.ends_with(".Query"));
    if is_query {
        if find(&body, br#""ConsistentRead":true"#).is_some() {
            route.consistent.fetch_add(1, Ordering::SeqCst);
        } else if let Some(at) = find(&body, &route.primary) {
            route.eventual.fetch_add(1, Ordering::SeqCst);
            body.splice(at..at + route.primary.len(), route.replica.iter().copied());
        }
    }
    let response = forward(&route.moto, &head, &body).await?;
    answer(&mut client, &response).await
}

/// Creates `name`, keyed by `pk` and `sk` (strings: a partition holds several items), with a
/// global index `by_author` on `author`.
pub(crate) async fn create_partitioned_table(client: &Client, name: &str) {
    let key = |attr: &str, key_type| {
        KeySchemaElement::builder()
            .attribute_name(attr)
            .key_type(key_type)
            .build()
            .unwrap()
    };
    let string = |attr: &str| {
        AttributeDefinition::builder()
            .attribute_name(attr)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string("pk"))
        .attribute_definitions(string("sk"))
        .attribute_definitions(string("author"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("by_author")
                .key_schema(key("author", KeyType::Hash))
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
}

/// The item (`pk`, `sk`) of `table` as the primary holds it (a consistent read, no ryw).
pub(crate) async fn primary_item(client: &Client, table: &str, pk: &str, sk: &str) -> Item {
    client
        .get_item()
        .table_name(table)
        .key("pk", crate::support::s(pk))
        .key("sk", crate::support::s(sk))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the item is on the primary")
}

/// The replica applies the write that made `item` (copies it as it is, no ryw).
pub(crate) async fn apply_to_replica(client: &Client, replica: &str, item: Item) {
    client
        .put_item()
        .table_name(replica)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}
