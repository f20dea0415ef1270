//! The record store the instances of a workload share: in memory, slowed by the scenario's
//! latency and down during its outage.

use crate::store::SimStore;
use ryw::record::{InMemoryRecordStore, RecordError, RecordFuture, RecordStore};
use ryw::SessionId;
use std::time::Duration;

/// The record store of a scenario: in memory, failing while simulated time is in its outage.
pub(super) struct SimRecordStore {
    inner: InMemoryRecordStore,
    store: SimStore,
    outage: Option<(Duration, Duration)>,
    /// Each way, per call.
    latency: Duration,
}

impl SimRecordStore {
    /// An empty record store of `store`'s deployment, down while its simulated time is within
    /// `outage`, each call taking `latency` each way.
    pub(super) fn new(
        store: SimStore,
        outage: Option<(Duration, Duration)>,
        latency: Duration,
    ) -> Self {
        SimRecordStore {
            inner: InMemoryRecordStore::new(),
            store,
            outage,
            latency,
        }
    }

    fn check(&self) -> Result<(), RecordError> {
        let now = self.store.elapsed();
        match self.outage {
            Some((start, end)) if now >= start && now < end => {
                Err(RecordError::Unavailable("the record store is down".into()))
            }
            _ => Ok(()),
        }
    }
}

impl RecordStore for SimRecordStore {
    fn append<'a>(
        &'a self,
        session: SessionId,
        entries: &'a [ryw::version::Entry],
    ) -> RecordFuture<'a, u64> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            self.check()?;
            let version = self.inner.append(session, entries).await;
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            version
        })
    }

    fn load(&self, session: SessionId) -> RecordFuture<'_, Option<ryw::record::Record>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            self.check()?;
            let record = self.inner.load(session).await;
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            record
        })
    }
}
