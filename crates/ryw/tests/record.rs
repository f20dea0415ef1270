//! The session's record: entries coarsened out of the token are kept exactly, and trusted only at
//! the version the token names or later. A property test against a reference model: whatever
//! instances a session hops between, whatever continuations run beside it, whatever fails, no
//! read requires less than the largest version the session wrote or read of its scope.

use proptest::prelude::*;
use ryw::record::{Flushed, InMemoryRecordStore, Loaded, SessionRecords};
use ryw::version::{ScopeKey, StoreId, Version};
use ryw::Session;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

const STORE: StoreId = StoreId::new(1);

fn scope(n: u8) -> ScopeKey {
    ScopeKey::new(STORE, &[n])
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

/// The session continued from its token (on another instance), with the vector's cap `cap`
/// (a token does not carry its cap).
fn hop_with(session: &Session, cap: usize) -> Session {
    let next = Session::from_encoded(&session.token().encode().unwrap()).unwrap();
    next.with_state(|s| s.vector_mut().set_cap(cap));
    next
}

fn hop(session: &Session) -> Session {
    hop_with(session, 2)
}

fn required(session: &Session, s: ScopeKey) -> Version {
    let r = session.snapshot().requirement(s);
    r.version.max(r.horizon.unwrap_or(Version::ZERO))
}

fn with_cap(cap: usize) -> Session {
    let session = Session::new();
    session.with_state(|s| s.vector_mut().set_cap(cap));
    session
}

/// A continuation appends to the record after an instance cached it: the instance must not
/// trust its cached copy for a token that names the later version.
#[test]
fn a_cached_record_older_than_the_token_names_is_not_trusted() {
    let store = Arc::new(InMemoryRecordStore::new());
    let (a, b) = (
        SessionRecords::new(store.clone()),
        SessionRecords::new(store.clone()),
    );
    let session = with_cap(2);
    session.with_state(|s| {
        for n in 0..4 {
            s.advance(scope(n), Version::new(10 + u64::from(n)));
        }
    });
    assert_eq!(now(a.flush(&session)), Flushed::Written(1));
    // Instance b caches the record at version 1.
    let on_b = hop(&session);
    assert_eq!(now(b.load(&on_b)), Loaded::Loaded);
    assert_eq!(required(&on_b, scope(0)), Version::new(10));
    // Another continuation coarsens scope 9 at 50 and writes version 2.
    let other = hop(&session);
    assert_eq!(now(a.load(&other)), Loaded::Cached);
    other.with_state(|s| {
        s.advance(scope(9), Version::new(50));
        s.advance(scope(7), Version::new(70));
        for n in 20..22 {
            s.advance(scope(n), Version::new(60));
        }
    });
    assert_eq!(now(a.flush(&other)), Flushed::Written(2));
    // Its token, back on b: b's cache holds version 1 only, so it loads version 2.
    let back = hop(&other);
    assert_eq!(back.snapshot().record(), Some(2));
    assert_eq!(
        required(&back, scope(9)),
        Version::new(70),
        "the horizon until loaded"
    );
    assert_eq!(now(b.load(&back)), Loaded::Loaded);
    assert_eq!(required(&back, scope(9)), Version::new(50));
    assert!(back.snapshot().requirement(scope(9)).horizon.is_none());
    assert_eq!(b.stats().loads, 2);
    assert_eq!(b.stats().cache_hits, 0);
    // Loaded again on b: from the cache, no store read.
    assert_eq!(now(b.load(&hop(&other))), Loaded::Cached);
    assert_eq!(b.stats().loads, 2);
}

/// A concurrent continuation's token, naming a later record, merged into a session that holds
/// an older one: the older one does not hold the continuation's coarsened entries, so the
/// horizon applies until the later record is loaded.
#[test]
fn a_merged_token_naming_a_later_record_is_not_met_by_the_older_one_held() {
    let store = Arc::new(InMemoryRecordStore::new());
    let (a, b) = (
        SessionRecords::new(store.clone()),
        SessionRecords::new(store.clone()),
    );
    let session = with_cap(2);
    session.with_state(|s| {
        s.advance(scope(0), Version::new(100));
        s.advance(scope(1), Version::new(1));
        s.advance(scope(2), Version::new(2));
    });
    assert_eq!(now(a.flush(&session)), Flushed::Written(1));
    let other = hop(&session);
    other.with_state(|s| {
        for (n, v) in [(5, 30), (6, 31), (8, 32)] {
            s.advance(scope(n), Version::new(v));
        }
    });
    assert_eq!(now(b.flush(&other)), Flushed::Written(2));
    session.merge(&hop(&other).snapshot());
    assert_eq!(session.snapshot().record(), Some(2));
    assert_eq!(
        required(&session, scope(5)),
        Version::new(100),
        "the horizon: the record held is version 1, without scope 5"
    );
    assert_eq!(now(a.load(&session)), Loaded::Loaded);
    assert_eq!(required(&session, scope(5)), Version::new(30));
    assert_eq!(required(&session, scope(0)), Version::new(100));
}

/// The record store down: writes fail and the token names no record; loads fail and the
/// horizon rule applies. Both are counted; nothing is ever required less.
#[test]
fn without_the_record_store_the_horizon_rule_applies() {
    let store = Arc::new(InMemoryRecordStore::new());
    let records = SessionRecords::new(store.clone());
    let session = with_cap(2);
    session.with_state(|s| {
        for n in 0..5 {
            s.advance(scope(n), Version::new(10 + u64::from(n)));
        }
    });
    store.set_unavailable(true);
    assert_eq!(now(records.flush(&session)), Flushed::Failed);
    let elsewhere = hop(&session);
    assert_eq!(elsewhere.snapshot().record(), None, "no record named");
    assert_eq!(required(&elsewhere, scope(0)), Version::new(12));
    // Written later, then the store fails on the load.
    store.set_unavailable(false);
    assert_eq!(now(records.flush(&session)), Flushed::Written(1));
    let elsewhere = hop(&session);
    store.set_unavailable(true);
    let there = SessionRecords::new(store.clone());
    assert_eq!(now(there.load(&elsewhere)), Loaded::Failed);
    assert_eq!(required(&elsewhere, scope(0)), Version::new(12));
    assert_eq!(there.stats().failures, 1);
}

#[derive(Clone, Debug)]
enum Op {
    /// The current continuation raises a scope.
    Advance(u8, u64),
    /// The session moves to the other instance through its token, flushing first or not,
    /// loading there or not.
    Hop { flush: bool, load: bool },
    /// A concurrent continuation (from the current token) raises scopes, flushes or not, and
    /// its token is merged back.
    Concurrent { raises: Vec<(u8, u64)>, flush: bool },
    /// The record store goes down or comes back.
    StoreDown(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..40, 1u64..1_000).prop_map(|(s, v)| Op::Advance(s, v)),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(flush, load)| Op::Hop { flush, load }),
        1 => (prop::collection::vec((0u8..40, 1u64..1_000), 0..6), any::<bool>())
            .prop_map(|(raises, flush)| Op::Concurrent { raises, flush }),
        1 => any::<bool>().prop_map(Op::StoreDown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_read_requires_less_than_the_session_wrote_or_read(
        cap in 1usize..6,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let store = Arc::new(InMemoryRecordStore::new());
        let instances = [SessionRecords::new(store.clone()), SessionRecords::new(store.clone())];
        let mut at = 0usize;
        let mut session = with_cap(cap);
        let mut reference: BTreeMap<u8, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Advance(s, v) => {
                    session.with_state(|st| st.advance(scope(s), Version::new(v)));
                    let e = reference.entry(s).or_insert(0);
                    *e = (*e).max(v);
                }
                Op::Hop { flush, load } => {
                    if flush {
                        now(instances[at].flush(&session));
                    }
                    at = 1 - at;
                    session = hop_with(&session, cap);
                    if load {
                        now(instances[at].load(&session));
                    }
                }
                Op::Concurrent { raises, flush } => {
                    let other = hop_with(&session, cap);
                    now(instances[1 - at].load(&other));
                    for (s, v) in raises {
                        other.with_state(|st| st.advance(scope(s), Version::new(v)));
                        let e = reference.entry(s).or_insert(0);
                        *e = (*e).max(v);
                    }
                    if flush {
                        now(instances[1 - at].flush(&other));
                    }
                    let back = hop_with(&other, cap);
                    session.merge(&back.snapshot());
                    now(instances[at].load(&session));
                }
                Op::StoreDown(down) => store.set_unavailable(down),
            }
            for (&s, &v) in &reference {
                let r = required(&session, scope(s));
                prop_assert!(
                    r >= Version::new(v),
                    "scope {s}: requires {r:?}, the session reached {v}"
                );
            }
        }
    }
}
