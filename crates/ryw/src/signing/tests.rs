//! Tests of signing, verification, rotation and revocation.

use super::*;
use crate::session::{SessionId, SessionState};
use crate::token::{SessionToken, TokenError};
use std::sync::Arc;
use std::time::Duration;

use crate::token::Signature;
use crate::version::{ScopeKey, StoreId, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const NOW: u64 = 1_790_000_000;

fn state(scopes: u64) -> SessionState {
    let mut s = SessionState::new(SessionId::from_u128(0xfeed));
    s.next_write(1_790_000_000_000_000);
    for i in 0..scopes {
        s.advance(
            ScopeKey::new(StoreId::new(1), format!("k{i}").as_bytes()),
            Version::new(1_790_000_000_000_000 + i * 997),
        );
    }
    s
}

fn authority() -> TokenAuthority {
    TokenAuthority::new(KeyRing::new(SigningKey::new(1, [1u8; 32]).unwrap()))
        .token_ttl(Duration::from_secs(3600))
        .leeway(Duration::from_secs(10))
}

#[test]
fn round_trip_and_sizes() {
    let a = authority();
    let s = state(4);
    let t = a.issue_at(&s, None, NOW).unwrap();
    assert!(t.len() <= 160, "{} chars", t.len());
    let back = a.verify_at(&t, None, NOW + 5).unwrap();
    let mut started = s.clone();
    started.set_started_at(NOW);
    assert_eq!(
        back.state(),
        &started,
        "the first signed token starts the session"
    );
    assert_eq!(back.times(), Some((NOW, NOW + 3600)));
    assert_eq!(back.signature().unwrap().key_id, 1);
}

#[test]
fn signed_tokens_are_pinned() {
    // Pinned: a signed token's bytes (signature, masked scopes and all) for a fixed key, session
    // and clock. Tokens already handed out must verify, and re-issue to the same text.
    let a = authority();
    let s = crate::token::with_every_section(state(3), NOW - 300);
    let bound = a.issue_at(&s, Some(b"alice"), NOW).unwrap();
    let anonymous = a.issue_at(&s, None, NOW).unwrap();
    assert_eq!(
        bound,
        "Agft_gAAAAAAAAAAAAAAAAAAAYDAl9Ht_5YDgPfE1QaQk8XVBqwCN714H6Gf2m0DAgcDYwcHBwcHASQBAANCcBo3Qq\
         uYgMCX0e3_lgMPkG5HKwap5QcINmvAOBk65QcBBAIBTQABG6mMxRa1m4xKIc2kuoYCrNdt1SRaY4CEbWkx-DhAdh8"
    );
    assert_eq!(
        anonymous,
        "AgPt_gAAAAAAAAAAAAAAAAAAAYDAl9Ht_5YDgPfE1QaQk8XVBqwCAwIHA2MHBwcHBwEkAQADQnAaN0KrmIDAl9Ht_5\
         YDD5BuRysGqeUHCDZrwDgZOuUHAQQCAU0AAaczPw7Xyz4H6RpS2ZlR3s5ctXmaVOLVv3cA7AktXObI"
    );
    for (token, principal) in [(&bound, Some(&b"alice"[..])), (&anonymous, None)] {
        let back = a.verify_at(token, principal, NOW).unwrap();
        assert_eq!(back.state(), &s);
        assert_eq!(&a.issue_at(back.state(), principal, NOW).unwrap(), token);
    }
}

#[test]
fn every_altered_byte_is_rejected() {
    let a = authority();
    let t = a.issue_at(&state(3), Some(b"alice"), NOW).unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut v = bytes.clone();
            v[i] ^= bit;
            let e = a
                .verify_at(&URL_SAFE_NO_PAD.encode(&v), Some(b"alice"), NOW)
                .unwrap_err();
            // Structural damage is a decode error; anything that still parses fails the
            // signature (or names a key that is not held).
            assert!(e.is_malformed() || e.is_untrusted(), "byte {i}: {e:?}");
        }
    }
    for cut in 1..bytes.len() {
        let e = a
            .verify_at(&URL_SAFE_NO_PAD.encode(&bytes[..cut]), None, NOW)
            .unwrap_err();
        assert!(e.is_malformed() || e.is_untrusted(), "cut {cut}: {e:?}");
    }
}

#[test]
fn a_signed_token_does_not_reveal_which_keys_its_session_touched() {
    let a = authority();
    let mut s = SessionState::new(SessionId::from_u128(3));
    let secret = ScopeKey::new(StoreId::new(1), b"posts/alice-private-7");
    s.advance(secret, Version::new(5));
    let t = a.issue_at(&s, None, NOW).unwrap();
    // Without the key: decodable, but the dictionary guess finds nothing.
    let seen = SessionToken::decode(&t).unwrap();
    assert_eq!(seen.state().vector().len(), 1);
    assert_eq!(seen.state().vector().get(secret), None);
    // With it: the scope is back.
    let verified = a.verify_at(&t, None, NOW).unwrap();
    assert_eq!(verified.state().vector().get(secret), Some(Version::new(5)));
    // Across a rotation, a token signed by the old key still unmasks with the old key.
    a.rotate(SigningKey::new(2, [2u8; 32]).unwrap()).unwrap();
    let again = a.verify_at(&t, None, NOW).unwrap();
    assert_eq!(again.state().vector().get(secret), Some(Version::new(5)));
    let t2 = a.issue_at(again.state(), None, NOW).unwrap();
    assert_eq!(
        a.verify_at(&t2, None, NOW)
            .unwrap()
            .state()
            .vector()
            .get(secret),
        Some(Version::new(5))
    );
}

#[test]
fn an_epoch_revocation_survives_a_refresh() {
    // Before, the epoch was compared with the token's issue time, and one refresh (a
    // re-issue from the verified state, at any instance) laundered an older session.
    let list = Arc::new(InMemoryRevocationList::new());
    let a = TokenAuthority::new(KeyRing::new(SigningKey::new(1, [1u8; 32]).unwrap()))
        .token_ttl(Duration::from_secs(3600))
        .leeway(Duration::from_secs(10))
        .revocation_list(list.clone());
    let t = a.issue_at(&state(2), None, NOW).unwrap();
    let refreshed = a
        .issue_at(
            a.verify_at(&t, None, NOW + 100).unwrap().state(),
            None,
            NOW + 200,
        )
        .unwrap();
    let again = a
        .issue_at(
            a.verify_at(&refreshed, None, NOW + 250).unwrap().state(),
            None,
            NOW + 300,
        )
        .unwrap();
    let token = a.verify_at(&again, None, NOW + 301).unwrap();
    assert_eq!(
        token.state().started_at(),
        NOW,
        "carried through every re-issue"
    );
    assert_eq!(token.times().unwrap().0, NOW + 300);
    list.revoke_issued_before(NOW + 150);
    for t in [&t, &refreshed, &again] {
        assert!(a.verify_at(t, None, NOW + 310).unwrap_err().is_revoked());
    }
    // A session started after the epoch is not affected.
    let fresh = a.issue_at(&state(1), None, NOW + 160).unwrap();
    assert!(a.verify_at(&fresh, None, NOW + 310).is_ok());
}

#[test]
fn typed_errors() {
    let a = authority();
    let s = state(2);
    let t = a.issue_at(&s, None, NOW).unwrap();
    assert_eq!(
        a.verify_at(&t, None, NOW + 3600 + 10),
        Err(VerifyError::Expired {
            expired_at: NOW + 3600
        })
    );
    assert!(a.verify_at(&t, None, NOW + 3600 + 9).is_ok(), "leeway");
    // Issued in the future beyond the leeway (as JWT's `nbf`).
    assert!(a.verify_at(&t, None, NOW - 10).is_ok(), "leeway");
    let e = a.verify_at(&t, None, NOW - 11).unwrap_err();
    assert_eq!(e, VerifyError::NotYetValid { issued_at: NOW });
    assert_eq!(e.code(), "token_not_yet_valid");
    let unsigned = SessionToken::new(s.clone()).encode().unwrap();
    assert_eq!(
        a.verify_at(&unsigned, None, NOW),
        Err(VerifyError::Unsigned)
    );
    let forged = SessionToken::new(s.clone())
        .with_times(NOW, NOW + 10)
        .with_signature(Signature {
            key_id: 1,
            tag: [0; 32],
        })
        .encode()
        .unwrap();
    assert_eq!(
        a.verify_at(&forged, None, NOW),
        Err(VerifyError::BadSignature)
    );
    let other = TokenAuthority::new(SigningKey::new(1, [2u8; 32]).unwrap());
    assert_eq!(
        other.verify_at(&t, None, NOW),
        Err(VerifyError::BadSignature),
        "same key id, another secret"
    );
    let codes = [
        a.verify_at("", None, NOW).unwrap_err().code(),
        a.verify_at(&"A".repeat(5000), None, NOW)
            .unwrap_err()
            .code(),
        a.verify_at("!!", None, NOW).unwrap_err().code(),
        a.verify_at(&t[..20], None, NOW).unwrap_err().code(),
    ];
    assert_eq!(
        codes,
        [
            "token_empty",
            "token_oversized",
            "token_not_base64",
            "token_truncated"
        ]
    );
    let mut v = URL_SAFE_NO_PAD.decode(&t).unwrap();
    v[0] = 9;
    assert_eq!(
        a.verify_at(&URL_SAFE_NO_PAD.encode(&v), None, NOW),
        Err(VerifyError::Decode(TokenError::UnknownVersion(9)))
    );
}

#[test]
fn binding_rejects_other_principals() {
    let a = authority();
    let t = a.issue_at(&state(1), Some(b"alice"), NOW).unwrap();
    assert!(a.verify_at(&t, Some(b"alice"), NOW).is_ok());
    assert_eq!(
        a.verify_at(&t, Some(b"bob"), NOW),
        Err(VerifyError::WrongPrincipal)
    );
    assert_eq!(a.verify_at(&t, None, NOW), Err(VerifyError::WrongPrincipal));
    // An unbound token may be presented by anyone.
    let t = a.issue_at(&state(1), None, NOW).unwrap();
    assert!(a.verify_at(&t, Some(b"bob"), NOW).is_ok());
}

#[test]
fn rotation_keeps_old_tokens_until_retired() {
    let a = authority();
    let old = a.issue_at(&state(1), None, NOW).unwrap();
    a.rotate(SigningKey::new(2, [3u8; 32]).unwrap()).unwrap();
    assert_eq!(
        a.rotate(SigningKey::new(1, [4u8; 32]).unwrap()),
        Err(KeyError::DuplicateId(1))
    );
    let new = a.issue_at(&state(1), None, NOW).unwrap();
    assert_eq!(
        a.verify_at(&new, None, NOW)
            .unwrap()
            .signature()
            .unwrap()
            .key_id,
        2
    );
    assert!(a.verify_at(&old, None, NOW).is_ok());
    assert!(a.retire(1));
    assert!(!a.retire(2), "the signing key cannot be retired");
    assert_eq!(
        a.verify_at(&old, None, NOW),
        Err(VerifyError::UnknownKey { key_id: 1 })
    );
    assert!(a.verify_at(&new, None, NOW).is_ok());
    assert_eq!(a.key_ids(), vec![2]);
}

#[test]
fn revocation_by_session_and_epoch() {
    let a = authority();
    let s = state(1);
    let t = a.issue_at(&s, None, NOW).unwrap();
    a.revocations().unwrap().revoke_session_at(s.id(), NOW);
    assert_eq!(
        a.verify_at(&t, None, NOW),
        Err(VerifyError::Revoked(Revocation::Session))
    );
    assert!(a.revocations().unwrap().restore_session(s.id()));
    assert!(a.verify_at(&t, None, NOW).is_ok());
    a.revocations().unwrap().revoke_issued_before(NOW + 1);
    assert_eq!(
        a.verify_at(&t, None, NOW),
        Err(VerifyError::Revoked(Revocation::IssuedBefore {
            epoch: NOW + 1
        }))
    );
    let later = a.issue_at(&s, None, NOW + 1).unwrap();
    assert!(a.verify_at(&later, None, NOW + 1).is_ok());
    a.revocations()
        .unwrap()
        .revoke_session_at(SessionId::from_u128(9), NOW);
    assert_eq!(a.revocations().unwrap().forget_revoked_before(NOW + 1), 1);
    assert!(a.revocations().unwrap().is_empty());
}

#[test]
fn revocation_by_principal_ends_every_session_of_it_that_started_before() {
    let a = authority();
    let (alice_phone, alice_laptop, bob) = (state(1), state(2), state(3));
    let phone = a.issue_at(&alice_phone, Some(b"alice"), NOW).unwrap();
    let laptop = a.issue_at(&alice_laptop, Some(b"alice"), NOW).unwrap();
    let bobs = a.issue_at(&bob, Some(b"bob"), NOW).unwrap();
    // A rotation before the revocation: the ring's previous key is covered too.
    a.rotate(SigningKey::new(9, [9u8; 32]).unwrap()).unwrap();
    let rotated = a.issue_at(&alice_phone, Some(b"alice"), NOW).unwrap();
    assert!(a.revoke_principal_before(b"alice", NOW + 1));
    for t in [&phone, &laptop, &rotated] {
        assert_eq!(
            a.verify_at(t, Some(b"alice"), NOW + 5),
            Err(VerifyError::Revoked(Revocation::Principal {
                epoch: NOW + 1
            }))
        );
    }
    assert!(a.verify_at(&bobs, Some(b"bob"), NOW + 5).is_ok());
    // A session alice starts afterwards is not revoked.
    let mut fresh = state(4);
    fresh.set_started_at(NOW + 2);
    let fresh = a.issue_at(&fresh, Some(b"alice"), NOW + 2).unwrap();
    assert!(a.verify_at(&fresh, Some(b"alice"), NOW + 5).is_ok());
    // The epoch only moves forward.
    a.revocations()
        .unwrap()
        .revoke_principal_before(&a.principal_bindings(b"alice"), NOW);
    assert!(a.verify_at(&phone, Some(b"alice"), NOW + 5).is_err());
}

#[test]
fn keys_are_checked_and_never_printed() {
    assert_eq!(
        SigningKey::new(3, [0u8; 16]).unwrap_err(),
        KeyError::TooShort { key_id: 3, len: 16 }
    );
    let a = authority();
    let shown = format!("{a:?} {:?}", SigningKey::new(5, [0xAB; 32]).unwrap());
    assert!(!shown.to_lowercase().contains("ab, "), "{shown}");
    assert!(!shown.contains("171"), "{shown}");
}
