//! Seeded workloads: users spread over app instances that share nothing but the session token,
//! run against the simulated store in one of four [`Mode`]s, recorded as a [`History`].
//!
//! # Example
//!
//! ```
//! use ryw_sim::workload::{run_blocking, Mode, Scenario};
//!
//! let scenario = Scenario::random(42);
//! let with_layer = run_blocking(&scenario, &Mode::ryw());
//! assert_eq!(with_layer.check.violations.len(), 0);
//! ```

use crate::adapter::SimAdapter;
use crate::checker::{check, CheckReport, History, Op, OpKind, ReadStatus};
use crate::config::{
    LagModel, LatencyModel, Partition, PartitionKind, ReplicationOrder, SimConfig,
};
use crate::rng::SimRng;
use crate::store::{Key, Node, SimClient, SimError, SimRequest, SimResponse, SimStore};
use ryw::adaptive::AdaptiveFence;
use ryw::fence::FenceConfig;
use ryw::principal::{Advanced, PrincipalRecords};
use ryw::record::{InMemoryRecordStore, RecordError, RecordFuture, RecordStore, SessionRecords};
use ryw::retry::RetryPolicy;
use ryw::telemetry::Observer;
use ryw::{ReadYourWrites, ReadYourWritesLayer, Session, SessionId, Visibility};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceExt};

/// How the application reads and writes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Mode {
    /// No session layer: reads go to the local replica, failed writes are retried as they are.
    Plain,
    /// Every read goes to the primary.
    Strong,
    /// After any write, the user's reads go to the primary for this long (the Rails and GitLab
    /// style of "sticking"); writes are retried as they are.
    Pinned(Duration),
    /// Through the ryw session layer, with this fence configuration and its fixed re-read
    /// schedule; the session travels between instances as an encoded token.
    Ryw(FenceConfig),
    /// Through the ryw session layer with an adaptive fence ([`ryw::adaptive`]): each instance
    /// learns the store's catch-up time on its own.
    RywAdaptive(AdaptiveFence),
}

impl Mode {
    /// The ryw layer with its default fence: adaptive ([`AdaptiveFence::default`]).
    pub fn ryw() -> Self {
        Mode::RywAdaptive(AdaptiveFence::default())
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Mode::Plain => "no session layer".into(),
            Mode::Strong => "always-strong reads".into(),
            Mode::Pinned(d) => format!("pin to primary {}s after a write", d.as_secs_f64()),
            Mode::Ryw(c) => format!("ryw ({:?} fence)", c.initial).to_lowercase(),
            Mode::RywAdaptive(a) => {
                format!("ryw (adaptive fence, {} ms)", a.latency_budget.as_millis())
            }
        }
    }
}

/// A workload over a simulated deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The deployment.
    pub sim: SimConfig,
    /// Users (one session each).
    pub users: usize,
    /// App instances; each request of a user goes to a random one.
    pub instances: usize,
    /// Operations per user.
    pub ops_per_user: usize,
    /// Share of operations that write.
    pub write_ratio: f64,
    /// Keys each user owns (writes go to the user's own keys).
    pub keys_per_user: usize,
    /// Share of reads of another user's keys.
    pub foreign_read_ratio: f64,
    /// Probability that a write is followed at once (after a 2 to 5 ms redirect) by a read of the
    /// same key, as a web page does after a POST.
    pub read_after_write: f64,
    /// Shortest pause between a user's operations.
    pub think_min: Duration,
    /// Longest pause between a user's operations.
    pub think_max: Duration,
    /// Seed of the users' choices.
    pub seed: u64,
    /// The most exact scopes a session's version vector keeps before coarsening (ryw mode).
    pub scope_cap: usize,
    /// Probability that an operation runs as two concurrent continuations of the same token (a
    /// second browser tab, a load balancer's retry, a response lost on its way back): the
    /// operation itself, plus a write of the same key from another instance (ryw mode).
    pub fork_ratio: f64,
    /// Probability that the second continuation's token is merged back into the session; otherwise
    /// it is dropped and its operation is recorded as [`Op::detached`].
    pub fork_merge: f64,
    /// Sessions keep what they coarsen in a record shared by the instances
    /// ([`ryw::record`]): each instance loads the record a token names before a request and
    /// writes what the request coarsened before issuing the next token (ryw mode).
    pub record: bool,
    /// While simulated time is within this window, the record store fails every call.
    pub record_outage: Option<(Duration, Duration)>,
    /// Devices per user: each user is a principal whose devices run at once, each with a session
    /// (and token) of its own. Operations are recorded per device (`Op::session` is
    /// `user * devices + device`); [`RunReport::principal_check`] judges them per user.
    pub devices: usize,
    /// Each user's devices share the principal's record ([`ryw::principal`]): every request of a
    /// device reads it first and appends what it raised before answering (ryw mode).
    pub principal_records: bool,
    /// How long each call to the record store takes, each way (simulated time).
    pub record_latency: Duration,
}

impl Default for Scenario {
    /// 8 users, 3 instances, 40 operations each, 25% writes, no faults.
    fn default() -> Self {
        Scenario {
            sim: SimConfig::default(),
            users: 8,
            instances: 3,
            ops_per_user: 40,
            write_ratio: 0.25,
            keys_per_user: 2,
            foreign_read_ratio: 0.2,
            read_after_write: 0.5,
            think_min: Duration::from_millis(5),
            think_max: Duration::from_millis(200),
            seed: 0,
            scope_cap: ryw::version::DEFAULT_SCOPE_CAP,
            fork_ratio: 0.0,
            fork_merge: 0.5,
            record: false,
            record_outage: None,
            devices: 1,
            principal_records: false,
            record_latency: Duration::ZERO,
        }
    }
}

impl Scenario {
    /// A random small scenario with lag, partitions, lost responses and duplicated deliveries,
    /// entirely determined by `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = SimRng::new(seed);
        let replicas = 1 + rng.below(3);
        let lags = (0..replicas)
            .map(|_| {
                LagModel::new(
                    Duration::from_millis(rng.below(40) as u64),
                    Duration::from_millis(1 + rng.below(80) as u64),
                )
                .spikes(
                    rng.unit() * 0.1,
                    Duration::from_millis(rng.below(800) as u64),
                )
            })
            .collect();
        let mut sim = SimConfig::default()
            .seed(rng.next_u64())
            .replicas(replicas)
            .lag_per_replica(lags)
            .latency(LatencyModel {
                replica: Duration::from_micros(200 + rng.below(2_000) as u64),
                primary: Duration::from_micros(1_000 + rng.below(10_000) as u64),
                jitter: Duration::from_micros(rng.below(1_000) as u64),
            })
            .lost_responses(if rng.chance(0.7) {
                rng.unit() * 0.1
            } else {
                0.0
            })
            .duplicate_deliveries(if rng.chance(0.5) {
                rng.unit() * 0.1
            } else {
                0.0
            });
        let horizon_ms = 2_000;
        for _ in 0..rng.below(3) {
            let start = rng.below(horizon_ms) as u64;
            let len = 50 + rng.below(800) as u64;
            let kind = if rng.chance(0.5) {
                PartitionKind::PrimaryUnreachable
            } else {
                PartitionKind::ReplicaIsolated(rng.below(replicas))
            };
            sim = sim.partition(Partition {
                start: Duration::from_millis(start),
                end: Duration::from_millis(start + len),
                kind,
            });
        }
        // The edges: a replica cut off far longer than any replication window, cheap reads sent
        // to whichever replica lags most, sessions touching many more keys than their vector
        // keeps, slow users whose operations span that window, and one token continued twice at
        // once.
        if rng.chance(0.3) {
            let start = rng.below(1_000) as u64;
            let len = 3_000 + rng.below(9_000) as u64;
            sim = sim.partition(Partition {
                start: Duration::from_millis(start),
                end: Duration::from_millis(start + len),
                kind: PartitionKind::ReplicaIsolated(rng.below(replicas)),
            });
        }
        sim = sim.reads_to_laggiest(rng.chance(0.25));
        let many_keys = rng.chance(0.3);
        let slow = rng.chance(0.25);
        Scenario {
            sim,
            users: 1 + rng.below(4),
            instances: 1 + rng.below(3),
            ops_per_user: 10 + rng.below(30),
            write_ratio: 0.1 + rng.unit() * 0.5,
            keys_per_user: if many_keys {
                2 + rng.below(12)
            } else {
                1 + rng.below(3)
            },
            foreign_read_ratio: rng.unit() * 0.3,
            read_after_write: rng.unit(),
            think_min: Duration::ZERO,
            think_max: if slow {
                Duration::from_millis(300 + rng.below(1_500) as u64)
            } else {
                Duration::from_millis(1 + rng.below(120) as u64)
            },
            seed: rng.next_u64(),
            scope_cap: if many_keys {
                1 + rng.below(4)
            } else {
                ryw::version::DEFAULT_SCOPE_CAP
            },
            fork_ratio: if rng.chance(0.4) {
                rng.unit() * 0.3
            } else {
                0.0
            },
            fork_merge: rng.unit(),
            record: false,
            record_outage: None,
            devices: 1,
            principal_records: false,
            record_latency: Duration::ZERO,
        }
    }

    /// A random scenario of sessions that touch ten times their vector's cap or more, keeping
    /// what they coarsen in a shared record: tokens continued twice at once, replicas cut off for
    /// seconds, and sometimes the record store down for a while. Entirely determined by `seed`.
    ///
    /// ```
    /// use ryw_sim::workload::{run_blocking, Mode, Scenario};
    ///
    /// let scenario = Scenario::random_with_record(7);
    /// assert!(scenario.record && scenario.keys_per_user >= 10 * scenario.scope_cap);
    /// let run = run_blocking(&scenario, &Mode::ryw());
    /// assert_eq!(run.check.violations.len(), 0);
    /// ```
    pub fn random_with_record(seed: u64) -> Self {
        let mut scenario = Self::random(seed);
        let mut rng = SimRng::new(seed ^ 0x5eed_0f7e_c07d);
        scenario.record = true;
        scenario.scope_cap = 1 + rng.below(4);
        scenario.keys_per_user = scenario.scope_cap * (10 + rng.below(10));
        scenario.write_ratio = 0.2 + rng.unit() * 0.4;
        scenario.fork_ratio = rng.unit() * 0.3;
        if rng.chance(0.5) {
            let start = rng.below(1_500) as u64;
            let len = 3_000 + rng.below(9_000) as u64;
            let replica = rng.below(scenario.sim.replicas.max(1));
            scenario.sim = scenario.sim.partition(Partition {
                start: Duration::from_millis(start),
                end: Duration::from_millis(start + len),
                kind: PartitionKind::ReplicaIsolated(replica),
            });
        }
        if rng.chance(0.3) {
            let start = rng.below(2_000) as u64;
            let len = 100 + rng.below(3_000) as u64;
            scenario.record_outage = Some((
                Duration::from_millis(start),
                Duration::from_millis(start + len),
            ));
        }
        scenario
    }

    /// A random scenario of 20 principals with 3 devices each, through 2 instances, all at once:
    /// each device a session of its own, sharing with the principal's other devices only the
    /// principal's record ([`Scenario::principal_records`]), which sometimes goes down for a
    /// while. Lag, faults and replicas as [`Scenario::random`] draws them for `seed`.
    ///
    /// ```
    /// use ryw_sim::workload::{run_blocking, Mode, Scenario};
    ///
    /// let scenario = Scenario::random_principals(3);
    /// let run = run_blocking(&scenario, &Mode::ryw());
    /// assert_eq!(run.check.violations.len(), 0);
    /// assert_eq!(run.principal_check.expect("devices").violations.len(), 0);
    /// ```
    pub fn random_principals(seed: u64) -> Self {
        let mut scenario = Self::random(seed);
        let mut rng = SimRng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        scenario.users = 20;
        scenario.devices = 3;
        scenario.instances = 2;
        scenario.principal_records = true;
        scenario.ops_per_user = 3 + rng.below(6);
        scenario.keys_per_user = 1 + rng.below(3);
        scenario.write_ratio = 0.2 + rng.unit() * 0.4;
        scenario.think_max = Duration::from_millis(1 + rng.below(100) as u64);
        scenario.record_latency = Duration::from_micros(200 + rng.below(3_000) as u64);
        scenario.record = rng.chance(0.3);
        if rng.chance(0.3) {
            let start = rng.below(500) as u64;
            let len = 20 + rng.below(400) as u64;
            scenario.record_outage = Some((
                Duration::from_millis(start),
                Duration::from_millis(start + len),
            ));
        }
        scenario
    }

    /// [`Scenario::random`] with replicas that apply the log out of order
    /// ([`ReplicationOrder::OutOfOrder`]): the same deployment, users and faults for the same
    /// `seed`, each log entry landing at each replica after its own delay.
    ///
    /// ```
    /// use ryw_sim::workload::{run_blocking, Mode, Scenario};
    /// use ryw_sim::ReplicationOrder;
    ///
    /// let scenario = Scenario::random_out_of_order(42);
    /// assert_eq!(scenario.sim.replication_order, ReplicationOrder::OutOfOrder);
    /// let with_layer = run_blocking(&scenario, &Mode::ryw());
    /// assert_eq!(with_layer.check.violations.len(), 0);
    /// ```
    pub fn random_out_of_order(seed: u64) -> Self {
        let mut scenario = Self::random(seed);
        scenario.sim = scenario.sim.replication_order(ReplicationOrder::OutOfOrder);
        scenario
    }
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The recorded history.
    pub history: History,
    /// The checker's findings on it.
    pub check: CheckReport,
    /// Latency of every completed read, in microseconds of simulated time.
    pub read_latencies_micros: Vec<u64>,
    /// Reads that returned data.
    pub reads: usize,
    /// Of those, reads whose data came from a replica.
    pub replica_reads: usize,
    /// Reads reported `Pending`.
    pub pending_reads: usize,
    /// Reads served by a replica that held a write of the key beyond the prefix of the log it
    /// had fully applied (only out of order: [`ReplicationOrder::OutOfOrder`]).
    pub reads_past_applied: usize,
    /// Deliveries of a log entry to a replica that landed before an earlier entry had
    /// ([`SimStore::reordered_arrivals`]).
    pub reordered_arrivals: usize,
    /// Operations that returned an error.
    pub failed_ops: usize,
    /// The longest encoded token seen (ryw mode).
    pub max_token_len: usize,
    /// With several devices per user ([`Scenario::devices`]): the checker's findings with each
    /// user's devices taken as one session, reads reported
    /// [`SessionOnly`](ryw::Visibility::SessionOnly) unchecked (they promise nothing for the
    /// principal).
    pub principal_check: Option<CheckReport>,
    /// Reads reported [`SessionOnly`](ryw::Visibility::SessionOnly).
    pub session_only_reads: usize,
}

impl RunReport {
    /// Share of reads served by a replica.
    pub fn replica_share(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.replica_reads as f64 / self.reads as f64
        }
    }

    /// The `p`-th percentile (0 to 100) of read latency.
    pub fn read_latency_percentile(&self, p: f64) -> Duration {
        if self.read_latencies_micros.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.read_latencies_micros.clone();
        v.sort_unstable();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Duration::from_micros(v[idx.min(v.len() - 1)])
    }
}

type Layered = ReadYourWrites<SimClient, SimAdapter, RetryPolicy>;

struct UserResult {
    ops: Vec<Op>,
    latencies: Vec<u64>,
    reads: usize,
    replica_reads: usize,
    pending: usize,
    past_applied: usize,
    failed: usize,
    max_token_len: usize,
    session_only: usize,
    /// Positions in `ops` of operations whose principal's record could not be advanced: their
    /// caller was told, and later operations of the principal's other devices do not depend on
    /// them.
    unadvanced: Vec<usize>,
}

/// The record store of a scenario: in memory, failing while simulated time is in its outage.
struct SimRecordStore {
    inner: InMemoryRecordStore,
    store: SimStore,
    outage: Option<(Duration, Duration)>,
    /// Each way, per call.
    latency: Duration,
}

impl SimRecordStore {
    fn check(&self) -> Result<(), RecordError> {
        let now = self.store.elapsed();
        match self.outage {
            Some((start, end)) if now >= start && now < end => {
                Err(RecordError::Unavailable("the record store is down".into()))
            }
            _ => Ok(()),
        }
    }
}

impl RecordStore for SimRecordStore {
    fn append<'a>(
        &'a self,
        session: SessionId,
        entries: &'a [ryw::version::Entry],
    ) -> RecordFuture<'a, u64> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            self.check()?;
            let version = self.inner.append(session, entries).await;
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            version
        })
    }

    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<ryw::record::Record>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            self.check()?;
            let record = self.inner.load(session).await;
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            record
        })
    }
}

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
    let shared = Arc::new(SimRecordStore {
        inner: InMemoryRecordStore::new(),
        store: store.clone(),
        outage: scenario.record_outage,
        latency: scenario.record_latency,
    });
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
    let mut history = History {
        ops: Vec::new(),
        log: store.log(),
    };
    let mut report = RunReport {
        history: History::default(),
        check: CheckReport::default(),
        read_latencies_micros: Vec::new(),
        reads: 0,
        replica_reads: 0,
        pending_reads: 0,
        reads_past_applied: 0,
        reordered_arrivals: store.reordered_arrivals(),
        failed_ops: 0,
        max_token_len: 0,
        principal_check: None,
        session_only_reads: 0,
    };
    let mut unadvanced = Vec::new();
    for r in results {
        let base = history.ops.len();
        unadvanced.extend(r.unadvanced.iter().map(|i| base + i));
        history.ops.extend(r.ops);
        report.read_latencies_micros.extend(r.latencies);
        report.reads += r.reads;
        report.replica_reads += r.replica_reads;
        report.pending_reads += r.pending;
        report.reads_past_applied += r.past_applied;
        report.failed_ops += r.failed;
        report.max_token_len = report.max_token_len.max(r.max_token_len);
        report.session_only_reads += r.session_only;
    }
    report.check = check(&history);
    if devices > 1 {
        // Each user's devices as one session; what was promised for a device's session only is
        // not checked for its principal.
        let mut by_principal = history.clone();
        for &i in &unadvanced {
            by_principal.ops[i].detached = true;
        }
        for op in &mut by_principal.ops {
            op.session /= devices;
            if let OpKind::Read { status, .. } = &mut op.kind {
                if *status == ReadStatus::SessionOnly {
                    *status = ReadStatus::Pending;
                }
            }
        }
        report.principal_check = Some(check(&by_principal));
    }
    report.history = history;
    report
}

/// Runs `scenario` in `mode` on a fresh paused single-threaded runtime: deterministic per seed.
pub fn run_blocking(scenario: &Scenario, mode: &Mode) -> RunReport {
    run_blocking_observed(scenario, mode, None)
}

/// [`run_blocking`], with `observer` installed on every instance's session layer.
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

/// A user, and which of the user's devices.
#[derive(Clone, Copy)]
struct Who {
    user: usize,
    device: usize,
}

type Records = (Vec<Arc<SessionRecords>>, Vec<Arc<PrincipalRecords>>);

async fn run_user(
    who: Who,
    mut rng: SimRng,
    store: SimStore,
    services: Vec<Layered>,
    (records, principals): Records,
    scenario: Scenario,
    mode: Mode,
) -> UserResult {
    let Who { user, device } = who;
    let devices = scenario.devices.max(1);
    // Operations are recorded per device: the session they ran in.
    let session_no = user * devices + device;
    let principal = format!("principal{user}");
    let mut out = UserResult {
        ops: Vec::with_capacity(scenario.ops_per_user),
        latencies: Vec::new(),
        reads: 0,
        replica_reads: 0,
        pending: 0,
        past_applied: 0,
        failed: 0,
        max_token_len: 0,
        session_only: 0,
        unadvanced: Vec::new(),
    };
    // Derived ids keep runs reproducible; real applications use random or per-user ids.
    let id = if devices == 1 {
        SessionId::derive(format!("sim:{}:{user}", scenario.seed).as_bytes())
    } else {
        SessionId::derive(format!("sim:{}:{user}:{device}", scenario.seed).as_bytes())
    };
    let mut token = Session::with_id(id)
        .token()
        .encode()
        .expect("fresh token encodes");
    let mut last_write: Option<Duration> = None;
    let instances = scenario.instances.max(1);
    let mut follow_up: Option<Key> = None;
    for n in 0..scenario.ops_per_user {
        let (is_write, key) = match follow_up.take() {
            Some(key) => {
                let redirect = 2_000 + rng.below(3_000) as u64;
                tokio::time::sleep(Duration::from_micros(redirect)).await;
                (false, key)
            }
            None => {
                let lo = scenario.think_min.as_micros() as u64;
                let hi = scenario.think_max.as_micros() as u64;
                let think = lo + (rng.unit() * hi.saturating_sub(lo) as f64) as u64;
                tokio::time::sleep(Duration::from_micros(think)).await;
                let is_write = rng.chance(scenario.write_ratio);
                let owner =
                    if !is_write && scenario.users > 1 && rng.chance(scenario.foreign_read_ratio) {
                        (user + 1 + rng.below(scenario.users - 1)) % scenario.users
                    } else {
                        user
                    };
                let key: Key =
                    format!("user{owner}/k{}", rng.below(scenario.keys_per_user.max(1))).into();
                if is_write && rng.chance(scenario.read_after_write) {
                    follow_up = Some(key.clone());
                }
                (is_write, key)
            }
        };
        let instance = rng.below(instances);
        let value = ((session_no as u64 + 1) << 32) | (n as u64 + 1);
        let invoked = store.elapsed();
        let mut ghost_op = None;
        let (mut unadvanced, mut ghost_unadvanced) = (false, false);
        let kind = match &mode {
            Mode::Ryw(_) | Mode::RywAdaptive(_) => {
                let session = continue_session(&token, scenario.scope_cap);
                if let Some(r) = records.get(instance) {
                    r.load(&session).await;
                }
                if let Some(p) = principals.get(instance) {
                    p.enter(principal.as_bytes(), &session).await;
                }
                let request = if is_write {
                    SimRequest::put(key.clone(), value)
                } else {
                    SimRequest::get(key.clone())
                };
                let main = services[instance].clone().oneshot(session.request(request));
                let result = if rng.chance(scenario.fork_ratio) {
                    // The same token continued a second time, at once, on another instance.
                    let ghost = continue_session(&token, scenario.scope_cap);
                    let ghost_instance = (instance + 1) % instances;
                    if let Some(r) = records.get(ghost_instance) {
                        r.load(&ghost).await;
                    }
                    if let Some(p) = principals.get(ghost_instance) {
                        p.enter(principal.as_bytes(), &ghost).await;
                    }
                    let ghost_value = value | (1 << 31);
                    let other = services[(instance + 1) % instances]
                        .clone()
                        .oneshot(ghost.request(SimRequest::put(key.clone(), ghost_value)));
                    let (result, ghost_result) = tokio::join!(main, other);
                    if let Some(p) = principals.get(ghost_instance) {
                        ghost_unadvanced =
                            p.leave(principal.as_bytes(), &ghost).await == Advanced::Failed;
                    }
                    if let Some(r) = records.get(ghost_instance) {
                        r.flush(&ghost).await;
                    }
                    let merged = rng.chance(scenario.fork_merge);
                    if merged {
                        session.merge(&ghost.snapshot());
                    }
                    ghost_op = Some(Op {
                        session: session_no,
                        key: key.clone(),
                        kind: OpKind::Write {
                            value: ghost_value,
                            ok: ghost_result.is_ok(),
                        },
                        invoked_micros: invoked.as_micros() as u64,
                        completed_micros: store.elapsed().as_micros() as u64,
                        detached: !merged,
                    });
                    result
                } else {
                    main.await
                };
                if let Some(p) = principals.get(instance) {
                    unadvanced = p.leave(principal.as_bytes(), &session).await == Advanced::Failed;
                }
                if let Some(r) = records.get(instance) {
                    r.flush(&session).await;
                }
                token = session.token().encode().expect("token encodes");
                out.max_token_len = out.max_token_len.max(token.len());
                match (is_write, result) {
                    (true, Ok(_)) => OpKind::Write { value, ok: true },
                    (true, Err(_)) => OpKind::Write { value, ok: false },
                    (false, Ok(response)) => {
                        let status = match response.visibility() {
                            Visibility::Guaranteed(_) => ReadStatus::Guaranteed,
                            Visibility::SessionOnly(_) => {
                                out.session_only += 1;
                                ReadStatus::SessionOnly
                            }
                            _ => ReadStatus::Pending,
                        };
                        read_kind(&mut out, response.get_ref(), status)
                    }
                    (false, Err(_)) => OpKind::Read {
                        observed: None,
                        status: ReadStatus::Guaranteed,
                    },
                }
            }
            _ => {
                let client = store.client(instance);
                if is_write {
                    let ok = naive_write(client, SimRequest::put(key.clone(), value)).await;
                    if ok {
                        last_write = Some(store.elapsed());
                    }
                    OpKind::Write { value, ok }
                } else {
                    let primary = match &mode {
                        Mode::Strong => true,
                        Mode::Pinned(window) => {
                            last_write.is_some_and(|t| store.elapsed() < t + *window)
                        }
                        _ => false,
                    };
                    let request = if primary {
                        SimRequest::get_primary(key.clone())
                    } else {
                        SimRequest::get(key.clone())
                    };
                    match client.oneshot(request).await {
                        Ok(response) => read_kind(&mut out, &response, ReadStatus::Unchecked),
                        Err(_) => OpKind::Read {
                            observed: None,
                            status: ReadStatus::Unchecked,
                        },
                    }
                }
            }
        };
        let completed = store.elapsed();
        match &kind {
            OpKind::Read {
                observed: Some(_), ..
            } => out.latencies.push((completed - invoked).as_micros() as u64),
            OpKind::Read { observed: None, .. } | OpKind::Write { ok: false, .. } => {
                out.failed += 1
            }
            _ => {}
        }
        if unadvanced {
            out.unadvanced.push(out.ops.len());
        }
        out.ops.push(Op {
            session: session_no,
            key,
            kind,
            invoked_micros: invoked.as_micros() as u64,
            completed_micros: completed.as_micros() as u64,
            detached: false,
        });
        if let Some(op) = ghost_op {
            if let OpKind::Write { ok: false, .. } = op.kind {
                out.failed += 1;
            }
            if ghost_unadvanced {
                out.unadvanced.push(out.ops.len());
            }
            out.ops.push(op);
        }
    }
    out
}

/// Continues the session of `token` as an app instance does, with the scenario's vector cap.
fn continue_session(token: &str, cap: usize) -> Session {
    let session = Session::from_encoded(token).expect("own token decodes");
    if cap != ryw::version::DEFAULT_SCOPE_CAP {
        session.with_state(|s| s.vector_mut().set_cap(cap));
    }
    session
}
fn read_kind(out: &mut UserResult, response: &SimResponse, status: ReadStatus) -> OpKind {
    out.reads += 1;
    if matches!(response.served_by, Node::Replica(_)) {
        out.replica_reads += 1;
        if response.version > response.applied {
            out.past_applied += 1;
        }
    }
    if status == ReadStatus::Pending {
        out.pending += 1;
    }
    OpKind::Read {
        observed: Some(response.version),
        status,
    }
}

/// What applications without idempotency keys do: retry a failed write as it is, a few times.
async fn naive_write(client: SimClient, request: SimRequest) -> bool {
    for _ in 0..3 {
        match client.clone().oneshot(request.clone()).await {
            Ok(_) => return true,
            Err(SimError::Timeout | SimError::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return false,
        }
    }
    false
}
