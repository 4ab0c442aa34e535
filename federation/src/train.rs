//! Local training inside one bank: logistic regression and a small MLP, trained by
//! (DP-)SGD on the bank's own rows, starting from the global model of the round.
//!
//! Inputs are standardized with the federation's *global* feature statistics (built by
//! secure aggregation, see [`crate::aggregate::FeatureMoments`]) after the signed-log
//! transform `sign(x)·ln(1+|x|)`; missing values become the mean (0 after
//! standardization). The exported model folds both steps back into its weights, so it
//! takes raw feature values (see [`Architecture::export`]).
//!
//! With [`DpSgd`], every step draws a Poisson sample (each row with probability `q`),
//! clips each example's gradient to L2 norm `clip_norm`, adds Gaussian noise of
//! standard deviation `noise_multiplier · clip_norm` to the sum and divides by the
//! expected batch size `q·n` (Abadi et al., CCS 2016). The FedProx term
//! `μ/2·‖w − w_global‖²` does not touch the data and is added after the noise.
//!
//! ```
//! use quiver_federation::train::{Architecture, Dataset, LocalConfig, train_local};
//! use rand::SeedableRng;
//!
//! // y = 1 when x0 > 0: a separable toy set.
//! let x: Vec<f32> = (0..400).flat_map(|i| [(i as f32 - 200.0) / 50.0, 1.0]).collect();
//! let y: Vec<f32> = (0..400).map(|i| if i > 200 { 1.0 } else { 0.0 }).collect();
//! let data = Dataset::new(vec!["x0".into(), "x1".into()], x, y).unwrap();
//! let arch = Architecture::LogisticRegression;
//! let global = arch.init(2, 7);
//! let cfg = LocalConfig { learning_rate: 0.5, local_steps: 200, batch_size: 64, ..Default::default() };
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let out = train_local(arch, &global, &data, &cfg, &mut rng).unwrap();
//! assert!(arch.auc(&out.params, &data) > 0.99);
//! ```

use rand::Rng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use quiver_registry::{Activation, DenseLayer, InputTransform, NativeModel};

mod batched;

/// Why training could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The data or the configuration is unusable.
    #[error("training: {0}")]
    Invalid(String),
    /// The compute device failed or is not available.
    #[error("training device: {0}")]
    Device(String),
}

type Result<T> = std::result::Result<T, TrainError>;

fn invalid(m: impl Into<String>) -> TrainError {
    TrainError::Invalid(m.into())
}

/// Most features a federated model takes.
pub const MAX_FEATURES: usize = 256;
/// Widest hidden layer of the MLP.
pub const MAX_HIDDEN: usize = 1024;

/// The input transform every federated model applies before standardization.
pub const TRANSFORM: InputTransform = InputTransform::SignedLog1p;

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

    fn row(&self, i: usize) -> &[f32] {
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
    fn forward(
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

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Log-loss of logit `z` for label `y`, computed stably.
fn log_loss(z: f32, y: f32) -> f32 {
    // softplus(z) − y·z
    let sp = if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    };
    sp - y * z
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

/// Record-level differential privacy of local training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSgd {
    /// Noise standard deviation over the clipping norm (σ).
    pub noise_multiplier: f64,
    /// L2 bound of each example's gradient.
    pub clip_norm: f64,
}

/// How one bank trains in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// SGD step size.
    pub learning_rate: f64,
    /// SGD steps per round.
    pub local_steps: u64,
    /// Expected examples per step (the Poisson rate is `batch_size / rows`).
    pub batch_size: usize,
    /// FedProx proximal weight μ (0: plain local SGD).
    pub prox_mu: f64,
    /// DP-SGD; `None` trains without record-level privacy.
    pub dp: Option<DpSgd>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            local_steps: 50,
            batch_size: 256,
            prox_mu: 0.0,
            dp: None,
        }
    }
}

impl LocalConfig {
    /// Check the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(invalid(format!(
                "learning_rate {} must be a positive number",
                self.learning_rate
            )));
        }
        if !(1..=100_000).contains(&self.local_steps) {
            return Err(invalid(format!(
                "local_steps {}; 1 to 100000",
                self.local_steps
            )));
        }
        if !(1..=1_000_000).contains(&self.batch_size) {
            return Err(invalid(format!(
                "batch_size {}; 1 to 1000000",
                self.batch_size
            )));
        }
        if !(self.prox_mu.is_finite() && self.prox_mu >= 0.0) {
            return Err(invalid(format!("prox_mu {} must be ≥ 0", self.prox_mu)));
        }
        if let Some(dp) = &self.dp {
            if !(dp.noise_multiplier.is_finite() && dp.noise_multiplier > 0.0) {
                return Err(invalid(format!(
                    "dp.noise_multiplier {} must be a positive number",
                    dp.noise_multiplier
                )));
            }
            if !(dp.clip_norm.is_finite() && dp.clip_norm > 0.0) {
                return Err(invalid(format!(
                    "dp.clip_norm {} must be a positive number",
                    dp.clip_norm
                )));
            }
        }
        Ok(())
    }

    /// The Poisson sampling rate on `rows` rows.
    pub fn sample_rate(&self, rows: usize) -> f64 {
        (self.batch_size as f64 / rows.max(1) as f64).min(1.0)
    }
}

/// What one bank's local training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// Parameters after training.
    pub params: Vec<f32>,
    /// `params − global`.
    pub delta: Vec<f32>,
    /// Mean log-loss of the *global* model on this bank's rows before training.
    pub loss_before: f64,
    /// Examples drawn over all steps.
    pub examples: u64,
    /// Examples whose gradient was clipped (DP only).
    pub clipped_examples: u64,
    /// Steps taken.
    pub steps: u64,
}

/// Where a bank's local training computes.
///
/// Written `cpu`, `cpu-batched`, `cuda` or `cuda:N` in configs and on command lines.
/// Every device draws the same Poisson samples and the same DP noise from the same
/// generator, on the host; only the gradient sums are computed on the device, so the
/// privacy guarantee does not depend on it.
///
/// ```
/// use quiver_federation::train::Device;
///
/// assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
/// assert_eq!(Device::CpuBatched.to_string(), "cpu-batched");
/// assert!("tpu".parse::<Device>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// One example at a time on one core: the reference implementation, fastest for
    /// small models.
    #[default]
    Cpu,
    /// Each step's sample as matrix products on every core (candle).
    CpuBatched,
    /// Each step's sample as matrix products on NVIDIA GPU number `N` (candle's CUDA
    /// backend; needs a build with the `gpu` feature).
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::CpuBatched => f.write_str("cpu-batched"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cpu-batched" => Ok(Self::CpuBatched),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u16>().ok())
                .map(|n| Self::Cuda(usize::from(n)))
                .ok_or_else(|| {
                    invalid(format!(
                        "device `{s}`: expected cpu, cpu-batched, cuda or cuda:N"
                    ))
                }),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = TrainError;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> Self {
        d.to_string()
    }
}

impl Device {
    /// Whether this build can train on GPUs (the `gpu` feature).
    pub const GPU_BUILD: bool = cfg!(feature = "gpu");

    /// Check that this device can be used here: a GPU build, and the GPU present.
    /// Workers check at start, before they connect.
    pub fn probe(self) -> Result<()> {
        self.candle().map(|_| ())
    }

    fn candle(self) -> Result<candle_core::Device> {
        match self {
            Self::Cpu | Self::CpuBatched => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) if Self::GPU_BUILD => candle_core::Device::new_cuda(n)
                .map_err(|e| TrainError::Device(format!("cuda:{n}: {e}"))),
            Self::Cuda(n) => Err(TrainError::Device(format!(
                "cuda:{n}: this build has no GPU support; build with `--features gpu`"
            ))),
        }
    }
}

/// Local training of one model family on one bank's rows, on one [`Device`].
///
/// The rows go to the device once, when the trainer is made; each
/// [`train`](Self::train) starts from that round's global model.
///
/// ```
/// use quiver_federation::train::{Architecture, Dataset, Device, LocalConfig, LocalTrainer};
/// use rand::SeedableRng;
///
/// let x: Vec<f32> = (0..400).flat_map(|i| [(i as f32 - 200.0) / 50.0, 1.0]).collect();
/// let y: Vec<f32> = (0..400).map(|i| if i > 200 { 1.0 } else { 0.0 }).collect();
/// let data = Dataset::new(vec!["x0".into(), "x1".into()], x, y).unwrap();
/// let arch = Architecture::Mlp { hidden: 4 };
/// let trainer = LocalTrainer::new(Device::CpuBatched, arch, data).unwrap();
/// let cfg = LocalConfig { learning_rate: 0.5, local_steps: 200, batch_size: 64, ..Default::default() };
/// let mut rng = rand::rngs::StdRng::seed_from_u64(1);
/// let out = trainer.train(&arch.init(2, 7), &cfg, &mut rng).unwrap();
/// assert!(arch.auc(&out.params, trainer.data()) > 0.99);
/// ```
pub struct LocalTrainer {
    arch: Architecture,
    device: Device,
    data: Dataset,
    batched: Option<batched::Batched>,
}

impl std::fmt::Debug for LocalTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTrainer")
            .field("arch", &self.arch)
            .field("device", &self.device)
            .field("rows", &self.data.rows())
            .field("dim", &self.data.dim())
            .finish()
    }
}

impl LocalTrainer {
    /// A trainer of `arch` on `data`, computing on `device`.
    pub fn new(device: Device, arch: Architecture, data: Dataset) -> Result<Self> {
        arch.validate(data.dim())?;
        if data.rows() > u32::MAX as usize {
            return Err(invalid(format!(
                "{} rows; at most {} per bank",
                data.rows(),
                u32::MAX
            )));
        }
        let batched = match device {
            Device::Cpu => None,
            _ => Some(batched::Batched::new(arch, &data, device.candle()?)?),
        };
        Ok(Self {
            arch,
            device,
            data,
            batched,
        })
    }

    /// The rows it trains on.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// The device it computes on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The model family.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// Mean log-loss of parameters `p` over every row.
    pub fn loss(&self, p: &[f32]) -> Result<f64> {
        match &self.batched {
            Some(b) => b.loss(p),
            None => Ok(self.arch.loss(p, &self.data)),
        }
    }

    /// Sum of the log-loss gradients of `rows` at `p`, each clipped to `clip` when
    /// given; returns how many were clipped.
    fn gradient_sum(
        &self,
        p: &[f32],
        rows: &[usize],
        clip: Option<f64>,
        out: &mut [f32],
        one: &mut [f32],
        scratch: &mut Vec<f32>,
    ) -> Result<u64> {
        if let Some(b) = &self.batched {
            return b.gradient_sum(p, rows, clip, out);
        }
        out.iter_mut().for_each(|v| *v = 0.0);
        let data = &self.data;
        let mut clipped = 0;
        for &i in rows {
            match clip {
                Some(c) => {
                    one.iter_mut().for_each(|v| *v = 0.0);
                    self.arch
                        .forward(p, data.row(i), data.y[i], Some(one), scratch);
                    let norm = one
                        .iter()
                        .map(|g| f64::from(*g).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let scale = if norm > c {
                        clipped += 1;
                        (c / norm) as f32
                    } else {
                        1.0
                    };
                    for (s, g) in out.iter_mut().zip(one.iter()) {
                        *s += g * scale;
                    }
                }
                None => {
                    self.arch
                        .forward(p, data.row(i), data.y[i], Some(out), scratch);
                }
            }
        }
        Ok(clipped)
    }

    /// Train `cfg.local_steps` steps from `global`.
    pub fn train(
        &self,
        global: &[f32],
        cfg: &LocalConfig,
        rng: &mut impl Rng,
    ) -> Result<LocalUpdate> {
        cfg.validate()?;
        let np = self.arch.num_params(self.data.dim());
        if global.len() != np {
            return Err(invalid(format!(
                "global model has {} parameters, {np} expected",
                global.len()
            )));
        }
        let n = self.data.rows();
        if n == 0 {
            return Err(invalid("no training rows"));
        }
        let loss_before = self.loss(global)?;
        let q = cfg.sample_rate(n);
        let expected = q * n as f64;
        let mut p = global.to_vec();
        let mut sum = vec![0.0f32; np];
        let mut one = vec![0.0f32; if self.batched.is_some() { 0 } else { np }];
        let mut scratch = Vec::new();
        let mut rows = Vec::with_capacity(n.min(cfg.batch_size.saturating_mul(2)));
        let (mut examples, mut clipped) = (0u64, 0u64);
        let noise = match &cfg.dp {
            Some(dp) => Some(
                Normal::new(0.0, dp.noise_multiplier * dp.clip_norm)
                    .map_err(|e| invalid(format!("noise: {e}")))?,
            ),
            None => None,
        };
        let clip = cfg.dp.map(|dp| dp.clip_norm);
        for _ in 0..cfg.local_steps {
            // Poisson sampling: each row independently with probability q.
            rows.clear();
            rows.extend((0..n).filter(|_| q >= 1.0 || rng.random::<f64>() < q));
            clipped += self.gradient_sum(&p, &rows, clip, &mut sum, &mut one, &mut scratch)?;
            examples += rows.len() as u64;
            // DP divides by the expected batch size (the sample size itself is private).
            let denom = match &noise {
                Some(_) => expected as f32,
                None => rows.len().max(1) as f32,
            };
            let lr = cfg.learning_rate as f32;
            let mu = cfg.prox_mu as f32;
            for (k, w) in p.iter_mut().enumerate() {
                let mut g = sum[k];
                if let Some(nd) = &noise {
                    g += nd.sample(rng) as f32;
                }
                g /= denom;
                if mu > 0.0 {
                    g += mu * (*w - global[k]);
                }
                *w -= lr * g;
            }
        }
        let delta = p.iter().zip(global).map(|(a, b)| a - b).collect();
        Ok(LocalUpdate {
            params: p,
            delta,
            loss_before,
            examples,
            clipped_examples: clipped,
            steps: cfg.local_steps,
        })
    }
}

/// Train `local_steps` steps from `global` on `data`, on the CPU (see
/// [`LocalTrainer`] for other devices).
pub fn train_local(
    arch: Architecture,
    global: &[f32],
    data: &Dataset,
    cfg: &LocalConfig,
    rng: &mut impl Rng,
) -> Result<LocalUpdate> {
    LocalTrainer::new(Device::Cpu, arch, data.clone())?.train(global, cfg, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, seed: u64) -> Dataset {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let a: f32 = rng.random_range(-2.0..2.0);
            let b: f32 = rng.random_range(-2.0..2.0);
            // XOR-ish: positive when a·b > 0.3, which a linear model cannot fit.
            x.extend([a, b]);
            y.push(if a * b > 0.3 { 1.0 } else { 0.0 });
        }
        Dataset::new(vec!["a".into(), "b".into()], x, y).unwrap()
    }

    #[test]
    fn mlp_gradients_match_finite_differences() {
        let arch = Architecture::Mlp { hidden: 3 };
        let p = arch.init(2, 3);
        let x = [0.7f32, -1.3];
        let mut g = vec![0.0; p.len()];
        let mut s = Vec::new();
        arch.forward(&p, &x, 1.0, Some(&mut g), &mut s);
        for k in 0..p.len() {
            let h = 1e-2f32;
            let (mut up, mut down) = (p.clone(), p.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (arch.forward(&up, &x, 1.0, None, &mut s).1
                - arch.forward(&down, &x, 1.0, None, &mut s).1)
                / (2.0 * h);
            assert!((g[k] - fd).abs() < 2e-3, "param {k}: {} vs {fd}", g[k]);
        }
    }

    #[test]
    fn mlp_learns_what_a_linear_model_cannot() {
        let data = toy(4000, 5);
        let cfg = LocalConfig {
            learning_rate: 0.5,
            local_steps: 1500,
            batch_size: 64,
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let lr = Architecture::LogisticRegression;
        let mlp = Architecture::Mlp { hidden: 8 };
        let a = train_local(lr, &lr.init(2, 1), &data, &cfg, &mut rng).unwrap();
        let b = train_local(mlp, &mlp.init(2, 1), &data, &cfg, &mut rng).unwrap();
        let (auc_lr, auc_mlp) = (lr.auc(&a.params, &data), mlp.auc(&b.params, &data));
        assert!(auc_lr < 0.7 && auc_mlp > 0.9, "lr {auc_lr}, mlp {auc_mlp}");
    }

    #[test]
    fn export_folds_transform_and_standardization() {
        let raw = vec![
            vec![1.0, 10.0, 100.0, 1000.0],
            vec![0.0, -3.0, 2.0, f64::NAN],
        ];
        let stats = Standardizer::fit(&raw);
        let names = vec!["amount".to_string(), "delta".to_string()];
        let data = Dataset::prepare(names.clone(), &raw, &[0.0, 0.0, 1.0, 1.0], &stats).unwrap();
        for arch in [
            Architecture::LogisticRegression,
            Architecture::Mlp { hidden: 4 },
        ] {
            let mut p = arch.init(2, 11);
            p.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += 0.1 * i as f32 - 0.3);
            let m = arch.export(&p, &names, &stats);
            m.validate().unwrap();
            let ours = arch.predict(&p, &data);
            for r in 0..4 {
                let row = [raw[0][r], raw[1][r]];
                let theirs = m.score(&row);
                assert!(
                    (f64::from(ours[r]) - theirs).abs() < 1e-5,
                    "{arch:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn dp_sgd_clips_every_example_and_still_learns() {
        let data = toy(4000, 6);
        let arch = Architecture::Mlp { hidden: 8 };
        let cfg = LocalConfig {
            learning_rate: 0.5,
            local_steps: 1500,
            batch_size: 200,
            dp: Some(DpSgd {
                noise_multiplier: 1.0,
                clip_norm: 0.05,
            }),
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let out = train_local(arch, &arch.init(2, 1), &data, &cfg, &mut rng).unwrap();
        assert!(out.clipped_examples > out.examples / 2, "{out:?}");
        assert!(arch.auc(&out.params, &data) > 0.8);
    }

    /// Train on `device` and on the reference with the same seed: LR and MLP, with and
    /// without DP-SGD, whole batches and batches cut into chunks of 7 rows.
    fn assert_matches_reference(device: Device) {
        let data = toy(3000, 8);
        // A clip norm that clips some examples and not others.
        let dp = DpSgd {
            noise_multiplier: 1.0,
            clip_norm: 1.0,
        };
        for arch in [
            Architecture::LogisticRegression,
            Architecture::Mlp { hidden: 16 },
        ] {
            for dp in [None, Some(dp)] {
                let cfg = LocalConfig {
                    learning_rate: 0.3,
                    local_steps: 40,
                    batch_size: 300,
                    prox_mu: 0.01,
                    dp,
                };
                let global = arch.init(2, 5);
                let run = |mut t: LocalTrainer, chunk: usize| {
                    if let Some(b) = &mut t.batched {
                        b.chunk_values = chunk;
                    }
                    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
                    t.train(&global, &cfg, &mut rng).unwrap()
                };
                let reference = run(
                    LocalTrainer::new(Device::Cpu, arch, data.clone()).unwrap(),
                    0,
                );
                // Whole batches, and batches cut into chunks of 7 rows.
                for chunk in [batched::CHUNK_VALUES, 7 * 16] {
                    let t = LocalTrainer::new(device, arch, data.clone()).unwrap();
                    let got = run(t, chunk);
                    let ctx = format!("{device} {arch:?} dp {dp:?} chunk {chunk}");
                    assert_eq!(got.examples, reference.examples, "{ctx}");
                    assert!(got.examples > 0, "{ctx}");
                    if dp.is_some() {
                        let share = reference.clipped_examples as f64 / got.examples as f64;
                        assert!((0.1..0.9).contains(&share), "{ctx}: {share} clipped");
                    }
                    assert!(
                        got.clipped_examples.abs_diff(reference.clipped_examples) <= 2,
                        "{ctx}: {} vs {}",
                        got.clipped_examples,
                        reference.clipped_examples
                    );
                    assert!(
                        (got.loss_before - reference.loss_before).abs() < 1e-5,
                        "{ctx}"
                    );
                    let worst = got
                        .params
                        .iter()
                        .zip(&reference.params)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(worst < 1e-3, "{ctx}: params differ by {worst}");
                    assert!(got.params != global, "{ctx}: nothing trained");
                }
            }
        }
    }

    #[test]
    fn batched_cpu_computes_what_the_reference_computes() {
        assert_matches_reference(Device::CpuBatched);
    }

    /// Runs only in a `gpu` build (`cargo test -p quiver-federation --features gpu`), on
    /// a machine with an NVIDIA GPU.
    #[cfg(feature = "gpu")]
    #[test]
    fn cuda_computes_what_the_reference_computes() {
        assert_matches_reference(Device::Cuda(0));
    }

    #[test]
    fn devices_parse_and_gpu_needs_its_feature() {
        for s in ["cpu", "cpu-batched", "cuda:3"] {
            assert_eq!(s.parse::<Device>().unwrap().to_string(), s);
        }
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:99999999", ""] {
            let e = bad.parse::<Device>().unwrap_err().to_string();
            assert!(
                e.contains("expected cpu, cpu-batched, cuda or cuda:N"),
                "{e}"
            );
        }
        let d: Device = serde_json::from_str("\"cpu-batched\"").unwrap();
        assert_eq!(d, Device::CpuBatched);
        if !Device::GPU_BUILD {
            let e = LocalTrainer::new(
                Device::Cuda(0),
                Architecture::LogisticRegression,
                toy(10, 1),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("--features gpu"), "{e}");
        }
    }

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
        assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), 0.5);
        assert_eq!(auc(&[0.5, 0.7], &[1.0, 1.0]), 0.5);
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = Dataset::new(vec!["a".into()], vec![f32::NAN], vec![1.0]).unwrap_err();
        assert!(e.to_string().contains("feature `a`"), "{e}");
        let e = Dataset::new(vec!["a".into()], vec![1.0], vec![2.0]).unwrap_err();
        assert!(e.to_string().contains("not 0 or 1"), "{e}");
        let cfg = LocalConfig {
            learning_rate: f64::NAN,
            ..Default::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("learning_rate")
        );
    }
}
