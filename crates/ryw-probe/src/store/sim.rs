//! The embedded simulated store: a primary and one replica lagging a set time, in simulated time.

use super::{ProbeStore, RywRead};
use crate::error::ProbeError;
use ryw::{ReadYourWrites, ReadYourWritesLayer, Session};
use ryw_sim::{LagModel, LatencyModel, SimAdapter, SimClient, SimConfig, SimRequest, SimStore};
use std::time::Duration;
use tower::{Layer, ServiceExt};

pub(crate) struct Sim {
    store: SimStore,
    lag: Duration,
    tail: Duration,
    /// One session layer per app instance (each learns the store's lag on its own).
    instances: Vec<ReadYourWrites<SimClient, SimAdapter>>,
}

impl Sim {
    pub(crate) fn new(lag: Duration, tail: Duration, seed: u64, instances: usize) -> Self {
        let store = SimStore::new(
            SimConfig::default()
                .seed(seed)
                .replicas(1)
                .lag(LagModel::new(lag, tail))
                // Short legs: a write is acknowledged 1 ms after it applied, and a replica read
                // arrives 0.5 ms after it was sent, so a write is visible from L - 1.5 ms on.
                .latency(LatencyModel {
                    replica: Duration::from_micros(500),
                    primary: Duration::from_millis(1),
                    jitter: Duration::ZERO,
                }),
        );
        let instances = (0..instances.max(1))
            .map(|_| {
                ReadYourWritesLayer::new(SimAdapter::new())
                    .clock(store.clock())
                    .layer(store.client(0))
            })
            .collect();
        Sim {
            store,
            lag,
            tail,
            instances,
        }
    }

    fn instance(&self, i: usize) -> ReadYourWrites<SimClient, SimAdapter> {
        self.instances[i % self.instances.len()].clone()
    }
}

fn failed(e: impl std::fmt::Debug) -> ProbeError {
    ProbeError::Store(format!("{e:?}"))
}

impl ProbeStore for Sim {
    fn describe(&self) -> String {
        format!(
            "simulated store, one replica lagging {} ms + exponential mean {} ms, primary 1 ms and \
             replica 0.5 ms away (simulated time)",
            self.lag.as_millis(),
            self.tail.as_millis()
        )
    }

    async fn prepare(&mut self, _create: bool, _force: bool) -> Result<(), ProbeError> {
        Ok(())
    }

    async fn write(&self, key: &str, value: u64) -> Result<(), ProbeError> {
        self.store
            .client(0)
            .oneshot(SimRequest::put(key, value))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn read_cheap(&self, key: &str) -> Result<Option<u64>, ProbeError> {
        let r = self
            .store
            .client(0)
            .oneshot(SimRequest::get(key))
            .await
            .map_err(failed)?;
        Ok(r.value)
    }

    async fn ryw_write(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
        value: u64,
    ) -> Result<(), ProbeError> {
        self.instance(instance)
            .oneshot(session.request(SimRequest::put(key, value)))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn ryw_read(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
    ) -> Result<RywRead, ProbeError> {
        let r = self
            .instance(instance)
            .oneshot(session.request(SimRequest::get(key)))
            .await
            .map_err(failed)?;
        Ok(RywRead {
            value: r.get_ref().value,
            visibility: r.visibility().clone(),
        })
    }

    async fn cleanup(&self, _keys: &[String]) -> Result<(), ProbeError> {
        Ok(())
    }
}
