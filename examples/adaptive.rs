//! A fence that learns the store's lag, against the fixed schedule, on three simulated stores
//! whose replicas lag 20 ms, 300 ms and 1 s on average, each with spikes.
//!
//! 40 users on 3 app instances (one layer, so one learner, per run) write their own keys and read
//! them back, 70% of writes followed by a read after a 2 to 5 ms redirect, as a web page does
//! after a POST. Every read through the layer runs at the same instant as a raw probe read of
//! the same replica: the read is *really stale* when the probe missed the session's own last
//! write of the key. The table compares, per store and fence, how many reads went to the strong
//! path (against how many really needed to), how many cheap reads the layer sent (first attempts
//! and re-reads), and the read latency in simulated time. The session-guarantee checker
//! (`ryw_sim::checker`) then reads a recorded history of the same store through each fence.
//!
//! Deterministic (simulated time, fixed seeds).
//!
//! ```text
//! cargo run --example adaptive
//! ```

use ryw::adaptive::AdaptiveFence;
use ryw::{FenceConfig, ReadYourWritesLayer, Session, SessionId, Visibility};
use ryw_sim::workload::{run_blocking, Mode, Scenario};
use ryw_sim::{
    Get, LagModel, LatencyModel, Node, SimAdapter, SimConfig, SimRequest, SimRng, SimStore, Target,
};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceBuilder, ServiceExt};

const USERS: usize = 40;
const OPS_PER_USER: usize = 150;
const INSTANCES: usize = 3;
/// Every cell of the table adds up one run per seed (a fresh store and layer each).
const SEEDS: [u64; 3] = [2026, 2027, 2028];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The three stores: replica lag means of 20 ms, 300 ms and 1 s (base + exponential tail + 1%
/// spikes).
fn profiles() -> [(&'static str, LagModel); 3] {
    [
        ("20 ms", LagModel::new(ms(10), ms(8)).spikes(0.01, ms(200))),
        (
            "300 ms",
            LagModel::new(ms(150), ms(120)).spikes(0.01, ms(3_000)),
        ),
        (
            "1 s",
            LagModel::new(ms(500), ms(450)).spikes(0.01, ms(5_000)),
        ),
    ]
}

#[derive(Clone)]
enum Fence {
    Fixed(FenceConfig),
    Adaptive(AdaptiveFence),
}

impl Fence {
    fn name(&self) -> String {
        match self {
            Fence::Fixed(c) => format!(
                "fixed: {} re-read after {} ms",
                c.rereads,
                c.reread_delay.as_millis()
            ),
            Fence::Adaptive(a) => format!("adaptive, {} ms budget", a.latency_budget.as_millis()),
        }
    }

    fn mode(&self) -> Mode {
        match self {
            Fence::Fixed(c) => Mode::Ryw(c.clone()),
            Fence::Adaptive(a) => Mode::RywAdaptive(a.clone()),
        }
    }
}

#[derive(Default)]
struct Tally {
    reads: usize,
    really_stale: usize,
    strong: usize,
    cheap: usize,
    pending: usize,
    wrong: usize,
    latencies: Vec<Duration>,
    /// What each run's learner ended with.
    learned: Vec<ryw::adaptive::LearnedCatchUp>,
}

impl Tally {
    fn add(&mut self, t: Tally) {
        self.reads += t.reads;
        self.really_stale += t.really_stale;
        self.strong += t.strong;
        self.cheap += t.cheap;
        self.pending += t.pending;
        self.wrong += t.wrong;
        self.latencies.extend(t.latencies);
        self.learned.extend(t.learned);
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
    }
}

fn sim(lag: LagModel, seed: u64) -> SimConfig {
    SimConfig::default()
        .seed(seed)
        .replicas(3)
        .lag(lag)
        .latency(LatencyModel {
            replica: ms(1),
            primary: ms(6),
            jitter: Duration::from_micros(300),
        })
}

async fn run(lag: LagModel, fence: Fence, seed: u64) -> Tally {
    let store = SimStore::new(sim(lag, seed));
    let layer = ReadYourWritesLayer::new(SimAdapter::new());
    let layer = match &fence {
        Fence::Fixed(c) => layer.fence(c.clone()),
        Fence::Adaptive(a) => layer.adaptive_fence(a.clone()),
    }
    .clock(store.clock());
    // The cheap reads the layer sends (first attempts and re-reads), counted on their way out.
    let cheap = Arc::new(AtomicUsize::new(0));
    let services: Vec<_> = (0..INSTANCES)
        .map(|i| {
            let cheap = cheap.clone();
            let counted = ServiceBuilder::new()
                .map_request(move |r: SimRequest| {
                    if let SimRequest::Get(Get {
                        target: Target::Local,
                        ..
                    }) = &r
                    {
                        cheap.fetch_add(1, Ordering::Relaxed);
                    }
                    r
                })
                .service(store.client(i));
            layer.layer(counted)
        })
        .collect();
    let mut rng = SimRng::new(seed);
    let mut tasks = tokio::task::JoinSet::new();
    for user in 0..USERS {
        let mut rng = rng.fork();
        let store = store.clone();
        let service = services[user % INSTANCES].clone();
        let instance = user % INSTANCES;
        tasks.spawn(async move {
            // Derived ids keep runs reproducible; applications use random or per-user ids.
            let session = Session::with_id(SessionId::derive(
                format!("adaptive:{seed}:{user}").as_bytes(),
            ));
            let mut mine: HashMap<String, u64> = HashMap::new();
            let mut tally = Tally::default();
            let mut follow_up = None;
            for n in 0..OPS_PER_USER {
                let key = match follow_up.take() {
                    Some(key) => {
                        tokio::time::sleep(Duration::from_micros(2_000 + rng.below(3_000) as u64))
                            .await;
                        key
                    }
                    None => {
                        tokio::time::sleep(ms(20 + rng.below(500) as u64)).await;
                        let key = format!("user{user}/k{}", rng.below(3));
                        if rng.chance(0.3) {
                            let put = SimRequest::put(key.clone(), n as u64);
                            let out = service
                                .clone()
                                .oneshot(session.request(put))
                                .await
                                .expect("no faults are simulated");
                            mine.insert(key.clone(), out.get_ref().version.get());
                            if rng.chance(0.7) {
                                follow_up = Some(key);
                            }
                            continue;
                        }
                        key
                    }
                };
                let wrote = mine.get(&key).copied().unwrap_or(0);
                let started = store.elapsed();
                let probe = store.client(instance).oneshot(SimRequest::get(key.clone()));
                let read = service
                    .clone()
                    .oneshot(session.request(SimRequest::get(key.clone())));
                let (probe, read) = tokio::join!(probe, read);
                let (probe, read) = (
                    probe.expect("the replica answers"),
                    read.expect("no faults are simulated"),
                );
                tally.latencies.push(store.elapsed() - started);
                tally.reads += 1;
                tally.really_stale += usize::from(probe.version.get() < wrote);
                tally.strong += usize::from(read.get_ref().served_by == Node::Primary);
                match read.visibility() {
                    Visibility::Guaranteed(_) => {
                        tally.wrong += usize::from(read.get_ref().version.get() < wrote);
                    }
                    _ => tally.pending += 1,
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(t) = tasks.join_next().await {
        total.add(t.expect("a user task"));
    }
    total.cheap = cheap.load(Ordering::Relaxed);
    total
        .learned
        .extend(layer.fence_learner().map(|l| l.snapshot()));
    total
}

/// The checker's verdict on a recorded history of the same store through `fence`.
fn violations(lag: LagModel, fence: &Fence, seed: u64) -> usize {
    let scenario = Scenario {
        sim: sim(lag, seed),
        users: 30,
        instances: INSTANCES,
        ops_per_user: 60,
        write_ratio: 0.3,
        keys_per_user: 3,
        foreign_read_ratio: 0.2,
        read_after_write: 0.7,
        think_min: ms(20),
        think_max: ms(500),
        seed,
        ..Scenario::default()
    };
    run_blocking(&scenario, &fence.mode())
        .check
        .guarantee_violations()
}

fn main() -> ExitCode {
    let fences = [
        Fence::Fixed(FenceConfig::default()),
        Fence::Adaptive(AdaptiveFence::default()),
        Fence::Adaptive(AdaptiveFence::new(ms(50))),
    ];
    println!(
        "{USERS} users on {INSTANCES} instances, {OPS_PER_USER} operations each (30% writes, 70% \
         of them read back after a 2-5 ms redirect); 3 replicas, 1 ms replica and 6 ms primary \
         round trips; each row adds up {} runs (seeds {SEEDS:?})\n",
        SEEDS.len()
    );
    println!(
        "{:<8} {:<28} {:>6} {:>13} {:>13} {:>12} {:>12} {:>8} {:>9} {:>9} {:>11} {:>6}",
        "lag",
        "fence",
        "reads",
        "really stale",
        "strong reads",
        "strong/stale",
        "cheap reads",
        "pending",
        "p50 read",
        "p99 read",
        "violations",
        "wrong"
    );
    let mut wrong = 0;
    let mut summary = Vec::new();
    for (name, lag) in profiles() {
        let mut rows = Vec::new();
        for fence in &fences {
            let mut t = Tally::default();
            let mut v = 0;
            for seed in SEEDS {
                let run = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .expect("a runtime")
                    .block_on(run(lag, fence.clone(), seed));
                t.add(run);
                v += violations(lag, fence, seed);
            }
            wrong += t.wrong + v;
            println!(
                "{:<8} {:<28} {:>6} {:>13} {:>13} {:>12.2} {:>12} {:>8} {:>6.1} ms {:>6.1} ms {:>11} {:>6}",
                name,
                fence.name(),
                t.reads,
                t.really_stale,
                t.strong,
                t.strong as f64 / t.really_stale.max(1) as f64,
                t.cheap,
                t.pending,
                t.percentile(50.0).as_secs_f64() * 1e3,
                t.percentile(99.0).as_secs_f64() * 1e3,
                v,
                t.wrong,
            );
            rows.push((fence.clone(), t));
        }
        summary.push((name, rows));
    }

    println!(
        "\nwhat each adaptive fence had learned at the end of each run (the p90 catch-up after a \
         miss; the share of re-reads at the budget that met the fence; misses, re-reads, stale \
         reads escalated at once):"
    );
    for (name, rows) in &summary {
        for (fence, t) in rows {
            let runs: Vec<String> = t
                .learned
                .iter()
                .map(|l| {
                    format!(
                        "p90 {}, {} at the budget, {}/{}/{}",
                        l.catch_up.map_or("unknown".to_owned(), |d| format!(
                            "{:.1} ms",
                            d.as_secs_f64() * 1e3
                        )),
                        l.within_budget
                            .map_or("-".to_owned(), |s| format!("{:.0}%", s * 100.0)),
                        l.misses,
                        l.rereads,
                        l.escalated_at_once,
                    )
                })
                .collect();
            if !runs.is_empty() {
                println!("  {:<8} {:<24} {}", name, fence.name(), runs.join("; "));
            }
        }
    }

    println!("\ntargets for the default adaptive fence (10 ms budget), against the fixed default:");
    for (name, rows) in &summary {
        let fixed = &rows[0].1;
        let adaptive = &rows[1].1;
        let strong_ok = adaptive.strong as f64 <= 1.05 * adaptive.really_stale as f64;
        let p99_ok =
            adaptive.percentile(99.0).as_secs_f64() <= 1.10 * fixed.percentile(99.0).as_secs_f64();
        println!(
            "  {name:<8} strong reads <= 1.05 x really stale: {} ({} <= {:.0}); p99 <= 1.10 x fixed: {} ({:.1} ms vs {:.1} ms)",
            if strong_ok { "yes" } else { "NO" },
            adaptive.strong,
            1.05 * adaptive.really_stale as f64,
            if p99_ok { "yes" } else { "NO" },
            adaptive.percentile(99.0).as_secs_f64() * 1e3,
            fixed.percentile(99.0).as_secs_f64() * 1e3,
        );
    }
    println!(
        "\nreally stale: a raw read of the same replica at the same instant missed the session's own \
         last write of the key.\nstrong reads: reads served by the primary. cheap reads: replica \
         reads the layer sent (first attempts and re-reads).\nviolations: session-guarantee \
         violations the checker found in a recorded history of the same store (30 users x 60 \
         operations).\nwrong: reads reported Guaranteed that missed the session's own write. Both \
         must be 0."
    );
    if wrong > 0 {
        eprintln!("\nFAIL: a read was reported Guaranteed that missed the session's own write");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
