//! Time sources and the session's hybrid logical clock.
//!
//! The layer reads wall-clock time through the [`Clock`] trait so that simulations can run in
//! virtual time. [`HybridTimestamp`] is the session's hybrid logical clock: microseconds since
//! the Unix epoch, moved forward past every timestamp the session has seen, so it is monotonic
//! per session even when the machine's clock steps back or another instance's clock runs ahead.
//!
//! # Example
//!
//! ```
//! use ryw::clock::{Clock, HybridTimestamp, SystemClock};
//!
//! let now = SystemClock.now_micros();
//! let a = HybridTimestamp::new(0).next(now);
//! let b = a.next(now); // same physical time: the logical part moves it forward
//! assert!(b > a);
//! ```

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in microseconds since the Unix epoch.
///
/// # Example implementation
///
/// ```
/// use ryw::clock::Clock;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// A clock the test moves by hand.
/// #[derive(Debug, Default)]
/// struct ManualClock(AtomicU64);
///
/// impl Clock for ManualClock {
///     fn now_micros(&self) -> u64 {
///         self.0.load(Ordering::Relaxed)
///     }
/// }
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// A hybrid logical clock reading: physical microseconds, advanced by one whenever the physical
/// clock has not moved past the last reading. Totally ordered within a session; across sessions
/// ties are broken by [`crate::session::WriteId`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HybridTimestamp(u64);

impl HybridTimestamp {
    /// Wraps a raw value (microseconds since the Unix epoch).
    pub const fn new(micros: u64) -> Self {
        HybridTimestamp(micros)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The next reading after `self` given the physical time `now_micros`: the larger of the two,
    /// strictly after `self`.
    pub const fn next(self, now_micros: u64) -> Self {
        let after = self.0.saturating_add(1);
        HybridTimestamp(if now_micros > after {
            now_micros
        } else {
            after
        })
    }

    /// Moves the clock to at least `seen` (a timestamp observed from the store or another
    /// instance).
    pub fn observe(&mut self, seen: HybridTimestamp) {
        if seen > *self {
            *self = seen;
        }
    }
}

impl fmt::Display for HybridTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}us", self.0)
    }
}

/// Seconds since the Unix epoch, by the system clock.
pub fn now_secs() -> u64 {
    SystemClock.now_micros() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_clock_is_monotonic_when_wall_clock_steps_back() {
        let t = HybridTimestamp::new(0).next(1_000);
        assert_eq!(t.get(), 1_000);
        let u = t.next(500);
        assert_eq!(u.get(), 1_001);
        let mut v = u;
        v.observe(HybridTimestamp::new(5_000));
        assert_eq!(v.next(10).get(), 5_001);
        assert_eq!(HybridTimestamp::new(u64::MAX).next(0).get(), u64::MAX);
    }
}
