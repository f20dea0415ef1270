//! The simulation suite: thousands of seeded histories with lag, partitions, lost responses and
//! duplicated deliveries, with replicas applying the log in order and out of order. Through the
//! session layer: zero violations and zero duplicated effects. Without it: violations, so the
//! checker is proven able to fail.

use ryw::adaptive::AdaptiveFence;
use ryw::fence::FenceConfig;
use ryw_sim::checker::ViolationKind;
use ryw_sim::workload::{run_blocking, Mode, Scenario};
use std::time::Duration;

/// `RYW_SIM_SEEDS` when set, otherwise `default`.
fn seeds_or(default: u64) -> u64 {
    std::env::var("RYW_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn seeds() -> u64 {
    seeds_or(6000)
}

/// Histories of the out-of-order verify test (the server-wait and strong ones run a quarter).
fn out_of_order_seeds() -> u64 {
    seeds_or(10_000)
}

/// Histories of the principals test.
fn principal_seeds() -> u64 {
    seeds_or(10_000)
}

/// What the histories of one test added up to.
#[derive(Debug, Default)]
struct Totals {
    reads: usize,
    pending: usize,
    failed: usize,
    /// Reads served by a replica holding a write of the key beyond its applied prefix.
    past_applied: usize,
    /// Deliveries that landed at a replica before an earlier log entry had.
    reordered: usize,
}

fn assert_clean(mode: &Mode, seeds: std::ops::Range<u64>) -> (usize, usize, usize) {
    let t = assert_clean_with(Scenario::random, mode, seeds);
    (t.reads, t.pending, t.failed)
}

/// Runs the scenario `scenario(seed)` of every seed in `mode` and asserts no history has a
/// violation.
fn assert_clean_with(
    scenario: fn(u64) -> Scenario,
    mode: &Mode,
    seeds: std::ops::Range<u64>,
) -> Totals {
    let mut totals = Totals::default();
    // Every seed runs, so that a failure reports how many histories broke and how.
    let mut found = std::collections::BTreeMap::new();
    let (mut broken, mut first) = (0, None);
    let n = seeds.end - seeds.start;
    for seed in seeds {
        let scenario = scenario(seed);
        let run = run_blocking(&scenario, mode);
        if !run.check.violations.is_empty() {
            broken += 1;
            for v in &run.check.violations {
                *found.entry(v.kind).or_insert(0usize) += 1;
            }
            first.get_or_insert_with(|| {
                format!(
                    "seed {seed}: {}\nscenario: {scenario:#?}",
                    run.check.violations[0]
                )
            });
        }
        totals.reads += run.reads;
        totals.pending += run.pending_reads;
        totals.failed += run.failed_ops;
        totals.past_applied += run.reads_past_applied;
        totals.reordered += run.reordered_arrivals;
    }
    assert!(
        first.is_none(),
        "{} ({}): {broken} of {n} histories broke, violations {found:?}; first at {}",
        mode.name(),
        n,
        first.unwrap_or_default()
    );
    totals
}

#[test]
fn ryw_verify_fence_has_no_violations() {
    let (reads, pending, failed) = assert_clean(&Mode::ryw(), 0..seeds());
    println!("verify: {reads} reads, {pending} pending, {failed} failed ops");
    assert!(reads > 10 * seeds() as usize);
}

#[test]
fn ryw_fixed_verify_fence_has_no_violations() {
    let n = seeds() / 3;
    let (reads, pending, failed) =
        assert_clean(&Mode::Ryw(FenceConfig::default()), 30_000..30_000 + n);
    println!("fixed verify: {reads} reads, {pending} pending, {failed} failed ops");
}

/// An adaptive fence that learns within the few reads of a random history: warm after two
/// re-reads, exploring every other one, up to two re-reads per read within 40 ms.
fn eager_adaptive() -> Mode {
    Mode::RywAdaptive(
        AdaptiveFence::new(Duration::from_millis(40))
            .warm_up(2)
            .explore_every(2)
            .max_rereads(2),
    )
}

/// `Scenario::random(seed)`, with replicas that catch up within a few milliseconds for odd
/// seeds (with spikes), so that learners also reach a learned delay and explore around it.
fn random_with_fast_replicas_for_odd_seeds(seed: u64) -> Scenario {
    let mut scenario = Scenario::random(seed);
    if seed % 2 == 1 {
        scenario.sim = scenario.sim.lag(
            ryw_sim::LagModel::new(
                Duration::from_millis(1 + seed % 5),
                Duration::from_millis(1 + seed % 7),
            )
            .spikes(0.05, Duration::from_millis(100)),
        );
    }
    scenario
}

#[test]
fn ryw_adaptive_fence_has_no_violations() {
    let n = seeds() / 3;
    let t = assert_clean_with(
        random_with_fast_replicas_for_odd_seeds,
        &eager_adaptive(),
        40_000..40_000 + n,
    );
    let (reads, pending, failed) = (t.reads, t.pending, t.failed);
    println!("adaptive: {n} histories, {reads} reads, {pending} pending, {failed} failed ops");
    assert!(reads > 10 * n as usize);
}

#[test]
fn ryw_server_wait_fence_has_no_violations() {
    let n = seeds() / 3;
    let (reads, pending, failed) =
        assert_clean(&Mode::Ryw(FenceConfig::server_wait()), 10_000..10_000 + n);
    println!("server wait: {reads} reads, {pending} pending, {failed} failed ops");
}

#[test]
fn ryw_escalate_fence_has_no_violations() {
    let n = seeds() / 3;
    let (reads, pending, failed) =
        assert_clean(&Mode::Ryw(FenceConfig::strong()), 20_000..20_000 + n);
    println!("escalate: {reads} reads, {pending} pending, {failed} failed ops");
}

#[test]
fn without_the_layer_the_checker_finds_violations() {
    let mut found = std::collections::BTreeMap::new();
    for seed in 0..300 {
        let run = run_blocking(&Scenario::random(seed), &Mode::Plain);
        for v in &run.check.violations {
            *found.entry(v.kind).or_insert(0usize) += 1;
        }
    }
    println!("plain replica reads: {found:?}");
    for kind in [
        ViolationKind::ReadYourWrites,
        ViolationKind::MonotonicReads,
        ViolationKind::DuplicatedEffect,
        ViolationKind::MonotonicWrites,
    ] {
        assert!(
            found.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind:?} found"
        );
    }
}

/// Out-of-order replication (`ReplicationOrder::OutOfOrder`): each log entry lands at each replica
/// after its own delay, so a replica can serve a later write of a key, or of another key, while it
/// still misses an earlier one. `Scenario::random_out_of_order(seed)` is `Scenario::random(seed)`
/// with reordering replicas; the tests below cover the in-order tests' seed ranges, and more.
fn assert_clean_out_of_order(name: &str, mode: &Mode, seeds: std::ops::Range<u64>) -> Totals {
    let n = seeds.end - seeds.start;
    let t = assert_clean_with(Scenario::random_out_of_order, mode, seeds);
    println!(
        "out of order, {name}: {n} histories, {} reads, {} pending, {} failed ops, {} reads past \
         the applied prefix, {} reordered deliveries, 0 violations",
        t.reads, t.pending, t.failed, t.past_applied, t.reordered
    );
    // The mode bites: deliveries were reordered and reads were served from a replica that held
    // a write beyond the prefix of the log it had applied.
    assert!(t.reordered > 0 && t.past_applied > 0, "{t:?}");
    t
}

#[test]
fn out_of_order_ryw_verify_fence_has_no_violations() {
    let n = out_of_order_seeds();
    let t = assert_clean_out_of_order("verify", &Mode::ryw(), 0..n);
    assert!(t.reads > 10 * n as usize);
}

#[test]
fn out_of_order_ryw_adaptive_fence_has_no_violations() {
    let n = out_of_order_seeds() / 4;
    assert_clean_out_of_order("adaptive", &eager_adaptive(), 30_000..30_000 + n);
}

#[test]
fn out_of_order_ryw_server_wait_fence_has_no_violations() {
    let n = out_of_order_seeds() / 4;
    assert_clean_out_of_order(
        "server wait",
        &Mode::Ryw(FenceConfig::server_wait()),
        10_000..10_000 + n,
    );
}

#[test]
fn out_of_order_ryw_strong_fence_has_no_violations() {
    let n = out_of_order_seeds() / 4;
    assert_clean_out_of_order(
        "strong",
        &Mode::Ryw(FenceConfig::strong()),
        20_000..20_000 + n,
    );
}

#[test]
fn out_of_order_without_the_layer_the_checker_finds_violations() {
    let mut found = std::collections::BTreeMap::new();
    let (mut past_applied, mut reordered) = (0, 0);
    for seed in 0..300 {
        let run = run_blocking(&Scenario::random_out_of_order(seed), &Mode::Plain);
        for v in &run.check.violations {
            *found.entry(v.kind).or_insert(0usize) += 1;
        }
        past_applied += run.reads_past_applied;
        reordered += run.reordered_arrivals;
    }
    println!(
        "out of order, plain replica reads: {found:?} ({past_applied} reads past the applied \
         prefix, {reordered} reordered deliveries)"
    );
    assert!(reordered > 0 && past_applied > 0);
    for kind in [
        ViolationKind::ReadYourWrites,
        ViolationKind::MonotonicReads,
        ViolationKind::DuplicatedEffect,
        ViolationKind::MonotonicWrites,
    ] {
        assert!(
            found.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind:?} found"
        );
    }
}

#[test]
fn pinning_still_violates_when_lag_outlasts_the_window() {
    // Replication spikes of 3 s outlast a 2 s pin: sticking is a heuristic, not a guarantee.
    let mut violations = 0;
    for seed in 0..50 {
        let mut scenario = Scenario::random(seed);
        scenario.sim = scenario.sim.lag(
            ryw_sim::LagModel::new(Duration::from_millis(10), Duration::from_millis(10))
                .spikes(0.3, Duration::from_secs(3)),
        );
        scenario.sim.lost_responses = 0.0;
        scenario.sim.duplicate_deliveries = 0.0;
        scenario.think_max = Duration::from_millis(800);
        violations += run_blocking(&scenario, &Mode::Pinned(Duration::from_secs(2)))
            .check
            .guarantee_violations();
        assert!(run_blocking(&scenario, &Mode::ryw())
            .check
            .violations
            .is_empty());
    }
    assert!(violations > 0);
}

#[test]
fn runs_are_deterministic_per_seed() {
    let scenario = Scenario::random(77);
    let a = run_blocking(&scenario, &Mode::ryw());
    let b = run_blocking(&scenario, &Mode::ryw());
    // Everything but the write ids, whose lanes are random by design (`ryw::WriteId`).
    assert_eq!(a.history.ops, b.history.ops);
    let strip = |log: &[ryw_sim::LogEntry]| {
        log.iter()
            .map(|e| (e.position, e.key.clone(), e.value, e.clock, e.at_micros))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a.history.log), strip(&b.history.log));
    assert_eq!(a.read_latencies_micros, b.read_latencies_micros);
}

#[test]
fn random_histories_reach_the_edges() {
    // The generator must, without being told where the bugs are, produce the situations that
    // broke the promise before: coarsened vectors, forked tokens, long isolation.
    let (mut small_caps, mut forks, mut long_cuts, mut laggiest) = (0, 0, 0, 0);
    for seed in 0..400 {
        let s = Scenario::random(seed);
        small_caps += usize::from(s.scope_cap < s.keys_per_user);
        forks += usize::from(s.fork_ratio > 0.0);
        laggiest += usize::from(s.sim.reads_to_laggiest);
        long_cuts += usize::from(
            s.sim
                .partitions
                .iter()
                .any(|p| p.end - p.start > Duration::from_secs(3)),
        );
    }
    for (what, n) in [
        ("small caps", small_caps),
        ("forks", forks),
        ("long isolation", long_cuts),
        ("laggiest reads", laggiest),
    ] {
        assert!(n > 40, "{what}: only {n} of 400 scenarios");
    }
}

#[test]
fn a_coarsened_fence_never_expires_into_a_guaranteed_stale_read() {
    // The reproduction: cap 1, the only replica cut off for 10 s; write k0 then k1 (k0 is
    // coarsened into the store horizon), wait 2.5 s (past any replication window), read k0 from
    // the cut-off replica. It must not come back `Guaranteed` without the write.
    use ryw::fence::FencePath;
    use ryw_sim::{Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimStore};
    use tower::{Layer, ServiceExt};

    for cap in [1, 4] {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let store = SimStore::new(SimConfig::default().replicas(1).partition(Partition {
                    start: Duration::ZERO,
                    end: Duration::from_secs(10),
                    kind: PartitionKind::ReplicaIsolated(0),
                }));
                let svc = ryw::ReadYourWritesLayer::new(SimAdapter::new())
                    .clock(store.clock())
                    .layer(store.client(0));
                let session = ryw::Session::new();
                session.with_state(|s| s.vector_mut().set_cap(cap));
                for k in 0..=cap {
                    let put = SimRequest::put(format!("k{k}"), 100 + k as u64);
                    svc.clone().oneshot(session.request(put)).await.unwrap();
                }
                assert!(session
                    .snapshot()
                    .vector()
                    .get(SimAdapter::new().scope("k0"))
                    .is_none());
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                let read = svc
                    .clone()
                    .oneshot(session.request(SimRequest::get("k0")))
                    .await
                    .unwrap();
                assert_eq!(read.get_ref().value(), Some(100), "cap {cap}: {read:?}");
                assert_eq!(read.visibility().path(), Some(FencePath::Escalated));
                // The answer did not lower the mark: a cheap read of k0 still does not verify.
                let again = svc
                    .clone()
                    .oneshot(session.request(SimRequest::get("k0")))
                    .await
                    .unwrap();
                assert_eq!(again.get_ref().value(), Some(100));
            });
    }
}

/// Sessions of ten times their vector's cap and more that keep what they coarsen in a shared
/// record ([`ryw::record`]), with tokens continued twice at once, replicas cut off for seconds and
/// the record store sometimes down: no violation.
#[test]
fn sessions_with_a_record_have_no_violations() {
    let n = seeds().max(10_000);
    let (mut reads, mut pending, mut broken, mut first) = (0, 0, 0, None);
    for seed in 40_000..40_000 + n {
        let scenario = Scenario::random_with_record(seed);
        let run = run_blocking(&scenario, &Mode::ryw());
        if !run.check.violations.is_empty() {
            broken += 1;
            first.get_or_insert_with(|| {
                format!(
                    "seed {seed}: {}\nscenario: {scenario:#?}",
                    run.check.violations[0]
                )
            });
        }
        reads += run.reads;
        pending += run.pending_reads;
    }
    assert!(
        first.is_none(),
        "{broken} of {n} histories broke; first at {}",
        first.unwrap_or_default()
    );
    println!("record: {n} histories, {reads} reads, {pending} pending");
    assert!(reads > n as usize);
}

/// Principals with several devices: 20 principals × 3 devices × 2 instances at once, each device
/// a session of its own, sharing only the principal's record (sometimes down): no violation of
/// any session's guarantees, and none of read-your-writes or monotonic reads per principal.
#[test]
fn principals_devices_read_each_others_writes() {
    let n = principal_seeds();
    let (mut reads, mut session_only, mut principal_checked) = (0, 0, 0);
    for seed in 0..n {
        let scenario = Scenario::random_principals(seed);
        let run = run_blocking(&scenario, &Mode::ryw());
        assert!(
            run.check.violations.is_empty(),
            "seed {seed}: {}",
            run.check.violations[0]
        );
        let principal = run.principal_check.expect("several devices");
        assert!(
            principal.violations.is_empty(),
            "seed {seed}: per principal: {}",
            principal.violations[0]
        );
        reads += run.reads;
        session_only += run.session_only_reads;
        principal_checked += principal.reads_checked;
    }
    println!(
        "principals: {n} histories, {reads} reads, {principal_checked} checked per principal, \
         {session_only} session-only"
    );
}

/// The same histories without the principal's record: devices miss each other's writes.
#[test]
fn without_the_principal_record_devices_miss_each_others_writes() {
    let mut violations = 0;
    for seed in 0..200 {
        let mut scenario = Scenario::random_principals(seed);
        scenario.principal_records = false;
        let run = run_blocking(&scenario, &Mode::ryw());
        assert!(run.check.violations.is_empty(), "seed {seed}: per device");
        violations += run.principal_check.expect("devices").guarantee_violations();
    }
    println!("without the principal's record: {violations} violations per principal");
    assert!(violations > 0);
}
