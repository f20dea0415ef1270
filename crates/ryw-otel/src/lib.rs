//! OpenTelemetry metrics for ryw's session layer: whether reads see the session's writes, what
//! the fences and retries cost.
//!
//! [`OtelObserver`] is a [`ryw::telemetry::Observer`] that records every event of the layer on
//! OpenTelemetry instruments created from a [`Meter`]. This crate depends on the OpenTelemetry
//! API only; the application installs the SDK and an exporter (Prometheus, OTLP, ...) and hands
//! over a meter. The core `ryw` crate knows nothing of OpenTelemetry, so a new OpenTelemetry
//! release changes this crate only.
//!
//! No instrument carries a session id, key or token as an attribute. The instruments, their units
//! and attributes are listed in docs/telemetry.md.
//!
//! # Example
//!
//! ```
//! use opentelemetry::metrics::MeterProvider;
//! use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
//! use ryw::{ReadYourWritesLayer, Session};
//! use ryw_otel::OtelObserver;
//! use ryw_sim::{SimAdapter, SimConfig, SimRequest, SimStore};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The application's SDK (here one exporting to memory).
//! let exporter = InMemoryMetricExporter::default();
//! let provider = SdkMeterProvider::builder()
//!     .with_reader(PeriodicReader::builder(exporter.clone()).build())
//!     .build();
//!
//! let store = SimStore::new(SimConfig::default().seed(1));
//! let observer = OtelObserver::new(&provider.meter("ryw"));
//! let mut service = ServiceBuilder::new()
//!     .layer(ReadYourWritesLayer::new(SimAdapter::new()).clock(store.clock()).observer(observer))
//!     .service(store.client(0));
//! let session = Session::new();
//! service.ready().await?.call(session.request(SimRequest::put("k", 1))).await?;
//!
//! provider.force_flush()?;
//! let metrics = exporter.get_finished_metrics()?;
//! let names: Vec<String> = metrics
//!     .iter()
//!     .flat_map(|m| m.scope_metrics())
//!     .flat_map(|s| s.metrics())
//!     .map(|m| m.name().to_owned())
//!     .collect();
//! assert!(names.iter().any(|n| n == "ryw.writes"));
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "testing")]
pub mod testing;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;
use ryw::adapter::{ErrorClass, Operation};
use ryw::telemetry::{
    ConflictEvent, DbCallEvent, FenceMissEvent, Observer, OutboxEvent, Outcome, ReadVisibility,
    RequestEvent, RetryEvent, TokenEvent,
};
use ryw::{SessionStore, StoreId};
use std::fmt;
use std::sync::Arc;

/// Bucket boundaries of `ryw.request.duration` (seconds): OpenTelemetry's advisory boundaries for
/// database client operation durations.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket boundaries of `db.client.operation.duration` (seconds): the semantic conventions'
/// advisory boundaries.
pub const DB_DURATION_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// Bucket boundaries of `ryw.read.version_gap` (versions: write sequence positions, or
/// microseconds where versions are clocks).
pub const GAP_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1e6, 1e7, 1e8, 1e9,
];

/// Bucket boundaries of `ryw.token.size` (bytes).
pub const TOKEN_SIZE_BUCKETS: [f64; 10] = [
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
];

/// Reports how many sessions `store` holds (`ryw.sessions.live`, a gauge) and has evicted
/// (`ryw.sessions.evictions`, a counter), read from [`SessionStore::stats`] whenever the SDK
/// collects. A store that keeps no count reports nothing. The instruments live as long as the
/// meter provider.
///
/// For the store of `ryw-http`'s server layer, pass `ServerSessionLayer::store`.
pub fn observe_session_store(meter: &Meter, store: Arc<dyn SessionStore>) {
    let live = store.clone();
    meter
        .u64_observable_gauge("ryw.sessions.live")
        .with_unit("{session}")
        .with_description("Sessions held by the session store")
        .with_callback(move |o| {
            if let Some(stats) = live.stats() {
                o.observe(stats.live, &[]);
            }
        })
        .build();
    meter
        .u64_observable_counter("ryw.sessions.evictions")
        .with_unit("{session}")
        .with_description("Sessions the session store evicted to make room or aged out")
        .with_callback(move |o| {
            if let Some(stats) = store.stats() {
                o.observe(stats.evictions, &[]);
            }
        })
        .build();
}

/// Reports an outbox's depth whenever the SDK collects: `ryw.outbox.depth` (writes queued,
/// a gauge), `ryw.outbox.size` (their bytes) and `ryw.outbox.dead_letters` (dead letters
/// kept). A dead-letter count the outbox cannot read (its file damaged) is not reported for
/// that collection. The instruments live as long as the meter provider; call it once per
/// outbox file, with the outbox the instance's `OutboxLayer` and `Replayer` use.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use opentelemetry::metrics::MeterProvider;
/// use ryw_outbox::{Outbox, OutboxConfig};
/// use std::sync::Arc;
///
/// let dir = std::env::temp_dir().join(format!("ryw-otel-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let outbox = Arc::new(Outbox::open(dir.join("outbox.redb"), OutboxConfig::default())?);
/// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::default();
/// ryw_otel::observe_outbox(&provider.meter("ryw"), outbox);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "outbox")]
pub fn observe_outbox(meter: &Meter, outbox: Arc<ryw_outbox::Outbox>) {
    let depth = outbox.clone();
    meter
        .u64_observable_gauge("ryw.outbox.depth")
        .with_unit("{write}")
        .with_description("Writes queued in the outbox, not yet replayed")
        .with_callback(move |o| o.observe(depth.len(), &[]))
        .build();
    let size = outbox.clone();
    meter
        .u64_observable_gauge("ryw.outbox.size")
        .with_unit("By")
        .with_description("Bytes of the writes queued in the outbox")
        .with_callback(move |o| o.observe(size.bytes(), &[]))
        .build();
    meter
        .u64_observable_gauge("ryw.outbox.dead_letters")
        .with_unit("{write}")
        .with_description("Dead letters the outbox keeps: deferred writes no longer replayed")
        .with_callback(move |o| {
            if let Ok(n) = outbox.dead_letter_count() {
                o.observe(n, &[]);
            }
        })
        .build();
}

/// Reports what an instance's [`SessionRecords`](ryw::record::SessionRecords) did
/// (`ryw.record.operations`, a counter with `ryw.record.operation` = `load`, `cache_hit` or
/// `write`) and how often a session fell back to the horizon rule (`ryw.record.fallbacks`, with
/// `ryw.record.reason` = `failure` for a store that could not be reached, `untrusted` for a
/// record older than its token names, or damaged), read whenever the SDK collects. The
/// instruments live as long as the meter provider.
pub fn observe_records(meter: &Meter, records: Arc<ryw::record::SessionRecords>) {
    let ops = records.clone();
    meter
        .u64_observable_counter("ryw.record.operations")
        .with_unit("{operation}")
        .with_description("Session record loads, cache hits and writes of this instance")
        .with_callback(move |o| {
            let s = ops.stats();
            for (name, n) in [
                ("load", s.loads),
                ("cache_hit", s.cache_hits),
                ("write", s.writes),
            ] {
                o.observe(n, &[KeyValue::new("ryw.record.operation", name)]);
            }
        })
        .build();
    meter
        .u64_observable_counter("ryw.record.fallbacks")
        .with_unit("{session}")
        .with_description(
            "Sessions that fell back to their store horizon: record unreachable or untrusted",
        )
        .with_callback(move |o| {
            let s = records.stats();
            for (reason, n) in [("failure", s.failures), ("untrusted", s.untrusted)] {
                o.observe(n, &[KeyValue::new("ryw.record.reason", reason)]);
            }
        })
        .build();
}

/// Reports what one instance's [`PrincipalRecords`](ryw::principal::PrincipalRecords) did:
/// `ryw.principal.operations` (a counter with `ryw.principal.operation` = `load` or `append`
/// and `ryw.principal.outcome` = `ok`, `failed`, or `untrusted` for a load of a damaged or
/// rolled-back record). A failed or untrusted load made that request's reads `session_only`; a
/// failed append left the request's writes out of the principal's record until the session's
/// next request. Read whenever the SDK collects.
pub fn observe_principal_records(meter: &Meter, records: Arc<ryw::principal::PrincipalRecords>) {
    meter
        .u64_observable_counter("ryw.principal.operations")
        .with_unit("{operation}")
        .with_description("Principal record loads and appends of this instance, by outcome")
        .with_callback(move |o| {
            let s = records.stats();
            let failed_loads = s.load_failures + s.untrusted;
            for (op, outcome, n) in [
                ("load", "ok", s.loads.saturating_sub(failed_loads)),
                ("load", "failed", s.load_failures),
                ("load", "untrusted", s.untrusted),
                ("append", "ok", s.appends),
                ("append", "failed", s.append_failures),
            ] {
                o.observe(
                    n,
                    &[
                        KeyValue::new("ryw.principal.operation", op),
                        KeyValue::new("ryw.principal.outcome", outcome),
                    ],
                );
            }
        })
        .build();
}

/// Records ryw's events on OpenTelemetry instruments. Install it with
/// [`ryw::ReadYourWritesLayer::observer`].
pub struct OtelObserver {
    reads: Counter<u64>,
    writes: Counter<u64>,
    escalations: Counter<u64>,
    rereads: Counter<u64>,
    retries: Counter<u64>,
    fence_misses: Counter<u64>,
    version_gap: Histogram<f64>,
    conflicts: Counter<u64>,
    duration: Histogram<f64>,
    catch_up: Histogram<f64>,
    db_duration: Histogram<f64>,
    token_size: Histogram<u64>,
    token_rejections: Counter<u64>,
    outbox: Counter<u64>,
}

impl fmt::Debug for OtelObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelObserver").finish_non_exhaustive()
    }
}

impl OtelObserver {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        OtelObserver {
            reads: meter
                .u64_counter("ryw.reads")
                .with_unit("{read}")
                .with_description("Reads through the session layer, by visibility and fence path")
                .build(),
            writes: meter
                .u64_counter("ryw.writes")
                .with_unit("{write}")
                .with_description("Writes through the session layer, by outcome")
                .build(),
            escalations: meter
                .u64_counter("ryw.escalations")
                .with_unit("{read}")
                .with_description("Reads sent to the store's strong path, by reason")
                .build(),
            rereads: meter
                .u64_counter("ryw.rereads")
                .with_unit("{read}")
                .with_description("Cheap re-reads after a read behind its fence")
                .build(),
            retries: meter
                .u64_counter("ryw.retries")
                .with_unit("{attempt}")
                .with_description("Attempts sent again by the retry policy, by error class")
                .build(),
            fence_misses: meter
                .u64_counter("ryw.fence.misses")
                .with_unit("{attempt}")
                .with_description("Read attempts that came back behind the session's fence")
                .build(),
            version_gap: meter
                .f64_histogram("ryw.read.version_gap")
                .with_unit("{version}")
                .with_description(
                    "How far a read behind its fence was: required minus observed version",
                )
                .with_boundaries(GAP_BUCKETS.to_vec())
                .build(),
            conflicts: meter
                .u64_counter("ryw.conflicts")
                .with_unit("{write}")
                .with_description("Conditional writes that lost to another writer, by resolution")
                .build(),
            duration: meter
                .f64_histogram("ryw.request.duration")
                .with_unit("s")
                .with_description("Duration of requests through the session layer, all attempts")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            catch_up: meter
                .f64_histogram("ryw.read.catch_up.duration")
                .with_unit("s")
                .with_description(
                    "Reads that missed their fence: time until they saw the session's writes",
                )
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            db_duration: meter
                .f64_histogram("db.client.operation.duration")
                .with_unit("s")
                .with_description("Duration of database client operations")
                .with_boundaries(DB_DURATION_BUCKETS.to_vec())
                .build(),
            token_size: meter
                .u64_histogram("ryw.token.size")
                .with_unit("By")
                .with_description("Session tokens received and issued by the HTTP layer, by size")
                .with_boundaries(TOKEN_SIZE_BUCKETS.to_vec())
                .build(),
            token_rejections: meter
                .u64_counter("ryw.token.rejections")
                .with_unit("{request}")
                .with_description("Requests whose session tokens were refused, by reason")
                .build(),
            outbox: meter
                .u64_counter("ryw.outbox.writes")
                .with_unit("{write}")
                .with_description(
                    "Writes the outbox deferred, replayed, dead-lettered or refused, by reason",
                )
                .build(),
        }
    }
}

fn store(id: StoreId) -> KeyValue {
    KeyValue::new("ryw.store.id", i64::from(id.get()))
}

fn error_class(class: Option<ErrorClass>) -> &'static str {
    class.map_or("none", ErrorClass::as_str)
}

impl Observer for OtelObserver {
    fn request(&self, event: &RequestEvent) {
        let store = store(event.store);
        match event.outcome {
            Outcome::Read(visibility) => {
                let path = match visibility {
                    ReadVisibility::Guaranteed(path) | ReadVisibility::SessionOnly(path) => {
                        path.as_str()
                    }
                    _ => "none",
                };
                self.reads.add(
                    1,
                    &[
                        store.clone(),
                        KeyValue::new("ryw.visibility", visibility.as_str()),
                        KeyValue::new("ryw.fence.path", path),
                    ],
                );
            }
            Outcome::Written => self
                .writes
                .add(1, &[store.clone(), KeyValue::new("ryw.outcome", "written")]),
            Outcome::Failed(kind) => {
                let counter = match event.operation {
                    Operation::Read => &self.reads,
                    _ => &self.writes,
                };
                let attributes = match event.operation {
                    Operation::Read => vec![
                        store.clone(),
                        KeyValue::new("ryw.visibility", "failed"),
                        KeyValue::new("error.type", kind.as_str()),
                    ],
                    _ => vec![
                        store.clone(),
                        KeyValue::new("ryw.outcome", kind.as_str()),
                        KeyValue::new("error.type", kind.as_str()),
                    ],
                };
                counter.add(1, &attributes);
            }
            _ => {}
        }
        if let Some(reason) = event.escalation {
            self.escalations.add(
                1,
                &[
                    store.clone(),
                    KeyValue::new("ryw.escalation.reason", reason.as_str()),
                ],
            );
        }
        if event.rereads > 0 {
            self.rereads
                .add(u64::from(event.rereads), std::slice::from_ref(&store));
        }
        // A read that missed its fence: how long until it saw the session's writes (or gave up
        // and returned pending).
        if let (Outcome::Read(visibility), true) = (event.outcome, event.attempts > 1) {
            self.catch_up.record(
                event.duration.as_secs_f64(),
                &[
                    store.clone(),
                    KeyValue::new("ryw.visibility", visibility.as_str()),
                ],
            );
        }
        self.duration.record(
            event.duration.as_secs_f64(),
            &[
                store,
                KeyValue::new("ryw.operation", event.operation.as_str()),
            ],
        );
    }

    fn retry(&self, event: &RetryEvent) {
        self.retries.add(
            1,
            &[
                store(event.store),
                KeyValue::new("ryw.operation", event.operation.as_str()),
                KeyValue::new("error.class", error_class(event.class)),
            ],
        );
    }

    fn fence_miss(&self, event: &FenceMissEvent) {
        let attributes = [
            store(event.store),
            KeyValue::new("ryw.fence.strategy", event.strategy.as_str()),
        ];
        self.fence_misses.add(1, &attributes);
        let s = &event.staleness;
        let observed = s.observed.map_or(0, |v| v.get());
        self.version_gap.record(
            s.required.get().saturating_sub(observed) as f64,
            &attributes,
        );
    }

    fn db_call(&self, event: &DbCallEvent<'_>) {
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new("db.system.name", event.system));
        attributes.push(KeyValue::new(
            "db.operation.name",
            event.operation.to_owned(),
        ));
        if let Some(c) = event.collection {
            attributes.push(KeyValue::new("db.collection.name", c.to_owned()));
        }
        if let Some(n) = event.namespace {
            attributes.push(KeyValue::new("db.namespace", n.to_owned()));
        }
        if let Some(e) = event.error_type {
            attributes.push(KeyValue::new("error.type", e.to_owned()));
        }
        if let Some(c) = event.consistent_read {
            attributes.push(KeyValue::new("aws.dynamodb.consistent_read", c));
        }
        if let Some(l) = event.consistency_level {
            attributes.push(KeyValue::new("cassandra.consistency.level", l.to_owned()));
        }
        self.db_duration
            .record(event.duration.as_secs_f64(), &attributes);
    }

    fn token(&self, event: &TokenEvent) {
        match *event {
            TokenEvent::Received { bytes } => self.token_size.record(
                bytes as u64,
                &[KeyValue::new("ryw.token.direction", "received")],
            ),
            TokenEvent::Issued { bytes } => self.token_size.record(
                bytes as u64,
                &[KeyValue::new("ryw.token.direction", "issued")],
            ),
            TokenEvent::Rejected { code } => self
                .token_rejections
                .add(1, &[KeyValue::new("ryw.token.rejection", code)]),
            _ => {}
        }
    }

    fn outbox(&self, event: &OutboxEvent) {
        let (outcome, reason) = match *event {
            OutboxEvent::Deferred { reason } => ("deferred", reason),
            OutboxEvent::Replayed => ("replayed", "none"),
            OutboxEvent::DeadLettered { reason } => ("dead_lettered", reason),
            OutboxEvent::Refused { reason } => ("refused", reason),
            _ => ("other", "none"),
        };
        self.outbox.add(
            1,
            &[
                KeyValue::new("ryw.outbox.outcome", outcome),
                KeyValue::new("ryw.outbox.reason", reason),
            ],
        );
    }

    fn conflict(&self, event: &ConflictEvent) {
        self.conflicts.add(
            1,
            &[
                store(event.store),
                KeyValue::new("ryw.conflict.resolution", event.resolution.as_str()),
            ],
        );
    }
}
