//! A write across its attempts and copies: stamped once, sent again only as the same write.
//!
//! Before its first attempt the layer gives a write a [`Stamp`]: a fresh [`crate::WriteId`] and
//! a timestamp from the session's hybrid clock, which the adapter writes into the request
//! ([`StoreAdapter::stamp_write`]). Every later attempt of the write, every clone of its request
//! and every [`StampedWrite`] kept for later sends that same stamped request, so a store that
//! sees it twice recognises one write.
//!
//! The **replay rule** is the layer's, whatever retry policy is installed: once an attempt of a
//! write may have applied (a timeout, a lost response), the write is sent again only when it may
//! be replayed ([`Replay::Safe`]); a write that may not is never sent again
//! ([`crate::Error::AlreadySent`] to a copy, [`crate::Error::Ambiguous`] to the request that lost
//! the answer).
//!
//! # Example
//!
//! ```
//! use ryw::adapter::{Applied, ErrorClass, Operation, Replay};
//! use ryw::stamp::may_retry;
//!
//! // A timeout of a write that may not be replayed: it may have applied, so it is not retried.
//! assert!(!may_retry(Operation::Write(Replay::Never), ErrorClass::Transient(Applied::Unknown)));
//! // The store refused it before applying anything: retried as the same stamped write.
//! assert!(may_retry(Operation::Write(Replay::Never), ErrorClass::Transient(Applied::No)));
//! // A write the store recognises when replayed may go again after a timeout.
//! assert!(may_retry(Operation::Write(Replay::Safe), ErrorClass::Transient(Applied::Unknown)));
//! ```

use crate::adapter::{Applied, ErrorClass, Operation, Replay, Scopes, StoreAdapter};
use crate::clock::HybridTimestamp;
use crate::config::LayerConfig;
use crate::fence::{ReadFence, Verification};
use crate::session::{Session, WriteId};
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use crate::session::Stamp;

/// A write as the layer stamped it: enough to send it again later, or from another process, as
/// the same write ([`crate::SessionRequest::from_stamped`]). `ryw-outbox` keeps these durably
/// while the store is down.
///
/// In the process that stamped it, a `StampedWrite` and its clones are one write: every
/// request made from them with `from_stamped` counts its attempts with the others' (and with
/// the request it was taken from, for [`crate::SessionRequest::stamped`]), so a write that may
/// not be replayed goes out once however many times it is handed to `from_stamped`. One built
/// with [`StampedWrite::new`] (decoded from storage, say) starts from its `may_have_applied`.
#[derive(Clone)]
pub struct StampedWrite<R> {
    /// The write's id.
    pub write_id: WriteId,
    /// Its hybrid-clock timestamp.
    pub timestamp: HybridTimestamp,
    /// The store request as stamped (conditions, write id and timestamp in place).
    pub request: R,
    /// An attempt of it may have applied: sent again, it must go as a replay.
    pub may_have_applied: bool,
    /// The attempts of every delivery of this write in this process.
    copies: Option<Arc<Copies<R>>>,
}

impl<R> StampedWrite<R> {
    /// A stamped write from its parts (as kept in storage): sent with
    /// [`crate::SessionRequest::from_stamped`], it goes as a replay when `may_have_applied`.
    pub fn new(stamp: Stamp, request: R, may_have_applied: bool) -> Self {
        StampedWrite {
            write_id: stamp.write_id,
            timestamp: stamp.timestamp,
            request,
            may_have_applied,
            copies: None,
        }
    }

    /// Its stamp.
    pub fn stamp(&self) -> Stamp {
        Stamp::new(self.write_id, self.timestamp)
    }

    /// The copies a request made from this write shares: those of the write it was taken from,
    /// or new ones counting `may_have_applied` as an attempt.
    pub(crate) fn into_copies(self) -> Arc<Copies<R>> {
        match self.copies {
            Some(copies) => copies,
            None => Copies::sending(
                Stamp::new(self.write_id, self.timestamp),
                self.request,
                u32::from(self.may_have_applied),
            ),
        }
    }
}

impl<R: PartialEq> PartialEq for StampedWrite<R> {
    /// The same write, stamped and sent alike (whichever deliveries share its attempts).
    fn eq(&self, other: &Self) -> bool {
        self.write_id == other.write_id
            && self.timestamp == other.timestamp
            && self.request == other.request
            && self.may_have_applied == other.may_have_applied
    }
}

impl<R: Eq> Eq for StampedWrite<R> {}

impl<R: std::fmt::Debug> std::fmt::Debug for StampedWrite<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampedWrite")
            .field("write_id", &self.write_id)
            .field("timestamp", &self.timestamp)
            .field("request", &self.request)
            .field("may_have_applied", &self.may_have_applied)
            .finish_non_exhaustive()
    }
}

/// Whether an error of class `class` on an operation `op` may be retried at all (before budget
/// and attempt caps): the replay rule. A failure that shows nothing applied may be retried; one
/// that may have applied only for a read or a write that may be replayed; nothing else.
pub fn may_retry(op: Operation, class: ErrorClass) -> bool {
    match class {
        ErrorClass::Transient(Applied::No) => true,
        ErrorClass::Transient(Applied::Unknown) => may_resend(op, true),
        _ => false,
    }
}

/// Whether an attempt of `op` may be sent when an earlier attempt, of the request or of a copy
/// of it, `may_have_applied`.
#[inline]
fn may_resend(op: Operation, may_have_applied: bool) -> bool {
    !may_have_applied || op != Operation::Write(Replay::Never)
}

/// Whether the layer keeps a failure of class `class` from the retry policy: a transient failure
/// the replay rule forbids to retry, or a replay the store could not resolve.
#[inline]
pub(crate) fn never_again(op: Operation, class: ErrorClass) -> bool {
    match class {
        ErrorClass::Unresolved => true,
        c => c.is_transient() && !may_retry(op, c),
    }
}

/// Whether a write that failed with `class` is ambiguous to its caller: it may have applied and
/// is not sent again ([`crate::Error::Ambiguous`]).
#[inline]
pub(crate) fn is_ambiguous(op: Operation, class: ErrorClass) -> bool {
    matches!(
        (op, class),
        (
            Operation::Write(Replay::Never),
            ErrorClass::Transient(Applied::Unknown)
        ) | (_, ErrorClass::Unresolved)
    )
}

/// The write a request and its clones send, and the state middleware above the layer shares
/// between the copies ([`crate::SessionRequest::copies`]). Created at the first clone (or by
/// [`crate::SessionRequest::from_stamped`]); a request without clones has none.
pub(crate) struct Copies<R> {
    /// The write, shared with the copies a kept write's deliveries make
    /// ([`Outstanding::keep_for_later`]): one count of attempts for every delivery.
    write: Arc<Mutex<Option<Outstanding<R>>>>,
    /// These copies send the write as a replay: it was kept for later, and a delivery of it
    /// elsewhere (another process) may have applied.
    kept_elsewhere: AtomicBool,
    shared: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// The stamped write the copies send, and how many of their attempts may have applied.
#[derive(Debug)]
pub(crate) struct Outstanding<R> {
    stamp: Stamp,
    /// The request as first stamped: what every copy sends.
    request: R,
    /// Attempts sent, by any copy, not (yet) known not to have applied.
    attempts: u32,
    /// A kept write of it was handed out ([`crate::ReadYourWrites::stamp`]): it may be
    /// delivered elsewhere.
    kept: bool,
}

impl<R> Default for Copies<R> {
    fn default() -> Self {
        Copies {
            write: Arc::new(Mutex::new(None)),
            kept_elsewhere: AtomicBool::new(false),
            shared: OnceLock::new(),
        }
    }
}

impl<R: std::fmt::Debug> std::fmt::Debug for Copies<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies")
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

impl<R> Copies<R> {
    /// Copies sending the write `stamp`, `request`, with `attempts` that may have applied.
    fn sending(stamp: Stamp, request: R, attempts: u32) -> Arc<Self> {
        Arc::new(Copies {
            write: Arc::new(Mutex::new(Some(Outstanding {
                stamp,
                request,
                attempts,
                kept: false,
            }))),
            kept_elsewhere: AtomicBool::new(false),
            shared: OnceLock::new(),
        })
    }

    /// Copies of the same write that count their attempts with these: a kept write's
    /// deliveries, which send it as itself until an attempt of any copy may have applied.
    fn sharing(copies: &Arc<Self>) -> Arc<Self> {
        Arc::new(Copies {
            write: copies.write.clone(),
            kept_elsewhere: AtomicBool::new(false),
            shared: OnceLock::new(),
        })
    }

    /// Whether these copies send the write as a replay whatever their attempts: it was kept
    /// for later, and may be delivered elsewhere.
    pub(crate) fn kept_elsewhere(&self) -> bool {
        self.kept_elsewhere.load(Ordering::Relaxed)
    }

    /// The stamped write, held while a copy stamps it (so that copies started at once share one
    /// stamp) or counts an attempt.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Outstanding<R>>> {
        crate::locks::lock(&self.write)
    }

    /// The state of type `T` the copies share (see [`crate::SessionRequest::copies`]).
    pub(crate) fn shared<T: Any + Send + Sync + Default>(&self) -> Option<Arc<T>> {
        let slot = self.shared.get_or_init(|| Arc::new(T::default()));
        slot.clone().downcast::<T>().ok()
    }

    /// The write the copies send, once one of them stamped it; its deliveries count their
    /// attempts with the copies'.
    pub(crate) fn stamped(self: &Arc<Self>) -> Option<StampedWrite<R>>
    where
        R: Clone,
    {
        let mut write = self.lock().as_ref().map(Outstanding::write)?;
        write.copies = Some(self.clone());
        Some(write)
    }

    /// Whether an attempt of a copy may have applied and is not known to have failed: one in
    /// flight, one whose answer was lost, or one that applied.
    pub(crate) fn outstanding(&self) -> bool {
        self.lock().as_ref().is_some_and(|write| write.attempts > 0)
    }

    /// The attempt just answered with `class` (`None`: it succeeded); one that shows it did not
    /// apply no longer counts.
    pub(crate) fn answered(&self, class: Option<ErrorClass>) {
        let not_applied = matches!(
            class,
            Some(ErrorClass::Transient(Applied::No) | ErrorClass::Conflict | ErrorClass::Permanent)
        );
        if not_applied {
            if let Some(write) = self.lock().as_mut() {
                write.attempts = write.attempts.saturating_sub(1);
            }
        }
    }

    /// Counts an attempt of `op` about to be sent by a copy whose own attempts
    /// `may_have_applied`. Returns whether an attempt of any copy may have applied (the attempt
    /// is then a replay), or the write's stamp when the replay rule forbids sending it.
    pub(crate) fn send(&self, op: Operation, may_have_applied: bool) -> Result<bool, Stamp> {
        match self.lock().as_mut() {
            Some(write) => write.send(op, may_have_applied),
            None => Ok(may_have_applied),
        }
    }
}

impl<R> Outstanding<R> {
    /// The write, marked as may have applied when an attempt is outstanding.
    fn write(&self) -> StampedWrite<R>
    where
        R: Clone,
    {
        StampedWrite {
            write_id: self.stamp.write_id,
            timestamp: self.stamp.timestamp,
            request: self.request.clone(),
            may_have_applied: self.attempts > 0 || self.kept,
            copies: None,
        }
    }

    /// See [`Copies::send`].
    pub(crate) fn send(&mut self, op: Operation, may_have_applied: bool) -> Result<bool, Stamp> {
        let may_have_applied = may_have_applied || self.attempts > 0;
        if !may_resend(op, may_have_applied) {
            return Err(self.stamp);
        }
        self.attempts += 1;
        Ok(may_have_applied)
    }

    /// Keeps the write for later ([`crate::ReadYourWrites::stamp`]): whoever sends the request
    /// or a clone of it (`copies`) then sends it as a replay, since the kept write may be
    /// delivered elsewhere. The kept write's deliveries in this process count their attempts
    /// with the request's: each goes as itself only while no attempt of any copy may have
    /// applied. Stored and decoded elsewhere, it goes as a replay when `reused` (the request was
    /// stamped before, by a copy or a kept write) or an attempt may have applied.
    fn keep_for_later(&mut self, reused: bool, copies: &Arc<Copies<R>>) -> StampedWrite<R>
    where
        R: Clone,
    {
        copies.kept_elsewhere.store(true, Ordering::Relaxed);
        let mut kept = StampedWrite {
            may_have_applied: reused || self.attempts > 0 || self.kept,
            ..self.write()
        };
        self.kept = true;
        kept.copies = Some(Copies::sharing(copies));
        kept
    }
}

/// What a request takes from its session when it starts (besides its fence), and how it was
/// stamped.
#[derive(Debug)]
pub(crate) struct Start {
    /// A write's stamp (`None` for a read).
    pub(crate) stamp: Option<Stamp>,
    /// The session's clock when the request started.
    pub(crate) clock: HybridTimestamp,
    /// The stamp was taken from a copy (or a kept write), not drawn anew.
    pub(crate) reused: bool,
    /// An attempt of that copy may have applied.
    pub(crate) may_have_applied: bool,
}

/// The one stamp-or-reuse step, for a send and for [`crate::ReadYourWrites::stamp`] alike: fills
/// `fence` (new) with the session's requirements of `scopes` (the read fence, or a write's
/// conditions for writes-follow-reads) and, for a write, stamps `request` or takes its copies'
/// stamp.
///
/// `copies` is the request's copies' write, locked by the caller across the step so that copies
/// started at once share one stamp. When a copy was stamped, `request` becomes the copy's stamped
/// request, prepared again (a write rebuilt elsewhere does not carry the adapter's
/// configuration). Otherwise the session draws a new stamp, the adapter writes it into
/// `request`, and the copies keep it with no attempt counted.
#[inline]
pub(crate) fn stamp_or_reuse<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    session: &Session,
    op: Operation,
    request: &mut A::Request,
    scopes: &Scopes,
    copies: Option<&mut Option<Outstanding<A::Request>>>,
    fence: &mut ReadFence,
) -> Start {
    let adapter = &config.adapter;
    let reused = copies
        .as_deref()
        .and_then(Option::as_ref)
        .map(|sent| (sent.stamp, sent.request.clone(), sent.attempts > 0));
    let mut start = {
        let mut state = session.lock();
        let verification = match op {
            Operation::Read => adapter.verification(request),
            _ => Verification::Versions,
        };
        fence.fill(&state, adapter.store(), scopes.iter(), verification);
        let stamp = match (op, &reused) {
            (Operation::Write(_), None) => {
                let (write_id, timestamp) = state.next_write(config.clock.now_micros());
                Some(Stamp::new(write_id, timestamp))
            }
            _ => None,
        };
        Start {
            stamp,
            clock: state.clock(),
            reused: false,
            may_have_applied: false,
        }
    };
    if let Some((stamp, stamped, may_have_applied)) = reused {
        *request = stamped;
        adapter.prepare(request);
        start.stamp = Some(stamp);
        start.reused = true;
        start.may_have_applied = may_have_applied;
    } else if let Some(stamp) = start.stamp {
        adapter.stamp_write(request, stamp, fence);
        if let Some(slot) = copies {
            *slot = Some(Outstanding {
                stamp,
                request: request.clone(),
                attempts: 0,
                kept: false,
            });
        }
    }
    start
}

/// Stamps the write `request` carries as its first attempt would be stamped, without sending it
/// ([`crate::ReadYourWrites::stamp`]), and records the stamp on the request and its clones as an
/// attempt that may apply: whoever sends it later (a clone, a retry) sends this very write, as
/// a replay. A request already stamped (a clone of a sent one, or
/// [`crate::SessionRequest::from_stamped`]) keeps its stamp. `None` for a read.
pub(crate) fn keep_for_later<A: StoreAdapter, P>(
    config: &LayerConfig<A, P>,
    session: &Session,
    request: &A::Request,
    copies: &Arc<Copies<A::Request>>,
) -> Option<StampedWrite<A::Request>> {
    let adapter = &config.adapter;
    let mut base = request.clone();
    adapter.prepare(&mut base);
    let op = adapter.operation(&base);
    if op == Operation::Read {
        return None;
    }
    let mut scopes = Scopes::new();
    adapter.scopes(&base, &mut scopes);
    // Held across stamping, as a send holds it: clones stamped at once share one stamp.
    let mut slot = copies.lock();
    let start = stamp_or_reuse(
        config,
        session,
        op,
        &mut base,
        &scopes,
        Some(&mut slot),
        &mut ReadFence::new(),
    );
    slot.as_mut()
        .map(|write| write.keep_for_later(start.reused, copies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_rule() {
        let w_safe = Operation::Write(Replay::Safe);
        let w_never = Operation::Write(Replay::Never);
        assert!(may_retry(w_never, ErrorClass::RETRYABLE));
        assert!(!may_retry(w_never, ErrorClass::AMBIGUOUS));
        assert!(may_retry(w_safe, ErrorClass::AMBIGUOUS));
        assert!(may_retry(Operation::Read, ErrorClass::AMBIGUOUS));
        assert!(!may_retry(Operation::Read, ErrorClass::Permanent));
        assert!(!may_retry(w_safe, ErrorClass::Conflict));
        assert!(never_again(w_safe, ErrorClass::Unresolved));
        assert!(never_again(w_never, ErrorClass::AMBIGUOUS));
        assert!(!never_again(w_never, ErrorClass::Permanent));
        assert!(is_ambiguous(w_never, ErrorClass::AMBIGUOUS));
        assert!(!is_ambiguous(w_safe, ErrorClass::AMBIGUOUS));
        assert!(is_ambiguous(w_safe, ErrorClass::Unresolved));
    }
}
