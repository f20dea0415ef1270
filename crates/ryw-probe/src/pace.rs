//! Bounds on a run: a rate of store operations, a deadline and Ctrl-C.

use crate::error::{ProbeError, Stop};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Spaces store operations `1 / rate` apart, stops at the deadline or when told to.
#[derive(Debug)]
pub(crate) struct Pace {
    interval: Duration,
    next: Mutex<Instant>,
    deadline: Instant,
    interrupted: Arc<AtomicBool>,
}

impl Pace {
    pub(crate) fn new(rate: f64, max: Duration, interrupted: Arc<AtomicBool>) -> Self {
        let interval = if rate > 0.0 && rate.is_finite() {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::ZERO
        };
        let now = Instant::now();
        Pace {
            interval,
            next: Mutex::new(now),
            deadline: now + max,
            interrupted,
        }
    }

    /// Why the run must stop now, if it must.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        if self.interrupted.load(Ordering::Relaxed) {
            Some(Stop::Interrupted)
        } else if Instant::now() >= self.deadline {
            Some(Stop::OutOfTime)
        } else {
            None
        }
    }

    /// Waits for the next slot of the rate; an error when the run must stop.
    pub(crate) async fn slot(&self) -> Result<(), ProbeError> {
        self.slots(1).await
    }

    /// Waits until `n` operations fit the rate, and reserves them all: the operations of one
    /// probe, so that none of them waits for the others' slots.
    pub(crate) async fn slots(&self, n: u32) -> Result<(), ProbeError> {
        if let Some(stop) = self.stopped() {
            return Err(ProbeError::Stopped(stop));
        }
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + self.interval * n;
            at
        };
        tokio::time::sleep_until(at).await;
        match self.stopped() {
            Some(stop) => Err(ProbeError::Stopped(stop)),
            None => Ok(()),
        }
    }

    /// Sleeps until `at`, or until the run must stop.
    pub(crate) async fn until(&self, at: Instant) -> Result<(), ProbeError> {
        while Instant::now() < at {
            if let Some(stop) = self.stopped() {
                return Err(ProbeError::Stopped(stop));
            }
            let step = (at - Instant::now()).min(Duration::from_millis(100));
            tokio::time::sleep(step).await;
        }
        Ok(())
    }
}
