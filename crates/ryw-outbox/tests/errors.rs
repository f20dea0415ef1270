//! Every error the outbox layer returns for a write says whether the write may have applied
//! (`OutboxServiceError::may_have_applied`, as `ryw::Error::may_have_applied`): a write whose
//! responses were all lost may have applied; one refused before anything was sent did not.

mod common;

use common::TempDir;
use ryw::{ReadYourWritesLayer, Session};
use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, OutboxServiceError};
use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

async fn write_with(
    store: &SimStore,
    outbox: Arc<Outbox>,
    breaker: Arc<Breaker>,
    session: &Session,
) -> Result<ryw_outbox::Written<ryw_sim::SimResponse>, OutboxServiceError<ryw_sim::SimError>> {
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    OutboxLayer::new(outbox, SimAdapter::new())
        .breaker(breaker)
        .layer(ryw)
        .ready()
        .await
        .unwrap()
        .call(session.request(SimRequest::put("k", 1)))
        .await
}

#[tokio::test(start_paused = true)]
async fn every_write_error_says_whether_it_may_have_applied() {
    let dir = TempDir::new();
    // A full outbox: nothing can be deferred, so the cause comes back.
    let full = || {
        let outbox = Outbox::open(
            dir.path().join("full"),
            OutboxConfig::default().max_entries(0),
        )
        .unwrap();
        Arc::new(outbox)
    };
    let breaker = || Arc::new(Breaker::new(1000, Duration::from_secs(1)));

    // Every response lost: every attempt may have applied.
    let lost = SimStore::new(SimConfig::default().seed(3).lost_responses(1.0));
    let error = write_with(&lost, full(), breaker(), &Session::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxServiceError::Outbox { cause: Some(_), .. }),
        "{error:?}"
    );
    assert!(error.may_have_applied(), "{error:?}");

    // The primary unreachable: every attempt refused, nothing applied.
    let down = SimStore::new(SimConfig::default().seed(3).partition(Partition {
        start: Duration::ZERO,
        end: Duration::from_secs(3600),
        kind: PartitionKind::PrimaryUnreachable,
    }));
    let error = write_with(&down, full(), breaker(), &Session::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxServiceError::Outbox { cause: Some(_), .. }),
        "{error:?}"
    );
    assert!(!error.may_have_applied(), "{error:?}");

    // The breaker open: not sent at all.
    let open = breaker();
    for _ in 0..1000 {
        open.failed();
    }
    let error = write_with(&down, full(), open, &Session::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OutboxServiceError::Outbox { cause: None, .. }),
        "{error:?}"
    );
    assert!(!error.may_have_applied());

    // The session layer's own errors: an ambiguous write without the outbox in the way.
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(lost.clock())
        .layer(lost.client(0));
    let error = ryw
        .oneshot(Session::new().request(SimRequest::put("k", 2)))
        .await
        .unwrap_err();
    assert!(
        error.is_transient() && error.may_have_applied(),
        "{error:?}"
    );
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(down.clock())
        .layer(down.client(0));
    let error = ryw
        .oneshot(Session::new().request(SimRequest::put("k", 2)))
        .await
        .unwrap_err();
    assert!(
        error.is_transient() && !error.may_have_applied(),
        "{error:?}"
    );
}
