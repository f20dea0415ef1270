//! The catch-up sketch: how long a store's replicas take to catch up, as a fixed-size,
//! deterministic streaming histogram the adaptive fence learns from.

use std::fmt;
use std::time::Duration;

/// Buckets of a [`CatchUpSketch`].
const BUCKETS: usize = 64;

/// The upper bound of the first bucket, in microseconds.
const FIRST_BOUND_MICROS: u64 = 250;

/// Upper bounds of the buckets, in microseconds: 250 µs × 2^(i/4) (four buckets per doubling, so
/// a bound is at most 19% above any value in its bucket); the last bucket is unbounded.
const BOUNDS: [u64; BUCKETS] = bounds();

const fn bounds() -> [u64; BUCKETS] {
    // 2^(k/4) for k in 0..4, in parts per 10,000.
    const STEPS: [u64; 4] = [10_000, 11_892, 14_142, 16_818];
    let mut out = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        out[i] = (FIRST_BOUND_MICROS << (i / 4)) * STEPS[i % 4] / 10_000;
        i += 1;
    }
    out[BUCKETS - 1] = u64::MAX;
    out
}

/// The bucket of `d`: the first whose upper bound is at least `d` (rounded up to a microsecond).
pub(super) fn bucket_of(d: Duration) -> usize {
    let micros = u64::try_from(d.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX);
    BOUNDS.partition_point(|&bound| bound < micros)
}

/// The upper bound of bucket `b` (`Duration::MAX` for the last, unbounded one).
pub(super) fn bound(b: usize) -> Duration {
    match BOUNDS[b] {
        u64::MAX => Duration::MAX,
        micros => Duration::from_micros(micros),
    }
}

/// A fixed-size, deterministic streaming sketch of how long replicas take to catch up: the share
/// of catch-ups within each of 64 log-spaced delays (63 bounds from 250 µs to 11.6 s, four per
/// doubling, so a reported delay is at most 19% above the true one, then one unbounded bucket),
/// with optional exponential decay.
///
/// It learns from two kinds of observations:
///
/// - exact catch-up times ([`CatchUpSketch::record`]), as a probe measures them by polling;
/// - probes ([`CatchUpSketch::record_probe`]): a re-read `delay` after a stale read found the
///   replica caught up, or not. This is what a layer sees: it never learns the exact time.
///
/// The share of catch-ups within a delay is estimated per bucket (exact samples at or below it,
/// plus probes at it) and made non-decreasing across buckets by pooling adjacent buckets that
/// disagree (the pool-adjacent-violators algorithm): the maximum-likelihood estimate for probe
/// observations, and the plain empirical distribution for exact samples.
/// [`CatchUpSketch::quantile`] is then the smallest bucket bound whose estimated share reaches
/// the quantile. Fed exact samples only and without decay, it returns the upper bound of the
/// bucket holding the sample of rank ⌈q·n⌉.
///
/// # Example
///
/// ```
/// use ryw::adaptive::CatchUpSketch;
/// use std::time::Duration;
///
/// let mut sketch = CatchUpSketch::new();
/// for ms in 1..=100 {
///     sketch.record(Duration::from_millis(ms));
/// }
/// let p90 = sketch.quantile(0.9).unwrap();
/// assert!(p90 >= Duration::from_millis(90) && p90 < Duration::from_millis(108));
/// assert_eq!(sketch.caught_up_by(Duration::from_millis(1_000)), Some(1.0));
/// ```
#[derive(Clone, PartialEq)]
pub struct CatchUpSketch {
    /// Exact samples per bucket, and their total.
    exact: [f64; BUCKETS],
    exact_total: f64,
    /// Probes per bucket of their delay, and how many found the replica caught up.
    probes: [f64; BUCKETS],
    caught_up: [f64; BUCKETS],
    /// Every weight is multiplied by this at each observation (1: no decay).
    keep: f64,
    /// The weight a bucket needs before a quantile may stop at it.
    min_weight: f64,
    observations: u64,
}

impl Default for CatchUpSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CatchUpSketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchUpSketch")
            .field("observations", &self.observations)
            .field("p50", &self.quantile(0.5))
            .field("p90", &self.quantile(0.9))
            .field("p99", &self.quantile(0.99))
            .finish_non_exhaustive()
    }
}

impl CatchUpSketch {
    /// An empty sketch that never forgets.
    pub const fn new() -> Self {
        CatchUpSketch {
            exact: [0.0; BUCKETS],
            exact_total: 0.0,
            probes: [0.0; BUCKETS],
            caught_up: [0.0; BUCKETS],
            keep: 1.0,
            min_weight: 0.0,
            observations: 0,
        }
    }

    /// An empty sketch in which an observation weighs half after `observations` more (0: never
    /// forgets).
    pub fn with_half_life(observations: u32) -> Self {
        let mut sketch = Self::new();
        if observations > 0 {
            sketch.keep = 0.5f64.powf(1.0 / f64::from(observations));
        }
        sketch
    }

    /// Sets the weight of observations a bucket needs before [`CatchUpSketch::quantile`] may
    /// stop at it (0 by default: any). A few outcomes of a cheap re-read prove little.
    pub fn min_weight(mut self, weight: f64) -> Self {
        self.min_weight = weight.max(0.0);
        self
    }

    /// Observations recorded so far (exact samples and probes, before decay).
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// The upper bound of the bucket that holds `delay`: the resolution of the sketch
    /// (`Duration::MAX` beyond 11.6 s).
    pub fn bucket_bound(delay: Duration) -> Duration {
        bound(bucket_of(delay))
    }

    /// Records an exact catch-up time.
    pub fn record(&mut self, catch_up: Duration) {
        self.decay();
        self.exact[bucket_of(catch_up)] += 1.0;
        self.exact_total += 1.0;
    }

    /// Records a probe: a read `delay` after a stale read found the replica caught up, or not.
    /// The probe counts at the bucket holding `delay`.
    pub fn record_probe(&mut self, delay: Duration, caught_up: bool) {
        self.decay();
        let b = bucket_of(delay);
        self.probes[b] += 1.0;
        if caught_up {
            self.caught_up[b] += 1.0;
        }
    }

    fn decay(&mut self) {
        self.observations += 1;
        if self.keep < 1.0 {
            self.fade(self.keep);
        }
    }

    /// Multiplies the weight of everything recorded so far by `keep` (in `[0, 1]`): for a sketch
    /// that forgets on a clock of its own rather than per observation
    /// ([`CatchUpSketch::with_half_life`]).
    pub fn fade(&mut self, keep: f64) {
        let keep = keep.clamp(0.0, 1.0);
        for w in self
            .exact
            .iter_mut()
            .chain(&mut self.probes)
            .chain(&mut self.caught_up)
        {
            *w *= keep;
        }
        self.exact_total *= keep;
    }

    /// The smallest delay by which at least a share `q` (in `(0, 1]`) of replicas had caught up,
    /// as a bucket bound (`Duration::MAX` when only the last, unbounded bucket reaches it), or
    /// `None` when no bucket with enough weight reaches `q` yet.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.quantile_bucket(q).map(bound)
    }

    pub(super) fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let fit = self.fit();
        (0..BUCKETS).find(|&b| {
            let (share, weight) = fit[b];
            weight > 0.0 && weight >= self.min_weight && share >= q
        })
    }

    /// The estimated share of replicas caught up within `delay` (at the bound of its bucket), or
    /// `None` when that bucket has less weight than [`CatchUpSketch::min_weight`] asks (or
    /// none).
    pub fn caught_up_by(&self, delay: Duration) -> Option<f64> {
        let (share, weight) = self.fit()[bucket_of(delay)];
        (weight > 0.0 && weight >= self.min_weight).then_some(share)
    }

    /// The latest bucket up to `last` with enough weight, its fitted share (the largest share
    /// known up to there: the fit never decreases) and its weight.
    pub(super) fn best_up_to(&self, last: usize) -> Option<(usize, f64, f64)> {
        let fit = self.fit();
        (0..=last).rev().find_map(|b| {
            let (share, weight) = fit[b];
            (weight > 0.0 && weight >= self.min_weight).then_some((b, share, weight))
        })
    }

    /// Per bucket, the fitted share of catch-ups within its bound and the weight of what was
    /// observed there (0: nothing, and the share means nothing).
    fn fit(&self) -> [(f64, f64); BUCKETS] {
        // Pooled blocks of adjacent buckets: (caught up, weight, first bucket).
        let mut blocks = [(0.0f64, 0.0f64, 0usize); BUCKETS];
        let mut len = 0;
        let weights: [f64; BUCKETS] = std::array::from_fn(|b| self.exact_total + self.probes[b]);
        let mut below = 0.0;
        for (b, &weight) in weights.iter().enumerate() {
            below += self.exact[b];
            if weight <= 0.0 {
                continue;
            }
            blocks[len] = (below + self.caught_up[b], weight, b);
            len += 1;
            // A block that shows a larger share than the next one is pooled with it.
            while len >= 2 {
                let (s1, w1, first) = blocks[len - 2];
                let (s2, w2, _) = blocks[len - 1];
                if s1 / w1 <= s2 / w2 {
                    break;
                }
                blocks[len - 2] = (s1 + s2, w1 + w2, first);
                len -= 1;
            }
        }
        let mut out = [(0.0, 0.0); BUCKETS];
        for (i, &(s, w, first)) in blocks[..len].iter().enumerate() {
            let end = if i + 1 < len {
                blocks[i + 1].2
            } else {
                BUCKETS
            };
            for (slot, &weight) in out[first..end].iter_mut().zip(&weights[first..end]) {
                if weight > 0.0 {
                    *slot = (s / w, weight);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bounds_grow_by_a_fourth_of_a_doubling() {
        assert_eq!(BOUNDS[0], 250);
        assert_eq!(BOUNDS[4], 500);
        assert_eq!(BOUNDS[40], 250 << 10);
        for w in BOUNDS[..BUCKETS - 1].windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[1] as f64 <= w[0] as f64 * 1.19 + 1.0);
        }
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(250)), 0);
        assert_eq!(bucket_of(Duration::from_micros(251)), 1);
        assert_eq!(BOUNDS[BUCKETS - 2], 11_585_126);
        assert_eq!(bucket_of(Duration::from_secs(3_600)), BUCKETS - 1);
        for b in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(bound(b)), b);
        }
    }

    /// The reference quantile: the sample of the smallest rank `k` with `k / n >= q`.
    fn reference(sorted: &[u64], q: f64) -> u64 {
        let n = sorted.len();
        let k = (1..=n).find(|&k| k as f64 / n as f64 >= q).expect("q <= 1");
        sorted[k - 1]
    }

    proptest! {
        #[test]
        fn quantiles_of_exact_samples_match_a_sorted_reference(
            samples in proptest::collection::vec(0u64..20_000_000, 1..400),
            qs in proptest::collection::vec(1u32..=1_000, 1..8),
        ) {
            let mut sketch = CatchUpSketch::new();
            for &s in &samples {
                sketch.record(Duration::from_micros(s));
            }
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            for q in qs {
                let q = f64::from(q) / 1_000.0;
                let want = reference(&sorted, q);
                let got = sketch.quantile(q).expect("samples recorded");
                // The bound of the bucket holding the reference sample: at or above it, and the
                // bound below is under it.
                prop_assert_eq!(got, bound(bucket_of(Duration::from_micros(want))));
                prop_assert!(got >= Duration::from_micros(want));
                let b = bucket_of(got);
                if b > 0 {
                    prop_assert!(bound(b - 1) < Duration::from_micros(want));
                }
                if want >= 1_000 && got != Duration::MAX {
                    prop_assert!(got.as_micros() as f64 <= want as f64 * 1.19 + 1.0);
                }
            }
        }

        #[test]
        fn the_fitted_share_never_decreases_with_the_delay(
            probes in proptest::collection::vec((0u64..2_000_000, any::<bool>()), 1..300),
            exact in proptest::collection::vec(0u64..2_000_000, 0..50),
        ) {
            let mut sketch = CatchUpSketch::with_half_life(64);
            for (d, met) in probes {
                sketch.record_probe(Duration::from_micros(d), met);
            }
            for d in exact {
                sketch.record(Duration::from_micros(d));
            }
            let fit = sketch.fit();
            let shares: Vec<f64> = fit.iter().filter(|(_, w)| *w > 0.0).map(|(s, _)| *s).collect();
            for w in shares.windows(2) {
                prop_assert!(w[0] <= w[1] + 1e-12, "{shares:?}");
            }
            for s in shares {
                prop_assert!((0.0..=1.0 + 1e-12).contains(&s));
            }
        }
    }

    #[test]
    fn probes_estimate_the_share_caught_up_at_each_delay() {
        // Catch-up times spread evenly over 0..20 ms; probes at 5, 10 and 19 ms.
        let mut sketch = CatchUpSketch::new();
        let mut x = 12_345u64;
        for i in 0..3_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let catch_up = Duration::from_micros((x >> 33) % 20_000);
            let delay = ms([5, 10, 19][(i % 3) as usize]);
            sketch.record_probe(delay, catch_up <= delay);
        }
        for (delay, share) in [(5, 0.25), (10, 0.5), (19, 0.95)] {
            let got = sketch.caught_up_by(ms(delay)).unwrap();
            assert!((got - share).abs() < 0.05, "{delay} ms: {got}");
        }
        // Only probed delays are known: the p90 is the 19 ms bucket, nothing earlier.
        assert_eq!(
            sketch.quantile(0.9),
            Some(CatchUpSketch::bucket_bound(ms(19)))
        );
        assert_eq!(sketch.quantile(0.99), None);
        assert_eq!(sketch.caught_up_by(ms(100)), None);
    }

    #[test]
    fn old_observations_fade() {
        let mut sketch = CatchUpSketch::with_half_life(50);
        for _ in 0..2_000 {
            sketch.record(ms(1));
        }
        for _ in 0..200 {
            sketch.record(ms(100));
        }
        assert_eq!(
            sketch.quantile(0.5),
            Some(CatchUpSketch::bucket_bound(ms(100)))
        );
        let mut forever = CatchUpSketch::new();
        for _ in 0..2_000 {
            forever.record(ms(1));
        }
        for _ in 0..200 {
            forever.record(ms(100));
        }
        assert_eq!(
            forever.quantile(0.5),
            Some(CatchUpSketch::bucket_bound(ms(1)))
        );
    }
}
