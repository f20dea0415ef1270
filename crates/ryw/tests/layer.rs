//! tower-test unit tests of the session layer: readiness, stamping, retry and replay rules,
//! fences, conflicts, pointwise merging.

mod common;

use common::RetryErrors;
use ryw::adapter::{ErrorClass, Observed, Operation, Replay, Scopes, StoreAdapter};
use ryw::clock::HybridTimestamp;
use ryw::conflict::{Conflict, ConflictResolver, Resolution};
use ryw::fence::{FenceConfig, FencePath, FenceStrategy, FenceSupport, ReadFence, StaleReadPolicy};
use ryw::retry::{Backoff, RetryBudget, RetryPolicy, TowerPolicy};
use ryw::stamp::Stamp;
use ryw::{
    ReadYourWritesLayer, ScopeKey, Session, SessionRequest, StoreId, Version, Visibility, WriteId,
};
use std::time::Duration;
use tokio_test_shim::*;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const STORE: StoreId = StoreId::new(1);

#[derive(Clone, Debug, PartialEq)]
enum Req {
    Get {
        key: &'static str,
        strong: bool,
    },
    Put {
        key: &'static str,
        write_id: Option<WriteId>,
        ts: Option<HybridTimestamp>,
        if_version: Option<Version>,
        replay: Replay,
        /// What the adapter noted on the request, outside its identity.
        marks: Marks,
    },
}

/// What the adapter noted on a request: whether `prepare_replay` marked it, and the version the
/// session required of its scope when it was stamped (as a store that conditions writes on it
/// would use). Not part of the request's identity (a replay is the same stamped request), so it
/// compares equal whatever its value.
#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    replayed: bool,
    required_at_stamp: Option<Version>,
}

impl PartialEq for Marks {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Resp {
    version: u64,
    clock: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum KvError {
    #[error("throttled")]
    Throttled,
    #[error("timeout")]
    Timeout,
    #[error("invalid")]
    Invalid,
    #[error("condition failed at {0}")]
    Condition(u64, u64, u128),
}

fn key_of(r: &Req) -> &'static str {
    match r {
        Req::Get { key, .. } | Req::Put { key, .. } => key,
    }
}

fn scope(key: &str) -> ScopeKey {
    ScopeKey::new(STORE, key.as_bytes())
}

#[derive(Clone, Debug)]
struct Kv {
    support: FenceSupport,
}

impl StoreAdapter for Kv {
    type Request = Req;
    type Response = Resp;
    type Error = BoxError;

    fn store(&self) -> StoreId {
        STORE
    }
    fn operation(&self, r: &Req) -> Operation {
        match r {
            Req::Get { .. } => Operation::Read,
            Req::Put { replay, .. } => Operation::Write(*replay),
        }
    }
    fn scopes(&self, r: &Req, scopes: &mut Scopes) {
        // The empty key stands for a request the adapter cannot name a scope for.
        if !key_of(r).is_empty() {
            scopes.push(scope(key_of(r)));
        }
    }
    fn fence_support(&self) -> FenceSupport {
        self.support
    }
    fn stamp_write(&self, r: &mut Req, stamp: Stamp, fence: &ReadFence) {
        let required = fence.requirement(scope(key_of(r))).map(|q| q.version);
        if let Req::Put {
            write_id,
            ts,
            marks,
            ..
        } = r
        {
            *write_id = Some(stamp.write_id);
            *ts = Some(stamp.timestamp);
            marks.required_at_stamp = required;
        }
    }
    fn prepare_replay(&self, r: &mut Req) {
        if let Req::Put { marks, .. } = r {
            marks.replayed = true;
        }
    }
    fn apply_fence(&self, r: &mut Req, _fence: &ReadFence, strategy: FenceStrategy) {
        if let Req::Get { strong, .. } = r {
            *strong = strategy == FenceStrategy::Strong;
        }
    }
    fn observe(&self, r: &Req, resp: &Resp, observed: &mut Observed) {
        observed.push(scope(key_of(r)), Version::new(resp.version));
        if let Some(c) = resp.clock {
            observed.clock(HybridTimestamp::new(c));
        }
    }
    fn observe_unresolved(&self, r: &Req, observed: &mut Observed) {
        // The version a write gives its key here: its clock.
        if let Req::Put {
            key, ts: Some(ts), ..
        } = r
        {
            observed.push(scope(key), Version::new(ts.get()));
        }
    }
    fn classify(&self, e: &BoxError) -> ErrorClass {
        match e.downcast_ref::<KvError>() {
            Some(KvError::Throttled) => ErrorClass::RETRYABLE,
            Some(KvError::Timeout) => ErrorClass::AMBIGUOUS,
            Some(KvError::Condition(..)) => ErrorClass::Conflict,
            _ => ErrorClass::Permanent,
        }
    }
    fn conflict(&self, r: &Req, e: &BoxError) -> Option<Conflict> {
        let (
            Req::Put {
                key,
                write_id,
                ts,
                if_version,
                ..
            },
            Some(KvError::Condition(v, their_ts, their_session)),
        ) = (r, e.downcast_ref::<KvError>())
        else {
            return None;
        };
        let mut c = Conflict::new(
            scope(key),
            (*write_id)?,
            (*ts)?,
            *if_version,
            Version::new(*v),
        );
        c.current_timestamp = Some(HybridTimestamp::new(*their_ts));
        c.current_writer = Some(WriteId::new(
            ryw::SessionId::from_u128(*their_session),
            0,
            1,
        ));
        Some(c)
    }
    fn rebase(&self, r: &mut Req, c: &Conflict) -> bool {
        if let Req::Put { if_version, .. } = r {
            *if_version = Some(c.current);
            return true;
        }
        false
    }
}

fn get(key: &'static str) -> Req {
    Req::Get { key, strong: false }
}

fn put(key: &'static str, replay: Replay) -> Req {
    Req::Put {
        key,
        write_id: None,
        ts: None,
        if_version: None,
        replay,
        marks: Marks::default(),
    }
}

fn resp(version: u64) -> Resp {
    Resp {
        version,
        clock: None,
    }
}

fn adapter() -> Kv {
    Kv {
        support: FenceSupport::new().strong_reads(true),
    }
}

fn layer(fence: FenceConfig) -> ReadYourWritesLayer<Kv> {
    let policy = RetryPolicy::new()
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .max_retries(3);
    ReadYourWritesLayer::new(adapter())
        .fence(fence)
        .retry(policy)
}

fn session_at(key: &str, version: u64) -> Session {
    let s = Session::new();
    s.with_state(|st| st.advance(scope(key), Version::new(version)));
    s
}

/// Helpers around tokio-test without the dependency.
mod tokio_test_shim {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(f).poll(&mut cx)
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_forwards_to_inner() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Resp, _>(layer(FenceConfig::default()));
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
}

#[tokio::test(start_paused = true)]
async fn write_is_stamped_and_replayed_with_the_same_write_id() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (first, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    let (second, send) = handle.next_request().await.unwrap();
    send.send_response(resp(7));
    let out = call.await.unwrap().unwrap();
    assert_eq!(first, second, "a replay is the same stamped request");
    let Req::Put {
        write_id: Some(w),
        ts: Some(_),
        ..
    } = first
    else {
        panic!("not stamped: {first:?}")
    };
    assert_eq!(
        w,
        WriteId::new(session.id(), session.with_state(|s| s.lane()), 1)
    );
    assert_eq!(out.write_id(), Some(w));
    assert_eq!(out.attempts(), 2);
    assert_eq!(out.visibility().path(), Some(FencePath::Write));
    assert_eq!(
        session.snapshot().vector().get(scope("a")),
        Some(Version::new(7))
    );
}

#[tokio::test(start_paused = true)]
async fn unreplayable_write_is_ambiguous_not_resent() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Never))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    handle.allow(1);
    assert!(poll_once(&mut Box::pin(handle.next_request())).is_pending());
}

#[tokio::test(start_paused = true)]
async fn unreplayable_write_is_retried_when_known_not_applied() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Never))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Throttled);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(1));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_and_budget_caps_retries() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(Session::new().request(get("a"))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Invalid);
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_store() && !err.is_transient());
    assert_eq!(err.store_error().unwrap().to_string(), "invalid");

    // An empty budget: the first transient error is final.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let policy = RetryPolicy::with_budget(RetryBudget::new(0.0, 0));
    let mut svc = ReadYourWritesLayer::new(adapter()).retry(policy).layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(Session::new().request(get("a"))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Throttled);
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_transient());
    match err {
        ryw::Error::Store { attempts, .. } => assert_eq!(attempts, 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn stale_read_is_reread_then_escalated() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::verify_then_escalate(
        1,
        Duration::from_millis(10),
    ))
    .layer(svc);
    let session = session_at("a", 5);
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("a"))));
    let (r1, send) = handle.next_request().await.unwrap();
    assert_eq!(r1, get("a"));
    send.send_response(resp(3));
    let t = tokio::time::Instant::now();
    let (r2, send) = handle.next_request().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(10),
        "re-read after the delay"
    );
    assert_eq!(r2, get("a"));
    send.send_response(resp(4));
    let (r3, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r3,
        Req::Get {
            key: "a",
            strong: true
        }
    );
    send.send_response(resp(6));
    let out = call.await.unwrap().unwrap();
    assert_eq!(out.visibility().path(), Some(FencePath::Escalated));
    assert_eq!(out.attempts(), 3);
    assert_eq!(out.get_ref().version, 6);
    assert_eq!(
        session.snapshot().vector().get(scope("a")),
        Some(Version::new(6))
    );
}

#[tokio::test(start_paused = true)]
async fn read_that_stays_stale_is_pending_or_an_error() {
    for policy in [StaleReadPolicy::Pending, StaleReadPolicy::Error] {
        let (svc, mut handle) = mock::pair::<Req, Resp>();
        let mut svc = layer(FenceConfig::verify_then_escalate(0, Duration::ZERO)).layer(svc);
        let session = session_at("a", 5);
        let call = tokio::spawn(
            svc.ready()
                .await
                .unwrap()
                .call(session.request(get("a")).stale_reads(policy)),
        );
        for _ in 0..2 {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(resp(2));
        }
        let out = call.await.unwrap();
        let stale = match policy {
            StaleReadPolicy::Pending => {
                let out = out.unwrap();
                assert_eq!(out.get_ref().version, 2, "the data is still returned");
                match out.visibility() {
                    ryw::Visibility::Pending(s) => (**s).clone(),
                    other => panic!("{other:?}"),
                }
            }
            _ => out.unwrap_err().stale_read().cloned().unwrap(),
        };
        assert_eq!(stale.staleness.required, Version::new(5));
        assert_eq!(stale.staleness.observed, Some(Version::new(2)));
        assert_eq!(stale.attempts, 2);
        assert_eq!(stale.last_strategy, FenceStrategy::Strong);
    }
}

#[tokio::test(start_paused = true)]
async fn failed_escalation_returns_the_stale_data_as_pending() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::verify_then_escalate(0, Duration::ZERO)).layer(svc);
    let session = session_at("a", 5);
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("a"))));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(2));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Invalid);
    let out = call.await.unwrap().unwrap();
    assert!(out.visibility().is_pending());
}

#[tokio::test(start_paused = true)]
async fn unfenced_reads_are_not_escalated() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::strong()).layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(Session::new().request(get("a"))),
    );
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r, get("a"));
    send.send_response(resp(0));
    let out = call.await.unwrap().unwrap();
    assert_eq!(out.visibility().path(), Some(FencePath::Unfenced));
}

#[tokio::test(start_paused = true)]
async fn escalate_up_front_when_configured() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::strong()).layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session_at("a", 1).request(get("a"))),
    );
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r,
        Req::Get {
            key: "a",
            strong: true
        }
    );
    send.send_response(resp(1));
    assert_eq!(
        call.await.unwrap().unwrap().visibility().path(),
        Some(FencePath::Escalated)
    );
}

/// In the process that coarsened it, a scope's entry is still held exactly (beyond the vector):
/// a read of it is verified on the cheap path against that entry.
#[tokio::test(start_paused = true)]
async fn a_coarsened_scope_is_fenced_exactly_in_its_own_process() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    session.with_state(|st| {
        *st.vector_mut() = ryw::VersionVector::with_cap(1);
        st.advance(scope("old"), Version::new(9));
        st.advance(scope("new"), Version::new(1));
    });
    assert_eq!(session.snapshot().vector().get(scope("old")), None);
    let r = session.snapshot().requirement(scope("old"));
    assert_eq!((r.version, r.horizon), (Version::new(9), None));
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("old"))));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r, get("old"));
    send.send_response(resp(9));
    assert_eq!(
        call.await.unwrap().unwrap().visibility().path(),
        Some(FencePath::Verified)
    );
}

/// Continued from a token that names no record, a coarsened scope is known only by its store's
/// horizon, which never expires.
#[tokio::test(start_paused = true)]
async fn coarsened_scope_escalates_however_long_ago_it_was_coarsened() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let original = Session::new();
    original.with_state(|st| {
        *st.vector_mut() = ryw::VersionVector::with_cap(1);
        st.advance(scope("old"), Version::new(9));
        st.advance(scope("new"), Version::new(1));
    });
    let session = Session::from_encoded(&original.token().encode().unwrap()).unwrap();
    assert_eq!(session.snapshot().record(), None, "no record named");
    assert_eq!(session.snapshot().vector().get(scope("old")), None);
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("old"))));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r,
        Req::Get {
            key: "old",
            strong: true
        },
        "a horizon cannot be verified: escalate"
    );
    send.send_response(resp(3));
    assert!(call.await.unwrap().unwrap().visibility().is_guaranteed());

    // An hour later the replica may still lag: the horizon has not expired.
    tokio::time::advance(std::time::Duration::from_secs(3600)).await;
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("old"))));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r,
        Req::Get {
            key: "old",
            strong: true
        }
    );
    send.send_response(resp(9));
    let out = call.await.unwrap().unwrap();
    assert_eq!(out.visibility().path(), Some(FencePath::Escalated));
}

#[derive(Debug)]
struct AlwaysMine;
impl ConflictResolver<Req> for AlwaysMine {
    fn resolve(&self, _: &Req, _: &Conflict) -> Resolution<Req> {
        Resolution::Overwrite
    }
}

#[tokio::test(start_paused = true)]
async fn conflicts_go_to_the_resolver() {
    // Last writer wins: the other write has a later clock, so this one yields.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Condition(4, u64::MAX, 1));
    let err = call.await.unwrap().unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(err.conflict().unwrap().current, Version::new(4));
    assert_eq!(
        session.snapshot().vector().get(scope("a")),
        Some(Version::new(4)),
        "the winner was seen"
    );

    // A resolver that keeps this write: rebased onto the current version, same write id.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default())
        .resolver(AlwaysMine)
        .layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (first, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Condition(8, 1, 1));
    let (second, send) = handle.next_request().await.unwrap();
    send.send_response(resp(9));
    let (
        Req::Put {
            write_id: w1,
            if_version: None,
            ..
        },
        Req::Put {
            write_id: w2,
            if_version,
            ..
        },
    ) = (&first, &second)
    else {
        panic!("{first:?} {second:?}")
    };
    assert_eq!(w1, w2);
    assert_eq!(*if_version, Some(Version::new(8)));
    assert!(call.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_merge_pointwise() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let a = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (_, send_a) = handle.next_request().await.unwrap();
    let b = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (_, send_b) = handle.next_request().await.unwrap();
    // The later write completes first; the earlier one's older version must not win.
    send_b.send_response(Resp {
        version: 10,
        clock: Some(u64::MAX / 2),
    });
    b.await.unwrap().unwrap();
    send_a.send_response(resp(9));
    a.await.unwrap().unwrap();
    let state = session.snapshot();
    assert_eq!(state.vector().get(scope("a")), Some(Version::new(10)));
    assert_eq!(state.write_seq(), 2);
    assert!(
        state.clock() >= HybridTimestamp::new(u64::MAX / 2),
        "the clock moved past what was seen"
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_that_names_no_scope_is_unscoped_never_guaranteed() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = session_at("a", 5);
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get(""))));
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(r, get(""), "sent as it is");
    send.send_response(resp(1));
    let out = call.await.unwrap().unwrap();
    assert_eq!(out.visibility(), &Visibility::Unscoped);
    assert!(!out.visibility().is_guaranteed());

    // A fresh session too: the gap is in the configuration, not in the session.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(Session::new().request(get(""))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(1));
    assert!(call.await.unwrap().unwrap().visibility().is_unscoped());

    // Strict callers get a typed error.
    let strict = session.request(get("")).stale_reads(StaleReadPolicy::Error);
    let call = tokio::spawn(svc.ready().await.unwrap().call(strict));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(1));
    assert!(call.await.unwrap().unwrap_err().is_unscoped());
}

/// Retries every error once, immediately: the policy from the `ryw::retry` docs, which knows
/// nothing of the replay rule.
#[derive(Clone, Debug, Default)]
struct Once(bool);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Once {
    type Future = std::future::Ready<()>;
    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        (result.is_err() && !std::mem::replace(&mut self.0, true)).then(|| std::future::ready(()))
    }
    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn the_replay_rule_holds_whatever_retry_policy_is_installed() {
    // The case: with a custom policy, an ambiguous failure of a
    // `Replay::Never` write was sent again (a counter incremented twice).
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = ReadYourWritesLayer::new(adapter())
        .retry(TowerPolicy(Once::default()))
        .layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Never))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    // Bounded: a resent write would leave the call waiting for its second response.
    let err = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the write was sent again")
        .unwrap()
        .unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    handle.allow(1);
    assert!(poll_once(&mut Box::pin(handle.next_request())).is_pending());

    // A safe write is retried by the same policy.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = ReadYourWritesLayer::new(adapter())
        .retry(TowerPolicy(Once::default()))
        .layer(svc);
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(2));
    assert_eq!(call.await.unwrap().unwrap().attempts(), 2);
}

/// The layer's error for this adapter, made a `std::error::Error` for middleware above it (the
/// adapter's own error is a `BoxError`, which is not one).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LayerError(ryw::Error<BoxError>);

#[tokio::test(start_paused = true)]
async fn a_clone_sent_again_above_the_layer_is_the_same_write() {
    // A timeout and a retry above the layer: the first attempt never answers, the retry sends a
    // clone of the session request.
    for replay in [Replay::Safe, Replay::Never] {
        let (svc, mut handle) = mock::pair::<Req, Resp>();
        let mut svc = tower::ServiceBuilder::new()
            .retry(RetryErrors(2))
            .timeout(Duration::from_millis(100))
            .map_err(LayerError)
            .layer(ReadYourWritesLayer::new(adapter()))
            .service(svc);
        let session = Session::new();
        let call = tokio::spawn(
            svc.ready()
                .await
                .unwrap()
                .call(session.request(put("a", replay))),
        );
        let (first, _never_answered) = handle.next_request().await.unwrap();
        let Req::Put {
            write_id: Some(id),
            ts: Some(ts),
            ..
        } = first
        else {
            panic!("{first:?}")
        };
        match replay {
            Replay::Safe => {
                // The clone is the same write: same id, same timestamp.
                let (again, send) = handle.next_request().await.unwrap();
                let Req::Put {
                    write_id, ts: ts2, ..
                } = again
                else {
                    panic!("{again:?}")
                };
                assert_eq!((write_id, ts2), (Some(id), Some(ts)));
                send.send_response(resp(1));
                let done = call.await.unwrap().unwrap();
                assert_eq!(done.write_id(), Some(id));
            }
            _ => {
                // It may have applied and may not be replayed: refused without sending.
                let err = call.await.unwrap().unwrap_err();
                let LayerError(err) = err
                    .downcast_ref::<LayerError>()
                    .unwrap_or_else(|| panic!("{err}"));
                assert!(err.is_ambiguous(), "{err}");
                assert_eq!(err.write_id(), Some(id));
                handle.allow(1);
                assert!(poll_once(&mut Box::pin(handle.next_request())).is_pending());
            }
        }
        // A fresh request of the same session is a new write.
        let call = tokio::spawn(
            svc.ready()
                .await
                .unwrap()
                .call(session.request(put("a", replay))),
        );
        let (next, send) = handle.next_request().await.unwrap();
        let Req::Put { write_id, .. } = next else {
            panic!("{next:?}")
        };
        assert_ne!(write_id, Some(id));
        send.send_response(resp(2));
        call.await.unwrap().unwrap();
    }
}

fn replayed(r: &Req) -> bool {
    matches!(r, Req::Put { marks, .. } if marks.replayed)
}

/// Everything a stamp wrote on a request: write id, timestamp, condition, and the requirement it
/// was stamped against.
fn stamp_of(
    r: &Req,
) -> (
    Option<WriteId>,
    Option<HybridTimestamp>,
    Option<Version>,
    Option<Version>,
) {
    match r {
        Req::Put {
            write_id,
            ts,
            if_version,
            marks,
            ..
        } => (*write_id, *ts, *if_version, marks.required_at_stamp),
        Req::Get { .. } => (None, None, None, None),
    }
}

#[tokio::test(start_paused = true)]
async fn a_clone_sends_the_request_as_first_stamped_and_as_a_replay() {
    // The case: a clone sent after the session had recorded the
    // write was stamped again from the session's state (a DynamoDB increment conditioned on the
    // version the write itself produced applied twice). A clone sends the very stamped request.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let original = session.request(put("a", Replay::Safe));
    let clone = original.clone();
    let call = tokio::spawn(svc.ready().await.unwrap().call(original));
    let (first, send) = handle.next_request().await.unwrap();
    assert!(!replayed(&first));
    send.send_response(resp(5));
    call.await.unwrap().unwrap();
    // The session now holds version 5 of "a": a fresh stamp would differ.
    let call = tokio::spawn(svc.ready().await.unwrap().call(clone));
    let (again, send) = handle.next_request().await.unwrap();
    assert_eq!(stamp_of(&again), stamp_of(&first), "{again:?}");
    assert!(replayed(&again), "the first attempt applied: {again:?}");
    send.send_response(resp(5));
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_attempt_while_a_clone_may_have_applied_is_a_replay() {
    // The case: the original, shed and retried while its hedge was
    // in flight, was sent as a first attempt (a MongoDB update_one by `_id: {$in: ..}` claimed a
    // second job).
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let original = session.request(put("a", Replay::Safe));
    let hedge = original.clone();
    let a = tokio::spawn(svc.ready().await.unwrap().call(original));
    let (first, shed) = handle.next_request().await.unwrap();
    let b = tokio::spawn(svc.ready().await.unwrap().call(hedge));
    let (hedged, hedge_answer) = handle.next_request().await.unwrap();
    assert!(
        replayed(&hedged),
        "the original's attempt may have applied: {hedged:?}"
    );
    shed.send_error(KvError::Throttled); // not applied; the hedge is still in flight
    let (retry, send) = handle.next_request().await.unwrap();
    assert_eq!(stamp_of(&retry), stamp_of(&first));
    assert!(replayed(&retry), "the hedge may have applied: {retry:?}");
    send.send_response(resp(1));
    hedge_answer.send_response(resp(1));
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_definite_failure_does_not_forget_a_clone_that_may_have_applied() {
    // The case: the original's definite failure cleared what its
    // clone had sent, and a later clone went out as a first attempt.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = ReadYourWritesLayer::new(adapter())
        .retry(RetryPolicy::new().max_retries(0))
        .layer(svc);
    let session = Session::new();
    let original = session.request(put("a", Replay::Safe));
    let hedge = original.clone();
    let later = original.clone();
    let a = tokio::spawn(svc.ready().await.unwrap().call(original));
    let (_, shed) = handle.next_request().await.unwrap();
    let b = tokio::spawn(svc.ready().await.unwrap().call(hedge));
    let (hedged, _lost) = handle.next_request().await.unwrap();
    shed.send_error(KvError::Throttled);
    assert!(a.await.unwrap().unwrap_err().is_transient());
    // The hedge's answer is lost (its caller gave up): it may have applied.
    b.abort();
    let c = tokio::spawn(svc.ready().await.unwrap().call(later));
    let (again, send) = handle.next_request().await.unwrap();
    assert_eq!(stamp_of(&again), stamp_of(&hedged));
    assert!(replayed(&again), "{again:?}");
    send.send_response(resp(1));
    c.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_unreplayable_clone_is_refused_only_while_an_attempt_may_have_applied() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = ReadYourWritesLayer::new(adapter())
        .retry(RetryPolicy::new().max_retries(0))
        .layer(svc);
    let session = Session::new();
    let original = session.request(put("a", Replay::Never));
    let hedge = original.clone();
    let later = original.clone();
    let a = tokio::spawn(svc.ready().await.unwrap().call(original));
    let (first, shed) = handle.next_request().await.unwrap();
    // While the original's attempt may apply, a clone is not sent.
    let err = svc.ready().await.unwrap().call(hedge).await.unwrap_err();
    assert!(matches!(err, ryw::Error::AlreadySent { .. }), "{err}");
    // The attempt did not apply (throttled): nothing may have applied, so a clone is sent, as
    // the same write and not as a replay.
    shed.send_error(KvError::Throttled);
    assert!(a.await.unwrap().unwrap_err().is_transient());
    let c = tokio::spawn(svc.ready().await.unwrap().call(later));
    let (again, send) = handle.next_request().await.unwrap();
    assert_eq!(stamp_of(&again), stamp_of(&first));
    assert!(!replayed(&again), "{again:?}");
    send.send_response(resp(1));
    c.await.unwrap().unwrap();
}

/// Records what an observer hears, a line per event.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl ryw::telemetry::Observer for Recorder {
    fn request(&self, e: &ryw::telemetry::RequestEvent) {
        let outcome = match e.outcome {
            ryw::telemetry::Outcome::Read(v) => format!("{v:?}"),
            ryw::telemetry::Outcome::Written => "written".into(),
            ryw::telemetry::Outcome::Failed(kind) => kind.as_str().into(),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(format!(
            "{:?} {outcome} attempts={} rereads={} escalation={:?} scopes={}",
            e.operation, e.attempts, e.rereads, e.escalation, e.scopes
        ));
    }
    fn retry(&self, e: &ryw::telemetry::RetryEvent) {
        self.0.lock().unwrap().push(format!("retry {:?}", e.class));
    }
    fn fence_miss(&self, e: &ryw::telemetry::FenceMissEvent) {
        self.0.lock().unwrap().push(format!(
            "miss required={} observed={:?} {:?}",
            e.staleness.required.get(),
            e.staleness.observed.map(Version::get),
            e.strategy
        ));
    }
    fn conflict(&self, e: &ryw::telemetry::ConflictEvent) {
        self.0
            .lock()
            .unwrap()
            .push(format!("conflict {}", e.resolution.as_str()));
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_hears_every_request_retry_miss_and_conflict() {
    let recorder = std::sync::Arc::new(Recorder::default());
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::verify_then_escalate(
        1,
        Duration::from_millis(10),
    ))
    .observer(recorder.clone())
    .layer(svc);
    let session = Session::new();

    // A write retried once.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Safe))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Throttled);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(5));
    call.await.unwrap().unwrap();
    assert_eq!(
        recorder.take(),
        [
            "retry Some(Transient(No))",
            "Write(Safe) written attempts=2 rereads=0 escalation=None scopes=1",
        ]
    );

    // A read behind its fence: re-read, escalated, guaranteed.
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("a"))));
    for version in [3, 4, 6] {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(resp(version));
    }
    call.await.unwrap().unwrap();
    assert_eq!(
        recorder.take(),
        [
            "miss required=5 observed=Some(3) Verify",
            "miss required=5 observed=Some(4) Verify",
            "Read Guaranteed(Escalated) attempts=3 rereads=1 escalation=Some(StaleRead) scopes=1",
        ]
    );

    // A write that may not be replayed, ambiguous.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("b", Replay::Never))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    assert!(call.await.unwrap().unwrap_err().is_ambiguous());
    assert_eq!(
        recorder.take(),
        ["Write(Never) ambiguous attempts=1 rereads=0 escalation=None scopes=1"]
    );

    // A conflict the resolver rebases.
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("c", Replay::Safe))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Condition(8, 1, 1));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(9));
    call.await.unwrap().unwrap();
    assert_eq!(
        recorder.take(),
        [
            "conflict rebased",
            "Write(Safe) written attempts=2 rereads=0 escalation=None scopes=1",
        ]
    );

    // Configured to read strongly up front.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::strong())
        .observer(recorder.clone())
        .layer(svc);
    let call = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("a"))));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(resp(6));
    call.await.unwrap().unwrap();
    assert_eq!(
        recorder.take(),
        ["Read Guaranteed(Escalated) attempts=1 rereads=0 escalation=Some(Configured) scopes=1"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_copy_reports_that_a_clone_still_in_flight_may_apply() {
    // The original is refused (its own attempt did not apply) while its hedge is in flight: the
    // write may still apply through the hedge, and the original's error says so.
    for permanent in [false, true] {
        let (svc, mut handle) = mock::pair::<Req, Resp>();
        let mut svc = ReadYourWritesLayer::new(adapter())
            .retry(RetryPolicy::new().max_retries(0))
            .layer(svc);
        let session = Session::new();
        let original = session.request(put("a", Replay::Safe));
        let hedge = original.clone();
        let a = tokio::spawn(svc.ready().await.unwrap().call(original));
        let (_, shed) = handle.next_request().await.unwrap();
        let b = tokio::spawn(svc.ready().await.unwrap().call(hedge));
        let (_, hedge_answer) = handle.next_request().await.unwrap();
        let refusal = if permanent {
            KvError::Invalid
        } else {
            KvError::Throttled
        };
        shed.send_error(refusal);
        let err = a.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                ryw::Error::Store {
                    may_have_applied: true,
                    ..
                }
            ),
            "permanent={permanent}, the hedge is in flight: {err:?}"
        );
        hedge_answer.send_response(resp(1));
        b.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_kept_write_sent_twice_applies_once() {
    // A write kept for later (`stamp`) and sent twice through `from_stamped` (two deliveries of
    // one kept write, one after the other or at once): an unreplayable write goes out once, a
    // replayable one goes out again as a replay.
    for (replay, concurrent) in [
        (Replay::Never, false),
        (Replay::Never, true),
        (Replay::Safe, false),
        (Replay::Safe, true),
    ] {
        let (svc, mut handle) = mock::pair::<Req, Resp>();
        let mut svc = ReadYourWritesLayer::new(adapter())
            .retry(RetryPolicy::new().max_retries(0))
            .layer(svc);
        let session = Session::new();
        let kept = svc.stamp(&session.request(put("a", replay))).unwrap();
        assert!(!kept.may_have_applied);
        let first = SessionRequest::from_stamped(session.clone(), kept.clone());
        let second = SessionRequest::from_stamped(session.clone(), kept.clone());
        let a = tokio::spawn(svc.ready().await.unwrap().call(first));
        let (sent, answer) = handle.next_request().await.unwrap();
        assert!(
            !replayed(&sent),
            "the kept write's first delivery: {sent:?}"
        );
        let mut in_flight = Some((a, answer));
        if !concurrent {
            let (a, answer) = in_flight.take().unwrap();
            answer.send_response(resp(1));
            a.await.unwrap().unwrap();
        }
        let b = tokio::spawn(svc.ready().await.unwrap().call(second));
        if replay == Replay::Never {
            let err = tokio::time::timeout(Duration::from_secs(60), b)
                .await
                .expect("the second delivery was sent")
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(err, ryw::Error::AlreadySent { .. }),
                "concurrent={concurrent}: {err}"
            );
        } else {
            let (again, send) = handle.next_request().await.unwrap();
            assert_eq!(stamp_of(&again), stamp_of(&sent));
            assert!(replayed(&again), "concurrent={concurrent}: {again:?}");
            send.send_response(resp(1));
            b.await.unwrap().unwrap();
        }
        if let Some((a, answer)) = in_flight {
            answer.send_response(resp(1));
            a.await.unwrap().unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_kept_write_refused_before_applying_is_delivered_again_as_a_first_attempt() {
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = ReadYourWritesLayer::new(adapter())
        .retry(RetryPolicy::new().max_retries(0))
        .layer(svc);
    let session = Session::new();
    let kept = svc
        .stamp(&session.request(put("a", Replay::Never)))
        .unwrap();
    let a = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(SessionRequest::from_stamped(session.clone(), kept.clone())),
    );
    let (first, shed) = handle.next_request().await.unwrap();
    shed.send_error(KvError::Throttled);
    assert!(a.await.unwrap().unwrap_err().is_transient());
    let b = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(SessionRequest::from_stamped(session.clone(), kept)),
    );
    let (again, send) = handle.next_request().await.unwrap();
    assert_eq!(stamp_of(&again), stamp_of(&first));
    assert!(!replayed(&again), "nothing applied: {again:?}");
    send.send_response(resp(1));
    b.await.unwrap().unwrap();
}

/// A write whose outcome is unknown (ambiguous, or a store error after an attempt that may have
/// applied) leaves the session requiring what it gives its scope if it applied, so the next read
/// shows it or goes strong; a write known not to have applied leaves nothing.
#[tokio::test(start_paused = true)]
async fn a_write_of_unknown_outcome_is_required_by_the_next_read() {
    let stamped_clock = |r: &Req| match r {
        Req::Put { ts: Some(ts), .. } => ts.get(),
        other => panic!("not stamped: {other:?}"),
    };

    // Ambiguous: the read that follows is fenced at the write's version and goes strong.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("a", Replay::Never))),
    );
    let (sent, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    assert!(call.await.unwrap().unwrap_err().is_ambiguous());
    let clock = stamped_clock(&sent);
    assert_eq!(
        session.snapshot().vector().get(scope("a")),
        Some(Version::new(clock))
    );
    let read = tokio::spawn(svc.ready().await.unwrap().call(session.request(get("a"))));
    let mut strong = false;
    for _ in 0..8 {
        let (req, send) = handle.next_request().await.unwrap();
        strong = matches!(req, Req::Get { strong: true, .. });
        // The copy lacks the write; the strong path shows it applied.
        send.send_response(resp(if strong { clock } else { 0 }));
        if strong {
            break;
        }
    }
    assert!(strong, "the read went to the strong path");
    let read = read.await.unwrap().unwrap();
    assert_eq!(read.visibility().path(), Some(FencePath::Escalated));

    // A replayable write whose replay failed for good after a timeout: may have applied.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("b", Replay::Safe))),
    );
    let (sent, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Timeout);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Invalid);
    let err = call.await.unwrap().unwrap_err();
    assert!(err.may_have_applied(), "{err}");
    assert_eq!(
        session.snapshot().vector().get(scope("b")),
        Some(Version::new(stamped_clock(&sent)))
    );

    // Refused before applying: nothing required.
    let (svc, mut handle) = mock::pair::<Req, Resp>();
    let mut svc = layer(FenceConfig::default()).layer(svc);
    let session = Session::new();
    let call = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(session.request(put("c", Replay::Safe))),
    );
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(KvError::Invalid);
    let err = call.await.unwrap().unwrap_err();
    assert!(!err.may_have_applied(), "{err}");
    assert_eq!(session.snapshot().vector().get(scope("c")), None);
}
