//! The degradation path in the seeded simulation: users read and write through the outbox and
//! session layers while the simulated primary is unreachable for 30 s (with lagging replicas,
//! lost responses and duplicated deliveries around it), a replayer drains in the background, and
//! `ryw_sim::checker` checks the history: no session-guarantee violation among guaranteed reads,
//! no write applied twice, and no write that was acknowledged (applied, or deferred) missing from
//! the log once the outbox is drained. Deterministic per seed.

mod common;

use common::TempDir;
use ryw::{ReadYourWritesLayer, Session, Visibility};
use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use ryw_sim::checker::{check, History, Op, OpKind, ReadStatus};
use ryw_sim::{
    LagModel, Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimRng, SimStore,
};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const USERS: usize = 6;
const OPS: usize = 240;

async fn run(seed: u64, dir: &std::path::Path) -> (History, usize) {
    let store = SimStore::new(
        SimConfig::default()
            .seed(seed)
            .replicas(2)
            .lag(LagModel::new(
                Duration::from_millis(20),
                Duration::from_millis(30),
            ))
            .lost_responses(0.02)
            .duplicate_deliveries(0.01)
            .partition(Partition {
                start: Duration::from_secs(10),
                end: Duration::from_secs(40),
                kind: PartitionKind::PrimaryUnreachable,
            }),
    );
    let clock = store.clock();
    let now = move || store_micros(&clock);
    let outbox =
        Arc::new(Outbox::open(dir.join(format!("o{seed}")), OutboxConfig::default()).unwrap());
    let breaker = Arc::new(Breaker::new(3, Duration::from_secs(2)));
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let mut svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let mut replayer = Replayer::new(outbox.clone(), ryw).breaker(breaker);
    let replaying = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            replayer.drain().await.unwrap();
        }
    });

    let sessions: Vec<Session> = (0..USERS).map(|_| Session::new()).collect();
    let mut rng = SimRng::new(seed);
    let mut ops = Vec::new();
    let mut deferred = 0;
    for n in 0..OPS {
        // About 60 s of activity: the outage is in the middle.
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400) as u64)).await;
        let user = rng.below(USERS);
        let key: ryw_sim::Key = format!("u{user}k{}", rng.below(3)).into();
        let invoked = now();
        if rng.chance(0.35) {
            let value = (seed << 32) | (n as u64 + 1);
            let out = svc
                .ready()
                .await
                .unwrap()
                .call(sessions[user].request(SimRequest::put(key.clone(), value)))
                .await;
            let ok = match out {
                Ok(Written::Applied(_)) => true,
                Ok(Written::Deferred(_)) => {
                    deferred += 1;
                    true
                }
                Ok(other) => panic!("one request, no copies: {other:?}"),
                Err(_) => false,
            };
            ops.push(Op {
                session: user,
                key,
                kind: OpKind::Write { value, ok },
                invoked_micros: invoked,
                completed_micros: now(),
                detached: false,
            });
        } else {
            let out = svc
                .ready()
                .await
                .unwrap()
                .call(sessions[user].request(SimRequest::get(key.clone())))
                .await;
            let (observed, status) = match out.ok().and_then(Written::applied) {
                Some(r) => {
                    let status = match r.visibility() {
                        Visibility::Guaranteed(_) => ReadStatus::Guaranteed,
                        _ => ReadStatus::Pending,
                    };
                    (Some(r.get_ref().version), status)
                }
                None => (None, ReadStatus::Guaranteed),
            };
            ops.push(Op {
                session: user,
                key,
                kind: OpKind::Read { observed, status },
                invoked_micros: invoked,
                completed_micros: now(),
                detached: false,
            });
        }
    }
    // Let the replayer finish.
    let drained = tokio::time::timeout(Duration::from_secs(600), async {
        while !outbox.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    replaying.abort();
    assert!(
        drained.is_ok(),
        "seed {seed}: the outbox drains after the outage"
    );
    assert!(
        outbox.dead_letters().unwrap().is_empty(),
        "seed {seed}: {:?}",
        outbox.dead_letters()
    );
    (
        History {
            ops,
            log: store.log(),
        },
        deferred,
    )
}

fn store_micros(clock: &ryw_sim::SimClock) -> u64 {
    use ryw::clock::Clock;
    clock.now_micros()
}

#[test]
fn twenty_seeds_through_an_outage_keep_every_guarantee_and_every_write() {
    let dir = TempDir::new();
    let mut total_deferred = 0;
    for seed in 0..20 {
        let (history, deferred) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(seed, dir.path()));
        total_deferred += deferred;
        let report = check(&history);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {} violations, first: {}",
            report.violations.len(),
            report.violations[0]
        );
        assert!(report.reads_checked > 0, "seed {seed}: reads were checked");
    }
    assert!(
        total_deferred > 20,
        "the outage deferred writes: {total_deferred}"
    );
}
