//! What a run produced: the history its users recorded, the checker's findings on it, and the
//! counts and latencies of its reads.

use super::user::UserResult;
use crate::checker::{check, CheckReport, History, OpKind, ReadStatus};
use crate::store::LogEntry;
use std::time::Duration;

/// What one run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The recorded history.
    pub history: History,
    /// The checker's findings on it.
    pub check: CheckReport,
    /// Latency of every completed read, in microseconds of simulated time.
    pub read_latencies_micros: Vec<u64>,
    /// Reads that returned data.
    pub reads: usize,
    /// Of those, reads whose data came from a replica.
    pub replica_reads: usize,
    /// Reads reported `Pending`.
    pub pending_reads: usize,
    /// Reads served by a replica that held a write of the key beyond the prefix of the log it
    /// had fully applied (only out of order:
    /// [`ReplicationOrder::OutOfOrder`](crate::ReplicationOrder::OutOfOrder)).
    pub reads_past_applied: usize,
    /// Deliveries of a log entry to a replica that landed before an earlier entry had
    /// ([`SimStore::reordered_arrivals`](crate::SimStore::reordered_arrivals)).
    pub reordered_arrivals: usize,
    /// Operations that returned an error.
    pub failed_ops: usize,
    /// The longest encoded token seen (ryw mode).
    pub max_token_len: usize,
    /// With several devices per user
    /// ([`Scenario::devices`](crate::workload::Scenario::devices)): the checker's findings with
    /// each user's devices taken as one session, reads reported
    /// [`SessionOnly`](ryw::Visibility::SessionOnly) unchecked (they promise nothing for the
    /// principal).
    pub principal_check: Option<CheckReport>,
    /// Reads reported [`SessionOnly`](ryw::Visibility::SessionOnly).
    pub session_only_reads: usize,
}

impl RunReport {
    /// Share of reads served by a replica.
    pub fn replica_share(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.replica_reads as f64 / self.reads as f64
        }
    }

    /// The `p`-th percentile (0 to 100) of read latency.
    pub fn read_latency_percentile(&self, p: f64) -> Duration {
        if self.read_latencies_micros.is_empty() {
            return Duration::ZERO;
        }
        let mut v = self.read_latencies_micros.clone();
        v.sort_unstable();
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Duration::from_micros(v[idx.min(v.len() - 1)])
    }
}

impl RunReport {
    /// The report of a run whose users (each device of each user, `devices` per user) recorded
    /// `results`, in session order, over a store that ended with `log` and saw
    /// `reordered_arrivals`.
    pub(super) fn of(
        results: Vec<UserResult>,
        log: Vec<LogEntry>,
        reordered_arrivals: usize,
        devices: usize,
    ) -> Self {
        let mut history = History {
            ops: Vec::new(),
            log,
        };
        let mut report = RunReport {
            history: History::default(),
            check: CheckReport::default(),
            read_latencies_micros: Vec::new(),
            reads: 0,
            replica_reads: 0,
            pending_reads: 0,
            reads_past_applied: 0,
            reordered_arrivals,
            failed_ops: 0,
            max_token_len: 0,
            principal_check: None,
            session_only_reads: 0,
        };
        let mut unadvanced = Vec::new();
        for r in results {
            let base = history.ops.len();
            unadvanced.extend(r.unadvanced.iter().map(|i| base + i));
            history.ops.extend(r.ops);
            report.read_latencies_micros.extend(r.latencies);
            report.reads += r.reads;
            report.replica_reads += r.replica_reads;
            report.pending_reads += r.pending;
            report.reads_past_applied += r.past_applied;
            report.failed_ops += r.failed;
            report.max_token_len = report.max_token_len.max(r.max_token_len);
            report.session_only_reads += r.session_only;
        }
        report.check = check(&history);
        if devices > 1 {
            // Each user's devices as one session; what was promised for a device's session only
            // is not checked for its principal.
            let mut by_principal = history.clone();
            for &i in &unadvanced {
                by_principal.ops[i].detached = true;
            }
            for op in &mut by_principal.ops {
                op.session /= devices;
                if let OpKind::Read { status, .. } = &mut op.kind {
                    if *status == ReadStatus::SessionOnly {
                        *status = ReadStatus::Pending;
                    }
                }
            }
            report.principal_check = Some(check(&by_principal));
        }
        report.history = history;
        report
    }
}
