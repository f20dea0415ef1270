//! The main job: a realistic read-from-replicas workload on the embedded simulated store, run
//! four ways, with the session-guarantee checker's verdict for each.
//!
//! 60 users, 4 app instances that share nothing but the session token (each request goes to a
//! random instance), a primary and 3 replicas lagging 20 ms plus an exponential tail (mean 20 ms)
//! with 2% spikes of 200 ms, 0.5% of responses lost after the write applied and 0.2% of writes
//! delivered twice. 70% of writes are followed by a read of the same item after a 2 to 5 ms
//! redirect, as a web page does after a POST. Everything runs in simulated time: deterministic, and done in about a second.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use ryw::adaptive::AdaptiveFence;
use ryw_sim::workload::{run_blocking, run_blocking_observed, Mode, RunReport, Scenario};
use ryw_sim::{LagModel, LatencyModel, SimConfig};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    let scenario = Scenario {
        sim: SimConfig::default()
            .seed(seed)
            .replicas(3)
            .lag(
                LagModel::new(Duration::from_millis(20), Duration::from_millis(20))
                    .spikes(0.02, Duration::from_millis(200)),
            )
            .latency(LatencyModel {
                replica: Duration::from_millis(1),
                primary: Duration::from_millis(6),
                jitter: Duration::from_micros(300),
            })
            .lost_responses(0.005)
            .duplicate_deliveries(0.002),
        users: 60,
        instances: 4,
        ops_per_user: 80,
        write_ratio: 0.2,
        keys_per_user: 3,
        foreign_read_ratio: 0.2,
        read_after_write: 0.7,
        think_min: Duration::from_millis(20),
        think_max: Duration::from_millis(1_000),
        seed,
        ..Scenario::default()
    };

    println!(
        "ryw quickstart: {} users x {} operations, {} app instances sharing only the session token,",
        scenario.users, scenario.ops_per_user, scenario.instances
    );
    println!(
        "1 primary + {} replicas lagging 20 ms + ~20 ms (2% spikes of 200 ms), 0.5% lost responses, \
         0.2% duplicated deliveries (seed {seed})\n",
        scenario.sim.replicas
    );
    println!(
        "{:<36} {:>10} {:>10} {:>14} {:>10} {:>10}",
        "mode", "violations", "dup writes", "replica reads", "p50 read", "p99 read"
    );

    // The layer's default (adaptive fence, 10 ms latency budget), then the same fence allowed
    // 30 ms: a page load after a POST can spare that to keep a read off the primary.
    let modes = [
        Mode::Plain,
        Mode::Strong,
        Mode::Pinned(Duration::from_secs(2)),
        Mode::ryw(),
        Mode::RywAdaptive(AdaptiveFence::new(Duration::from_millis(30))),
    ];
    let mut reports = Vec::new();
    let mut instruments = Vec::new();
    for mode in &modes {
        let report = match mode {
            Mode::Ryw(_) | Mode::RywAdaptive(_) => {
                // Each ryw run reports to its own OpenTelemetry instruments (ryw-otel), here
                // exported to memory; an application installs a Prometheus or OTLP exporter.
                let exporter = InMemoryMetricExporter::default();
                let provider = SdkMeterProvider::builder()
                    .with_reader(PeriodicReader::builder(exporter.clone()).build())
                    .build();
                let observer = Arc::new(ryw_otel::OtelObserver::new(&provider.meter("ryw")));
                let report = run_blocking_observed(&scenario, mode, Some(observer));
                let metrics = provider
                    .force_flush()
                    .ok()
                    .and_then(|()| exporter.get_finished_metrics().ok())
                    .and_then(|m| m.into_iter().last());
                instruments.push((mode.name(), metrics));
                report
            }
            _ => run_blocking(&scenario, mode),
        };
        print_row(&mode.name(), &report);
        reports.push((mode, report));
    }

    let pinned = &reports[2].1;
    let ryw_runs: Vec<_> = reports
        .iter()
        .filter(|(m, _)| matches!(m, Mode::RywAdaptive(_)))
        .map(|(_, r)| r)
        .collect();
    for (r, (name, _)) in ryw_runs.iter().zip(&instruments) {
        println!(
            "\n{name}: {} of {} reads reported pending (data returned, flagged as possibly \
             stale); longest token {} characters.",
            r.pending_reads, r.reads, r.max_token_len
        );
    }
    let mut failed = false;
    for (r, (name, metrics)) in ryw_runs.iter().zip(&instruments) {
        match metrics {
            Some(m) => {
                println!("\n{name}: its OpenTelemetry instruments (ryw-otel):");
                print_instruments(m);
                // The instruments count every read the run made, and its pending ones.
                let reads = count(m, "ryw.reads", &[]);
                let pending = count(m, "ryw.reads", &[("ryw.visibility", "pending")]);
                if reads != r.reads as u64 || pending != r.pending_reads as u64 {
                    eprintln!(
                        "\nFAIL: {name}: the instruments count {reads} reads ({pending} pending), \
                         the run made {} ({} pending)",
                        r.reads, r.pending_reads
                    );
                    failed = true;
                }
            }
            None => {
                eprintln!("\nFAIL: {name}: no metrics were exported");
                failed = true;
            }
        }
    }
    println!(
        "\nviolations = read-your-writes, monotonic-reads, monotonic-writes and writes-follow-reads \
         violations found by ryw_sim::checker;\ndup writes = writes whose effect applied twice \
         (a retry after a lost response, or a duplicated delivery)."
    );
    for (r, (name, _)) in ryw_runs.iter().zip(&instruments) {
        if let Some(v) = r.check.violations.first() {
            eprintln!("\nFAIL: {name} has violations; first: {v}");
            failed = true;
        }
        if r.replica_share() <= pinned.replica_share() {
            eprintln!("\nFAIL: {name} served no more reads from replicas than pinning did");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_row(name: &str, r: &RunReport) {
    println!(
        "{:<36} {:>10} {:>10} {:>13.1}% {:>7.2} ms {:>7.2} ms",
        name,
        r.check.guarantee_violations(),
        r.check
            .count(ryw_sim::checker::ViolationKind::DuplicatedEffect),
        100.0 * r.replica_share(),
        r.read_latency_percentile(50.0).as_secs_f64() * 1e3,
        r.read_latency_percentile(99.0).as_secs_f64() * 1e3,
    );
}

/// The sum of every data point of the counter `name` whose attributes include all of `with`.
fn count(metrics: &ResourceMetrics, name: &str, with: &[(&str, &str)]) -> u64 {
    ryw_otel::testing::data_points(metrics, name)
        .into_iter()
        .filter(|(attrs, _)| {
            with.iter()
                .all(|(k, v)| attrs.iter().any(|a| *a == format!("{k}={v}")))
        })
        .map(|(_, value)| value)
        .sum()
}

/// The ryw run's figures, read back from its OpenTelemetry instruments.
fn print_instruments(m: &ResourceMetrics) {
    let reads = |path: &str| {
        count(
            m,
            "ryw.reads",
            &[("ryw.visibility", "guaranteed"), ("ryw.fence.path", path)],
        )
    };
    println!(
        "  ryw.reads guaranteed: {} verified on a replica, {} unfenced, {} re-read, {} escalated; \
         pending: {}\n  \
         ryw.escalations: {} (stale_read), {} (horizon); ryw.rereads: {}; \
         ryw.fence.misses: {}\n  \
         ryw.writes written: {}; ryw.retries: {}; ryw.conflicts: {}",
        reads("verified"),
        reads("unfenced"),
        reads("reread"),
        reads("escalated"),
        count(m, "ryw.reads", &[("ryw.visibility", "pending")]),
        count(
            m,
            "ryw.escalations",
            &[("ryw.escalation.reason", "stale_read")]
        ),
        count(
            m,
            "ryw.escalations",
            &[("ryw.escalation.reason", "horizon")]
        ),
        count(m, "ryw.rereads", &[]),
        count(m, "ryw.fence.misses", &[]),
        count(m, "ryw.writes", &[("ryw.outcome", "written")]),
        count(m, "ryw.retries", &[]),
        count(m, "ryw.conflicts", &[]),
    );
}
