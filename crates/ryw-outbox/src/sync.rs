//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data as it is if a thread panicked while holding it: one panic does not
/// make every later call of the outbox, the layer or the breaker panic too.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
