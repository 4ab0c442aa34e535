//! The commands carried in Flight tickets and descriptors: JSON, bounded, validated.
//! The format is documented for other clients in `docs/flight-protocol.md`.
//!
//! ```
//! use quiver_flight_proto::{Command, WireLimits};
//! let cmd = Command::decode(br#"{"type":"online","view":"v","keys":{"user_id":[1]}}"#, &WireLimits::default()).unwrap();
//! assert!(matches!(cmd, Command::Online { .. }));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The bounds a command is checked against (the server's `Limits` carry them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Most bytes in one command.
    pub max_command_bytes: usize,
    /// Most keys (or inline entity rows) in one command.
    pub max_keys: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            max_command_bytes: 1024 * 1024,
            max_keys: 100_000,
        }
    }
}

/// A request to the feature server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Online values of `features` (all when absent) of `view` for `keys`, a map from
    /// join key column to values: `{"user_id": [1, 2]}`.
    Online {
        /// The view.
        view: String,
        /// Features to return (default all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        features: Option<Vec<String>>,
        /// Key columns.
        keys: BTreeMap<String, Vec<Json>>,
    },
    /// Fetch the online features a registered model takes and score them, in one round
    /// trip: the champion serves most keys, the challenger the canary share (by a
    /// stable hash of the key). `{"type": "score", "model": "fraud", "keys":
    /// {"user_id": [1, 2]}, "explain": true}`.
    Score {
        /// Registered model name.
        model: String,
        /// Key columns.
        keys: BTreeMap<String, Vec<Json>>,
        /// Also return per-feature contributions (JSON per row).
        #[serde(default)]
        explain: bool,
    },
    /// A point-in-time training set for entity rows given inline (`rows`, a map of
    /// columns) or uploaded before with DoPut (`upload`).
    Historical {
        /// Feature references: `VIEW`, `VIEW:FEATURE`, `VIEW@N:FEATURE`.
        features: Vec<String>,
        /// Id returned by a DoPut upload.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload: Option<String>,
        /// Inline entity rows: columns by name (times as RFC 3339 text).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<BTreeMap<String, Vec<Json>>>,
        /// Name feature columns `VIEW__FEATURE`.
        #[serde(default)]
        full_names: bool,
    },
    /// The rows a view reads from its source (keys, event time, inputs), at a Delta
    /// version (default latest).
    Scan {
        /// The view.
        view: String,
        /// Delta version of the source table.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta_version: Option<i64>,
    },
    /// DoPut: an entity table for a later `historical` command.
    Upload {},
    /// DoExchange: key batches in, online value batches out.
    Exchange {
        /// The view.
        view: String,
        /// Features to return (default all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        features: Option<Vec<String>>,
    },
}

/// Why a command was refused; mapped to Flight status codes by the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Malformed (InvalidArgument).
    Invalid(String),
    /// Over a bound (ResourceExhausted).
    TooLarge(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Invalid(m) | CommandError::TooLarge(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CommandError {}

impl Command {
    /// Parse a command, checking size and shape.
    pub fn decode(bytes: &[u8], limits: &WireLimits) -> Result<Command, CommandError> {
        if bytes.len() > limits.max_command_bytes {
            return Err(CommandError::TooLarge(format!(
                "the command is {} bytes, over the limit of {}",
                bytes.len(),
                limits.max_command_bytes
            )));
        }
        if bytes.is_empty() {
            return Err(CommandError::Invalid("empty command; send JSON like {\"type\": \"online\", \"view\": \"...\", \"keys\": {...}}".into()));
        }
        let cmd: Command = serde_json::from_slice(bytes)
            .map_err(|e| CommandError::Invalid(format!("malformed command JSON: {e}")))?;
        cmd.check(limits)?;
        Ok(cmd)
    }

    /// The JSON bytes of this command (tickets carry them).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands serialize")
    }

    fn check(&self, limits: &WireLimits) -> Result<(), CommandError> {
        let name_ok = |n: &str| !n.is_empty() && n.len() <= 256;
        match self {
            Command::Online {
                view,
                features,
                keys,
            } => {
                if !name_ok(view) {
                    return Err(CommandError::Invalid(
                        "`view` must be 1 to 256 bytes".into(),
                    ));
                }
                if features
                    .as_ref()
                    .is_some_and(|f| f.is_empty() || f.len() > 10_000)
                {
                    return Err(CommandError::Invalid(
                        "`features`, when given, must list 1 to 10,000 names".into(),
                    ));
                }
                check_columns(keys, limits.max_keys, "keys")?;
            }
            Command::Score { model, keys, .. } => {
                if !name_ok(model) {
                    return Err(CommandError::Invalid(
                        "`model` must be 1 to 256 bytes".into(),
                    ));
                }
                check_columns(keys, limits.max_keys, "keys")?;
            }
            Command::Historical {
                features,
                upload,
                rows,
                ..
            } => {
                if features.is_empty() || features.len() > 10_000 {
                    return Err(CommandError::Invalid(
                        "`features` must list 1 to 10,000 references".into(),
                    ));
                }
                match (upload, rows) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(CommandError::Invalid(
                            "give the entity rows either inline (`rows`) or as an `upload` id"
                                .into(),
                        ));
                    }
                    (None, Some(r)) => check_columns(r, limits.max_keys, "rows")?,
                    _ => {}
                }
            }
            Command::Scan { view, .. } | Command::Exchange { view, .. } => {
                if !name_ok(view) {
                    return Err(CommandError::Invalid(
                        "`view` must be 1 to 256 bytes".into(),
                    ));
                }
            }
            Command::Upload {} => {}
        }
        Ok(())
    }
}

fn check_columns(
    cols: &BTreeMap<String, Vec<Json>>,
    max: usize,
    what: &str,
) -> Result<(), CommandError> {
    if cols.is_empty() {
        return Err(CommandError::Invalid(format!("`{what}` has no columns")));
    }
    let len = cols.values().next().map_or(0, Vec::len);
    if len > max {
        return Err(CommandError::TooLarge(format!(
            "{len} {what} in one request, over the limit of {max}; split the request"
        )));
    }
    if cols.values().any(|c| c.len() != len) {
        return Err(CommandError::Invalid(format!(
            "every column of `{what}` must have the same length"
        )));
    }
    Ok(())
}

/// JSON columns to an Arrow batch: integers, floats, booleans or strings (nulls
/// allowed); a column mixing kinds is an error.
pub fn json_batch(cols: &BTreeMap<String, Vec<Json>>) -> Result<RecordBatch, CommandError> {
    let mut fields = Vec::with_capacity(cols.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    for (name, values) in cols {
        let kind = values.iter().find(|v| !v.is_null());
        let array: ArrayRef = match kind {
            None | Some(Json::String(_)) => Arc::new(StringArray::from(
                values
                    .iter()
                    .map(|v| match v {
                        Json::Null => Ok(None),
                        Json::String(s) => Ok(Some(s.clone())),
                        other => Err(CommandError::Invalid(format!(
                            "column `{name}` mixes strings and {other}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            Some(Json::Number(_)) if values.iter().all(|v| v.is_null() || v.is_i64()) => Arc::new(
                Int64Array::from(values.iter().map(Json::as_i64).collect::<Vec<_>>()),
            ),
            Some(Json::Number(_)) => Arc::new(Float64Array::from(
                values
                    .iter()
                    .map(|v| match v {
                        Json::Null => Ok(None),
                        Json::Number(n) => Ok(n.as_f64()),
                        other => Err(CommandError::Invalid(format!(
                            "column `{name}` mixes numbers and {other}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            Some(Json::Bool(_)) => Arc::new(BooleanArray::from(
                values.iter().map(Json::as_bool).collect::<Vec<_>>(),
            )),
            Some(other) => {
                return Err(CommandError::Invalid(format!(
                    "column `{name}` holds {other}; use numbers, strings or booleans"
                )));
            }
        };
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| CommandError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[test]
    fn round_trip_and_errors() {
        let l = WireLimits::default();
        let c = Command::decode(
            br#"{"type":"online","view":"v","keys":{"user_id":[1,2]}}"#,
            &l,
        )
        .unwrap();
        assert_eq!(Command::decode(&c.encode(), &l).unwrap(), c);
        assert!(matches!(
            Command::decode(b"{", &l),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            Command::decode(br#"{"type":"online","view":"v","keys":{}}"#, &l),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            Command::decode(br#"{"type":"nope"}"#, &l),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            Command::decode(
                br#"{"type":"online","view":"v","keys":{"a":[1]},"extra":1}"#,
                &l
            ),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            Command::decode(&vec![b' '; l.max_command_bytes + 1], &l),
            Err(CommandError::TooLarge(_))
        ));
        let many = format!(
            r#"{{"type":"online","view":"v","keys":{{"k":[{}]}}}}"#,
            vec!["1"; l.max_keys + 1].join(",")
        );
        assert!(matches!(
            Command::decode(many.as_bytes(), &l),
            Err(CommandError::TooLarge(_))
        ));
    }

    #[test]
    fn json_columns_become_arrow() {
        let mut cols = BTreeMap::new();
        cols.insert("a".to_owned(), vec![serde_json::json!(1), Json::Null]);
        cols.insert(
            "b".to_owned(),
            vec![serde_json::json!("x"), serde_json::json!("y")],
        );
        let b = json_batch(&cols).unwrap();
        assert_eq!(b.schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(b.schema().field(1).data_type(), &DataType::Utf8);
        cols.insert(
            "c".to_owned(),
            vec![serde_json::json!(1), serde_json::json!("x")],
        );
        assert!(json_batch(&cols).is_err());
    }
}
