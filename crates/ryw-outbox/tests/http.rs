//! A deferred write over HTTP: behind `ryw-http`'s server layer, a handler answers a write the
//! outbox kept with `202 Accepted` and `Deferred::visibility()` in the response extensions, and
//! the client reads `ryw-visibility: queued; write=N`, on the write and on reads of what it wrote,
//! until the replay; then `guaranteed`.

mod common;

use common::TempDir;
use http::{Request, Response, StatusCode};
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::{ReadYourWritesLayer, Session};
use ryw_http::{ServerSessionLayer, DEFAULT_HEADER, VISIBILITY_HEADER};
use ryw_outbox::{Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_deferred_write_is_202_and_queued_until_replayed() {
    let dir = TempDir::new();
    let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
        start: Duration::ZERO,
        end: Duration::from_secs(10),
        kind: PartitionKind::PrimaryUnreachable,
    }));
    let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let data = OutboxLayer::new(outbox.clone(), SimAdapter::new()).layer(ryw.clone());

    // The handler: `PUT k=v` or `GET k`, through the outbox and session layers.
    let handler = service_fn(move |request: Request<String>| {
        let mut data = data.clone();
        async move {
            let session = request.extensions().get::<Session>().unwrap().clone();
            let body = request.body().clone();
            let store_request = match body.split_once('=') {
                Some((k, v)) => SimRequest::put(k, v.parse().unwrap()),
                None => SimRequest::get(body.as_str()),
            };
            let written = data
                .ready()
                .await
                .unwrap()
                .call(session.request(store_request))
                .await
                .unwrap();
            let mut response = Response::new(String::new());
            match written {
                Written::Applied(r) => {
                    *response.body_mut() = format!("{:?}", r.get_ref().value());
                    response.extensions_mut().insert(r.visibility().clone());
                }
                Written::Deferred(d) => {
                    *response.status_mut() = StatusCode::ACCEPTED;
                    response.extensions_mut().insert(d.visibility());
                }
                other => unreachable!("one request, no copies: {other:?}"),
            }
            Ok::<_, Infallible>(response)
        }
    });
    let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [7u8; 32]).unwrap()));
    let mut http = ServerSessionLayer::new(authority).layer(handler);
    let response = http
        .ready()
        .await
        .unwrap()
        .call(Request::new("k=7".to_owned()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()[VISIBILITY_HEADER], "queued; write=1");
    let token = response.headers()[DEFAULT_HEADER]
        .to_str()
        .unwrap()
        .to_owned();

    let read = |token: String| {
        Request::builder()
            .header(DEFAULT_HEADER, token)
            .body("k".to_owned())
            .unwrap()
    };
    let response = http
        .ready()
        .await
        .unwrap()
        .call(read(token.clone()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[VISIBILITY_HEADER], "queued; write=1");

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(Replayer::new(outbox, ryw).drain().await.unwrap().applied, 1);
    let response = http.ready().await.unwrap().call(read(token)).await.unwrap();
    assert!(
        response.headers()[VISIBILITY_HEADER]
            .to_str()
            .unwrap()
            .starts_with("guaranteed"),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.body(), "Some(7)");
}
