//! Scoring a batch of entity keys against a model's deployment: the online features
//! of every version it serves, a route per key (canary by entity hash), one model call
//! per served version for all the keys routed to it, and the audit rows.
//!
//! The Flight service authorises (the caller must be allowed to read every view the
//! served versions take features from, see [`deployment_views`]) and then calls
//! [`score_batch`]; the same function serves any other front end.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::ArrayFormatter;
use quiver_registry::{Deployment, ModelServer};

use crate::audit::AuditRecord;
use crate::online::{OnlineFeatures, StatusCounts};
use crate::{Error, Result};

/// How to score one batch.
#[derive(Debug, Clone)]
pub(crate) struct ScoreOptions<'a> {
    /// Who asks (recorded in the audit rows).
    pub(crate) tenant: &'a str,
    /// Add per-feature contributions.
    pub(crate) explain: bool,
    /// Build audit rows.
    pub(crate) audit: bool,
    /// Request time (µs since the epoch): online values are evaluated at it.
    pub(crate) now_us: i64,
}

/// A scored batch.
#[derive(Debug)]
pub(crate) struct ScoredBatch {
    /// The keys, then `score`, `model_version`, `model_alias`, `request_id` (and
    /// `contributions` when explained).
    pub(crate) batch: RecordBatch,
    /// One row per scored key, when auditing.
    pub(crate) audit: Vec<AuditRecord>,
    /// The statuses of the online values read, per view.
    pub(crate) lookups: Vec<(String, StatusCounts)>,
}

/// The views whose features the versions of `d` take, sorted and distinct.
pub(crate) fn deployment_views(d: &Deployment) -> Vec<String> {
    let mut views: Vec<String> = [&d.champion, &d.challenger]
        .into_iter()
        .flatten()
        .flat_map(|v| {
            v.loaded
                .version
                .manifest
                .input
                .features
                .iter()
                .map(|f| f.view.clone())
        })
        .collect();
    views.sort();
    views.dedup();
    views
}

/// Schema of a scored batch for key columns `keys`.
pub(crate) fn scored_schema(keys: &Schema, explain: bool) -> Schema {
    let mut fields: Vec<Field> = keys.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("score", DataType::Float64, false));
    fields.push(Field::new("model_version", DataType::UInt64, false));
    fields.push(Field::new("model_alias", DataType::Utf8, false));
    fields.push(Field::new("request_id", DataType::Utf8, false));
    if explain {
        fields.push(Field::new("contributions", DataType::Utf8, true));
    }
    Schema::new(fields)
}

/// Score every key of `keys` with the version of `d` it routes to.
pub(crate) fn score_batch(
    online: &OnlineFeatures,
    server: &ModelServer,
    d: &Deployment,
    keys: &RecordBatch,
    opts: &ScoreOptions<'_>,
) -> Result<ScoredBatch> {
    let model = server.model();
    let served: Vec<_> = [&d.champion, &d.challenger].into_iter().flatten().collect();
    let mut lookups = Vec::new();
    let mut fetched: HashMap<String, RecordBatch> = HashMap::new();
    for view in deployment_views(d) {
        let (batch, counts) = online.get(&view, None, keys, opts.now_us)?;
        lookups.push((view.clone(), counts));
        fetched.insert(view, batch);
    }

    // Each input column once as f64; per served version the indices of its inputs in
    // model order.
    let mut columns: Vec<Vec<f64>> = Vec::new();
    let mut column_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut layout: Vec<Vec<usize>> = Vec::with_capacity(served.len());
    for v in &served {
        let mut idx = Vec::new();
        for f in &v.loaded.version.manifest.input.features {
            let key = (f.view.as_str(), f.feature.as_str());
            let i = match column_of.get(&key) {
                Some(i) => *i,
                None => {
                    let col = fetched[&f.view].column_by_name(&f.feature).ok_or_else(|| {
                        Error::Registry(quiver_registry::Error::SchemaMismatch(format!(
                            "{model}@{} takes `{}` from view `{}`, which the online store does not serve",
                            v.version(),
                            f.feature,
                            f.view
                        )))
                    })?;
                    columns.push(crate::model_inputs::to_f64(col.as_ref())?);
                    column_of.insert(key, columns.len() - 1);
                    columns.len() - 1
                }
            };
            idx.push(i);
        }
        layout.push(idx);
    }

    // Route every key; the route key is the key values as text, joined (stable across
    // servers and releases).
    let formatters = keys
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidRequest(format!("entity keys: {e}")))?;
    let n = keys.num_rows();
    let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); served.len()];
    let mut route_key = String::new();
    for row in 0..n {
        route_key.clear();
        for (i, f) in formatters.iter().enumerate() {
            if i > 0 {
                route_key.push('\u{1f}');
            }
            route_key.push_str(&f.value(row).to_string());
        }
        let to = server
            .route(d, route_key.as_bytes())
            .ok_or_else(|| Error::Registry(server.no_deployment()))?;
        let k = served
            .iter()
            .position(|s| Arc::ptr_eq(s, to))
            .expect("route picks a served version");
        rows_of[k].push(row);
    }

    // One model call per served version.
    // Per row: its score and the index of the version that gave it.
    let mut results: Vec<Option<(quiver_registry::Scored, usize)>> = (0..n).map(|_| None).collect();
    let mut x = Vec::new();
    for (k, rows) in rows_of.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        x.clear();
        for &row in rows {
            x.extend(layout[k].iter().map(|&i| columns[i][row]));
        }
        let scored =
            server.score_rows_on(d, served[k], opts.tenant, &x, rows.len(), opts.explain)?;
        for (s, &row) in scored.into_iter().zip(rows) {
            results[row] = Some((s, k));
        }
    }

    let prefix = crate::audit::new_request_prefix(opts.now_us);
    let key_names: Vec<&String> = keys
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let key_numeric: Vec<bool> = keys
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.data_type().is_integer())
        .collect();
    let mut scores = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut aliases = Vec::with_capacity(n);
    let mut request_ids = Vec::with_capacity(n);
    let mut explained = Vec::with_capacity(n);
    let mut audit = Vec::with_capacity(if opts.audit { n } else { 0 });
    for (row, result) in results.into_iter().enumerate() {
        let (s, k) = result.expect("every row routed and scored");
        let names = served[k].loaded.model.features();
        let contributions = s.contributions.as_ref().map(|c| {
            serde_json::json!({
                "base": c.base, "residual": c.residual, "method": c.method,
                "features": names.iter().zip(&c.values)
                    .map(|(n, v)| (n.clone(), serde_json::json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
            })
            .to_string()
        });
        let request_id = format!("{prefix}-{row}");
        if opts.audit {
            // From the columns, not the route key: a string key may hold the route
            // key's separator.
            let entity: serde_json::Map<String, serde_json::Value> = formatters
                .iter()
                .zip(&key_names)
                .zip(&key_numeric)
                .map(|((f, name), numeric)| {
                    let v = f.value(row).to_string();
                    let value = match v.parse::<i64>() {
                        Ok(i) if *numeric => serde_json::json!(i),
                        _ => serde_json::json!(v),
                    };
                    ((*name).clone(), value)
                })
                .collect();
            let inputs: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(layout[k].iter().map(|&i| columns[i][row]))
                .map(|(n, v)| (n.clone(), serde_json::json!(v)))
                .collect();
            audit.push(AuditRecord {
                request_id: request_id.clone(),
                time_us: opts.now_us,
                tenant: opts.tenant.to_owned(),
                model: model.to_owned(),
                model_version: s.version,
                model_alias: s.alias.to_string(),
                entity: serde_json::Value::Object(entity).to_string(),
                inputs: serde_json::Value::Object(inputs).to_string(),
                score: s.score,
                contributions: contributions.clone(),
            });
        }
        scores.push(s.score);
        versions.push(s.version);
        aliases.push(s.alias);
        request_ids.push(request_id);
        explained.push(contributions);
    }
    let mut out: Vec<ArrayRef> = keys.columns().to_vec();
    out.push(Arc::new(Float64Array::from(scores)));
    out.push(Arc::new(UInt64Array::from(versions)));
    out.push(Arc::new(StringArray::from(aliases)));
    out.push(Arc::new(StringArray::from(request_ids)));
    if opts.explain {
        out.push(Arc::new(StringArray::from(explained)));
    }
    let batch = RecordBatch::try_new(
        Arc::new(scored_schema(keys.schema_ref(), opts.explain)),
        out,
    )?;
    Ok(ScoredBatch {
        batch,
        audit,
        lookups,
    })
}
