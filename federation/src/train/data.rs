//! The rows a bank trains on: features and labels as f32, the global standardization,
//! and the deterministic train/holdout split.

use serde::{Deserialize, Serialize};

use super::*;

/// One bank's rows, standardized: `x` row-major `rows × features`, `y` in {0, 1}.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Feature names, in column order.
    pub features: Vec<String>,
    /// Row-major values.
    pub x: Vec<f32>,
    /// Labels, 0 or 1.
    pub y: Vec<f32>,
}

impl Dataset {
    /// A dataset of already prepared values; checks shapes, labels and finiteness.
    pub fn new(features: Vec<String>, x: Vec<f32>, y: Vec<f32>) -> Result<Self> {
        let d = features.len();
        if d == 0 || d > MAX_FEATURES {
            return Err(invalid(format!("{d} features; 1 to {MAX_FEATURES}")));
        }
        if x.len() != y.len() * d {
            return Err(invalid(format!(
                "{} values for {} rows of {d} features",
                x.len(),
                y.len()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "row {} feature `{}` is {}",
                i / d,
                features[i % d],
                x[i]
            )));
        }
        if let Some(i) = y.iter().position(|v| *v != 0.0 && *v != 1.0) {
            return Err(invalid(format!("label of row {i} is {}, not 0 or 1", y[i])));
        }
        Ok(Self { features, x, y })
    }

    /// Prepare raw columns (`columns[f][row]`, NaN = missing) with the global
    /// statistics: `(t(x) − mean) / std`, missing as 0.
    pub fn prepare(
        features: Vec<String>,
        columns: &[Vec<f64>],
        labels: &[f64],
        stats: &Standardizer,
    ) -> Result<Self> {
        let d = features.len();
        if columns.len() != d || stats.mean.len() != d {
            return Err(invalid(format!(
                "{} columns and {} statistics for {d} features",
                columns.len(),
                stats.mean.len()
            )));
        }
        let n = labels.len();
        if let Some(c) = columns.iter().position(|c| c.len() != n) {
            return Err(invalid(format!(
                "column `{}` has {} rows, the labels {n}",
                features[c],
                columns[c].len()
            )));
        }
        let mut x = Vec::with_capacity(n * d);
        for r in 0..n {
            for (f, col) in columns.iter().enumerate() {
                x.push(stats.apply(f, col[r]) as f32);
            }
        }
        let y = labels
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if *v == 0.0 || *v == 1.0 {
                    Ok(*v as f32)
                } else {
                    Err(invalid(format!("label of row {i} is {v}, not 0 or 1")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(features, x, y)
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// Features per row.
    pub fn dim(&self) -> usize {
        self.features.len()
    }

    pub(super) fn row(&self, i: usize) -> &[f32] {
        let d = self.dim();
        &self.x[i * d..(i + 1) * d]
    }

    /// Rows `idx`, as a new dataset (for splits).
    pub fn subset(&self, idx: &[usize]) -> Self {
        let mut x = Vec::with_capacity(idx.len() * self.dim());
        for &i in idx {
            x.extend_from_slice(self.row(i));
        }
        Self {
            features: self.features.clone(),
            x,
            y: idx.iter().map(|&i| self.y[i]).collect(),
        }
    }
}

/// Global standardization: per feature, mean and standard deviation of `t(x)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean of the transformed feature.
    pub mean: Vec<f64>,
    /// Standard deviation of the transformed feature (at least 1e-6).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// The prepared value of feature `f`.
    pub fn apply(&self, f: usize, raw: f64) -> f64 {
        if raw.is_finite() {
            (TRANSFORM.apply(raw) - self.mean[f]) / self.std[f]
        } else {
            0.0
        }
    }

    /// Statistics of raw columns (one bank alone, or the pooled data).
    pub fn fit(columns: &[Vec<f64>]) -> Self {
        let mut mean = Vec::new();
        let mut std = Vec::new();
        for c in columns {
            let (n, s, s2) = transformed_moments(c);
            let n = n as f64;
            let m = if n > 0.0 { s / n } else { 0.0 };
            let var = if n > 0.0 { s2 / n - m * m } else { 1.0 };
            mean.push(m);
            std.push(var.max(0.0).sqrt().max(1e-6));
        }
        Self { mean, std }
    }
}

/// Count, sum and sum of squares of `t(x)` over the present (finite) values of a raw
/// column: what local and secure statistics are both built from.
pub fn transformed_moments(column: &[f64]) -> (u64, f64, f64) {
    let (mut n, mut s, mut s2) = (0u64, 0.0, 0.0);
    for v in column.iter().filter(|v| v.is_finite()) {
        let t = TRANSFORM.apply(*v);
        n += 1;
        s += t;
        s2 += t * t;
    }
    (n, s, s2)
}

/// A deterministic split of `rows` row indices into (train, test): row `i` is held out
/// when a hash of `(seed, i)` falls below `test_fraction`.
pub fn split_rows(rows: usize, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for i in 0..rows {
        // SplitMix64 of (seed, i): uniform enough, and stable across runs and machines.
        let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if ((z >> 11) as f64 / (1u64 << 53) as f64) < test_fraction {
            test.push(i);
        } else {
            train.push(i);
        }
    }
    (train, test)
}
