//! The simulation suite: thousands of seeded histories with lag, partitions, lost responses and
//! duplicated deliveries. Through the session layer: zero violations and zero duplicated effects.
//! Without it: violations, so the checker is proven able to fail.

use ryw::fence::FenceConfig;
use ryw_sim::checker::ViolationKind;
use ryw_sim::workload::{run_blocking, Mode, Scenario};
use std::time::Duration;

fn seeds() -> u64 {
    std::env::var("RYW_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

fn assert_clean(mode: &Mode, seeds: std::ops::Range<u64>) -> (usize, usize, usize) {
    let (mut reads, mut pending, mut failed) = (0, 0, 0);
    for seed in seeds {
        let scenario = Scenario::random(seed);
        let run = run_blocking(&scenario, mode);
        assert!(
            run.check.violations.is_empty(),
            "seed {seed} ({}): {} violation(s), first: {}\nscenario: {scenario:#?}",
            mode.name(),
            run.check.violations.len(),
            run.check.violations[0]
        );
        reads += run.reads;
        pending += run.pending_reads;
        failed += run.failed_ops;
    }
    (reads, pending, failed)
}

#[test]
fn ryw_verify_fence_has_no_violations() {
    let (reads, pending, failed) = assert_clean(&Mode::ryw(), 0..seeds());
    println!("verify: {reads} reads, {pending} pending, {failed} failed ops");
    assert!(reads > 10 * seeds() as usize);
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
        assert_clean(&Mode::Ryw(FenceConfig::escalate()), 20_000..20_000 + n);
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
    assert_eq!(a.history, b.history);
    assert_eq!(a.read_latencies_micros, b.read_latencies_micros);
}
