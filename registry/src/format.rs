//! [`Model`]: a registered model in any supported format (native JSON, ONNX) behind
//! one scoring interface, so serving never asks which format it holds.

use crate::Result;
#[cfg(not(feature = "onnx"))]
use crate::native::invalid;
use crate::native::{Contributions, NativeModel};

/// A registered model in any supported format: what the registry loads and serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Model {
    /// quiver's JSON formats (logistic regression, MLP).
    Native(NativeModel),
    /// An ONNX file run by tract (feature `onnx`).
    #[cfg(feature = "onnx")]
    Onnx(crate::onnx::OnnxModel),
}

impl Model {
    /// Parse an artifact: JSON is a native model, anything else is read as ONNX.
    ///
    /// `input` names the features (an ONNX file does not); `stats` gives the training
    /// means ONNX models use for missing inputs and as the reference of contributions.
    pub fn from_artifact(
        bytes: &[u8],
        input: &crate::InputSchema,
        stats: &[crate::FeatureStats],
    ) -> Result<Self> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            return NativeModel::from_json(bytes).map(Self::Native);
        }
        #[cfg(feature = "onnx")]
        {
            let features: Vec<String> = input.features.iter().map(|f| f.column.clone()).collect();
            let baseline = features
                .iter()
                .map(|f| {
                    stats
                        .iter()
                        .find(|s| &s.name == f && s.mean.is_finite())
                        .map_or(0.0, |s| s.mean)
                })
                .collect();
            crate::onnx::OnnxModel::load(bytes, features, baseline).map(Self::Onnx)
        }
        #[cfg(not(feature = "onnx"))]
        {
            let _ = (input, stats);
            Err(invalid(
                "not a quiver model artifact (JSON), and this build has no ONNX support (cargo feature `onnx`)",
            ))
        }
    }

    /// Format name as stored in the registry (`logistic_regression`, `mlp`, `onnx`).
    pub fn format(&self) -> &'static str {
        match self {
            Self::Native(m) => m.format(),
            #[cfg(feature = "onnx")]
            Self::Onnx(_) => "onnx",
        }
    }

    /// Input feature names, in order.
    pub fn features(&self) -> &[String] {
        match self {
            Self::Native(m) => m.features(),
            #[cfg(feature = "onnx")]
            Self::Onnx(m) => m.features(),
        }
    }

    /// The native model, if this is one.
    pub fn native(&self) -> Option<&NativeModel> {
        match self {
            Self::Native(m) => Some(m),
            #[cfg(feature = "onnx")]
            Self::Onnx(_) => None,
        }
    }

    /// The score (probability of the positive class) of one row; NaN means missing.
    pub fn score(&self, x: &[f64]) -> Result<f64> {
        match self {
            Self::Native(m) => Ok(m.score(x)),
            #[cfg(feature = "onnx")]
            Self::Onnx(m) => m.score(x),
        }
    }

    /// Scores of rows stored row-major in `x`, into `out`.
    pub fn score_into(&self, x: &[f64], out: &mut Vec<f64>) -> Result<()> {
        match self {
            Self::Native(m) => m.score_into(x, out),
            #[cfg(feature = "onnx")]
            Self::Onnx(m) => m.score_into(x, out),
        }
    }

    /// Per-feature contributions to the logit of row `x` (see each format for the
    /// method: exact for linear models, integrated gradients for MLPs, baseline Shapley
    /// values for ONNX models).
    pub fn contributions(&self, x: &[f64]) -> Result<Contributions> {
        match self {
            Self::Native(m) => Ok(m.contributions(x)),
            #[cfg(feature = "onnx")]
            Self::Onnx(m) => m.contributions(x),
        }
    }
}

impl From<NativeModel> for Model {
    fn from(m: NativeModel) -> Self {
        Self::Native(m)
    }
}
