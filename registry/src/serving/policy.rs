//! When a challenger is rolled back: the rollout policy and its checks.

use super::*;

/// When a challenger is rolled back, and when inputs count as drifted.
///
/// Serialised as JSON with every field optional (missing fields take the defaults)
/// and unknown fields refused, `max_p99` as `max_p99_ms`:
///
/// ```
/// use quiver_registry::RolloutPolicy;
/// let p: RolloutPolicy =
///     serde_json::from_str(r#"{"challenger_percent": 5, "max_p99_ms": 20}"#).unwrap();
/// assert_eq!(p.max_p99, std::time::Duration::from_millis(20));
/// assert_eq!(p.max_error_rate, RolloutPolicy::default().max_error_rate);
/// assert!(serde_json::from_str::<RolloutPolicy>(r#"{"max_p99": 20}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RolloutPolicy {
    /// Share of entities (0 to 100) routed to the challenger.
    pub challenger_percent: f64,
    /// Roll back when the challenger's error rate exceeds this (0 to 1).
    pub max_error_rate: f64,
    /// Roll back when the challenger's p99 scoring latency exceeds this.
    #[serde(rename = "max_p99_ms", with = "millis")]
    pub max_p99: Duration,
    /// Roll back when the PSI of the challenger's scores against the champion's exceeds this.
    pub max_score_psi: f64,
    /// Requests the challenger must have served before it is judged.
    pub min_requests: u64,
    /// Judge every this many challenger requests.
    pub check_every: u64,
    /// A served input feature whose PSI against the training statistics exceeds this
    /// over at least `min_requests` recent values is reported as drifted (metrics,
    /// status). Feature drift is an alert, not a
    /// rollback reason: champion and challenger see the same inputs.
    pub max_feature_psi: f64,
    /// Rows per generation of the live feature-drift window (reports cover one to two
    /// windows of recent rows).
    pub drift_window: u64,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        if !(ms > 0.0 && ms <= 3_600_000.0) {
            return Err(serde::de::Error::custom(format!(
                "max_p99_ms {ms} is outside (0, 3600000]"
            )));
        }
        Ok(Duration::from_secs_f64(ms / 1000.0))
    }
}

fn default_psi() -> f64 {
    crate::drift::DEFAULT_PSI_THRESHOLD
}

fn default_drift_window() -> u64 {
    10_000
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            challenger_percent: 10.0,
            max_error_rate: 0.01,
            max_p99: Duration::from_millis(50),
            max_score_psi: crate::drift::DEFAULT_PSI_THRESHOLD,
            min_requests: 200,
            check_every: 100,
            max_feature_psi: default_psi(),
            drift_window: default_drift_window(),
        }
    }
}

impl RolloutPolicy {
    /// Check the bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidModel(format!("rollout policy: {m}")));
        if !(0.0..=100.0).contains(&self.challenger_percent) {
            return bad(format!(
                "challenger_percent {} is outside 0..=100",
                self.challenger_percent
            ));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return bad(format!(
                "max_error_rate {} is outside 0..=1",
                self.max_error_rate
            ));
        }
        if !(self.max_score_psi > 0.0) {
            return bad(format!(
                "max_score_psi {} must be positive",
                self.max_score_psi
            ));
        }
        if self.check_every == 0 {
            return bad("check_every must be at least 1".into());
        }
        if !(self.max_feature_psi > 0.0) {
            return bad(format!(
                "max_feature_psi {} must be positive",
                self.max_feature_psi
            ));
        }
        if !(1..=100_000_000).contains(&self.drift_window) {
            return bad(format!(
                "drift_window {} is outside 1..=100000000",
                self.drift_window
            ));
        }
        if self.max_p99.is_zero() {
            return bad("max_p99 must be positive".into());
        }
        Ok(())
    }
}
