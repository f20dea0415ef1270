//! The verified-token cache of a [`TokenAuthority`](super::TokenAuthority): tokens whose
//! signature already checked out, by exact text and principal.
//!
//! An entry is only ever found for the very string that was verified (or issued), presented by the
//! very principal it was verified for: a hash picks the slot, the full text and principal are then
//! compared, so no token can be forged into a hit. What a hit skips is the HMAC and the decoding;
//! what can change after a token verified is checked again on every hit by the authority: expiry,
//! not-yet-valid, revocation, and the key ring (an entry remembers the ring generation it was
//! verified under, and rotation or retirement moves the generation on).
//!
//! A token is admitted the second time it verifies: the first time, only its slot is noted (a
//! doorkeeper, as in TinyLFU). Most tokens are presented once (each write answers with a new
//! one), and keeping each of those would cost more than the verification it could save; a token
//! a client keeps sending (its session unchanged) is verified twice, then answered from here.
//!
//! Bounded by two generations per shard, of at most `capacity / 2 / SHARDS` entries each (the
//! doorkeeper likewise, in slots): when the young one is full the old one is dropped, so a hot
//! token survives while cold ones age out, in O(1) per insert. Sharded so that concurrent requests
//! of different sessions take different locks.

use crate::generations::{Generations, Shards};
use crate::hash::splitmix64 as fold;
use crate::token::SessionToken;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, MutexGuard};

/// A token that verified: its decoded form, with the scopes unmasked.
struct Verified {
    encoded: Box<str>,
    principal: Option<Box<[u8]>>,
    /// The key ring generation it was verified under.
    generation: u64,
    token: Arc<SessionToken>,
}

impl Verified {
    fn new(
        encoded: &str,
        principal: Option<&[u8]>,
        generation: u64,
        token: Arc<SessionToken>,
    ) -> Self {
        Verified {
            encoded: encoded.into(),
            principal: principal.map(Into::into),
            generation,
            token,
        }
    }
}

/// Characters of a token's end that pick its slot: 24 base64 characters, 144 bits of its tag.
const SLOT_TAIL: usize = 24;

/// One shard of the cache, by slot (slots are mixed already: the maps use them as they are).
#[derive(Default)]
struct Shard {
    tokens: Generations<u64, Verified>,
    /// Slots of tokens verified once, not admitted yet.
    seen: Generations<u64, ()>,
}

/// Locks of the cache (a power of two).
const SHARDS: usize = 16;

pub(super) struct VerifiedCache {
    hasher: RandomState,
    seed: u64,
    per_generation: usize,
    shards: Shards<Shard>,
}

impl VerifiedCache {
    /// A cache of at most `capacity` tokens; `None` for a capacity of zero (no cache).
    pub(super) fn new(capacity: usize) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let per_generation = capacity.div_ceil(2 * SHARDS);
        let hasher = RandomState::new();
        Some(VerifiedCache {
            seed: hasher.hash_one(0x5eed_u64),
            hasher,
            per_generation,
            shards: Shards::new(SHARDS, Shard::default),
        })
    }

    /// Where a token goes: a keyed hash of its last characters (for a token this authority
    /// signed, its HMAC tag, already uniform) and the principal. Only tokens that verified are
    /// inserted, so no one can choose where entries land; a lookup of any text costs one probe.
    fn slot(&self, encoded: &str, principal: Option<&[u8]>) -> u64 {
        let bytes = encoded.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(SLOT_TAIL)..];
        // A multiply-fold over the tail with a per-process seed: the tag is uniform already, and
        // a principal (short, chosen by the application) goes through the keyed hasher.
        let mut h = self.seed ^ bytes.len() as u64;
        for chunk in tail.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = fold(h ^ u64::from_le_bytes(word));
        }
        if let Some(p) = principal {
            h ^= self.hasher.hash_one(p);
        }
        fold(h)
    }

    /// The token held for exactly `encoded` presented by exactly `principal`, and the ring
    /// generation it was verified under.
    pub(super) fn get(
        &self,
        encoded: &str,
        principal: Option<&[u8]>,
    ) -> Option<(u64, Arc<SessionToken>)> {
        let slot = self.slot(encoded, principal);
        let mut maps = self.lock(slot);
        let matches = |v: &Verified| *v.encoded == *encoded && v.principal.as_deref() == principal;
        if let Some(v) = maps.tokens.young(&slot) {
            return matches(v).then(|| (v.generation, v.token.clone()));
        }
        let v = maps.tokens.take_old(&slot)?;
        let found = matches(&v).then(|| (v.generation, v.token.clone()));
        // Still in use: keep it through the next turnover.
        maps.tokens.insert(slot, v, self.per_generation);
        found
    }

    /// Called when `encoded`, presented by `principal`, verified (in full) as `token` under ring
    /// `generation`: the second time, it is remembered; the first time, only noted.
    pub(super) fn admit(
        &self,
        encoded: &str,
        principal: Option<&[u8]>,
        generation: u64,
        token: &Arc<SessionToken>,
    ) {
        let slot = self.slot(encoded, principal);
        let mut maps = self.lock(slot);
        if maps.seen.remove(&slot) {
            let entry = Verified::new(encoded, principal, generation, token.clone());
            maps.tokens.insert(slot, entry, self.per_generation);
        } else {
            maps.seen.insert(slot, (), self.per_generation);
        }
    }

    /// Remembers that `encoded`, presented by `principal`, is `token` under ring `generation`.
    #[cfg(test)]
    pub(super) fn insert(
        &self,
        encoded: &str,
        principal: Option<&[u8]>,
        generation: u64,
        token: Arc<SessionToken>,
    ) {
        let slot = self.slot(encoded, principal);
        let entry = Verified::new(encoded, principal, generation, token);
        self.lock(slot)
            .tokens
            .insert(slot, entry, self.per_generation);
    }

    fn lock(&self, slot: u64) -> MutexGuard<'_, Shard> {
        // Middle bits: a map's buckets come from the low bits and its tags from the top ones.
        self.shards.lock((slot >> 32) as usize)
    }

    /// Drops every entry.
    pub(super) fn clear(&self) {
        for mut maps in self.shards.iter() {
            maps.tokens.clear();
            maps.seen.clear();
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|maps| maps.tokens.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{SessionId, SessionState};

    fn token(n: u128) -> Arc<SessionToken> {
        Arc::new(SessionToken::new(SessionState::new(SessionId::from_u128(
            n,
        ))))
    }

    #[test]
    fn exact_text_and_principal_only() {
        let cache = VerifiedCache::new(8).unwrap();
        cache.insert("abc", Some(b"alice"), 0, token(1));
        assert!(cache.get("abc", Some(b"alice")).is_some());
        assert!(cache.get("abc", Some(b"bob")).is_none());
        assert!(cache.get("abc", None).is_none());
        assert!(cache.get("abd", Some(b"alice")).is_none());
        assert!(cache.get("ab", Some(b"alice")).is_none());
        cache.clear();
        assert!(cache.get("abc", Some(b"alice")).is_none());
    }

    #[test]
    fn a_token_is_admitted_the_second_time_it_verifies() {
        let cache = VerifiedCache::new(64).unwrap();
        let t = token(1);
        cache.admit("abc", None, 0, &t);
        assert!(cache.get("abc", None).is_none(), "noted, not kept");
        cache.admit("abc", Some(b"alice"), 0, &t);
        assert!(
            cache.get("abc", Some(b"alice")).is_none(),
            "another principal: noted apart"
        );
        cache.admit("abc", None, 0, &t);
        assert!(cache.get("abc", None).is_some());
        // Many tokens seen once: the doorkeeper stays bounded, nothing is kept.
        for i in 0..10_000u128 {
            cache.admit(&format!("once{i}"), None, 0, &token(i));
        }
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn bounded_and_a_hot_entry_survives() {
        let cache = VerifiedCache::new(1_000).unwrap();
        cache.insert("hot", None, 0, token(0));
        for i in 0..100_000u128 {
            cache.insert(&format!("cold{i}"), None, 0, token(i));
            assert!(cache.len() <= 1_000 + 2 * SHARDS);
            assert!(cache.get("hot", None).is_some(), "after {i} inserts");
        }
        assert!(VerifiedCache::new(0).is_none());
    }
}
