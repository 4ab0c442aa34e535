//! What `plan` reports: added, changed and removed definitions, field by field, and
//! schema changes of views.

use std::fmt::Write as _;

use quiver_registry::ChangeKind;
use serde::Serialize;
use serde_json::Value;

use crate::catalog::FeatureField;

/// One changed field of a definition, as a JSON path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Path such as `body.aggregates[txn_count_7d].window`.
    pub path: String,
    /// Value before (absent when added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// Value after (absent when removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// How a view's output schema changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaChange {
    /// The feature.
    pub feature: String,
    /// `added`, `removed` or `type_changed`.
    pub change: &'static str,
    /// Type before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_type: Option<String>,
    /// Type after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_type: Option<String>,
}

/// One definition `apply` would add, change or remove.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedChange {
    /// `entity`, `source` or `feature_view`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What would happen.
    pub change: ChangeKind,
    /// The applied version it replaces or removes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<u64>,
    /// Field-level differences (changes only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    /// Output schema differences (views only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<SchemaChange>,
    /// Registered model versions that read a view this changes or removes, and what
    /// retraining each means (the lineage graph's answer, `quiver registry impact`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub affected_models: Vec<crate::model_inputs::RetrainTask>,
}

/// Everything `apply` would do. `plan` computes it and changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    /// The registry state (apply id) the plan was computed against.
    pub based_on_apply: u64,
    /// The changes, entities first, then sources, then views.
    pub changes: Vec<PlannedChange>,
    /// Definitions that would stay as they are.
    pub unchanged: usize,
}

impl PlanReport {
    /// True when `apply` would change nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn count(&self, kind: ChangeKind) -> usize {
        self.changes.iter().filter(|c| c.change == kind).count()
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.is_empty() {
            let _ = writeln!(
                out,
                "No changes: the registry matches the repo ({} definitions).",
                self.unchanged
            );
            return out;
        }
        for c in &self.changes {
            let (sign, ver) = match (c.change, c.from_version) {
                (ChangeKind::Added, _) => ("+", String::new()),
                (ChangeKind::Changed, Some(v)) => ("~", format!(" (v{v} -> v{})", v + 1)),
                (ChangeKind::Removed, Some(v)) => ("-", format!(" (v{v})")),
                (_, None) => ("~", String::new()),
            };
            let _ = writeln!(out, "{sign} {} {}{ver}", c.kind, c.name);
            for f in &c.fields {
                let show =
                    |v: &Option<Value>| v.as_ref().map(short).unwrap_or_else(|| "(none)".into());
                let _ = writeln!(out, "    {}: {} -> {}", f.path, show(&f.old), show(&f.new));
            }
            for s in &c.schema {
                let _ = match s.change {
                    "added" => writeln!(
                        out,
                        "    schema: + {} {}",
                        s.feature,
                        s.new_type.as_deref().unwrap_or("")
                    ),
                    "removed" => writeln!(
                        out,
                        "    schema: - {} {}",
                        s.feature,
                        s.old_type.as_deref().unwrap_or("")
                    ),
                    _ => writeln!(
                        out,
                        "    schema: ~ {} {} -> {}",
                        s.feature,
                        s.old_type.as_deref().unwrap_or(""),
                        s.new_type.as_deref().unwrap_or("")
                    ),
                };
            }
            for m in &c.affected_models {
                let serving = if m.aliases.is_empty() {
                    String::new()
                } else {
                    format!(", serving as {}", m.aliases.join(","))
                };
                let _ = writeln!(
                    out,
                    "    model {}@{} reads it{serving}: retrain after apply",
                    m.model, m.version
                );
            }
        }
        let _ = writeln!(
            out,
            "\nPlan: {} to add, {} to change, {} to remove, {} unchanged.",
            self.count(ChangeKind::Added),
            self.count(ChangeKind::Changed),
            self.count(ChangeKind::Removed),
            self.unchanged
        );
        out
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s = s.replace('\n', "\\n");
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

/// Field-level differences between two definitions. Lists of objects with a `name` are
/// matched by name, so inserting a feature shows as one addition.
pub fn diff_values(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = join(path, k);
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(FieldChange {
                        path: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if named(a) && named(b) => {
            let name = |v: &Value| {
                v.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            for x in a {
                let n = name(x);
                let p = format!("{path}[{n}]");
                match b.iter().find(|y| name(y) == n) {
                    Some(y) => walk(&p, x, y, out),
                    None => out.push(FieldChange {
                        path: p,
                        old: Some(x.clone()),
                        new: None,
                    }),
                }
            }
            for y in b {
                let n = name(y);
                if !a.iter().any(|x| name(x) == n) {
                    out.push(FieldChange {
                        path: format!("{path}[{n}]"),
                        old: None,
                        new: Some(y.clone()),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ => out.push(FieldChange {
            path: path.to_owned(),
            old: Some(old.clone()),
            new: Some(new.clone()),
        }),
    }
}

fn named(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|v| v.get("name").and_then(Value::as_str).is_some())
}

/// Schema differences between two feature lists.
pub fn diff_schema(old: &[FeatureField], new: &[FeatureField]) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    for o in old {
        match new.iter().find(|n| n.name == o.name) {
            None => out.push(SchemaChange {
                feature: o.name.clone(),
                change: "removed",
                old_type: Some(o.dtype.clone()),
                new_type: None,
            }),
            Some(n) if n.dtype != o.dtype => out.push(SchemaChange {
                feature: o.name.clone(),
                change: "type_changed",
                old_type: Some(o.dtype.clone()),
                new_type: Some(n.dtype.clone()),
            }),
            Some(_) => {}
        }
    }
    for n in new {
        if !old.iter().any(|o| o.name == n.name) {
            out.push(SchemaChange {
                feature: n.name.clone(),
                change: "added",
                old_type: None,
                new_type: Some(n.dtype.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_lists_diff_by_name() {
        let old = json!({"ttl": "45d", "features": [{"name": "a", "window": "7d"}, {"name": "b"}]});
        let new = json!({"ttl": "30d", "features": [{"name": "c"}, {"name": "a", "window": "14d"}, {"name": "b"}]});
        let d = diff_values(&old, &new);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["features[a].window", "features[c]", "ttl"]);
    }
}
