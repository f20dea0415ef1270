//! One write, one answer: every write is sent as two copies of one request (clones), at the
//! same time (a hedge) or one after the other (tower's `Retry` above the outbox layer), while the
//! simulated primary goes down and comes back. No write is answered applied by one copy and
//! deferred by another; a write any copy applied is never queued; every deferred copy names the
//! same queued entry; and the session-guarantee checker finds nothing wrong with the history.

mod common;

use common::TempDir;
use ryw::{ReadYourWritesLayer, Session, Visibility, WriteId};
use ryw_outbox::{Breaker, Outbox, OutboxConfig, OutboxLayer, Replayer, Written};
use ryw_sim::checker::{check, History, Op, OpKind, ReadStatus};
use ryw_sim::{
    LagModel, Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimRng, SimStore,
};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const USERS: usize = 4;
const OPS: usize = 200;

/// What the copies of one write were told.
#[derive(Debug, Default)]
struct Answers {
    applied: Vec<Option<WriteId>>,
    deferred: Vec<(WriteId, u64)>,
    failed: usize,
}

fn tally(answers: &mut Answers, out: Result<Written<ryw_sim::SimResponse>, impl std::fmt::Debug>) {
    match out {
        Ok(Written::Applied(r)) => answers.applied.push(r.write_id()),
        Ok(Written::AlreadyApplied(id)) => answers.applied.push(Some(id)),
        Ok(Written::Deferred(d)) => answers.deferred.push((d.write_id, d.seq)),
        Ok(other) => panic!("{other:?}"),
        Err(_) => answers.failed += 1,
    }
}

struct Run {
    history: History,
    applied_and_deferred: usize,
    applied_but_queued: usize,
    deferred_apart: usize,
    pairs: usize,
    deferred: usize,
}

async fn run(seed: u64, dir: &std::path::Path) -> Run {
    let store = SimStore::new(
        SimConfig::default()
            .seed(seed)
            .replicas(2)
            .lag(LagModel::new(
                Duration::from_millis(20),
                Duration::from_millis(30),
            ))
            .lost_responses(0.03)
            .duplicate_deliveries(0.01)
            .partition(Partition {
                start: Duration::from_secs(8),
                end: Duration::from_secs(25),
                kind: PartitionKind::PrimaryUnreachable,
            }),
    );
    let clock = store.clock();
    let now = move || {
        use ryw::clock::Clock;
        clock.now_micros()
    };
    let outbox =
        Arc::new(Outbox::open(dir.join(format!("o{seed}")), OutboxConfig::default()).unwrap());
    let breaker = Arc::new(Breaker::new(2, Duration::from_secs(2)));
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(store.client(0));
    let svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
        .breaker(breaker.clone())
        .layer(ryw.clone());
    let mut replayer = Replayer::new(outbox.clone(), ryw).breaker(breaker.clone());
    let replaying = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            replayer.drain().await.unwrap();
        }
    });

    let sessions: Vec<Session> = (0..USERS).map(|_| Session::new()).collect();
    let mut rng = SimRng::new(seed);
    let mut ops = Vec::new();
    let mut run = Run {
        history: History::default(),
        applied_and_deferred: 0,
        applied_but_queued: 0,
        deferred_apart: 0,
        pairs: 0,
        deferred: 0,
    };
    for n in 0..OPS {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(300) as u64)).await;
        let user = rng.below(USERS);
        let key: ryw_sim::Key = format!("u{user}k{}", rng.below(2)).into();
        let invoked = now();
        if rng.chance(0.5) {
            let value = (seed << 32) | (n as u64 + 1);
            let request = sessions[user].request(SimRequest::put(key.clone(), value));
            let copy = request.clone();
            let (mut a, mut b) = (svc.clone(), svc.clone());
            let mut answers = Answers::default();
            if rng.chance(0.5) {
                // A hedge: both copies at once.
                let (x, y) = tokio::join!(
                    async { a.ready().await.unwrap().call(request).await },
                    async {
                        tokio::time::sleep(Duration::from_millis(rng.below(5) as u64)).await;
                        b.ready().await.unwrap().call(copy).await
                    }
                );
                tally(&mut answers, x);
                tally(&mut answers, y);
            } else {
                // A retry: the copy after the first answer; sometimes the breaker opened in
                // between (other requests failed at the outage's edge).
                let x = a.ready().await.unwrap().call(request).await;
                tally(&mut answers, x);
                if rng.chance(0.3) {
                    breaker.failed();
                    breaker.failed();
                }
                let y = b.ready().await.unwrap().call(copy).await;
                tally(&mut answers, y);
            }
            run.pairs += 1;
            if !answers.applied.is_empty() && !answers.deferred.is_empty() {
                run.applied_and_deferred += 1;
            }
            for id in answers.applied.iter().flatten() {
                if outbox.queued_seq(*id).is_some() {
                    run.applied_but_queued += 1;
                }
            }
            if answers.deferred.windows(2).any(|w| w[0] != w[1]) {
                run.deferred_apart += 1;
            }
            run.deferred += usize::from(!answers.deferred.is_empty());
            let ok = !answers.applied.is_empty() || !answers.deferred.is_empty();
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
                .clone()
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
    let drained = tokio::time::timeout(Duration::from_secs(600), async {
        while !outbox.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    replaying.abort();
    assert!(drained.is_ok(), "seed {seed}: the outbox drains");
    run.history = History {
        ops,
        log: store.log(),
    };
    run
}

#[test]
fn copies_of_one_write_get_one_answer_around_an_outage() {
    let dir = TempDir::new();
    let (mut pairs, mut deferred, mut broken) = (0, 0, Vec::new());
    for seed in 0..12 {
        let run = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(seed, dir.path()));
        pairs += run.pairs;
        deferred += run.deferred;
        if run.applied_and_deferred + run.applied_but_queued + run.deferred_apart > 0 {
            broken.push(format!(
                "seed {seed}: {} writes applied by one copy and deferred by another, {} applied \
                 yet queued, {} deferred as two entries",
                run.applied_and_deferred, run.applied_but_queued, run.deferred_apart
            ));
        }
        let report = check(&run.history);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {} violations, first: {}",
            report.violations.len(),
            report.violations[0]
        );
    }
    println!("{pairs} writes sent as two copies, {deferred} deferred");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    assert!(deferred > 12, "the outage deferred writes: {deferred}");
}

/// A copy deferred while another is on its way to the store waits for that one's answer: the
/// first copy's response is held back, the breaker opens meanwhile, and the second copy is
/// answered applied when the first one applies, and nothing is queued.
#[tokio::test(start_paused = true)]
async fn a_copy_that_would_defer_while_another_is_sent_takes_its_answer() {
    let dir = TempDir::new();
    let store = SimStore::new(SimConfig::default().seed(1).replicas(1));
    let outbox = Arc::new(Outbox::open(dir.path().join("o"), OutboxConfig::default()).unwrap());
    let breaker = Arc::new(Breaker::new(1, Duration::from_secs(60)));
    let ryw = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(store.clock())
        .layer(
            ryw_sim::fault::HoldResponses::first(1, Duration::from_millis(500))
                .layer(store.client(0)),
        );
    let svc = OutboxLayer::new(outbox.clone(), SimAdapter::new())
        .breaker(breaker.clone())
        .layer(ryw);
    let session = Session::new();
    let request = session.request(SimRequest::put("k", 1));
    let copy = request.clone();
    let (mut a, mut b) = (svc.clone(), svc.clone());
    let (first, second) = tokio::join!(
        async { a.ready().await.unwrap().call(request).await.unwrap() },
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            breaker.failed();
            b.ready().await.unwrap().call(copy).await.unwrap()
        }
    );
    let Written::Applied(first) = first else {
        panic!("{first:?}");
    };
    assert!(
        matches!(second, Written::AlreadyApplied(id) if Some(id) == first.write_id()),
        "{second:?}"
    );
    assert!(outbox.is_empty(), "nothing queued");
}
