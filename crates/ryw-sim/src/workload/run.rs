//! Running a workload: a fresh simulated store, the instances in the mode's configuration, and
//! every user's devices at once, their results gathered into a [`RunReport`].

use super::mode::Mode;
use super::record_store::SimRecordStore;
use super::report::RunReport;
use super::scenario::Scenario;
use super::user::{run_user, Layered, Who};
use crate::adapter::SimAdapter;
use crate::rng::SimRng;
use crate::store::SimStore;
use ryw::principal::PrincipalRecords;
use ryw::record::SessionRecords;
use ryw::retry::RetryPolicy;
use ryw::telemetry::Observer;
use ryw::ReadYourWritesLayer;
use std::sync::Arc;
use tower::Layer;

/// Runs `scenario` in `mode` on a fresh store inside the current (paused) tokio runtime.
pub async fn run(scenario: &Scenario, mode: &Mode) -> RunReport {
    run_observed(scenario, mode, None).await
}

/// [`run`], with `observer` installed on every instance's session layer (ryw modes only).
pub async fn run_observed(
    scenario: &Scenario,
    mode: &Mode,
    observer: Option<Arc<dyn Observer>>,
) -> RunReport {
    let store = SimStore::new(scenario.sim.clone());
    let services: Vec<Layered> = match mode {
        Mode::Ryw(_) | Mode::RywAdaptive(_) => (0..scenario.instances.max(1))
            .map(|i| {
                let adapter = SimAdapter::new();
                let policy = RetryPolicy::new()
                    .max_retries(4)
                    .seed(scenario.seed ^ i as u64);
                let layer = ReadYourWritesLayer::new(adapter).clock(store.clock());
                let layer = match mode {
                    Mode::RywAdaptive(adaptive) => layer.adaptive_fence(adaptive.clone()),
                    Mode::Ryw(fence) => layer.fence(fence.clone()),
                    _ => layer,
                };
                let layer = match &observer {
                    Some(observer) => layer.observer(observer.clone()),
                    None => layer,
                };
                layer.retry(policy).layer(store.client(i))
            })
            .collect(),
        _ => Vec::new(),
    };
    let shared = Arc::new(SimRecordStore::new(
        store.clone(),
        scenario.record_outage,
        scenario.record_latency,
    ));
    let records: Vec<Arc<SessionRecords>> = if scenario.record && !services.is_empty() {
        (0..services.len())
            .map(|_| Arc::new(SessionRecords::new(shared.clone())))
            .collect()
    } else {
        Vec::new()
    };
    let principals: Vec<Arc<PrincipalRecords>> =
        if scenario.principal_records && !services.is_empty() {
            // Every instance fingerprints principals under the same key.
            let key = ryw::signing::SigningKey::new(0, [0x5a; 32]).expect("32 bytes");
            (0..services.len())
                .map(|_| Arc::new(PrincipalRecords::new(shared.clone(), key.clone())))
                .collect()
        } else {
            Vec::new()
        };
    let devices = scenario.devices.max(1);
    let mut rng = SimRng::new(scenario.seed);
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..scenario.users {
        for device in 0..devices {
            let user_rng = rng.fork();
            let store = store.clone();
            let services = services.clone();
            let records = records.clone();
            let principals = principals.clone();
            let scenario = scenario.clone();
            let mode = mode.clone();
            let who = Who { user, device };
            tasks.spawn(async move {
                run_user(
                    who,
                    user_rng,
                    store,
                    services,
                    (records, principals),
                    scenario,
                    mode,
                )
                .await
            });
        }
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.expect("user task panicked"));
    }
    results.sort_by_key(|r| r.ops.first().map(|o| o.session));
    store.quiesce().await;
    RunReport::of(results, store.log(), store.reordered_arrivals(), devices)
}

/// Runs `scenario` in `mode` on a fresh paused single-threaded runtime: deterministic per seed.
///
/// Needs the feature `paused-runtime` (on by default): tokio pauses a runtime's clock only with its
/// `test-util` feature. Without it, call [`run`] in a paused runtime of your own.
#[cfg(feature = "paused-runtime")]
pub fn run_blocking(scenario: &Scenario, mode: &Mode) -> RunReport {
    run_blocking_observed(scenario, mode, None)
}

/// [`run_blocking`], with `observer` installed on every instance's session layer.
#[cfg(feature = "paused-runtime")]
pub fn run_blocking_observed(
    scenario: &Scenario,
    mode: &Mode,
    observer: Option<Arc<dyn Observer>>,
) -> RunReport {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime")
        .block_on(run_observed(scenario, mode, observer))
}
