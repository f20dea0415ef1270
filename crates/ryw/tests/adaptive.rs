//! The adaptive fence through the layer, against a small replicated store whose replica catches
//! up a fixed time after each write: what goes on the wire (when the re-read is sent, whether a
//! stale read goes straight to the strong path), and the status contract (a read is `Guaranteed`
//! only when a response met its fence).

use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter};
use ryw::adaptive::AdaptiveFence;
use ryw::fence::{FenceConfig, FencePath, FenceStrategy, FenceSupport, ReadFence};
use ryw::stamp::Stamp;
use ryw::{ReadYourWritesLayer, ScopeKey, Session, StoreId, Version, Visibility};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

const STORE: StoreId = StoreId::new(3);
const REPLICA_RTT: Duration = Duration::from_millis(1);
const PRIMARY_RTT: Duration = Duration::from_millis(6);

#[derive(Clone, Debug, PartialEq)]
enum Req {
    Get { key: &'static str, strong: bool },
    Put { key: &'static str },
}

#[derive(Clone, Debug)]
struct Kv {
    support: FenceSupport,
}

impl StoreAdapter for Kv {
    type Request = Req;
    type Response = u64;
    type Error = Infallible;

    fn store(&self) -> StoreId {
        STORE
    }
    fn operation(&self, r: &Req) -> Operation {
        match r {
            Req::Get { .. } => Operation::Read,
            Req::Put { .. } => Operation::Write(Replay::Safe),
        }
    }
    fn scopes(&self, r: &Req, scopes: &mut Scopes) {
        let (Req::Get { key, .. } | Req::Put { key }) = r;
        scopes.push(ScopeKey::new(STORE, key.as_bytes()));
    }
    fn fence_support(&self) -> FenceSupport {
        self.support
    }
    fn stamp_write(&self, _: &mut Req, _: Stamp, _: &ReadFence) {}
    fn apply_fence(&self, r: &mut Req, _: &ReadFence, strategy: FenceStrategy) {
        if let Req::Get { strong, .. } = r {
            *strong = strategy == FenceStrategy::Strong;
        }
    }
    fn observe(&self, r: &Req, version: &u64, observed: &mut Observed) {
        let (Req::Get { key, .. } | Req::Put { key }) = r;
        observed.push(ScopeKey::new(STORE, key.as_bytes()), Version::new(*version));
    }
    fn classify(&self, _: &Infallible) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// One key's versions: the primary's, and what the replica shows until it catches up.
#[derive(Default)]
struct Item {
    version: u64,
    replica_before: u64,
    written: Option<Instant>,
}

/// A primary and one replica that catches up `lag` after each write (`None`: never), with every
/// request it served, and when.
#[derive(Clone)]
struct Store {
    lag: Option<Duration>,
    items: Arc<Mutex<HashMap<&'static str, Item>>>,
    wire: Arc<Mutex<Vec<(Instant, Req)>>>,
}

impl Store {
    fn new(lag: Option<Duration>) -> Self {
        Store {
            lag,
            items: Arc::default(),
            wire: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl tower::Service<Req, Response = u64, Error = Infallible, Future: Send> + Clone {
        let store = self.clone();
        tower::service_fn(move |req: Req| {
            let store = store.clone();
            async move {
                store
                    .wire
                    .lock()
                    .unwrap()
                    .push((Instant::now(), req.clone()));
                let rtt = match req {
                    Req::Get { strong: false, .. } => REPLICA_RTT,
                    _ => PRIMARY_RTT,
                };
                // Served at the end of the round trip (the paused clock counts whole
                // milliseconds).
                tokio::time::sleep(rtt).await;
                let now = Instant::now();
                let version = {
                    let mut items = store.items.lock().unwrap();
                    match req {
                        Req::Put { key } => {
                            let item = items.entry(key).or_default();
                            item.replica_before = store.replica(item, now);
                            item.version += 1;
                            item.written = Some(now);
                            item.version
                        }
                        Req::Get { key, strong } => {
                            let item = items.entry(key).or_default();
                            if strong {
                                item.version
                            } else {
                                store.replica(item, now)
                            }
                        }
                    }
                };
                Ok::<_, Infallible>(version)
            }
        })
    }

    /// What the replica holds of `item` at `now`.
    fn replica(&self, item: &Item, now: Instant) -> u64 {
        match (self.lag, item.written) {
            (Some(lag), Some(at)) if now >= at + lag => item.version,
            (_, None) => item.version,
            _ => item.replica_before,
        }
    }

    fn strong_reads(&self) -> usize {
        let wire = self.wire.lock().unwrap();
        wire.iter()
            .filter(|(_, r)| matches!(r, Req::Get { strong: true, .. }))
            .count()
    }

    fn cheap_reads(&self) -> usize {
        let wire = self.wire.lock().unwrap();
        wire.iter()
            .filter(|(_, r)| matches!(r, Req::Get { strong: false, .. }))
            .count()
    }
}

/// What `reads` write-then-read rounds through `layer` came to.
#[derive(Debug, Default)]
struct Rounds {
    /// Read latencies of the last half of the rounds (the learner warm).
    late_latencies: Vec<Duration>,
    guaranteed: usize,
    pending: usize,
    re_read: usize,
    escalated: usize,
}

/// Writes a key and reads it back straight away, `rounds` times, checking every read against
/// the status contract.
async fn rounds(layer: &ReadYourWritesLayer<Kv>, store: &Store, rounds: usize) -> Rounds {
    let service = layer.layer(store.service());
    let session = Session::new();
    let mut out = Rounds::default();
    for n in 0..rounds {
        let written = service
            .clone()
            .oneshot(session.request(Req::Put { key: "k" }))
            .await
            .unwrap();
        let mine = *written.get_ref();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        let read = service
            .clone()
            .oneshot(session.request(Req::Get {
                key: "k",
                strong: false,
            }))
            .await
            .unwrap();
        if n >= rounds / 2 {
            out.late_latencies.push(started.elapsed());
        }
        match read.visibility() {
            Visibility::Guaranteed(path) => {
                assert!(
                    *read.get_ref() >= mine,
                    "round {n}: Guaranteed ({path:?}) but version {} < {mine}",
                    read.get_ref()
                );
                out.guaranteed += 1;
                out.re_read += usize::from(*path == FencePath::ReRead);
                out.escalated += usize::from(*path == FencePath::Escalated);
            }
            Visibility::Pending(stale) => {
                assert!(*read.get_ref() < mine, "a pending read was in fact fresh");
                assert_eq!(stale.staleness.required, Version::new(mine));
                out.pending += 1;
            }
            other => panic!("round {n}: {other:?}"),
        }
        // Let the replica catch up before the next round, whatever its lag.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out
}

fn adapter(strong: bool) -> Kv {
    Kv {
        support: FenceSupport::new().strong_reads(strong),
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_catches_up_fast_is_re_read_sooner_than_the_fixed_delay() {
    // The replica shows a write 8 ms after it lands; the read goes out 2 ms after the write's
    // answer and finds it stale. The fixed default would re-read after 10 ms
    // (about 12 ms in all); the learned delay is about 2 ms.
    let store = Store::new(Some(Duration::from_millis(8)));
    let layer = ReadYourWritesLayer::new(adapter(true));
    let r = rounds(&layer, &store, 400).await;
    assert_eq!(r.guaranteed, 400);
    // Explorations that miss are re-read at the learned delay, never escalated.
    assert_eq!(r.escalated, 0, "{r:?}");
    let late_max = r.late_latencies.iter().max().unwrap();
    assert!(*late_max < Duration::from_millis(8), "{r:?}");
    let learned = layer.fence_learner().unwrap().snapshot();
    assert!(learned.warm);
    assert!(
        learned.catch_up.unwrap() <= Duration::from_millis(4),
        "{learned:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_lags_long_is_escalated_at_once() {
    let store = Store::new(Some(Duration::from_millis(300)));
    let layer = ReadYourWritesLayer::new(adapter(true));
    let r = rounds(&layer, &store, 200).await;
    assert_eq!(r.guaranteed, 200);
    assert_eq!(r.escalated, 200, "{r:?}");
    // Warm, a stale read goes to the primary at once, but for the canaries (one in 128).
    let learned = layer.fence_learner().unwrap().snapshot();
    assert!(learned.escalated_at_once >= 150, "{learned:?}");
    let wasted = store.cheap_reads() - 200;
    assert!(wasted <= 16 + 200 / 128 + 1, "{wasted} cheap re-reads");
    assert_eq!(store.strong_reads(), 200);
    // On the wire: the strong read follows the stale answer without a wait.
    let wire = store.wire.lock().unwrap().clone();
    let (last_cheap, _) = wire
        .iter()
        .rev()
        .find(|(_, r)| matches!(r, Req::Get { strong: false, .. }))
        .unwrap();
    let (last_strong, _) = wire.last().unwrap();
    assert_eq!(*last_strong - *last_cheap, REPLICA_RTT);
    // The fixed schedule pays a re-read for every one of them.
    let fixed = Store::new(Some(Duration::from_millis(300)));
    let layer = ReadYourWritesLayer::new(adapter(true)).fence(FenceConfig::default());
    rounds(&layer, &fixed, 200).await;
    assert_eq!(fixed.cheap_reads(), 400);
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_never_catches_up_is_never_guaranteed() {
    // Without a strong path: every read ends pending, and re-reads stay within the budget.
    let store = Store::new(None);
    let layer = ReadYourWritesLayer::new(adapter(false))
        .adaptive_fence(AdaptiveFence::new(Duration::from_millis(30)).max_rereads(2));
    let r = rounds(&layer, &store, 100).await;
    assert_eq!(r.pending, 100, "{r:?}");
    assert!(r
        .late_latencies
        .iter()
        .all(|l| *l <= Duration::from_millis(33)));
    let learned = layer.fence_learner().unwrap().snapshot();
    // At most 1.25 re-reads per miss, plus the 32 saved up.
    assert!(
        learned.rereads * 4 <= learned.misses * 5 + 4 * 32,
        "{learned:?}"
    );
    // With a strong path, every read is guaranteed by it.
    let store = Store::new(None);
    let layer = ReadYourWritesLayer::new(adapter(true));
    let r = rounds(&layer, &store, 100).await;
    assert_eq!((r.guaranteed, r.escalated), (100, 100));
}
