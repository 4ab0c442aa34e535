//! What a run leaves: one record per round, and the run's summary (history, final
//! model, lineage).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::service::BankReport;
use crate::train::{Architecture, Standardizer};

/// One finished round, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round (0: feature statistics).
    pub round: u64,
    /// Banks whose input is in the sum.
    pub contributors: Vec<String>,
    /// Banks that dropped or were excluded.
    pub dropped: Vec<String>,
    /// Banks the coordinator caught breaking the protocol in this round (each by a
    /// check of its own signed messages: an accusation no honest bank can make, a
    /// revealed share that does not match its commitment), with what they did. They
    /// are left out of every later round of the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub misbehaving: Vec<String>,
    /// Why the round failed, when it did (its number is spent; the run goes on
    /// without the banks named in `misbehaving`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Rows over the contributors.
    pub rows: u64,
    /// Row-weighted log-loss of the global model before the round (train rounds).
    pub loss_before: Option<f64>,
    /// Largest ε spent by any bank after the round.
    pub epsilon: f64,
    /// Bank-level ε after the round (with `bank_dp`).
    #[serde(default)]
    pub bank_epsilon: Option<f64>,
    /// Update values clipped by the quantizer.
    pub clipped_values: u64,
    /// Examples whose gradient DP-SGD clipped.
    pub clipped_examples: u64,
    /// Wall time.
    pub seconds: f64,
    /// Wall time of each protocol stage: keys (includes the banks' local work),
    /// shares, masked input, consistency, unmasking.
    #[serde(default)]
    pub stage_seconds: Vec<f64>,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub session: String,
    /// Training rounds completed.
    pub rounds: u64,
    /// Why it stopped: `rounds`, `budget`, or an error.
    pub stopped: String,
    /// Largest ε spent by any bank, and δ.
    pub epsilon: f64,
    /// δ of the budget.
    pub delta: f64,
    /// Bank-level ε spent (with `bank_dp`), at the same δ.
    #[serde(default)]
    pub bank_epsilon: Option<f64>,
    /// Every round.
    pub history: Vec<RoundRecord>,
    /// The final model (registry JSON artifact).
    pub model: serde_json::Value,
    /// Model family.
    pub architecture: Architecture,
    /// Model inputs, in order.
    pub features: Vec<String>,
    /// Parameters of the final model (standardized space).
    pub params: Vec<f32>,
    /// The global standardization.
    pub standardizer: Option<Standardizer>,
    /// Where the model was registered (`model@version`).
    pub registered: Option<String>,
    /// Training sets and views the banks reported.
    pub lineage: BTreeMap<String, BankReport>,
}

impl RunSummary {
    /// The rounds as a text table: round, banks in the sum, rows, loss before the
    /// round (`stats` for round 0), ε after it (and bank-level ε with `bank_dp`),
    /// seconds, dropped banks. Under bank-level DP rows and loss are not released and
    /// show as `-`.
    pub fn history_table(&self) -> String {
        let bank = self.history.iter().any(|h| h.bank_epsilon.is_some());
        let mut t = format!(
            "{:>5} {:>6} {:>8} {:>9} {:>7}{} {:>8}  dropped\n",
            "round",
            "banks",
            "rows",
            "loss",
            "ε",
            if bank {
                format!(" {:>7}", "bank ε")
            } else {
                String::new()
            },
            "seconds"
        );
        for h in &self.history {
            let rows = if h.round > 0 && h.rows == 0 {
                "-".to_string()
            } else {
                h.rows.to_string()
            };
            let loss = match (h.round, h.loss_before) {
                (0, _) => "stats".to_string(),
                (_, Some(l)) => format!("{l:.4}"),
                (_, None) => "-".to_string(),
            };
            let bank_col = match (bank, h.bank_epsilon) {
                (false, _) => String::new(),
                (true, Some(e)) => format!(" {e:>7.3}"),
                (true, None) => format!(" {:>7}", "-"),
            };
            t += &format!(
                "{:>5} {:>6} {:>8} {:>9} {:>7.3}{} {:>8.2}  {}\n",
                h.round,
                h.contributors.len(),
                rows,
                loss,
                h.epsilon,
                bank_col,
                h.seconds,
                h.dropped.join(",")
            );
        }
        t
    }
}
