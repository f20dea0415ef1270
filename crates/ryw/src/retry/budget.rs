//! A retry budget shared by every request of a layer, as `tower::retry::budget`.
//!
//! # Example
//!
//! ```
//! use ryw::retry::RetryBudget;
//!
//! let budget = RetryBudget::new(0.2, 2);
//! assert!(budget.try_withdraw() && budget.try_withdraw());
//! assert!(!budget.try_withdraw()); // reserve spent, no deposits yet
//! for _ in 0..5 {
//!     budget.record_request();
//! }
//! assert!(budget.try_withdraw()); // 5 requests at 20% earn one retry
//! ```

use std::sync::atomic::{AtomicI64, Ordering};

const UNIT: i64 = 1000;

/// A retry budget: every request deposits `ratio` of a retry, every retry withdraws one, with a
/// reserve for quiet periods and a ceiling so a long calm spell does not bank unlimited retries.
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    deposit: i64,
    ceiling: i64,
}

impl RetryBudget {
    /// `ratio` retries per request (0.2 = at most 20% extra load), starting with `reserve`
    /// retries. The balance never exceeds `reserve` plus 100 requests' worth.
    pub fn new(ratio: f32, reserve: u32) -> Self {
        let deposit = (ratio.clamp(0.0, 1000.0) * UNIT as f32) as i64;
        let reserve = i64::from(reserve) * UNIT;
        RetryBudget {
            balance: AtomicI64::new(reserve),
            deposit,
            ceiling: reserve + deposit * 100,
        }
    }

    /// Records one request (a deposit).
    #[inline]
    pub fn record_request(&self) {
        // In steady state the balance sits at its ceiling: a plain load, no read-modify-write.
        if self.balance.load(Ordering::Relaxed) >= self.ceiling {
            return;
        }
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.deposit).min(self.ceiling))
            });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= UNIT).then_some(b - UNIT)
            })
            .is_ok()
    }
}

impl Default for RetryBudget {
    /// 20% extra load, 10 retries in reserve.
    fn default() -> Self {
        RetryBudget::new(0.2, 10)
    }
}

impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        self.record_request();
    }

    fn withdraw(&self) -> bool {
        self.try_withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_ceiling() {
        let b = RetryBudget::new(1.0, 0);
        for _ in 0..1000 {
            b.record_request();
        }
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        assert_eq!(n, 100);
    }
}
