//! How the application reads and writes in a workload: without the session layer, always
//! strongly, pinned to the primary after a write, or through the ryw session layer.

use ryw::adaptive::AdaptiveFence;
use ryw::fence::FenceConfig;
use std::time::Duration;

/// How the application reads and writes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Mode {
    /// No session layer: reads go to the local replica, failed writes are retried as they are.
    Plain,
    /// Every read goes to the primary.
    Strong,
    /// After any write, the user's reads go to the primary for this long (the Rails and GitLab
    /// style of "sticking"); writes are retried as they are.
    Pinned(Duration),
    /// Through the ryw session layer, with this fence configuration and its fixed re-read
    /// schedule; the session travels between instances as an encoded token.
    Ryw(FenceConfig),
    /// Through the ryw session layer with an adaptive fence ([`ryw::adaptive`]): each instance
    /// learns the store's catch-up time on its own.
    RywAdaptive(AdaptiveFence),
}

impl Mode {
    /// The ryw layer with its default fence: adaptive ([`AdaptiveFence::default`]).
    pub fn ryw() -> Self {
        Mode::RywAdaptive(AdaptiveFence::default())
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Mode::Plain => "no session layer".into(),
            Mode::Strong => "always-strong reads".into(),
            Mode::Pinned(d) => format!("pin to primary {}s after a write", d.as_secs_f64()),
            Mode::Ryw(c) => format!("ryw ({:?} fence)", c.initial).to_lowercase(),
            Mode::RywAdaptive(a) => {
                format!("ryw (adaptive fence, {} ms)", a.latency_budget.as_millis())
            }
        }
    }
}
