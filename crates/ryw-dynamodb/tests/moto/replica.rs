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

use crate::support::Item;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut server = TcpStream::connect(&route.moto).await?;
    server
        .write_all(&with_close(&head, Some(body.len())))
        .await?;
    server.write_all(&body).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    let split = find(&response, b"\r\n\r\n").ok_or(io::ErrorKind::InvalidData)?;
    let response_head = String::from_utf8_lossy(&response[..split]).into_owned();
    client.write_all(&with_close(&response_head, None)).await?;
    client.write_all(&response[split + 4..]).await?;
    client.shutdown().await
}

/// The request's head (without the blank line) and its body.
async fn read_request(client: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let split = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let length: usize = header(&head, "content-length")
        .map(|v| v.parse().map_err(|_| io::ErrorKind::InvalidData))
        .transpose()?
        .unwrap_or(0);
    let mut body = buf[split + 4..].to_vec();
    while body.len() < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((head, body))
}

/// The value of header `name` (case-insensitive).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `head` with `connection: close` (and `content-length`, when given) instead of its own, and the
/// blank line that ends it.
fn with_close(head: &str, length: Option<usize>) -> Vec<u8> {
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line.split_once(':').map(|(n, _)| n.trim());
        let replaced = name.is_some_and(|n| {
            n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("keep-alive")
                || (length.is_some() && n.eq_ignore_ascii_case("content-length"))
        });
        if i == 0 || !replaced {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if let Some(length) = length {
        out.push_str(&format!("content-length: {length}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
