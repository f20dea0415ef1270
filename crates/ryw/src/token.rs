//! The portable session token: a compact, versioned binary form of a session's state, then
//! base64url (no padding).
//!
//! A token is immutable: every response of the session layer yields a new one, and tokens from
//! concurrent requests of one session merge by pointwise maximum
//! ([`crate::session::Session::merge`]). One token carries a section per store, so one session
//! can span several stores.
//!
//! Decoding untrusted input never panics and never allocates without bound: input longer than
//! [`MAX_TOKEN_LEN`] characters is rejected before any decoding, counts are checked against the
//! bytes that remain, and every failure is a distinct [`TokenError`].
//!
//! # Format (version 2)
//!
//! ```text
//! token    := 0x01 flags session_id[16] varint(write_seq) varint(clock)
//!             [varint(issued_at) varint(expires_at) varint(issued_at - started_at)]  if TIMES
//!             [binding[8]]                                   if flags & BOUND
//!             varint(n_sections) section*
//!             [key_id[1] tag[32]]                            if flags & SIGNED
//! section  := kind[1] varint(len) payload[len]               kind 0x01 = store versions,
//!                                                            kind 0x02 = store context,
//!                                                            kind 0x03 = record
//! record   := varint(version)                                at most one per token
//! store    := store_id[1] sflags[1] [varint(horizon version)]  if sflags & HORIZON
//!             varint(n_entries) (hash56[7] varint(version delta))*
//! context  := store_id[1] varint(version) bytes[..]          at most 160 bytes, 2 per token
//! ```
//!
//! A record section says that every entry coarsened into the token's horizons is in the
//! session's shared record at that version or later ([`crate::record`]); without one, a
//! horizon covers its store's coarsened entries.
//!
//! `started_at` is when the session started (its first signed token), carried unchanged through
//! every re-issue. Version 1 tokens (without `started_at`, and with a time after the horizon
//! version, when horizons expired) are still read; the horizon time is ignored, because a horizon
//! no longer expires.
//!
//! Entries of a section are sorted by version and delta-encoded, so a session's versions (usually
//! close together) take a few bytes each. A 4-scope token is about 100 characters unsigned (at most
//! 110 for realistic versions), 159 signed and 170 bound to a principal. Signing, expiry, revocation and principal binding live in
//! [`crate::signing`]: this module only reads and writes the format, and [`SessionToken::decode`]
//! does not verify anything.
//!
//! # Example
//!
//! ```
//! use ryw::session::{SessionId, SessionState};
//! use ryw::token::{SessionToken, TokenError};
//! use ryw::version::{ScopeKey, StoreId, Version};
//!
//! let mut state = SessionState::new(SessionId::derive(b"user:7"));
//! state.advance(ScopeKey::new(StoreId::new(1), b"posts/1"), Version::new(42));
//!
//! let encoded = SessionToken::new(state.clone()).encode()?;
//! let decoded = SessionToken::decode(&encoded)?;
//! assert_eq!(decoded.state(), &state);
//!
//! assert!(matches!(SessionToken::decode("not base64!"), Err(TokenError::NotBase64)));
//! # Ok::<(), TokenError>(())
//! ```

use crate::session::{Session, SessionState, StoreContext};
use crate::version::{Entry, ScopeKey, StoreId, VersionVector};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use smallvec::SmallVec;
use std::fmt;

mod read;

pub(crate) use read::decode_signed;

/// The largest encoded token accepted or produced, in characters (1 KiB).
pub const MAX_TOKEN_LEN: usize = 1024;

/// The format version this build writes (it also reads version 1).
pub const FORMAT_VERSION: u8 = 2;

/// The previous format, still read: its horizons carried an expiry time, now ignored.
const FORMAT_VERSION_1: u8 = 1;

const FLAG_SIGNED: u8 = 0b001;
const FLAG_TIMES: u8 = 0b010;
const FLAG_BOUND: u8 = 0b100;
const KNOWN_FLAGS: u8 = FLAG_SIGNED | FLAG_TIMES | FLAG_BOUND;
const SECTION_STORE: u8 = 0x01;
const SECTION_CONTEXT: u8 = 0x02;
const SECTION_RECORD: u8 = 0x03;
const STORE_FLAG_HORIZON: u8 = 0b1;
const SIGNATURE_LEN: usize = 1 + 32;
const MAX_BYTES: usize = MAX_TOKEN_LEN / 4 * 3;

/// The length of a principal binding: a keyed fingerprint of the principal, never the principal.
pub const BINDING_LEN: usize = 8;

/// Why a token could not be decoded (or encoded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is empty.
    #[error("session token is empty")]
    Empty,
    /// The token is longer than [`MAX_TOKEN_LEN`] characters.
    #[error("session token is {len} characters, more than the {max} allowed")]
    Oversized {
        /// The length presented (or that encoding would produce).
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The token is not base64url without padding.
    #[error("session token is not base64url")]
    NotBase64,
    /// The token ended in the middle of a field.
    #[error("session token is truncated (while reading {field})")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The token was written by a format version this build does not read (or is not a session
    /// token at all: its first byte is the version).
    #[error(
        "session token format version {0} is not supported (this build reads {FORMAT_VERSION}): \
         not a session token, or one from a newer release"
    )]
    UnknownVersion(u8),
    /// The token sets flags this build does not know.
    #[error("session token sets unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The token carries a section of a kind this build does not know.
    #[error("session token carries an unknown section kind {0:#04x}")]
    UnknownSection(u8),
    /// The token carries more exact scopes than a session may hold.
    #[error("session token carries {count} scopes, more than the {max} allowed")]
    TooManyScopes {
        /// Scopes in the token.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// The token is structurally invalid (duplicate scope or store, bad varint, overflow,
    /// trailing bytes...).
    #[error("session token is malformed: {0}")]
    Malformed(&'static str),
}

impl TokenError {
    /// True for errors caused by the token's length alone.
    pub fn is_oversized(&self) -> bool {
        matches!(self, TokenError::Oversized { .. })
    }

    /// True when the token ended early.
    pub fn is_truncated(&self) -> bool {
        matches!(self, TokenError::Truncated { .. })
    }

    /// True when the token was produced by a newer or unknown format (version, flags, sections).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            TokenError::UnknownVersion(_)
                | TokenError::UnknownFlags(_)
                | TokenError::UnknownSection(_)
        )
    }
}

/// The signature reserved in the token format: a key id and a 32-byte tag (HMAC-SHA256).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    /// Which key of the ring signed the token.
    pub key_id: u8,
    /// The tag.
    pub tag: [u8; 32],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The portable, immutable form of a session's state.
#[derive(Clone, PartialEq)]
pub struct SessionToken {
    state: SessionState,
    issued_at: Option<u64>,
    expires_at: Option<u64>,
    binding: Option<[u8; BINDING_LEN]>,
    signature: Option<Signature>,
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Contents stay out of logs: only the id and the shape.
        f.debug_struct("SessionToken")
            .field("session", &self.state.id())
            .field("scopes", &self.state.vector().len())
            .field("bound", &self.binding.is_some())
            .field("signed", &self.signature.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionToken {
    /// A token for `state`, without times or signature.
    pub fn new(state: SessionState) -> Self {
        SessionToken {
            state,
            issued_at: None,
            expires_at: None,
            binding: None,
            signature: None,
        }
    }

    /// The session state carried.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Takes the state out.
    pub fn into_state(self) -> SessionState {
        self.state
    }

    /// Issue and expiry times (seconds since the Unix epoch), when present.
    pub fn times(&self) -> Option<(u64, u64)> {
        Some((self.issued_at?, self.expires_at?))
    }

    /// Sets issue and expiry times (seconds since the Unix epoch). Clears any signature.
    pub fn with_times(mut self, issued_at: u64, expires_at: u64) -> Self {
        self.issued_at = Some(issued_at);
        self.expires_at = Some(expires_at);
        self.signature = None;
        self
    }

    /// The principal binding (a keyed fingerprint of the principal the token was issued to), when
    /// the token carries one. It is not verified here; see [`crate::signing`].
    pub fn binding(&self) -> Option<&[u8; BINDING_LEN]> {
        self.binding.as_ref()
    }

    /// Sets the principal binding. Clears any signature.
    pub fn with_binding(mut self, binding: [u8; BINDING_LEN]) -> Self {
        self.binding = Some(binding);
        self.signature = None;
        self
    }

    /// The signature as received, when the token carries one. It is not verified here.
    pub fn signature(&self) -> Option<&Signature> {
        self.signature.as_ref()
    }

    /// Attaches a signature computed over [`SessionToken::signed_bytes`].
    pub fn with_signature(mut self, signature: Signature) -> Self {
        self.signature = Some(signature);
        self
    }

    /// The bytes a signature covers: the whole binary token up to (not including) the key id and
    /// tag, with the SIGNED flag set.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, TokenError> {
        let mut out = Vec::with_capacity(128);
        self.write_body(&mut out, true)?;
        Ok(out)
    }

    /// Encodes to base64url. Fails only when even the coarsened state would exceed
    /// [`MAX_TOKEN_LEN`] (a session spanning dozens of stores at once).
    ///
    /// Exact entries are coarsened into store horizons (safe: fences become stricter) until the
    /// token fits.
    pub fn encode(&self) -> Result<String, TokenError> {
        let mut bytes = Vec::with_capacity(96);
        self.write_body(&mut bytes, self.signature.is_some())?;
        if let Some(sig) = &self.signature {
            bytes.push(sig.key_id);
            bytes.extend_from_slice(&sig.tag);
        }
        encode_base64(&bytes)
    }

    fn write_body(&self, out: &mut Vec<u8>, signed: bool) -> Result<(), TokenError> {
        write_body(
            out,
            &self.state,
            self.issued_at.zip(self.expires_at),
            self.binding.as_ref(),
            signed,
        )
    }

    /// Renames every exact scope of the decoded state with `f` (a bijection: an authority undoing
    /// its scope mask after the signature verified).
    pub(crate) fn map_scopes(&mut self, f: impl Fn(ScopeKey) -> ScopeKey) {
        self.state.vector_mut().map_scopes(f);
    }
}

fn encode_base64(bytes: &[u8]) -> Result<String, TokenError> {
    if bytes.len() > MAX_BYTES {
        return Err(TokenError::Oversized {
            len: base64_len(bytes.len()),
            max: MAX_TOKEN_LEN,
        });
    }
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Writes the binary token up to the signature (with the SIGNED flag when `signed`), coarsening
/// exact entries into store horizons until it fits.
fn write_body(
    out: &mut Vec<u8>,
    state: &SessionState,
    times: Option<(u64, u64)>,
    binding: Option<&[u8; BINDING_LEN]>,
    signed: bool,
) -> Result<(), TokenError> {
    write_body_masked(out, state, times, binding, signed, None)
}

/// A renaming of 56-bit scope hashes applied as they are written: an authority's keyed mask, a
/// bijection of the low 56 bits (see [`crate::signing`]).
pub(crate) type ScopeRename<'a> = &'a dyn Fn(u64) -> u64;

/// The signed form, for the token authority: `state` with its issue and expiry `times`, an
/// optional principal `binding` and the scope hashes renamed by `mask`, then `key_id` and the tag
/// `sign` computes over the body, base64url-encoded.
pub(crate) fn encode_signed(
    state: &SessionState,
    times: (u64, u64),
    binding: Option<&[u8; BINDING_LEN]>,
    mask: ScopeRename<'_>,
    key_id: u8,
    sign: impl FnOnce(&[u8]) -> [u8; 32],
) -> Result<String, TokenError> {
    let mut bytes = Vec::with_capacity(160);
    write_body_masked(&mut bytes, state, Some(times), binding, true, Some(mask))?;
    let tag = sign(&bytes);
    bytes.push(key_id);
    bytes.extend_from_slice(&tag);
    encode_base64(&bytes)
}

/// [`write_body`] with the scope hashes renamed by `mask` (signed tokens of an authority).
fn write_body_masked(
    out: &mut Vec<u8>,
    state: &SessionState,
    times: Option<(u64, u64)>,
    binding: Option<&[u8; BINDING_LEN]>,
    signed: bool,
    mask: Option<ScopeRename<'_>>,
) -> Result<(), TokenError> {
    // Coarsen until the entries fit, keeping a margin for the signature.
    let budget = MAX_BYTES - SIGNATURE_LEN;
    let mut coarsened: Option<VersionVector> = None;
    loop {
        let vector = coarsened.as_ref().unwrap_or(state.vector());
        out.clear();
        write_header(out, state, times, binding, signed);
        // The record section says the state's coarsened entries are all in the shared record at
        // that version: not when some are only in this process, or coarsened to fit here.
        let record = match state.record() {
            Some(v) if v > 0 && coarsened.is_none() && state.unflushed().is_empty() => Some(v),
            _ => None,
        };
        write_sections(out, vector, state.contexts(), mask, record);
        if out.len() <= budget {
            return Ok(());
        }
        if vector.entries().next().is_none() {
            return Err(TokenError::Oversized {
                len: base64_len(out.len() + SIGNATURE_LEN),
                max: MAX_TOKEN_LEN,
            });
        }
        let mut next = vector.clone();
        next.enforce_cap(vector.len() / 2);
        coarsened = Some(next);
    }
}

fn base64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

fn write_header(
    out: &mut Vec<u8>,
    state: &SessionState,
    times: Option<(u64, u64)>,
    binding: Option<&[u8; BINDING_LEN]>,
    signed: bool,
) {
    let mut flags = 0;
    if signed {
        flags |= FLAG_SIGNED;
    }
    if times.is_some() {
        flags |= FLAG_TIMES;
    }
    if binding.is_some() {
        flags |= FLAG_BOUND;
    }
    out.push(FORMAT_VERSION);
    out.push(flags);
    out.extend_from_slice(&state.id().to_bytes());
    put_varint(out, state.write_seq());
    put_varint(out, state.clock().get());
    if let Some((issued, expires)) = times {
        put_varint(out, issued);
        put_varint(out, expires);
        // The session's age at issue (0 for a session never signed before: this token starts
        // it), so the start costs a byte or two.
        put_varint(
            out,
            match state.started_at() {
                0 => 0,
                started => issued.saturating_sub(started),
            },
        );
    }
    if let Some(b) = binding {
        out.extend_from_slice(b);
    }
}

fn write_sections(
    out: &mut Vec<u8>,
    vector: &VersionVector,
    contexts: &[StoreContext],
    mask: Option<ScopeRename<'_>>,
    record: Option<u64>,
) {
    let mut entries: SmallVec<[Entry; 8]> = vector.entries().collect();
    entries.sort_unstable_by_key(|e| (e.scope.store(), e.version, e.scope));
    let mut stores: SmallVec<[StoreId; 4]> = entries.iter().map(|e| e.scope.store()).collect();
    stores.extend(vector.horizons().map(|h| h.store));
    stores.sort_unstable();
    stores.dedup();
    put_varint(
        out,
        (stores.len() + contexts.len() + usize::from(record.is_some())) as u64,
    );
    if let Some(version) = record {
        out.push(SECTION_RECORD);
        let mut payload = SmallVec::<[u8; 10]>::new();
        put_varint(&mut payload, version);
        put_varint(out, payload.len() as u64);
        out.extend_from_slice(&payload);
    }
    for c in contexts {
        out.push(SECTION_CONTEXT);
        let mut payload = SmallVec::<[u8; 192]>::new();
        payload.push(c.store.get());
        put_varint(&mut payload, c.version.get());
        payload.extend_from_slice(&c.bytes);
        put_varint(out, payload.len() as u64);
        out.extend_from_slice(&payload);
    }
    for store in stores {
        out.push(SECTION_STORE);
        // Reserve one byte for the length; sections are short, and a longer length shifts.
        let len_at = out.len();
        out.push(0);
        let start = out.len();
        out.push(store.get());
        match vector.horizon(store) {
            Some(h) => {
                out.push(STORE_FLAG_HORIZON);
                put_varint(out, h.version.get());
            }
            None => out.push(0),
        }
        let mine = entries.iter().filter(|e| e.scope.store() == store);
        put_varint(out, mine.clone().count() as u64);
        let mut prev = 0u64;
        for e in mine {
            let hash = match mask {
                Some(rename) => rename(e.scope.hash56()),
                None => e.scope.hash56(),
            };
            out.extend_from_slice(&hash.to_le_bytes()[..7]);
            put_varint(out, e.version.get() - prev);
            prev = e.version.get();
        }
        let len = out.len() - start;
        if len < 0x80 {
            out[len_at] = len as u8;
        } else {
            let mut prefix = SmallVec::<[u8; 10]>::new();
            put_varint(&mut prefix, len as u64);
            out.splice(len_at..len_at + 1, prefix);
        }
    }
}

/// LEB128: seven bits a byte, low bits first, into any byte buffer.
fn put_varint(out: &mut impl Extend<u8>, mut v: u64) {
    while v >= 0x80 {
        out.extend([(v as u8) | 0x80]);
        v >>= 7;
    }
    out.extend([v as u8]);
}

/// A session and its portable form (here rather than in [`crate::session`], which knows nothing
/// of tokens).
impl Session {
    /// A session continuing the state carried by `token`.
    pub fn from_token(token: &SessionToken) -> Self {
        Self::from_state(token.state().clone())
    }

    /// Decodes `encoded` and continues its session. Every malformed input is a typed
    /// [`TokenError`].
    pub fn from_encoded(encoded: &str) -> Result<Self, TokenError> {
        Ok(Self::from_token(&SessionToken::decode(encoded)?))
    }

    /// The current state as an (unsigned) token.
    pub fn token(&self) -> SessionToken {
        SessionToken::new(self.snapshot())
    }
}

/// `state` with a horizon (store 2), a store context (store 3) and a start time: a state whose
/// token has every kind of section and field.
#[cfg(test)]
pub(crate) fn with_every_section(mut state: SessionState, started_at: u64) -> SessionState {
    use crate::version::{StoreHorizon, Version};
    state.vector_mut().raise_horizon(StoreHorizon {
        store: StoreId::new(2),
        version: Version::new(77),
    });
    state.advance_context(StoreContext {
        store: StoreId::new(3),
        version: Version::new(99),
        bytes: vec![7u8; 5].into(),
    });
    state.set_started_at(started_at);
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{SessionId, MAX_CONTEXT_LEN};
    use crate::version::{StoreHorizon, Version, MAX_SCOPE_CAP};

    fn state_with(n: u64, base: u64) -> SessionState {
        let mut s = SessionState::new(SessionId::from_u128(
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ));
        s.next_write(1_764_000_000_000_000);
        for i in 0..n {
            s.advance(
                ScopeKey::new(StoreId::new(1), format!("item/{i}").as_bytes()),
                Version::new(base + i * 1_000),
            );
        }
        s
    }

    #[test]
    fn round_trip_with_times_signature_and_horizon() {
        let mut s = state_with(3, 7);
        s.vector_mut().raise_horizon(StoreHorizon {
            store: StoreId::new(9),
            version: Version::new(77),
        });
        assert!(s.advance_context(StoreContext {
            store: StoreId::new(3),
            version: Version::new(99),
            bytes: vec![7u8; 120].into(),
        }));
        s.set_started_at(4);
        let t = SessionToken::new(s)
            .with_times(10, 20)
            .with_signature(Signature {
                key_id: 3,
                tag: [0xab; 32],
            });
        let enc = t.encode().unwrap();
        let back = SessionToken::decode(&enc).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.times(), Some((10, 20)));
        assert_eq!(back.signature().unwrap().key_id, 3);
        assert_eq!(
            back.state().context(StoreId::new(3)).unwrap().bytes.len(),
            120
        );
        assert!(!format!("{back:?}").contains("171"));
    }

    #[test]
    fn contexts_keep_the_newest_and_are_bounded() {
        let mut s = state_with(0, 1);
        let ctx = |v: u64, len: usize| StoreContext {
            store: StoreId::new(1),
            version: Version::new(v),
            bytes: vec![v as u8; len].into(),
        };
        assert!(s.advance_context(ctx(5, 10)));
        assert!(!s.advance_context(ctx(4, 10)), "older");
        assert!(!s.advance_context(ctx(9, MAX_CONTEXT_LEN + 1)), "too long");
        let mut other = s.clone();
        assert!(other.advance_context(ctx(8, 10)));
        s.merge(&other);
        assert_eq!(s.context(StoreId::new(1)).unwrap().version, Version::new(8));
        // A token whose context section is duplicated is malformed.
        let enc = SessionToken::new(s).encode().unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&enc).unwrap();
        let back = SessionToken::from_bytes(&bytes).unwrap();
        assert_eq!(back.state().context(StoreId::new(1)).unwrap().bytes[0], 8);
    }

    #[test]
    fn four_scope_token_is_compact() {
        // Versions like Scylla microsecond timestamps, a few ms apart.
        let s = state_with(4, 1_764_000_000_000_000);
        let enc = SessionToken::new(s).encode().unwrap();
        assert!(enc.len() <= 110, "{} chars", enc.len());
    }

    #[test]
    fn typed_errors() {
        let good = SessionToken::new(state_with(2, 5)).encode().unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&good).unwrap();
        assert_eq!(SessionToken::decode(""), Err(TokenError::Empty));
        assert!(SessionToken::decode(&"A".repeat(2000))
            .unwrap_err()
            .is_oversized());
        assert_eq!(SessionToken::decode("***"), Err(TokenError::NotBase64));
        for cut in 1..bytes.len() {
            let e = SessionToken::from_bytes(&bytes[..cut]).unwrap_err();
            assert!(
                e.is_truncated() || matches!(e, TokenError::Malformed(_)),
                "cut {cut}: {e:?}"
            );
        }
        let mut v = bytes.clone();
        v[0] = 3;
        assert_eq!(
            SessionToken::from_bytes(&v),
            Err(TokenError::UnknownVersion(3))
        );
        let mut v = bytes.clone();
        v[1] = 0x80;
        assert_eq!(
            SessionToken::from_bytes(&v),
            Err(TokenError::UnknownFlags(0x80))
        );
        let mut v = bytes.clone();
        v.push(0);
        assert_eq!(
            SessionToken::from_bytes(&v),
            Err(TokenError::Malformed("trailing bytes"))
        );
        // Replace the store section kind.
        let mut v = bytes.clone();
        let kind_at = 2 + 16 + 1 + 8 + 1;
        assert_eq!(v[kind_at], SECTION_STORE);
        v[kind_at] = 0x7f;
        assert_eq!(
            SessionToken::from_bytes(&v),
            Err(TokenError::UnknownSection(0x7f))
        );
    }

    #[test]
    fn encode_coarsens_rather_than_overflow() {
        let mut s = SessionState::new(SessionId::from_u128(1));
        *s.vector_mut() = VersionVector::with_cap(MAX_SCOPE_CAP);
        for i in 0..MAX_SCOPE_CAP as u64 {
            s.advance(
                ScopeKey::from_hash(StoreId::new((i % 2) as u8), i),
                Version::new(u64::MAX - (i << 50)),
            );
        }
        let enc = SessionToken::new(s.clone()).encode().unwrap();
        assert!(enc.len() <= MAX_TOKEN_LEN);
        let back = SessionToken::decode(&enc).unwrap();
        // Whatever was coarsened is still required: the decoded state dominates the original.
        assert!(back.state().vector().dominates(s.vector()));
        assert!(back.state().vector().len() < s.vector().len());
    }

    #[test]
    fn a_session_spanning_too_many_stores_is_a_typed_error() {
        let mut s = SessionState::new(SessionId::from_u128(1));
        for store in 0..=255u8 {
            s.vector_mut().raise_horizon(StoreHorizon {
                store: StoreId::new(store),
                version: Version::new(u64::MAX),
            });
        }
        assert!(SessionToken::new(s).encode().unwrap_err().is_oversized());
    }

    #[test]
    fn version_1_tokens_are_read_and_their_horizon_time_ignored() {
        let mut s = state_with(2, 5);
        s.vector_mut().raise_horizon(StoreHorizon {
            store: StoreId::new(1),
            version: Version::new(3_000),
        });
        let mut v2 = Vec::new();
        write_body(&mut v2, &s, None, None, false).unwrap();
        // Rewrite as version 1: the same bytes with a time after the horizon version.
        let mut v1 = Vec::new();
        v1.push(1u8);
        v1.extend_from_slice(&v2[1..]);
        let mut header = Vec::new();
        write_header(&mut header, &s, None, None, false);
        let section = header.len() + 1; // after the section count
        assert_eq!(v1[section], SECTION_STORE);
        let horizon_at = section + 2 + 2; // kind, length, store id, flags
        assert_eq!(v1[horizon_at - 1], STORE_FLAG_HORIZON);
        let horizon_len = {
            let mut n = 0;
            while v1[horizon_at + n] & 0x80 != 0 {
                n += 1;
            }
            n + 1
        };
        v1.insert(horizon_at + horizon_len, 0x05); // an expired time: 5 µs after the epoch
        v1[section + 1] += 1;
        let back = SessionToken::from_bytes(&v1).unwrap();
        assert_eq!(back.state(), &s);
        assert_eq!(
            back.state()
                .vector()
                .horizon(StoreId::new(1))
                .unwrap()
                .version,
            Version::new(3_000)
        );
    }

    #[test]
    fn unsigned_token_is_pinned() {
        // Pinned: tokens already handed out must decode, and re-encode, to the same bytes.
        let s = with_every_section(state_with(3, 1_764_000_000_000_000), 1_790_000_000 - 300);
        let token = SessionToken::new(s).with_times(1_790_000_000, 1_790_003_600);
        let encoded = token.encode().unwrap();
        assert_eq!(
            encoded,
            "AgJ3ZlVEMyIRAO_Nq4lnRSMBAYCAiYuUi5EDgPfE1QaQk8XVBqwCAwIHA2MHBwcHBwEkAQAD-JVDdgb4CoCAiYu\
             Ui5EDDESmtX5H1-gHnoZbPSUMf-gHAQQCAU0A"
        );
        assert_eq!(SessionToken::decode(&encoded).unwrap(), token);
    }
}
