//! What goes through the session layer: a store request paired with its [`Session`], and the
//! store's response with its [`Visibility`].
//!
//! # Example
//!
//! ```
//! use ryw::fence::StaleReadPolicy;
//! use ryw::{Session, SessionRequest};
//!
//! let session = Session::new();
//! // Strict reads for this request only: a read that stays stale is an error, not `Pending`.
//! let request = session.request("GET posts/1").stale_reads(StaleReadPolicy::Error);
//! assert_eq!(*request.get_ref(), "GET posts/1");
//! assert_eq!(request.session().id(), session.id());
//! ```

use crate::fence::{StaleReadPolicy, Visibility};
use crate::session::{Session, WriteId};
use crate::stamp::{Copies, StampedWrite};
use std::sync::{Arc, OnceLock};

/// A store request paired with the session it belongs to.
///
/// # Clones are the same request
///
/// A write is stamped once, at its first call, and every clone of the request sent after it
/// sends that very stamped request: the same [`WriteId`], timestamp and conditions (not a new
/// stamp from the session's state at the time, which may since have recorded the write itself).
/// So middleware above the layer that sends a request again (tower's `Retry`, a hedge, a caller
/// retrying after a timeout) never turns one write into two. The request and its clones count
/// the attempts any of them sent that may have applied (every attempt, until its answer shows it
/// did not apply); while that count is not zero, any attempt of any of them is a replay, which
/// the store recognises ([`crate::adapter::Replay::Safe`]), or, for a write that may not be
/// replayed, [`crate::Error::AlreadySent`] without sending. A request that is never cloned pays
/// nothing for this.
#[derive(Debug)]
pub struct SessionRequest<R> {
    session: Session,
    request: R,
    stale_reads: Option<StaleReadPolicy>,
    /// Shared by the request and its clones, created at the first clone.
    copies: OnceLock<Arc<Copies<R>>>,
}

impl<R: Clone> Clone for SessionRequest<R> {
    #[inline]
    fn clone(&self) -> Self {
        SessionRequest {
            session: self.session.clone(),
            request: self.request.clone(),
            stale_reads: self.stale_reads,
            copies: OnceLock::from(self.copies.get_or_init(Arc::default).clone()),
        }
    }
}

impl<R: Clone> SessionRequest<R> {
    /// The write this request (or a clone of it) was stamped and sent as, once the layer has
    /// stamped it. Only a request that was cloned before it was sent shares its stamp: clone it,
    /// send one copy, and ask the other.
    pub fn stamped(&self) -> Option<StampedWrite<R>> {
        self.copies.get()?.stamped()
    }
}

impl<R> SessionRequest<R> {
    /// State of type `T` shared by this request and every clone of it, created on first use:
    /// for middleware above the session layer that must give all copies of one request one
    /// outcome (`ryw-outbox` answers every copy of a write that one copy applied as applied, and
    /// never queues it). `None` when the request has no clone (it is the only copy, and nothing
    /// is allocated), or when the shared state is of another type.
    ///
    /// ```
    /// use ryw::Session;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// let request = Session::new().request("PUT k");
    /// assert!(request.copies::<AtomicU32>().is_none(), "no clone yet");
    /// let copy = request.clone();
    /// copy.copies::<AtomicU32>().unwrap().fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(request.copies::<AtomicU32>().unwrap().load(Ordering::Relaxed), 1);
    /// ```
    pub fn copies<T: std::any::Any + Send + Sync + Default>(&self) -> Option<Arc<T>> {
        self.copies.get()?.shared()
    }

    /// A request that sends `write` again as the same write: the layer does not stamp it anew,
    /// and sends it as a replay ([`crate::adapter::StoreAdapter::prepare_replay`]) when an
    /// attempt of it may have applied; a write that may not be replayed is then
    /// [`crate::Error::AlreadySent`]. Its clones share the stamp as any request's do, and so do
    /// the requests made from clones of `write` in this process: a kept write handed to
    /// `from_stamped` twice goes out once as itself, then as a replay (or not at all, for a
    /// write that may not be replayed, while the first may have applied).
    pub fn from_stamped(session: Session, write: StampedWrite<R>) -> Self
    where
        R: Clone,
    {
        SessionRequest {
            session,
            request: write.request.clone(),
            stale_reads: None,
            copies: OnceLock::from(write.into_copies()),
        }
    }

    /// Pairs `request` with `session` (see also [`Session::request`]).
    #[inline]
    pub fn new(session: Session, request: R) -> Self {
        SessionRequest {
            session,
            request,
            stale_reads: None,
            copies: OnceLock::new(),
        }
    }

    #[inline]
    pub(crate) fn into_parts(
        self,
    ) -> (Session, R, Option<StaleReadPolicy>, Option<Arc<Copies<R>>>) {
        (
            self.session,
            self.request,
            self.stale_reads,
            self.copies.into_inner(),
        )
    }

    /// The write shared by the request and its clones (created now if it was never cloned).
    pub(crate) fn copies_write(&self) -> &Arc<Copies<R>> {
        self.copies.get_or_init(Arc::default)
    }

    /// Overrides the layer's [`StaleReadPolicy`] for this request (for example, strict reads for
    /// a payment page).
    pub fn stale_reads(mut self, policy: StaleReadPolicy) -> Self {
        self.stale_reads = Some(policy);
        self
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The store request.
    pub fn get_ref(&self) -> &R {
        &self.request
    }

    /// The store request, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.request
    }

    /// Takes the store request out.
    pub fn into_inner(self) -> R {
        self.request
    }
}

/// A store response with its visibility status.
#[derive(Clone, Debug)]
pub struct SessionResponse<T> {
    response: T,
    visibility: Visibility,
    write_id: Option<WriteId>,
    attempts: u32,
}

impl<T> SessionResponse<T> {
    pub(crate) fn new(
        response: T,
        visibility: Visibility,
        write_id: Option<WriteId>,
        attempts: u32,
    ) -> Self {
        SessionResponse {
            response,
            visibility,
            write_id,
            attempts,
        }
    }

    /// The visibility status.
    #[inline]
    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    /// The write id, for writes.
    pub fn write_id(&self) -> Option<WriteId> {
        self.write_id
    }

    /// Attempts made against the store (1 when nothing was retried or re-read).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The store response.
    #[inline]
    pub fn get_ref(&self) -> &T {
        &self.response
    }

    /// The store response, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.response
    }

    /// Takes the store response out.
    #[inline]
    pub fn into_inner(self) -> T {
        self.response
    }

    /// Marks the response as not showing a write of its session that waits in an outbox
    /// ([`Visibility::Queued`]), whatever the layer found: for middleware above the layer that
    /// holds writes back (`ryw-outbox`).
    pub fn queued(mut self, write_id: WriteId) -> Self {
        self.visibility = Visibility::Queued(write_id);
        self
    }

    /// Splits into the store response and the status.
    pub fn into_parts(self) -> (T, Visibility) {
        (self.response, self.visibility)
    }
}

impl Session {
    /// Pairs `request` with this session, ready for the session layer.
    #[inline]
    pub fn request<R>(&self, request: R) -> SessionRequest<R> {
        SessionRequest::new(self.clone(), request)
    }
}
