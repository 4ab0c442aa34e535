//! The feature-statistics round: per-feature counts and moments of t(x), secure-aggregated.

use super::*;

/// Largest |t(x)| of any finite f32 after the signed-log transform is 88.7.
const MOMENT_CLIP: f64 = 100.0;

/// The feature-statistics round: per feature, each bank's count of present values and
/// its (count / max_rows)-weighted mean of `t(x)` and of `t(x)²`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMoments {
    layout: Layout,
    dim: usize,
    max_rows: u64,
}

impl FeatureMoments {
    /// For `dim` features, banks of at most `max_rows` rows, at most
    /// `max_contributors` banks.
    pub fn new(dim: usize, max_rows: u64, max_contributors: usize) -> Result<Self, ProtocolError> {
        let layout = Layout::new(
            vec![
                Segment::real("weighted mean of t(x)", dim, MOMENT_CLIP),
                Segment::real("weighted mean of t(x)^2", dim, MOMENT_CLIP * MOMENT_CLIP),
                Segment::count("present values", dim),
            ],
            max_contributors,
        )?;
        Ok(Self {
            layout,
            dim,
            max_rows,
        })
    }

    /// The layout of the round's vector.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// One bank's contribution from its raw columns.
    pub fn encode(&self, columns: &[Vec<f64>]) -> Result<Vec<u32>, ProtocolError> {
        if columns.len() != self.dim {
            return Err(ProtocolError::InvalidInput(format!(
                "{} columns for {} features",
                columns.len(),
                self.dim
            )));
        }
        let (mut m1, mut m2, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for c in columns {
            let (n, s, s2) = transformed_moments(c);
            if n > self.max_rows {
                return Err(ProtocolError::InvalidInput(format!(
                    "{n} rows; the federation allows at most {} per bank (max_rows)",
                    self.max_rows
                )));
            }
            let w = self.max_rows as f64;
            m1.push((s / w) as f32);
            m2.push((s2 / w) as f32);
            counts.push(n);
        }
        Ok(self
            .layout
            .encode(&[Part::Real(&m1), Part::Real(&m2), Part::Count(&counts)])?
            .0)
    }

    /// Global statistics from the aggregated sum; also the total present values of
    /// the first feature.
    pub fn decode(&self, sum: &[u32], contributors: usize) -> (Standardizer, u64) {
        let parts = self.layout.decode(sum, contributors);
        let w = self.max_rows as f64;
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        for f in 0..self.dim {
            let n = parts[2][f];
            if n == 0.0 {
                mean.push(0.0);
                std.push(1.0);
                continue;
            }
            let m = parts[0][f] * w / n;
            let var = parts[1][f] * w / n - m * m;
            mean.push(m);
            std.push(var.max(0.0).sqrt().max(1e-6));
        }
        (Standardizer { mean, std }, parts[2][0] as u64)
    }
}
