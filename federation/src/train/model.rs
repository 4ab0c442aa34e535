//! The model families (logistic regression, MLP): parameters, forward pass, export as a
//! registry model, and AUC.

use rand::Rng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use quiver_registry::{Activation, DenseLayer, NativeModel};

use super::*;

/// Model family trained by the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Architecture {
    /// `sigmoid(w·x + b)`.
    LogisticRegression,
    /// One tanh hidden layer of `hidden` units, then a logit.
    Mlp {
        /// Hidden units.
        hidden: usize,
    },
}

impl Architecture {
    /// Check the sizes.
    pub fn validate(&self, dim: usize) -> Result<()> {
        if dim == 0 || dim > MAX_FEATURES {
            return Err(invalid(format!("{dim} features; 1 to {MAX_FEATURES}")));
        }
        if let Self::Mlp { hidden } = self
            && !(1..=MAX_HIDDEN).contains(hidden)
        {
            return Err(invalid(format!("{hidden} hidden units; 1 to {MAX_HIDDEN}")));
        }
        Ok(())
    }

    /// Parameters of a model over `dim` features.
    pub fn num_params(&self, dim: usize) -> usize {
        match self {
            Self::LogisticRegression => dim + 1,
            Self::Mlp { hidden } => hidden * dim + hidden + hidden + 1,
        }
    }

    /// Initial parameters (Glorot-uniform hidden weights from `seed`, zeros for LR).
    pub fn init(&self, dim: usize, seed: u64) -> Vec<f32> {
        let mut p = vec![0.0f32; self.num_params(dim)];
        if let Self::Mlp { hidden } = *self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let a = (6.0 / (dim + hidden) as f32).sqrt();
            for w in &mut p[..hidden * dim] {
                *w = rng.random_range(-a..a);
            }
            let a2 = (6.0 / (hidden + 1) as f32).sqrt();
            let off = hidden * dim + hidden;
            for w in &mut p[off..off + hidden] {
                *w = rng.random_range(-a2..a2);
            }
        }
        p
    }

    /// Logit of one prepared row; with `grad`, also adds ∂loss/∂params of this row's
    /// log-loss into `grad` and returns the loss.
    pub(super) fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        y: f32,
        grad: Option<&mut [f32]>,
        scratch: &mut Vec<f32>,
    ) -> (f32, f32) {
        let d = x.len();
        match *self {
            Self::LogisticRegression => {
                let z = p[d] + p[..d].iter().zip(x).map(|(w, v)| w * v).sum::<f32>();
                let loss = log_loss(z, y);
                if let Some(g) = grad {
                    let dz = sigmoid(z) - y;
                    for (g, v) in g[..d].iter_mut().zip(x) {
                        *g += dz * v;
                    }
                    g[d] += dz;
                }
                (z, loss)
            }
            Self::Mlp { hidden: h } => {
                let (w1, rest) = p.split_at(h * d);
                let (b1, rest) = rest.split_at(h);
                let (w2, b2) = rest.split_at(h);
                scratch.clear();
                scratch.extend((0..h).map(|u| {
                    let row = &w1[u * d..(u + 1) * d];
                    (b1[u] + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>()).tanh()
                }));
                let z = b2[0]
                    + w2.iter()
                        .zip(scratch.iter())
                        .map(|(w, a)| w * a)
                        .sum::<f32>();
                let loss = log_loss(z, y);
                if let Some(g) = grad {
                    let dz = sigmoid(z) - y;
                    let (gw1, rest) = g.split_at_mut(h * d);
                    let (gb1, rest) = rest.split_at_mut(h);
                    let (gw2, gb2) = rest.split_at_mut(h);
                    gb2[0] += dz;
                    for u in 0..h {
                        let a = scratch[u];
                        gw2[u] += dz * a;
                        let dh = dz * w2[u] * (1.0 - a * a);
                        gb1[u] += dh;
                        for (g, v) in gw1[u * d..(u + 1) * d].iter_mut().zip(x) {
                            *g += dh * v;
                        }
                    }
                }
                (z, loss)
            }
        }
    }

    /// Scores (probabilities) of every row of `data`.
    pub fn predict(&self, p: &[f32], data: &Dataset) -> Vec<f32> {
        let mut scratch = Vec::new();
        (0..data.rows())
            .map(|i| sigmoid(self.forward(p, data.row(i), 0.0, None, &mut scratch).0))
            .collect()
    }

    /// Mean log-loss over `data`.
    pub fn loss(&self, p: &[f32], data: &Dataset) -> f64 {
        let mut scratch = Vec::new();
        let s: f64 = (0..data.rows())
            .map(|i| {
                f64::from(
                    self.forward(p, data.row(i), data.y[i], None, &mut scratch)
                        .1,
                )
            })
            .sum();
        s / data.rows().max(1) as f64
    }

    /// Area under the ROC curve of the model on `data`.
    pub fn auc(&self, p: &[f32], data: &Dataset) -> f64 {
        auc(&self.predict(p, data), &data.y)
    }

    /// The registry artifact: a native model over raw feature values, with the
    /// transform and the standardization folded into the first layer.
    pub fn export(&self, p: &[f32], features: &[String], stats: &Standardizer) -> NativeModel {
        let d = features.len();
        // Raw value whose transform is the mean: what a missing input stands for.
        let baseline: Vec<f64> = stats
            .mean
            .iter()
            .map(|m| m.signum() * m.abs().exp_m1())
            .collect();
        // w·(t − m)/s + b = (w/s)·t + (b − Σ w m / s).
        let fold = |w: &[f32], b: f32| -> (Vec<f64>, f64) {
            let mut bias = f64::from(b);
            let ws = w
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let w = f64::from(*w) / stats.std[i];
                    bias -= w * stats.mean[i];
                    w
                })
                .collect();
            (ws, bias)
        };
        match *self {
            Self::LogisticRegression => {
                let (weights, intercept) = fold(&p[..d], p[d]);
                NativeModel::LogisticRegression {
                    features: features.to_vec(),
                    weights,
                    intercept,
                    baseline: Some(baseline),
                    transform: Some(TRANSFORM),
                }
            }
            Self::Mlp { hidden: h } => {
                let (w1, rest) = p.split_at(h * d);
                let (b1, rest) = rest.split_at(h);
                let (w2, b2) = rest.split_at(h);
                let (mut weights, mut bias) = (Vec::new(), Vec::new());
                for u in 0..h {
                    let (w, b) = fold(&w1[u * d..(u + 1) * d], b1[u]);
                    weights.push(w);
                    bias.push(b);
                }
                NativeModel::Mlp {
                    features: features.to_vec(),
                    layers: vec![
                        DenseLayer {
                            weights,
                            bias,
                            activation: Activation::Tanh,
                        },
                        DenseLayer {
                            weights: vec![w2.iter().map(|w| f64::from(*w)).collect()],
                            bias: vec![f64::from(b2[0])],
                            activation: Activation::Identity,
                        },
                    ],
                    baseline: Some(baseline),
                    transform: Some(TRANSFORM),
                }
            }
        }
    }
}

pub(super) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Log-loss of logit `z` for label `y`, computed stably.
pub(super) fn log_loss(z: f32, y: f32) -> f32 {
    // softplus(z) − y·z
    let sp = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    sp - y * z
}

/// Area under the ROC curve (ties counted half); 0.5 when a class is absent.
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let (mut rank_sum, mut pos) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] == 1.0 {
                rank_sum += avg_rank;
                pos += 1.0;
            }
        }
        i = j + 1;
    }
    let neg = scores.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}
