//! What replays taught sessions: each session's state after the replays of its writes, kept for
//! its next requests (a continuation rebuilt from an older token would not know it), the oldest
//! forgotten past [`REPLAYED_SESSIONS`].

use super::error::OutboxError;
use ryw::{Session, SessionId, SessionState};
use std::collections::HashMap;
use std::collections::VecDeque;

/// How many sessions' replayed states are kept for their next requests.
pub const REPLAYED_SESSIONS: usize = 100_000;

/// Sessions' states after replays of their writes, oldest first, at most [`REPLAYED_SESSIONS`]
/// of them.
#[derive(Default)]
pub(super) struct Replayed {
    states: HashMap<SessionId, SessionState>,
    order: VecDeque<SessionId>,
}

/// What a replay through a session teaches, before it is kept.
pub(super) struct Lesson {
    /// The session.
    pub(super) id: SessionId,
    /// Its state, merged with what was kept of it, as an unsigned session token: what the file
    /// keeps.
    pub(super) token: String,
    /// The sessions forgotten to make room for it, oldest first.
    pub(super) evicted: Vec<SessionId>,
    state: SessionState,
    /// Whether the session was kept already.
    known: bool,
}

impl Replayed {
    /// Takes back a session's record read from the file (its state as an unsigned session
    /// token). A record that does not decode teaches nothing; it is replaced at the next replay.
    pub(super) fn restore(&mut self, token: &[u8]) {
        let Some(state) = std::str::from_utf8(token)
            .ok()
            .and_then(|t| Session::from_encoded(t).ok())
            .map(|s| s.snapshot())
        else {
            return;
        };
        self.order.push_back(state.id());
        self.states.insert(state.id(), state);
    }

    /// True when no session's state is kept.
    pub(super) fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The state kept of the session `id`, if any.
    pub(super) fn get(&self, id: SessionId) -> Option<&SessionState> {
        self.states.get(&id)
    }

    /// What a replay through the session `id`, now in `state`, teaches: its state merged with
    /// what is kept of it, and the oldest sessions it makes room for.
    pub(super) fn lesson(
        &self,
        id: SessionId,
        mut state: SessionState,
    ) -> Result<Lesson, OutboxError> {
        if let Some(seen) = self.states.get(&id) {
            state.merge(seen);
        }
        let token = Session::from_state(state.clone())
            .token()
            .encode()
            .map_err(|e| OutboxError::Damaged(format!("session state not encodable: {e}")))?;
        let known = self.states.contains_key(&id);
        let evicted: Vec<SessionId> = if known {
            Vec::new()
        } else {
            let over = (self.order.len() + 1).saturating_sub(REPLAYED_SESSIONS);
            self.order.iter().take(over).copied().collect()
        };
        Ok(Lesson {
            id,
            token,
            evicted,
            state,
            known,
        })
    }

    /// Keeps `lesson` (once the file keeps it), forgetting the sessions it evicts.
    pub(super) fn learn(&mut self, lesson: Lesson) {
        for old in &lesson.evicted {
            self.states.remove(old);
        }
        self.order.retain(|s| !lesson.evicted.contains(s));
        if !lesson.known {
            self.order.push_back(lesson.id);
        }
        self.states.insert(lesson.id, lesson.state);
    }
}
