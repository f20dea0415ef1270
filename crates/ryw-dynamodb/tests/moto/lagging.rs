//! TEST ONLY. A replica that lags L ms behind, in front of moto.
//!
//! moto has one copy of every table and never serves a stale read. [`LaggingReplicaForTests`] is
//! an HTTP proxy between the SDK and moto that keeps, for each table it lags, a second moto table:
//! the replica. Every write to a lagged table goes to moto unchanged; before its response reaches
//! the client, the proxy takes the table as it now is (a consistent scan) and applies that copy to
//! the replica L ms later, whole (reads of the replica wait while a copy is applied). Every
//! eventually consistent `GetItem`, `Query`, `Scan` and `BatchGetItem` of a lagged table is sent
//! to moto as a read of the replica: it sees the table as it was L ms earlier, with moto's own
//! paging (`Limit`, `ExclusiveStartKey`, `LastEvaluatedKey`). `ConsistentRead` reads (per table,
//! in a `BatchGetItem`) and `TransactGetItems` reach the primary untouched.
//!
//! It can also play a throttled `BatchGetItem`: for the next N of them, the last key asked of each
//! table is kept back and returned in `UnprocessedKeys` (the other keys are read from moto; when
//! no key is left to send, the answer is moto's shape with no items).

use crate::http_relay::{answer, forward, header, read_request};
use crate::support::Item;
use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement};
use aws_sdk_dynamodb::Client;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The proxy. Stops when dropped.
pub(crate) struct LaggingReplicaForTests {
    /// The endpoint to give the SDK.
    pub(crate) url: String,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for LaggingReplicaForTests {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Lagged {
    replica: String,
    /// The key attributes.
    keys: Vec<String>,
}

struct State {
    moto: String,
    client: Client,
    tables: HashMap<String, Lagged>,
    /// Held while a copy is applied to a replica, and while a read is served from one.
    replica_lock: tokio::sync::Mutex<()>,
    copies: mpsc::UnboundedSender<(Instant, String, Vec<Item>)>,
    /// Reads of a lagged table served by its replica.
    eventual: AtomicUsize,
    /// Strong reads of a lagged table (a `BatchGetItem` counts once per lagged table).
    consistent: AtomicUsize,
    /// The lagged tables each `BatchGetItem` read strongly, in order.
    batch_strong_tables: Mutex<Vec<Vec<String>>>,
    /// `BatchGetItem`s still to answer with keys kept back.
    hold_back: AtomicUsize,
}

impl LaggingReplicaForTests {
    /// Proxies `moto` (its URL), lagging `tables` (which exist) by `lag`.
    pub(crate) async fn start(moto: &str, tables: &[&str], lag: Duration) -> Self {
        let client = crate::support::client(moto);
        let mut lagged = HashMap::new();
        for table in tables {
            let replica = format!("lag_{table}");
            let keys = create_replica(&client, table, &replica).await;
            lagged.insert(table.to_string(), Lagged { replica, keys });
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (copies, mut queue) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            moto: moto
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            client,
            tables: lagged,
            replica_lock: tokio::sync::Mutex::new(()),
            copies,
            eventual: AtomicUsize::new(0),
            consistent: AtomicUsize::new(0),
            batch_strong_tables: Mutex::default(),
            hold_back: AtomicUsize::new(0),
        });
        for table in tables {
            let now = snapshot(&state.client, table).await;
            state.apply(table, now).await;
        }
        let s = state.clone();
        let applier = tokio::spawn(async move {
            while let Some((at, table, items)) = queue.recv().await {
                tokio::time::sleep_until(at).await;
                s.apply(&table, items).await;
            }
        });
        let s = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, &s, lag).await;
                });
            }
        });
        LaggingReplicaForTests {
            url,
            state,
            tasks: vec![applier, server],
        }
    }

    /// Reads served so far: (by a replica, strongly by a primary).
    pub(crate) fn reads(&self) -> (usize, usize) {
        (
            self.state.eventual.load(Ordering::SeqCst),
            self.state.consistent.load(Ordering::SeqCst),
        )
    }

    /// The lagged tables each `BatchGetItem` so far read strongly.
    pub(crate) fn batch_strong_tables(&self) -> Vec<Vec<String>> {
        self.state.batch_strong_tables.lock().unwrap().clone()
    }

    /// The next `n` `BatchGetItem`s get the last key of each table back in `UnprocessedKeys`.
    pub(crate) fn hold_back_batch_keys(&self, n: usize) {
        self.state.hold_back.store(n, Ordering::SeqCst);
    }
}

impl State {
    /// Makes the replica of `table` hold exactly `items`.
    async fn apply(&self, table: &str, items: Vec<Item>) {
        let lagged = &self.tables[table];
        let _guard = self.replica_lock.lock().await;
        let key_of = |item: &Item| -> Item {
            lagged
                .keys
                .iter()
                .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        };
        let wanted: Vec<Item> = items.iter().map(key_of).collect();
        for old in snapshot(&self.client, &lagged.replica).await {
            let key = key_of(&old);
            if !wanted.contains(&key) {
                self.client
                    .delete_item()
                    .table_name(&lagged.replica)
                    .set_key(Some(key))
                    .send()
                    .await
                    .unwrap();
            }
        }
        for item in items {
            self.client
                .put_item()
                .table_name(&lagged.replica)
                .set_item(Some(item))
                .send()
                .await
                .unwrap();
        }
    }
}

/// The table as it is now (consistent, every page).
async fn snapshot(client: &Client, table: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return items;
        }
    }
}

/// Creates `replica` with the key schema of `table`; returns the key attributes.
async fn create_replica(client: &Client, table: &str, replica: &str) -> Vec<String> {
    let described = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let key_schema: Vec<KeySchemaElement> = described.key_schema.unwrap_or_default();
    let keys: Vec<String> = key_schema
        .iter()
        .map(|k| k.attribute_name.clone())
        .collect();
    let definitions: Vec<AttributeDefinition> = described
        .attribute_definitions
        .unwrap_or_default()
        .into_iter()
        .filter(|d| keys.contains(&d.attribute_name))
        .collect();
    client
        .create_table()
        .table_name(replica)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(definitions))
        .set_key_schema(Some(key_schema))
        .send()
        .await
        .unwrap();
    keys
}

const WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];

/// One request per connection (answered with `connection: close`).
async fn serve(mut conn: TcpStream, state: &State, lag: Duration) -> io::Result<()> {
    let (head, body) = read_request(&mut conn).await?;
    let target = header(&head, "x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned();
    let mut doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match target.as_str() {
        "GetItem" | "Query" | "Scan" => {
            let table = doc["TableName"].as_str().unwrap_or("").to_owned();
            if let Some(lagged) = state.tables.get(&table) {
                if doc["ConsistentRead"] == Value::Bool(true) {
                    state.consistent.fetch_add(1, Ordering::SeqCst);
                } else {
                    state.eventual.fetch_add(1, Ordering::SeqCst);
                    doc["TableName"] = json!(lagged.replica);
                    let body = serde_json::to_vec(&doc).unwrap();
                    let _guard = state.replica_lock.lock().await;
                    let response = forward(&state.moto, &head, &body).await?;
                    return answer(&mut conn, &response).await;
                }
            }
            let response = forward(&state.moto, &head, &body).await?;
            answer(&mut conn, &response).await
        }
        "BatchGetItem" => batch_get(conn, state, &head, doc).await,
        t if WRITES.contains(&t) => {
            let response = forward(&state.moto, &head, &body).await?;
            if response.starts_with(b"HTTP/1.1 200") {
                let text = String::from_utf8_lossy(&body);
                for table in state.tables.keys() {
                    if text.contains(&format!("\"{table}\"")) {
                        let items = snapshot(&state.client, table).await;
                        let _ = state
                            .copies
                            .send((Instant::now() + lag, table.clone(), items));
                    }
                }
            }
            answer(&mut conn, &response).await
        }
        _ => {
            let response = forward(&state.moto, &head, &body).await?;
            answer(&mut conn, &response).await
        }
    }
}

async fn batch_get(
    mut conn: TcpStream,
    state: &State,
    head: &str,
    mut doc: Value,
) -> io::Result<()> {
    let mut kept_back = Map::new();
    let hold = state
        .hold_back
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let requested = doc["RequestItems"].as_object().cloned().unwrap_or_default();
    let mut sent = Map::new();
    let mut strong = Vec::new();
    let mut via_replica = false;
    for (table, mut entry) in requested {
        if hold {
            if let Some(key) = entry["Keys"].as_array_mut().and_then(|k| k.pop()) {
                let mut back = entry.clone();
                back["Keys"] = json!([key]);
                kept_back.insert(table.clone(), back);
            }
            if entry["Keys"].as_array().is_none_or(|k| k.is_empty()) {
                continue;
            }
        }
        match state.tables.get(&table) {
            Some(lagged) if entry["ConsistentRead"] != Value::Bool(true) => {
                state.eventual.fetch_add(1, Ordering::SeqCst);
                via_replica = true;
                sent.insert(lagged.replica.clone(), entry);
            }
            Some(_) => {
                state.consistent.fetch_add(1, Ordering::SeqCst);
                strong.push(table.clone());
                sent.insert(table, entry);
            }
            None => {
                sent.insert(table, entry);
            }
        }
    }
    strong.sort();
    state.batch_strong_tables.lock().unwrap().push(strong);
    let mut out = json!({ "Responses": {}, "UnprocessedKeys": {} });
    if !sent.is_empty() {
        doc["RequestItems"] = Value::Object(sent);
        let body = serde_json::to_vec(&doc).unwrap();
        let _guard = match via_replica {
            true => Some(state.replica_lock.lock().await),
            false => None,
        };
        let response = forward(&state.moto, head, &body).await?;
        if !response.starts_with(b"HTTP/1.1 200") {
            return answer(&mut conn, &response).await;
        }
        let split =
            crate::http_relay::find(&response, b"\r\n\r\n").ok_or(io::ErrorKind::InvalidData)?;
        out = serde_json::from_slice(&response[split + 4..])
            .map_err(|_| io::ErrorKind::InvalidData)?;
    }
    // The replicas' names back to the primaries'.
    for field in ["Responses", "UnprocessedKeys"] {
        if let Some(map) = out[field].as_object_mut() {
            for (primary, lagged) in &state.tables {
                if let Some(v) = map.remove(&lagged.replica) {
                    map.insert(primary.clone(), v);
                }
            }
        }
    }
    if !kept_back.is_empty() {
        if !out["UnprocessedKeys"].is_object() {
            out["UnprocessedKeys"] = json!({});
        }
        let unprocessed = out["UnprocessedKeys"].as_object_mut().unwrap();
        for (table, back) in kept_back {
            unprocessed.insert(table, back);
        }
    }
    let body = out.to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
