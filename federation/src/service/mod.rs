//! The coordinator and the workers as tonic gRPC services over mutual TLS.
//!
//! A run is a sequence of secure aggregations, each the five SecAgg stages of
//! [`crate::protocol::secagg`] with a deadline per stage:
//!
//! 1. round 0 aggregates feature statistics ([`crate::aggregate::FeatureMoments`]) so
//!    every bank standardizes with the same global means and deviations;
//! 2. rounds 1..=R each send the global model, let each bank train locally
//!    ([`crate::train`], DP-SGD when configured) and aggregate the row-weighted
//!    updates with counts and loss inside the masked vector
//!    ([`crate::aggregate::UpdateEncoding`]); the [`crate::aggregate::Strategy`]
//!    makes the next global model.
//!
//! Training stops after R rounds, or earlier when a bank reports that one more round
//! would exceed its privacy budget. Banks that miss a deadline are dropouts for that
//! round; the round completes while at least `threshold` banks remain.

pub mod coordinator;
pub mod pki;
pub mod rpc;
pub mod simulate;
pub mod worker;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::aggregate::Strategy;
use crate::dp::Budget;
use crate::train::{Architecture, LocalConfig, Standardizer};

pub use coordinator::{Coordinator, CoordinatorConfig, Deadlines, RegisterConfig, RunSummary};
pub use worker::{Worker, WorkerConfig, WorkerOutcome};

/// Why the service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The network or TLS failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The coordinator or a bank broke the protocol, or a round aborted.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// Privacy accounting refused.
    #[error(transparent)]
    Dp(#[from] crate::dp::DpError),
    /// The bank's privacy ledger cannot be used.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The run failed.
    #[error("federation run failed: {0}")]
    Failed(String),
    /// Reading a training set or registering the model failed.
    #[error(transparent)]
    Store(#[from] quiver_featurestore::Error),
    /// The registry refused the model.
    #[error(transparent)]
    Registry(#[from] quiver_registry::Error),
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> ServiceError {
    ServiceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Bank names: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_bank_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Config(format!(
            "bank name `{name}`: 1 to 64 letters, digits, `_` or `-`"
        )))
    }
}

/// Read a JSON config (at most 1 MiB), naming the file and the field on error.
pub fn read_json_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ServiceError> {
    quiver_registry::read_json_config(path, 1 << 20).map_err(ServiceError::Config)
}

/// What a round computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundKind {
    /// Feature statistics for the global standardization.
    Moments,
    /// One round of local training and model averaging.
    Train,
}

/// The plan of one round, sent to every bank at stage 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundPlan {
    /// Run id (32 hex digits).
    pub session: String,
    /// Round number.
    pub round: u64,
    /// What the round computes.
    pub kind: RoundKind,
    /// The roster, in client-id order.
    pub roster: Vec<pki::RosterEntry>,
    /// Shares needed (and fewest banks a round goes on with).
    pub threshold: usize,
    /// SecAgg+ neighbours (banks − 1 for plain SecAgg).
    pub neighbours: usize,
    /// Words in the masked vector.
    pub len: usize,
    /// Model inputs, in order.
    pub features: Vec<String>,
    /// Label column.
    pub label: String,
    /// Model family.
    pub architecture: Architecture,
    /// Largest rows per bank (public; sets the FedAvg weight scale).
    pub max_rows: u64,
    /// Update values are clipped to `[-update_clip, update_clip]`.
    pub update_clip: f64,
    /// Local training (train rounds).
    pub local: LocalConfig,
    /// Global standardization (train rounds).
    #[serde(default)]
    pub standardizer: Option<Standardizer>,
    /// Global parameters (train rounds). Not in the JSON: they travel beside it as
    /// the packed floats of the stage-0 task (`RoundStart.global`).
    #[serde(skip)]
    pub global: Vec<f32>,
    /// Server strategy (informational for banks; FedProx's μ is in `local`).
    pub strategy: Strategy,
    /// Bank-level DP: clip and noise the update ([`crate::aggregate::BankDpEncoding`]).
    #[serde(default)]
    pub bank_dp: Option<crate::aggregate::BankDp>,
}

/// What a bank reports, in the clear, with its stage-0 message: public facts only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankReport {
    /// ε spent by this bank after this round (record-level DP; 0 without DP).
    pub epsilon: f64,
    /// ε it would have spent after one more round like this one.
    pub epsilon_next: f64,
    /// δ of its guarantee.
    pub delta: f64,
    /// Lineage id of its training set (`training_set:<id>`), if known.
    #[serde(default)]
    pub training_set: Option<String>,
    /// Feature views behind the training set (`view@version`), if known.
    #[serde(default)]
    pub views: Vec<String>,
    /// Bank-level ε this bank has accounted after this round (with `bank_dp`).
    #[serde(default)]
    pub bank_epsilon: Option<f64>,
    /// Why the bank sits this round out (its privacy budget), if it does.
    #[serde(default)]
    pub refused: Option<String>,
}

/// The budget a bank enforces on itself, and whether it insists on DP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PrivacyPolicy {
    /// The bank's (ε, δ) budget.
    pub budget: Budget,
    /// Refuse rounds without DP-SGD.
    pub require_dp: bool,
}

impl Default for PrivacyPolicy {
    fn default() -> Self {
        Self {
            budget: Budget::default(),
            require_dp: true,
        }
    }
}
