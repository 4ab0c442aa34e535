//! The feature store's side of the model registry: models' input schemas resolved
//! against applied views, the promotion check, training-set lineage and training
//! statistics read from a training set file.
//!
//! The registry itself (versions, signatures, aliases, lineage graph) lives in
//! `quiver-registry`, in the same database as the applied definitions.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use quiver_registry::{
    ArtifactStore, FeatureStats, InputFeature, InputSchema, ModelRegistry, Node, NodeKind, Subgraph,
};
use serde::Serialize;

use crate::offline::{FeatureRef, TrainingSet};
use crate::{Error, FeatureStore, Result};

pub use crate::offline::LINEAGE_METADATA_KEY;

/// A model version that reads a view, and what retraining it on the view's current
/// version means (`quiver registry impact`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrainTask {
    /// The model.
    pub model: String,
    /// Its version that reads the view.
    pub version: u64,
    /// Aliases serving that version.
    pub aliases: Vec<String>,
    /// The view versions (`view:NAME@N`) it was trained on.
    pub reads: Vec<String>,
    /// The view's applied version now, if it is applied.
    pub current_view_version: Option<u64>,
    /// Why the version's inputs are no longer served, if they are not.
    pub schema_problem: Option<String>,
    /// What to do, in words.
    pub task: String,
}

/// Parse `VIEW` or `VIEW@N`.
fn view_selector(view: &str) -> Result<(&str, Option<u64>)> {
    match view.split_once('@') {
        Some((n, v)) => {
            Ok((
                n,
                Some(v.parse::<u64>().map_err(|_| {
                    Error::InvalidRequest(format!("`{view}`: write VIEW or VIEW@N"))
                })?),
            ))
        }
        None => Ok((view, None)),
    }
}

impl FeatureStore {
    /// The model versions downstream of `view` (`VIEW` for every version of it, or
    /// `VIEW@N`) in the lineage graph: what to retrain when the view changes, with the
    /// aliases serving each and whether its inputs are still served.
    pub fn impact(&self, view: &str) -> Result<Vec<RetrainTask>> {
        self.impact_in(&self.models()?, view)
    }

    /// [`impact`](Self::impact) with a registry already open (`plan` asks for every
    /// changed view).
    pub(crate) fn impact_in(&self, reg: &ModelRegistry, view: &str) -> Result<Vec<RetrainTask>> {
        let lineage = reg.lineage();
        let (name, version) = view_selector(view)?;
        let roots: Vec<String> = match version {
            Some(v) => vec![NodeKind::FeatureView.id(name, Some(&v))],
            None => lineage
                .nodes_with_prefix(&NodeKind::FeatureView.versions_prefix(name))?
                .into_iter()
                .map(|n| n.id)
                .collect(),
        };
        let current = self.view(name, None).ok().map(|v| v.version);
        let mut g = Subgraph::default();
        for r in &roots {
            g.merge(lineage.downstream(r)?);
        }
        let view_prefix = NodeKind::FeatureView.versions_prefix(name);
        let mut tasks = Vec::new();
        for n in g
            .nodes
            .values()
            .filter(|n| n.kind == NodeKind::ModelVersion)
        {
            let Some((_, model, Some(ver))) = Node::split_id(&n.id) else {
                continue;
            };
            let Ok(ver) = ver.parse::<u64>() else {
                continue;
            };
            let aliases: Vec<String> = reg
                .aliases(model)?
                .into_iter()
                .filter(|(_, s)| s.version == ver)
                .map(|(a, _)| a)
                .collect();
            let reads: Vec<String> = g
                .edges
                .iter()
                .filter(|e| e.to == n.id && e.from.starts_with(&view_prefix))
                .map(|e| e.from.clone())
                .collect();
            let schema_problem = reg
                .version(model, ver)?
                .and_then(|mv| self.check_inputs_served(&mv.manifest.input).err())
                .map(|e| e.to_string());
            tasks.push(RetrainTask {
                model: model.to_owned(),
                version: ver,
                aliases,
                reads,
                current_view_version: current,
                schema_problem,
                task: format!(
                    "retrain {model} (version {ver}) on {name}@{}",
                    current.map_or("?".into(), |c| c.to_string())
                ),
            });
        }
        Ok(tasks)
    }

    /// The model registry of this repo: same database as the definitions, artifacts in
    /// `<repo>/.quiver/artifacts`.
    pub fn models(&self) -> Result<ModelRegistry> {
        Ok(self.registry().models(ArtifactStore::new(
            self.root().join(".quiver").join("artifacts"),
        ))?)
    }

    /// The change log of this repo's registry (definitions and models): what replicas
    /// follow (docs/replicas.md).
    pub fn replication(&self) -> Result<quiver_registry::Replication> {
        Ok(quiver_registry::Replication::new(
            self.registry(),
            &self.models()?,
        )?)
    }

    /// The input schema of a model taking `refs` in order, resolved against the applied
    /// views (or the pinned versions). Column names follow training sets: the feature
    /// name, or `VIEW__FEATURE` with `full_names`.
    pub fn input_schema(&self, refs: &[FeatureRef], full_names: bool) -> Result<InputSchema> {
        let mut features = Vec::new();
        for r in refs {
            let applied = self.view(&r.view, r.version)?;
            let d = &applied.definition;
            let chosen: Vec<&crate::FeatureField> = match &r.feature {
                Some(f) => vec![d.features.iter().find(|x| &x.name == f).ok_or_else(|| {
                    Error::NotFound {
                        what: format!(
                            "feature `{f}` in view {} (it has: {})",
                            applied.id(),
                            d.features
                                .iter()
                                .map(|x| x.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                })?],
                None => d.features.iter().collect(),
            };
            for f in chosen {
                features.push(InputFeature {
                    column: if full_names {
                        format!("{}__{}", d.name(), f.name)
                    } else {
                        f.name.clone()
                    },
                    view: d.name().to_owned(),
                    view_version: applied.version,
                    feature: f.name.clone(),
                    dtype: f.dtype.clone(),
                });
            }
        }
        Ok(InputSchema { features })
    }

    /// Point `alias` of `model` at version `to` (or remove it with `None`), after
    /// checking that the version's inputs are still served ([`Self::check_inputs_served`]).
    /// `expect`: move only if the alias now points there (`Some(None)`: only if unset).
    /// `by` and `reason` go to the alias history. A `quiver serve` on this store picks
    /// the move up at once (hot reload); the CLI and the `alias` action both call this.
    pub fn move_alias(
        &self,
        model: &str,
        alias: &str,
        to: Option<u64>,
        expect: Option<Option<u64>>,
        by: &str,
        reason: &str,
    ) -> Result<quiver_registry::AliasEvent> {
        let reg = self.models()?;
        if let Some(v) = to {
            let mv = reg.version(model, v)?.ok_or_else(|| Error::NotFound {
                what: format!("version {v} of model `{model}`"),
            })?;
            self.check_inputs_served(&mv.manifest.input).map_err(|e| {
                Error::InvalidRequest(format!("{model}@{v} cannot be promoted: {e}"))
            })?;
        }
        Ok(reg.move_alias(model, alias, to, expect, by, reason)?)
    }

    /// Check that a model's inputs are still served: every view is applied, every
    /// feature exists in its applied version with the type the model was trained on.
    /// A model that fails this cannot be promoted.
    pub fn check_inputs_served(&self, input: &InputSchema) -> Result<()> {
        let mut problems = Vec::new();
        for f in &input.features {
            match self.view(&f.view, None) {
                Err(_) => problems.push(format!("view `{}` is not applied", f.view)),
                Ok(applied) => match applied
                    .definition
                    .features
                    .iter()
                    .find(|x| x.name == f.feature)
                {
                    None => problems.push(format!(
                        "view {} has no feature `{}`",
                        applied.id(),
                        f.feature
                    )),
                    Some(x) if x.dtype != f.dtype => problems.push(format!(
                        "feature {}:{} is {} now; the model was trained on {} (from version {})",
                        applied.id(),
                        f.feature,
                        x.dtype,
                        f.dtype,
                        f.view_version
                    )),
                    Some(_) => {}
                },
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(quiver_registry::Error::SchemaMismatch(problems.join("; ")).into())
        }
    }

    /// Record where `set` came from in the lineage graph; returns its lineage id.
    pub fn record_training_set(&self, set: &TrainingSet) -> Result<String> {
        let (nodes, edges) = set.lineage.graph();
        self.registry().lineage()?.record(&nodes, &edges)?;
        Ok(NodeKind::TrainingSet.id(&set.lineage.id, None))
    }
}

/// What a training set file says about itself.
#[derive(Debug, Clone)]
pub struct TrainingData {
    /// Lineage id (`training_set:<id>`) from the file's metadata, if it has one.
    pub lineage_id: Option<String>,
    /// View versions behind it (`view@version`), from the same metadata.
    pub views: Vec<String>,
    /// Numeric columns by name (nulls as NaN).
    pub columns: HashMap<String, Vec<f64>>,
    /// Rows read.
    pub rows: usize,
}

/// Read `columns` (numeric) from a Parquet training set written by `quiver history`,
/// at most `limits.max_training_values` values (rows × columns: the default 50 M are
/// 400 MB of f64; sample larger sets first).
pub fn read_training_data(
    path: &Path,
    columns: &[String],
    limits: &crate::Limits,
) -> Result<TrainingData> {
    let max_values = limits.max_training_values;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let lineage = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == LINEAGE_METADATA_KEY))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
    let lineage_id = lineage.as_ref().and_then(|v| {
        v["id"]
            .as_str()
            .map(|id| NodeKind::TrainingSet.id(id, None))
    });
    let views = lineage
        .as_ref()
        .and_then(|v| v["views"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    Some(format!(
                        "{}@{}",
                        x["view"].as_str()?,
                        x["version"].as_u64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let schema = builder.schema().clone();
    let mut out: HashMap<String, Vec<f64>> = HashMap::new();
    for c in columns {
        let field = schema.field_with_name(c).map_err(|_| {
            Error::InvalidRequest(format!(
                "{} has no column `{c}` (it has: {})",
                path.display(),
                crate::plan::column_list(&schema)
            ))
        })?;
        if !field.data_type().is_numeric() && field.data_type() != &DataType::Boolean {
            return Err(Error::InvalidRequest(format!(
                "column `{c}` of {} is {}; models take numeric features",
                path.display(),
                field.data_type()
            )));
        }
        out.insert(c.clone(), Vec::new());
    }
    // Decode only the columns asked for.
    let mask = parquet::arrow::ProjectionMask::columns(
        builder.parquet_schema(),
        columns.iter().map(String::as_str),
    );
    let mut rows = 0;
    for batch in builder
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()?
    {
        let batch = batch?;
        rows += batch.num_rows();
        if rows.saturating_mul(out.len().max(1)) > max_values {
            return Err(Error::InvalidRequest(format!(
                "{} holds more than {max_values} values in the {} columns read; sample it for statistics",
                path.display(),
                out.len()
            )));
        }
        for (name, values) in out.iter_mut() {
            let col = batch.column_by_name(name).expect("checked above");
            values.extend(to_f64(col)?);
        }
    }
    Ok(TrainingData {
        lineage_id,
        views,
        columns: out,
        rows,
    })
}

/// A numeric or boolean column as f64, nulls as NaN.
pub fn to_f64(col: &dyn Array) -> Result<Vec<f64>> {
    let cast = arrow::compute::cast(col, &DataType::Float64)?;
    let a = cast.as_primitive::<arrow::datatypes::Float64Type>();
    Ok((0..a.len())
        .map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) })
        .collect())
}

/// Training statistics of every column in `data`, in `columns` order.
pub fn training_stats(data: &TrainingData, columns: &[String]) -> Vec<FeatureStats> {
    columns
        .iter()
        .filter_map(|c| data.columns.get(c).map(|v| FeatureStats::from_values(c, v)))
        .collect()
}
