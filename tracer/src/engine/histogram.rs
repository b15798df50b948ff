//! Fixed log-scale ("1-2-5") histogram of durations, from 1 µs to 1 h plus +Inf.
//!
//! Consumes durations in nanoseconds; produces counts, sum, min/max, interpolated quantiles and
//! cumulative buckets in seconds for a Prometheus exporter. Fixed size, no allocation.

/// Upper bounds (inclusive, ns) of the finite buckets: 1 µs, 2 µs, 5 µs, 10 µs, … 1000 s,
/// 2000 s, 3600 s. A value `v` falls in the first bucket whose bound is `>= v` (Prometheus `le`
/// semantics); values above 3600 s fall in the +Inf bucket.
pub const BOUNDS_NS: [u64; 30] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    50_000_000_000,
    100_000_000_000,
    200_000_000_000,
    500_000_000_000,
    1_000_000_000_000,
    2_000_000_000_000,
    3_600_000_000_000,
];

/// Number of buckets: the finite ones plus +Inf.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Upper bounds (ns) for idle time before a close, chosen so that the usual middlebox idle
/// timeouts — 30 s, 60 s, 300 s, 350 s (cloud load balancers), 900 s — each sit in the middle
/// of a bucket of their own: (25, 35], (55, 65], (290, 310], (340, 360], (850, 950] s.
pub const IDLE_BOUNDS_NS: [u64; 25] = {
    const S: u64 = 1_000_000_000;
    [
        S / 10,
        S / 2,
        S,
        2 * S,
        5 * S,
        10 * S,
        20 * S,
        25 * S,
        35 * S,
        50 * S,
        55 * S,
        65 * S,
        90 * S,
        120 * S,
        240 * S,
        290 * S,
        310 * S,
        340 * S,
        360 * S,
        600 * S,
        850 * S,
        950 * S,
        1_800 * S,
        3_600 * S,
        7_200 * S,
    ]
};

/// A histogram of durations (ns), over [`BOUNDS_NS`] or another set of at most as many bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [u64],
    counts: [u64; BUCKETS],
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        Self::with_bounds(&BOUNDS_NS)
    }

    /// A histogram over other bounds (increasing, at most `BOUNDS_NS.len()` of them).
    pub const fn with_bounds(bounds: &'static [u64]) -> Self {
        assert!(bounds.len() <= BOUNDS_NS.len());
        Histogram {
            bounds,
            counts: [0; BUCKETS],
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    /// Index of the bucket holding `ns` (of the default bounds).
    pub fn bucket_index(ns: u64) -> usize {
        BOUNDS_NS.partition_point(|&b| b < ns)
    }

    /// Records one duration.
    pub fn record(&mut self, ns: u64) {
        self.counts[self.bounds.partition_point(|&b| b < ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sum of all recorded durations (ns).
    pub fn sum_ns(&self) -> u128 {
        self.sum_ns
    }

    /// Sum of all recorded durations in seconds (for Prometheus `_sum`).
    pub fn sum_seconds(&self) -> f64 {
        // u128 → f64 loses precision only beyond 2^53 ns (~104 days of summed time), in the
        // last digits.
        self.sum_ns as f64 / 1e9
    }

    pub fn max_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_ns)
    }

    pub fn min_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_ns)
    }

    /// Raw (non-cumulative) count of bucket `i` (`BOUNDS_NS[i]`, or +Inf for the last).
    pub fn bucket_count(&self, i: usize) -> u64 {
        self.counts.get(i).copied().unwrap_or(0)
    }

    /// `(upper bound in seconds, cumulative count)` for every bucket, +Inf last
    /// (`f64::INFINITY`, cumulative = [`Histogram::count`]). An exporter that wants bounds from
    /// 10 µs up filters on the first element.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut cum = 0u64;
        let bounds = self.bounds;
        self.counts[..=bounds.len()]
            .iter()
            .enumerate()
            .map(move |(i, &c)| {
                cum += c;
                let le = bounds.get(i).map_or(f64::INFINITY, |&b| b as f64 / 1e9);
                (le, cum)
            })
    }

    /// Estimated `q` quantile (0.0..=1.0) in ns: find the bucket where the cumulative count
    /// reaches `q·count`, interpolate linearly between its bounds (0 below the first; the
    /// largest value seen stands in for +Inf), then clamp to the smallest and largest values
    /// seen. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = q * self.count as f64;
        let mut cum = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let prev = cum;
            cum += c;
            if (cum as f64) >= rank {
                let lower = if i == 0 { 0 } else { self.bounds[i - 1] };
                let upper = self
                    .bounds
                    .get(i)
                    .copied()
                    .unwrap_or(self.max_ns)
                    .max(lower);
                let frac = ((rank - prev as f64) / c as f64).clamp(0.0, 1.0);
                let est = lower as f64 + (upper - lower) as f64 * frac;
                // Saturating float → int cast; then clamp into what was actually seen.
                let est = est as u64;
                return Some(est.clamp(self.min_ns, self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

impl Histogram {
    /// What was recorded after `earlier` (an older copy of this histogram): the bucket counts'
    /// difference. The window's smallest and largest values are not known exactly; they are
    /// bounded by its lowest and highest non-empty buckets (and by what the whole histogram
    /// saw), which is what [`Histogram::quantile`] clamps to.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut d = Histogram::with_bounds(self.bounds);
        for (i, (now, then)) in self.counts.iter().zip(earlier.counts.iter()).enumerate() {
            let c = now.saturating_sub(*then);
            if c == 0 {
                continue;
            }
            d.counts[i] = c;
            d.count += c;
            let lower = if i == 0 { 0 } else { self.bounds[i - 1] + 1 };
            let upper = self.bounds.get(i).copied().unwrap_or(u64::MAX);
            d.min_ns = d.min_ns.min(lower.max(self.min_ns));
            d.max_ns = d.max_ns.max(upper.min(self.max_ns));
        }
        d.sum_ns = self.sum_ns.saturating_sub(earlier.sum_ns);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_1_2_5_and_end_at_an_hour() {
        assert_eq!(BOUNDS_NS.len(), 30);
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(BOUNDS_NS[0], 1_000);
        assert_eq!(BOUNDS_NS[3], 10_000);
        assert_eq!(*BOUNDS_NS.last().unwrap(), 3_600 * 1_000_000_000);
    }

    #[test]
    fn idle_bounds_put_middlebox_timeouts_in_buckets_of_their_own() {
        let mut h = Histogram::with_bounds(&IDLE_BOUNDS_NS);
        let s = 1_000_000_000u64;
        // Each timeout, give or take a few ticks of measurement.
        let timeouts = [30, 60, 300, 350, 900];
        let bucket = |ns: u64| IDLE_BOUNDS_NS.partition_point(|&b| b < ns);
        let idx: Vec<usize> = timeouts.iter().map(|&t| bucket(t * s)).collect();
        for (&t, &i) in timeouts.iter().zip(&idx) {
            assert_eq!(bucket(t * s - s / 50), i);
            assert_eq!(bucket(t * s + s / 50), i);
            h.record(t * s);
        }
        let mut dedup = idx.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), timeouts.len(), "{idx:?}");
        assert_eq!(h.buckets().count(), IDLE_BOUNDS_NS.len() + 1);
        assert_eq!(h.buckets().last(), Some((f64::INFINITY, 5)));
        assert!(IDLE_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn le_semantics() {
        assert_eq!(Histogram::bucket_index(0), 0);
        assert_eq!(Histogram::bucket_index(1_000), 0);
        assert_eq!(Histogram::bucket_index(1_001), 1);
        assert_eq!(Histogram::bucket_index(3_600_000_000_000), 29);
        assert_eq!(Histogram::bucket_index(3_600_000_000_001), 30);
        assert_eq!(Histogram::bucket_index(u64::MAX), 30);
    }

    #[test]
    fn quantiles_interpolate_and_clamp() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..10 {
            h.record(1_500);
        }
        // All in (1µs, 2µs]; clamped to the single value seen.
        assert_eq!(h.quantile(0.5), Some(1_500));
        assert_eq!(h.quantile(0.99), Some(1_500));

        let mut h = Histogram::new();
        for i in 1..=100u64 {
            h.record(i * 10_000_000); // 10ms .. 1s
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((400_000_000..=600_000_000).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((900_000_000..=1_000_000_000).contains(&p99), "{p99}");
        assert_eq!(h.max_ns(), Some(1_000_000_000));
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum_ns(), (1..=100u128).sum::<u128>() * 10_000_000);
    }

    #[test]
    fn inf_bucket_uses_max() {
        let mut h = Histogram::new();
        h.record(10 * 3_600_000_000_000);
        assert_eq!(h.quantile(0.5), Some(10 * 3_600_000_000_000));
        let b: Vec<_> = h.buckets().collect();
        assert_eq!(b.len(), 31);
        assert_eq!(b[29], (3600.0, 0));
        assert_eq!(b[30], (f64::INFINITY, 1));
    }

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::new();
        h.record(500);
        h.record(15_000);
        h.record(15_000);
        let b: Vec<_> = h.buckets().collect();
        assert_eq!(b[0], (1e-6, 1));
        assert_eq!(b[3].1, 1);
        assert_eq!(b[4], (2e-5, 3));
        assert_eq!(b[30].1, 3);
    }

    #[test]
    fn since_is_the_window_between_two_copies() {
        let mut h = Histogram::new();
        for _ in 0..100 {
            h.record(10_000); // 10 µs
        }
        let then = h.clone();
        for _ in 0..10 {
            h.record(3_000_000_000); // 3 s
        }
        let w = h.since(&then);
        assert_eq!(w.count(), 10);
        assert_eq!(w.sum_ns(), 30_000_000_000);
        // Only the window's samples: p50 is in (2 s, 5 s], not the 10 µs of before.
        let p50 = w.quantile(0.5).unwrap();
        assert!((2_000_000_001..=3_000_000_000).contains(&p50), "{p50}");
        assert_eq!(w.max_ns(), Some(3_000_000_000));
        assert!(h.since(&h).is_empty());
        assert_eq!(h.since(&Histogram::new()), h.since(&Histogram::new()));
        assert_eq!(h.since(&Histogram::new()).count(), 110);
    }
}
