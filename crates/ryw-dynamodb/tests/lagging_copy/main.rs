//! The session layer against moto, with eventually consistent reads answered by a lagging copy: an HTTP proxy in front of moto sends writes, `ConsistentRead` reads and
//! `TransactGetItems` to the primary (region us-east-1 of moto), and answers every eventually
//! consistent `GetItem`, `Query`, `Scan` and the eventually consistent tables of a
//! `BatchGetItem` from a copy (the same tables in region eu-west-1 of the same moto) that the
//! test brings up to date with [`Lag::sync`] only: the copy holds exactly the writes applied
//! before the last sync (or one item put there with [`Lag::copy_item`]), as a DynamoDB replica
//! that replicates each partition in order would. The proxy can also lose a `PutItem`'s answer
//! after moto applied it ([`Gate`]).
//!
//! `lost_answers`: reads over the copy, and writes whose answers are lost. `keys_and_batches`:
//! number keys spelled two ways, a batch's unprocessed keys, and the SDK's own retries.

mod keys_and_batches;
mod lost_answers;

use aws_sdk_dynamodb::config::{Credentials, Region};
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
    gate: Arc<Gate>,
}

/// What the proxy does to `PutItem`s.
#[derive(Default)]
struct Gate {
    /// Every `PutItem` is applied at moto and its connection closed without an answer.
    drop_puts: std::sync::atomic::AtomicBool,
    /// Markers of `PutItem`s (their `marker` attribute) whose first delivery applies, then has
    /// its item deleted by another writer, and is answered 500: each once.
    lose_answer: Mutex<Vec<String>>,
}

impl Gate {
    /// The table and key of a `PutItem` carrying a marker of [`Gate::lose_answer`] (taken:
    /// once only).
    fn lost_answer(&self, body: &[u8]) -> Option<(Value, Value)> {
        let json: Value = serde_json::from_slice(body).ok()?;
        let marker = json["Item"]["marker"]["S"].as_str()?;
        let mut markers = self.lose_answer.lock().unwrap();
        let i = markers.iter().position(|m| m == marker)?;
        markers.remove(i);
        let key = serde_json::json!({"pk": json["Item"]["pk"].clone()});
        Some((json["TableName"].clone(), key))
    }
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
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let upstream = upstream.clone();
                let routes = r.clone();
                let gate = g.clone();
                std::thread::spawn(move || serve(conn, &upstream, &routes, &gate));
            }
        });
        Lag {
            proxied: client(&format!("http://{addr}"), PRIMARY),
            primary: client(moto, PRIMARY),
            copy: client(moto, COPY),
            routes,
            gate,
        }
    }

    /// Creates `table` (partition key `pk` of `pk_type` and, if given, string sort key `sk`)
    /// in both regions.
    async fn create_table(
        &self,
        table: &str,
        pk_type: ScalarAttributeType,
        sort_key: Option<&str>,
    ) {
        for c in [&self.primary, &self.copy] {
            let mut b = c
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
            if let Some(sk) = sort_key {
                b = b
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(sk)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .unwrap(),
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(sk)
                            .key_type(KeyType::Range)
                            .build()
                            .unwrap(),
                    );
            }
            b.send().await.unwrap();
        }
    }

    /// Makes the copy of `table` hold exactly what the primary holds now.
    async fn sync(&self, table: &str, key: &[&str]) {
        let old = self
            .copy
            .scan()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        for item in old {
            let k: HashMap<_, _> = key
                .iter()
                .map(|a| ((*a).to_owned(), item[*a].clone()))
                .collect();
            self.copy
                .delete_item()
                .table_name(table)
                .set_key(Some(k))
                .send()
                .await
                .unwrap();
        }
        let now = self
            .primary
            .scan()
            .table_name(table)
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        for item in now {
            self.copy
                .put_item()
                .table_name(table)
                .set_item(Some(item))
                .send()
                .await
                .unwrap();
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

fn serve(conn: TcpStream, upstream: &str, routes: &Mutex<Vec<Route>>, gate: &Gate) {
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
            gate.lost_answer(&req.body)
        } else {
            None
        };
        let (status, headers, body) = match target.as_str() {
            "GetItem" | "Query" | "Scan" if !strong => {
                routes.lock().unwrap().push(Route::Copy(target.clone()));
                forward(upstream, &req, COPY, &req.body)
            }
            "BatchGetItem" => batch_get(upstream, &req, &json, routes),
            "PutItem" if gate.drop_puts.load(std::sync::atomic::Ordering::SeqCst) => {
                routes
                    .lock()
                    .unwrap()
                    .push(Route::Primary("PutItem (answer lost)".into()));
                let _ = forward(upstream, &req, PRIMARY, &req.body);
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
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

fn keys_of(items: &[HashMap<String, AttributeValue>], attr: &str) -> Vec<String> {
    let mut k: Vec<String> = items
        .iter()
        .filter_map(|i| i.get(attr).and_then(|v| v.as_s().ok()).cloned())
        .collect();
    k.sort();
    k
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
