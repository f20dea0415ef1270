//! Sessions: identity, write sequence, hybrid clock and version vector.
//!
//! A [`Session`] is a cheap, cloneable handle to one logical client's [`SessionState`]. Several
//! requests of one session may run at once: each merges what it observed into the shared state by
//! pointwise maximum, so the state never regresses ("last completed wins" cannot happen). The
//! portable form of the state is a [`SessionToken`]: hand it to another
//! process and [`Session::from_token`] there continues the same session.
//!
//! # Example
//!
//! ```
//! use ryw::session::{Session, SessionId};
//!
//! let session = Session::new();
//! let token = session.token().encode()?;
//!
//! // Another app instance, given only the token:
//! let elsewhere = Session::from_encoded(&token)?;
//! assert_eq!(elsewhere.id(), session.id());
//!
//! // A session id derived from a stable client key is the same everywhere:
//! assert_eq!(SessionId::derive(b"user:42"), SessionId::derive(b"user:42"));
//! # Ok::<(), ryw::token::TokenError>(())
//! ```

use crate::clock::HybridTimestamp;
use crate::token::{SessionToken, TokenError};
use crate::version::{Coarsening, ScopeKey, StoreId, Version, VersionVector};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// A 128-bit session identifier: random, or derived from a client key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u128);

impl SessionId {
    /// A fresh random id from the operating system's generator.
    ///
    /// Falls back to a hash of the time and a process counter only if the system generator fails,
    /// which `getrandom` reports on no mainstream platform.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut seed = [0u8; 32];
            seed[..16].copy_from_slice(&t.to_le_bytes());
            seed[16..24].copy_from_slice(&n.to_le_bytes());
            return Self::derive(&seed);
        }
        SessionId(u128::from_le_bytes(bytes))
    }

    /// Derives an id from a stable client key (a user id, a device id): the same key gives the
    /// same id in every process. The derivation is not secret: anyone who knows the key can
    /// compute the id, so a signed token, not the id, is what proves a session.
    pub fn derive(client_key: &[u8]) -> Self {
        let lo = crate::version::stable_hash(client_key);
        let mut salted = Vec::with_capacity(client_key.len() + 8);
        salted.extend_from_slice(b"ryw:sid:");
        salted.extend_from_slice(client_key);
        let hi = crate::version::stable_hash(&salted);
        SessionId((u128::from(hi) << 64) | u128::from(lo))
    }

    /// Wraps raw bits.
    pub const fn from_u128(bits: u128) -> Self {
        SessionId(bits)
    }

    /// The raw bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The 16-byte little-endian form used in tokens.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// Rebuilds an id from [`SessionId::to_bytes`].
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(u128::from_le_bytes(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:032x})", self.0)
    }
}

/// The idempotency key of one write: the session and the write's sequence number in it.
///
/// Stamped once, before the first attempt, and reused by every retry of that write in this
/// process or another one, so a store can recognise an attempt that already landed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId {
    /// The session that issued the write.
    pub session: SessionId,
    /// The write's sequence number within the session, starting at 1.
    pub seq: u64,
}

impl WriteId {
    /// A write id.
    pub const fn new(session: SessionId, seq: u64) -> Self {
        WriteId { session, seq }
    }

    /// A 24-byte form: the session id then the sequence, both little-endian.
    pub fn to_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..16].copy_from_slice(&self.session.to_bytes());
        out[16..].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Parses the form written by `Display` (`<32 hex digits>-<decimal seq>`).
    pub fn parse(text: &str) -> Option<Self> {
        let (id, seq) = text.split_once('-')?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let session = SessionId(u128::from_str_radix(id, 16).ok()?);
        let seq = seq.parse().ok()?;
        Some(WriteId { session, seq })
    }
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.session, self.seq)
    }
}

impl fmt::Debug for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteId({self})")
    }
}

/// The state of one session: its write sequence, hybrid clock and version vector.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionState {
    id: SessionId,
    write_seq: u64,
    clock: HybridTimestamp,
    vector: VersionVector,
    contexts: Vec<StoreContext>,
}

/// The largest opaque context a store may keep in a session (bytes).
pub const MAX_CONTEXT_LEN: usize = 160;

/// The most store contexts one session holds.
pub const MAX_CONTEXTS: usize = 2;

/// An opaque piece of store state a session carries, with the version it goes with: MongoDB's
/// server-signed `$clusterTime` document, kept whole. Merging keeps, per store, the context of the
/// largest version.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreContext {
    /// The store.
    pub store: StoreId,
    /// The version the bytes go with (merging keeps the largest).
    pub version: Version,
    /// The bytes, at most [`MAX_CONTEXT_LEN`].
    pub bytes: Arc<[u8]>,
}

impl fmt::Debug for StoreContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes may be a server signature: not logged.
        f.debug_struct("StoreContext")
            .field("store", &self.store)
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl SessionState {
    /// An empty state for `id`.
    pub fn new(id: SessionId) -> Self {
        SessionState {
            id,
            write_seq: 0,
            clock: HybridTimestamp::default(),
            vector: VersionVector::default(),
            contexts: Vec::new(),
        }
    }

    /// Rebuilds a state from its parts (used by tokens and session stores).
    pub fn from_parts(
        id: SessionId,
        write_seq: u64,
        clock: HybridTimestamp,
        vector: VersionVector,
    ) -> Self {
        SessionState {
            id,
            write_seq,
            clock,
            vector,
            contexts: Vec::new(),
        }
    }

    /// The context a store keeps in this session, if any.
    #[inline]
    pub fn context(&self, store: StoreId) -> Option<&StoreContext> {
        if self.contexts.is_empty() {
            return None;
        }
        self.contexts.iter().find(|c| c.store == store)
    }

    /// All store contexts.
    pub fn contexts(&self) -> &[StoreContext] {
        &self.contexts
    }

    /// Keeps `context` if its store has none yet or an older one. Contexts longer than
    /// [`MAX_CONTEXT_LEN`], or a third store, are refused (returns false).
    pub fn advance_context(&mut self, context: StoreContext) -> bool {
        if context.bytes.len() > MAX_CONTEXT_LEN {
            return false;
        }
        let len = self.contexts.len();
        match self.contexts.iter_mut().find(|c| c.store == context.store) {
            Some(c) if context.version > c.version => {
                *c = context;
                true
            }
            Some(_) => false,
            None if len < MAX_CONTEXTS => {
                self.contexts.push(context);
                true
            }
            None => false,
        }
    }

    /// The session id.
    #[inline]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The sequence number of the last write stamped.
    #[inline]
    pub fn write_seq(&self) -> u64 {
        self.write_seq
    }

    /// The hybrid clock's last reading.
    #[inline]
    pub fn clock(&self) -> HybridTimestamp {
        self.clock
    }

    /// The version vector.
    #[inline]
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// The version vector, mutably (versions still only move forward).
    pub fn vector_mut(&mut self) -> &mut VersionVector {
        &mut self.vector
    }

    /// Stamps a new write: the next [`WriteId`] and a clock reading after every timestamp seen.
    ///
    /// The sequence saturates at `u64::MAX` instead of overflowing (a state decoded from an
    /// absurd unsigned token must not panic); write ids of such a session are then no longer
    /// unique.
    #[inline]
    pub fn next_write(&mut self, now_micros: u64) -> (WriteId, HybridTimestamp) {
        self.write_seq = self.write_seq.saturating_add(1);
        self.clock = self.clock.next(now_micros);
        (WriteId::new(self.id, self.write_seq), self.clock)
    }

    /// Skips `n` write ids (saturating): the writes stamped from here on cannot reuse an id that
    /// another holder of this same state stamps. The HTTP layer skips a random block on every
    /// request, because two app instances serving concurrent requests of one token would otherwise
    /// both stamp the next sequence number, for two different writes.
    pub fn skip_write_ids(&mut self, n: u64) {
        self.write_seq = self.write_seq.saturating_add(n);
    }

    /// Moves the hybrid clock to at least `seen`.
    #[inline]
    pub fn observe_clock(&mut self, seen: HybridTimestamp) {
        self.clock.observe(seen);
    }

    /// Raises the high-water mark of `scope`.
    #[inline]
    pub fn advance(&mut self, scope: ScopeKey, version: Version, at: Coarsening) -> bool {
        self.vector.advance(scope, version, at)
    }

    /// Pointwise maximum with another state of the same session. States of other sessions are
    /// ignored (returns false).
    pub fn merge(&mut self, other: &SessionState, at: Coarsening) -> bool {
        if other.id != self.id {
            return false;
        }
        self.absorb(other, at);
        true
    }

    /// Takes in what another state has observed, whichever session it belongs to: the version
    /// vector, the clock and the store contexts (the write sequence too, when it is the same
    /// session). Used when a client presents tokens of two sessions at once (two concurrent first
    /// requests that each started one): the fences become stricter, never weaker, and write ids
    /// stay unique because the sequence of another session is not taken.
    pub fn absorb(&mut self, other: &SessionState, at: Coarsening) {
        if other.id == self.id {
            self.write_seq = self.write_seq.max(other.write_seq);
        }
        self.clock.observe(other.clock);
        self.vector.merge(&other.vector, at);
        for c in &other.contexts {
            self.advance_context(c.clone());
        }
    }

    /// True when absorbing `other` ([`SessionState::absorb`]) would make no fence stricter: `self`
    /// dominates `other`, comparing write sequences only within one session.
    pub fn covers(&self, other: &SessionState) -> bool {
        self.vector.dominates(&other.vector)
            && self.clock >= other.clock
            && (self.id != other.id || self.write_seq >= other.write_seq)
            && other.contexts.iter().all(|o| {
                self.context(o.store)
                    .is_some_and(|c| c.version >= o.version)
            })
    }

    /// True when `self` implies everything `other` requires.
    pub fn dominates(&self, other: &SessionState) -> bool {
        self.write_seq >= other.write_seq
            && self.clock >= other.clock
            && self.vector.dominates(&other.vector)
            && other.contexts.iter().all(|o| {
                self.context(o.store)
                    .is_some_and(|c| c.version >= o.version)
            })
    }
}

/// The coarsening of a merge outside the layer: the wall clock is read only when the merge can
/// overflow the cap and coarsen, with the default replication window.
pub(crate) fn merge_coarsening(into: &SessionState, from: &SessionState) -> Coarsening {
    let may_evict = into.vector().len() + from.vector().len() > into.vector().cap();
    Coarsening {
        now_micros: if may_evict {
            crate::clock::Clock::now_micros(&crate::clock::SystemClock)
        } else {
            0
        },
        window_micros: DEFAULT_REPLICATION_WINDOW_MICROS,
    }
}

/// The replication window assumed when a merge outside the layer has to coarsen (5 s).
pub const DEFAULT_REPLICATION_WINDOW_MICROS: u64 = 5_000_000;

struct Shared {
    id: SessionId,
    state: Mutex<SessionState>,
}

/// A shared handle to one session's state.
///
/// Cloning is cheap (an `Arc`); all clones see and advance the same state.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
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
            shared: Arc::new(Shared {
                id: state.id(),
                state: Mutex::new(state),
            }),
        }
    }

    /// A session continuing the state carried by `token`.
    pub fn from_token(token: &SessionToken) -> Self {
        Self::from_state(token.state().clone())
    }

    /// Decodes `encoded` and continues its session. Every malformed input is a typed
    /// [`TokenError`].
    pub fn from_encoded(encoded: &str) -> Result<Self, TokenError> {
        Ok(Self::from_token(&SessionToken::decode(encoded)?))
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> SessionState {
        self.lock().clone()
    }

    /// The current state as an (unsigned) token.
    pub fn token(&self) -> SessionToken {
        SessionToken::new(self.snapshot())
    }

    /// Merges another state of this session (from a token that came with a request, or from a
    /// session store) by pointwise maximum. Returns false if `other` belongs to another session.
    pub fn merge(&self, other: &SessionState) -> bool {
        let mut state = self.lock();
        let at = merge_coarsening(&state, other);
        state.merge(other, at)
    }

    /// Takes in what another state has observed, whichever session it belongs to
    /// ([`SessionState::absorb`]).
    pub fn absorb(&self, other: &SessionState) {
        let mut state = self.lock();
        let at = merge_coarsening(&state, other);
        state.absorb(other, at);
    }

    /// Runs `f` with the state locked. Keep `f` short: every request of the session waits on it.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut SessionState) -> R) -> R {
        f(&mut self.lock())
    }

    /// Pairs `request` with this session, ready for the session layer.
    #[inline]
    pub fn request<R>(&self, request: R) -> crate::SessionRequest<R> {
        crate::SessionRequest::new(self.clone(), request)
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // breaks its invariants (every mutation is a monotone max), so poisoning is ignored.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::StoreId;

    const AT: Coarsening = Coarsening {
        now_micros: 0,
        window_micros: 1,
    };

    #[test]
    fn write_ids_are_sequential_and_clock_monotonic() {
        let mut s = SessionState::new(SessionId::from_u128(7));
        let (w1, t1) = s.next_write(100);
        let (w2, t2) = s.next_write(50);
        assert_eq!((w1.seq, w2.seq), (1, 2));
        assert!(t2 > t1);
        assert_eq!(WriteId::parse(&w2.to_string()), Some(w2));
        assert_eq!(WriteId::parse("xyz-1"), None);
        assert_eq!(WriteId::parse(&format!("{}-x", w2.session)), None);
    }

    #[test]
    fn merge_ignores_other_sessions_and_never_regresses() {
        let scope = ScopeKey::new(StoreId::new(0), b"k");
        let mut a = SessionState::new(SessionId::from_u128(1));
        a.advance(scope, Version::new(9), AT);
        let mut b = SessionState::new(SessionId::from_u128(1));
        b.advance(scope, Version::new(3), AT);
        b.next_write(10);
        assert!(a.merge(&b, AT));
        assert_eq!(a.vector().get(scope), Some(Version::new(9)));
        assert_eq!(a.write_seq(), 1);
        let other = SessionState::new(SessionId::from_u128(2));
        assert!(!a.merge(&other, AT));
    }

    #[test]
    fn an_exhausted_write_sequence_saturates_instead_of_panicking() {
        let mut s = SessionState::from_parts(
            SessionId::from_u128(1),
            u64::MAX,
            HybridTimestamp::new(u64::MAX),
            VersionVector::default(),
        );
        let (id, t) = s.next_write(5);
        assert_eq!(id.seq, u64::MAX);
        assert_eq!(t.get(), u64::MAX);
        s.skip_write_ids(10);
        assert_eq!(s.write_seq(), u64::MAX);
    }

    #[test]
    fn derived_ids_differ_per_key() {
        assert_ne!(SessionId::derive(b"a"), SessionId::derive(b"b"));
        assert_ne!(SessionId::random(), SessionId::random());
    }
}
