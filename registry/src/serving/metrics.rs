//! Per-version serving metrics: the latency histogram, error and score counts, and
//! the PSI of score histograms.

use super::*;

/// Sub-buckets per power of two of the latency histogram: quantiles are upper bounds
/// at most 1/32 (3.1%) above the true value.
const LATENCY_SUB: u64 = 32;
/// Powers of two covered above the first 32 µs (up to about 2^40 µs, 12 days).
const LATENCY_OCTAVES: usize = 36;
const LATENCY_SLOTS: usize = (LATENCY_OCTAVES + 1) * LATENCY_SUB as usize;

/// A lock-free log-linear latency histogram (microseconds): 32 exact slots below
/// 32 µs, then 32 linear sub-buckets per power of two, like HdrHistogram with two
/// significant binary digits of five. Recording is one atomic add.
///
/// ```
/// use quiver_registry::LatencyHistogram;
/// let h = LatencyHistogram::default();
/// for _ in 0..1000 { h.record(12_000); }
/// let p99 = h.quantile(0.99);
/// assert!((12_000..=12_375).contains(&p99)); // a 16-bucket histogram said 20,000
/// ```
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: (0..LATENCY_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    pub(super) fn slot(us: u64) -> usize {
        if us < LATENCY_SUB {
            return us as usize;
        }
        let e = 63 - us.leading_zeros() as u64; // >= 5
        let sub = (us >> (e - 5)) & (LATENCY_SUB - 1);
        (((e - 4) * LATENCY_SUB + sub) as usize).min(LATENCY_SLOTS - 1)
    }

    /// The largest value that falls in `slot`.
    pub(super) fn upper(slot: usize) -> u64 {
        let slot = slot as u64;
        if slot < LATENCY_SUB {
            return slot;
        }
        let e = slot / LATENCY_SUB + 4;
        let sub = slot % LATENCY_SUB;
        ((LATENCY_SUB + sub + 1) << (e - 5)) - 1
    }

    /// Count one latency of `us` microseconds.
    pub fn record(&self, us: u64) {
        self.counts[Self::slot(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The count in every slot (to merge histograms).
    pub(super) fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile of slot counts as [`LatencyHistogram::counts`] gives them.
    pub(super) fn quantile_of(counts: &[u64], q: f64) -> u64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
        let mut seen = 0;
        for (slot, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::upper(slot);
            }
        }
        u64::MAX
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) as an upper bound in µs (0 when empty): the true value
    /// is at most 3.1% lower.
    pub fn quantile(&self, q: f64) -> u64 {
        Self::quantile_of(&self.counts(), q)
    }
}

const SCORE_BINS: usize = 20;

/// Counters of one served version.
#[derive(Debug, Default)]
pub struct VersionMetrics {
    /// Requests routed to it.
    pub requests: AtomicU64,
    /// Requests that failed (bad input, scoring error).
    pub errors: AtomicU64,
    /// Scoring latency.
    pub latency: LatencyHistogram,
    /// Score histogram over 20 equal bins of [0, 1].
    pub scores: [AtomicU64; SCORE_BINS],
    /// Sum of the scores (clamped to [0, 1]) in millionths, exact to 1e-6 per score:
    /// the `_sum` of the score histogram.
    pub score_sum_micros: AtomicU64,
}

impl VersionMetrics {
    pub(super) fn observe(&self, latency: Duration, score: Option<f64>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.latency
            .record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        match score {
            Some(s) => {
                let s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
                let bin = ((s * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1);
                self.scores[bin].fetch_add(1, Ordering::Relaxed);
                self.score_sum_micros
                    .fetch_add((s * 1e6).round() as u64, Ordering::Relaxed);
            }
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The 99th percentile latency (µs), an upper bound within 3.1%.
    pub fn p99_us(&self) -> u64 {
        self.latency.quantile(0.99)
    }

    pub(super) fn score_counts(&self) -> Vec<u64> {
        self.scores
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// A snapshot for reports.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            p50_us: self.latency.quantile(0.5),
            p99_us: self.p99_us(),
            score_counts: self.score_counts(),
            score_sum: self.score_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Most tenants whose traffic a served version counts apart; the rest share one
/// entry (named `*`), so a flood of tenant names costs bounded memory.
pub const MAX_TENANTS_TRACKED: usize = 64;

/// One version's counters per tenant (see [`ModelServer::judge`] for why).
#[derive(Debug, Default)]
pub struct TenantMetrics {
    by: Mutex<BTreeMap<String, Arc<VersionMetrics>>>,
}

impl TenantMetrics {
    /// The counters of `tenant` (made on first use; past [`MAX_TENANTS_TRACKED`]
    /// tenants, the shared `*` entry).
    pub(super) fn of(&self, tenant: &str) -> Arc<VersionMetrics> {
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = by.get(tenant) {
            return m.clone();
        }
        let name = if by.len() < MAX_TENANTS_TRACKED {
            tenant
        } else {
            "*"
        };
        by.entry(name.to_owned()).or_default().clone()
    }

    /// `(tenant, requests, errors, latency slot counts, score counts)` of every tenant.
    pub(super) fn parts(&self) -> Vec<TenantPart> {
        let by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        by.iter()
            .map(|(t, m)| TenantPart {
                tenant: t.clone(),
                requests: m.requests.load(Ordering::Relaxed),
                errors: m.errors.load(Ordering::Relaxed),
                latency: m.latency.counts(),
                scores: m.score_counts(),
            })
            .collect()
    }
}

/// One tenant's share of a version's traffic.
#[derive(Debug, Clone)]
pub(super) struct TenantPart {
    pub(super) tenant: String,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) latency: Vec<u64>,
    pub(super) scores: Vec<u64>,
}

/// The traffic of every part but those `skip` names, merged.
pub(super) fn merged(parts: &[TenantPart], skip: Option<&str>) -> TenantPart {
    let mut out = TenantPart {
        tenant: String::new(),
        requests: 0,
        errors: 0,
        latency: vec![0; LATENCY_SLOTS],
        scores: vec![0; SCORE_BINS],
    };
    for p in parts.iter().filter(|p| Some(p.tenant.as_str()) != skip) {
        out.requests += p.requests;
        out.errors += p.errors;
        for (a, b) in out.latency.iter_mut().zip(&p.latency) {
            *a += b;
        }
        for (a, b) in out.scores.iter_mut().zip(&p.scores) {
            *a += b;
        }
    }
    out
}

/// Plain copy of [`VersionMetrics`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Median latency, µs (an upper bound within 3.1%).
    pub p50_us: u64,
    /// 99th percentile latency, µs (an upper bound within 3.1%).
    pub p99_us: u64,
    /// Counts per score bin (20 bins over [0, 1]).
    pub score_counts: Vec<u64>,
    /// Sum of the scores (to 1e-6 each).
    #[serde(default)]
    pub score_sum: f64,
}

/// PSI between two histograms over the same bins (shares floored at 1e-4).
pub fn histogram_psi(expected: &[u64], actual: &[u64]) -> f64 {
    let te: u64 = expected.iter().sum();
    let ta: u64 = actual.iter().sum();
    if te == 0 || ta == 0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let e = (*e as f64 / te as f64).max(1e-4);
            let a = (*a as f64 / ta as f64).max(1e-4);
            (a - e) * (a / e).ln()
        })
        .sum()
}
