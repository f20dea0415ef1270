//! Does the promise hold here, and at what cost: a seeded multi-session workload run raw and
//! through ryw, both histories judged by `ryw_sim::checker`.

use crate::error::ProbeError;
use crate::pace::Pace;
use crate::store::ProbeStore;
use ryw::fence::FencePath;
use ryw::{Session, Visibility};
use ryw_sim::checker::{check, History, Op, OpKind, ReadStatus};
use ryw_sim::{LogEntry, SimRng};
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One run of the workload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    /// Session-guarantee violations the checker found.
    pub violations: u64,
    /// Reads that returned.
    pub reads: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Reads served on the strong path (ryw only: escalated or waited for on the server).
    pub strong_reads: u64,
    /// Reads that missed the session's own write or went back (raw: what a fence was needed
    /// for).
    pub stale_reads: u64,
    /// Reads reported pending (ryw only).
    pub pending: u64,
    /// Median read latency (ms).
    pub p50_ms: f64,
    /// 99th percentile read latency (ms).
    pub p99_ms: f64,
    /// Every read's latency (µs), for the report's histogram.
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

/// Both runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckResult {
    /// Without a session layer.
    pub raw: RunSummary,
    /// Through ryw.
    pub ryw: RunSummary,
}

/// The workload's shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    pub(crate) sessions: usize,
    pub(crate) ops: usize,
    pub(crate) instances: usize,
    pub(crate) seed: u64,
}

#[derive(Default)]
struct Recorded {
    ops: Vec<Op>,
    log: Vec<LogEntry>,
    latencies: Vec<u64>,
    strong: u64,
    pending: u64,
}

/// Runs the workload raw, then through ryw; `keys` collects every key written (for cleanup).
pub(crate) async fn run<S: ProbeStore>(
    store: &S,
    prefix: &str,
    w: Workload,
    pace: &Pace,
    progress: &indicatif::ProgressBar,
    keys: &Mutex<Vec<String>>,
) -> (CheckResult, Option<ProbeError>) {
    let mut result = CheckResult::default();
    for through_ryw in [false, true] {
        let recorded = Mutex::new(Recorded::default());
        let failure: Mutex<Option<ProbeError>> = Mutex::new(None);
        let mode = if through_ryw { "ryw" } else { "raw" };
        let sessions = (0..w.sessions).map(|s| {
            let (recorded, failure) = (&recorded, &failure);
            async move {
                if let Err(e) = session(
                    store,
                    prefix,
                    mode,
                    s,
                    w,
                    through_ryw,
                    pace,
                    progress,
                    recorded,
                    keys,
                )
                .await
                {
                    failure.lock().unwrap().get_or_insert(e);
                }
            }
        });
        futures::future::join_all(sessions).await;
        let recorded = recorded.into_inner().unwrap();
        let summary = summarize(recorded);
        if through_ryw {
            result.ryw = summary;
        } else {
            result.raw = summary;
        }
        if let Some(e) = failure.into_inner().unwrap() {
            return (result, Some(e));
        }
    }
    (result, None)
}

#[allow(clippy::too_many_arguments)]
async fn session<S: ProbeStore>(
    store: &S,
    prefix: &str,
    mode: &str,
    s: usize,
    w: Workload,
    through_ryw: bool,
    pace: &Pace,
    progress: &indicatif::ProgressBar,
    recorded: &Mutex<Recorded>,
    keys: &Mutex<Vec<String>>,
) -> Result<(), ProbeError> {
    let mut rng = SimRng::new(w.seed ^ (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let key_of = |owner: usize, k: usize| format!("{prefix}/{mode}/s{owner}/k{k}");
    let mut token = Session::new()
        .token()
        .encode()
        .expect("a new token encodes");
    let mut follow_up: Option<String> = None;
    for n in 0..w.ops {
        let (write, key) = match follow_up.take() {
            Some(key) => {
                tokio::time::sleep(Duration::from_millis(rng.below(20) as u64)).await;
                (false, key)
            }
            None => {
                tokio::time::sleep(Duration::from_millis(rng.below(30) as u64)).await;
                let write = rng.chance(0.35);
                let owner = if !write && w.sessions > 1 && rng.chance(0.2) {
                    (s + 1 + rng.below(w.sessions - 1)) % w.sessions
                } else {
                    s
                };
                let key = key_of(owner, rng.below(3));
                if write && rng.chance(0.7) {
                    follow_up = Some(key.clone());
                }
                (write, key)
            }
        };
        pace.slot().await?;
        let value = ((s as u64 + 1) << 32) | (n as u64 + 1);
        let instance = rng.below(w.instances.max(1));
        let invoked = Instant::now();
        let mut status = ReadStatus::Unchecked;
        let mut strong = false;
        if write {
            // Noted before it is sent: a write that fails may still have applied.
            keys.lock().unwrap().push(key.clone());
        }
        let observed = if through_ryw {
            let session = Session::from_encoded(&token).expect("own token decodes");
            let observed = if write {
                store.ryw_write(instance, &session, &key, value).await?;
                None
            } else {
                let r = store.ryw_read(instance, &session, &key).await?;
                status = match &r.visibility {
                    Visibility::Guaranteed(_) => ReadStatus::Guaranteed,
                    _ => ReadStatus::Pending,
                };
                strong = matches!(
                    r.visibility.path(),
                    Some(FencePath::Escalated | FencePath::ServerWait)
                );
                Some(r.value)
            };
            token = session.token().encode().expect("token encodes");
            observed
        } else if write {
            store.write(&key, value).await?;
            None
        } else {
            Some(store.read_cheap(&key).await?)
        };
        let completed = Instant::now();
        let mut r = recorded.lock().unwrap();
        let kind = match observed {
            None => {
                r.log.push(LogEntry {
                    position: value,
                    key: key.as_str().into(),
                    value,
                    write_id: None,
                    clock: None,
                    at_micros: 0,
                });
                OpKind::Write { value, ok: true }
            }
            Some(seen) => {
                r.latencies.push((completed - invoked).as_micros() as u64);
                r.strong += u64::from(strong);
                r.pending += u64::from(status == ReadStatus::Pending);
                OpKind::Read {
                    observed: Some(ryw::Version::new(seen.unwrap_or(0))),
                    status,
                }
            }
        };
        r.ops.push(Op {
            session: s,
            key: key.as_str().into(),
            kind,
            invoked_micros: micros(invoked),
            completed_micros: micros(completed),
            detached: false,
        });
        drop(r);
        progress.inc(1);
    }
    Ok(())
}

/// Microseconds since the process's first call (the checker orders operations by them).
fn micros(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| Instant::now() - Duration::from_secs(1));
    at.saturating_duration_since(start).as_micros() as u64
}

fn summarize(r: Recorded) -> RunSummary {
    let history = History {
        ops: r.ops,
        log: r.log,
    };
    let report = check(&history);
    let mut stale: Vec<usize> = report
        .violations
        .iter()
        .filter_map(|v| v.ops.last().copied())
        .filter(|&i| matches!(history.ops[i].kind, OpKind::Read { .. }))
        .collect();
    stale.sort_unstable();
    stale.dedup();
    let mut lat = r.latencies.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (lat.len() - 1) as f64).round() as usize;
        lat[i] as f64 / 1000.0
    };
    RunSummary {
        violations: report.guarantee_violations() as u64,
        reads: lat.len() as u64,
        writes: history
            .ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Write { .. }))
            .count() as u64,
        strong_reads: r.strong,
        stale_reads: stale.len() as u64,
        pending: r.pending,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        latencies_us: r.latencies,
    }
}
