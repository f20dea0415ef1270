//! t-visibility: write probe items, read each back on the cheap path at a set of delays.

use crate::error::ProbeError;
use crate::pace::Pace;
use crate::store::ProbeStore;
use futures::stream::{self, StreamExt};
use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// One point of the curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VisibilityPoint {
    /// The delay after the write was acknowledged (ms).
    pub delay_ms: u64,
    /// The share of cheap reads at that delay that saw the write.
    pub p_visible: f64,
    /// Reads at that delay.
    pub samples: u64,
}

/// What the probe measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LagResult {
    /// The t-visibility curve, by delay.
    pub t_visibility: Vec<VisibilityPoint>,
    /// For each probe write that was read back, the first delay at which a cheap read saw it
    /// (ms), `None` when none did within the longest delay.
    pub time_to_visibility_ms: Vec<Option<u64>>,
    /// Quantiles of that time (ms; `None`: past the longest delay).
    pub staleness: Staleness,
}

/// Quantiles of how long a write stayed invisible to cheap reads.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Staleness {
    /// Median.
    pub p50_ms: Option<u64>,
    /// 90th percentile.
    pub p90_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
    /// Probe writes no cheap read saw within the longest delay.
    pub unseen: u64,
}

#[derive(Default)]
struct Tally {
    visible: Vec<u64>,
    samples: Vec<u64>,
    first: Vec<Option<u64>>,
}

/// Runs `writes` probes, `concurrency` at a time; returns what it gathered, and the error that
/// stopped it, if one did.
pub(crate) async fn run<S: ProbeStore>(
    store: &S,
    keys: &[String],
    delays: &[u64],
    concurrency: usize,
    pace: &Pace,
    progress: &indicatif::ProgressBar,
    written: &Mutex<Vec<String>>,
) -> (LagResult, Option<ProbeError>) {
    let tally = Mutex::new(Tally {
        visible: vec![0; delays.len()],
        samples: vec![0; delays.len()],
        first: Vec::new(),
    });
    let failure: Mutex<Option<ProbeError>> = Mutex::new(None);
    stream::iter(keys.iter().enumerate())
        .for_each_concurrent(concurrency.max(1), |(i, key)| {
            let (tally, failure) = (&tally, &failure);
            async move {
                if failure.lock().unwrap().is_some() {
                    return;
                }
                match probe(store, key, i as u64 + 1, delays, pace, tally, written).await {
                    Ok(()) => progress.inc(1),
                    Err(e) => {
                        let mut f = failure.lock().unwrap();
                        if f.is_none() {
                            *f = Some(e);
                        }
                    }
                }
            }
        })
        .await;
    let tally = tally.into_inner().unwrap();
    let t_visibility = delays
        .iter()
        .enumerate()
        .map(|(i, &delay_ms)| VisibilityPoint {
            delay_ms,
            p_visible: if tally.samples[i] == 0 {
                0.0
            } else {
                tally.visible[i] as f64 / tally.samples[i] as f64
            },
            samples: tally.samples[i],
        })
        .collect();
    let staleness = staleness(&tally.first);
    (
        LagResult {
            t_visibility,
            time_to_visibility_ms: tally.first,
            staleness,
        },
        failure.into_inner().unwrap(),
    )
}

async fn probe<S: ProbeStore>(
    store: &S,
    key: &str,
    value: u64,
    delays: &[u64],
    pace: &Pace,
    tally: &Mutex<Tally>,
    written: &Mutex<Vec<String>>,
) -> Result<(), ProbeError> {
    // The write and its reads are paced as one: a read waiting for a slot would be read later
    // than its delay.
    pace.slots(1 + delays.len() as u32).await?;
    // Noted before it is sent: a write that fails may still have applied.
    written.lock().unwrap().push(key.to_owned());
    store.write(key, value).await?;
    let written = Instant::now();
    // Each read is sent at its own delay, whatever the others take.
    let reads = delays.iter().map(|&d| async move {
        pace.until(written + Duration::from_millis(d)).await?;
        Ok::<bool, ProbeError>(store.read_cheap(key).await?.is_some_and(|v| v >= value))
    });
    let seen = futures::future::join_all(reads)
        .await
        .into_iter()
        .collect::<Result<Vec<bool>, ProbeError>>()?;
    let first = delays
        .iter()
        .zip(&seen)
        .find(|(_, visible)| **visible)
        .map(|(d, _)| *d);
    let mut t = tally.lock().unwrap();
    for (i, v) in seen.into_iter().enumerate() {
        t.samples[i] += 1;
        t.visible[i] += u64::from(v);
    }
    t.first.push(first);
    Ok(())
}

fn staleness(first: &[Option<u64>]) -> Staleness {
    let mut seen: Vec<u64> = first.iter().flatten().copied().collect();
    seen.sort_unstable();
    let unseen = (first.len() - seen.len()) as u64;
    let n = first.len();
    // Unseen writes count as later than every delay.
    let q = |p: f64| -> Option<u64> {
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        seen.get(rank - 1).copied()
    };
    Staleness {
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        unseen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_count_unseen_writes_as_later_than_every_delay() {
        let s = staleness(&[Some(0), Some(10), Some(20), None]);
        assert_eq!((s.p50_ms, s.p90_ms, s.unseen), (Some(10), None, 1));
        let s = staleness(&[]);
        assert_eq!(s.p50_ms, None);
    }
}
