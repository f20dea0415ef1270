//! What the server layer reports, read back through `ryw-otel` and the OpenTelemetry SDK's
//! in-memory exporter on a local provider: token sizes received and issued, refusals by code,
//! and the session store's live sessions and evictions.

use http::{Request, Response};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use ryw::signing::{SigningKey, TokenAuthority};
use ryw::InMemorySessionStore;
use ryw_http::{ServerSessionLayer, DEFAULT_HEADER};
use std::convert::Infallible;
use std::sync::Arc;
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::test]
async fn tokens_and_the_session_store_are_counted() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let meter = provider.meter("ryw");
    let authority = Arc::new(TokenAuthority::new(SigningKey::new(1, [3u8; 32]).unwrap()));
    // Room for few sessions: new sessions soon evict old ones.
    let store = Arc::new(InMemorySessionStore::new().max_sessions(16).shards(1));
    let layer = ServerSessionLayer::new(authority)
        .session_store(store)
        .observer(ryw_otel::OtelObserver::new(&meter));
    ryw_otel::observe_session_store(&meter, layer.store().unwrap());
    let mut svc = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));

    // 100 new sessions: 100 tokens issued.
    let mut tokens = Vec::new();
    for _ in 0..100 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(String::new()))
            .await
            .unwrap();
        tokens.push(
            response.headers()[DEFAULT_HEADER]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The last one continued: received (and answered with the same token, not issued again).
    let request = Request::builder()
        .header(DEFAULT_HEADER, &tokens[99])
        .body(String::new())
        .unwrap();
    let response = svc.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // A tampered token: refused.
    let mut tampered = tokens[0].clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let request = Request::builder()
        .header(DEFAULT_HEADER, String::from_utf8(tampered).unwrap())
        .body(String::new())
        .unwrap();
    let response = svc.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), 401);

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics = exported.last().unwrap();
    let sizes = ryw_otel::testing::data_points(metrics, "ryw.token.size");
    assert_eq!(
        sizes,
        [
            (vec!["ryw.token.direction=issued".to_owned()], 100),
            (vec!["ryw.token.direction=received".to_owned()], 1),
        ]
    );
    let rejections = ryw_otel::testing::data_points(metrics, "ryw.token.rejections");
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].1, 1);
    assert!(
        rejections[0].0[0].starts_with("ryw.token.rejection=token_"),
        "{rejections:?}"
    );
    let live = ryw_otel::testing::data_points(metrics, "ryw.sessions.live");
    let evictions = ryw_otel::testing::data_points(metrics, "ryw.sessions.evictions");
    assert_eq!(
        (live.len(), evictions.len()),
        (1, 1),
        "{live:?} {evictions:?}"
    );
    assert!(evictions[0].1 > 0, "a 16-session store evicted some of 100");
    assert_eq!(
        live[0].1 + evictions[0].1,
        100,
        "every session held or evicted"
    );
}
