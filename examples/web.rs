//! Two app instances on two loopback ports that share nothing but the signing key (and the
//! store), and a client that alternates between them: a user posts through one instance, reads
//! through the other, and sees the post, although that instance's replica has not caught up. Her
//! second device, with a token of its own, sees it too: the instances share her principal's
//! record ([`ryw::principal`]).
//!
//! ```text
//! cargo run --example web
//! ```
//!
//! By default the store is the embedded simulated one, in real time: a primary and two replicas
//! lagging 300 ms; instance A reads replica 0, instance B replica 1. With `DYNAMODB_ENDPOINT` set
//! (and the `dynamodb` feature), it is DynamoDB there (moto, DynamoDB Local or AWS), in a table
//! `ryw_web_<pid>` created and deleted by the example; emulators never serve a stale read, so
//! there the stranger of step 3 sees the post too.
//!
//! ```text
//! DYNAMODB_ENDPOINT=http://127.0.0.1:8000 cargo run --features dynamodb --example web
//! ```
//!
//! The session travels in the `ryw-session` header, signed and bound to the user (`x-user`
//! stands in for authentication).

#[path = "web/app.rs"]
mod app;

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ryw::principal::PrincipalRecords;
use ryw::record::InMemoryRecordStore;
use ryw::signing::{KeyRing, SigningKey, TokenAuthority};
use ryw::ReadYourWritesLayer;
use ryw_http::{BadTokenPolicy, ClientSessionLayer, DEFAULT_HEADER};
use ryw_sim::{LagModel, LatencyModel, SimAdapter, SimConfig, SimStore};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let store = SimStore::new(
        SimConfig::default()
            .seed(2026)
            .replicas(2)
            .lag(LagModel::new(Duration::from_millis(300), Duration::ZERO))
            .latency(LatencyModel {
                replica: Duration::from_millis(1),
                primary: Duration::from_millis(5),
                jitter: Duration::ZERO,
            }),
    );
    // Each instance loads the same key from its configuration; here, one random key.
    let key = SigningKey::generate(1);
    let authority = || {
        Arc::new(
            TokenAuthority::new(KeyRing::new(key.clone())).token_ttl(Duration::from_secs(3600)),
        )
    };
    let sim_instance = |replica: usize| {
        let service = ServiceBuilder::new()
            .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
            .service(store.client(replica));
        app::sim_posts(service)
    };
    let (posts_a, posts_b, dynamo) = match std::env::var("DYNAMODB_ENDPOINT") {
        #[cfg(feature = "dynamodb")]
        Ok(endpoint) => {
            let (a, b, cleanup) = dynamo::instances(&endpoint).await?;
            println!("store: DynamoDB at {endpoint} (table {})", cleanup.1);
            (a, b, Some(cleanup))
        }
        #[cfg(not(feature = "dynamodb"))]
        Ok(_) => {
            println!("DYNAMODB_ENDPOINT is set, but this build has no DynamoDB: run with --features dynamodb");
            println!("store: simulated, replicas lag the primary by 300 ms");
            (sim_instance(0), sim_instance(1), None::<()>)
        }
        Err(_) => {
            println!("store: simulated, replicas lag the primary by 300 ms");
            (sim_instance(0), sim_instance(1), None)
        }
    };
    // Users' records, shared by the instances: in production a DynamoDB table or a MongoDB
    // collection (`DynamoRecordStore`, `MongoRecordStore`), and a fingerprint key every instance
    // loads from its configuration and keeps.
    let records = Arc::new(InMemoryRecordStore::new());
    let fingerprints = SigningKey::generate(0);
    let instance = |posts| {
        let principals = PrincipalRecords::new(records.clone(), fingerprints.clone());
        app::router(
            posts,
            authority(),
            BadTokenPolicy::Reject,
            Some(Arc::new(principals)),
        )
    };
    let a = app::serve(instance(posts_a)).await?;
    let b = app::serve(instance(posts_b)).await?;
    println!("instance A on http://{a}, instance B on http://{b}\n");

    let session = ClientSessionLayer::new();
    let mut alice = ServiceBuilder::new()
        .layer(session.clone())
        .service(Client::builder(TokioExecutor::new()).build_http::<String>());
    let mut stranger = Client::builder(TokioExecutor::new()).build_http::<String>();
    // Her laptop: the same user, a session (and token) of its own.
    let mut laptop = ServiceBuilder::new()
        .layer(ClientSessionLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<String>());

    let request = |method: &str, addr, path: &str, body: &str, user: Option<&str>| {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(user) = user {
            builder = builder.header("x-user", user);
        }
        builder.body(body.to_owned()).expect("valid request")
    };

    #[derive(Clone, Copy)]
    enum Who {
        Alice,
        AlicesLaptop,
        Stranger,
    }
    let steps: Vec<(&str, http::Request<String>, Who)> = vec![
        (
            "1. alice posts through A",
            request("PUT", a, "/posts/7", "42", Some("alice")),
            Who::Alice,
        ),
        (
            "2. alice reads it through B",
            request("GET", b, "/posts/7", "", Some("alice")),
            Who::Alice,
        ),
        (
            "3. alice's laptop, a second device with no token in common, reads through B",
            request("GET", b, "/posts/7", "", Some("alice")),
            Who::AlicesLaptop,
        ),
        (
            "4. someone without her token reads through B",
            request("GET", b, "/posts/7", "", None),
            Who::Stranger,
        ),
        (
            "5. alice updates through B",
            request("PUT", b, "/posts/7", "43", Some("alice")),
            Who::Alice,
        ),
        (
            "6. alice reads through A",
            request("GET", a, "/posts/7", "", Some("alice")),
            Who::Alice,
        ),
    ];
    for (what, request, who) in steps {
        let response = match who {
            Who::Alice => alice.ready().await?.call(request).await?,
            Who::AlicesLaptop => laptop.ready().await?.call(request).await?,
            Who::Stranger => stranger.ready().await?.call(request).await?,
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("{what}\n   {status} {}", String::from_utf8_lossy(&body));
    }
    let token = session.tokens().pop().unwrap_or_default();
    println!(
        "\nalice's token: {} characters, signed, bound to her",
        token.len()
    );

    // Her token presented by someone else is refused, with a typed reason.
    let mut mallory = request("GET", a, "/posts/7", "", Some("mallory"));
    mallory.headers_mut().insert(DEFAULT_HEADER, token.parse()?);
    let response = stranger.ready().await?.call(mallory).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "7. mallory presents alice's token\n   {status} {}",
        String::from_utf8_lossy(&body)
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = stranger
        .ready()
        .await?
        .call(request("GET", b, "/posts/7", "", None))
        .await?;
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "8. 400 ms later, everyone sees it\n   {}",
        String::from_utf8_lossy(&body)
    );
    #[cfg(feature = "dynamodb")]
    if let Some((client, table)) = dynamo {
        client.delete_table().table_name(&table).send().await?;
    }
    #[cfg(not(feature = "dynamodb"))]
    let _ = dynamo;
    Ok(())
}

#[cfg(feature = "dynamodb")]
#[path = "shared/dynamodb.rs"]
mod shared;

#[cfg(feature = "dynamodb")]
mod dynamo {
    use super::{app, shared, BoxError};
    use aws_sdk_dynamodb::Client;

    /// Two instances, each with its own client, over a new table; and what to delete at the end.
    pub(super) async fn instances(
        endpoint: &str,
    ) -> Result<(app::PostStore, app::PostStore, (Client, String)), BoxError> {
        let admin = shared::client(Some(endpoint)).await;
        let table = format!("ryw_web_{}", std::process::id());
        shared::create_table(&admin, &table).await?;
        let a = app::dynamo::DynamoPosts::new(shared::client(Some(endpoint)).await, &table);
        let b = app::dynamo::DynamoPosts::new(shared::client(Some(endpoint)).await, &table);
        Ok((
            std::sync::Arc::new(a),
            std::sync::Arc::new(b),
            (admin, table),
        ))
    }
}
