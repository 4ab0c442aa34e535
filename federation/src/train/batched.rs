//! The batched gradient engine: one step's sampled rows as matrix products on a candle
//! device (the CPU's cores, or an NVIDIA GPU with the `gpu` feature).
//!
//! It computes exactly what the per-example loop of [`super::Architecture`] computes,
//! batch-wide. DP-SGD needs each example's gradient norm; for a dense layer the
//! gradient of one example is the outer product `δᵢ ⊗ aᵢ` of its back-propagated error
//! and its input, whose norm is `‖δᵢ‖·‖aᵢ‖` (Goodfellow, "Efficient per-example
//! gradient computations", 2015). So every example's norm comes from two row norms per
//! layer, and the clipped sum is one matrix product with the errors scaled by each
//! example's clip factor: no per-example gradient is ever materialized.
//!
//! Rows are processed in chunks of at most [`CHUNK_VALUES`] activations, so memory on
//! the device is bounded whatever the batch size.

use candle_core::{DType, Device, Tensor};

use super::{Architecture, Dataset, Result, TrainError};

/// Most activations (rows × widest layer) one chunk holds on the device: 64 MiB of f32.
pub(super) const CHUNK_VALUES: usize = 1 << 24;

fn dev(e: candle_core::Error) -> TrainError {
    TrainError::Device(e.to_string())
}

/// A bank's prepared rows, resident on a device.
pub(super) struct Batched {
    arch: Architecture,
    device: Device,
    /// `rows × dim`.
    x: Tensor,
    /// `rows × 1`.
    y: Tensor,
    /// `‖xᵢ‖² + 1` (the input norm with the bias), `rows × 1`.
    x_norm2: Tensor,
    rows: usize,
    dim: usize,
    /// Most activations per chunk ([`CHUNK_VALUES`]; smaller in tests).
    pub(super) chunk_values: usize,
}

/// The model's parameters as device tensors.
struct Params {
    /// LR: `dim × 1`; MLP: the hidden weights, `hidden × dim`.
    w: Tensor,
    /// LR: unused (the bias is `b_out`); MLP: hidden biases, `hidden`.
    b: Option<Tensor>,
    /// MLP: output weights, `hidden × 1`.
    w_out: Option<Tensor>,
    /// Output bias.
    b_out: f64,
}

impl Batched {
    /// Upload `data` to `device`.
    pub(super) fn new(arch: Architecture, data: &Dataset, device: Device) -> Result<Self> {
        let (rows, dim) = (data.rows(), data.dim());
        let x = Tensor::from_slice(&data.x, (rows, dim), &device).map_err(dev)?;
        let y = Tensor::from_slice(&data.y, (rows, 1), &device).map_err(dev)?;
        let x_norm2 = x
            .sqr()
            .and_then(|s| s.sum_keepdim(1))
            .and_then(|s| s.affine(1.0, 1.0))
            .map_err(dev)?;
        Ok(Self {
            arch,
            device,
            x,
            y,
            x_norm2,
            rows,
            dim,
            chunk_values: CHUNK_VALUES,
        })
    }

    fn params(&self, p: &[f32]) -> candle_core::Result<Params> {
        let d = self.dim;
        Ok(match self.arch {
            Architecture::LogisticRegression => Params {
                w: Tensor::from_slice(&p[..d], (d, 1), &self.device)?,
                b: None,
                w_out: None,
                b_out: f64::from(p[d]),
            },
            Architecture::Mlp { hidden: h } => Params {
                w: Tensor::from_slice(&p[..h * d], (h, d), &self.device)?,
                b: Some(Tensor::from_slice(&p[h * d..h * d + h], h, &self.device)?),
                w_out: Some(Tensor::from_slice(
                    &p[h * d + h..h * d + 2 * h],
                    (h, 1),
                    &self.device,
                )?),
                b_out: f64::from(p[h * d + 2 * h]),
            },
        })
    }

    fn chunk_rows(&self) -> usize {
        let width = match self.arch {
            Architecture::LogisticRegression => self.dim,
            Architecture::Mlp { hidden } => hidden.max(self.dim),
        };
        (self.chunk_values / width).max(1)
    }

    /// Hidden activations (MLP) and logits of rows `x` (`m × dim`).
    fn forward(&self, w: &Params, x: &Tensor) -> candle_core::Result<(Option<Tensor>, Tensor)> {
        match (&w.b, &w.w_out) {
            (Some(b), Some(w_out)) => {
                let a = x.matmul(&w.w.t()?)?.broadcast_add(b)?.tanh()?;
                let z = a.matmul(w_out)?.affine(1.0, w.b_out)?;
                Ok((Some(a), z))
            }
            _ => Ok((None, x.matmul(&w.w)?.affine(1.0, w.b_out)?)),
        }
    }

    /// Mean log-loss at `p` over every row.
    pub(super) fn loss(&self, p: &[f32]) -> Result<f64> {
        let run = || -> candle_core::Result<f64> {
            let w = self.params(p)?;
            let mut total = 0.0f64;
            let step = self.chunk_rows();
            let mut start = 0;
            while start < self.rows {
                let m = step.min(self.rows - start);
                let x = self.x.narrow(0, start, m)?;
                let y = self.y.narrow(0, start, m)?;
                let (_, z) = self.forward(&w, &x)?;
                // softplus(z) − y·z, with softplus(z) = max(z, 0) + ln(1 + e^−|z|).
                let sp = (z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
                let l = (sp - (y * z)?)?;
                total += f64::from(l.sum_all()?.to_scalar::<f32>()?);
                start += m;
            }
            Ok(total / self.rows.max(1) as f64)
        };
        run().map_err(dev)
    }

    /// Sum over `rows` of each row's log-loss gradient at `p`, each clipped to L2 norm
    /// `clip` when given, written into `out`; returns how many were clipped.
    pub(super) fn gradient_sum(
        &self,
        p: &[f32],
        rows: &[usize],
        clip: Option<f64>,
        out: &mut [f32],
    ) -> Result<u64> {
        out.iter_mut().for_each(|v| *v = 0.0);
        if rows.is_empty() {
            return Ok(0);
        }
        let run = |out: &mut [f32]| -> candle_core::Result<u64> {
            let w = self.params(p)?;
            let mut clipped = 0u64;
            let mut acc: Option<Tensor> = None;
            for chunk in rows.chunks(self.chunk_rows()) {
                let idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, chunk.len(), &self.device)?;
                let x = self.x.index_select(&idx, 0)?;
                let y = self.y.index_select(&idx, 0)?;
                let (a, z) = self.forward(&w, &x)?;
                // σ(z) − y, with σ(z) = (1 + tanh(z/2)) / 2.
                let dz = (z.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)? - y)?;
                let mut dh = match (&a, &w.w_out) {
                    (Some(a), Some(w_out)) => Some(
                        dz.broadcast_mul(&w_out.t()?)?
                            .mul(&a.sqr()?.affine(-1.0, 1.0)?)?,
                    ),
                    _ => None,
                };
                let mut dz = dz;
                if let Some(c) = clip {
                    let x_norm2 = self.x_norm2.index_select(&idx, 0)?;
                    // ‖g‖² = Σ over layers of ‖error‖²·(‖input‖² + 1).
                    let norm2 = match (&a, &dh) {
                        (Some(a), Some(dh)) => {
                            let out_layer =
                                dz.sqr()?.mul(&a.sqr()?.sum_keepdim(1)?.affine(1.0, 1.0)?)?;
                            (dh.sqr()?.sum_keepdim(1)?.mul(&x_norm2)? + out_layer)?
                        }
                        _ => dz.sqr()?.mul(&x_norm2)?,
                    };
                    let c2 = c * c;
                    clipped += norm2
                        .gt(c2)?
                        .to_dtype(DType::F32)?
                        .sum_all()?
                        .to_scalar::<f32>()? as u64;
                    // min(1, c / ‖g‖); a zero gradient gives ∞ → 1.
                    let scale = norm2.sqrt()?.recip()?.affine(c, 0.0)?.minimum(1.0)?;
                    dz = dz.mul(&scale)?;
                    dh = match dh {
                        Some(dh) => Some(dh.broadcast_mul(&scale)?),
                        None => None,
                    };
                }
                let grad = match (&a, &dh) {
                    (Some(a), Some(dh)) => Tensor::cat(
                        &[
                            dh.t()?.matmul(&x)?.flatten_all()?,
                            dh.sum(0)?,
                            a.t()?.matmul(&dz)?.flatten_all()?,
                            dz.sum_all()?.reshape(1)?,
                        ],
                        0,
                    )?,
                    _ => Tensor::cat(
                        &[
                            x.t()?.matmul(&dz)?.flatten_all()?,
                            dz.sum_all()?.reshape(1)?,
                        ],
                        0,
                    )?,
                };
                acc = Some(match acc {
                    Some(s) => (s + grad)?,
                    None => grad,
                });
            }
            if let Some(s) = acc {
                out.copy_from_slice(&s.to_vec1::<f32>()?);
            }
            Ok(clipped)
        };
        run(out).map_err(dev)
    }
}
