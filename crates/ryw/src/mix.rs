//! The one bit mixer of the crate: the splitmix64 finalizer.

/// The splitmix64 finalizer: a bijection of `u64` whose output bits each depend on every input
/// bit. Used for write-id lanes, retry jitter and the verified-token cache's slots.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A `Hasher` for keys whose bits are uniform already (random or mixed session ids, the token
/// cache's slots): it takes them as they are. Used by the session store and the token cache.
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
        self.0 = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
    }
}

/// The golden-ratio increment of splitmix64's counter (odd, so `n * GAMMA` is a bijection too).
pub(crate) const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

#[cfg(test)]
mod tests {
    #[test]
    fn splitmix64_is_pinned() {
        // The first output of splitmix64 seeded with 0: the reference implementation's value.
        assert_eq!(super::splitmix64(super::GAMMA), 0xe220_a839_7b1d_cdaf);
    }
}
