//! quiver's native model formats: logistic regression and small MLPs, with per-feature
//! contributions ([`Contributions`], which ONNX models give too).
//!
//! An artifact is JSON:
//!
//! ```json
//! {"format": "logistic_regression", "features": ["a", "b"],
//!  "weights": [0.8, -1.2], "intercept": -2.0, "baseline": [0.1, 3.0]}
//! {"format": "mlp", "features": ["a", "b"], "baseline": [0.1, 3.0],
//!  "layers": [{"weights": [[0.1, 0.2], [0.3, 0.4]], "bias": [0, 0], "activation": "relu"},
//!             {"weights": [[1.0, -1.0]], "bias": [0.5], "activation": "identity"}]}
//! ```
//!
//! Both produce a logit; the score is its sigmoid (a probability of the positive class).
//! `baseline` (usually the training means) stands in for missing inputs (NaN) and is
//! the reference point of contributions:
//! - logistic regression: contribution of feature i is `w_i * (x_i - baseline_i)`, exact:
//!   the contributions plus the logit at the baseline sum to the logit;
//! - MLP: integrated gradients (Sundararajan et al., 2017) along the straight line from
//!   the baseline to the input, with [`IG_STEPS`] trapezoid steps and exact gradients by
//!   back-propagation; the sum matches the logit difference up to the integration error,
//!   which [`Contributions::residual`] reports.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

use crate::limits::{MAX_FEATURES, MAX_LAYERS, MAX_WIDTH};
/// Steps of the integrated-gradients path for MLP contributions.
pub const IG_STEPS: usize = 32;

/// Activation of an MLP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x)
    Relu,
    /// tanh(x)
    Tanh,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// x
    Identity,
}

impl Activation {
    fn apply(self, x: f64) -> f64 {
        match self {
            Self::Relu => x.max(0.0),
            Self::Tanh => x.tanh(),
            Self::Sigmoid => sigmoid(x),
            Self::Identity => x,
        }
    }
    /// Derivative given the pre-activation `z` and the output `a`.
    fn derivative(self, z: f64, a: f64) -> f64 {
        match self {
            Self::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Tanh => 1.0 - a * a,
            Self::Sigmoid => a * (1.0 - a),
            Self::Identity => 1.0,
        }
    }
}

/// One dense layer: `activation(weights · x + bias)`, weights as rows of outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseLayer {
    /// `out × in` weights, one row per output unit.
    pub weights: Vec<Vec<f64>>,
    /// One bias per output unit.
    pub bias: Vec<f64>,
    /// Activation applied to every output unit.
    pub activation: Activation,
}

/// A fixed transform of every input, applied after missing values take the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputTransform {
    /// `sign(x) · ln(1 + |x|)`: tames heavy-tailed amounts and counts (federated
    /// training uses it so feature statistics stay bounded).
    SignedLog1p,
}

impl InputTransform {
    /// The transformed value.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Self::SignedLog1p => x.signum() * x.abs().ln_1p(),
        }
    }
    /// Its derivative at `x`.
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Self::SignedLog1p => 1.0 / (1.0 + x.abs()),
        }
    }
}

/// A model in one of quiver's native formats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum NativeModel {
    /// `sigmoid(intercept + Σ weights_i x_i)`.
    LogisticRegression {
        /// Input feature names, in order.
        features: Vec<String>,
        /// One weight per feature.
        weights: Vec<f64>,
        /// The bias term.
        intercept: f64,
        /// Stand-in for missing inputs and reference of contributions (zeros if absent).
        #[serde(default)]
        baseline: Option<Vec<f64>>,
        /// Transform of every input before the model (none if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transform: Option<InputTransform>,
    },
    /// `sigmoid(last layer)`; the last layer has one unit.
    Mlp {
        /// Input feature names, in order.
        features: Vec<String>,
        /// Dense layers, input first.
        layers: Vec<DenseLayer>,
        /// Stand-in for missing inputs and reference of contributions (zeros if absent).
        #[serde(default)]
        baseline: Option<Vec<f64>>,
        /// Transform of every input before the model (none if absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transform: Option<InputTransform>,
    },
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub(crate) fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidModel(reason.into())
}

fn all_finite(what: &str, xs: &[f64]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(invalid(format!(
            "{what}[{i}] is {}, every number must be finite",
            xs[i]
        ))),
        None => Ok(()),
    }
}

/// Per-feature contributions to one score, in logit space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contributions {
    /// The logit at the baseline.
    pub base: f64,
    /// One value per input feature, in the model's feature order.
    pub values: Vec<f64>,
    /// `logit - base - Σ values`: 0 for linear models, the integration error otherwise.
    pub residual: f64,
    /// How they were computed: `exact_linear` or `integrated_gradients`.
    pub method: String,
}

impl NativeModel {
    /// Parse and validate an artifact.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let model: Self = serde_json::from_slice(bytes).map_err(|e| {
            invalid(format!(
                "not a quiver model artifact: {e} (expected JSON with \"format\": \"logistic_regression\" or \"mlp\")"
            ))
        })?;
        model.validate()?;
        Ok(model)
    }

    /// The artifact bytes (canonical JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("models serialise")
    }

    /// Format name as stored in the registry.
    pub fn format(&self) -> &'static str {
        match self {
            Self::LogisticRegression { .. } => "logistic_regression",
            Self::Mlp { .. } => "mlp",
        }
    }

    /// Input feature names, in order.
    pub fn features(&self) -> &[String] {
        match self {
            Self::LogisticRegression { features, .. } | Self::Mlp { features, .. } => features,
        }
    }

    /// The input transform, if any.
    pub fn transform(&self) -> Option<InputTransform> {
        match self {
            Self::LogisticRegression { transform, .. } | Self::Mlp { transform, .. } => *transform,
        }
    }

    fn baseline(&self) -> Option<&[f64]> {
        match self {
            Self::LogisticRegression { baseline, .. } | Self::Mlp { baseline, .. } => {
                baseline.as_deref()
            }
        }
    }

    /// Check shapes, sizes and that every number is finite.
    pub fn validate(&self) -> Result<()> {
        let n = self.features().len();
        if n == 0 || n > MAX_FEATURES {
            return Err(invalid(format!(
                "a model takes 1 to {MAX_FEATURES} features, this one {n}"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for f in self.features() {
            if !seen.insert(f) {
                return Err(invalid(format!("feature `{f}` is listed twice")));
            }
        }
        if let Some(b) = self.baseline() {
            if b.len() != n {
                return Err(invalid(format!(
                    "baseline has {} values for {n} features",
                    b.len()
                )));
            }
            all_finite("baseline", b)?;
        }
        match self {
            Self::LogisticRegression {
                weights, intercept, ..
            } => {
                if weights.len() != n {
                    return Err(invalid(format!(
                        "{} weights for {n} features",
                        weights.len()
                    )));
                }
                all_finite("weights", weights)?;
                all_finite("intercept", &[*intercept])?;
            }
            Self::Mlp { layers, .. } => {
                if layers.is_empty() || layers.len() > MAX_LAYERS {
                    return Err(invalid(format!(
                        "an MLP has 1 to {MAX_LAYERS} layers, this one {}",
                        layers.len()
                    )));
                }
                let mut width = n;
                for (l, layer) in layers.iter().enumerate() {
                    let out = layer.weights.len();
                    if out == 0 || out > MAX_WIDTH {
                        return Err(invalid(format!(
                            "layer {l} has {out} units; 1 to {MAX_WIDTH} allowed"
                        )));
                    }
                    if layer.bias.len() != out {
                        return Err(invalid(format!(
                            "layer {l}: {} biases for {out} units",
                            layer.bias.len()
                        )));
                    }
                    for (u, row) in layer.weights.iter().enumerate() {
                        if row.len() != width {
                            return Err(invalid(format!(
                                "layer {l} unit {u} has {} weights, its input has {width} values",
                                row.len()
                            )));
                        }
                        all_finite(&format!("layers[{l}].weights[{u}]"), row)?;
                    }
                    all_finite(&format!("layers[{l}].bias"), &layer.bias)?;
                    width = out;
                }
                if width != 1 {
                    return Err(invalid(format!(
                        "the last layer must have 1 unit (the logit), it has {width}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Missing values take the baseline (raw inputs, no transform).
    fn fill(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        let base = self.baseline();
        out.extend(x.iter().enumerate().map(|(i, v)| {
            if v.is_nan() {
                base.map_or(0.0, |b| b[i])
            } else {
                *v
            }
        }));
    }

    fn transformed(&self, x: &mut [f64]) {
        if let Some(t) = self.transform() {
            x.iter_mut().for_each(|v| *v = t.apply(*v));
        }
    }

    /// The logit of one row (`x.len()` equals the feature count; NaN means missing).
    pub fn logit(&self, x: &[f64]) -> f64 {
        match self {
            Self::LogisticRegression {
                weights,
                intercept,
                baseline,
                transform,
                ..
            } => {
                let mut z = *intercept;
                for (i, (w, v)) in weights.iter().zip(x).enumerate() {
                    let v = if v.is_nan() {
                        baseline.as_ref().map_or(0.0, |b| b[i])
                    } else {
                        *v
                    };
                    z += w * transform.map_or(v, |t| t.apply(v));
                }
                z
            }
            Self::Mlp { layers, .. } => {
                let mut cur = Vec::with_capacity(x.len());
                self.fill(x, &mut cur);
                self.transformed(&mut cur);
                let mut next = Vec::new();
                for layer in layers {
                    next.clear();
                    for (row, b) in layer.weights.iter().zip(&layer.bias) {
                        let z: f64 = row.iter().zip(&cur).map(|(w, v)| w * v).sum::<f64>() + b;
                        next.push(layer.activation.apply(z));
                    }
                    std::mem::swap(&mut cur, &mut next);
                }
                cur[0]
            }
        }
    }

    /// The score (probability of the positive class) of one row.
    pub fn score(&self, x: &[f64]) -> f64 {
        sigmoid(self.logit(x))
    }

    /// Scores (probabilities) of `rows` rows stored row-major in `x`, into `out`.
    pub fn score_into(&self, x: &[f64], out: &mut Vec<f64>) -> Result<()> {
        let n = self.features().len();
        if !x.len().is_multiple_of(n) {
            return Err(invalid(format!(
                "{} input values is not a whole number of rows of {n} features",
                x.len()
            )));
        }
        out.clear();
        out.extend(x.chunks_exact(n).map(|row| self.score(row)));
        Ok(())
    }

    /// Gradient of the logit with respect to the raw input at `x` (no missing values).
    #[cfg(test)]
    fn gradient(&self, x: &[f64]) -> Vec<f64> {
        let mut input = x.to_vec();
        self.transformed(&mut input);
        let mut g = self.gradient_transformed(&input);
        if let Some(t) = self.transform() {
            g.iter_mut()
                .zip(x)
                .for_each(|(g, v)| *g *= t.derivative(*v));
        }
        g
    }

    /// Gradient of the logit with respect to the transformed input `input`.
    fn gradient_transformed(&self, input: &[f64]) -> Vec<f64> {
        match self {
            Self::LogisticRegression { weights, .. } => weights.clone(),
            Self::Mlp { layers, .. } => {
                // Forward, keeping pre-activations and outputs.
                let mut acts = vec![input.to_vec()];
                let mut pre = Vec::with_capacity(layers.len());
                for layer in layers {
                    let input = acts.last().expect("input");
                    let z: Vec<f64> = layer
                        .weights
                        .iter()
                        .zip(&layer.bias)
                        .map(|(row, b)| row.iter().zip(input).map(|(w, v)| w * v).sum::<f64>() + b)
                        .collect();
                    let a: Vec<f64> = z.iter().map(|z| layer.activation.apply(*z)).collect();
                    pre.push(z);
                    acts.push(a);
                }
                // Backward.
                let mut delta = vec![1.0];
                for (l, layer) in layers.iter().enumerate().rev() {
                    let dz: Vec<f64> = delta
                        .iter()
                        .enumerate()
                        .map(|(u, d)| d * layer.activation.derivative(pre[l][u], acts[l + 1][u]))
                        .collect();
                    let mut din = vec![0.0; acts[l].len()];
                    for (u, row) in layer.weights.iter().enumerate() {
                        for (i, w) in row.iter().enumerate() {
                            din[i] += dz[u] * w;
                        }
                    }
                    delta = din;
                }
                delta
            }
        }
    }

    /// Contributions of each feature to the logit of row `x`.
    pub fn contributions(&self, x: &[f64]) -> Contributions {
        let n = self.features().len();
        let zeros = vec![0.0; n];
        let base_x = self.baseline().unwrap_or(&zeros).to_vec();
        let mut filled = Vec::with_capacity(n);
        self.fill(x, &mut filled);
        let base = self.logit(&base_x);
        let logit = self.logit(&filled);
        let (values, method) = match self {
            Self::LogisticRegression { weights, .. } => {
                let t = |v: f64| self.transform().map_or(v, |t| t.apply(v));
                (
                    weights
                        .iter()
                        .zip(filled.iter().zip(&base_x))
                        .map(|(w, (v, b))| w * (t(*v) - t(*b)))
                        .collect::<Vec<_>>(),
                    "exact_linear",
                )
            }
            Self::Mlp { .. } => {
                // The path runs through the transformed inputs, where the MLP is smooth.
                let (mut filled, mut base_x) = (filled.clone(), base_x.clone());
                self.transformed(&mut filled);
                self.transformed(&mut base_x);
                let mut avg = vec![0.0; n];
                let mut point = vec![0.0; n];
                for s in 0..=IG_STEPS {
                    let alpha = s as f64 / IG_STEPS as f64;
                    let weight = if s == 0 || s == IG_STEPS { 0.5 } else { 1.0 } / IG_STEPS as f64;
                    for i in 0..n {
                        point[i] = base_x[i] + alpha * (filled[i] - base_x[i]);
                    }
                    for (a, g) in avg.iter_mut().zip(self.gradient_transformed(&point)) {
                        *a += weight * g;
                    }
                }
                (
                    avg.iter()
                        .zip(filled.iter().zip(&base_x))
                        .map(|(g, (v, b))| g * (v - b))
                        .collect(),
                    "integrated_gradients",
                )
            }
        };
        let residual = logit - base - values.iter().sum::<f64>();
        Contributions {
            base,
            values,
            residual,
            method: method.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> NativeModel {
        NativeModel::Mlp {
            features: vec!["a".into(), "b".into()],
            baseline: Some(vec![0.5, -0.5]),
            layers: vec![
                DenseLayer {
                    weights: vec![vec![0.7, -0.3], vec![0.2, 0.9], vec![-0.4, 0.5]],
                    bias: vec![0.1, -0.2, 0.05],
                    activation: Activation::Tanh,
                },
                DenseLayer {
                    weights: vec![vec![1.2, -0.8, 0.6]],
                    bias: vec![0.3],
                    activation: Activation::Identity,
                },
            ],
            transform: None,
        }
    }

    #[test]
    fn linear_contributions_are_exact() {
        let m = NativeModel::LogisticRegression {
            features: vec!["a".into(), "b".into()],
            weights: vec![0.8, -1.2],
            intercept: -2.0,
            baseline: Some(vec![1.0, 2.0]),
            transform: None,
        };
        let c = m.contributions(&[3.0, f64::NAN]);
        assert_eq!(c.values, vec![0.8 * 2.0, 0.0]);
        assert!(c.residual.abs() < 1e-12);
        let mut s = Vec::new();
        m.score_into(&[3.0, 2.0, 1.0, 2.0], &mut s).unwrap();
        assert!((s[0] - sigmoid(-2.0 + 2.4 - 2.4)).abs() < 1e-12);
        assert!((s[1] - sigmoid(-2.0 + 0.8 - 2.4)).abs() < 1e-12);
    }

    #[test]
    fn signed_log1p_transform_applies_to_scores_and_contributions() {
        let t = InputTransform::SignedLog1p;
        let m = NativeModel::LogisticRegression {
            features: vec!["a".into(), "b".into()],
            weights: vec![0.5, -1.0],
            intercept: 0.25,
            baseline: Some(vec![1.0, 0.0]),
            transform: Some(t),
        };
        let want = 0.25 + 0.5 * 99f64.ln_1p() - 1.0 * -(2f64.ln_1p());
        assert!((m.logit(&[99.0, -2.0]) - want).abs() < 1e-12);
        let c = m.contributions(&[99.0, -2.0]);
        assert!(c.residual.abs() < 1e-12, "{c:?}");
        assert!((c.values[0] - 0.5 * (99f64.ln_1p() - 1f64.ln_1p())).abs() < 1e-12);
        // Old artifacts (no field) still parse, and the field round-trips.
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.contains("\"transform\":\"signed_log1p\""), "{json}");
        assert_eq!(NativeModel::from_json(json.as_bytes()).unwrap(), m);
        let mut mlp = mlp();
        if let NativeModel::Mlp { transform, .. } = &mut mlp {
            *transform = Some(t);
        }
        let c = mlp.contributions(&[30.0, -4.0]);
        assert!(c.residual.abs() < 1e-3, "{c:?}");
        // The chain rule through the transform matches finite differences.
        let (x, h) = ([30.0, -4.0], 1e-6);
        let g = mlp.gradient(&x);
        for i in 0..2 {
            let (mut up, mut down) = (x, x);
            up[i] += h;
            down[i] -= h;
            let fd = (mlp.logit(&up) - mlp.logit(&down)) / (2.0 * h);
            assert!((g[i] - fd).abs() < 1e-6, "{i}: {} vs {fd}", g[i]);
        }
        assert!(
            !String::from_utf8(self::mlp().to_json())
                .unwrap()
                .contains("transform")
        );
    }

    #[test]
    fn integrated_gradients_nearly_complete_and_match_finite_differences() {
        let m = mlp();
        m.validate().unwrap();
        let c = m.contributions(&[2.0, 1.0]);
        assert!(c.residual.abs() < 1e-3, "residual {}", c.residual);
        // Back-propagated gradient equals a central finite difference.
        let x = [0.3, -0.7];
        let g = m.gradient(&x);
        for i in 0..2 {
            let h = 1e-6;
            let mut up = x;
            let mut down = x;
            up[i] += h;
            down[i] -= h;
            let fd = (m.logit(&up) - m.logit(&down)) / (2.0 * h);
            assert!((fd - g[i]).abs() < 1e-6, "{fd} vs {}", g[i]);
        }
    }

    #[test]
    fn bad_artifacts_are_clear_errors() {
        let e = NativeModel::from_json(b"\x00\x01garbage")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a quiver model artifact"), "{e}");
        let e = NativeModel::from_json(
            br#"{"format":"logistic_regression","features":["a"],"weights":[1,2],"intercept":0}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2 weights for 1 features"), "{e}");
        let mut bad = mlp();
        if let NativeModel::Mlp { layers, .. } = &mut bad {
            layers[1].weights[0].pop();
        }
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("layer 1 unit 0 has 2 weights")
        );
    }
}
