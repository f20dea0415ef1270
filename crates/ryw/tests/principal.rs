//! A principal's record: what every session bound to the principal wrote and read, shared by
//! its devices. A property test against a reference model, and the failure and isolation cases:
//! a record that cannot be had is never trusted, and a principal's record is never reached by
//! another principal's sessions.

use proptest::prelude::*;
use ryw::fence::FencePath;
use ryw::principal::{Advanced, Entered, PrincipalRecords};
use ryw::record::{InMemoryRecordStore, Record, RecordError, RecordFuture, RecordStore};
use ryw::signing::SigningKey;
use ryw::version::{Entry, ScopeKey, StoreId, Version};
use ryw::{ReadYourWritesLayer, Session, SessionId, Visibility};
use ryw_sim::{LagModel, SimAdapter, SimConfig, SimRequest, SimStore};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};

const STORE: StoreId = StoreId::new(1);

fn scope(n: u8) -> ScopeKey {
    ScopeKey::new(STORE, &[n])
}

fn key() -> SigningKey {
    SigningKey::new(1, [9u8; 32]).unwrap()
}

/// Runs a future that never waits (the in-memory record store answers at once).
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn required(session: &Session, s: ScopeKey) -> Version {
    session.with_state(|st| st.requirement(s).version)
}

/// A record store that can fail, damage what it returns, or forget everything, and remembers
/// the keys it was asked for.
#[derive(Default)]
struct Faulty {
    inner: Mutex<Arc<InMemoryRecordStore>>,
    down: Mutex<bool>,
    damaged: Mutex<bool>,
    keys: Mutex<Vec<SessionId>>,
}

impl Faulty {
    fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }

    /// Loses every record (a table recreated, a backup restored).
    fn wipe(&self) {
        *self.inner.lock().unwrap() = Arc::new(InMemoryRecordStore::new());
    }
}

impl RecordStore for Faulty {
    fn append<'a>(&'a self, session: SessionId, entries: &'a [Entry]) -> RecordFuture<'a, u64> {
        self.keys.lock().unwrap().push(session);
        let down = *self.down.lock().unwrap();
        let inner = self.inner.lock().unwrap().clone();
        Box::pin(async move {
            if down {
                return Err(RecordError::Unavailable("down".into()));
            }
            inner.append(session, entries).await
        })
    }

    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<Record>> {
        self.keys.lock().unwrap().push(session);
        let (down, damaged) = (*self.down.lock().unwrap(), *self.damaged.lock().unwrap());
        let inner = self.inner.lock().unwrap().clone();
        Box::pin(async move {
            if down {
                return Err(RecordError::Unavailable("down".into()));
            }
            if damaged {
                return Err(RecordError::Damaged("bad entry".into()));
            }
            inner.load(session).await
        })
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A request of device `device` through instance `instance` that raises `scope` to
    /// `version` (a write, or a read that saw it).
    Request {
        device: usize,
        instance: usize,
        scope: u8,
        version: u64,
    },
    /// The record store goes down or comes back.
    Store(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..3usize, 0..2usize, 0..6u8, 1..50u64).prop_map(|(device, instance, scope, version)| {
            Step::Request { device, instance, scope, version }
        }),
        1 => any::<bool>().prop_map(Step::Store),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever devices and instances a principal's requests go through, and whatever the
    /// record store does: a request whose record was read requires of every scope at least what
    /// any earlier request of the principal raised and appended; one whose record could not be
    /// read is session-only; a device always requires what it raised itself; and what a failed
    /// append left out comes back with the device's next request that reaches the store.
    #[test]
    fn every_fenced_request_requires_what_the_principal_appended(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        let store = Arc::new(Faulty::default());
        let instances = [
            PrincipalRecords::new(store.clone(), key()),
            PrincipalRecords::new(store.clone(), key()),
        ];
        // Each device's token, and the model: what the principal's record must hold (appended),
        // and what each device raised itself.
        let mut tokens: Vec<String> =
            (0..3).map(|_| Session::new().token().encode().unwrap()).collect();
        let mut appended: BTreeMap<u8, u64> = BTreeMap::new();
        let mut own: Vec<BTreeMap<u8, u64>> = vec![BTreeMap::new(); 3];
        for step in steps {
            let (device, instance, s, version) = match step {
                Step::Store(down) => {
                    store.set_down(down);
                    continue;
                }
                Step::Request { device, instance, scope, version } => {
                    (device, instance, scope, version)
                }
            };
            let records = &instances[instance];
            let session = Session::from_encoded(&tokens[device]).unwrap();
            let entered = now(records.enter(b"alice", &session));
            let unavailable = session.with_state(|st| st.principal_unavailable());
            match entered {
                Entered::Fenced { .. } => {
                    prop_assert!(!unavailable);
                    for (&sc, &v) in &appended {
                        prop_assert!(
                            required(&session, scope(sc)) >= Version::new(v),
                            "scope {sc}: requires {:?}, the principal appended {v}",
                            required(&session, scope(sc))
                        );
                    }
                }
                _ => prop_assert!(unavailable, "a record not had must make reads session-only"),
            }
            for (&sc, &v) in &own[device] {
                prop_assert!(required(&session, scope(sc)) >= Version::new(v));
            }
            session.with_state(|st| st.advance(scope(s), Version::new(version)));
            let slot = own[device].entry(s).or_default();
            *slot = (*slot).max(version);
            match now(records.leave(b"alice", &session)) {
                // Everything the device holds is in the record now: it held nothing beyond it, or
                // appended all of it (what earlier failed appends left out too).
                Advanced::Appended(_) | Advanced::NotNeeded => {
                    prop_assert!(!unavailable || entered != Entered::Untrusted);
                    for (&sc, &v) in own[device].iter() {
                        let a = appended.entry(sc).or_default();
                        *a = (*a).max(v);
                    }
                }
                Advanced::Failed => {}
                _ => unreachable!(),
            }
            tokens[device] = session.token().encode().unwrap();
        }
    }
}

/// A session that met a requirement of its principal's record takes it as its own: when the
/// record is down at its next request, it still requires what it saw (monotonic reads for the
/// session), and its reads say they are guaranteed for the session only.
#[tokio::test(start_paused = true)]
async fn what_a_session_saw_through_the_principal_record_stays_its_own() {
    let sim = SimStore::new(SimConfig::default().replicas(1).lag(LagModel::new(
        Duration::from_millis(50),
        Duration::from_millis(1),
    )));
    let records_store = Arc::new(Faulty::default());
    let records = PrincipalRecords::new(records_store.clone(), key());
    let layer = ReadYourWritesLayer::new(SimAdapter::new()).clock(sim.clock());
    let svc = layer.layer(sim.client(0));

    // The phone writes.
    let phone = Session::new();
    assert!(matches!(
        records.enter(b"alice", &phone).await,
        Entered::Fenced { .. }
    ));
    svc.clone()
        .oneshot(phone.request(SimRequest::put("post", 1)))
        .await
        .unwrap();
    assert!(matches!(
        records.leave(b"alice", &phone).await,
        Advanced::Appended(_)
    ));

    // The laptop, a session of its own, reads it at once: fenced by the principal's record.
    let laptop = Session::new();
    records.enter(b"alice", &laptop).await;
    let read = svc
        .clone()
        .oneshot(laptop.request(SimRequest::get("post")))
        .await
        .unwrap();
    assert!(read.visibility().is_guaranteed(), "{:?}", read.visibility());
    let seen = read.get_ref().version;
    assert!(
        seen > Version::ZERO,
        "the laptop's read missed the phone's write"
    );
    records.leave(b"alice", &laptop).await;
    let token = laptop.token().encode().unwrap();

    // The record store goes down. The laptop's next request requires what it saw, on its own.
    records_store.set_down(true);
    let laptop = Session::from_encoded(&token).unwrap();
    assert_eq!(records.enter(b"alice", &laptop).await, Entered::Unavailable);
    assert!(required(&laptop, sim_scope("post")) >= seen);
    let read = svc
        .clone()
        .oneshot(laptop.request(SimRequest::get("post")))
        .await
        .unwrap();
    assert!(
        matches!(read.visibility(), Visibility::SessionOnly(_)),
        "{:?}",
        read.visibility()
    );
    assert!(read.get_ref().version >= seen);
    // Whether the record holds what the laptop holds cannot be known: it tries, and says so.
    assert_eq!(records.leave(b"alice", &laptop).await, Advanced::Failed);
    assert_eq!(records.stats().load_failures, 1);
}

fn sim_scope(key: &str) -> ScopeKey {
    let mut scopes = ryw::adapter::Scopes::new();
    ryw::StoreAdapter::scopes(&SimAdapter::new(), &SimRequest::get(key), &mut scopes);
    let first = scopes.iter().next().unwrap();
    first
}

/// A write made while the record store is down applies and is reported not advanced; the
/// device's next request that reaches the store appends it, and the other device then requires it.
#[test]
fn a_write_the_record_missed_is_appended_by_the_next_request() {
    let store = Arc::new(Faulty::default());
    let records = PrincipalRecords::new(store.clone(), key());
    let phone = Session::new();
    store.set_down(true);
    assert_eq!(now(records.enter(b"alice", &phone)), Entered::Unavailable);
    phone.with_state(|s| s.advance(scope(1), Version::new(7)));
    assert_eq!(now(records.leave(b"alice", &phone)), Advanced::Failed);
    assert_eq!(records.stats().append_failures, 1);

    store.set_down(false);
    let token = phone.token().encode().unwrap();
    let phone = Session::from_encoded(&token).unwrap();
    now(records.enter(b"alice", &phone));
    assert!(matches!(
        now(records.leave(b"alice", &phone)),
        Advanced::Appended(_)
    ));
    let laptop = Session::new();
    now(records.enter(b"alice", &laptop));
    assert_eq!(required(&laptop, scope(1)), Version::new(7));
}

/// A damaged record, or one older than this instance has seen (deleted, restored from a
/// backup), is never trusted.
#[test]
fn a_damaged_or_rolled_back_record_is_not_trusted() {
    let store = Arc::new(Faulty::default());
    let records = PrincipalRecords::new(store.clone(), key());
    let phone = Session::new();
    now(records.enter(b"alice", &phone));
    phone.with_state(|s| s.advance(scope(1), Version::new(7)));
    now(records.leave(b"alice", &phone));

    *store.damaged.lock().unwrap() = true;
    let laptop = Session::new();
    assert_eq!(now(records.enter(b"alice", &laptop)), Entered::Untrusted);
    assert!(laptop.with_state(|s| s.principal_unavailable()));
    *store.damaged.lock().unwrap() = false;
    assert!(matches!(
        now(records.enter(b"alice", &Session::new())),
        Entered::Fenced { version: 1 }
    ));

    // The store loses the record: this instance has seen version 1, and refuses version 0.
    store.wipe();
    let laptop = Session::new();
    assert_eq!(now(records.enter(b"alice", &laptop)), Entered::Untrusted);
    assert!(laptop.with_state(|s| s.principal_unavailable()));
    assert_eq!(records.stats().untrusted, 2);
}

/// Mallory's sessions never reflect, reveal or advance alice's record; the principal is never
/// stored in the clear, and a record is keyed under the fingerprint key only.
#[test]
fn another_principal_never_reaches_the_record() {
    let store = Arc::new(Faulty::default());
    let records = PrincipalRecords::new(store.clone(), key());
    let alice = Session::new();
    now(records.enter(b"alice", &alice));
    alice.with_state(|s| s.advance(scope(1), Version::new(40)));
    now(records.leave(b"alice", &alice));

    let mallory = Session::new();
    now(records.enter(b"mallory", &mallory));
    assert_eq!(required(&mallory, scope(1)), Version::ZERO);
    mallory.with_state(|s| s.advance(scope(2), Version::new(99)));
    now(records.leave(b"mallory", &mallory));

    let alice = Session::new();
    now(records.enter(b"alice", &alice));
    assert_eq!(required(&alice, scope(1)), Version::new(40));
    assert_eq!(
        required(&alice, scope(2)),
        Version::ZERO,
        "mallory advanced alice's record"
    );

    // Keys: fingerprints, distinct per principal and per fingerprint key, never the principal.
    let keys: HashMap<SessionId, ()> = store
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| (*k, ()))
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(!keys.contains_key(&SessionId::derive(b"alice")));
    let other_key = PrincipalRecords::new(store.clone(), SigningKey::new(1, [8u8; 32]).unwrap());
    assert_ne!(other_key.id_of(b"alice"), records.id_of(b"alice"));
    let text = format!("{:?}", records.id_of(b"alice"));
    assert!(!text.contains("alice"));
}

/// A read that met its fence on a replica is `Guaranteed(Verified)` for a bound session whose
/// record was read.
#[tokio::test(start_paused = true)]
async fn a_bound_session_with_its_record_reads_guaranteed() {
    let sim = SimStore::new(SimConfig::default().replicas(1));
    let records = PrincipalRecords::new(Arc::new(InMemoryRecordStore::new()), key());
    let svc = ReadYourWritesLayer::new(SimAdapter::new())
        .clock(sim.clock())
        .layer(sim.client(0));
    let session = Session::new();
    records.enter(b"alice", &session).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let read = svc
        .oneshot(session.request(SimRequest::get("nothing")))
        .await
        .unwrap();
    assert_eq!(
        read.visibility(),
        &Visibility::Guaranteed(FencePath::Unfenced)
    );
}
