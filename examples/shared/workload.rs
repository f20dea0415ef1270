//! The small simulated workload the telemetry examples report on: ten users on two app
//! instances over a store whose two replicas lag 20-40 ms and lose 1% of responses.

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use ryw_sim::workload::{run_blocking_observed, Mode, RunReport, Scenario};
use ryw_sim::{LagModel, SimConfig};
use std::sync::Arc;
use std::time::Duration;

/// Runs the workload (seeded with `seed`) through the session layer, reporting to `provider`'s
/// instruments, on a blocking thread (the simulation runs on its own paused clock).
pub async fn run(provider: &SdkMeterProvider, seed: u64) -> RunReport {
    let observer = Arc::new(ryw_otel::OtelObserver::new(&provider.meter("ryw")));
    let scenario = Scenario {
        sim: SimConfig::default()
            .seed(seed)
            .replicas(2)
            .lag(LagModel::new(
                Duration::from_millis(20),
                Duration::from_millis(20),
            ))
            .lost_responses(0.01),
        users: 10,
        instances: 2,
        ops_per_user: 30,
        seed,
        ..Scenario::default()
    };
    tokio::task::spawn_blocking(move || {
        run_blocking_observed(&scenario, &Mode::ryw(), Some(observer))
    })
    .await
    .expect("the workload does not panic")
}
