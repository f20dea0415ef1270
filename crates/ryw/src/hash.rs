//! The crate's hashes, in one place.
//!
//! - [`splitmix64`] (with [`GAMMA`]): a bijective bit mixer, for write-id lanes, retry jitter,
//!   telemetry's session digests and the verified-token cache's slots.
//! - [`PremixedHasher`]: a `Hasher` for keys whose bits are uniform already.
//! - [`stable_hash`]: FNV-1a 64 with murmur3's 64-bit finalizer, the hash of scope names and of
//!   the client keys session ids are derived from.
//! - [`sha256_128`]: SHA-256 truncated to 128 bits, where collisions must be out of reach (a
//!   write's idempotency key as a store receives it).
//!
//! Scope keys, derived session ids and write digests travel in tokens, stored records and store
//! requests: what [`stable_hash`] and [`sha256_128`] compute is pinned by tests and never changes.

use sha2::{Digest, Sha256};

/// The golden-ratio increment of splitmix64's counter (odd, so `n * GAMMA` is a bijection too).
pub(crate) const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finalizer: a bijection of `u64` whose output bits each depend on every input
/// bit.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 128 uniform bits folded into 64: the low half, xor the high half rotated by 32.
pub(crate) fn fold128(v: u128) -> u64 {
    (v as u64) ^ ((v >> 64) as u64).rotate_left(32)
}

/// FNV-1a 64 followed by the murmur3 64-bit finalizer: stable across processes, builds and
/// platforms, and well mixed. Not collision resistant against a chosen input.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The murmur3 64-bit finalizer (`fmix64`).
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The first 16 bytes of the SHA-256 digest of `bytes`, read as a little-endian `u128`: finding
/// two inputs with the same value takes about 2^64 work.
pub(crate) fn sha256_128(bytes: &[u8]) -> u128 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

/// A `Hasher` for keys whose bits are uniform already (random or mixed session ids, the token
/// cache's slots): it takes them as they are. Used by the two-generation maps
/// ([`crate::generations`]).
#[derive(Default)]
pub(crate) struct PremixedHasher(u64);

impl std::hash::Hasher for PremixedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` and `write_u128` are used; this keeps any other use well defined.
        for &b in bytes {
            self.0 = splitmix64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = fold128(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_is_pinned() {
        // The first output of splitmix64 seeded with 0: the reference implementation's value.
        assert_eq!(splitmix64(GAMMA), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn sha256_128_is_the_digest_truncated() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 96177a9c b410ff61 f20015ad
        assert_eq!(
            sha256_128(b"abc"),
            u128::from_le_bytes([
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23
            ])
        );
    }
}
