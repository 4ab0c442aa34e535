//! The bodies of `quiver serve`'s `DoAction` calls (docs/flight-protocol.md), as the
//! server decodes them and clients encode them: one definition per action. Every body
//! refuses unknown fields, so a typo is an error naming the field, not a default.
//!
//! ```
//! use quiver_flight_proto::actions::Follow;
//! let body = Follow { after: 7, nonce: "ab".into() };
//! assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"after":7,"nonce":"ab"}"#);
//! assert!(serde_json::from_str::<Follow>(r#"{"nonce":"ab","later":1}"#).is_err());
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `follow`: the change log after `after`, then heartbeats, each message signed for
/// `nonce` (chosen by the replica per stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// The last sequence number the replica has.
    #[serde(default)]
    pub after: u64,
    /// Hex of the replica's random nonce for this stream.
    pub nonce: String,
}

/// `blob`: an artifact or a UDF module by its hash, in chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// `artifact` or `udf_module`.
    pub kind: String,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// `health`: how fresh the online store is; `max_lag_seconds` sets the bound a view is
/// judged behind by.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Lag over which a view counts as behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_seconds: Option<f64>,
}

/// `model-status`: a deployed model's versions, metrics and rollbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStatus {
    /// Registered model name.
    pub model: String,
}

/// `explain`: one entity's value replayed step by step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    /// `NAME` or `NAME@VERSION`.
    pub view: String,
    /// The entity's key columns and values, as text.
    pub entity: Vec<(String, String)>,
    /// The point in time (RFC 3339).
    pub at: String,
    /// Delta versions to pin per source table (default: as served).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub table_versions: BTreeMap<String, i64>,
    /// Most rows kept per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<usize>,
}

/// `rollback`: a replica's report that a challenger failed its policy there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Registered model name.
    pub model: String,
    /// The challenger version rolled back.
    pub version: u64,
    /// Why (the failed check and the tenant mix).
    #[serde(default)]
    pub reason: String,
}

/// `alias`: move a model's alias, checked against the served inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alias {
    /// Registered model name.
    pub model: String,
    /// The alias (`champion`, `challenger`, ...).
    pub alias: String,
    /// The version to point it at; `None` removes it.
    pub to: Option<u64>,
    /// The version it must point at now (compare and set), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<serde_json::Value>,
    /// Why, for the alias history.
    #[serde(default)]
    pub reason: String,
}

/// `policy`: read (`policy` absent) or set a model's rollout policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Registered model name.
    pub model: String,
    /// The new policy (JSON of the registry's `RolloutPolicy`).
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
}

/// `materialize`: write online values of `views` (all when absent) up to `until`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Materialize {
    /// Views to materialize (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<Vec<String>>,
    /// Up to this time (RFC 3339; default now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Rebuild from scratch instead of reading only what is new.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let m = Materialize {
            views: Some(vec!["v".into()]),
            until: None,
            full: true,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"views":["v"],"full":true}"#);
        assert_eq!(serde_json::from_str::<Materialize>(&text).unwrap(), m);
        assert_eq!(
            serde_json::to_string(&Materialize::default()).unwrap(),
            "{}"
        );
        assert!(serde_json::from_str::<Rollback>(r#"{"model":"m","version":1,"x":0}"#).is_err());
        let e = Explain {
            view: "v".into(),
            entity: vec![("user_id".into(), "1".into())],
            at: "2024-01-01T00:00:00Z".into(),
            table_versions: BTreeMap::new(),
            max_rows: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"view":"v","entity":[["user_id","1"]],"at":"2024-01-01T00:00:00Z"}"#
        );
    }
}
