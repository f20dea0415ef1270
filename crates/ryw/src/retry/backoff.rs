//! The delay before a retry, as `tower::retry::backoff`.
//!
//! # Example
//!
//! ```
//! use ryw::retry::Backoff;
//! use std::time::Duration;
//!
//! let backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
//! // Full jitter: somewhere in [0, min(max, base * 2^attempt)].
//! assert!(backoff.delay(3, 0.5) <= Duration::from_millis(40));
//! ```

use std::time::Duration;

/// Exponential backoff with full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's maximum delay.
    pub base: Duration,
    /// The cap on any delay.
    pub max: Duration,
}

impl Backoff {
    /// Backoff from `base`, doubling, capped at `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay before retry number `attempt` (0-based), for a uniform draw `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

impl Default for Backoff {
    /// 10 ms base, 1 s cap.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(10), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(10));
        assert_eq!(b.delay(10, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(40, 0.0), Duration::ZERO);
    }
}
