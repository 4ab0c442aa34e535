//! The coordinator's configuration: who takes part, what is trained, under which
//! deadlines and privacy budget, and where the model is registered.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::aggregate::{BankDp, BankDpEncoding, Strategy};
use crate::dp::Budget;
use crate::protocol::secagg::Params;
use crate::service::ServiceError;
use crate::service::pki::{RosterEntry, TlsFiles};
use crate::train::{Architecture, LocalConfig};

/// Stage deadlines, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Deadlines {
    /// Stage 0 of each round, which includes local training.
    pub train_s: f64,
    /// Each later stage.
    pub stage_s: f64,
    /// How long to wait for banks before round 0.
    pub join_s: f64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            train_s: 300.0,
            stage_s: 30.0,
            join_s: 120.0,
        }
    }
}

/// Where and how to register the final model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RegisterConfig {
    /// Feature repo whose registry takes the model (its views resolve the inputs).
    pub repo: PathBuf,
    /// Model name.
    pub model: String,
    /// Feature references (`view:feature`), in the model's input order.
    pub features: Vec<String>,
    /// Ed25519 signing key of the registrar (as `quiver registry keygen` writes).
    pub key: PathBuf,
    /// Signer name (trusted in that registry).
    pub signer: String,
}

/// The coordinator's configuration (`quiver-fed coordinator --config FILE`, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CoordinatorConfig {
    /// gRPC address (port 0 picks one).
    pub listen: SocketAddr,
    /// Prometheus `/metrics` over plain HTTP (port 0 picks one); none by default.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS: the CA that signed the banks' client certificates, and this server's.
    pub tls: TlsFiles,
    /// The banks, in client-id order.
    pub roster: Vec<RosterEntry>,
    /// Model inputs (training-set columns), in order.
    pub features: Vec<String>,
    /// Label column (0/1 or boolean).
    pub label: String,
    /// Model family.
    pub architecture: Architecture,
    /// Training rounds.
    pub rounds: u64,
    /// SecAgg threshold: shares of a bank's secrets needed to rebuild them; a round
    /// goes on with `threshold + 1` banks. Default: the smallest that withstands the
    /// coordinator colluding with fewer than a third of the banks (`2t > neighbours +
    /// colluders`, docs/federation.md). Each bank refuses plans below its own policy.
    #[serde(default)]
    pub threshold: Option<usize>,
    /// SecAgg+ neighbours (default: all, plain SecAgg).
    #[serde(default)]
    pub neighbours: Option<usize>,
    /// Aggregation strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Local training, including DP-SGD.
    #[serde(default)]
    pub local: LocalConfig,
    /// Update clip per value.
    #[serde(default = "default_update_clip")]
    pub update_clip: f64,
    /// Largest rows per bank.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Run-wide budget: training stops before any bank would pass it (record-level
    /// ε as the banks report it, and bank-level ε when `bank_dp` is set).
    #[serde(default)]
    pub budget: Budget,
    /// Bank-level DP on the aggregate (distributed Skellam noise), on top of or
    /// instead of DP-SGD.
    #[serde(default)]
    pub bank_dp: Option<BankDp>,
    /// Stage deadlines.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Seed of the initial model.
    #[serde(default)]
    pub seed: u64,
    /// Register the final model here.
    #[serde(default)]
    pub register: Option<RegisterConfig>,
    /// Write the final model artifact and the run summary into this folder.
    #[serde(default)]
    pub output: Option<PathBuf>,
}

/// What `quiver-fed init` writes, less the roster and features: set those (and
/// anything else) on it. An empty roster or feature list fails [`validate`].
///
/// [`validate`]: CoordinatorConfig::validate
impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            metrics_listen: None,
            tls: TlsFiles {
                ca: "ca.pem".into(),
                cert: "coordinator.pem".into(),
                key: "coordinator.key".into(),
            },
            roster: Vec::new(),
            features: Vec::new(),
            label: "is_fraud".into(),
            architecture: Architecture::LogisticRegression,
            rounds: 10,
            threshold: None,
            neighbours: None,
            strategy: Strategy::default(),
            local: LocalConfig::default(),
            update_clip: default_update_clip(),
            max_rows: default_max_rows(),
            budget: Budget::default(),
            bank_dp: None,
            deadlines: Deadlines::default(),
            seed: 0,
            register: None,
            output: None,
        }
    }
}

fn default_update_clip() -> f64 {
    1.0
}

fn default_max_rows() -> u64 {
    10_000_000
}

impl CoordinatorConfig {
    /// Check everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let bad = |m: String| Err(ServiceError::Config(m));
        let n = self.roster.len();
        let mut names = BTreeSet::new();
        for b in &self.roster {
            crate::service::check_bank_name(&b.name)?;
            if !names.insert(&b.name) {
                return bad(format!("bank `{}` is listed twice in roster", b.name));
            }
            let key = hex::decode(&b.public_key).unwrap_or_default();
            if key.len() != 32 {
                return bad(format!(
                    "roster: bank `{}` public_key must be 64 hex digits (Ed25519)",
                    b.name
                ));
            }
        }
        self.params(1)?.validate()?;
        if self.features.is_empty() {
            return bad("features: at least one".into());
        }
        self.architecture
            .validate(self.features.len())
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        if !(1..=10_000).contains(&self.rounds) {
            return bad(format!("rounds {}; 1 to 10000", self.rounds));
        }
        self.strategy.validate().map_err(ServiceError::Config)?;
        self.local
            .validate()
            .map_err(|e| ServiceError::Config(format!("local: {e}")))?;
        if self.local.prox_mu != self.strategy.prox_mu() {
            return bad(format!(
                "local.prox_mu {} must equal the strategy's mu {}",
                self.local.prox_mu,
                self.strategy.prox_mu()
            ));
        }
        if !(self.update_clip.is_finite() && self.update_clip > 0.0) {
            return bad(format!("update_clip {} must be positive", self.update_clip));
        }
        if self.max_rows == 0 || self.max_rows >= 1 << 24 {
            return bad(format!(
                "max_rows {}; 1 to 16777215 (counts need headroom for {n} banks)",
                self.max_rows
            ));
        }
        self.budget.validate()?;
        if let Some(dp) = self.bank_dp {
            let np = self.architecture.num_params(self.features.len());
            BankDpEncoding::new(
                np,
                dp,
                {
                    let p = self.params(1)?;
                    p.honest_survivors(p.colluders_tolerated())
                },
                n,
            )?;
        }
        let d = &self.deadlines;
        for (name, v) in [
            ("train_s", d.train_s),
            ("stage_s", d.stage_s),
            ("join_s", d.join_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return bad(format!("deadlines.{name} {v}; 0 to 86400 seconds"));
            }
        }
        Ok(())
    }

    pub(super) fn params(&self, len: usize) -> Result<Params, ServiceError> {
        let n = self.roster.len();
        let neighbours = self.neighbours.unwrap_or(n.saturating_sub(1));
        let threshold = self.threshold.unwrap_or_else(|| {
            crate::protocol::secagg::default_threshold(
                neighbours,
                crate::protocol::secagg::default_colluders(n),
            )
        });
        Ok(Params {
            clients: n,
            threshold,
            neighbours,
            len,
        })
    }
}
