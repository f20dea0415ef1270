//! Reads through the session layer against moto, with eventually consistent reads answered by a
//! lagging copy: an HTTP proxy in front of moto sends writes, `ConsistentRead` reads and
//! `TransactGetItems` to the primary (region us-east-1 of moto), and answers every eventually
//! consistent `GetItem`, `Query`, `Scan` and the eventually consistent tables of a
//! `BatchGetItem` from a copy (the same tables in region eu-west-1 of the same moto) that the
//! test brings up to date with [`Lag::sync`] only: the copy holds exactly the writes applied
//! before the last sync, as a DynamoDB replica that replicates each partition in order would.

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

/// Holds the next `PutItem` at the proxy, before it reaches moto, until released.
#[derive(Default)]
struct Gate {
    /// Every `PutItem` is applied at moto and its connection closed without an answer.
    drop_puts: std::sync::atomic::AtomicBool,
    armed: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
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

    /// Creates `table` (string keys `pk` and, if given, `sk`) in both regions.
    async fn create_table(&self, table: &str, sort_key: Option<&str>) {
        for c in [&self.primary, &self.copy] {
            let mut b = c
                .create_table()
                .table_name(table)
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
            "PutItem" if gate.armed.lock().unwrap().is_some() => {
                let (held, release) = gate.armed.lock().unwrap().take().unwrap();
                held.send(()).unwrap();
                release.recv().unwrap();
                routes.lock().unwrap().push(Route::Primary(target.clone()));
                forward(upstream, &req, PRIMARY, &req.body)
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

/// The proxy sends eventually consistent reads to the copy, which holds only what was synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lagging_copy_lags() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("sanity");
    lag.create_table(&table, None).await;
    lag.proxied
        .put_item()
        .table_name(&table)
        .item("pk", s("a"))
        .send()
        .await
        .unwrap();
    let cheap = lag
        .proxied
        .get_item()
        .table_name(&table)
        .key("pk", s("a"))
        .send()
        .await
        .unwrap();
    assert!(
        cheap.item.is_none(),
        "the copy lacks the write until synced"
    );
    lag.sync(&table, &["pk"]).await;
    let cheap = lag
        .proxied
        .get_item()
        .table_name(&table)
        .key("pk", s("a"))
        .send()
        .await
        .unwrap();
    assert!(cheap.item.is_some());
    assert!(lag.routes().contains(&Route::Copy("GetItem".into())));
}

fn adapter(table: &str) -> DynamoAdapter {
    DynamoAdapter::new().table(TableSchema::new(table, "pk").sort_key("sk"))
}

fn put(table: &str, pk: &str, sk: &str) -> DynamoRequest {
    PutItemInput::builder()
        .table_name(table)
        .item("pk", s(pk))
        .item("sk", s(sk))
        .into()
}

fn query(table: &str, pk: &str) -> DynamoRequest {
    QueryInput::builder()
        .table_name(table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", s(pk))
        .into()
}

/// Attacks that held: a batch across two tables, one holding the session's write and one not
/// (only that table read strongly), a batch after a delete the copy lacks, a scan of a written
/// and of an unwritten table, and `Limit` 1 pages of a partition whose copy lacks the session's
/// writes in the middle of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_batches_scans_and_pages_over_a_lagging_copy() {
    use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput;
    use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
    use aws_sdk_dynamodb::operation::scan::ScanInput;
    use aws_sdk_dynamodb::types::KeysAndAttributes;
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let a = unique("heldA");
    let b = unique("heldB");
    lag.create_table(&a, Some("sk")).await;
    lag.create_table(&b, Some("sk")).await;
    let adapter = DynamoAdapter::new()
        .table(TableSchema::new(&a, "pk").sort_key("sk"))
        .table(TableSchema::new(&b, "pk").sort_key("sk"));
    let mut db = layer(&lag, adapter);
    let other = Session::new();
    let session = Session::new();
    for sk in ["1", "3", "5"] {
        call(&mut db, other.request(put(&a, "p", sk))).await;
        call(&mut db, other.request(put(&b, "p", sk))).await;
    }
    lag.sync(&a, &["pk", "sk"]).await;
    lag.sync(&b, &["pk", "sk"]).await;
    call(&mut db, session.request(put(&a, "p", "2"))).await;
    call(&mut db, session.request(put(&a, "p", "4"))).await;

    let key = |sk: &str| -> HashMap<String, AttributeValue> {
        [("pk".to_owned(), s("p")), ("sk".to_owned(), s(sk))].into()
    };
    let batch = BatchGetItemInput::builder()
        .request_items(
            &a,
            KeysAndAttributes::builder()
                .keys(key("2"))
                .keys(key("4"))
                .build()
                .unwrap(),
        )
        .request_items(
            &b,
            KeysAndAttributes::builder()
                .keys(key("1"))
                .keys(key("2"))
                .build()
                .unwrap(),
        );
    let read = call(&mut db, session.request(DynamoRequest::from(batch))).await;
    assert!(read.visibility().is_guaranteed(), "{:?}", read.visibility());
    assert_eq!(keys_of(read.get_ref().batch_items(&a), "sk"), ["2", "4"]);
    assert_eq!(keys_of(read.get_ref().batch_items(&b), "sk"), ["1"]);
    assert!(lag
        .routes()
        .contains(&Route::Primary(format!("BatchGetItem [{a:?}]"))));

    // Limit 1 pages of the partition: the copy lacks 2 and 4.
    let q = match query(&a, "p").operation().clone() {
        ryw_dynamodb::DynamoOperation::Query(q) => DynamoRequest::from(q.limit(1)),
        _ => unreachable!(),
    };
    let all = Pages::new(&mut db, session.request(q.clone()))
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(all.is_guaranteed(), "{:?}", all.visibilities());
    let mut got: Vec<String> = all
        .items()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().clone())
        .collect();
    assert_eq!(got, ["1", "2", "3", "4", "5"]);

    // A delete the copy lacks.
    let delete = DeleteItemInput::builder()
        .table_name(&a)
        .key("pk", s("p"))
        .key("sk", s("3"));
    call(&mut db, session.request(DynamoRequest::from(delete))).await;
    lag.sync(&a, &["pk", "sk"]).await;
    let delete = DeleteItemInput::builder()
        .table_name(&a)
        .key("pk", s("p"))
        .key("sk", s("5"));
    call(&mut db, session.request(DynamoRequest::from(delete))).await;
    let batch = BatchGetItemInput::builder().request_items(
        &a,
        KeysAndAttributes::builder().keys(key("5")).build().unwrap(),
    );
    let read = call(&mut db, session.request(DynamoRequest::from(batch))).await;
    assert!(read.visibility().is_guaranteed());
    assert!(read.get_ref().batch_items(&a).is_empty());
    let all = Pages::new(&mut db, session.request(q))
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(all.is_guaranteed());
    got = all
        .items()
        .iter()
        .map(|i| i["sk"].as_s().unwrap().clone())
        .collect();
    assert_eq!(got, ["1", "2", "4"]);

    // Scans.
    let scan = ScanInput::builder().table_name(&a);
    let read = call(&mut db, session.request(DynamoRequest::from(scan))).await;
    assert!(read.visibility().is_guaranteed());
    assert_eq!(keys_of(read.get_ref().items(), "sk"), ["1", "2", "4"]);
    let scan = ScanInput::builder().table_name(&b);
    let read = call(&mut db, session.request(DynamoRequest::from(scan))).await;
    assert_eq!(read.visibility(), &Visibility::Unscoped);
}

/// A write whose every answer is lost after moto applied it (the connection closes before the
/// response): the caller must not be told `Error::Store { may_have_applied: false }`, which
/// says that neither the write nor any copy of it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answers_are_lost_may_have_applied() {
    let Some(moto) = moto() else { return };
    let lag = Lag::start(&moto);
    let table = unique("lost");
    lag.create_table(&table, Some("sk")).await;
    let mut db = layer(&lag, adapter(&table));
    let session = Session::new();
    lag.gate
        .drop_puts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let result = db
        .ready()
        .await
        .unwrap()
        .call(session.request(put(&table, "p", "x")))
        .await;
    lag.gate
        .drop_puts
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let now = lag
        .primary
        .get_item()
        .table_name(&table)
        .key("pk", s("p"))
        .key("sk", s("x"))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item;
    assert!(now.is_some(), "moto applied the write");
    let attempts = lag
        .routes()
        .iter()
        .filter(|r| **r == Route::Primary("PutItem (answer lost)".into()))
        .count();
    match &result {
        Err(ryw::Error::Store {
            may_have_applied: false,
            source,
            ..
        }) => panic!(
            "the write applied, yet it is reported unapplied after {attempts} attempts: {source:?}"
        ),
        other => eprintln!("answered {other:?}"),
    }
}

// Silence unused warnings for items only some tests use.
#[allow(dead_code)]
fn _unused(_: Visibility) {}
