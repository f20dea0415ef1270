//! What the outbox keeps of a deferred write, and its binary encoding.
//!
//! An entry holds everything needed to send the write again, from this process or another after a
//! crash, as the same write: its [`WriteId`] and timestamp, whether an attempt may have applied,
//! the session's state (as an unsigned session token), the scopes it writes (so that reads of
//! them say [`ryw::Visibility::Queued`]), when it was deferred, and the stamped store request in
//! the adapter's durable encoding ([`DurableRequest`]).
//!
//! The encoding is versioned, bounds-checked and checksummed: a truncated, oversized or altered
//! entry decodes to a typed [`DecodeError`], never a panic and never a different write (fuzzed by
//! `crates/ryw-outbox/fuzz`, tested by property tests). The checksum guards against damage, not
//! against someone who can write the file.
//!
//! # Format
//!
//! `RYWO`, the format version (one byte), the fields (little-endian integers, `u32` lengths), and
//! a checksum of every byte before it:
//!
//! | version | checksum | |
//! | --- | --- | --- |
//! | 3 | CRC-32C (Castagnoli), 4 bytes | written by this build |
//! | 2 | 64-bit FNV-1a, 8 bytes | still read; an entry rewritten (marked sent, a dead letter queued again) is written as version 3 |
//!
//! The fields are the same in both. No change of a single byte survives either checksum (CRC-32C
//! detects every burst of up to 32 bits). A version this build does not know (a later build's) is
//! refused with [`DecodeError::Format`], never guessed at.
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
/// The format version [`Entry::encode`] writes, and its checksum.
const VERSION: u8 = 3;
const SEAL: Seal = Seal::Crc32c;

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

/// The checksum that ends an entry of a format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seal {
    /// Version 2: a 64-bit FNV-1a.
    Fnv1a64,
    /// Version 3: CRC-32C.
    Crc32c,
}

impl Seal {
    /// The checksum of `version`, or `None` for a version this build does not read.
    fn of(version: u8) -> Option<Seal> {
        match version {
            2 => Some(Seal::Fnv1a64),
            3 => Some(Seal::Crc32c),
            _ => None,
        }
    }

    /// Its length in bytes.
    fn len(self) -> usize {
        match self {
            Seal::Fnv1a64 => 8,
            Seal::Crc32c => 4,
        }
    }

    /// Appends the checksum of everything in `out`.
    fn append(self, out: &mut Vec<u8>) {
        match self {
            Seal::Fnv1a64 => {
                let sum = fnv1a64(out);
                out.extend_from_slice(&sum.to_le_bytes());
            }
            Seal::Crc32c => {
                let sum = crc32c::crc32c(out);
                out.extend_from_slice(&sum.to_le_bytes());
            }
        }
    }

    /// Whether `stored` is the checksum of `body`.
    fn verifies(self, body: &[u8], stored: &[u8]) -> bool {
        match self {
            Seal::Fnv1a64 => stored == fnv1a64(body).to_le_bytes(),
            Seal::Crc32c => stored == crc32c::crc32c(body).to_le_bytes(),
        }
    }
}

/// 64-bit FNV-1a, the checksum of format version 2 (read, no longer written): every step is a
/// bijection of the state, so two inputs that differ in one byte always hash differently.
fn fnv1a64(bytes: &[u8]) -> u64 {
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
    /// The entry's bytes, in the current format version (3).
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
        SEAL.append(&mut out);
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

    /// Decodes the bytes of [`Entry::encode`], of this build or of an earlier one (format
    /// version 2 or 3).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let seal = match (bytes.get(..4), bytes.get(4)) {
            (Some(magic), Some(&version)) if magic == MAGIC => Seal::of(version),
            _ => None,
        }
        .ok_or(DecodeError::Format)?;
        let Some(split) = bytes.len().checked_sub(seal.len()).filter(|&n| n >= 5) else {
            return Err(DecodeError::Truncated);
        };
        let (body, sum) = bytes.split_at(split);
        if !seal.verifies(body, sum) {
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
            may_have_applied: seq.is_multiple_of(2),
            deferred_at: 1_800_000_000 + seq,
            scopes: (0..scopes)
                .map(|i| ScopeKey::new(StoreId::new(i as u8), &seq.to_le_bytes()))
                .collect(),
            session: "s".repeat(seq as usize % 100),
            request,
        }
    }

    /// `e`'s bytes in format version `version`, as the build that wrote it did (the fields are
    /// the same in every version; the checksum is the version's).
    fn encoded_as(e: &Entry, version: u8) -> Vec<u8> {
        let mut bytes = e.encode();
        bytes.truncate(bytes.len() - SEAL.len());
        bytes[4] = version;
        Seal::of(version).unwrap().append(&mut bytes);
        bytes
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
        fn every_version_reads_back_and_every_byte_flip_is_typed(version in 2u8..=3, seq in 0u64..1000, flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let e = entry(seq, 3, vec![7; 40]);
            let bytes = encoded_as(&e, version);
            prop_assert_eq!(Entry::decode(&bytes), Ok(e.clone()));
            // Rewritten, it is of the current version.
            prop_assert_eq!(e.encode(), encoded_as(&e, VERSION));
            let mut altered = bytes;
            let i = flip.index(altered.len());
            altered[i] ^= 1 << bit;
            prop_assert!(Entry::decode(&altered).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Entry::decode(&bytes);
        }
    }

    #[test]
    fn the_current_version_is_read_and_no_other_is_guessed_at() {
        assert_eq!(Seal::of(VERSION), Some(SEAL));
        let e = entry(5, 2, vec![1, 2, 3]);
        for version in (0..=u8::MAX).filter(|v| ![2, 3].contains(v)) {
            // Sealed as the newest format would be, or as the oldest: neither is read.
            let mut bytes = e.encode();
            bytes[4] = version;
            assert_eq!(Entry::decode(&bytes), Err(DecodeError::Format), "{version}");
            let mut bytes = encoded_as(&e, 2);
            bytes[4] = version;
            assert_eq!(Entry::decode(&bytes), Err(DecodeError::Format), "{version}");
        }
        assert_eq!(Entry::decode(b"RYWO"), Err(DecodeError::Format));
        assert_eq!(Entry::decode(b"RYWX\x03abcdefgh"), Err(DecodeError::Format));
        assert_eq!(Entry::decode(b"RYWO\x03abc"), Err(DecodeError::Truncated));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut bytes = entry(1, 0, vec![]).encode();
        // The request length is the four bytes before the checksum (the request is empty): claim
        // 4 GB, and seal it with a matching checksum, as a writer with a bug would.
        let n = bytes.len() - SEAL.len();
        bytes.truncate(n);
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        SEAL.append(&mut bytes);
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
