//! What coarsening costs, and what the session's record saves: one session touching ten times its
//! version vector's cap, read back under lag that stays within a replication window and under a
//! replica cut off far longer.
//!
//! Before every read through the layer, the same replica is probed with a raw read at the same
//! instant: a read is *really stale* when that cheap read would have missed the session's own
//! last write of the key. The table compares the reads the layer sent to the strong path with the
//! reads that really needed it:
//!
//! - in one process (a `Session` kept in memory), with all scopes fitting (cap 48, 40 keys), and
//!   coarsened (cap 4, 40 keys): the process keeps coarsened entries exactly;
//! - across instances with the default cap (32) and 320 keys: every request continues the session
//!   from its token on one of two app instances, with the token alone ("token only": coarsened
//!   scopes are known by their store's horizon) or with the session's record
//!   (`ryw::record::SessionRecords` over a shared record store: "record").
//!
//! Deterministic (simulated time, fixed seeds).
//!
//! ```text
//! cargo run --example coarsening
//! ```

use ryw::record::{InMemoryRecordStore, SessionRecords};
use ryw::{FenceConfig, ReadYourWritesLayer, Session, Visibility};
use ryw_sim::{
    LagModel, Node, Partition, PartitionKind, SimAdapter, SimConfig, SimRequest, SimRng, SimStore,
};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, ServiceExt};

const OPS: usize = 2_000;

/// How the session goes from one request to the next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// One `Session` in this process's memory.
    InProcess,
    /// Its token, to one of two instances, alone.
    TokenOnly,
    /// Its token, to one of two instances sharing a record store.
    Record,
}

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
    record_loads: u64,
    record_writes: u64,
}

async fn run(
    cap: usize,
    keys: usize,
    carry: Carry,
    fence: FenceConfig,
    cut_off: bool,
    seed: u64,
) -> Tally {
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
    let mut session = Session::new();
    session.with_state(|s| s.vector_mut().set_cap(cap));
    let records = Arc::new(InMemoryRecordStore::new());
    let instances = [
        SessionRecords::new(records.clone()),
        SessionRecords::new(records),
    ];
    let mut rng = SimRng::new(seed);
    let mut last_write: HashMap<String, u64> = HashMap::new();
    let mut tally = Tally::default();
    for n in 0..OPS {
        tokio::time::sleep(Duration::from_millis(5 + rng.below(30) as u64)).await;
        let key = format!("k{}", rng.below(keys));
        // The next request: on one of two instances, given the token the last one issued.
        let instance = &instances[n % 2];
        if carry != Carry::InProcess {
            let token = session.token().encode().expect("a token");
            session = Session::from_encoded(&token).expect("a token decodes");
            if carry == Carry::Record {
                instance.load(&session).await;
            }
        }
        if rng.chance(0.3) || !last_write.contains_key(&key) {
            let put = SimRequest::put(key.clone(), n as u64);
            if let Ok(out) = service.clone().oneshot(session.request(put)).await {
                last_write.insert(key, out.get_ref().version.get());
            }
            if carry == Carry::Record {
                instance.flush(&session).await;
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
        if carry == Carry::Record {
            instance.flush(&session).await;
        }
    }
    for i in &instances {
        tally.record_loads += i.stats().loads;
        tally.record_writes += i.stats().writes;
    }
    tally
}

fn main() -> ExitCode {
    println!("one session, {OPS} operations (30% writes), 1 replica lagging 20 ms + 30 ms mean\n");
    println!(
        "{:<62} {:>6} {:>13} {:>13} {:>12} {:>13} {:>14} {:>11} {:>8} {:>7} {:>6}",
        "case",
        "reads",
        "really stale",
        "strong reads",
        "strong/stale",
        "record loads",
        "record writes",
        "guaranteed",
        "pending",
        "failed",
        "wrong"
    );
    let mut wrong = 0;
    let mut goal_met = true;
    for (cut_off, lag) in [
        (false, "lag within a window"),
        (true, "replica cut off 20 s"),
    ] {
        for (cap, keys, carry, fence, what) in [
            (
                48,
                40,
                Carry::InProcess,
                FenceConfig::default(),
                "exact (cap 48), 40 keys, one process",
            ),
            (
                4,
                40,
                Carry::InProcess,
                FenceConfig::default(),
                "coarsened (cap 4), 40 keys, one process",
            ),
            (
                32,
                320,
                Carry::TokenOnly,
                FenceConfig::default(),
                "default cap 32, 320 keys, token only",
            ),
            (
                32,
                320,
                Carry::Record,
                FenceConfig::default(),
                "default cap 32, 320 keys, record",
            ),
        ] {
            let t = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime")
                .block_on(run(cap, keys, carry, fence, cut_off, 7));
            wrong += t.wrong;
            if carry == Carry::Record {
                goal_met &= t.strong as f64 <= 1.1 * t.really_stale as f64 + 10.0;
            }
            let ratio = if t.really_stale == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", t.strong as f64 / t.really_stale as f64)
            };
            println!(
                "{:<62} {:>6} {:>13} {:>13} {:>12} {:>13} {:>14} {:>11} {:>8} {:>7} {:>6}",
                format!("{lag}, {what}"),
                t.reads,
                t.really_stale,
                t.strong,
                ratio,
                t.record_loads,
                t.record_writes,
                t.guaranteed,
                t.pending,
                t.failed,
                t.wrong
            );
        }
    }
    println!("\nreally stale: the same replica, probed at the same instant, lacked the session's own last");
    println!(
        "write of the key. record loads, record writes: reads and writes of the record store (two"
    );
    println!("instances). wrong: reads reported Guaranteed that missed the session's own write (must be 0).");
    println!(
        "with the record, strong reads <= 1.1 x really stale + 10: {}",
        if goal_met { "yes" } else { "no" }
    );
    if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
