//! What a workload runs: the simulated deployment, its users and devices, what they read and
//! write, and the faults, with seeded random scenarios.

use crate::config::{
    LagModel, LatencyModel, Partition, PartitionKind, ReplicationOrder, SimConfig,
};
use crate::rng::SimRng;
use std::time::Duration;

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
    /// it is dropped and its operation is recorded as
    /// [`Op::detached`](crate::checker::Op::detached).
    pub fork_merge: f64,
    /// Sessions keep what they coarsen in a record shared by the instances
    /// ([`ryw::record`]): each instance loads the record a token names before a request and
    /// writes what the request coarsened before issuing the next token (ryw mode).
    pub record: bool,
    /// While simulated time is within this window, the record store fails every call.
    pub record_outage: Option<(Duration, Duration)>,
    /// Devices per user: each user is a principal whose devices run at once, each with a session
    /// (and token) of its own. Operations are recorded per device (`Op::session` is
    /// `user * devices + device`);
    /// [`RunReport::principal_check`](crate::workload::RunReport::principal_check) judges them
    /// per user.
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
            let (start, end) = window(&mut rng, horizon_ms, 50, 800);
            let kind = if rng.chance(0.5) {
                PartitionKind::PrimaryUnreachable
            } else {
                PartitionKind::ReplicaIsolated(rng.below(replicas))
            };
            sim = sim.partition(Partition { start, end, kind });
        }
        // The edges: a replica cut off far longer than any replication window, cheap reads sent
        // to whichever replica lags most, sessions touching many more keys than their vector
        // keeps, slow users whose operations span that window, and one token continued twice at
        // once.
        if rng.chance(0.3) {
            let (start, end) = window(&mut rng, 1_000, 3_000, 9_000);
            sim = sim.partition(Partition {
                start,
                end,
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
            let (start, end) = window(&mut rng, 1_500, 3_000, 9_000);
            let replica = rng.below(scenario.sim.replicas.max(1));
            scenario.sim = scenario.sim.partition(Partition {
                start,
                end,
                kind: PartitionKind::ReplicaIsolated(replica),
            });
        }
        if rng.chance(0.3) {
            scenario.record_outage = Some(window(&mut rng, 2_000, 100, 3_000));
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
            scenario.record_outage = Some(window(&mut rng, 500, 20, 400));
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

/// A window of simulated time drawn from `rng`: it starts within the first `starts_within`
/// milliseconds and lasts `min_len` milliseconds and up to `len_spread` more (the start drawn
/// first).
fn window(
    rng: &mut SimRng,
    starts_within: usize,
    min_len: u64,
    len_spread: usize,
) -> (Duration, Duration) {
    let start = rng.below(starts_within) as u64;
    let len = min_len + rng.below(len_spread) as u64;
    (
        Duration::from_millis(start),
        Duration::from_millis(start + len),
    )
}
