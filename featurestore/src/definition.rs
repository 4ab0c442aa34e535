//! Resolved definitions: a view together with its entity, its sources and its output
//! schema, as `apply` stores them and every later step (plans, training sets, serving)
//! reads them. Below `catalog` (which builds them) and `plan` (which compiles them), so
//! neither depends on the other through this type.

use serde::{Deserialize, Serialize};

use crate::spec::{Entity, FeatureView, Source, ViewBody};

pub use quiver_flight_proto::FeatureField;

/// A view with everything it depends on, as stored by `apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewDefinition {
    /// The view.
    pub view: FeatureView,
    /// Its entity.
    pub entity: Entity,
    /// Its sources, in the order the view names them.
    pub sources: Vec<Source>,
    /// Its output features.
    pub features: Vec<FeatureField>,
    /// The WebAssembly modules its SQL calls, pinned by hash: part of the definition,
    /// so a changed module is a new version of the view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udfs: Vec<crate::udf::UdfRef>,
}

impl ViewDefinition {
    /// The view's name.
    pub fn name(&self) -> &str {
        &self.view.name.value
    }

    /// Join key column names.
    pub fn keys(&self) -> Vec<String> {
        self.entity
            .join_keys
            .iter()
            .map(|k| k.value.clone())
            .collect()
    }

    /// Created-time column used to break ties (not for SQL views, whose output has
    /// only the columns the query selects).
    pub fn created_column(&self) -> Option<String> {
        match self.view.body {
            ViewBody::Sql(_) => None,
            _ => self.sources[0]
                .created_timestamp
                .as_ref()
                .map(|c| c.value.clone()),
        }
    }

    /// Event-time column of the rows the point-in-time join reads.
    pub fn event_time_column(&self) -> &str {
        match &self.view.body {
            ViewBody::Sql(s) => s
                .timestamp
                .as_ref()
                .map(|t| t.value.as_str())
                .unwrap_or(&self.sources[0].timestamp.value),
            _ => &self.sources[0].timestamp.value,
        }
    }
}
