//! Training-set statistics and drift measures (PSI and KS).
//!
//! At registration a model carries [`FeatureStats`] per input feature, computed from
//! its training set: count, nulls, moments, 101 quantiles (every percentile) and a
//! histogram over ten bins whose edges are the training deciles. Live values are
//! compared against them:
//!
//! - **PSI** (population stability index) over the training bins, with both shares
//!   floored at 1e-4 so an empty bin gives a large but finite value:
//!   `Σ (live_i − train_i) · ln(live_i / train_i)`. Common reading: < 0.1 stable,
//!   0.1–0.25 moderate shift, > 0.25 large shift; quiver's default threshold is 0.15.
//! - **KS** (two-sample Kolmogorov–Smirnov statistic): the largest gap between the live
//!   empirical CDF and the training CDF, the latter interpolated linearly between the
//!   stored percentiles (exact to within one percentile of the training data).
//!
//! Nulls are counted but left out of both measures.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Default PSI above which a feature (or a score) counts as drifted.
pub const DEFAULT_PSI_THRESHOLD: f64 = 0.15;
const FLOOR: f64 = 1e-4;

/// Statistics of one feature over a training set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    /// Feature name.
    pub name: String,
    /// Non-null values seen.
    pub count: u64,
    /// Null (or NaN) values seen.
    pub nulls: u64,
    /// Mean of the non-null values (0 when there are none).
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Percentiles 0, 1, ..., 100 (empty when `count` is 0).
    pub quantiles: Vec<f64>,
    /// Inner bin edges (increasing, deduplicated); bins are `(-inf, e0], (e0, e1], ..., (e_last, inf)`.
    pub edges: Vec<f64>,
    /// Share of non-null values in each bin (`edges.len() + 1` values summing to 1).
    pub shares: Vec<f64>,
}

fn bin_of(edges: &[f64], v: f64) -> usize {
    edges.partition_point(|e| *e < v)
}

impl FeatureStats {
    /// Statistics of `values` (NaN counts as null).
    ///
    /// ```
    /// use quiver_registry::FeatureStats;
    /// let train: Vec<f64> = (0..1000).map(|i| i as f64).collect();
    /// let stats = FeatureStats::from_values("amount", &train);
    /// assert_eq!(stats.count, 1000);
    /// assert!(stats.psi(&train) < 1e-9);
    /// let shifted: Vec<f64> = train.iter().map(|v| v + 300.0).collect();
    /// assert!(stats.psi(&shifted) > 0.15);
    /// assert!((stats.ks(&shifted) - 0.3).abs() < 0.02);
    /// ```
    pub fn from_values(name: &str, values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        let nulls = (values.len() - v.len()) as u64;
        v.sort_by(f64::total_cmp);
        let count = v.len() as u64;
        if v.is_empty() {
            return Self {
                name: name.into(),
                count,
                nulls,
                mean: 0.0,
                std: 0.0,
                quantiles: vec![],
                edges: vec![],
                shares: vec![1.0],
            };
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let q = |p: f64| {
            let pos = p * (v.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        let quantiles: Vec<f64> = (0..=100).map(|p| q(p as f64 / 100.0)).collect();
        let mut edges: Vec<f64> = (1..10).map(|d| quantiles[d * 10]).collect();
        edges.dedup();
        let mut counts = vec![0u64; edges.len() + 1];
        for x in &v {
            counts[bin_of(&edges, *x)] += 1;
        }
        let shares = counts.iter().map(|c| *c as f64 / n).collect();
        Self {
            name: name.into(),
            count,
            nulls,
            mean,
            std,
            quantiles,
            edges,
            shares,
        }
    }

    /// PSI of `live` against these statistics (0 when either side has no values).
    pub fn psi(&self, live: &[f64]) -> f64 {
        let mut counts = vec![0u64; self.shares.len()];
        let mut n = 0u64;
        for x in live.iter().filter(|x| !x.is_nan()) {
            counts[bin_of(&self.edges, *x)] += 1;
            n += 1;
        }
        if n == 0 || self.count == 0 {
            return 0.0;
        }
        self.psi_of_counts(&counts, n)
    }

    /// PSI of live counts per training bin (`n` values in all, more than 0).
    fn psi_of_counts(&self, counts: &[u64], n: u64) -> f64 {
        counts
            .iter()
            .zip(&self.shares)
            .map(|(c, e)| {
                let a = (*c as f64 / n as f64).max(FLOOR);
                let e = e.max(FLOOR);
                (a - e) * (a / e).ln()
            })
            .sum()
    }

    /// Training CDF at `x` (`left`: just below `x`), interpolated between percentiles.
    fn cdf(&self, x: f64, left: bool) -> f64 {
        let q = &self.quantiles;
        if q.is_empty() || x < q[0] || (left && x <= q[0]) {
            return 0.0;
        }
        if x > q[100] || (!left && x >= q[100]) {
            return 1.0;
        }
        // The percentile interval [q[i], q[i+1]] holding x, with q[i+1] > q[i].
        let below = if left {
            q.partition_point(|v| *v < x)
        } else {
            q.partition_point(|v| *v <= x)
        };
        let i = below.saturating_sub(1).min(99);
        let (lo, hi) = (q[i], q[i + 1]);
        let frac = if hi > lo {
            ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        (i as f64 + frac) / 100.0
    }

    /// KS statistic of `live` against these statistics (0 when either side is empty).
    pub fn ks(&self, live: &[f64]) -> f64 {
        let mut v: Vec<f64> = live.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() || self.count == 0 {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mut d: f64 = 0.0;
        let mut i = 0;
        while i < v.len() {
            let x = v[i];
            let j = i + v[i..].partition_point(|y| *y <= x);
            // Just below x both CDFs are at their left limits; at x both have jumped.
            d = d
                .max((self.cdf(x, true) - i as f64 / n).abs())
                .max((self.cdf(x, false) - j as f64 / n).abs());
            i = j;
        }
        d
    }
}

/// Drift of one feature, as reported by the CLI and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Feature name.
    pub feature: String,
    /// Live non-null values compared.
    pub live_count: u64,
    /// Population stability index.
    pub psi: f64,
    /// Kolmogorov–Smirnov statistic.
    pub ks: f64,
    /// Whether `psi` is above the threshold used.
    pub drifted: bool,
}

/// Drift of each feature of `stats` given live columns by name (features without live
/// values are skipped).
pub fn drift_report(
    stats: &[FeatureStats],
    live: &std::collections::HashMap<String, Vec<f64>>,
    psi_threshold: f64,
) -> Vec<DriftReport> {
    stats
        .iter()
        .filter_map(|s| {
            let values = live.get(&s.name)?;
            let psi = s.psi(values);
            Some(DriftReport {
                feature: s.name.clone(),
                live_count: values.iter().filter(|v| !v.is_nan()).count() as u64,
                psi,
                ks: s.ks(values),
                drifted: psi > psi_threshold,
            })
        })
        .collect()
}

/// Live drift of a served model's inputs against its training statistics, over a
/// sliding window of recent rows, updated without locks.
///
/// Each feature with training statistics keeps counts over the training PSI bins and
/// over the 100 intervals between the training percentiles, in two generations of
/// `window` rows each: the current one and the one before. A report covers both (from
/// `window` to `2 × window` rows), so it follows the traffic of the last few minutes,
/// not of the whole life of the process. PSI is exact over the training bins; KS is
/// measured at the 101 training percentiles, which puts it within 0.01 (one percentile)
/// of the statistic against the interpolated training CDF.
///
/// ```
/// use quiver_registry::{FeatureStats, LiveDrift};
/// let train: Vec<f64> = (0..1000).map(|i| i as f64).collect();
/// let stats = vec![FeatureStats::from_values("amount", &train)];
/// let live = LiveDrift::new(&stats, &["amount".to_string()], 10_000);
/// for v in &train {
///     live.observe(&[v + 300.0]);
/// }
/// let r = &live.report(0.15, 100)[0];
/// assert!(r.drifted && r.psi > 0.15);
/// assert!((r.ks - 0.3).abs() < 0.02);
/// ```
#[derive(Debug)]
pub struct LiveDrift {
    features: Vec<Option<LiveFeature>>,
    window: u64,
    generation: AtomicU64,
    rows: [AtomicU64; 2],
}

#[derive(Debug)]
struct LiveFeature {
    stats: FeatureStats,
    /// Per generation: PSI bin counts, then percentile-interval counts (102: below
    /// q0, each (q_k-1, q_k], above q100), then nulls.
    counts: [Box<[AtomicU64]>; 2],
}

impl LiveFeature {
    fn psi_bins(&self) -> usize {
        self.stats.shares.len()
    }
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl LiveDrift {
    /// Drift of `features` (a model's inputs, in order) against `stats`; features
    /// without statistics are skipped. `window` rows per generation (at least 1).
    pub fn new(stats: &[FeatureStats], features: &[String], window: u64) -> Self {
        let features = features
            .iter()
            .map(|f| {
                let s = stats.iter().find(|s| &s.name == f && s.count > 0)?;
                let n = s.shares.len() + 102 + 1;
                Some(LiveFeature {
                    stats: s.clone(),
                    counts: [zeros(n), zeros(n)],
                })
            })
            .collect();
        Self {
            features,
            window: window.max(1),
            generation: AtomicU64::new(0),
            rows: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Count one row of inputs (the model's order; NaN is null).
    pub fn observe(&self, x: &[f64]) {
        let g = (self.generation.load(Ordering::Acquire) & 1) as usize;
        for (f, v) in self.features.iter().zip(x) {
            let Some(f) = f else { continue };
            let c = &f.counts[g];
            if v.is_nan() {
                c[c.len() - 1].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let pb = f.psi_bins();
            c[bin_of(&f.stats.edges, *v)].fetch_add(1, Ordering::Relaxed);
            let q = f.stats.quantiles.partition_point(|e| *e < *v);
            c[pb + q].fetch_add(1, Ordering::Relaxed);
        }
        let rows = self.rows[g].fetch_add(1, Ordering::AcqRel) + 1;
        if rows == self.window {
            // Exactly one thread gets here per generation: it clears the older one
            // and makes it current. A row counted by a thread that read the old
            // generation just before may land in the cleared one; that is noise in a
            // window of thousands, not an error.
            let next = 1 - g;
            for f in self.features.iter().flatten() {
                f.counts[next]
                    .iter()
                    .for_each(|c| c.store(0, Ordering::Relaxed));
            }
            self.rows[next].store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Rows in the current report (both generations).
    pub fn rows(&self) -> u64 {
        self.rows[0].load(Ordering::Relaxed) + self.rows[1].load(Ordering::Relaxed)
    }

    /// PSI and KS of each feature with statistics, over the window. A feature counts
    /// as drifted when its PSI is above `psi_threshold` over at least `min_rows` values
    /// (a PSI over a handful of values says nothing).
    pub fn report(&self, psi_threshold: f64, min_rows: u64) -> Vec<DriftReport> {
        self.features
            .iter()
            .flatten()
            .map(|f| {
                let n = f.counts[0].len();
                let c: Vec<u64> = (0..n)
                    .map(|i| {
                        f.counts[0][i].load(Ordering::Relaxed)
                            + f.counts[1][i].load(Ordering::Relaxed)
                    })
                    .collect();
                let pb = f.psi_bins();
                let psi_counts = &c[..pb];
                let live: u64 = psi_counts.iter().sum();
                let (psi, ks) = if live == 0 {
                    (0.0, 0.0)
                } else {
                    let psi = f.stats.psi_of_counts(psi_counts, live);
                    // Live CDF just at and just above each percentile q_k vs training.
                    let intervals = &c[pb..pb + 102];
                    let mut below = 0u64; // live values < q_k (up to ties: <= q_(k-1))
                    let mut ks: f64 = 0.0;
                    for (k, q) in f.stats.quantiles.iter().enumerate() {
                        let left = f.stats.cdf(*q, true);
                        ks = ks.max((below as f64 / live as f64 - left).abs());
                        below += intervals[k];
                        let at = below as f64 / live as f64;
                        ks = ks.max((at - f.stats.cdf(*q, false)).abs());
                    }
                    (psi, ks)
                };
                DriftReport {
                    feature: f.stats.name.clone(),
                    live_count: live,
                    psi,
                    ks,
                    drifted: live >= min_rows && psi > psi_threshold,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_matches_exact_two_sample_statistic_closely() {
        // Deterministic pseudo-random samples.
        let mut state = 42u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let train: Vec<f64> = (0..5000).map(|_| next()).collect();
        let live: Vec<f64> = (0..2000).map(|_| next().powf(1.3)).collect();
        let stats = FeatureStats::from_values("x", &train);
        // Exact two-sample KS by merging.
        let mut a = train.clone();
        let mut b = live.clone();
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let mut exact: f64 = 0.0;
        for x in a.iter().chain(&b) {
            let fa = a.partition_point(|v| v <= x) as f64 / a.len() as f64;
            let fb = b.partition_point(|v| v <= x) as f64 / b.len() as f64;
            exact = exact.max((fa - fb).abs());
        }
        let approx = stats.ks(&live);
        assert!(
            (approx - exact).abs() < 0.011,
            "approx {approx} exact {exact}"
        );
    }

    #[test]
    fn nulls_and_constants_are_handled() {
        let s = FeatureStats::from_values("c", &[1.0, 1.0, f64::NAN, 1.0]);
        assert_eq!((s.count, s.nulls), (3, 1));
        assert_eq!(s.edges, vec![1.0]);
        assert!(s.psi(&[1.0, 1.0]) < 1e-9);
        assert!(s.psi(&[5.0, 5.0]) > 1.0);
        assert_eq!(s.ks(&[1.0]), 0.0);
        let empty = FeatureStats::from_values("e", &[f64::NAN]);
        assert_eq!(empty.psi(&[1.0]), 0.0);
        assert_eq!(empty.ks(&[1.0]), 0.0);
    }

    #[test]
    fn live_drift_agrees_with_the_batch_measures_and_slides() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let train: Vec<f64> = (0..5000).map(|_| next()).collect();
        let stats = vec![FeatureStats::from_values("x", &train)];
        let live = LiveDrift::new(&stats, &["x".into(), "no_stats".into()], 1000);
        let shifted: Vec<f64> = (0..1500).map(|_| next().powf(1.5)).collect();
        for v in &shifted {
            live.observe(&[*v, 1.0]);
        }
        let r = live.report(0.15, 100);
        assert_eq!(r.len(), 1, "features without statistics are skipped");
        assert_eq!(r[0].live_count, 1500);
        assert!((r[0].psi - stats[0].psi(&shifted)).abs() < 1e-9);
        assert!(
            (r[0].ks - stats[0].ks(&shifted)).abs() <= 0.0101,
            "{} vs {}",
            r[0].ks,
            stats[0].ks(&shifted)
        );
        // 1,600 more rows like the training data: the shifted rows slide out.
        let same: Vec<f64> = (0..1600).map(|_| next()).collect();
        for v in &same {
            live.observe(&[*v, f64::NAN]);
        }
        let r = live.report(0.15, 100);
        assert!(r[0].live_count <= 2000 && r[0].live_count >= 1000, "{r:?}");
        assert!(r[0].psi < 0.02 && !r[0].drifted, "{r:?}");
    }
}
