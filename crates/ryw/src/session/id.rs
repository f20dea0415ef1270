//! Session and write identifiers, and the lanes that keep the write ids of every continuation
//! of a session apart.

use crate::clock::HybridTimestamp;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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
        let lo = crate::hash::stable_hash(client_key);
        let mut salted = Vec::with_capacity(client_key.len() + 8);
        salted.extend_from_slice(b"ryw:sid:");
        salted.extend_from_slice(client_key);
        let hi = crate::hash::stable_hash(&salted);
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

/// What the layer stamps on a write, once, before its first attempt: its [`WriteId`] and its
/// timestamp. Every attempt, every clone of the request and every write kept for later
/// ([`crate::stamp::StampedWrite`]) carries this one stamp (see [`crate::stamp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The write's id: its idempotency key at the store.
    pub write_id: WriteId,
    /// The session's hybrid clock reading for this write: after every version the session has
    /// seen. Stores with client timestamps (ScyllaDB) write it as the cell timestamp.
    pub timestamp: HybridTimestamp,
}

impl Stamp {
    /// The stamp of `write_id` at `timestamp`.
    pub const fn new(write_id: WriteId, timestamp: HybridTimestamp) -> Self {
        Stamp {
            write_id,
            timestamp,
        }
    }
}

/// The idempotency key of one write: the session, the lane of the continuation that stamped it,
/// and the write's sequence number in the session.
///
/// Stamped once, before the first attempt, and reused by every retry of that write in this
/// process or another one, so a store can recognise an attempt that already landed.
///
/// # Uniqueness
///
/// No two different writes carry the same id, however the session is continued. Every
/// [`SessionState`](super::SessionState) value (a new session, one decoded from a token or loaded from a session
/// store, every clone) draws its own random 64-bit *lane*, and stamps writes
/// `(session, lane, seq)` with a sequence that only grows. So two app instances continuing one
/// token at once, or two tabs, or a retry by a load balancer, stamp different ids for their
/// different writes: the lanes differ. Within one lane the sequence differs. Lanes come from a
/// per-process counter seeded by the operating system's generator and mixed by a bijection, so
/// the lanes of one process never repeat, and two processes share a lane with probability about
/// 2^-64 per pair of continuations.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId {
    /// The session that issued the write.
    pub session: SessionId,
    /// The continuation of the session that stamped the write (random per [`SessionState`](super::SessionState)).
    pub lane: u64,
    /// The write's sequence number within the session, starting at 1.
    pub seq: u64,
}

impl WriteId {
    /// A write id.
    pub const fn new(session: SessionId, lane: u64, seq: u64) -> Self {
        WriteId { session, lane, seq }
    }

    /// A 32-byte form: the session id, the lane, then the sequence, all little-endian.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&self.session.to_bytes());
        out[16..24].copy_from_slice(&self.lane.to_le_bytes());
        out[24..].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// A 128-bit digest of the id, for stores that cap the length of an idempotency key
    /// (DynamoDB's `ClientRequestToken`: 36 characters).
    ///
    /// It is SHA-256 of [`WriteId::to_bytes`], truncated to its first 16 bytes (read
    /// little-endian): stable across processes, builds and platforms, and collision resistant, so
    /// two different writes never share an idempotency key by accident (finding two ids with
    /// the same digest takes about 2^64 work).
    pub fn digest128(self) -> u128 {
        crate::hash::sha256_128(&self.to_bytes())
    }

    /// Parses the form written by `Display` (`<32 hex digits>-<16 hex digits>-<decimal seq>`).
    pub fn parse(text: &str) -> Option<Self> {
        let (id, rest) = text.split_once('-')?;
        let (lane, seq) = rest.split_once('-')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(id, 32)
            || !hex(lane, 16)
            || seq.is_empty()
            || !seq.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let session = SessionId(u128::from_str_radix(id, 16).ok()?);
        let lane = u64::from_str_radix(lane, 16).ok()?;
        let seq = seq.parse().ok()?;
        Some(WriteId { session, lane, seq })
    }
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}-{}", self.session, self.lane, self.seq)
    }
}

/// A lane no other [`SessionState`](super::SessionState) of this process has, and that another process draws with
/// probability about 2^-64: the splitmix64 finalizer (a bijection) of `seed + n * gamma`, where `n`
/// is never drawn twice in a process and `seed` comes once from the operating system's generator.
/// Threads take `n` in blocks of [`LANE_BLOCK`], so drawing a lane touches no shared cache line
/// (a continuation is made on every request).
pub(super) fn fresh_lane() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static BLOCKS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        /// The next `n` of this thread's block, and the end of the block.
        static NEXT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    let seed = *SEED.get_or_init(|| {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            // No mainstream platform fails here; fall back to a random session id's bits.
            seed = (SessionId::random().as_u128() as u64).to_le_bytes();
        }
        u64::from_le_bytes(seed)
    });
    let n = NEXT.with(|next| {
        let (mut n, mut end) = next.get();
        if n == end {
            n = BLOCKS
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(LANE_BLOCK);
            end = n.wrapping_add(LANE_BLOCK);
        }
        next.set((n.wrapping_add(1), end));
        n
    });
    crate::hash::splitmix64(seed.wrapping_add(n.wrapping_mul(crate::hash::GAMMA)))
}

/// How many lanes a thread takes at a time.
const LANE_BLOCK: u64 = 1 << 16;

impl fmt::Debug for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_session_ids_are_pinned() {
        // Pinned: a session id derived from a client key is the same in every process and build.
        assert_eq!(
            SessionId::derive(b"").as_u128(),
            0xb5a3_07e2_b2c7_c313_efd0_1f60_ba99_2926
        );
        assert_eq!(
            SessionId::derive(b"user:42").as_u128(),
            0x42eb_625c_d443_552e_9988_17be_e671_8248
        );
    }

    #[test]
    fn write_digests_are_sha256_pinned_and_distinct() {
        let session = SessionId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        // Pinned: the first 16 bytes of SHA-256 of the id's 32-byte form, little-endian. Stores
        // keep it as the write's idempotency key, so it never changes.
        assert_eq!(
            WriteId::new(session, 7, 42).digest128(),
            0xa0c9_ac6e_3b80_ca82_f8fd_1764_9099_add5
        );
        let mut seen = std::collections::HashSet::new();
        for id in [
            session,
            SessionId::from_u128(1),
            SessionId::from_u128(1 << 64),
        ] {
            for lane in [0, 1, 7, u64::MAX] {
                for seq in [1, 2, 42, 1 << 32] {
                    let digest = WriteId::new(id, lane, seq).digest128();
                    assert!(seen.insert(digest), "{id:?} {lane} {seq}");
                }
            }
        }
    }
}
