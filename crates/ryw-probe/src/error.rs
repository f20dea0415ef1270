//! What can go wrong, each with its own message and exit code.

use std::fmt;

/// Why a probe stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The arguments do not make a run.
    #[error("{0}")]
    Usage(String),
    /// The store could not be reached.
    #[error("cannot reach the store: {0}")]
    Unreachable(String),
    /// The store refused the credentials or the operation.
    #[error("the store refused the operation (missing permission?): {0}")]
    Permission(String),
    /// The store throttled the probe past its retries.
    #[error("the store is throttling the probe (lower --rate): {0}")]
    Throttled(String),
    /// The table or collection does not exist.
    #[error("{0} does not exist: pass --create to create it")]
    Missing(String),
    /// The table or collection holds data the probe did not write.
    #[error("{0} is not empty and was not created by ryw-probe: refusing to write into it (pass --force to write anyway)")]
    NotEmpty(String),
    /// The table is keyed otherwise than the probe needs.
    #[error("{table} is not keyed as ryw-probe needs: {detail}")]
    Schema {
        /// The table.
        table: String,
        /// What is wrong.
        detail: String,
    },
    /// Ctrl-C, or the run's time bound.
    #[error("{0}")]
    Stopped(Stop),
    /// Anything else the store answered.
    #[error("store error: {0}")]
    Store(String),
}

/// Why a run stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C.
    Interrupted,
    /// `--max-duration` ran out.
    OutOfTime,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stop::Interrupted => "interrupted (Ctrl-C)",
            Stop::OutOfTime => "stopped at --max-duration",
        })
    }
}

impl ProbeError {
    /// The process exit code: 2 for bad arguments, 3 unreachable, 4 permission, 5 throttled,
    /// 6 a table or collection that cannot be used, 7 another store error, 130 interrupted, 124
    /// out of time.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProbeError::Usage(_) => 2,
            ProbeError::Unreachable(_) => 3,
            ProbeError::Permission(_) => 4,
            ProbeError::Throttled(_) => 5,
            ProbeError::Missing(_) | ProbeError::NotEmpty(_) | ProbeError::Schema { .. } => 6,
            ProbeError::Store(_) => 7,
            ProbeError::Stopped(Stop::Interrupted) => 130,
            ProbeError::Stopped(Stop::OutOfTime) => 124,
        }
    }
}
