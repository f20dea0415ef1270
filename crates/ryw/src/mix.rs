//! The one bit mixer of the crate: the splitmix64 finalizer.

/// The splitmix64 finalizer: a bijection of `u64` whose output bits each depend on every input
/// bit. Used for write-id lanes, retry jitter and the verified-token cache's slots.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
