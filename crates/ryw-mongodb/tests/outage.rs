//! A real outage of SecantusDB with `ryw-outbox`: the server, on an on-disk storage path, is
//! stopped; writes made meanwhile are deferred; it is restarted on the same path; the replayer
//! applies each deferred write exactly once, in its session's order.
//!
//! The test starts its own SecantusDB (`RYW_SECANTUS_BIN`, set by `tests/run-all.sh`); without it
//! it prints that it skipped.

use mongodb::bson::{doc, Document};
use mongodb::Client;
use ryw::{ReadYourWritesLayer, Session};
use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
use ryw_outbox::{Breaker, DeferReason, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn secantus_bin() -> Option<PathBuf> {
    match std::env::var_os("RYW_SECANTUS_BIN") {
        Some(b) if !b.is_empty() => Some(b.into()),
        _ => {
            assert!(
                std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
                "RYW_REQUIRE_SERVERS is set but RYW_SECANTUS_BIN is not"
            );
            eprintln!("skipped: RYW_SECANTUS_BIN is not set (bash tests/run-all.sh sets it)");
            None
        }
    }
}

/// A SecantusDB process on `port`, storing in `dir`; killed when dropped.
struct Server(Child);

impl Server {
    fn start(bin: &Path, port: u16, dir: &Path) -> Server {
        let log = dir.join(format!(
            "secantus-{}.log",
            std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()
        ));
        // Held by `Server` at once: dropped (killed and waited for) on every path.
        let server = Server(
            Command::new(bin)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--storage-path",
                ])
                .arg(dir.join("data"))
                .arg("--enable-test-commands")
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::from(
                    std::fs::File::create(log.with_extension("err")).unwrap(),
                ))
                .spawn()
                .expect("SecantusDB starts"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
            if out.contains("listening on") {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "SecantusDB did not start: {out}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server as an operator would (SIGTERM), and waits for it to exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_server_outage_are_deferred_then_applied_once_in_order() {
    let Some(bin) = secantus_bin() else { return };
    let dir = std::env::temp_dir().join(format!("ryw-mongo-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let server = Server::start(&bin, port, &dir);
    let uri = format!(
        "mongodb://127.0.0.1:{port}/?replicaSet=secantus&serverSelectionTimeoutMS=1000\
         &connectTimeoutMS=1000&heartbeatFrequencyMS=500"
    );
    let client = Client::with_uri_str(&uri).await.unwrap();
    let adapter = MongoAdapter::new();
    let service: MongoService<Document> = MongoService::new(&client, "ryw", "outage");
    let ryw = ReadYourWritesLayer::new(adapter.clone().documents()).layer(service);
    let outbox = Arc::new(Outbox::open(dir.join("outbox.redb"), OutboxConfig::default()).unwrap());
    // One failure takes the store to be down.
    let breaker = Arc::new(Breaker::new(1, Duration::from_secs(600)));
    let mut svc = OutboxLayer::new(outbox.clone(), adapter.clone().documents())
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let (a, b) = (Session::new(), Session::new());

    let first = svc
        .ready()
        .await
        .unwrap()
        .call(a.request(MongoRequest::insert_one(
            doc! { "_id": 1, "n": 0, "log": [] },
        )))
        .await
        .unwrap();
    assert!(matches!(first, Written::Applied(_)), "{first:?}");

    server.stop();
    let writes = [
        (
            &a,
            MongoRequest::update_one(
                doc! { "_id": 1 },
                doc! { "$inc": { "n": 1 }, "$push": { "log": "a1" } },
            ),
        ),
        (
            &a,
            MongoRequest::update_one(doc! { "_id": 1 }, doc! { "$push": { "log": "a2" } }),
        ),
        (&b, MongoRequest::insert_one(doc! { "_id": 2, "by": "b" })),
        (
            &a,
            MongoRequest::update_one(doc! { "_id": 1 }, doc! { "$push": { "log": "a3" } }),
        ),
    ];
    let mut reasons = Vec::new();
    for (session, request) in writes {
        let out = svc
            .ready()
            .await
            .unwrap()
            .call(session.request(request))
            .await
            .unwrap();
        reasons.push(
            out.deferred()
                .expect("deferred while the server is down")
                .reason,
        );
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
    assert_eq!(outbox.len(), 4);

    let queued: Vec<_> = outbox
        .pending()
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();

    // The server comes back on the same data; the outbox drains.
    let server = Server::start(&bin, port, &dir);
    let mut replayer = Replayer::new(outbox.clone(), ryw.clone()).breaker(breaker);
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        replayer.drain_until_empty(Duration::from_millis(500)),
    )
    .await
    .expect("drained within two minutes")
    .unwrap();
    assert_eq!((report.applied, report.dead_lettered), (4, 0), "{report:?}");

    let collection = client.database("ryw").collection::<Document>("outage");
    let one = collection
        .find_one(doc! { "_id": 1 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.get_i32("n").unwrap(), 1, "the $inc applied once: {one}");
    let log: Vec<&str> = one
        .get_array("log")
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(log, ["a1", "a2", "a3"], "each once, in A's order");
    assert!(collection
        .find_one(doc! { "_id": 2 })
        .await
        .unwrap()
        .is_some());

    // The same entries queued again (a crash between each apply and its removal): recognised
    // by their write ids, applied once.
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
        replayer.drain_until_empty(Duration::from_millis(500)),
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
    let one = collection
        .find_one(doc! { "_id": 1 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.get_i32("n").unwrap(), 1, "{one}");
    assert_eq!(one.get_array("log").unwrap().len(), 3, "{one}");

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
