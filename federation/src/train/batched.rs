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
    device: Device,
    /// Layer widths, input first: `[dim, 1]` (LR) or `[dim, hidden, 1]` (MLP).
    widths: Vec<usize>,
    /// `rows × dim`.
    x: Tensor,
    /// `rows × 1`.
    y: Tensor,
    /// `‖xᵢ‖² + 1` (the input norm with the bias), `rows × 1`.
    x_norm2: Tensor,
    rows: usize,
    /// Most activations per chunk ([`CHUNK_VALUES`]; smaller in tests).
    pub(super) chunk_values: usize,
}

/// One dense layer: `out × in` weights and `out` biases.
struct Layer {
    w: Tensor,
    b: Tensor,
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
        // The parameter layout of [`Architecture`] is, layer by layer, the weights
        // row-major (`out × in`) then the biases.
        let widths = match arch {
            Architecture::LogisticRegression => vec![dim, 1],
            Architecture::Mlp { hidden } => vec![dim, hidden, 1],
        };
        Ok(Self {
            device,
            widths,
            x,
            y,
            x_norm2,
            rows,
            chunk_values: CHUNK_VALUES,
        })
    }

    fn layers(&self, p: &[f32]) -> candle_core::Result<Vec<Layer>> {
        let mut off = 0;
        self.widths
            .windows(2)
            .map(|io| {
                let (i, o) = (io[0], io[1]);
                let w = Tensor::from_slice(&p[off..off + o * i], (o, i), &self.device)?;
                let b = Tensor::from_slice(&p[off + o * i..off + o * i + o], o, &self.device)?;
                off += o * i + o;
                Ok(Layer { w, b })
            })
            .collect()
    }

    fn chunk_rows(&self) -> usize {
        let width = self.widths.iter().copied().max().unwrap_or(1);
        (self.chunk_values / width).max(1)
    }

    /// Each layer's input (the rows `x` first, then tanh activations) and the logits.
    fn forward(layers: &[Layer], x: Tensor) -> candle_core::Result<(Vec<Tensor>, Tensor)> {
        let mut inputs = vec![x];
        for (k, l) in layers.iter().enumerate() {
            let a = inputs.last().expect("the rows");
            let z = a.matmul(&l.w.t()?)?.broadcast_add(&l.b)?;
            if k + 1 == layers.len() {
                return Ok((inputs, z));
            }
            inputs.push(z.tanh()?);
        }
        unreachable!("a model has an output layer")
    }

    /// Mean log-loss at `p` over every row.
    pub(super) fn loss(&self, p: &[f32]) -> Result<f64> {
        let run = || -> candle_core::Result<f64> {
            let layers = self.layers(p)?;
            let mut total = 0.0f64;
            let step = self.chunk_rows();
            let mut start = 0;
            while start < self.rows {
                let m = step.min(self.rows - start);
                let y = self.y.narrow(0, start, m)?;
                let (_, z) = Self::forward(&layers, self.x.narrow(0, start, m)?)?;
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
            let layers = self.layers(p)?;
            let mut clipped = 0u64;
            let mut acc: Option<Tensor> = None;
            for chunk in rows.chunks(self.chunk_rows()) {
                let idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, chunk.len(), &self.device)?;
                let y = self.y.index_select(&idx, 0)?;
                let (inputs, z) = Self::forward(&layers, self.x.index_select(&idx, 0)?)?;
                // Each layer's error, output layer first: σ(z) − y, with
                // σ(z) = (1 + tanh(z/2)) / 2, then back through each tanh.
                let mut errors = vec![(z.affine(0.5, 0.0)?.tanh()?.affine(0.5, 0.5)? - y)?];
                for k in (1..layers.len()).rev() {
                    let back = errors.last().expect("output error").matmul(&layers[k].w)?;
                    errors.push(back.mul(&inputs[k].sqr()?.affine(-1.0, 1.0)?)?);
                }
                errors.reverse();
                if let Some(c) = clip {
                    // ‖g‖² = Σ over layers of ‖error‖²·(‖input‖² + 1).
                    let mut norm2 = errors[0]
                        .sqr()?
                        .sum_keepdim(1)?
                        .mul(&self.x_norm2.index_select(&idx, 0)?)?;
                    for (e, a) in errors.iter().zip(&inputs).skip(1) {
                        let a2 = a.sqr()?.sum_keepdim(1)?.affine(1.0, 1.0)?;
                        norm2 = (norm2 + e.sqr()?.sum_keepdim(1)?.mul(&a2)?)?;
                    }
                    clipped += norm2
                        .gt(c * c)?
                        .to_dtype(DType::F32)?
                        .sum_all()?
                        .to_scalar::<f32>()? as u64;
                    // min(1, c / ‖g‖); a zero gradient gives ∞ → 1.
                    let scale = norm2.sqrt()?.recip()?.affine(c, 0.0)?.minimum(1.0)?;
                    errors = errors
                        .iter()
                        .map(|e| e.broadcast_mul(&scale))
                        .collect::<candle_core::Result<_>>()?;
                }
                // Per layer: Σᵢ eᵢ ⊗ aᵢ (the weights, `out × in`), then Σᵢ eᵢ (the biases).
                let mut parts = Vec::with_capacity(2 * layers.len());
                for (e, a) in errors.iter().zip(&inputs) {
                    parts.push(e.t()?.matmul(a)?.flatten_all()?);
                    parts.push(e.sum(0)?);
                }
                let grad = Tensor::cat(&parts, 0)?;
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
