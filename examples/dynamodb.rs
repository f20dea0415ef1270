//! The quickstart scenario on DynamoDB: users post and read back their posts through app
//! instances that share nothing but the session token, with and without ryw.
//!
//! ```text
//! DYNAMODB_ENDPOINT=http://127.0.0.1:8000 cargo run --features dynamodb --example dynamodb   # moto or DynamoDB Local
//! AWS_REGION=eu-west-1 cargo run --features dynamodb --example dynamodb                      # real AWS (credentials chain)
//! ```
//!
//! It creates the table `ryw_quickstart_<pid>` (on demand billing) and deletes it at the end.
//! Emulators never serve a stale read, so there both modes show no stale reads; on real
//! DynamoDB the eventually consistent mode does, now and then, and ryw does not.

#[path = "shared/dynamodb.rs"]
mod shared;

use aws_sdk_dynamodb::operation::{get_item::GetItemInput, put_item::PutItemInput};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use ryw::{ReadYourWritesLayer, Session};
use ryw_dynamodb::{DynamoAdapter, DynamoRequest, DynamoService, TableSchema};
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt};

const USERS: usize = 8;
const INSTANCES: usize = 3;
const POSTS_PER_USER: usize = 10;

#[derive(Default)]
struct Tally {
    stale: usize,
    reads: usize,
    consistent: usize,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = shared::client(std::env::var("DYNAMODB_ENDPOINT").ok().as_deref()).await;
    let table = format!("ryw_quickstart_{}", std::process::id());
    shared::create_table(&client, &table)
        .await
        .map_err(|e| e.to_string())?;

    println!(
        "{USERS} users x {POSTS_PER_USER} posts, each read back at once through a random one of \
         {INSTANCES} instances (table {table})\n"
    );
    println!(
        "{:<40} {:>12} {:>18} {:>10} {:>10}",
        "mode", "stale reads", "consistent reads", "p50 read", "p99 read"
    );
    let result = async {
        for ryw_on in [false, true] {
            let tally = run(&client, &table, ryw_on).await?;
            let mut l = tally.latencies.clone();
            l.sort();
            let pct = |p: f64| l[((l.len() - 1) as f64 * p) as usize];
            println!(
                "{:<40} {:>12} {:>17.0}% {:>7.1} ms {:>7.1} ms",
                if ryw_on {
                    "ryw (verify, re-read, escalate)"
                } else {
                    "eventually consistent, no session layer"
                },
                tally.stale,
                100.0 * tally.consistent as f64 / tally.reads as f64,
                pct(0.5).as_secs_f64() * 1e3,
                pct(0.99).as_secs_f64() * 1e3,
            );
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    client.delete_table().table_name(&table).send().await?;
    result
}

async fn run(
    client: &Client,
    table: &str,
    ryw_on: bool,
) -> Result<Tally, Box<dyn std::error::Error>> {
    let adapter = DynamoAdapter::new().table(TableSchema::new(table, "pk"));
    let layer = ReadYourWritesLayer::new(adapter.clone());
    let instances: Vec<_> = (0..INSTANCES)
        .map(|_| DynamoService::new(client.clone()))
        .collect();
    let mut tally = Tally::default();
    let mut users: Vec<(String, u64)> = (0..USERS)
        .map(|_| (Session::new().token().encode().expect("token"), 0))
        .collect();
    let mut pick = 0usize;
    for round in 0..POSTS_PER_USER {
        for (user, (token, _)) in users.iter_mut().enumerate() {
            let key = format!(
                "{}/user{user}/profile",
                if ryw_on { "ryw" } else { "plain" }
            );
            let body = format!("post {round}");
            let put: DynamoRequest = PutItemInput::builder()
                .table_name(table)
                .item("pk", AttributeValue::S(key.clone()))
                .item("body", AttributeValue::S(body.clone()))
                .into();
            let get: DynamoRequest = GetItemInput::builder()
                .table_name(table)
                .key("pk", AttributeValue::S(key.clone()))
                .into();
            pick = (pick * 7 + user + 1) % INSTANCES;
            let writer = instances[pick].clone();
            pick = (pick * 7 + user + 2) % INSTANCES;
            let reader = instances[pick].clone();
            let started;
            let response = if ryw_on {
                let session = Session::from_encoded(token)?;
                layer.layer(writer).oneshot(session.request(put)).await?;
                *token = session.token().encode()?;
                // The next page load: another instance, given only the token.
                let session = Session::from_encoded(token)?;
                started = Instant::now();
                let read = layer.layer(reader).oneshot(session.request(get)).await?;
                *token = session.token().encode()?;
                read.into_inner()
            } else {
                writer.oneshot(put).await?;
                started = Instant::now();
                reader.oneshot(get).await?
            };
            tally.latencies.push(started.elapsed());
            tally.reads += 1;
            tally.consistent += usize::from(response.is_consistent());
            let seen = response
                .item()
                .and_then(|i| i.get("body"))
                .and_then(|b| b.as_s().ok());
            if seen != Some(&body) {
                tally.stale += 1;
            }
        }
    }
    Ok(tally)
}
