//! Writes while the store is down: the outbox keeps them durably and replays each exactly once
//! when the store comes back, in each session's order. On the embedded simulated store, in
//! simulated time: the primary is unreachable from 2 s to 12 s.
//!
//! ```text
//! cargo run --example outbox
//! ```

use ryw::{ReadYourWritesLayer, Session};
use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    let store = SimStore::new(
        SimConfig::default()
            .seed(7)
            .replicas(2)
            .partition(Partition {
                start: Duration::from_secs(2),
                end: Duration::from_secs(12),
                kind: PartitionKind::PrimaryUnreachable,
            }),
    );
    let dir = std::env::temp_dir().join(format!("ryw-outbox-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let outbox = Arc::new(
        Outbox::open(dir.join("outbox.redb"), OutboxConfig::default()).expect("the outbox opens"),
    );
    // Two failures open the breaker; it lets one write probe the store every second.
    let breaker = Arc::new(Breaker::new(2, Duration::from_secs(1)));
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let mut service = OutboxLayer::new(outbox.clone(), SimAdapter::new())
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let mut replayer = Replayer::new(outbox.clone(), ryw).breaker(breaker);

    let users: Vec<Session> = (0..3).map(|_| Session::new()).collect();
    let (mut applied, mut deferred) = (0, 0);
    let mut made: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    println!(
        "ryw outbox: 3 users write every 500 ms for 16 s; the primary is down from 2 s to 12 s"
    );
    for round in 0..32u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, user) in users.iter().enumerate() {
            let key = format!("user{i}/draft");
            let value = round * 10 + i as u64;
            let request = user.request(SimRequest::put(key.as_str(), value));
            match service.ready().await.expect("ready").call(request).await {
                Ok(Written::Applied(_)) => applied += 1,
                Ok(Written::Deferred(d)) => {
                    deferred += 1;
                    if deferred <= 3 {
                        println!(
                            "  t={:>5.1}s {key} = {value}: deferred ({}), queued as #{}",
                            store.elapsed().as_secs_f64(),
                            d.reason.as_str(),
                            d.seq
                        );
                    }
                }
                Ok(other) => println!("  {other:?}"),
                Err(e) => {
                    println!("  {key} = {value}: failed: {e}");
                    continue;
                }
            }
            made.entry(key).or_default().push(value);
        }
        // A background task would do this; here, every 2 s.
        if round % 4 == 3 {
            let pass = replayer.drain().await.expect("the outbox is readable");
            if pass.applied > 0 {
                println!(
                    "  t={:>5.1}s replayer: {} queued writes applied, {} left",
                    store.elapsed().as_secs_f64(),
                    pass.applied,
                    pass.left
                );
            }
        }
    }
    let last = replayer
        .drain_until_empty(Duration::from_millis(500))
        .await
        .expect("the outbox drains");
    println!(
        "{applied} writes applied at once, {deferred} deferred; the last pass applied {}; \
         {} dead letters",
        last.applied,
        outbox.dead_letter_count().unwrap_or(0)
    );

    // Every acknowledged write is in the store's log exactly once, in each user's order.
    let log = store.log();
    let mut ok = true;
    for (key, values) in &made {
        let applied: Vec<u64> = log
            .iter()
            .filter(|e| e.key.as_ref() == key.as_str())
            .map(|e| e.value)
            .collect();
        if &applied != values {
            ok = false;
            println!("  {key}: made {values:?}, applied {applied:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if ok && deferred > 0 {
        println!("every write acknowledged (applied or deferred) applied exactly once, in order");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: a write was lost, duplicated or reordered");
        ExitCode::FAILURE
    }
}
