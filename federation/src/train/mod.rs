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
//! let mut cfg = LocalConfig::default();
//! (cfg.learning_rate, cfg.local_steps, cfg.batch_size) = (0.5, 200, 64);
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let out = train_local(arch, &global, &data, &cfg, &mut rng).unwrap();
//! assert!(arch.auc(&out.params, &data) > 0.99);
//! ```

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use quiver_registry::InputTransform;

mod batched;
mod data;
mod device;
mod model;

pub use data::{Dataset, Standardizer, split_rows, transformed_moments};
pub use device::Device;
pub use model::{Architecture, auc};

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

pub(crate) type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn invalid(m: impl Into<String>) -> TrainError {
    TrainError::Invalid(m.into())
}

pub use crate::limits::MAX_FEATURES;
pub use crate::limits::MAX_HIDDEN;

/// The input transform every federated model applies before standardization.
pub const TRANSFORM: InputTransform = InputTransform::SignedLog1p;

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
#[non_exhaustive]
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
/// let mut cfg = LocalConfig::default();
/// (cfg.learning_rate, cfg.local_steps, cfg.batch_size) = (0.5, 200, 64);
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
    use rand::SeedableRng;

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
