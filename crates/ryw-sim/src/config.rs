//! Configuration of the simulated store: replicas, lag, latency, partitions and faults.

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

/// The whole simulated deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of every random choice the store makes.
    pub seed: u64,
    /// Number of replicas (besides the primary).
    pub replicas: usize,
    /// Lag per replica; the last model repeats for further replicas.
    pub lag: Vec<LagModel>,
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
    /// Three replicas with [`LagModel::default`], [`LatencyModel::default`], no faults.
    fn default() -> Self {
        SimConfig {
            seed: 0,
            replicas: 3,
            lag: vec![LagModel::default()],
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
