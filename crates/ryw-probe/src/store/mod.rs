//! The stores the probe runs against, behind one interface.

pub(crate) mod dynamodb;
pub(crate) mod mongodb;
pub(crate) mod scylla;
pub(crate) mod sim;

use crate::error::ProbeError;
use ryw::{Session, Visibility};

/// A read through ryw.
#[derive(Clone, Debug)]
pub(crate) struct RywRead {
    /// The value seen (`None`: no item).
    pub(crate) value: Option<u64>,
    /// Its status.
    pub(crate) visibility: Visibility,
}

/// What the probe needs of a store: plain writes, cheap reads, and both through ryw.
#[allow(async_fn_in_trait)]
pub(crate) trait ProbeStore {
    /// A line for the summary.
    fn describe(&self) -> String;

    /// Checks (and with `create`, creates) where the probe writes.
    async fn prepare(&mut self, create: bool, force: bool) -> Result<(), ProbeError>;

    /// Writes `value` under `key`, acknowledged by the store.
    async fn write(&self, key: &str, value: u64) -> Result<(), ProbeError>;

    /// Reads `key` on the cheap path (a replica, an eventually consistent read).
    async fn read_cheap(&self, key: &str) -> Result<Option<u64>, ProbeError>;

    /// Writes through ryw, on app instance `instance`.
    async fn ryw_write(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
        value: u64,
    ) -> Result<(), ProbeError>;

    /// Reads through ryw, on app instance `instance`.
    async fn ryw_read(
        &self,
        instance: usize,
        session: &Session,
        key: &str,
    ) -> Result<RywRead, ProbeError>;

    /// Removes the probe's items.
    async fn cleanup(&self, keys: &[String]) -> Result<(), ProbeError>;
}
