//! What the outbox holds in memory of its queue: each session's queued writes, with their scopes,
//! and the totals its bounds are checked against.

use crate::entry::Entry;
use ryw::{ScopeKey, SessionId, WriteId};
use std::collections::HashMap;

/// One queued write, as the index knows it.
pub(super) struct Queued {
    pub(super) seq: u64,
    pub(super) write_id: WriteId,
    pub(super) scopes: Vec<ScopeKey>,
    bytes: u64,
}

/// What the outbox holds in memory of its queue: per session, the queued writes and their scopes
/// (for reads, which must not claim a queued write is visible), and the totals.
#[derive(Default)]
pub(super) struct Index {
    pub(super) sessions: HashMap<SessionId, Vec<Queued>>,
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

impl Index {
    /// Indexes the entry `seq`, of `bytes` bytes.
    pub(super) fn add(&mut self, seq: u64, entry: &Entry, bytes: u64) {
        self.sessions
            .entry(entry.write_id.session)
            .or_default()
            .push(Queued {
                seq,
                write_id: entry.write_id,
                scopes: entry.scopes.clone(),
                bytes,
            });
        self.entries += 1;
        self.bytes += bytes;
    }

    /// Forgets the entry `seq` if it is indexed; returns its session.
    pub(super) fn forget(&mut self, seq: u64) -> Option<SessionId> {
        let (&session, queued) = self
            .sessions
            .iter_mut()
            .find(|(_, q)| q.iter().any(|q| q.seq == seq))?;
        let at = queued.iter().position(|q| q.seq == seq)?;
        let gone = queued.remove(at);
        if queued.is_empty() {
            self.sessions.remove(&session);
        }
        self.entries = self.entries.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(gone.bytes);
        Some(session)
    }
}
