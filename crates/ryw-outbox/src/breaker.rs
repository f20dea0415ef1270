//! A circuit breaker: after enough consecutive transient failures the store is taken to be down,
//! and writes are deferred without being sent, until the cool-down passes (one write then tries
//! the store; the others stay deferred until it answers, or for another cool-down if it never
//! says) or a replay succeeds.

use crate::sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Says whether the store is down. Shared by the [`crate::OutboxLayer`] and the
/// [`crate::Replayer`].
///
/// ```
/// use ryw_outbox::Breaker;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = Breaker::new(2, Duration::from_secs(5));
/// breaker.failed();
/// assert!(!breaker.is_open());
/// breaker.failed();
/// assert!(breaker.is_open());
/// tokio::time::sleep(Duration::from_secs(5)).await;
/// assert!(!breaker.is_open(), "after the cool-down, one write tries the store");
/// assert!(breaker.is_open(), "the others wait for its answer");
/// breaker.succeeded();
/// assert!(!breaker.is_open());
/// # }
/// ```
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cool_down: Duration,
    /// Nothing failed since the last success: the request path's check, without the lock.
    clear: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    /// Half open: one write was let through to try the store; others wait until then.
    probe_until: Option<Instant>,
}

impl Default for Breaker {
    /// Opens after 5 consecutive failures, for 5 seconds.
    fn default() -> Self {
        Breaker::new(5, Duration::from_secs(5))
    }
}

impl Breaker {
    /// Opens after `threshold` consecutive transient failures (at least 1), for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cool_down,
            clear: AtomicBool::new(true),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// True while the store is taken to be down.
    pub fn is_open(&self) -> bool {
        if self.clear.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.state();
        let now = Instant::now();
        match (state.open_until, state.probe_until) {
            (Some(until), _) if now < until => true,
            // Half open, a probe on its way: the others stay deferred.
            (_, Some(until)) if now < until => true,
            (Some(_), _) | (_, Some(_)) => {
                // Half open: this write tries the store; one more failure opens it again.
                state.open_until = None;
                state.probe_until = Some(now + self.cool_down);
                state.failures = self.threshold - 1;
                false
            }
            (None, None) => false,
        }
    }

    /// A request failed with a transient error.
    pub fn failed(&self) {
        let mut state = self.state();
        self.clear.store(false, Ordering::Release);
        state.failures = state.failures.saturating_add(1);
        state.probe_until = None;
        if state.failures >= self.threshold {
            state.open_until = Some(Instant::now() + self.cool_down);
        }
    }

    /// The store answered.
    pub fn succeeded(&self) {
        if self.clear.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        state.failures = 0;
        state.open_until = None;
        state.probe_until = None;
        self.clear.store(true, Ordering::Release);
    }
}
