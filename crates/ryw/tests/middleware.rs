//! tower middleware under and over the session layer, on the simulated store: a timed-out write
//! is replayed under its original write id, never applied twice.
//!
//! The response of the first write is held back after the store applied it (a response lost on
//! the way back), so a timeout fires although the write is in the store.

mod common;

use common::RetryErrors;
use ryw::retry::{Backoff, RetryPolicy};
use ryw::{ReadYourWritesLayer, Session};
use ryw_sim::fault::HoldResponses;
use ryw_sim::{SimAdapter, SimConfig, SimError, SimRequest, SimStore};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

const TIMEOUT: Duration = Duration::from_millis(200);

fn writes_of(store: &SimStore, key: &str) -> usize {
    store.log().iter().filter(|e| &*e.key == key).count()
}

#[tokio::test(start_paused = true)]
async fn a_timeout_under_the_layer_replays_the_write_under_its_id() {
    let store = SimStore::new(SimConfig::default().seed(11));
    let policy = RetryPolicy::new().backoff(Backoff::new(
        Duration::from_millis(1),
        Duration::from_millis(5),
    ));
    let mut svc = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(SimAdapter::new())
                .clock(store.clock())
                .retry(policy),
        )
        .timeout(TIMEOUT)
        .layer(HoldResponses::first(1, Duration::from_secs(10)))
        .service(store.client(0));
    let session = Session::new();

    let put = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("k", 7)))
        .await
        .expect("the timed-out write is replayed, not failed");
    assert_eq!(put.attempts(), 2, "{put:?}");
    assert!(put.get_ref().deduplicated, "the replay was recognised");
    assert_eq!(writes_of(&store, "k"), 1, "{:?}", store.log());
    assert_eq!(store.log()[0].write_id, put.write_id());

    let read = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::get("k")))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed());
    assert_eq!(read.get_ref().value(), Some(7));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_under_the_layer_is_a_typed_error_when_retries_are_spent() {
    let store = SimStore::new(SimConfig::default().seed(12));
    let mut svc = ServiceBuilder::new()
        .layer(
            ReadYourWritesLayer::new(SimAdapter::new())
                .clock(store.clock())
                .retry(RetryPolicy::new().max_retries(0)),
        )
        .timeout(TIMEOUT)
        .layer(HoldResponses::first(1, Duration::from_secs(10)))
        .service(store.client(0));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Session::new().request(SimRequest::put("k", 7)))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.store_error().is_some_and(SimError::is_timeout), "{err}");
    assert_eq!(writes_of(&store, "k"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_above_a_timeout_above_the_layer_replays_instead_of_duplicating() {
    let store = SimStore::new(SimConfig::default().seed(13));
    let mut svc = ServiceBuilder::new()
        .retry(RetryErrors(2))
        .timeout(TIMEOUT)
        .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
        .layer(HoldResponses::first(1, Duration::from_secs(10)))
        .service(store.client(0));
    let session = Session::new();

    // The first call times out above the layer (its future is dropped); tower's retry sends a
    // clone, which carries the same write id and is sent as a replay.
    let put = svc
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("k", 7)))
        .await
        .expect("the retried write succeeds");
    assert!(
        put.get_ref().deduplicated,
        "the clone was a replay: {put:?}"
    );
    assert_eq!(writes_of(&store, "k"), 1, "{:?}", store.log());
    assert_eq!(store.log()[0].write_id, put.write_id());

    // A request that is never cloned is a new write each time.
    for value in [8, 9] {
        svc.ready()
            .await
            .unwrap()
            .call(session.request(SimRequest::put("k", value)))
            .await
            .unwrap();
    }
    assert_eq!(writes_of(&store, "k"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_over_the_layer_leaves_the_write_applied_once() {
    let store = SimStore::new(SimConfig::default().seed(14));
    let mut svc = ServiceBuilder::new()
        .timeout(TIMEOUT)
        .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()))
        .layer(HoldResponses::first(1, Duration::from_secs(10)))
        .service(store.client(0));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Session::new().request(SimRequest::put("k", 7)))
        .await
        .unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(writes_of(&store, "k"), 1);
}
