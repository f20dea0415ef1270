//! Configuration of the simulated store: replicas, lag, replication order, latency, partitions
//! and faults.

use crate::rng::SimRng;
use std::time::Duration;

/// How long a write takes to reach one replica: `base` plus an exponential tail with mean
/// `mean_extra`, and now and then a `spike`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagModel {
    /// The minimum replication delay.
    pub base: Duration,
    /// The mean of the exponential part.
    pub mean_extra: Duration,
    /// Probability of a spike on one write.
    pub spike_chance: f64,
    /// Extra delay of a spike.
    pub spike: Duration,
}

impl LagModel {
    /// A lag of `base` plus an exponential tail of mean `mean_extra`, no spikes.
    pub const fn new(base: Duration, mean_extra: Duration) -> Self {
        LagModel {
            base,
            mean_extra,
            spike_chance: 0.0,
            spike: Duration::ZERO,
        }
    }

    /// Adds spikes of `spike` with probability `chance` per write.
    pub const fn spikes(mut self, chance: f64, spike: Duration) -> Self {
        self.spike_chance = chance;
        self.spike = spike;
        self
    }

    pub(crate) fn sample(&self, rng: &mut SimRng) -> Duration {
        let extra = rng.exponential(self.mean_extra.as_secs_f64());
        let spike = if rng.chance(self.spike_chance) {
            self.spike
        } else {
            Duration::ZERO
        };
        self.base + Duration::from_secs_f64(extra.min(60.0)) + spike
    }
}

impl Default for LagModel {
    /// 20 ms plus 20 ms mean, 2% spikes of 200 ms.
    fn default() -> Self {
        LagModel::new(Duration::from_millis(20), Duration::from_millis(20))
            .spikes(0.02, Duration::from_millis(200))
    }
}

/// Round-trip latency of requests to a replica and to the primary, plus an exponential jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyModel {
    /// Round trip to a client's local replica.
    pub replica: Duration,
    /// Round trip to the primary (writes and strong reads).
    pub primary: Duration,
    /// Mean of the exponential jitter added to each leg.
    pub jitter: Duration,
}

impl Default for LatencyModel {
    /// 1 ms to a local replica, 6 ms to the primary, 0.3 ms jitter per leg.
    fn default() -> Self {
        LatencyModel {
            replica: Duration::from_millis(1),
            primary: Duration::from_millis(6),
            jitter: Duration::from_micros(300),
        }
    }
}

/// What a partition cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartitionKind {
    /// Clients cannot reach the primary: writes and strong reads fail as unavailable.
    PrimaryUnreachable,
    /// Replication to this replica stops; it keeps serving (stale) reads.
    ReplicaIsolated(usize),
}

/// A partition during `[start, end)` of simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// When it starts, from the store's creation.
    pub start: Duration,
    /// When it heals.
    pub end: Duration,
    /// What it cuts.
    pub kind: PartitionKind,
}

impl Partition {
    pub(crate) fn covers(&self, at: Duration) -> bool {
        self.start <= at && at < self.end
    }
}

/// In which order a replica applies the primary's log.
///
/// # Example
///
/// The replica is cut off when the first write would land there, so that write is delivered only
/// after the partition heals plus its lag; the second write, made just before the partition
/// heals, lands after it on its own schedule, ahead of the first. Out of order, the replica then
/// holds the second write without the first, and a server wait on the first write's position
/// waits until it lands. (In order, the second write would land with the first.)
///
/// ```
/// use ryw::Version;
/// use ryw_sim::{Get, LagModel, Partition, PartitionKind, ReplicationOrder, SimConfig};
/// use ryw_sim::{SimRequest, SimStore, Target};
/// use std::time::Duration;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let config = SimConfig::default()
///     .replicas(1)
///     .lag(LagModel::new(Duration::from_millis(200), Duration::ZERO))
///     .partition(Partition {
///         start: Duration::ZERO,
///         end: Duration::from_secs(1),
///         kind: PartitionKind::ReplicaIsolated(0),
///     })
///     .replication_order(ReplicationOrder::OutOfOrder);
/// let store = SimStore::new(config);
/// let client = store.client(0);
/// // Lands at 1.2 s: the partition's end plus the lag.
/// client.clone().oneshot(SimRequest::put("a", 1)).await.unwrap();
/// tokio::time::sleep(Duration::from_millis(900)).await;
/// // Lands at about 1.11 s, ahead of the first write.
/// client.clone().oneshot(SimRequest::put("b", 2)).await.unwrap();
/// tokio::time::sleep(Duration::from_millis(250)).await;
///
/// let b = client.clone().oneshot(SimRequest::get("b")).await.unwrap();
/// let a = client.clone().oneshot(SimRequest::get("a")).await.unwrap();
/// assert_eq!((a.value(), b.value()), (None, Some(2)));
/// // The replica holds log position 2 but has applied no prefix of the log beyond 0.
/// assert_eq!(b.applied, Version::ZERO);
///
/// // A server wait on the first write's position answers once it has landed.
/// let waited = client
///     .oneshot(SimRequest::Get(Get {
///         key: "a".into(),
///         target: Target::Local,
///         min_version: Some(Version::new(1)),
///     }))
///     .await
///     .unwrap();
/// assert_eq!(waited.value(), Some(1));
/// assert!(store.elapsed() >= Duration::from_millis(1_200));
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicationOrder {
    /// Each replica applies the log in order: an entry lands no earlier than the entry before it,
    /// so a replica always holds a prefix of the log.
    #[default]
    InOrder,
    /// Each replica applies each entry after its own delay, drawn independently from the lag
    /// model, as ScyllaDB and Cassandra replicas do (hinted handoff, repair): a replica can hold
    /// a later entry and miss an earlier one, of the same key and of other keys.
    ///
    /// Per key, a replica serves the newest entry it holds by version (last writer wins, as
    /// Scylla does per cell by timestamp): an older entry landing after a newer one of the same
    /// key does not overwrite it. What a replica reports as applied
    /// ([`SimResponse::applied`](crate::SimResponse::applied)), and what a server wait
    /// ([`Get::min_version`](crate::Get::min_version)) waits for, is the contiguous prefix of the
    /// log it has fully applied, never the largest position it holds.
    OutOfOrder,
}

/// The whole simulated deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of every random choice the store makes.
    pub seed: u64,
    /// Number of replicas (besides the primary).
    pub replicas: usize,
    /// Lag per replica; the last model repeats for further replicas.
    pub lag: Vec<LagModel>,
    /// Whether replicas apply the log in order.
    pub replication_order: ReplicationOrder,
    /// Request latency.
    pub latency: LatencyModel,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Probability that a response is lost after the request applied (the client sees a
    /// timeout).
    pub lost_responses: f64,
    /// Probability that a write is delivered a second time, later.
    pub duplicate_deliveries: f64,
    /// Latest arrival of a duplicate, after the original.
    pub duplicate_delay_max: Duration,
    /// How long a replica waits for a version before answering with a timeout.
    pub max_server_wait: Duration,
    /// Cheap reads go to whichever replica has applied the least of the log at that moment,
    /// instead of the client's local replica: the worst case a load balancer can pick.
    pub reads_to_laggiest: bool,
}

impl Default for SimConfig {
    /// Three replicas with [`LagModel::default`] applying the log in order,
    /// [`LatencyModel::default`], no faults.
    fn default() -> Self {
        SimConfig {
            seed: 0,
            replicas: 3,
            lag: vec![LagModel::default()],
            replication_order: ReplicationOrder::InOrder,
            latency: LatencyModel::default(),
            partitions: Vec::new(),
            lost_responses: 0.0,
            duplicate_deliveries: 0.0,
            duplicate_delay_max: Duration::from_millis(300),
            max_server_wait: Duration::from_secs(1),
            reads_to_laggiest: false,
        }
    }
}

impl SimConfig {
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the number of replicas (at least one).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }

    /// One lag model for every replica.
    pub fn lag(mut self, lag: LagModel) -> Self {
        self.lag = vec![lag];
        self
    }

    /// A lag model per replica.
    pub fn lag_per_replica(mut self, lags: Vec<LagModel>) -> Self {
        if !lags.is_empty() {
            self.lag = lags;
        }
        self
    }

    /// Sets the order in which replicas apply the log ([`ReplicationOrder::InOrder`] by default).
    pub fn replication_order(mut self, order: ReplicationOrder) -> Self {
        self.replication_order = order;
        self
    }

    /// Sets the latency model.
    pub fn latency(mut self, latency: LatencyModel) -> Self {
        self.latency = latency;
        self
    }

    /// Adds a partition.
    pub fn partition(mut self, partition: Partition) -> Self {
        self.partitions.push(partition);
        self
    }

    /// Sets the probability of losing a response after the request applied.
    pub fn lost_responses(mut self, p: f64) -> Self {
        self.lost_responses = p;
        self
    }

    /// Sets the probability of delivering a write twice.
    pub fn duplicate_deliveries(mut self, p: f64) -> Self {
        self.duplicate_deliveries = p;
        self
    }

    /// Sends every cheap read to the replica that lags most at that moment.
    pub fn reads_to_laggiest(mut self, yes: bool) -> Self {
        self.reads_to_laggiest = yes;
        self
    }

    pub(crate) fn lag_of(&self, replica: usize) -> LagModel {
        self.lag
            .get(replica)
            .or(self.lag.last())
            .copied()
            .unwrap_or_default()
    }
}
