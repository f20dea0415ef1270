//! The simulated store: one primary with an ordered log, N lagging replicas that apply it in
//! order or out of order, behind a tower `Service` per client instance.

use crate::config::{PartitionKind, ReplicationOrder, SimConfig};
use crate::rng::SimRng;
use ryw::clock::{Clock, HybridTimestamp};
use ryw::{Version, WriteId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// A key of the simulated store.
pub type Key = Arc<str>;

/// Where a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The replica nearest the client instance.
    Local,
    /// A given replica.
    Replica(usize),
    /// The primary (a strong read).
    Primary,
}

/// Which node served a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The primary.
    Primary,
    /// A replica.
    Replica(usize),
}

/// A read of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    /// The key.
    pub key: Key,
    /// Where the read goes.
    pub target: Target,
    /// Server wait: the replica answers only once it has applied every log entry up to this
    /// position (out of order, holding a later entry is not enough).
    pub min_version: Option<Version>,
}

/// A write of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// The key.
    pub key: Key,
    /// The value (workloads write unique values so the checker can tell writes apart).
    pub value: u64,
    /// The idempotency key: a write whose id already applied is not applied again.
    pub write_id: Option<WriteId>,
    /// The writer's hybrid clock reading, kept with the value.
    pub clock: Option<HybridTimestamp>,
    /// Apply only if the key's current version is this one (`Version::ZERO`: absent).
    pub if_version: Option<Version>,
}

/// A request to the simulated store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimRequest {
    /// A read.
    Get(Get),
    /// A write.
    Put(Put),
}

impl SimRequest {
    /// A read of `key` at the local replica.
    pub fn get(key: impl Into<Key>) -> Self {
        SimRequest::Get(Get {
            key: key.into(),
            target: Target::Local,
            min_version: None,
        })
    }

    /// A strong read of `key` at the primary.
    pub fn get_primary(key: impl Into<Key>) -> Self {
        SimRequest::Get(Get {
            key: key.into(),
            target: Target::Primary,
            min_version: None,
        })
    }

    /// An unconditional write of `value` to `key`.
    pub fn put(key: impl Into<Key>, value: u64) -> Self {
        SimRequest::Put(Put {
            key: key.into(),
            value,
            write_id: None,
            clock: None,
            if_version: None,
        })
    }

    /// A write applied only if `key` is at `version`.
    pub fn put_if(key: impl Into<Key>, value: u64, version: Version) -> Self {
        SimRequest::Put(Put {
            key: key.into(),
            value,
            write_id: None,
            clock: None,
            if_version: Some(version),
        })
    }

    /// The key the request touches.
    pub fn key(&self) -> &Key {
        match self {
            SimRequest::Get(g) => &g.key,
            SimRequest::Put(p) => &p.key,
        }
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimResponse {
    /// The key.
    pub key: Key,
    /// The value read (for reads) or written.
    pub value: Option<u64>,
    /// The log position of the key's visible write (reads: the newest write of the key the node
    /// holds) or of the write (writes); `Version::ZERO` when the node holds no write of the key.
    pub version: Version,
    /// The hybrid clock of that write, if the writer gave one.
    pub clock: Option<HybridTimestamp>,
    /// The node that served the request.
    pub served_by: Node,
    /// The longest prefix of the log the serving node had fully applied. Out of order
    /// ([`ReplicationOrder::OutOfOrder`]) the node may also hold later entries, so `version` can
    /// exceed it.
    pub applied: Version,
    /// The write had already applied under the same write id: this attempt changed nothing.
    pub deduplicated: bool,
}

impl SimResponse {
    /// The value.
    pub fn value(&self) -> Option<u64> {
        self.value
    }
}

/// The state of a key at the primary, reported by a failed conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentVersion {
    /// Its version (log position).
    pub version: Version,
    /// Its value.
    pub value: Option<u64>,
    /// Its writer's clock.
    pub clock: Option<HybridTimestamp>,
    /// Its writer.
    pub writer: Option<WriteId>,
}

/// Errors of the simulated store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The node could not be reached; nothing applied.
    #[error("node unavailable")]
    Unavailable,
    /// No response: the request may or may not have applied.
    #[error("request timed out")]
    Timeout,
    /// A conditional write found another version.
    #[error("condition failed: key is at {}", .0.version)]
    ConditionFailed(Box<CurrentVersion>),
}

impl From<ryw::error::BoxError> for SimError {
    /// The store's own error comes back unchanged. Anything else tower middleware raised becomes
    /// the simulated error of the same meaning: a refusal before sending is
    /// [`SimError::Unavailable`], a timeout (or any other failure, which may have applied) is
    /// [`SimError::Timeout`].
    fn from(error: ryw::error::BoxError) -> Self {
        match ryw::error::MiddlewareError::unbox::<SimError>(error) {
            Ok(own) => own,
            Err(e) if e.class() == ryw::adapter::ErrorClass::RETRYABLE => SimError::Unavailable,
            Err(_) => SimError::Timeout,
        }
    }
}

impl SimError {
    /// True for [`SimError::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SimError::Unavailable)
    }

    /// True for [`SimError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, SimError::Timeout)
    }

    /// True for [`SimError::ConditionFailed`].
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, SimError::ConditionFailed(_))
    }
}

/// One applied write in the primary's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position (1-based): the version of the write.
    pub position: u64,
    /// The key.
    pub key: Key,
    /// The value.
    pub value: u64,
    /// The write id, if the request carried one.
    pub write_id: Option<WriteId>,
    /// The writer's clock, if any.
    pub clock: Option<HybridTimestamp>,
    /// When it applied, in microseconds of simulated time.
    pub at_micros: u64,
}

struct World {
    config: SimConfig,
    rng: SimRng,
    log: Vec<LogEntry>,
    by_key: HashMap<Key, Vec<u64>>,
    /// Per replica, when each log entry arrives there (microseconds; non-decreasing in order).
    arrivals: Vec<Vec<u64>>,
    /// Per replica, when every log entry up to and including each one has arrived there: the
    /// running maximum of `arrivals` (equal to it in order), non-decreasing.
    prefix_arrivals: Vec<Vec<u64>>,
    applied_ids: HashMap<WriteId, u64>,
}

impl World {
    /// The newest write of `key` among the first `applied` log entries (the primary's view with
    /// `applied` the whole log).
    fn visible(&self, key: &Key, applied: u64) -> Option<&LogEntry> {
        let positions = self.by_key.get(key)?;
        let idx = positions.partition_point(|&p| p <= applied);
        let p = *positions.get(idx.checked_sub(1)?)?;
        Some(&self.log[(p - 1) as usize])
    }

    /// The newest write of `key` (by log position) that has arrived at `replica` by `now`: last
    /// writer wins, whatever order the writes arrived in.
    fn held(&self, key: &Key, replica: usize, now: u64) -> Option<&LogEntry> {
        let positions = self.by_key.get(key)?;
        let arrivals = &self.arrivals[replica];
        // Every write within the applied prefix has arrived; past it, only some may have.
        let applied = self.applied_at(replica, now);
        let idx = positions.partition_point(|&p| p <= applied);
        let p = positions[idx..]
            .iter()
            .rev()
            .find(|&&p| arrivals[(p - 1) as usize] <= now)
            .or_else(|| positions.get(idx.checked_sub(1)?))?;
        Some(&self.log[(p - 1) as usize])
    }

    /// The length of the longest prefix of the log that has fully arrived at `replica` by `now`.
    fn applied_at(&self, replica: usize, now: u64) -> u64 {
        self.prefix_arrivals[replica].partition_point(|&a| a <= now) as u64
    }

    /// When `replica` has applied every log entry up to `position` (1-based, within the log).
    fn applied_by(&self, replica: usize, position: u64) -> u64 {
        self.prefix_arrivals[replica][(position - 1) as usize]
    }

    fn primary_unreachable(&self, now: Duration) -> bool {
        self.config
            .partitions
            .iter()
            .any(|p| p.kind == PartitionKind::PrimaryUnreachable && p.covers(now))
    }

    fn leg(&mut self, base: Duration) -> Duration {
        let jitter = self
            .rng
            .exponential(self.config.latency.jitter.as_secs_f64());
        base / 2 + Duration::from_secs_f64(jitter.min(1.0))
    }

    /// A read of `key` served by `node` at `now`.
    fn read(&self, key: &Key, node: Node, now: u64) -> SimResponse {
        let (entry, applied) = match node {
            Node::Primary => {
                let applied = self.log.len() as u64;
                (self.visible(key, applied), applied)
            }
            Node::Replica(r) => (self.held(key, r, now), self.applied_at(r, now)),
        };
        SimResponse {
            key: key.clone(),
            value: entry.map(|e| e.value),
            version: Version::new(entry.map_or(0, |e| e.position)),
            clock: entry.and_then(|e| e.clock),
            served_by: node,
            applied: Version::new(applied),
            deduplicated: false,
        }
    }

    fn apply_put(&mut self, put: &Put, now: u64) -> Result<SimResponse, SimError> {
        let applied = self.log.len() as u64;
        if let Some(id) = put.write_id {
            if let Some(&p) = self.applied_ids.get(&id) {
                let e = &self.log[(p - 1) as usize];
                return Ok(SimResponse {
                    key: e.key.clone(),
                    value: Some(e.value),
                    version: Version::new(p),
                    clock: e.clock,
                    served_by: Node::Primary,
                    applied: Version::new(applied),
                    deduplicated: true,
                });
            }
        }
        if let Some(expected) = put.if_version {
            let current = self.visible(&put.key, applied);
            let current_version = Version::new(current.map_or(0, |e| e.position));
            if current_version != expected {
                return Err(SimError::ConditionFailed(Box::new(CurrentVersion {
                    version: current_version,
                    value: current.map(|e| e.value),
                    clock: current.and_then(|e| e.clock),
                    writer: current.and_then(|e| e.write_id),
                })));
            }
        }
        let position = applied + 1;
        self.log.push(LogEntry {
            position,
            key: put.key.clone(),
            value: put.value,
            write_id: put.write_id,
            clock: put.clock,
            at_micros: now,
        });
        self.by_key
            .entry(put.key.clone())
            .or_default()
            .push(position);
        if let Some(id) = put.write_id {
            self.applied_ids.insert(id, position);
        }
        for r in 0..self.arrivals.len() {
            let lag = self.config.lag_of(r).sample(&mut self.rng);
            let mut arrival = now + lag.as_micros() as u64;
            for p in &self.config.partitions {
                if p.kind == PartitionKind::ReplicaIsolated(r)
                    && p.covers(Duration::from_micros(arrival))
                {
                    arrival = p.end.as_micros() as u64 + lag.as_micros() as u64;
                }
            }
            let prefix = self.prefix_arrivals[r]
                .last()
                .copied()
                .unwrap_or(0)
                .max(arrival);
            let arrival = match self.config.replication_order {
                ReplicationOrder::InOrder => prefix,
                ReplicationOrder::OutOfOrder => arrival,
            };
            self.arrivals[r].push(arrival);
            self.prefix_arrivals[r].push(prefix);
        }
        Ok(SimResponse {
            key: put.key.clone(),
            value: Some(put.value),
            version: Version::new(position),
            clock: put.clock,
            served_by: Node::Primary,
            applied: Version::new(position),
            deduplicated: false,
        })
    }
}

/// The simulated store. Cheap to clone; all clones share one deployment.
///
/// Runs in tokio time: under a paused runtime (`start_paused = true`) a whole simulation is
/// deterministic for a given seed and takes no real time.
#[derive(Clone)]
pub struct SimStore {
    world: Arc<Mutex<World>>,
    start: Instant,
}

impl fmt::Debug for SimStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.lock();
        f.debug_struct("SimStore")
            .field("replicas", &w.arrivals.len())
            .field("log_len", &w.log.len())
            .finish()
    }
}

/// Base of the simulated wall clock: 2025-11-14T22:13:20Z, in microseconds.
pub const SIM_EPOCH_MICROS: u64 = 1_763_158_400_000_000;

impl SimStore {
    /// A new deployment. Must be called inside a tokio runtime with the time driver.
    pub fn new(config: SimConfig) -> Self {
        let replicas = config.replicas.max(1);
        SimStore {
            world: Arc::new(Mutex::new(World {
                rng: SimRng::new(config.seed),
                config,
                log: Vec::new(),
                by_key: HashMap::new(),
                arrivals: vec![Vec::new(); replicas],
                prefix_arrivals: vec![Vec::new(); replicas],
                applied_ids: HashMap::new(),
            })),
            start: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client of app instance `instance`: its local replica is `instance % replicas`.
    pub fn client(&self, instance: usize) -> SimClient {
        let replicas = self.lock().arrivals.len();
        SimClient {
            store: self.clone(),
            local: instance % replicas,
        }
    }

    /// The simulated wall clock, for the session layer.
    pub fn clock(&self) -> SimClock {
        SimClock { start: self.start }
    }

    /// Simulated time since the store was created.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// A copy of the primary's log.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    /// Number of replicas.
    pub fn replicas(&self) -> usize {
        self.lock().arrivals.len()
    }

    /// How many (replica, log entry) deliveries landed before an earlier entry of the log had
    /// landed at that replica: zero when replicas apply the log in order.
    pub fn reordered_arrivals(&self) -> usize {
        let w = self.lock();
        w.arrivals
            .iter()
            .zip(&w.prefix_arrivals)
            .map(|(arrivals, prefix)| arrivals.iter().zip(prefix).filter(|(a, p)| a < p).count())
            .sum()
    }

    /// Waits until every duplicate delivery that may still be in flight has landed.
    pub async fn quiesce(&self) {
        let wait = self.lock().config.duplicate_delay_max + Duration::from_millis(10);
        tokio::time::sleep(wait).await;
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn execute(self, local: usize, request: SimRequest) -> Result<SimResponse, SimError> {
        match request {
            SimRequest::Get(get) => self.execute_get(local, get).await,
            SimRequest::Put(put) => self.execute_put(put).await,
        }
    }

    async fn execute_get(self, local: usize, get: Get) -> Result<SimResponse, SimError> {
        let node = match get.target {
            Target::Local if self.lock().config.reads_to_laggiest => {
                let w = self.lock();
                let now = self.now().as_micros() as u64;
                let laggiest = (0..w.arrivals.len())
                    .min_by_key(|&r| w.applied_at(r, now))
                    .unwrap_or(local);
                Node::Replica(laggiest)
            }
            Target::Local => Node::Replica(local),
            Target::Replica(r) => Node::Replica(r % self.replicas()),
            Target::Primary => Node::Primary,
        };
        let (out, back, lost) = {
            let mut guard = self.lock();
            let w = &mut *guard;
            let base = match node {
                Node::Primary => w.config.latency.primary,
                Node::Replica(_) => w.config.latency.replica,
            };
            let out = w.leg(base);
            let back = w.leg(base);
            let lost = w.rng.chance(w.config.lost_responses);
            (out, back, lost)
        };
        tokio::time::sleep(out).await;
        let response = match node {
            Node::Primary => {
                let read = {
                    let w = self.lock();
                    let now = self.now().as_micros() as u64;
                    (!w.primary_unreachable(self.now()))
                        .then(|| w.read(&get.key, Node::Primary, now))
                };
                match read {
                    Some(response) => response,
                    None => {
                        tokio::time::sleep(back).await;
                        return Err(SimError::Unavailable);
                    }
                }
            }
            Node::Replica(r) => {
                if let Some(min) = get.min_version {
                    let wait = {
                        let w = self.lock();
                        let now = self.now().as_micros() as u64;
                        let max = w.config.max_server_wait.as_micros() as u64;
                        let needed = min.get();
                        if w.applied_at(r, now) >= needed {
                            Some(0)
                        } else if needed as usize <= w.log.len() {
                            let at = w.applied_by(r, needed);
                            (at - now <= max).then_some(at - now)
                        } else {
                            None
                        }
                    };
                    match wait {
                        Some(micros) => tokio::time::sleep(Duration::from_micros(micros)).await,
                        None => {
                            let max = self.lock().config.max_server_wait;
                            tokio::time::sleep(max + back).await;
                            return Err(SimError::Timeout);
                        }
                    }
                }
                let w = self.lock();
                let now = self.now().as_micros() as u64;
                w.read(&get.key, node, now)
            }
        };
        tokio::time::sleep(back).await;
        if lost {
            return Err(SimError::Timeout);
        }
        Ok(response)
    }

    async fn execute_put(self, put: Put) -> Result<SimResponse, SimError> {
        let (out, back, lost, duplicate) = {
            let mut guard = self.lock();
            let w = &mut *guard;
            let base = w.config.latency.primary;
            let out = w.leg(base);
            let back = w.leg(base);
            let lost = w.rng.chance(w.config.lost_responses);
            let duplicate = if w.rng.chance(w.config.duplicate_deliveries) {
                let max = w.config.duplicate_delay_max.as_secs_f64();
                Some(Duration::from_secs_f64(w.rng.unit() * max))
            } else {
                None
            };
            (out, back, lost, duplicate)
        };
        tokio::time::sleep(out).await;
        let (result, reached) = {
            let mut w = self.lock();
            if w.primary_unreachable(self.now()) {
                (Err(SimError::Unavailable), false)
            } else {
                let now = self.now().as_micros() as u64;
                (w.apply_put(&put, now), true)
            }
        };
        // A duplicate is the network delivering the same packet twice: only a write that reached
        // the primary can be duplicated. (A write answered `Unavailable` never left the client, so
        // "nothing applied" stays true for it.)
        if let (Some(delay), true) = (duplicate, reached) {
            let store = self.clone();
            let copy = put.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut w = store.lock();
                if !w.primary_unreachable(store.now()) {
                    let now = store.now().as_micros() as u64;
                    let _ = w.apply_put(&copy, now);
                }
            });
        }
        tokio::time::sleep(back).await;
        match result {
            Ok(_) if lost => Err(SimError::Timeout),
            other => other,
        }
    }
}

/// A wall clock that follows tokio's (virtual) time from [`SIM_EPOCH_MICROS`].
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    start: Instant,
}

impl Clock for SimClock {
    fn now_micros(&self) -> u64 {
        SIM_EPOCH_MICROS + self.start.elapsed().as_micros() as u64
    }
}

/// One app instance's connection to the store: a tower `Service<SimRequest>`.
#[derive(Clone, Debug)]
pub struct SimClient {
    store: SimStore,
    local: usize,
}

impl SimClient {
    /// The replica this client reads by default.
    pub fn local_replica(&self) -> usize {
        self.local
    }
}

/// The future of a [`SimClient`] call.
pub type SimFuture = Pin<Box<dyn Future<Output = Result<SimResponse, SimError>> + Send>>;

impl tower::Service<SimRequest> for SimClient {
    type Response = SimResponse;
    type Error = SimError;
    type Future = SimFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SimError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: SimRequest) -> SimFuture {
        Box::pin(self.store.clone().execute(self.local, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LagModel, LatencyModel};
    use tower::ServiceExt;

    /// One replica, no request latency, a short lag with a one-in-two chance of a 300 ms spike
    /// per delivery: consecutive writes often land in the opposite order.
    fn spiky(seed: u64, order: ReplicationOrder) -> SimConfig {
        SimConfig::default()
            .seed(seed)
            .replicas(1)
            .latency(LatencyModel {
                replica: Duration::ZERO,
                primary: Duration::ZERO,
                jitter: Duration::ZERO,
            })
            .lag(
                LagModel::new(Duration::from_millis(1), Duration::from_millis(5))
                    .spikes(0.5, Duration::from_millis(300)),
            )
            .replication_order(order)
    }

    async fn get(client: &SimClient, key: &str) -> SimResponse {
        client.clone().oneshot(SimRequest::get(key)).await.unwrap()
    }

    async fn put(client: &SimClient, key: &str, value: u64) -> Version {
        client
            .clone()
            .oneshot(SimRequest::put(key, value))
            .await
            .unwrap()
            .version
    }

    /// Steps through simulated time 1 ms at a time until `b`'s write shows at the replica without
    /// `a`'s (returns both reads, at that instant) or both show (returns `None`).
    async fn first_reordered(
        client: &SimClient,
        a: &str,
        b: &str,
    ) -> Option<(SimResponse, SimResponse)> {
        for _ in 0..2_000 {
            let (ra, rb) = (get(client, a).await, get(client, b).await);
            match (ra.value, rb.value) {
                (None, Some(_)) => return Some((ra, rb)),
                (Some(_), Some(_)) => return None,
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        panic!("the writes never both landed");
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_order_a_replica_holds_a_later_write_without_an_earlier_one() {
        let mut reordered = 0;
        for seed in 0..64 {
            let store = SimStore::new(spiky(seed, ReplicationOrder::OutOfOrder));
            let client = store.client(0);
            let va = put(&client, "a", 1).await;
            let vb = put(&client, "b", 2).await;
            assert_eq!((va.get(), vb.get()), (1, 2));
            let Some((ra, rb)) = first_reordered(&client, "a", "b").await else {
                continue;
            };
            reordered += 1;
            // The replica holds log position 2 and not position 1: it has applied no prefix of the
            // log beyond 0, and says so.
            assert_eq!(rb.version, vb, "seed {seed}");
            assert_eq!(rb.applied, Version::ZERO, "seed {seed}");
            assert_eq!((ra.version, ra.applied), (Version::ZERO, Version::ZERO));
            assert_eq!(store.reordered_arrivals(), 1, "seed {seed}");

            // A server wait on the earlier write's position, and one on the later write's (which
            // the replica holds), return only once the earlier write has landed.
            let a_lands = Duration::from_micros(store.lock().arrivals[0][0]);
            assert!(store.elapsed() < a_lands, "seed {seed}");
            let wait = |key: &'static str, position: Version| {
                let (client, store) = (client.clone(), store.clone());
                async move {
                    let response = client
                        .oneshot(SimRequest::Get(Get {
                            key: key.into(),
                            target: Target::Local,
                            min_version: Some(position),
                        }))
                        .await
                        .unwrap();
                    (response, store.elapsed())
                }
            };
            let ((on_a, a_at), (on_b, b_at)) = tokio::join!(wait("a", va), wait("b", vb));
            for (response, at) in [(&on_a, a_at), (&on_b, b_at)] {
                assert!(at >= a_lands, "seed {seed}: {response:?} at {at:?}");
                assert!(response.applied >= vb, "seed {seed}: {response:?}");
            }
            assert_eq!((on_a.value, on_b.value), (Some(1), Some(2)), "seed {seed}");
            // And the later write is still there.
            assert_eq!(get(&client, "b").await.value, Some(2));
        }
        // A spike on the first delivery and none on the second: about one seed in four.
        assert!(reordered >= 8, "only {reordered} of 64 seeds reordered");
    }

    #[tokio::test(start_paused = true)]
    async fn in_order_a_replica_never_holds_a_later_write_without_an_earlier_one() {
        for seed in 0..64 {
            let store = SimStore::new(spiky(seed, ReplicationOrder::InOrder));
            let client = store.client(0);
            put(&client, "a", 1).await;
            put(&client, "b", 2).await;
            assert!(
                first_reordered(&client, "a", "b").await.is_none(),
                "seed {seed}"
            );
            assert_eq!(store.reordered_arrivals(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_order_an_older_write_of_a_key_never_overwrites_a_newer_one() {
        // Seeds whose replica showed a write of the key beyond its applied prefix, and seeds where
        // write 2 landed after write 3 while write 1 was still missing (and was read in between).
        let (mut ahead, mut older_after_newer) = (0, 0);
        for seed in 0..64 {
            let store = SimStore::new(spiky(seed, ReplicationOrder::OutOfOrder));
            let client = store.client(0);
            for value in 1..=3 {
                assert_eq!(put(&client, "k", value).await, Version::new(value));
            }
            let lands: Vec<u64> = store.lock().arrivals[0].clone();
            let (mut seen, mut showed_ahead, mut read_between) = (Version::ZERO, false, false);
            for _ in 0..2_000 {
                let r = get(&client, "k").await;
                // What a replica shows of one key never goes back, and is the newest write it
                // holds: position p holds value p.
                assert!(r.version >= seen, "seed {seed}: {r:?} after {seen}");
                assert_eq!(r.value.unwrap_or(0), r.version.get(), "seed {seed}");
                let now = store.elapsed().as_micros() as u64;
                let newest_landed = (1..=3).filter(|&p| lands[p as usize - 1] <= now).max();
                assert_eq!(r.version.get(), newest_landed.unwrap_or(0), "seed {seed}");
                seen = r.version;
                showed_ahead |= r.version > r.applied;
                read_between |= lands[2] < lands[1] && lands[1] <= now && now < lands[0];
                if r.applied >= Version::new(3) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(seen, Version::new(3), "seed {seed}");
            ahead += usize::from(showed_ahead);
            older_after_newer += usize::from(read_between);
        }
        assert!(ahead >= 8, "only {ahead} of 64 seeds reordered");
        assert!(
            older_after_newer >= 3,
            "only {older_after_newer} of 64 seeds landed an older write after a newer one"
        );
    }
}
