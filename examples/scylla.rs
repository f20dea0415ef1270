//! The quickstart scenario on ScyllaDB (or Cassandra): users post and read back their posts
//! through app instances that share nothing but the session token, with and without ryw.
//!
//! ```text
//! SCYLLA_URI=127.0.0.1:9042 cargo run --features scylla --example scylla
//! ```
//!
//! It creates the keyspace `ryw_quickstart` (replication factor 3, or 1 on a one-node cluster)
//! and the table `posts`, and drops the table at the end. Reads without ryw run at `LOCAL_ONE`,
//! as a latency-minded service would; through ryw they also start at `LOCAL_ONE`, are verified
//! by `WRITETIME`, and re-read at `LOCAL_QUORUM` on a miss. On one node nothing is ever stale; on
//! a multi-node cluster under write load the plain mode shows stale reads and ryw does not.
//!
//! `ryw::Session` (the user's read-your-writes session) and the driver's
//! `scylla::client::session::Session` (the connection pool) share a name: the driver's is imported
//! as `ScyllaSession`.

use ryw::{FenceConfig, ReadYourWritesLayer, Session};
use ryw_scylla::{ScyllaAdapter, ScyllaRequest, ScyllaService};
use scylla::client::session::Session as ScyllaSession;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, Statement};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

const USERS: usize = 8;
const INSTANCES: usize = 3;
const POSTS_PER_USER: usize = 10;

#[derive(Default)]
struct Tally {
    stale: usize,
    reads: usize,
    escalated: usize,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(uri) = std::env::var("SCYLLA_URI") else {
        eprintln!("set SCYLLA_URI (host:port of a ScyllaDB or Cassandra node), e.g.\n  SCYLLA_URI=127.0.0.1:9042 cargo run --features scylla --example scylla");
        std::process::exit(2);
    };
    let driver = SessionBuilder::new().known_node(&uri).build().await?;
    let nodes = driver.get_cluster_state().get_nodes_info().len();
    let rf = nodes.min(3);
    driver
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS ryw_quickstart WITH replication = \
                 {{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
            ),
            (),
        )
        .await?;
    driver
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS ryw_quickstart.posts \
             (user_id text PRIMARY KEY, body text)",
            (),
        )
        .await?;
    let driver = Arc::new(driver);
    println!(
        "{USERS} users x {POSTS_PER_USER} posts, each read back at once through a random one of \
         {INSTANCES} instances ({nodes} node(s), replication factor {rf})\n"
    );
    println!(
        "{:<44} {:>12} {:>16} {:>10} {:>10}",
        "mode", "stale reads", "quorum re-reads", "p50 read", "p99 read"
    );
    for ryw_on in [false, true] {
        let tally = run(&driver, ryw_on).await?;
        let mut l = tally.latencies.clone();
        l.sort();
        let pct = |p: f64| l[((l.len() - 1) as f64 * p) as usize];
        println!(
            "{:<44} {:>12} {:>15.0}% {:>7.2} ms {:>7.2} ms",
            if ryw_on {
                "ryw (LOCAL_ONE, WRITETIME check, quorum)"
            } else {
                "LOCAL_ONE reads, no session layer"
            },
            tally.stale,
            100.0 * tally.escalated as f64 / tally.reads as f64,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
        );
    }
    driver
        .query_unpaged("DROP TABLE IF EXISTS ryw_quickstart.posts", ())
        .await?;
    Ok(())
}

async fn run(
    driver: &Arc<ScyllaSession>,
    ryw_on: bool,
) -> Result<Tally, Box<dyn std::error::Error>> {
    let layer = ReadYourWritesLayer::new(ScyllaAdapter::new())
        .fence(FenceConfig::verify_then_escalate(0, Duration::ZERO));
    // Instances share the cluster, nothing else: each has its own service and driver handle.
    let instances: Vec<_> = (0..INSTANCES)
        .map(|_| ScyllaService::new(driver.clone()))
        .collect();
    let mut tally = Tally::default();
    let mut tokens: Vec<String> = (0..USERS)
        .map(|_| Session::new().token().encode().expect("token"))
        .collect();
    let mut pick = 0usize;
    for round in 0..POSTS_PER_USER {
        for (user, token) in tokens.iter_mut().enumerate() {
            let key = format!("{}/user{user}", if ryw_on { "ryw" } else { "plain" });
            let body = format!("post {round}");
            pick = (pick * 7 + user + 1) % INSTANCES;
            let writer = instances[pick].clone();
            pick = (pick * 7 + user + 2) % INSTANCES;
            let reader = instances[pick].clone();
            let insert = "INSERT INTO ryw_quickstart.posts (user_id, body) VALUES (?, ?)";
            let select = "SELECT body, WRITETIME(body) FROM ryw_quickstart.posts WHERE user_id = ?";
            let started;
            let seen: Option<String> = if ryw_on {
                let session = Session::from_encoded(token)?;
                let write = ScyllaRequest::write(insert, (key.clone(), body.clone()))
                    .row(key.as_bytes(), b"");
                layer.layer(writer).oneshot(session.request(write)).await?;
                *token = session.token().encode()?;
                // The next page load: another instance, given only the token.
                let session = Session::from_encoded(token)?;
                let read = ScyllaRequest::read(select, (key.clone(),))
                    .row(key.as_bytes(), b"")
                    .track("body");
                started = Instant::now();
                let response = layer.layer(reader).oneshot(session.request(read)).await?;
                *token = session.token().encode()?;
                tally.escalated += usize::from(response.attempts() > 1);
                response
                    .get_ref()
                    .rows()
                    .and_then(|r| r.maybe_first_row::<(String, i64)>().ok().flatten())
                    .map(|(b, _)| b)
            } else {
                let mut write = Statement::new(insert);
                write.set_consistency(Consistency::LocalQuorum);
                writer.session().query_unpaged(write, (&key, &body)).await?;
                let mut read = Statement::new(select);
                read.set_consistency(Consistency::LocalOne);
                started = Instant::now();
                reader
                    .session()
                    .query_unpaged(read, (&key,))
                    .await?
                    .into_rows_result()?
                    .maybe_first_row::<(String, i64)>()?
                    .map(|(b, _)| b)
            };
            tally.latencies.push(started.elapsed());
            tally.reads += 1;
            if seen.as_deref() != Some(body.as_str()) {
                tally.stale += 1;
            }
        }
    }
    Ok(tally)
}
