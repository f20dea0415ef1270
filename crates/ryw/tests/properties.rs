//! Property tests of the pure core against a simple reference model: an unbounded map of
//! per-scope maxima.

use proptest::prelude::*;
use ryw::adapter::Observed;
use ryw::fence::{
    FenceConfig, FenceDecision, FenceStrategy, FenceSupport, ReadFence, StaleReadPolicy,
};
use ryw::session::{SessionId, SessionState};
use ryw::token::{SessionToken, MAX_TOKEN_LEN};
use ryw::version::{Requirement, ScopeKey, StoreId, Version, VersionVector};
use std::collections::BTreeMap;
use std::time::Duration;

fn scope(store: u8, n: u8) -> ScopeKey {
    ScopeKey::from_hash(StoreId::new(store), u64::from(n) * 0x9e37_79b9)
}

#[derive(Clone, Debug)]
enum VecOp {
    Advance { store: u8, n: u8, version: u64 },
    Merge(Vec<(u8, u8, u64)>),
}

fn op() -> impl Strategy<Value = VecOp> {
    prop_oneof![
        4 => (0u8..3, 0u8..24, 0u64..1_000).prop_map(|(store, n, version)| VecOp::Advance { store, n, version }),
        1 => prop::collection::vec((0u8..3, 0u8..24, 0u64..1_000), 0..8).prop_map(VecOp::Merge),
    ]
}

fn vector_from(entries: &[(u8, u8, u64)], cap: usize) -> VersionVector {
    let mut v = VersionVector::with_cap(cap);
    for &(s, n, ver) in entries {
        v.advance(scope(s, n), Version::new(ver));
    }
    v
}

/// The version a read of `s` must reflect: its exact mark or its store's horizon.
fn effective(v: &VersionVector, s: ScopeKey) -> u64 {
    let r = v.requirement(s);
    r.version.max(r.horizon.unwrap_or(Version::ZERO)).get()
}

/// The requirement is at least the reference maximum (coarsening is safe) and an exact entry
/// never exceeds it (nothing is invented).
fn covers(v: &VersionVector, reference: &BTreeMap<ScopeKey, u64>) -> Result<(), TestCaseError> {
    for (&s, &max) in reference {
        let r = v.requirement(s);
        let ok = r.version.get() >= max || r.horizon.is_some_and(|h| h.get() >= max);
        prop_assert!(ok, "{s:?}: required {r:?} does not cover {max}");
        if let Some(exact) = v.get(s) {
            prop_assert!(exact.get() <= max);
        }
    }
    for e in v.entries() {
        prop_assert!(
            reference.contains_key(&e.scope),
            "invented scope {:?}",
            e.scope
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bounded_vector_always_covers_the_reference(cap in 1usize..12, ops in prop::collection::vec(op(), 1..60)) {
        let mut v = VersionVector::with_cap(cap);
        let mut reference = BTreeMap::new();
        let mut required: BTreeMap<ScopeKey, u64> = BTreeMap::new();
        for op in ops {
            match op {
                VecOp::Advance { store, n, version } => {
                    v.advance(scope(store, n), Version::new(version));
                    if version > 0 {
                        let e = reference.entry(scope(store, n)).or_insert(0);
                        *e = (*e).max(version);
                    }
                }
                VecOp::Merge(entries) => {
                    v.merge(&vector_from(&entries, 48));
                    for (s, n, ver) in entries {
                        if ver > 0 {
                            let e = reference.entry(scope(s, n)).or_insert(0);
                            *e = (*e).max(ver);
                        }
                    }
                }
            }
            prop_assert!(v.len() <= cap);
            covers(&v, &reference)?;
            // A requirement never goes down, whatever is advanced, merged or coarsened.
            for (&s, prev) in &mut required {
                let now = effective(&v, s);
                prop_assert!(now >= *prev, "{s:?}: requirement fell from {prev} to {now}");
                *prev = now;
            }
            for &s in reference.keys() {
                required.entry(s).or_insert_with(|| effective(&v, s));
            }
        }
    }

    #[test]
    fn unbounded_merge_is_the_pointwise_max(
        a in prop::collection::vec((0u8..3, 0u8..10, 0u64..1_000), 0..12),
        b in prop::collection::vec((0u8..3, 0u8..10, 0u64..1_000), 0..12),
        c in prop::collection::vec((0u8..3, 0u8..10, 0u64..1_000), 0..12),
    ) {
        let (va, vb, vc) = (vector_from(&a, 48), vector_from(&b, 48), vector_from(&c, 48));
        let mut ab = va.clone();
        ab.merge(&vb);
        let mut ba = vb.clone();
        ba.merge(&va);
        prop_assert_eq!(&ab, &ba, "commutative");
        let mut aa = va.clone();
        aa.merge(&va);
        prop_assert_eq!(&aa, &va, "idempotent");
        let mut ab_c = ab.clone();
        ab_c.merge(&vc);
        let mut bc = vb.clone();
        bc.merge(&vc);
        let mut a_bc = va.clone();
        a_bc.merge(&bc);
        prop_assert_eq!(&ab_c, &a_bc, "associative");
        prop_assert!(ab.dominates(&va) && ab.dominates(&vb));
        let mut reference = BTreeMap::new();
        for &(s, n, v) in a.iter().chain(&b) {
            if v > 0 {
                let e = reference.entry(scope(s, n)).or_insert(0);
                *e = (*e).max(v);
            }
        }
        for (s, max) in reference {
            prop_assert_eq!(ab.get(s), Some(Version::new(max)));
        }
    }

    #[test]
    fn token_round_trips_and_stays_under_the_cap(
        id in any::<u128>(),
        seq in any::<u64>(),
        clock in any::<u64>(),
        entries in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u64>()), 0..48),
        cap in 1usize..48,
    ) {
        let mut state = SessionState::new(SessionId::from_u128(id));
        *state.vector_mut() = VersionVector::with_cap(cap);
        for &(s, n, v) in &entries {
            state.advance(scope(s % 4, n), Version::new(v));
        }
        let state = SessionState::from_parts(state.id(), seq, ryw::clock::HybridTimestamp::new(clock), state.vector().clone());
        let encoded = SessionToken::new(state.clone()).encode().unwrap();
        prop_assert!(encoded.len() <= MAX_TOKEN_LEN);
        let decoded = SessionToken::decode(&encoded).unwrap();
        prop_assert!(decoded.state().dominates(&state), "the decoded state implies the original");
        if decoded.state().vector().len() == state.vector().len() {
            prop_assert_eq!(decoded.state(), &state);
        }
    }

    #[test]
    fn realistic_four_scope_tokens_fit_110_characters(
        base in 0u64..(1 << 52),
        deltas in prop::collection::vec(0u64..(1 << 27), 4),
        seq in 0u64..128,
        stores in prop::collection::vec(0u8..1, 4),
    ) {
        let mut state = SessionState::new(SessionId::random());
        let mut v = base;
        for (i, (d, s)) in deltas.iter().zip(&stores).enumerate() {
            v += d + 1;
            state.advance(scope(*s, i as u8), Version::new(v));
        }
        let state = SessionState::from_parts(state.id(), seq, ryw::clock::HybridTimestamp::new(v), state.vector().clone());
        let encoded = SessionToken::new(state).encode().unwrap();
        prop_assert!(encoded.len() <= 110, "{} characters", encoded.len());
    }

    #[test]
    fn signed_tokens_verify_for_their_principal_and_any_alteration_is_refused(
        entries in prop::collection::vec((any::<u8>(), any::<u8>(), 1u64..1 << 60), 0..12),
        seq in any::<u64>(),
        principal in proptest::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        use base64::Engine;
        use ryw::signing::{SigningKey, TokenAuthority};
        let authority = TokenAuthority::new(SigningKey::new(7, [0x3c; 32]).unwrap());
        let mut state = SessionState::new(SessionId::from_u128(11));
        for &(s, n, v) in &entries {
            state.advance(scope(s % 3, n), Version::new(v));
        }
        let state = SessionState::from_parts(state.id(), seq, ryw::clock::HybridTimestamp::new(5), state.vector().clone());
        let p = principal.as_deref();
        let token = authority.issue_at(&state, p, 1_000).unwrap();
        let verified = authority.verify_at(&token, p, 1_000).unwrap();
        prop_assert!(verified.state().dominates(&state));
        // Another principal (or none, for a bound token) is refused.
        if let Some(p) = p {
            let mut other = p.to_vec();
            other.push(1);
            prop_assert!(authority.verify_at(&token, Some(&other), 1_000).unwrap_err().is_wrong_principal());
        }
        // Any change to the bytes is refused, with a decode or signature error.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut bytes = engine.decode(&token).unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let altered = engine.encode(&bytes);
        if altered != token {
            let e = authority.verify_at(&altered, p, 1_000).unwrap_err();
            prop_assert!(e.is_malformed() || e.is_untrusted(), "{e:?}");
        }
    }

    #[test]
    fn decoding_arbitrary_text_never_panics(s in "\\PC{0,1100}") {
        let _ = SessionToken::decode(&s);
    }

    #[test]
    fn decoding_mutated_tokens_never_panics(
        entries in prop::collection::vec((any::<u8>(), any::<u8>(), 1u64..1 << 40), 0..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        use base64::Engine;
        let mut state = SessionState::new(SessionId::from_u128(9));
        for &(s, n, v) in &entries {
            state.advance(scope(s % 3, n), Version::new(v));
        }
        let encoded = SessionToken::new(state).encode().unwrap();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&encoded).unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = SessionToken::from_bytes(&bytes);
        let _ = SessionToken::from_bytes(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn fence_decisions_terminate_and_respect_support(
        rereads in 0u32..4,
        escalate_on_stale in any::<bool>(),
        initial in prop_oneof![Just(FenceStrategy::Verify), Just(FenceStrategy::Strong), Just(FenceStrategy::ServerWait)],
        wait in any::<bool>(), escalate in any::<bool>(), global in any::<bool>(),
        required in 0u64..10, horizon in proptest::option::of(0u64..10),
    ) {
        let config = FenceConfig {
            initial,
            rereads,
            reread_delay: Duration::from_millis(3),
            escalate_on_stale,
            stale_reads: StaleReadPolicy::Pending,
        };
        let support = FenceSupport::new().server_wait(wait).strong_reads(escalate).global_versions(global);
        let fence = ReadFence::from_requirements([Requirement {
            scope: scope(0, 0),
            version: Version::new(required),
            horizon: horizon.map(Version::new),
        }]);
        let mut strategy = fence.initial_strategy(&config, support);
        prop_assert!(support.supports(strategy));
        if fence.has_horizon() && strategy == FenceStrategy::ServerWait {
            prop_assert!(global, "waiting on a horizon needs store-wide versions");
        }
        let mut done = 0;
        let mut attempts = 1;
        let mut escalations = u32::from(strategy == FenceStrategy::Strong);
        while let FenceDecision::Retry { strategy: next, .. } =
            fence.after_stale(&config, support, strategy, done)
        {
            prop_assert!(support.supports(next));
            if next == FenceStrategy::Verify {
                prop_assert!(!fence.has_horizon(), "re-reading cannot satisfy a horizon");
                done += 1;
            }
            if next == FenceStrategy::Strong {
                escalations += 1;
            }
            strategy = next;
            attempts += 1;
            prop_assert!(attempts <= rereads + 3);
        }
        prop_assert!(escalations <= 1);
    }

    #[test]
    fn verification_matches_the_reference(required in 0u64..20, seen in proptest::option::of(0u64..20), horizon in proptest::option::of(0u64..20), strong in any::<bool>()) {
        let s = scope(0, 1);
        let fence = ReadFence::from_requirements([Requirement {
            scope: s,
            version: Version::new(required),
            horizon: horizon.map(Version::new),
        }]);
        let mut observed = Observed::new();
        if let Some(v) = seen {
            observed.push(s, Version::new(v));
        }
        if strong {
            observed.mark_strong();
        }
        let ok = fence.check(FenceStrategy::Verify, &observed).is_ok();
        // A cheap read is verified when it reflects the exact mark and the store horizon.
        let unfenced = required == 0 && horizon.is_none();
        let expected = unfenced
            || strong
            || seen.is_some_and(|v| v >= required && v >= horizon.unwrap_or(0));
        prop_assert_eq!(ok, expected);
    }
}

mod verified_cache {
    //! The verified-token cache against the reference: the same authority without a cache. Every
    //! verification through the cache must answer exactly what a full verification answers,
    //! whatever happened in between (time passing, revocations, rotation, retirement, a key id
    //! reused by a new secret, tampering, another principal).

    use proptest::prelude::*;
    use ryw::session::{SessionId, SessionState};
    use ryw::signing::{KeyRing, SigningKey, TokenAuthority, VerifyError};
    use ryw::token::SessionToken;
    use std::time::Duration;

    const T0: u64 = 1_790_000_000;
    const TTL: u64 = 1_000;

    #[derive(Clone, Debug)]
    enum Op {
        /// Issue a token for session `s` to principal `p` at `T0 + at`; a session that `started`
        /// before (not its first token, which the cache takes only when it comes back).
        Issue {
            s: u8,
            p: Option<u8>,
            at: u64,
            started: bool,
        },
        /// Verify token `t` (an index into those issued) presented by `p` at `T0 + at`.
        Verify {
            t: usize,
            p: Option<u8>,
            at: u64,
        },
        /// Verify token `t` with byte `i` replaced.
        Tamper {
            t: usize,
            i: usize,
            c: u8,
        },
        RevokeSession(u8),
        RestoreSession(u8),
        RevokeBefore(u64),
        /// Rotate to key `id` (secret `secret`).
        Rotate {
            id: u8,
            secret: u8,
        },
        Retire(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let p = proptest::option::of(0u8..3);
        prop_oneof![
            4 => (0u8..4, p.clone(), 0u64..3 * TTL, any::<bool>()).prop_map(|(s, p, at, started)| Op::Issue { s, p, at, started }),
            8 => (any::<usize>(), p, 0u64..3 * TTL).prop_map(|(t, p, at)| Op::Verify { t, p, at }),
            1 => (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(t, i, c)| Op::Tamper { t, i, c }),
            1 => (0u8..4).prop_map(Op::RevokeSession),
            1 => (0u8..4).prop_map(Op::RestoreSession),
            1 => (0u64..3 * TTL).prop_map(Op::RevokeBefore),
            1 => (1u8..4, 0u8..3).prop_map(|(id, secret)| Op::Rotate { id, secret }),
            1 => (1u8..4).prop_map(Op::Retire),
        ]
    }

    fn authority(cache: usize) -> TokenAuthority {
        TokenAuthority::new(KeyRing::new(SigningKey::new(1, [1u8; 32]).unwrap()))
            .token_ttl(Duration::from_secs(TTL))
            .leeway(Duration::from_secs(10))
            .verified_cache(cache)
    }

    fn principal(p: Option<u8>) -> Option<Vec<u8>> {
        p.map(|p| format!("user:{p}").into_bytes())
    }

    fn same(
        cached: &Result<SessionToken, VerifyError>,
        reference: &Result<SessionToken, VerifyError>,
    ) -> bool {
        match (cached, reference) {
            (Ok(a), Ok(b)) => {
                a.state() == b.state()
                    && a.times() == b.times()
                    && a.binding() == b.binding()
                    && a.signature().map(|s| s.key_id) == b.signature().map(|s| s.key_id)
            }
            (Err(a), Err(b)) => a == b,
            _ => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn a_cached_verification_answers_what_a_full_one_does(
            capacity in 1usize..6,
            ops in prop::collection::vec(op(), 1..80),
        ) {
            let cached = authority(capacity);
            let reference = authority(0);
            let both = [&cached, &reference];
            let mut tokens: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Issue { s, p, at, started } => {
                        let mut state = SessionState::new(SessionId::from_u128(u128::from(s) + 1));
                        state.next_write((T0 + at) * 1_000_000);
                        if started {
                            state.set_started_at(T0 + at / 2);
                        }
                        for k in 0..u64::from(s) {
                            state.advance(
                                ryw::version::ScopeKey::new(ryw::version::StoreId::new(1), format!("k{k}").as_bytes()),
                                ryw::version::Version::new(T0 + at + k),
                            );
                        }
                        let p = principal(p);
                        let a = cached.issue_at(&state, p.as_deref(), T0 + at).unwrap();
                        let b = reference.issue_at(&state, p.as_deref(), T0 + at).unwrap();
                        prop_assert_eq!(&a, &b, "issuing is deterministic");
                        tokens.push(a);
                    }
                    Op::Verify { t, p, at } if !tokens.is_empty() => {
                        let token = &tokens[t % tokens.len()];
                        let p = principal(p);
                        let a = cached.verify_at(token, p.as_deref(), T0 + at);
                        let b = reference.verify_at(token, p.as_deref(), T0 + at);
                        prop_assert!(same(&a, &b), "cached {:?}, reference {:?}", a, b);
                    }
                    Op::Tamper { t, i, c } if !tokens.is_empty() => {
                        let mut bytes = tokens[t % tokens.len()].clone().into_bytes();
                        let i = i % bytes.len();
                        bytes[i] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[usize::from(c) % 64];
                        let text = String::from_utf8(bytes).unwrap();
                        let a = cached.verify_at(&text, None, T0);
                        let b = reference.verify_at(&text, None, T0);
                        prop_assert!(same(&a, &b), "cached {:?}, reference {:?}", a, b);
                    }
                    Op::Verify { .. } | Op::Tamper { .. } => {}
                    Op::RevokeSession(s) => {
                        for x in both {
                            x.revocations().unwrap().revoke_session_at(SessionId::from_u128(u128::from(s) + 1), T0);
                        }
                    }
                    Op::RestoreSession(s) => {
                        for x in both {
                            x.revocations().unwrap().restore_session(SessionId::from_u128(u128::from(s) + 1));
                        }
                    }
                    Op::RevokeBefore(at) => {
                        for x in both {
                            x.revocations().unwrap().revoke_issued_before(T0 + at);
                        }
                    }
                    Op::Rotate { id, secret } => {
                        for x in both {
                            let _ = x.rotate(SigningKey::new(id, [secret + 2; 32]).unwrap());
                        }
                    }
                    Op::Retire(id) => {
                        for x in both {
                            x.retire(id);
                        }
                    }
                }
            }
        }
    }
}

mod session_store_sync {
    //! `InMemorySessionStore::sync` (one lock, no copy when nothing changes) keeps what load,
    //! merge, save promise.

    use proptest::prelude::*;
    use ryw::clock::HybridTimestamp;
    use ryw::session::{SessionId, SessionState, StoreContext};
    use ryw::store::{InMemorySessionStore, SessionStore};
    use ryw::version::{ScopeKey, StoreId, Version, VersionVector};
    use std::collections::HashMap;

    #[derive(Clone, Debug)]
    struct Shape {
        session: u8,
        write_seq: u64,
        clock: u64,
        cap: usize,
        entries: Vec<(u8, u8, u64)>,
        contexts: Vec<(u8, u64)>,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        (
            0u8..3,
            0u64..4,
            0u64..4,
            1usize..5,
            prop::collection::vec((1u8..3, 0u8..6, 0u64..5), 0..7),
            // Two stores: a session holds at most `MAX_CONTEXTS` (2) contexts, first come first kept.
            prop::collection::vec((1u8..3, 0u64..3), 0..3),
        )
            .prop_map(
                |(session, write_seq, clock, cap, entries, contexts)| Shape {
                    session,
                    write_seq,
                    clock,
                    cap,
                    entries,
                    contexts,
                },
            )
    }

    fn build(shape: &Shape) -> SessionState {
        let mut v = VersionVector::with_cap(shape.cap);
        for &(store, n, version) in &shape.entries {
            v.advance(
                ScopeKey::from_hash(StoreId::new(store), u64::from(n)),
                Version::new(version),
            );
        }
        let mut s = SessionState::from_parts(
            SessionId::from_u128(u128::from(shape.session) + 1),
            shape.write_seq,
            HybridTimestamp::new(shape.clock),
            v,
        );
        for &(store, version) in &shape.contexts {
            s.advance_context(StoreContext {
                store: StoreId::new(store),
                version: Version::new(version),
                bytes: vec![store; usize::from(store)].into(),
            });
        }
        s
    }

    proptest! {
        /// What a request relies on: after `sync`, its state implies everything it had and
        /// everything the store held of its session; the store then holds everything ever synced
        /// (a bounded vector may coarsen, so "implies", not "equals"); and repeated syncs with
        /// nothing new settle, then change nothing (the path that copies nothing).
        #[test]
        fn sync_loses_nothing_and_settles(
            cap in 1usize..5,
            shapes in prop::collection::vec(shape(), 1..30),
        ) {
            let fast = InMemorySessionStore::default();
            let mut everything: HashMap<SessionId, VersionVector> = HashMap::new();
            for shape in &shapes {
                // One cap for every state of a session, as a deployment has.
                let input = build(&Shape { cap, ..shape.clone() });
                let before = fast.load(input.id());
                let mut state = input.clone();
                fast.sync(&mut state);

                prop_assert!(state.dominates(&input), "lost what it had: {:?} -> {:?}", input, state);
                if let Some(before) = &before {
                    prop_assert!(state.dominates(before), "lost what was stored: {:?} -> {:?}", before, state);
                }
                let all = everything.entry(input.id()).or_insert_with(|| VersionVector::with_cap(64));
                all.merge(input.vector());
                let stored = fast.load(input.id()).unwrap();
                prop_assert!(stored.vector().dominates(all), "the store forgot: {:?} vs {:?}", stored, all);
                prop_assert!(stored.dominates(&state), "the store holds less than the request: {:?} vs {:?}", stored, state);

                // Coarsening is by recency, which a stored record does not keep, so the store and
                // the request may coarsen a union differently: a sync may still tighten the state.
                // Requirements only rise, so it settles, and then sync changes nothing.
                let mut settled = state.clone();
                let mut rounds = 0;
                loop {
                    let mut again = settled.clone();
                    fast.sync(&mut again);
                    if again == settled {
                        break;
                    }
                    prop_assert!(again.dominates(&settled));
                    settled = again;
                    rounds += 1;
                    prop_assert!(rounds < 8, "sync does not settle");
                }
            }
        }
    }
}
