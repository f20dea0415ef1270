//! A real outage of DynamoDB with `ryw-outbox`: moto behind a loopback relay that the test cuts
//! (every connection dropped, new ones refused) and restores (moto kept its data). Writes made
//! during the cut are deferred; after it, the replayer applies each exactly once, in its
//! session's order; the same entries queued again are recognised by their write ids.
//!
//! Needs `RYW_DYNAMODB_ENDPOINT` (moto, started by `tests/run-all.sh`); without it, it prints that
//! it skipped.

#[path = "moto/support.rs"]
mod support;

use aws_sdk_dynamodb::operation::{put_item::PutItemInput, update_item::UpdateItemInput};
use aws_sdk_dynamodb::Client;
use ryw::{ReadYourWritesLayer, Session};
use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
use ryw_outbox::{Breaker, DeferReason, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{endpoint, fresh_table, n, peek, s};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};

/// A TCP relay to moto that can be cut and restored.
struct Relay {
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    url: String,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (flag, open) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    // Cut: the connection is dropped at once.
                    continue;
                }
                let target = target.clone();
                open.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Relay {
            up,
            connections,
            url,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A client through the relay: one SDK attempt of at most a second (the session layer retries).
fn client_through(url: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "ryw-tests",
        ))
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_millis(500))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_cut_are_deferred_then_applied_once_in_order() {
    let Some(moto) = endpoint() else { return };
    let direct = support::client(&moto);
    let table = fresh_table(&direct).await;
    let relay = Relay::start(&moto).await;
    let client = client_through(&relay.url);
    let adapter = DynamoAdapter::new().table(TableSchema::new(&table, "pk"));
    let ryw = ReadYourWritesLayer::new(adapter.clone()).layer(DynamoService::new(client));
    let dir = std::env::temp_dir().join(format!("ryw-dynamo-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let outbox = Arc::new(Outbox::open(dir.join("outbox.redb"), OutboxConfig::default()).unwrap());
    let breaker = Arc::new(Breaker::new(1, Duration::from_secs(600)));
    let mut svc = OutboxLayer::new(outbox.clone(), adapter)
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let (a, b) = (Session::new(), Session::new());

    let create: DynamoRequest = PutItemInput::builder()
        .table_name(&table)
        .item("pk", s("counter"))
        .item("hits", n(0))
        .into();
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(create))
        .await
        .unwrap();
    assert!(matches!(first, Written::Applied(_)), "{first:?}");

    relay.cut();
    let inc = |by: i64| -> DynamoRequest {
        UpdateItemInput::builder()
            .table_name(&table)
            .key("pk", s("counter"))
            .update_expression("SET hits = hits + :by, last_by = :by")
            .expression_attribute_values(":by", n(by))
            .into()
    };
    let other: DynamoRequest = PutItemInput::builder()
        .table_name(&table)
        .item("pk", s("b"))
        .item("by", s("b"))
        .into();
    let mut reasons = Vec::new();
    for (session, request) in [(&a, inc(1)), (&a, inc(10)), (&b, other), (&a, inc(100))] {
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await
            .unwrap();
        reasons.push(out.deferred().expect("deferred during the cut").reason);
    }
    assert_eq!(
        reasons,
        [
            DeferReason::Failed,
            DeferReason::Behind,
            DeferReason::StoreDown,
            DeferReason::Behind
        ]
    );
    let queued: Vec<_> = outbox
        .pending()
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(queued.len(), 4);
    assert_eq!(
        peek(&direct, &table, "counter").await.unwrap()["hits"]
            .as_n()
            .unwrap(),
        "0",
        "nothing reached moto during the cut"
    );

    relay.restore();
    let mut replayer = Replayer::new(outbox.clone(), ryw.clone()).breaker(breaker);
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        replayer.drain_until_empty(Duration::from_millis(200)),
    )
    .await
    .expect("drained")
    .unwrap();
    assert_eq!(
        (report.applied, report.dead_lettered),
        (4, 0),
        "{report:?} {:?}",
        outbox
            .dead_letters()
            .unwrap()
            .iter()
            .map(|l| &l.reason)
            .collect::<Vec<_>>()
    );
    let counter = peek(&direct, &table, "counter").await.unwrap();
    assert_eq!(
        counter["hits"].as_n().unwrap(),
        "111",
        "each increment once"
    );
    assert_eq!(counter["last_by"].as_n().unwrap(), "100", "in A's order");
    assert!(peek(&direct, &table, "b").await.is_some());

    // Each replayed write left its id on the item: what recognises a second replay.
    for e in queued.iter().filter(|e| e.write_id.session == a.id()) {
        let id = e.write_id.to_string();
        assert!(
            counter.values().any(|v| v.as_s().is_ok_and(|s| *s == id)),
            "{id} on {counter:?}"
        );
    }
    // The same entries queued again (a crash between each apply and its removal): recognised.
    // As the file holds them once sent: marked as possibly applied (`Outbox::mark_sent`).
    for entry in &queued {
        let sent = ryw_outbox::entry::Entry {
            may_have_applied: true,
            ..entry.clone()
        };
        outbox.append(&sent).unwrap();
    }
    let again = tokio::time::timeout(
        Duration::from_secs(60),
        replayer.drain_until_empty(Duration::from_millis(200)),
    )
    .await
    .expect("drained again")
    .unwrap();
    assert_eq!(
        (again.applied, again.dead_lettered),
        (4, 0),
        "{again:?} {:?}",
        outbox.dead_letters().unwrap()
    );
    let counter = peek(&direct, &table, "counter").await.unwrap();
    assert_eq!(counter["hits"].as_n().unwrap(), "111", "still once each");
    let _ = std::fs::remove_dir_all(&dir);
}
