//! The quickstart scenario on MongoDB: users post and read back their posts through app
//! instances that share nothing but the session token, with and without ryw.
//!
//! ```text
//! MONGODB_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0' cargo run --features mongodb --example mongodb
//! ```
//!
//! Each instance has its own `mongodb::Client` (as separate processes would); reads prefer
//! secondaries. Without ryw, a read on a lagging secondary can miss the post just written; with
//! ryw the instance's causal session is advanced from the token and the secondary waits
//! (`afterClusterTime`). It uses the database `ryw_quickstart` and drops it at the end.

use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, ReadPreference, SelectionCriteria};
use mongodb::Client;
use ryw::{FenceConfig, ReadYourWritesLayer, Session};
use ryw_mongodb::{MongoAdapter, MongoRequest, MongoService};
use std::time::Instant;
use tower::{Layer, ServiceExt};

const USERS: usize = 8;
const INSTANCES: usize = 3;
const POSTS_PER_USER: usize = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI")
        .map_err(|_| "set MONGODB_URI, for example mongodb://127.0.0.1:27017/?replicaSet=rs0")?;
    // Reads prefer secondaries: without ryw as the client's read preference, with ryw as the
    // adapter's (the layer's cheap reads).
    let mut options = ClientOptions::parse(&uri).await?;
    options.selection_criteria = Some(SelectionCriteria::ReadPreference(
        ReadPreference::SecondaryPreferred {
            options: Default::default(),
        },
    ));
    let mut clients = Vec::new();
    for _ in 0..INSTANCES {
        clients.push(Client::with_options(options.clone())?);
    }
    let adapter = MongoAdapter::new();
    let layer =
        ReadYourWritesLayer::new(adapter.documents::<Document>()).fence(FenceConfig::server_wait());

    println!("{USERS} users x {POSTS_PER_USER} posts, each read back at once through a random one of {INSTANCES} instances\n");
    println!(
        "{:<40} {:>12} {:>10} {:>10}",
        "mode", "stale reads", "p50 read", "p99 read"
    );
    for ryw_on in [false, true] {
        let coll = if ryw_on { "with_ryw" } else { "without" };
        let mut stale = 0;
        let mut latencies = Vec::new();
        let mut tokens: Vec<String> = (0..USERS)
            .map(|_| Session::new().token().encode().expect("token"))
            .collect();
        let mut pick = 0usize;
        for round in 0..POSTS_PER_USER {
            for (user, token) in tokens.iter_mut().enumerate() {
                pick = (pick * 7 + user + 1) % INSTANCES;
                let writer = MongoService::<Document>::new(&clients[pick], "ryw_quickstart", coll);
                pick = (pick * 7 + user + 2) % INSTANCES;
                let reader = MongoService::<Document>::new(&clients[pick], "ryw_quickstart", coll);
                let post = doc! { "user": user as i64, "round": round as i64 };
                let started;
                let found = if ryw_on {
                    let session = Session::from_encoded(token)?;
                    layer
                        .layer(writer)
                        .oneshot(session.request(MongoRequest::insert_one(post.clone())))
                        .await?;
                    *token = session.token().encode()?;
                    let session = Session::from_encoded(token)?;
                    started = Instant::now();
                    let read = layer
                        .layer(reader)
                        .oneshot(session.request(MongoRequest::find(post)))
                        .await?;
                    *token = session.token().encode()?;
                    read.get_ref().documents().len()
                } else {
                    writer
                        .oneshot(MongoRequest::insert_one(post.clone()))
                        .await?;
                    started = Instant::now();
                    reader
                        .oneshot(MongoRequest::find(post))
                        .await?
                        .documents()
                        .len()
                };
                latencies.push(started.elapsed());
                if found == 0 {
                    stale += 1;
                }
            }
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "{:<40} {:>12} {:>7.1} ms {:>7.1} ms",
            if ryw_on {
                "ryw (causal session from the token)"
            } else {
                "secondary-preferred, no session layer"
            },
            stale,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        );
    }
    clients[0].database("ryw_quickstart").drop().await?;
    // Let the driver finish its background work (ending sessions) while the runtime still runs:
    // without this, a driver task now and then panics at runtime shutdown (a send on the closed
    // connection pool; seen 1 run in 12 here).
    for client in clients {
        client.shutdown().await;
    }
    Ok(())
}
