//! What coarsening safely costs: one session touching ten times its version vector's cap, read
//! back under lag that stays within a replication window and under a replica cut off far longer.
//!
//! Before every read through the layer, the same replica is probed with a raw read at the same
//! instant: a read is *really stale* when that cheap read would have missed the session's own
//! last write of the key. The table compares the reads the layer sent to the strong path with the
//! reads that really needed it, for a session whose scopes all fit (cap 48, 40 keys) and one that
//! coarsens (cap 4, 40 keys). Deterministic (simulated time, fixed seeds).
//!
//! ```text
//! cargo run --example coarsening
//! ```

use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_sim::{
    LagModel, Node, Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimRng, SimStore,
};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;
use tower::{Layer, ServiceExt};

const KEYS: u64 = 40;
const OPS: usize = 2_000;

#[derive(Default)]
struct Tally {
    reads: usize,
    really_stale: usize,
    strong: usize,
    guaranteed: usize,
    pending: usize,
    waited: usize,
    failed: usize,
    wrong: usize,
}

async fn run(cap: usize, fence: FenceConfig, cut_off: bool, seed: u64) -> Tally {
    let mut config = SimConfig::default()
        .seed(seed)
        .replicas(1)
        .lag(LagModel::new(
            Duration::from_millis(20),
            Duration::from_millis(30),
        ));
    if cut_off {
        // The only replica stops replicating for 20 s in the middle of the run.
        config = config.partition(Partition {
            start: Duration::from_secs(5),
            end: Duration::from_secs(25),
            kind: PartitionKind::ReplicaIsolated(0),
        });
    }
    let store = SimStore::new(config);
    let service = ReadYourWritesLayer::new(SimAdapter::new())
        .fence(fence)
        .clock(store.clock())
        .layer(store.client(0));
    let session = Session::new();
    session.with_state(|s| s.vector_mut().set_cap(cap));
    let mut rng = SimRng::new(seed);
    let mut last_write: HashMap<String, u64> = HashMap::new();
    let mut tally = Tally::default();
    for n in 0..OPS {
        tokio::time::sleep(Duration::from_millis(5 + rng.below(30) as u64)).await;
        let key = format!("k{}", rng.below(KEYS as usize));
        if rng.chance(0.3) || !last_write.contains_key(&key) {
            let put = SimRequest::put(key.clone(), n as u64);
            if let Ok(out) = service.clone().oneshot(session.request(put)).await {
                last_write.insert(key, out.get_ref().version.get());
            }
            continue;
        }
        let mine = last_write[&key];
        let probe = store
            .client(0)
            .oneshot(SimRequest::get(key.clone()))
            .await
            .expect("the simulated replica answers");
        tally.reads += 1;
        tally.really_stale += usize::from(probe.version.get() < mine);
        let Ok(read) = service
            .clone()
            .oneshot(session.request(SimRequest::get(key.clone())))
            .await
        else {
            // A server wait that outlasted the replica's patience, after the retries.
            tally.failed += 1;
            continue;
        };
        tally.strong += usize::from(read.get_ref().served_by == Node::Primary);
        tally.waited += usize::from(
            read.visibility() == &Visibility::Guaranteed(ryw::fence::FencePath::ServerWait),
        );
        match read.visibility() {
            Visibility::Guaranteed(_) => {
                tally.guaranteed += 1;
                tally.wrong += usize::from(read.get_ref().version.get() < mine);
            }
            _ => tally.pending += 1,
        }
    }
    tally
}

fn main() -> ExitCode {
    println!(
        "one session, {KEYS} keys, {OPS} operations (30% writes), 1 replica lagging 20 ms + 30 ms mean\n"
    );
    println!(
        "{:<58} {:>6} {:>13} {:>12} {:>12} {:>11} {:>8} {:>7} {:>6}",
        "case",
        "reads",
        "really stale",
        "strong reads",
        "server waits",
        "guaranteed",
        "pending",
        "failed",
        "wrong"
    );
    let mut wrong = 0;
    for (cut_off, lag) in [
        (false, "lag within a window"),
        (true, "replica cut off 20 s"),
    ] {
        for (cap, fence, what) in [
            (48, FenceConfig::default(), "exact (cap 48), verify"),
            (4, FenceConfig::default(), "coarsened (cap 4, 10x), verify"),
            (
                4,
                FenceConfig::server_wait(),
                "coarsened (cap 4, 10x), server wait",
            ),
        ] {
            let t = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime")
                .block_on(run(cap, fence, cut_off, 7));
            wrong += t.wrong;
            println!(
                "{:<58} {:>6} {:>13} {:>12} {:>12} {:>11} {:>8} {:>7} {:>6}",
                format!("{lag}, {what}"),
                t.reads,
                t.really_stale,
                t.strong,
                t.waited,
                t.guaranteed,
                t.pending,
                t.failed,
                t.wrong
            );
        }
    }
    println!("\nreally stale: the same replica, probed at the same instant, lacked the session's own last");
    println!(
        "write of the key. failed: the read returned an error (a server wait timed out, retried)."
    );
    println!("wrong: reads reported Guaranteed that missed the session's own write (must be 0).");
    if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
