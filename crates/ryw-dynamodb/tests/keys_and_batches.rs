//! Keys and batches against moto, with eventually consistent reads answered by a lagging copy:
//! an HTTP proxy in front of moto sends writes, `ConsistentRead` reads and `TransactGetItems` to
//! the primary (region us-east-1 of moto), and answers every eventually consistent `GetItem`,
//! `Query`, `Scan` and the eventually consistent tables of a `BatchGetItem` from a copy (the same
//! tables in region eu-west-1 of the same moto), which holds only what the test put there.

use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::operation::get_item::GetItemInput;
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::query::QueryInput;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use ryw::{ReadYourWritesLayer, Session, SessionRequest, Visibility};
use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, Pages, TableSchema};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use tower::{Service, ServiceBuilder, ServiceExt};

const PRIMARY: &str = "us-east-1";
const COPY: &str = "eu-west-1";

fn moto() -> Option<String> {
    match std::env::var("RYW_DYNAMODB_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) if std::env::var_os("RYW_REQUIRE_SERVERS").is_some() => {
            panic!("RYW_DYNAMODB_ENDPOINT is not set")
        }
        Err(_) => None,
    }
}

fn client(endpoint: &str, region: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new("test", "test", None, None, "adversary"))
        .build();
    Client::from_conf(config)
}

/// Where each request went.
#[derive(Clone, Debug, PartialEq)]
enum Route {
    Primary(String),
    Copy(String),
}

/// The lagging read path: a proxy and the two regions behind it.
struct Lag {
    /// Through the proxy, region us-east-1 (what the session layer sends through).
    proxied: Client,
    primary: Client,
    copy: Client,
    routes: Arc<Mutex<Vec<Route>>>,
}

impl Lag {
    fn start(moto: &str) -> Lag {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = moto
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let routes = Arc::new(Mutex::new(Vec::new()));
        let r = routes.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let upstream = upstream.clone();
                let routes = r.clone();
                std::thread::spawn(move || serve(conn, &upstream, &routes));
            }
        });
        Lag {
            proxied: client(&format!("http://{addr}"), PRIMARY),
            primary: client(moto, PRIMARY),
            copy: client(moto, COPY),
            routes,
        }
    }

    /// Creates `table` (partition key `pk` of `pk_type`) in both regions.
    async fn create_table(&self, table: &str, pk_type: ScalarAttributeType) {
        for c in [&self.primary, &self.copy] {
            let b = c
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("pk")
                        .attribute_type(pk_type.clone())
                        .build()
                        .unwrap(),
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("pk")
                        .key_type(KeyType::Hash)
                        .build()
                        .unwrap(),
                );
            b.send().await.unwrap();
        }
    }

    /// Copies the item with `key` as the primary holds it now into the copy.
    async fn copy_item(&self, table: &str, key: HashMap<String, AttributeValue>) {
        let item = self
            .primary
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("the primary holds the item");
        self.copy
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    fn routes(&self) -> Vec<Route> {
        self.routes.lock().unwrap().clone()
    }
}

fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "adv_{name}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---- the proxy ----

/// Markers of PutItems whose first delivery loses its answer (see `serve`), each once.
static LOSE_ANSWER: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The table and key of a PutItem carrying a marker of [`LOSE_ANSWER`] (taken: once only).
fn lost_answer(body: &[u8]) -> Option<(Value, Value)> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let marker = json["Item"]["marker"]["S"].as_str()?;
    let mut markers = LOSE_ANSWER.lock().unwrap();
    let i = markers.iter().position(|m| m == marker)?;
    markers.remove(i);
    let key = serde_json::json!({"pk": json["Item"]["pk"].clone()});
    Some((json["TableName"].clone(), key))
}

struct HttpRequest {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<HttpRequest> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(HttpRequest {
        line: line.trim_end().to_owned(),
        headers,
        body,
    })
}

/// Sends `body` as the operation `target` to moto in `region`; the status line and body.
fn forward(
    upstream: &str,
    req: &HttpRequest,
    region: &str,
    body: &[u8],
) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(upstream).unwrap();
    let path = req.line.split(' ').nth(1).unwrap_or("/");
    let mut out = format!("POST {path} HTTP/1.0\r\n");
    for (k, v) in &req.headers {
        let lk = k.to_ascii_lowercase();
        if lk == "content-length" || lk == "connection" || lk == "expect" {
            continue;
        }
        let v = if lk == "authorization" {
            v.replace(&format!("/{PRIMARY}/"), &format!("/{region}/"))
        } else {
            v.clone()
        };
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(out.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k != "content-length" && k != "connection" && k != "transfer-encoding"
        })
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn serve(conn: TcpStream, upstream: &str, routes: &Mutex<Vec<Route>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    while let Some(req) = read_request(&mut reader) {
        let target = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))
            .map(|(_, v)| v.rsplit('.').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        let json: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let strong = json.get("ConsistentRead") == Some(&Value::Bool(true));
        let lost = if target == "PutItem" {
            lost_answer(&req.body)
        } else {
            None
        };
        let (status, headers, body) = match target.as_str() {
            "GetItem" | "Query" | "Scan" if !strong => {
                routes.lock().unwrap().push(Route::Copy(target.clone()));
                forward(upstream, &req, COPY, &req.body)
            }
            "BatchGetItem" => batch_get(upstream, &req, &json, routes),
            "PutItem" if lost.is_some() => {
                // The write applies, another writer deletes the item, and the answer is lost:
                // the client sees a 500 (InternalServerError), which the SDK retries.
                let (table, key) = lost.unwrap();
                routes.lock().unwrap().push(Route::Primary(target.clone()));
                let (status, headers, body) = forward(upstream, &req, PRIMARY, &req.body);
                assert!(
                    status.contains(" 200"),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
                let mut delete = HttpRequest {
                    line: req.line.clone(),
                    headers: req.headers.clone(),
                    body: Vec::new(),
                };
                for (k, v) in &mut delete.headers {
                    if k.eq_ignore_ascii_case("x-amz-target") {
                        *v = "DynamoDB_20120810.DeleteItem".into();
                    }
                }
                let body = serde_json::to_vec(&serde_json::json!({"TableName": table, "Key": key}))
                    .unwrap();
                let (deleted, _, _) = forward(upstream, &delete, PRIMARY, &body);
                assert!(deleted.contains(" 200"));
                let _ = headers;
                (
                    "HTTP/1.1 500 Internal Server Error".to_owned(),
                    vec![(
                        "Content-Type".to_owned(),
                        "application/x-amz-json-1.0".to_owned(),
                    )],
                    br#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error"}"#.to_vec(),
                )
            }
            _ => {
                routes.lock().unwrap().push(Route::Primary(target.clone()));
                forward(upstream, &req, PRIMARY, &req.body)
            }
        };
        let status = status.replacen("HTTP/1.0", "HTTP/1.1", 1);
        let mut out = format!("{status}\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        if writer.write_all(out.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

/// A `BatchGetItem` split by table: its `ConsistentRead` tables to the primary, the others to
/// the copy, the answers merged.
fn batch_get(
    upstream: &str,
    req: &HttpRequest,
    json: &Value,
    routes: &Mutex<Vec<Route>>,
) -> (String, Vec<(String, String)>, Vec<u8>) {
    let items = json["RequestItems"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let (strong, cheap): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|(_, k)| k.get("ConsistentRead") == Some(&Value::Bool(true)));
    let mut merged = serde_json::json!({"Responses": {}, "UnprocessedKeys": {}});
    let mut last = None;
    for (part, region) in [(strong, PRIMARY), (cheap, COPY)] {
        if part.is_empty() {
            continue;
        }
        let tables: Vec<String> = part.iter().map(|(t, _)| t.clone()).collect();
        routes.lock().unwrap().push(if region == PRIMARY {
            Route::Primary(format!("BatchGetItem {tables:?}"))
        } else {
            Route::Copy(format!("BatchGetItem {tables:?}"))
        });
        let mut body = json.clone();
        body["RequestItems"] = Value::Object(part.into_iter().collect());
        let (status, headers, out) =
            forward(upstream, req, region, &serde_json::to_vec(&body).unwrap());
        if !status.contains(" 200") {
            return (status, headers, out);
        }
        let out: Value = serde_json::from_slice(&out).unwrap();
        for key in ["Responses", "UnprocessedKeys"] {
            if let Some(o) = out.get(key).and_then(Value::as_object) {
                for (t, v) in o {
                    merged[key][t] = v.clone();
                }
            }
        }
        last = Some((status, headers));
    }
    let (status, headers) = last.unwrap();
    (status, headers, serde_json::to_vec(&merged).unwrap())
}

// ---- helpers ----

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

type Db = ryw::ReadYourWrites<DynamoService, DynamoAdapter>;

fn layer(lag: &Lag, adapter: DynamoAdapter) -> Db {
    ServiceBuilder::new()
        .layer(ReadYourWritesLayer::new(adapter))
        .service(DynamoService::new(lag.proxied.clone()))
}

async fn call(
    db: &mut Db,
    request: SessionRequest<DynamoRequest>,
) -> ryw::SessionResponse<ryw_dynamodb::DynamoResponse> {
    db.ready().await.unwrap().call(request).await.unwrap()
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.into())
}

fn numbered(table: &str) -> DynamoAdapter {
    DynamoAdapter::new().table(TableSchema::new(table, "pk"))
}

/// DynamoDB compares numbers by value: `1` and `1.0` name the same item (moto too, checked
/// below). The session writes the item keyed `1`, then reads it back keyed `1.0` from a copy
/// that lacks the write. The fence knows a number key by its value (`expr::canonical_number`),
/// so the read is fenced on the item the session wrote and comes back with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_key_spelled_otherwise_is_fenced_as_the_same_item() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("numget");
    lag.create_table(&table, ScalarAttributeType::N).await;
    let mut db = layer(&lag, numbered(&table));
    let session = Session::new();
    let put = PutItemInput::builder()
        .table_name(&table)
        .item("pk", n("1"))
        .item("body", s("written"));
    call(&mut db, session.request(DynamoRequest::from(put))).await;

    let strong = lag
        .primary
        .get_item()
        .table_name(&table)
        .key("pk", n("1.0"))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(
        strong.item.is_some(),
        "the store reads key 1.0 as the item 1"
    );

    let get = GetItemInput::builder()
        .table_name(&table)
        .key("pk", n("1.0"));
    let read = call(&mut db, session.request(DynamoRequest::from(get))).await;
    assert!(
        !read.visibility().is_guaranteed() || read.get_ref().item().is_some(),
        "a Guaranteed GetItem lacks the item the session wrote: {:?}, item {:?}",
        read.visibility(),
        read.get_ref().item()
    );
}

/// The same for a query of the partition: `pk = :p` with `:p` = `1.0` reads the partition the
/// session wrote as `1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_partition_spelled_otherwise_is_fenced_as_the_same_partition() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("numquery");
    lag.create_table(&table, ScalarAttributeType::N).await;
    let mut db = layer(&lag, numbered(&table));
    let session = Session::new();
    let put = PutItemInput::builder()
        .table_name(&table)
        .item("pk", n("1"))
        .item("body", s("written"));
    call(&mut db, session.request(DynamoRequest::from(put))).await;

    let query = QueryInput::builder()
        .table_name(&table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", n("1.0"));
    let read = call(&mut db, session.request(DynamoRequest::from(query))).await;
    assert!(
        !read.visibility().is_guaranteed() || !read.get_ref().items().is_empty(),
        "a Guaranteed query lacks the item the session wrote: {:?}",
        read.visibility()
    );
}

/// `BatchGetItem` answers at most 16 MB and hands back the rest as `UnprocessedKeys`; moto lists
/// only the `Keys` there, not the table's `ConsistentRead`. The fence escalated the table (the
/// session wrote an item of it) and the first round was strong; the service resends the
/// unprocessed keys with each table's settings as asked (consistency, projection), so the resent
/// round is strong too and the lagging copy never answers for the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_keys_of_an_escalated_table_are_resent_strongly() {
    use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
    use aws_sdk_dynamodb::types::KeysAndAttributes;

    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("bigbatch");
    lag.create_table(&table, ScalarAttributeType::S).await;
    let mut db = ServiceBuilder::new()
        .layer(ReadYourWritesLayer::new(numbered(&table)).fence(ryw::FenceConfig::strong()))
        .service(DynamoService::new(lag.proxied.clone()));
    let session = Session::new();

    // 43 items of 395 kB each, in both regions (another writer's, long replicated): 42 fit in
    // the 16 MB of one answer.
    let blob = "x".repeat(395_000);
    let big: Vec<String> = (0..43).map(|i| format!("big{i:02}")).collect();
    for k in &big {
        for c in [&lag.primary, &lag.copy] {
            c.put_item()
                .table_name(&table)
                .item("pk", s(k))
                .item("blob", s(&blob))
                .send()
                .await
                .unwrap();
        }
    }
    // The session's item, as big: written, replicated, written again (the copy lags).
    for body in ["first", "second"] {
        let put = PutItemInput::builder()
            .table_name(&table)
            .item("pk", s("mine"))
            .item("body", s(body))
            .item("blob", s(&blob));
        call(&mut db, session.request(DynamoRequest::from(put))).await;
        if body == "first" {
            lag.copy_item(&table, [("pk".to_owned(), s("mine"))].into())
                .await;
        }
    }

    let keys: Vec<HashMap<String, AttributeValue>> = big
        .iter()
        .map(String::as_str)
        .chain(["mine"])
        .map(|k| [("pk".to_owned(), s(k))].into())
        .collect();
    let batch = BatchGetItemInput::builder().request_items(
        &table,
        KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .build()
            .unwrap(),
    );
    let read = call(&mut db, session.request(DynamoRequest::from(batch))).await;
    let items = read.get_ref().batch_items(&table);
    assert_eq!(items.len(), 44, "every item came back");
    let mine = items
        .iter()
        .find(|i| i.get("pk") == Some(&s("mine")))
        .and_then(|i| i.get("body"))
        .cloned();
    assert!(
        !read.visibility().is_guaranteed() || mine == Some(s("second")),
        "a Guaranteed BatchGetItem returns the session's item older than its last write: \
         {:?}, body {mine:?}, routes {:?}",
        read.visibility(),
        lag.routes()
    );
}

/// At most once, with a client whose SDK retries are on: the session writes an item it has
/// seen; that PutItem applies but its answer is lost (HTTP 500), and meanwhile another writer
/// deletes the item. Were the SDK to send the same request again below the layer, its version
/// condition would fail on the absent item and the write would be created again. The service
/// sends stamped writes without the SDK's retries: the layer retries, as a replay, which finds
/// the item gone and does not create it again; the item stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_retried_by_the_layer_not_the_sdk() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("sdkretry");
    lag.create_table(&table, ScalarAttributeType::S).await;
    let mut db = layer(&lag, numbered(&table));
    let session = Session::new();
    let put = |marker: &str| {
        DynamoRequest::from(
            PutItemInput::builder()
                .table_name(&table)
                .item("pk", s("k"))
                .item("marker", s(marker)),
        )
    };
    call(&mut db, session.request(put("first"))).await;

    let marker = format!("lose-{table}");
    LOSE_ANSWER.lock().unwrap().push(marker.clone());
    let answer = db
        .ready()
        .await
        .unwrap()
        .call(session.request(put(&marker)))
        .await;
    assert!(
        LOSE_ANSWER.lock().unwrap().is_empty(),
        "the first delivery lost its answer"
    );
    let write_id = answer
        .as_ref()
        .ok()
        .and_then(|r| r.write_id())
        .map(|w| w.to_string());
    let now = lag
        .primary
        .get_item()
        .table_name(&table)
        .key("pk", s("k"))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item;
    assert!(
        now.is_none(),
        "the write applied again after the delete that followed it (answer {:?}, write id \
         {write_id:?}): item {now:?}",
        answer.as_ref().map(|r| r.visibility().clone())
    );
}

// Silence unused warnings for items only some tests use.
#[allow(dead_code)]
fn _unused(_: Visibility, _: Pages<Db>) {}
