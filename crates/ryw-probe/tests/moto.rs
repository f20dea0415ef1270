//! `ryw-probe` against moto (`RYW_DYNAMODB_ENDPOINT`, started by `tests/run-all.sh`) behind a
//! lagging read path of the test's own: a loopback proxy that serves every eventually consistent
//! `GetItem` from the table as it was L ms earlier (the writes it forwarded, replayed with a
//! delay), and passes everything else, consistent reads included, to moto. The probe's curve
//! steps at L, `check` finds raw violations and none through ryw, and each bad input gets its
//! own message and exit code. Without the endpoint every test says it skipped.

#[path = "../../ryw-dynamodb/tests/moto/http_relay.rs"]
mod http_relay;

use http_relay::{answer, forward, header, read_request};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn endpoint() -> Option<String> {
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

/// What the proxy answers instead of moto, for every request.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Throttle,
    Deny,
}

/// Every item version a write put, by key: (when, the item or `None` for a delete).
type Versions = HashMap<String, Vec<(Instant, Option<Value>)>>;

struct Proxy {
    url: String,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(moto: &str, lag: Duration) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let moto = moto
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let versions: Arc<Mutex<Versions>> = Arc::default();
    let fault = Arc::new(Mutex::new(Fault::None));
    let f = fault.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (moto, versions, fault) = (moto.clone(), versions.clone(), *f.lock().unwrap());
            tokio::spawn(async move {
                let _ = serve(client, &moto, lag, &versions, fault).await;
            });
        }
    });
    Proxy { url, fault, task }
}

fn key_of(body: &Value, field: &str) -> Option<String> {
    let table = body["TableName"].as_str()?;
    let key = body[field]["pk"]["S"].as_str()?;
    Some(format!("{table}/{key}"))
}

async fn serve(
    mut client: TcpStream,
    moto: &str,
    lag: Duration,
    versions: &Mutex<Versions>,
    fault: Fault,
) -> io::Result<()> {
    let (head, body) = read_request(&mut client).await?;
    let target = header(&head, "x-amz-target").unwrap_or("").to_owned();
    let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let error = match fault {
        Fault::Throttle => Some("com.amazonaws.dynamodb.v20120810#ThrottlingException"),
        Fault::Deny => Some("com.amazon.coral.service#AccessDeniedException"),
        Fault::None => None,
    };
    if let Some(kind) = error {
        let body = json!({ "__type": kind, "message": "injected by the test proxy" }).to_string();
        return respond(&mut client, 400, &body).await;
    }
    if target.ends_with(".GetItem") && doc["ConsistentRead"] != Value::Bool(true) {
        // The table as it was `lag` ago.
        let key = key_of(&doc, "Key").unwrap_or_default();
        let cutoff = Instant::now().checked_sub(lag);
        let item = cutoff.and_then(|cutoff| {
            versions
                .lock()
                .unwrap()
                .get(&key)
                .and_then(|v| v.iter().rev().find(|(at, _)| *at <= cutoff).cloned())
                .and_then(|(_, item)| item)
        });
        let body = match item {
            Some(item) => json!({ "Item": item }).to_string(),
            None => "{}".to_owned(),
        };
        return respond(&mut client, 200, &body).await;
    }
    let response = forward(moto, &head, &body).await?;
    let ok = response.starts_with(b"HTTP/1.1 200");
    if ok && target.ends_with(".PutItem") {
        if let Some(key) = key_of(&doc, "Item") {
            let item = doc["Item"].clone();
            versions
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push((Instant::now(), Some(item)));
        }
    }
    if ok && target.ends_with(".DeleteItem") {
        if let Some(key) = key_of(&doc, "Key") {
            versions
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push((Instant::now(), None));
        }
    }
    answer(&mut client, &response).await
}

async fn respond(client: &mut TcpStream, status: u16, body: &str) -> io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}

/// Runs the probe against `endpoint` with test credentials.
async fn probe(endpoint: &str, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--endpoint-url".into(), endpoint.into(), "--quiet".into()]);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ryw-probe"))
            .args(&all)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn table() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "probe{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ryw-probe-moto-{}-{name}", std::process::id()))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curve_steps_at_the_proxys_lag_and_check_holds_through_ryw() {
    let Some(moto) = endpoint() else { return };
    let lag = 300;
    let proxy = proxy(&moto, Duration::from_millis(lag)).await;
    let t = table();
    let out = temp("lag.json");
    let run = probe(
        &proxy.url,
        &[
            "lag",
            "--store",
            "dynamodb",
            "--table",
            &t,
            "--create",
            "--writes",
            "12",
            "--delays",
            "0,100,150,600,800",
            "--json",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert!(run.status.success(), "{}", stderr(&run));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for point in doc["t_visibility"].as_array().unwrap() {
        let (d, p) = (
            point["delay_ms"].as_u64().unwrap(),
            point["p_visible"].as_f64().unwrap(),
        );
        if d <= 150 {
            assert_eq!(p, 0.0, "visible at {d} ms, under the lag");
        }
        if d >= 600 {
            assert_eq!(p, 1.0, "not visible at {d} ms, past the lag");
        }
    }

    // The same table now holds nothing of the probe's: check runs there without --force.
    let out = temp("check.json");
    let run = probe(
        &proxy.url,
        &[
            "check",
            "--store",
            "dynamodb",
            "--table",
            &t,
            "--sessions",
            "4",
            "--ops",
            "20",
            "--json",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert!(run.status.success(), "{}", stderr(&run));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(doc["raw"]["violations"].as_u64().unwrap() > 0, "{doc}");
    assert_eq!(doc["ryw"]["violations"], 0, "{doc}");
    assert!(doc["ryw"]["strong_reads"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_has_its_message_and_exit_code() {
    let Some(moto) = endpoint() else { return };
    let proxy = proxy(&moto, Duration::ZERO).await;
    let t = table();

    // A missing table, without --create.
    let run = probe(&proxy.url, &["lag", "--store", "dynamodb", "--table", &t]).await;
    assert_eq!(run.status.code(), Some(6), "{}", stderr(&run));
    assert!(stderr(&run).contains("--create"), "{}", stderr(&run));

    // A table with someone else's data, without --force.
    let create = probe(
        &proxy.url,
        &[
            "lag", "--store", "dynamodb", "--table", &t, "--create", "--writes", "1", "--delays",
            "0",
        ],
    )
    .await;
    assert!(create.status.success(), "{}", stderr(&create));
    let client = aws_client(&moto).await;
    client
        .put_item()
        .table_name(&t)
        .item(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("theirs".into()),
        )
        .send()
        .await
        .unwrap();
    let run = probe(&proxy.url, &["lag", "--store", "dynamodb", "--table", &t]).await;
    assert_eq!(run.status.code(), Some(6), "{}", stderr(&run));
    assert!(stderr(&run).contains("not empty"), "{}", stderr(&run));
    let forced = probe(
        &proxy.url,
        &[
            "lag", "--store", "dynamodb", "--table", &t, "--force", "--writes", "2", "--delays",
            "0",
        ],
    )
    .await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    let left = client
        .scan()
        .table_name(&t)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(left.count(), 1, "the probe removed its items and only them");

    // A table keyed otherwise.
    let other = table();
    client
        .create_table()
        .table_name(&other)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let run = probe(
        &proxy.url,
        &["lag", "--store", "dynamodb", "--table", &other],
    )
    .await;
    assert_eq!(run.status.code(), Some(6), "{}", stderr(&run));
    assert!(stderr(&run).contains("not keyed"), "{}", stderr(&run));

    // Throttling and a missing permission.
    *proxy.fault.lock().unwrap() = Fault::Throttle;
    let run = probe(
        &proxy.url,
        &["lag", "--store", "dynamodb", "--table", &t, "--force"],
    )
    .await;
    assert_eq!(run.status.code(), Some(5), "{}", stderr(&run));
    *proxy.fault.lock().unwrap() = Fault::Deny;
    let run = probe(
        &proxy.url,
        &["lag", "--store", "dynamodb", "--table", &t, "--force"],
    )
    .await;
    assert_eq!(run.status.code(), Some(4), "{}", stderr(&run));

    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = probe(
        &format!("http://127.0.0.1:{port}"),
        &["lag", "--store", "dynamodb", "--table", &t],
    )
    .await;
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    assert!(stderr(&run).contains("cannot reach"), "{}", stderr(&run));
}

async fn aws_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "ryw-probe-tests",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Ctrl-C: the probe stops, removes its items, keeps what it gathered (marked partial) and exits
/// 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_keeps_what_was_gathered_and_cleans_up() {
    let Some(moto) = endpoint() else { return };
    let t = table();
    let out = temp("interrupted.json");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ryw-probe"))
        .args([
            "lag",
            "--store",
            "dynamodb",
            "--table",
            &t,
            "--create",
            "--writes",
            "400",
            "--concurrency",
            "4",
            "--delays",
            "0,200,1000",
            "--json",
            out.to_str().unwrap(),
            "--endpoint-url",
            &moto,
            "--quiet",
        ])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(status.status.code(), Some(130), "{}", stderr(&status));
    assert!(
        stderr(&status).contains("interrupted"),
        "{}",
        stderr(&status)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["partial"], true);
    let samples = doc["t_visibility"][0]["samples"].as_u64().unwrap();
    assert!(samples > 0 && samples < 400, "{samples}");
    let client = aws_client(&moto).await;
    let left = client
        .scan()
        .table_name(&t)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(left.count(), 0, "the probe's items were removed");
}
