//! The server step: FedAvg, FedProx and FedAdam over the securely aggregated mean update.

use super::*;

/// How the coordinator turns the mean update into the next global model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "name", deny_unknown_fields)]
#[derive(Default)]
pub enum Strategy {
    /// `w += mean Δ` (McMahan et al. 2017), rows as weights.
    #[default]
    FedAvg,
    /// FedAvg aggregation; banks add `μ/2·‖w − w_global‖²` locally (Li et al. 2020).
    FedProx {
        /// Proximal weight μ.
        mu: f64,
    },
    /// Adam on the server with the mean update as pseudo-gradient (Reddi et al.,
    /// "Adaptive Federated Optimization", ICLR 2021).
    FedAdam {
        /// Server learning rate η.
        server_lr: f64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// Adaptivity τ.
        tau: f64,
    },
}

impl Strategy {
    /// FedAdam with the paper's defaults (η = 0.01 is tuned per task; τ = 1e-3).
    pub fn fed_adam() -> Self {
        Self::FedAdam {
            server_lr: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }

    /// The proximal weight banks must use.
    pub fn prox_mu(&self) -> f64 {
        match self {
            Self::FedProx { mu } => *mu,
            _ => 0.0,
        }
    }

    /// Check the ranges.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::FedAvg => Ok(()),
            Self::FedProx { mu } if mu.is_finite() && mu >= 0.0 => Ok(()),
            Self::FedProx { mu } => Err(format!("fedprox mu {mu} must be ≥ 0")),
            Self::FedAdam {
                server_lr,
                beta1,
                beta2,
                tau,
            } => {
                let ok = server_lr.is_finite()
                    && server_lr > 0.0
                    && (0.0..1.0).contains(&beta1)
                    && (0.0..1.0).contains(&beta2)
                    && tau.is_finite()
                    && tau > 0.0;
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "fedadam needs server_lr > 0, beta1 and beta2 in [0, 1), tau > 0 (got {server_lr}, {beta1}, {beta2}, {tau})"
                    ))
                }
            }
        }
    }
}

/// The coordinator's optimizer state across rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptimizer {
    strategy: Strategy,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl ServerOptimizer {
    /// A fresh optimizer.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Apply one round's mean update to `global`.
    pub fn step(&mut self, global: &mut [f32], delta: &[f64]) {
        match self.strategy {
            Strategy::FedAvg | Strategy::FedProx { .. } => {
                for (w, d) in global.iter_mut().zip(delta) {
                    *w += *d as f32;
                }
            }
            Strategy::FedAdam {
                server_lr,
                beta1,
                beta2,
                tau,
            } => {
                if self.m.len() != delta.len() {
                    self.m = vec![0.0; delta.len()];
                    self.v = vec![0.0; delta.len()];
                }
                for i in 0..delta.len() {
                    self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * delta[i];
                    self.v[i] = beta2 * self.v[i] + (1.0 - beta2) * delta[i] * delta[i];
                    global[i] += (server_lr * self.m[i] / (self.v[i].sqrt() + tau)) as f32;
                }
            }
        }
    }
}
