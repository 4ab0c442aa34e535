//! ONNX models, run by tract (a pure-Rust runtime), with baseline-Shapley contributions.
//!
//! A model trained elsewhere (scikit-learn, XGBoost, PyTorch) and exported to ONNX is
//! registered as is. quiver's contract with the file:
//!
//! - one input, a `[batch, features]` tensor of float32 or float64; the batch dimension
//!   may be symbolic. The feature names and order come from the registration's input
//!   schema (an ONNX file does not name its columns), and the width must match it;
//! - the score is the probability of the positive class, read from the output named
//!   `probabilities` (what skl2onnx and onnxmltools write with `zipmap=False`), or from
//!   the only output. A `[batch, 2]` output gives column 1, a `[batch]` or `[batch, 1]`
//!   output its one value. A value outside [0, 1] is an error, not a score;
//! - missing inputs (NaN) are replaced by the training mean of the feature (from the
//!   registration's training statistics), 0 where none was recorded, like the native
//!   formats.
//!
//! Contributions are **baseline Shapley values** (Sundararajan & Najmi, "The many Shapley
//! values for model explanation", ICML 2020) of the logit of the score, with the
//! baseline (training means) standing in for absent features. With up to
//! [`EXACT_SHAPLEY_MAX_FEATURES`] features they are exact: all `2^n` coalitions run as
//! one batch. With more, they are estimated from [`SHAPLEY_PERMUTATIONS`] permutations
//! (half of them the reverses of the other half), drawn from a generator seeded by the
//! input, so the same request always gets the same answer. Either way the values sum to
//! `logit(x) - logit(baseline)` up to rounding (each permutation telescopes), so
//! [`Contributions::residual`] is about 0.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::native::Contributions;
use crate::{Error, Result};

/// Up to this many features, contributions are exact (`2^n` model rows per explanation).
pub const EXACT_SHAPLEY_MAX_FEATURES: usize = 10;
/// Permutations sampled for contributions of models with more features.
pub const SHAPLEY_PERMUTATIONS: usize = 32;
use crate::limits::MAX_RUN_ROWS;

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidModel(reason.into())
}

/// Run `f`, turning a panic inside tract into an error: a hostile or broken file must
/// not take the server down.
fn guarded<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(invalid(format!("ONNX {what}: {}", chain(&e)))),
        Err(_) => Err(invalid(format!(
            "ONNX {what}: the runtime (tract) failed on this model"
        ))),
    }
}

/// The error with its causes on one line, bounded.
fn chain(e: &TractError) -> String {
    let s = e
        .chain()
        .map(|c| c.to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    s.chars().take(600).collect()
}

/// How the score is read from the model's output tensor.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// One value per row (`[batch]` or `[batch, 1]`).
    Single,
    /// Column 1 of `[batch, 2]` class probabilities.
    PositiveClass,
}

/// An ONNX model ready to score. Cheap to clone (the plan is shared).
#[derive(Clone)]
pub struct OnnxModel {
    features: Vec<String>,
    baseline: Vec<f64>,
    input_f64: bool,
    pick: Pick,
    output: String,
    plan: Arc<TypedRunnableModel>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("features", &self.features)
            .field("input_f64", &self.input_f64)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Parse, check and optimise an ONNX file for `features` (in order), with
    /// `baseline` (one value per feature) standing in for missing inputs.
    ///
    /// Fails with [`Error::InvalidModel`] naming the problem when the bytes are not
    /// ONNX, use an operator tract does not implement, do not take one
    /// `[batch, features.len()]` float tensor, or have no readable probability output.
    pub fn load(bytes: &[u8], features: Vec<String>, baseline: Vec<f64>) -> Result<Self> {
        let n = features.len();
        if n == 0 || n > crate::limits::MAX_FEATURES {
            return Err(invalid(format!(
                "a model takes 1 to {} features, this input schema lists {n}",
                crate::limits::MAX_FEATURES
            )));
        }
        if baseline.len() != n {
            return Err(invalid(format!(
                "{} baseline values for {n} features",
                baseline.len()
            )));
        }
        let mut model = guarded("file could not be parsed", || {
            tract_onnx::onnx().model_for_read(&mut &bytes[..])
        })?;
        let inputs = model.input_outlets().map(<[_]>::len).unwrap_or(0);
        if inputs != 1 {
            return Err(invalid(format!(
                "the ONNX model has {inputs} inputs; quiver feeds one [batch, features] tensor"
            )));
        }
        let fact = model
            .input_fact(0)
            .map_err(|e| invalid(format!("ONNX input: {}", chain(&e))))?
            .clone();
        let input_f64 = match fact.datum_type.concretize() {
            Some(DatumType::F32) | None => false,
            Some(DatumType::F64) => true,
            Some(other) => {
                return Err(invalid(format!(
                    "the ONNX input is a tensor of {other:?}; quiver feeds float32 or float64"
                )));
            }
        };
        if let Some(rank) = fact.shape.rank().concretize()
            && rank != 2
        {
            return Err(invalid(format!(
                "the ONNX input has {rank} dimensions; quiver feeds [batch, features]"
            )));
        }
        let width = fact
            .shape
            .dims()
            .nth(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.to_usize().ok());
        if let Some(w) = width
            && w != n
        {
            return Err(Error::SchemaMismatch(format!(
                "the ONNX model takes {w} features per row, its input schema lists {n} ({})",
                features.join(", ")
            )));
        }
        let names: Vec<String> = model
            .output_outlets()
            .unwrap_or(&[])
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_owned)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let chosen = if let Some(i) = names.iter().position(|s| s == "probabilities") {
            i
        } else if names.len() == 1 {
            0
        } else {
            return Err(invalid(format!(
                "the ONNX model has outputs [{}] and none is named `probabilities`; quiver cannot tell which is the score",
                names.join(", ")
            )));
        };
        let output = names[chosen].clone();
        let outlet = model.output_outlets().expect("outputs listed")[chosen];
        let batch = model.symbols.sym("batch");
        let dt = if input_f64 {
            DatumType::F64
        } else {
            DatumType::F32
        };
        let plan = guarded("model could not be prepared", || {
            model.select_output_outlets(&[outlet])?;
            model.set_input_fact(0, InferenceFact::dt_shape(dt, [batch.to_dim(), n.to_dim()]))?;
            model.into_optimized()?.into_runnable()
        })?;
        let out = plan
            .model()
            .output_fact(0)
            .map_err(|e| invalid(format!("ONNX output: {}", chain(&e))))?;
        if !matches!(out.datum_type, DatumType::F32 | DatumType::F64) {
            return Err(invalid(format!(
                "the ONNX output `{output}` is a tensor of {:?}; quiver reads a probability (float)",
                out.datum_type
            )));
        }
        let dims: Vec<Option<usize>> = out.shape.iter().map(|d| d.to_usize().ok()).collect();
        let pick = match dims.as_slice() {
            [_] | [_, Some(1)] => Pick::Single,
            [_, Some(2)] => Pick::PositiveClass,
            _ => {
                return Err(invalid(format!(
                    "the ONNX output `{output}` has shape {:?}; quiver reads [batch], [batch, 1] or [batch, 2] (two-class probabilities)",
                    out.shape
                )));
            }
        };
        let m = Self {
            features,
            baseline,
            input_f64,
            pick,
            output,
            plan,
        };
        // Run it once now, so a model that fails at run time fails at registration.
        m.score(&m.baseline)?;
        Ok(m)
    }

    /// Input feature names, in order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Values standing in for missing inputs (training means).
    pub fn baseline(&self) -> &[f64] {
        &self.baseline
    }

    /// Name of the output the score is read from.
    pub fn output_name(&self) -> &str {
        &self.output
    }

    /// Scores (probabilities) of rows stored row-major in `x`, into `out`.
    pub fn score_into(&self, x: &[f64], out: &mut Vec<f64>) -> Result<()> {
        let n = self.features.len();
        if !x.len().is_multiple_of(n) {
            return Err(invalid(format!(
                "{} input values is not a whole number of rows of {n} features",
                x.len()
            )));
        }
        out.clear();
        for chunk in x.chunks(MAX_RUN_ROWS * n) {
            self.run(chunk, out)?;
        }
        Ok(())
    }

    /// The score of one row.
    pub fn score(&self, x: &[f64]) -> Result<f64> {
        let mut out = Vec::with_capacity(1);
        self.score_into(x, &mut out)?;
        out.first()
            .copied()
            .ok_or_else(|| invalid("the ONNX model returned no score"))
    }

    /// One run over `x` (whole rows, at most [`MAX_RUN_ROWS`]), appending scores.
    fn run(&self, x: &[f64], out: &mut Vec<f64>) -> Result<()> {
        let n = self.features.len();
        let rows = x.len() / n;
        let filled = x
            .iter()
            .enumerate()
            .map(|(i, v)| if v.is_nan() { self.baseline[i % n] } else { *v });
        let tensor: Tensor = if self.input_f64 {
            tract_ndarray::Array2::from_shape_vec((rows, n), filled.collect())
                .expect("shape checked")
                .into()
        } else {
            tract_ndarray::Array2::from_shape_vec((rows, n), filled.map(|v| v as f32).collect())
                .expect("shape checked")
                .into()
        };
        let result = guarded("run failed", || self.plan.run(tvec!(tensor.into())))?;
        let t = result[0]
            .cast_to::<f64>()
            .map_err(|e| invalid(format!("ONNX output: {}", chain(&e))))?;
        let values: Vec<f64> = t
            .to_plain_array_view::<f64>()
            .map_err(|e| invalid(format!("ONNX output: {}", chain(&e))))?
            .iter()
            .copied()
            .collect();
        let (width, col) = match self.pick {
            Pick::Single => (1, 0),
            Pick::PositiveClass => (2, 1),
        };
        if values.len() != rows * width {
            return Err(invalid(format!(
                "the ONNX output `{}` has {} values for {rows} rows",
                self.output,
                values.len()
            )));
        }
        let start = out.len();
        out.extend(values.chunks_exact(width).map(|r| r[col]));
        if let Some(bad) = out[start..]
            .iter()
            .find(|p| !(0.0..=1.0).contains(*p) || p.is_nan())
        {
            return Err(invalid(format!(
                "the ONNX output `{}` gave {bad}, not a probability in [0, 1]; export the model's probabilities",
                self.output
            )));
        }
        Ok(())
    }

    /// Baseline-Shapley contributions of each feature to the logit of row `x`.
    pub fn contributions(&self, x: &[f64]) -> Result<Contributions> {
        let n = self.features.len();
        if x.len() != n {
            return Err(invalid(format!(
                "{} inputs given, the model takes {n}",
                x.len()
            )));
        }
        let point: Vec<f64> = x
            .iter()
            .zip(&self.baseline)
            .map(|(v, b)| if v.is_nan() { *b } else { *v })
            .collect();
        // Row of the coalition given as a membership predicate.
        let row = |inside: &dyn Fn(usize) -> bool, buf: &mut Vec<f64>| {
            buf.extend((0..n).map(|i| {
                if inside(i) {
                    point[i]
                } else {
                    self.baseline[i]
                }
            }));
        };
        let mut values = vec![0.0; n];
        let method;
        let (base, full);
        if n <= EXACT_SHAPLEY_MAX_FEATURES {
            method = "baseline_shapley_exact";
            let subsets = 1usize << n;
            let mut rows = Vec::with_capacity(subsets * n);
            for s in 0..subsets {
                row(&|i| s & (1 << i) != 0, &mut rows);
            }
            let mut scores = Vec::with_capacity(subsets);
            self.score_into(&rows, &mut scores)?;
            let f: Vec<f64> = scores.into_iter().map(logit).collect();
            // φ_i = Σ_{S ∌ i} |S|! (n-|S|-1)! / n! · (f(S ∪ i) - f(S))
            let mut fact = vec![1.0f64; n + 1];
            for k in 1..=n {
                fact[k] = fact[k - 1] * k as f64;
            }
            for (i, v) in values.iter_mut().enumerate() {
                let bit = 1usize << i;
                for s in (0..subsets).filter(|s| s & bit == 0) {
                    let k = s.count_ones() as usize;
                    let w = fact[k] * fact[n - k - 1] / fact[n];
                    *v += w * (f[s | bit] - f[s]);
                }
            }
            base = f[0];
            full = f[subsets - 1];
        } else {
            method = "baseline_shapley_sampled";
            let mut seed = [0u8; 32];
            for (i, v) in point.iter().enumerate() {
                let b = v.to_bits().to_le_bytes();
                for (j, byte) in b.iter().enumerate() {
                    seed[(i * 8 + j) % 32] ^= byte.rotate_left(i as u32 % 8);
                }
            }
            let mut rng = rand::rngs::StdRng::from_seed(seed);
            let mut orders = Vec::with_capacity(SHAPLEY_PERMUTATIONS);
            while orders.len() < SHAPLEY_PERMUTATIONS {
                let mut p: Vec<usize> = (0..n).collect();
                p.shuffle(&mut rng);
                let mut r = p.clone();
                r.reverse();
                orders.push(p);
                orders.push(r);
            }
            // Row 0 is the baseline, row 1 the point; each permutation adds n - 1
            // intermediate rows (its prefixes of length 1..n-1).
            let mut rows = Vec::with_capacity((2 + orders.len() * (n - 1)) * n);
            row(&|_| false, &mut rows);
            row(&|_| true, &mut rows);
            let mut member = vec![false; n];
            for p in &orders {
                member.iter_mut().for_each(|m| *m = false);
                for &i in &p[..n - 1] {
                    member[i] = true;
                    row(&|j| member[j], &mut rows);
                }
            }
            let mut scores = Vec::with_capacity(rows.len() / n);
            self.score_into(&rows, &mut scores)?;
            let f: Vec<f64> = scores.into_iter().map(logit).collect();
            base = f[0];
            full = f[1];
            for (k, p) in orders.iter().enumerate() {
                let at = |j: usize| f[2 + k * (n - 1) + j];
                let mut prev = base;
                for (j, &i) in p.iter().enumerate() {
                    let next = if j == n - 1 { full } else { at(j) };
                    values[i] += next - prev;
                    prev = next;
                }
            }
            let m = orders.len() as f64;
            values.iter_mut().for_each(|v| *v /= m);
        }
        let residual = full - base - values.iter().sum::<f64>();
        Ok(Contributions {
            base,
            values,
            residual,
            method: method.into(),
        })
    }
}

/// `ln(p / (1 - p))`, with p kept off 0 and 1 so it stays finite.
fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    (p / (1.0 - p)).ln()
}
