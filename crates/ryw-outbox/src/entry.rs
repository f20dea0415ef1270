//! What the outbox keeps of a deferred write, and its binary encoding.
//!
//! An entry holds everything needed to send the write again, from this process or another after a
//! crash, as the same write: its [`WriteId`] and timestamp, whether an attempt may have applied,
//! the session's state (as an unsigned session token), the scopes it writes (so that reads of
//! them say [`ryw::Visibility::Queued`]), when it was deferred, and the stamped store request in
//! the adapter's durable encoding ([`DurableRequest`]).
//!
//! The encoding is versioned, bounds-checked and checksummed (a 64-bit FNV-1a of everything
//! before it, which no change of a single byte survives): a truncated, oversized or altered
//! entry decodes to a typed [`DecodeError`], never a panic and never a different write (fuzzed by
//! `crates/ryw-outbox/fuzz`, tested by property tests). The checksum guards against damage, not
//! against someone who can write the file.
//!
//! ```
//! use ryw::clock::HybridTimestamp;
//! use ryw::{ScopeKey, Session, StoreId, WriteId};
//! use ryw_outbox::entry::Entry;
//!
//! let session = Session::new();
//! let entry = Entry {
//!     write_id: WriteId::new(session.id(), 7, 1),
//!     timestamp: HybridTimestamp::new(1_700_000_000_000_000),
//!     may_have_applied: true,
//!     deferred_at: 1_700_000_000,
//!     scopes: vec![ScopeKey::new(StoreId::new(0), b"k")],
//!     session: session.token().encode().unwrap(),
//!     request: b"the adapter's bytes".to_vec(),
//! };
//! let bytes = entry.encode();
//! assert_eq!(Entry::decode(&bytes).unwrap(), entry);
//! assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
//! ```

use ryw::clock::HybridTimestamp;
use ryw::{ScopeKey, SessionId, WriteId};

/// The encoding's first bytes: `RYWO` and the format version.
const MAGIC: &[u8; 4] = b"RYWO";
const VERSION: u8 = 2;

/// The most scopes one entry names.
pub const MAX_SCOPES: usize = 1024;
/// The largest session token an entry holds, in bytes.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;
/// The largest store request an entry holds, in bytes (DynamoDB's item limit is 400 KB; a
/// transaction of 100 items fits).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// A store request that can be kept on disk and sent again later, byte for byte the same write.
///
/// Whatever `encode` accepts, `decode` must rebuild: the outbox layer checks it before it answers
/// "deferred", and refuses the write ([`NotDeferrable`]) if not.
pub trait DurableRequest: Sized {
    /// Appends the request's encoding to `out`, or says why it cannot be kept.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), NotDeferrable>;

    /// Rebuilds a request from [`DurableRequest::encode`]'s bytes.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Why a write cannot be deferred; it keeps the error it failed with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("write cannot be deferred: {reason}")]
pub struct NotDeferrable {
    /// Why, for the caller.
    pub reason: &'static str,
}

/// Why stored bytes are not an entry (or not a request).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not an outbox entry, or of a format version this build does not read.
    #[error("not an outbox entry of a known format")]
    Format,
    /// The bytes end before the entry does.
    #[error("entry truncated")]
    Truncated,
    /// Bytes follow the end of the entry.
    #[error("trailing bytes after the entry")]
    Trailing,
    /// A length is beyond its bound.
    #[error("{what} too large: {len} bytes (at most {max})")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field's value is not valid.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The bytes are not what was written: the checksum does not match.
    #[error("entry damaged: checksum mismatch")]
    Checksum,
}

/// 64-bit FNV-1a: every step is a bijection of the state, so two inputs that differ in one byte
/// always hash differently.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One deferred write, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The write's id.
    pub write_id: WriteId,
    /// Its timestamp (ScyllaDB's cell timestamp; the clock other stores keep with the item).
    pub timestamp: HybridTimestamp,
    /// An attempt may have applied: replayed, it goes as a replay.
    pub may_have_applied: bool,
    /// When it was deferred, in seconds since the Unix epoch.
    pub deferred_at: u64,
    /// The scopes it writes.
    pub scopes: Vec<ScopeKey>,
    /// The session's state when it was deferred, as an unsigned session token.
    pub session: String,
    /// The stamped store request, in its [`DurableRequest`] encoding.
    pub request: Vec<u8>,
}

impl Entry {
    /// The entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.session.len() + self.request.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.write_id.session.as_u128().to_le_bytes());
        out.extend_from_slice(&self.write_id.lane.to_le_bytes());
        out.extend_from_slice(&self.write_id.seq.to_le_bytes());
        out.extend_from_slice(&self.timestamp.get().to_le_bytes());
        out.push(u8::from(self.may_have_applied));
        out.extend_from_slice(&self.deferred_at.to_le_bytes());
        out.extend_from_slice(&(self.scopes.len() as u32).to_le_bytes());
        for scope in &self.scopes {
            out.extend_from_slice(&scope.to_bits().to_le_bytes());
        }
        out.extend_from_slice(&(self.session.len() as u32).to_le_bytes());
        out.extend_from_slice(self.session.as_bytes());
        out.extend_from_slice(&(self.request.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.request);
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Checks the entry against the bounds [`Entry::decode`] enforces, so that nothing is kept
    /// that could not be read back.
    pub fn check(&self) -> Result<(), DecodeError> {
        for (what, len, max) in [
            ("scopes", self.scopes.len(), MAX_SCOPES),
            ("session", self.session.len(), MAX_SESSION_BYTES),
            ("request", self.request.len(), MAX_REQUEST_BYTES),
        ] {
            if len > max {
                return Err(DecodeError::TooLarge { what, len, max });
            }
        }
        Ok(())
    }

    /// Decodes [`Entry::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < 5 || &bytes[..4] != MAGIC || bytes[4] != VERSION {
            return Err(DecodeError::Format);
        }
        let Some(split) = bytes.len().checked_sub(8).filter(|&n| n >= 5) else {
            return Err(DecodeError::Truncated);
        };
        let (body, sum) = bytes.split_at(split);
        let mut stored = [0u8; 8];
        stored.copy_from_slice(sum);
        if checksum(body) != u64::from_le_bytes(stored) {
            return Err(DecodeError::Checksum);
        }
        let mut r = Reader(&body[5..]);
        let session_id = SessionId::from_u128(u128::from_le_bytes(r.array()?));
        let lane = r.u64()?;
        let seq = r.u64()?;
        let timestamp = HybridTimestamp::new(r.u64()?);
        let may_have_applied = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Invalid("replay flag")),
        };
        let deferred_at = r.u64()?;
        let count = r.len("scopes", MAX_SCOPES)?;
        let mut scopes = Vec::with_capacity(count.min(r.0.len() / 8));
        for _ in 0..count {
            scopes.push(ScopeKey::from_bits(r.u64()?));
        }
        let len = r.len("session", MAX_SESSION_BYTES)?;
        let session = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Invalid("session token"))?
            .to_owned();
        let len = r.len("request", MAX_REQUEST_BYTES)?;
        let request = r.take(len)?.to_vec();
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(Entry {
            write_id: WriteId::new(session_id, lane, seq),
            timestamp,
            may_have_applied,
            deferred_at,
            scopes,
            session,
            request,
        })
    }
}

/// A bounds-checked cursor over bytes, for [`DurableRequest::decode`] implementations: every
/// read fails with [`DecodeError::Truncated`] past the end, every length is checked against its
/// bound before anything is allocated. Integers are little-endian.
#[derive(Debug)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u32` length, at most `max` ([`DecodeError::TooLarge`] naming `what` otherwise).
    pub fn len(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        Ok(len)
    }

    /// Bytes prefixed by their `u32` length, at most `max` ([`Writer::bytes`]).
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.len(what, max)?;
        self.take(len)
    }

    /// A UTF-8 string prefixed by its `u32` length, at most `max` bytes ([`Writer::str`]).
    pub fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(what, max)?).map_err(|_| DecodeError::Invalid(what))
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The writing half of [`Reader`]: appends to a buffer.
#[derive(Debug)]
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    /// A byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A `u32` length (saturated: a longer field fails its reader's bound).
    pub fn len(&mut self, len: usize) {
        self.0
            .extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    }

    /// Bytes prefixed by their length.
    pub fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.0.extend_from_slice(v);
    }

    /// A string prefixed by its length.
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ryw::StoreId;

    fn entry(seq: u64, scopes: usize, request: Vec<u8>) -> Entry {
        Entry {
            write_id: WriteId::new(SessionId::from_u128(u128::MAX - seq as u128), 3, seq),
            timestamp: HybridTimestamp::new(seq * 1000),
            may_have_applied: seq % 2 == 0,
            deferred_at: 1_800_000_000 + seq,
            scopes: (0..scopes)
                .map(|i| ScopeKey::new(StoreId::new(i as u8), &seq.to_le_bytes()))
                .collect(),
            session: "s".repeat(seq as usize % 100),
            request,
        }
    }

    proptest! {
        #[test]
        fn round_trips(seq in any::<u64>(), scopes in 0usize..20, request in proptest::collection::vec(any::<u8>(), 0..300)) {
            let e = entry(seq % 10_000, scopes, request);
            prop_assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn every_prefix_is_truncated_and_every_byte_flip_is_typed(seq in 0u64..1000, cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = entry(seq, 3, vec![7; 40]).encode();
            let n = cut.index(bytes.len());
            prop_assert!(Entry::decode(&bytes[..n]).is_err());
            let mut altered = bytes.clone();
            let i = flip.index(altered.len());
            altered[i] ^= 1 << bit;
            // Never a panic, never a different write: an error.
            prop_assert!(Entry::decode(&altered).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Entry::decode(&bytes);
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut bytes = entry(1, 0, vec![]).encode();
        // The request length is the four bytes before the checksum (the request is empty): claim
        // 4 GB, and seal it with a matching checksum, as a writer with a bug would.
        let n = bytes.len();
        bytes[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let sum = checksum(&bytes[..n - 8]);
        bytes[n - 8..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Entry::decode(&bytes),
            Err(DecodeError::TooLarge {
                what: "request",
                ..
            })
        ));
        let mut bytes = entry(1, 0, vec![]).encode();
        bytes.push(0);
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::Checksum));
        assert_eq!(Entry::decode(b"RYWO\x09"), Err(DecodeError::Format));
        assert_eq!(Entry::decode(b"RYWO\x02abc"), Err(DecodeError::Truncated));
        let mut wide = entry(1, 0, vec![]);
        wide.scopes = vec![ScopeKey::from_bits(1); MAX_SCOPES + 1];
        assert!(matches!(
            wide.check(),
            Err(DecodeError::TooLarge { what: "scopes", .. })
        ));
    }
}
