//! The fence configuration for a store, from its measured catch-up times, with the adaptive
//! fence's own estimator ([`ryw::adaptive::CatchUpSketch`]).

use crate::lag::LagResult;
use ryw::adaptive::CatchUpSketch;
use serde::Serialize;
use std::time::Duration;

/// What to configure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// `reread` (re-read once after `delay_ms`, then escalate) or `escalate` (go to the strong
    /// path at once: a re-read within the budget rarely meets the fence).
    pub kind: &'static str,
    /// The re-read delay (ms), for `reread`.
    pub delay_ms: Option<u64>,
    /// Re-reads before escalating.
    pub rereads: u32,
    /// The latency budget it was chosen for (ms).
    pub budget_ms: u64,
    /// The estimated share of stale reads a re-read at `delay_ms` (or at the budget) would meet.
    pub p_caught_up: Option<f64>,
    /// The estimated catch-up time quantiles (ms).
    pub catch_up_p50_ms: Option<u64>,
    /// 90th percentile.
    pub catch_up_p90_ms: Option<u64>,
    /// The layer configuration, as Rust.
    pub code: String,
}

/// The share of stale reads a re-read must meet for it to be worth the wait.
const WORTH_IT: f64 = 0.5;

/// From the probe's times to visibility: re-read at the catch-up's p90 when it fits `budget`,
/// else at the budget when most stale reads would have caught up by then, else escalate.
pub(crate) fn recommend(lag: &LagResult, budget: Duration) -> Recommendation {
    let longest = lag
        .t_visibility
        .last()
        .map_or(0, |p| p.delay_ms)
        .saturating_mul(2)
        .max(1);
    let mut sketch = CatchUpSketch::default();
    for t in &lag.time_to_visibility_ms {
        // A write no read saw within the longest delay caught up later than that.
        sketch.record(Duration::from_millis(t.unwrap_or(longest)));
    }
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let p50 = sketch.quantile(0.5);
    let p90 = sketch.quantile(0.9);
    let budget_ms = budget.as_millis() as u64;
    let (kind, delay) = match p90 {
        Some(p) if p <= budget => ("reread", Some(p.max(Duration::from_millis(1)))),
        _ if sketch.caught_up_by(budget).unwrap_or(0.0) >= WORTH_IT => ("reread", Some(budget)),
        _ => ("escalate", None),
    };
    let code = match delay {
        Some(d) => format!(
            "ReadYourWritesLayer::new(adapter).fence(FenceConfig::verify_then_escalate(1, \
             Duration::from_millis({})))  // or .adaptive_fence(AdaptiveFence::new(Duration::from_millis({budget_ms}))), which learns it",
            d.as_millis()
        ),
        None => format!(
            "ReadYourWritesLayer::new(adapter).fence(FenceConfig::verify_then_escalate(0, Duration::ZERO))  \
             // or .adaptive_fence(AdaptiveFence::new(Duration::from_millis({budget_ms}))), which learns it"
        ),
    };
    Recommendation {
        kind,
        delay_ms: ms(delay),
        rereads: u32::from(delay.is_some()),
        budget_ms,
        p_caught_up: sketch.caught_up_by(delay.unwrap_or(budget)),
        catch_up_p50_ms: ms(p50),
        catch_up_p90_ms: ms(p90),
        code,
    }
}
