//! Crashes for real: a child process appending writes to an outbox and replaying them against
//! SecantusDB is killed with SIGKILL at random points, again and again, and restarted on the same
//! outbox file. After the last restart drains the outbox, every write the child heard "deferred"
//! is applied exactly once, each session's in order, and nothing is applied twice.
//!
//! The child is this test binary, run with `RYW_OUTBOX_CHILD` set (the ignored test
//! `child_appends_and_replays_until_killed`). Needs `RYW_MONGODB_URI` (started by
//! `tests/run-all.sh`); without it, it prints that it skipped.

use mongodb::bson::{doc, Document};
use mongodb::Client;
use ryw::{ReadYourWritesLayer, Session};
use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const KILLS: u32 = 60;
const COLLECTION_ENV: &str = "RYW_OUTBOX_COLLECTION";

fn uri() -> Option<String> {
    match std::env::var("RYW_MONGODB_URI") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("RYW_REQUIRE_SERVERS").is_none(),
                "RYW_REQUIRE_SERVERS is set but RYW_MONGODB_URI is not"
            );
            eprintln!(
                "skipped: RYW_MONGODB_URI is not set (bash tests/run-all.sh starts SecantusDB)"
            );
            None
        }
    }
}

/// The child: one session per run, writing `$push` markers `0, 1, 2...` to its own document,
/// alternately deferring a few (the breaker held open: not sent) and draining the outbox, until
/// it is killed. Every write answered "deferred" is logged (fsync) to the acknowledgement file.
/// With `drain_only`, it drains the outbox and exits.
async fn child(uri: &str, dir: &Path, collection: &str, drain_only: bool) {
    let client = Client::with_uri_str(uri).await.unwrap();
    let adapter = MongoAdapter::new();
    let service: MongoService<Document> = MongoService::new(&client, "ryw", collection);
    let ryw = ReadYourWritesLayer::new(adapter.clone().documents()).layer(service);
    let outbox = Arc::new(Outbox::open(dir.join("outbox.redb"), OutboxConfig::default()).unwrap());
    let breaker = Arc::new(Breaker::new(1, Duration::from_secs(3600)));
    let mut replayer = Replayer::new(outbox.clone(), ryw.clone()).breaker(breaker.clone());
    if drain_only {
        replayer
            .drain_until_empty(Duration::from_millis(100))
            .await
            .unwrap();
        return;
    }
    let mut svc = OutboxLayer::new(outbox.clone(), adapter.documents())
        .breaker(breaker.clone())
        .layer(ryw);
    let session = Session::new();
    let sid = session.id().to_string();
    client
        .database("ryw")
        .collection::<Document>(collection)
        .insert_one(doc! { "_id": &sid, "log": [] })
        .await
        .unwrap();
    let mut acks = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("acks"))
        .unwrap();
    let mut i = 0u32;
    loop {
        // Defer three writes: the breaker says the store is down, so none is sent.
        breaker.failed();
        for _ in 0..3 {
            let out = svc
                .ready()
                .await
                .unwrap()
                .call(session.request(MongoRequest::update_one(
                    doc! { "_id": &sid },
                    doc! { "$push": { "log": i as i64 } },
                )))
                .await
                .unwrap();
            assert!(out.deferred().is_some());
            writeln!(acks, "{sid} {i}").unwrap();
            acks.sync_data().unwrap();
            i += 1;
        }
        // Replay them (and whatever earlier runs left).
        replayer.drain().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child of writes_survive_sigkill_at_random_points; run by it"]
async fn child_appends_and_replays_until_killed() {
    let dir = std::env::var("RYW_OUTBOX_CHILD").expect("run by the parent test");
    let uri = std::env::var("RYW_MONGODB_URI").unwrap();
    let collection = std::env::var(COLLECTION_ENV).unwrap();
    let drain_only = std::env::var_os("RYW_OUTBOX_DRAIN_ONLY").is_some();
    child(&uri, Path::new(&dir), &collection, drain_only).await;
}

fn spawn_child(dir: &Path, uri: &str, collection: &str, drain_only: bool) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        "child_appends_and_replays_until_killed",
        "--test-threads",
        "1",
    ])
    .env("RYW_OUTBOX_CHILD", dir)
    .env("RYW_MONGODB_URI", uri)
    .env(COLLECTION_ENV, collection)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if drain_only {
        cmd.env("RYW_OUTBOX_DRAIN_ONLY", "1");
    }
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_sigkill_at_random_points() {
    let Some(uri) = uri() else { return };
    let dir = std::env::temp_dir().join(format!("ryw-outbox-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let collection = format!("crash_{}", std::process::id());
    // A simple seeded generator for the kill times: reproducible per process id.
    let mut x = u64::from(std::process::id()) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..KILLS {
        let mut child = spawn_child(&dir, &uri, &collection, false);
        // Connecting takes a few hundred milliseconds; kill somewhere in the work after it.
        let wait = 300 + next() % 700;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // The last restart drains the outbox and exits.
    let status = spawn_child(&dir, &uri, &collection, true).wait().unwrap();
    assert!(status.success(), "the draining child failed: {status}");

    let outbox = Outbox::open(dir.join("outbox.redb"), OutboxConfig::default()).unwrap();
    assert!(outbox.is_empty());
    assert!(
        outbox.dead_letters().unwrap().is_empty(),
        "{:?}",
        outbox.dead_letters()
    );
    drop(outbox);

    let acks = std::fs::read_to_string(dir.join("acks")).unwrap();
    let mut acked: BTreeMap<String, HashSet<i64>> = BTreeMap::new();
    for line in acks.lines() {
        // A line cut by the kill is not an acknowledgement.
        let mut parts = line.split(' ');
        if let (Some(s), Some(Ok(i)), None) =
            (parts.next(), parts.next().map(str::parse), parts.next())
        {
            acked.entry(s.to_owned()).or_default().insert(i);
        }
    }
    let client = Client::with_uri_str(&uri).await.unwrap();
    let docs = all(client.database("ryw").collection::<Document>(&collection)).await;
    let mut total_acked = 0;
    let mut applied = 0;
    for d in &docs {
        let sid = d.get_str("_id").unwrap();
        let log: Vec<i64> = d
            .get_array("log")
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        applied += log.len();
        assert!(
            log.windows(2).all(|w| w[0] < w[1]),
            "once each, in order: {sid} {log:?}"
        );
        let mine = acked.get(sid).cloned().unwrap_or_default();
        total_acked += mine.len();
        for i in &mine {
            assert!(
                log.contains(i),
                "deferred write {sid} {i} was lost: {log:?}"
            );
        }
    }
    assert!(total_acked > 0, "the children deferred writes");
    eprintln!(
        "{KILLS} kills: {} sessions, {total_acked} writes acknowledged as deferred, {applied} applied, none twice, none lost",
        docs.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every document of `collection`.
async fn all(collection: mongodb::Collection<Document>) -> Vec<Document> {
    let mut cursor = collection.find(doc! {}).await.unwrap();
    let mut out = Vec::new();
    while cursor.advance().await.unwrap() {
        out.push(cursor.deserialize_current().unwrap());
    }
    out
}
