//! The shared handle of a session: what the requests of one session hold.

use super::{SessionId, SessionState};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

struct SessionCell {
    id: SessionId,
    state: Mutex<SessionState>,
}

/// A shared handle to one session's state.
///
/// Cloning is cheap (an `Arc`); all clones see and advance the same state.
#[derive(Clone)]
pub struct Session {
    shared: Arc<SessionCell>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The state is not printed: it is token content.
        f.debug_struct("Session")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A new session with a random id.
    pub fn new() -> Self {
        Self::from_state(SessionState::new(SessionId::random()))
    }

    /// A new, empty session with the given id.
    pub fn with_id(id: SessionId) -> Self {
        Self::from_state(SessionState::new(id))
    }

    /// A session continuing `state`.
    pub fn from_state(state: SessionState) -> Self {
        Session {
            shared: Arc::new(SessionCell {
                id: state.id(),
                state: Mutex::new(state),
            }),
        }
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> SessionState {
        self.lock().clone()
    }

    /// Merges another state of this session (from a token that came with a request, or from a
    /// session store) by pointwise maximum. Returns false if `other` belongs to another session.
    pub fn merge(&self, other: &SessionState) -> bool {
        self.lock().merge(other)
    }

    /// Takes in what another state has observed, whichever session it belongs to
    /// ([`SessionState::absorb`]).
    pub fn absorb(&self, other: &SessionState) {
        self.lock().absorb(other);
    }

    /// Runs `f` with the state locked. Keep `f` short: every request of the session waits on it.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut SessionState) -> R) -> R {
        f(&mut self.lock())
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // breaks its invariants (every mutation is a monotone max), so poisoning is ignored.
        crate::locks::lock(&self.shared.state)
    }
}
