//! The replayer: drains the outbox through the session layer when the store answers again.

use crate::breaker::Breaker;
use crate::entry::{DurableRequest, Entry};
use crate::store::{Outbox, OutboxError};
use ryw::adapter::StoreAdapter;
use ryw::retry::RetryPolicy;
use ryw::stamp::Stamp;
use ryw::telemetry::{Observer, OutboxEvent};
use ryw::{ReadYourWrites, Session, SessionId, SessionRequest, SessionResponse, StampedWrite};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceExt};

/// What one pass over the outbox did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Writes applied (or recognised as applied by their id) and removed from the outbox.
    pub applied: u64,
    /// Entries moved to the dead letters.
    pub dead_lettered: u64,
    /// Entries left for a later pass: the store is still down for them, or an earlier write of
    /// their session is.
    pub left: u64,
}

/// Drains an [`Outbox`] through the session layer ([`ryw::ReadYourWrites`]), in append order, so
/// each session's writes apply in the order they were made. Every entry is sent under its own
/// write id and timestamp, as a replay: an entry sent again after a crash between its apply and
/// its removal is recognised by the store and applies once.
///
/// An entry that can no longer be replayed safely goes to the dead letters with its reason: its
/// request no longer decodes, it is older than [`Replayer::max_age`] (past the store's
/// idempotency window), or the store refused it for good (a permanent error, a conflict, a replay
/// that could not tell whether the write applied). Nothing is dropped silently.
pub struct Replayer<I, A: StoreAdapter, P = RetryPolicy> {
    outbox: Arc<Outbox>,
    service: ReadYourWrites<I, A, P>,
    breaker: Arc<Breaker>,
    max_age: Option<Duration>,
    observer: Option<Arc<dyn Observer>>,
}

impl<I, A: StoreAdapter, P> std::fmt::Debug for Replayer<I, A, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("outbox", &self.outbox)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl<I, A: StoreAdapter, P> Replayer<I, A, P> {
    /// A replayer of `outbox` through `service` (the session layer over the store).
    pub fn new(outbox: Arc<Outbox>, service: ReadYourWrites<I, A, P>) -> Self {
        Replayer {
            outbox,
            service,
            breaker: Arc::new(Breaker::default()),
            max_age: None,
            observer: None,
        }
    }

    /// Reports every write replayed or dead-lettered to `observer` ([`Observer::outbox`]).
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    fn report(&self, event: OutboxEvent) {
        if let Some(observer) = &self.observer {
            observer.outbox(&event);
        }
    }

    /// Shares `breaker` with the [`crate::OutboxLayer`]: a replay that succeeds closes it.
    pub fn breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = breaker;
        self
    }

    /// Entries deferred longer ago than `age` are dead letters, not replayed: set it to the
    /// store's idempotency window (how long it recognises a write id), so a replay is never sent
    /// after the store has forgotten whether it applied. Default: no limit.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }
}

impl<I, A, P> Replayer<I, A, P>
where
    A: StoreAdapter,
    A::Request: DurableRequest,
    A::Error: std::error::Error + 'static,
    ReadYourWrites<I, A, P>: Service<
        SessionRequest<A::Request>,
        Response = SessionResponse<A::Response>,
        Error = ryw::Error<A::Error>,
    >,
{
    /// One pass over the outbox. Stops early when the store is still down (the first entry
    /// fails with a transient error): the rest waits for the next pass.
    pub async fn drain(&mut self) -> Result<ReplayReport, OutboxError> {
        let mut report = ReplayReport::default();
        let mut blocked: HashSet<SessionId> = HashSet::new();
        let mut pending = self.outbox.pending()?;
        let total = pending.len() as u64;
        // Sessions in the order their first entry was appended; each session's entries in the
        // order its writes were made (a write deferred while an earlier one was still on its way
        // may have been appended before it).
        let mut first: HashMap<SessionId, usize> = HashMap::new();
        for (i, (_, e)) in pending.iter().enumerate() {
            first.entry(e.write_id.session).or_insert(i);
        }
        // The write sequence number grows across every continuation of a session (it travels in
        // the token); the lane is random per continuation and says nothing of order.
        pending.sort_by_key(|(seq, e)| (first[&e.write_id.session], e.write_id.seq, *seq));
        for (seq, entry) in pending {
            let session_id = entry.write_id.session;
            // A write of the session still on its way to the store (through the outbox layer)
            // may be deferred behind these, yet was made before them: wait for it.
            if blocked.contains(&session_id) || self.outbox.in_flight(session_id) {
                report.left += 1;
                continue;
            }
            if let Some(reason) = self.too_old(&entry) {
                self.outbox.dead_letter(seq, &reason)?;
                self.report(OutboxEvent::DeadLettered { reason: "expired" });
                report.dead_lettered += 1;
                continue;
            }
            let (session, request) = match self.rebuild(&entry) {
                Ok(parts) => parts,
                Err(reason) => {
                    self.outbox.dead_letter(seq, &reason)?;
                    self.report(OutboxEvent::DeadLettered {
                        reason: "undecodable",
                    });
                    report.dead_lettered += 1;
                    continue;
                }
            };
            // Never sent before (deferred without being sent): sent as a first attempt, after
            // recording durably that it is being sent, so that an attempt after a crash goes as
            // a replay. Sent before (it failed, or a pass before a crash sent it): a replay.
            if !entry.may_have_applied {
                self.outbox.mark_sent(seq, &entry)?;
            }
            let request = SessionRequest::from_stamped(
                session.clone(),
                StampedWrite::new(
                    Stamp::new(entry.write_id, entry.timestamp),
                    request,
                    entry.may_have_applied,
                ),
            );
            let result = match self.service.ready().await {
                Ok(service) => service.call(request).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => {
                    self.outbox.remove_replayed(seq, &session)?;
                    self.breaker.succeeded();
                    self.report(OutboxEvent::Replayed);
                    report.applied += 1;
                }
                Err(e) if crate::layer::deferrable(&e) => {
                    self.breaker.failed();
                    blocked.insert(session_id);
                    report.left += 1;
                    if report.applied == 0 && report.dead_lettered == 0 {
                        // The store is still down: leave the rest for the next pass.
                        report.left = total - report.dead_lettered;
                        tracing::debug!(target: "ryw::outbox", error = %e, "store still down");
                        return Ok(report);
                    }
                }
                Err(e) => {
                    let reason = format!("{}: {e}", kind(&e));
                    tracing::warn!(target: "ryw::outbox", seq, %reason, "write dead-lettered");
                    self.outbox.dead_letter(seq, &reason)?;
                    self.report(OutboxEvent::DeadLettered { reason: kind(&e) });
                    report.dead_lettered += 1;
                }
            }
        }
        Ok(report)
    }

    /// Drains the outbox every `every` until it is empty (between passes the store may still be
    /// down). Returns what the passes did together.
    pub async fn drain_until_empty(
        &mut self,
        every: Duration,
    ) -> Result<ReplayReport, OutboxError> {
        let mut total = ReplayReport::default();
        loop {
            let pass = self.drain().await?;
            total.applied += pass.applied;
            total.dead_lettered += pass.dead_lettered;
            total.left = pass.left;
            if self.outbox.is_empty() {
                return Ok(total);
            }
            tokio::time::sleep(every).await;
        }
    }

    fn too_old(&self, entry: &Entry) -> Option<String> {
        let max = self.max_age?;
        let age = ryw::signing::now_secs().saturating_sub(entry.deferred_at);
        (age > max.as_secs()).then(|| {
            format!(
                "expired: deferred {age} s ago, past the store's idempotency window of {} s",
                max.as_secs()
            )
        })
    }

    /// The session (this process's live one, else the one the entry kept) and the request.
    fn rebuild(&self, entry: &Entry) -> Result<(Session, A::Request), String> {
        let request =
            A::Request::decode(&entry.request).map_err(|e| format!("undecodable request: {e}"))?;
        let session = match self.outbox.live_session(entry.write_id.session) {
            Some(live) => live,
            None => Session::from_encoded(&entry.session)
                .map_err(|e| format!("undecodable session: {e}"))?,
        };
        Ok((session, request))
    }
}

fn kind<E>(error: &ryw::Error<E>) -> &'static str {
    match error {
        ryw::Error::Store { .. } => "store",
        ryw::Error::Ambiguous { .. } => "ambiguous",
        ryw::Error::Conflict(_) => "conflict",
        ryw::Error::AlreadySent { .. } => "already_sent",
        _ => "other",
    }
}
