//! The keyed scope mask of signed tokens.
//!
//! A signed token names its scopes by a keyed permutation of their 56-bit hashes, so that it does
//! not reveal which keys its session touched: a dictionary of likely names hashed without the key
//! finds nothing. The authority masks as it issues ([`ScopeMask::mask`]) and unmasks once the
//! signature verified ([`ScopeMask::unmask_scope`]); the token format itself only carries 56-bit
//! hashes ([`crate::token`]).

use crate::version::ScopeKey;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// A keyed permutation of 56-bit scope hashes: a 4-round Feistel network over two 28-bit
/// halves, each round SipHash-2-4 of the round number and the other half under a 128-bit key
/// derived from the signing key.
#[derive(Clone, Copy)]
pub(super) struct ScopeMask {
    k0: u64,
    k1: u64,
}

impl ScopeMask {
    const HALF: u32 = 28;
    const HALF_MASK: u64 = (1 << Self::HALF) - 1;

    /// The mask of the 128-bit key `(k0, k1)`.
    pub(super) fn new(k0: u64, k1: u64) -> Self {
        ScopeMask { k0, k1 }
    }

    fn round(&self, i: u64, half: u64) -> u64 {
        siphash24(self.k0, self.k1, (i << 32) | half) & Self::HALF_MASK
    }

    /// The masked form of a 56-bit hash.
    pub(super) fn mask(&self, h: u64) -> u64 {
        let (mut l, mut r) = ((h >> Self::HALF) & Self::HALF_MASK, h & Self::HALF_MASK);
        for i in 0..4 {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (l << Self::HALF) | r
    }

    /// The inverse of [`ScopeMask::mask`].
    pub(super) fn unmask(&self, h: u64) -> u64 {
        let (mut l, mut r) = ((h >> Self::HALF) & Self::HALF_MASK, h & Self::HALF_MASK);
        for i in (0..4).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (l << Self::HALF) | r
    }

    /// `scope` as it was before [`ScopeMask::mask`] renamed its hash.
    pub(super) fn unmask_scope(&self, scope: ScopeKey) -> ScopeKey {
        ScopeKey::from_hash(scope.store(), self.unmask(scope.hash56()))
    }
}

/// SipHash-2-4 of one 64-bit word, taken as its 8 little-endian bytes.
fn siphash24(k0: u64, k1: u64, m: u64) -> u64 {
    let mut hasher = SipHasher24::new_with_keys(k0, k1);
    hasher.write(&m.to_le_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::StoreId;

    #[test]
    fn scope_mask_is_pinned() {
        // Pinned: signed tokens carry masked scopes, which must unmask the same in every build.
        let m = ScopeMask::new(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let posts = ScopeKey::new(StoreId::new(1), b"posts/42").hash56();
        let masked: Vec<u64> = [0, 1, posts, (1 << 56) - 1]
            .iter()
            .map(|&h| m.mask(h))
            .collect();
        assert_eq!(
            masked,
            [
                0x00ef_6085_d41e_a03c,
                0x00cf_eb2d_2d7f_9902,
                0x007e_3872_e650_dae5,
                0x0091_d793_030c_fdc6
            ]
        );
    }

    #[test]
    fn scope_mask_is_siphash_keyed_and_a_bijection() {
        // The reference SipHash-2-4 vector for an 8-byte message.
        assert_eq!(
            siphash24(
                0x0706_0504_0302_0100,
                0x0f0e_0d0c_0b0a_0908,
                0x0706_0504_0302_0100
            ),
            0x93f5_f579_9a93_2462
        );
        let m = ScopeMask::new(1, 2);
        let other = ScopeMask::new(1, 3);
        let mut seen = std::collections::HashSet::new();
        for i in 0..5_000u64 {
            let h = ScopeKey::new(StoreId::new(1), format!("posts/{i}").as_bytes()).hash56();
            let masked = m.mask(h);
            assert!(masked < 1 << 56);
            assert_eq!(m.unmask(masked), h);
            assert_ne!(masked, h);
            assert_ne!(other.mask(h), masked, "another key, another mask");
            assert!(seen.insert(masked));
        }
    }

    #[test]
    fn unmask_scope_keeps_the_store() {
        let m = ScopeMask::new(3, 4);
        let scope = ScopeKey::new(StoreId::new(9), b"posts/1");
        let masked = ScopeKey::from_hash(scope.store(), m.mask(scope.hash56()));
        assert_ne!(masked, scope);
        assert_eq!(m.unmask_scope(masked), scope);
    }
}
