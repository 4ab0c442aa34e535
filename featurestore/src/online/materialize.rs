//! Materialization: Delta tables into the online store, incrementally.
//!
//! # Guarantees
//! - After a run, a view's store holds exactly the source rows of the recorded Delta
//!   versions whose event time is `<= until` (folded into records), and nothing else.
//! - Each view commits its records and its watermark atomically (see `store.rs`): a run
//!   killed at any point leaves the old state or the new one. Running again with the
//!   same tables and `until` changes nothing.
//!
//! # How a run chooses its work
//! - First run, a new view version, a SQL view, `until` moved back, or files removed
//!   from a source since the watermark (delete, update, OPTIMIZE): a full rebuild into
//!   a new generation.
//! - Otherwise incremental: rows of files added since the watermark version with event
//!   time `<= until_old`, plus rows of all files with event time in
//!   `(until_old, until]` (Parquet statistics skip the files that cannot hold any).
//!   Only the keys those rows touch are read and rewritten.
//!
//! # Assumptions
//! - Sources are append-only between runs, or the run notices removed files and
//!   rebuilds. SQL views are recomputed in full on every run.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::Schema;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{cast, lit};
use serde::Serialize;

use super::codec::{self, Value, encode_key, value_at};
use super::record::{Record, Row, ServedAgg, ServingKind, ServingPlan, Status};
use super::store::{TableMark, Watermark};
use crate::definition::{FeatureField, ViewDefinition};
use crate::delta;
use crate::plan::{self, ScanProgress, ident, kernel};
use crate::spec::{Fallback, ViewBody};
use crate::store::{AppliedView, FeatureStore};
use crate::{Error, Result};

/// What one view's run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewMaterialization {
    /// The view.
    pub view: String,
    /// Its applied version.
    pub version: u64,
    /// `full`, `incremental`, `up_to_date` or `skipped`.
    pub mode: &'static str,
    /// Why this mode.
    pub reason: String,
    /// Source rows read.
    pub rows_read: u64,
    /// Entity keys written.
    pub keys_written: u64,
    /// Entity keys stored after the run.
    pub keys_total: u64,
    /// Event-time bound (RFC 3339).
    pub until: String,
    /// Source tables at the versions read.
    pub tables: Vec<TableMark>,
    /// Wall time of the run.
    pub seconds: f64,
}

/// What a materialization did, view by view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaterializeReport {
    /// One entry per view considered.
    pub views: Vec<ViewMaterialization>,
}

/// Builds a materialization; await it to run. See [`FeatureStore::materialize`].
#[must_use = "a builder does nothing until awaited"]
pub struct Materialize<'a> {
    store: &'a FeatureStore,
    views: Option<Vec<String>>,
    until: Option<i64>,
    full: bool,
    progress: Option<Arc<ScanProgress>>,
    engine: crate::offline::Engine,
}

impl<'a> Materialize<'a> {
    /// A materialization of `store`'s applied views.
    pub(crate) fn new(store: &'a FeatureStore) -> Self {
        Self {
            store,
            views: None,
            until: None,
            full: false,
            progress: None,
            engine: crate::offline::Engine::Local,
        }
    }

    /// Read and compute the views' rows on `engine` (default: this process); the
    /// online records are built and stored here. A Ballista engine scans the sources
    /// (only the new files of an incremental run) and runs SQL views on its executors.
    pub fn with_engine(mut self, engine: crate::offline::Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Only these views (default: every applied view with `online: true`).
    pub fn with_views(mut self, views: Vec<String>) -> Self {
        self.views = Some(views);
        self
    }

    /// Materialize rows with event time up to `until_us` (default: now; a time in the
    /// future is refused).
    pub fn with_until(mut self, until_us: i64) -> Self {
        self.until = Some(until_us);
        self
    }

    /// Rebuild every view in full.
    pub fn with_full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }

    /// Count source rows read into `progress`.
    pub fn with_progress(mut self, progress: Arc<ScanProgress>) -> Self {
        self.progress = Some(progress);
        self
    }

    #[tracing::instrument(name = "materialize", skip_all)]
    async fn run(self) -> Result<MaterializeReport> {
        let now = chrono::Utc::now().timestamp_micros();
        // A watermark in the future would serve rows dated after the moment of the
        // request (data loaded early, or with wrong clocks) as current values, and the
        // next run would not revisit them: refused.
        if let Some(u) = self.until.filter(|u| *u > now) {
            return Err(Error::InvalidRequest(format!(
                "until {} is in the future (now {}); materialize up to now or an earlier time",
                crate::cli::format_time(u),
                crate::cli::format_time(now)
            )));
        }
        let until = self.until.unwrap_or(now);
        let views: Vec<AppliedView> = match &self.views {
            Some(names) => names
                .iter()
                .map(|n| self.store.view(n, None))
                .collect::<Result<_>>()?,
            None => self.store.views()?,
        };
        let online = self.store.online()?;
        let mut report = MaterializeReport { views: Vec::new() };
        for applied in &views {
            let run = self.view(applied, until).await;
            online.refresh();
            report.views.push(run?);
        }
        Ok(report)
    }

    #[tracing::instrument(name = "materialize_view", skip_all, fields(view = %applied.definition.name(), version = applied.version, until))]
    async fn view(&self, applied: &AppliedView, until: i64) -> Result<ViewMaterialization> {
        let started = Instant::now();
        let def = &applied.definition;
        let name = def.name().to_owned();
        let mut out = ViewMaterialization {
            view: name.clone(),
            version: applied.version,
            mode: "skipped",
            reason: String::new(),
            rows_read: 0,
            keys_written: 0,
            keys_total: 0,
            until: crate::cli::format_time(until),
            tables: Vec::new(),
            seconds: 0.0,
        };
        if !def.view.online {
            out.reason = "online: false".into();
            return Ok(out);
        }
        let online = self.store.online()?;
        let store = online.store().clone();
        let wm = store.watermark(&name)?;
        let mut tables = Vec::with_capacity(def.sources.len());
        for s in &def.sources {
            let location = delta::Location::of_source(self.store.root(), s)?;
            tables.push(delta::open(&location, None).await?);
        }
        out.tables = def
            .sources
            .iter()
            .zip(&tables)
            .map(|(s, t)| TableMark {
                source: s.name.value.clone(),
                location: s.delta.value.clone(),
                version: t.version,
            })
            .collect();

        // Decide between full and incremental.
        let is_sql = matches!(def.view.body, ViewBody::Sql(_));
        let mut incremental: Option<(Watermark, Vec<String>)> = None;
        out.reason = match &wm {
            None => "first run".into(),
            Some(_) if self.full => "full rebuild asked for".into(),
            Some(w) if w.view_hash != applied.hash => {
                format!("view changed (v{} -> v{})", w.view_version, applied.version)
            }
            Some(_) if is_sql => "SQL views are recomputed in full".into(),
            Some(w) if until < w.until_us => {
                format!(
                    "until moved back from {}",
                    crate::cli::format_time(w.until_us)
                )
            }
            Some(w)
                if w.tables.len() != out.tables.len()
                    || w.tables
                        .iter()
                        .zip(&out.tables)
                        .any(|(a, b)| a.location != b.location) =>
            {
                "sources changed".into()
            }
            Some(w) => {
                let old_mark = &w.tables[0];
                let table = &tables[0];
                if old_mark.version == table.version && until == w.until_us {
                    out.mode = "up_to_date";
                    out.reason = format!("Delta version {} and until unchanged", table.version);
                    out.keys_total = w.keys;
                    out.seconds = started.elapsed().as_secs_f64();
                    return Ok(out);
                }
                // The version the store holds may be unreadable now: its log cleaned up
                // after a checkpoint (Delta's log retention). Then only a full rebuild
                // can tell what changed.
                match delta::open(&table.location, Some(old_mark.version)).await {
                    Err(e) => format!(
                        "Delta version {} is no longer readable ({e}); full rebuild",
                        old_mark.version
                    ),
                    Ok(old) => match table.changes_since(&old)? {
                        delta::FileChanges::Rewritten(n) => format!(
                            "{n} file(s) removed or rewritten since Delta version {} (delete, update, optimize, or a deletion vector)",
                            old_mark.version
                        ),
                        delta::FileChanges::SchemaChanged => format!(
                            "the table's schema changed since Delta version {}",
                            old_mark.version
                        ),
                        delta::FileChanges::Added(added) => {
                            let reason = format!(
                                "{} new file(s) since Delta version {}",
                                added.len(),
                                old_mark.version
                            );
                            incremental = Some((w.clone(), added));
                            reason
                        }
                    },
                }
            }
        };

        let t_collect = Instant::now();
        let ctx = self
            .engine
            .session(datafusion::prelude::SessionConfig::new())
            .await?;
        // On another engine each table travels as its URL, version and data files.
        let remote = self.engine != crate::offline::Engine::Local;
        let register = |t: &delta::OpenTable,
                        s: &crate::spec::Source,
                        name: &str,
                        files: Option<Vec<String>>| {
            let ctx = ctx.clone();
            let (t, s, name) = (t.clone(), s.clone(), name.to_owned());
            async move {
                if remote {
                    let options = s
                        .storage_options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect();
                    let mut table =
                        plan::portable::PortableDeltaTable::new(&t, &s.name.value, options)?;
                    if let Some(f) = files {
                        table = table.with_files(f);
                    }
                    ctx.register_table(name.as_str(), Arc::new(table))?;
                    Ok::<_, Error>(())
                } else {
                    match files {
                        Some(f) => t.register_files(&ctx, &name, f).await,
                        None => t.register(&ctx, &name).await,
                    }
                }
            }
        };
        let (batches, schema) = match (&incremental, &def.view.body) {
            (_, ViewBody::Sql(body)) => {
                for (s, t) in def.sources.iter().zip(&tables) {
                    register(t, s, &s.name.value, None).await?;
                }
                self.store.udf_runtime().register(&ctx, &def.udfs)?;
                let df = plan::sql_frame(&ctx, &body.sql.value).await?;
                self.collect(df, def, until, None).await?
            }
            (None, _) => {
                register(&tables[0], &def.sources[0], "src", None).await?;
                self.collect(ctx.table("src").await?, def, until, None)
                    .await?
            }
            (Some((w, added)), _) => {
                // Rows of new files up to the old bound, and of all files in (old, new].
                let mut batches = Vec::new();
                let mut schema = None;
                if !added.is_empty() {
                    register(&tables[0], &def.sources[0], "src_new", Some(added.clone())).await?;
                    let (b, s) = self
                        .collect(ctx.table("src_new").await?, def, w.until_us, None)
                        .await?;
                    batches.extend(b);
                    schema = Some(s);
                }
                if until > w.until_us || schema.is_none() {
                    register(&tables[0], &def.sources[0], "src", None).await?;
                    let (b, s) = self
                        .collect(ctx.table("src").await?, def, until, Some(w.until_us))
                        .await?;
                    batches.extend(b);
                    schema = Some(s);
                }
                (batches, schema.expect("one scan ran"))
            }
        };
        let (plan, key_fields, features) = serving_plan(def, &schema)?;
        tracing::debug!(phase = "collect", elapsed = ?t_collect.elapsed(), "materialization timing");
        let t_fold = Instant::now();
        let horizon = plan.horizon(until);

        // Fold rows into per-key records: keys are split by hash across threads, each
        // folding its share of every batch into its own map (the maps are disjoint).
        let keys = def.keys();
        let ts_col = def.event_time_column().to_owned();
        let created_col = def.created_column();
        let rows_read: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let parts = if rows_read < 100_000 {
            1
        } else {
            super::worker_threads()
        };
        let cols = FoldColumns {
            keys: &keys,
            ts: &ts_col,
            created: created_col.as_deref(),
        };
        let folded: Vec<Result<HashMap<Vec<u8>, Record>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..parts)
                .map(|part| {
                    let (batches, plan, cols) = (&batches, &plan, &cols);
                    let progress = if part == 0 {
                        self.progress.clone()
                    } else {
                        None
                    };
                    scope.spawn(move || {
                        fold_part(
                            batches,
                            plan,
                            cols,
                            horizon,
                            part,
                            parts,
                            progress.as_deref(),
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("fold thread panicked"))
                .collect()
        });
        let mut records: HashMap<Vec<u8>, Record> = HashMap::new();
        for part in folded {
            let part = part?;
            if records.is_empty() {
                records = part;
            } else {
                records.extend(part);
            }
        }
        drop(batches);
        tracing::debug!(phase = "fold", elapsed = ?t_fold.elapsed(), "materialization timing");
        let t_write = Instant::now();
        out.rows_read = rows_read;

        let mut new_wm = Watermark {
            view: name.clone(),
            view_version: applied.version,
            view_hash: applied.hash.clone(),
            generation: wm.as_ref().map_or(1, |w| w.generation + 1),
            tables: out.tables.clone(),
            until_us: until,
            materialized_at: chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            keys: 0,
            rows_read,
            key_fields,
            features,
            fallback: None,
            plan: plan.clone(),
            // The store sets the layout of a new generation; an incremental run keeps it.
            layout: wm.as_ref().map_or(0, |w| w.layout),
        };
        match incremental {
            None => {
                for r in records.values_mut() {
                    r.finish(horizon);
                }
                new_wm.keys = records.len() as u64;
                new_wm.fallback = fallback(
                    def.view.fallback,
                    &plan,
                    &new_wm.features,
                    records.values(),
                    until,
                )?;
                tracing::debug!(phase = "finish+fallback", elapsed = ?t_write.elapsed(), "materialization timing");
                // sled builds its tree far faster from keys in order.
                let mut sorted: Vec<(&Vec<u8>, &Record)> = records.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let encoded = encode_parallel(&sorted);
                tracing::debug!(phase = "encoded", elapsed = ?t_write.elapsed(), "materialization timing");
                store.replace(&new_wm, encoded)?;
                tracing::debug!(phase = "write", elapsed = ?t_write.elapsed(), "materialization timing");
                out.mode = "full";
                out.keys_written = records.len() as u64;
            }
            Some((old_wm, _)) => {
                new_wm.generation = old_wm.generation;
                let keys: Vec<Vec<u8>> = records.keys().cloned().collect();
                let existing = store.get(&old_wm, &keys)?;
                let mut added = 0u64;
                let mut updated: HashMap<Vec<u8>, Record> = HashMap::with_capacity(keys.len());
                for (key, old) in keys.into_iter().zip(existing) {
                    let delta_rec = records.remove(&key).expect("key from records");
                    let rec = match old {
                        Some(bytes) => {
                            let mut r = Record::decode(&bytes, &old_wm.plan)?;
                            r.absorb(delta_rec, horizon);
                            r
                        }
                        None => {
                            added += 1;
                            let mut r = delta_rec;
                            r.finish(horizon);
                            r
                        }
                    };
                    updated.insert(key, rec);
                }
                new_wm.keys = old_wm.keys + added;
                if !def.view.fallback.is_none() {
                    // Every key counts: the stored ones, with the updated ones replaced.
                    let mut all: Vec<Record> = Vec::with_capacity(new_wm.keys as usize);
                    for item in store.scan(&old_wm)? {
                        let (k, v) = item?;
                        if !updated.contains_key(&k) {
                            all.push(Record::decode(&v, &old_wm.plan)?);
                        }
                    }
                    new_wm.fallback = fallback(
                        def.view.fallback,
                        &plan,
                        &new_wm.features,
                        all.iter().chain(updated.values()),
                        until,
                    )?;
                }
                out.keys_written = updated.len() as u64;
                let writes = updated
                    .into_iter()
                    .map(|(k, r)| (k, Some(r.encode())))
                    .collect();
                store.commit(&new_wm, writes)?;
                out.mode = "incremental";
            }
        }
        out.keys_total = new_wm.keys;
        out.seconds = started.elapsed().as_secs_f64();
        tracing::info!(view = %name, mode = out.mode, rows = rows_read, keys = out.keys_written, "materialized");
        Ok(out)
    }

    /// Keys, event time, created time and inputs of `df` with event time in
    /// `(after, until]`.
    async fn collect(
        &self,
        df: DataFrame,
        def: &ViewDefinition,
        until: i64,
        after: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, Schema)> {
        let ts = def.event_time_column();
        let ts_type = df
            .schema()
            .field_with_unqualified_name(ts)?
            .data_type()
            .clone();
        let bound = |t: i64| {
            cast(
                lit(ScalarValue::TimestampMicrosecond(
                    Some(t),
                    Some("UTC".into()),
                )),
                ts_type.clone(),
            )
        };
        let mut df = df.filter(ident(ts).lt_eq(bound(until)))?;
        if let Some(after) = after {
            df = df.filter(ident(ts).gt(bound(after)))?;
        }
        let mut cols: Vec<String> = def.keys();
        cols.push(ts.to_owned());
        cols.extend(def.created_column());
        cols.extend(input_columns(def, df.schema().as_arrow()));
        let mut seen = Vec::new();
        cols.retain(|c| {
            let new = !seen.contains(c);
            seen.push(c.clone());
            new
        });
        let df = df.select(cols.iter().map(|c| ident(c)).collect::<Vec<_>>())?;
        let schema = df.schema().as_arrow().clone();
        Ok((df.collect().await?, schema))
    }
}

/// Source columns a view's records store.
fn input_columns(def: &ViewDefinition, schema: &Schema) -> Vec<String> {
    match &def.view.body {
        ViewBody::Columns(cols) => cols.iter().map(|c| c.column.value.clone()).collect(),
        ViewBody::Sql(_) => def
            .features
            .iter()
            .map(|f| f.name.clone())
            .filter(|f| schema.field_with_name(f).is_ok())
            .collect(),
        ViewBody::Aggregates(aggs) => {
            let mut out: Vec<String> = Vec::new();
            for a in aggs {
                if let Some(c) = &a.column
                    && !out.contains(&c.value)
                {
                    out.push(c.value.clone());
                }
            }
            out
        }
    }
}

/// How `def` is served, given the schema of the rows materialization reads.
fn serving_plan(
    def: &ViewDefinition,
    schema: &Schema,
) -> Result<(ServingPlan, Vec<FeatureField>, Vec<FeatureField>)> {
    let inputs = input_columns(def, schema);
    let field_type = |c: &str| {
        schema
            .field_with_name(c)
            .map(|f| f.data_type().clone())
            .map_err(|_| {
                Error::InvalidRequest(format!(
                    "view `{}`: column `{c}` is missing from its source",
                    def.name()
                ))
            })
    };
    let mut key_fields = Vec::new();
    for k in def.keys() {
        let dt = field_type(&k)?;
        if !codec::key_type_ok(&dt) {
            return Err(Error::InvalidRequest(format!(
                "view `{}`: join key `{k}` is {dt}; online serving needs integer or string keys (or set `online: false`)",
                def.name()
            )));
        }
        key_fields.push(FeatureField {
            name: k,
            dtype: dt.to_string(),
        });
    }
    let (kind, features) = match &def.view.body {
        ViewBody::Aggregates(aggs) => {
            let mut served = Vec::new();
            let mut features = Vec::new();
            for a in aggs {
                let (input, dt) = match &a.column {
                    Some(c) => (
                        Some(
                            inputs
                                .iter()
                                .position(|i| i == &c.value)
                                .expect("input listed"),
                        ),
                        Some(field_type(&c.value)?),
                    ),
                    None => (None, None),
                };
                let out = plan::aggregate_type(a.function, dt.as_ref())?;
                served.push(ServedAgg {
                    function: a.function,
                    input,
                    window_us: a.window.as_ref().map(|w| w.value.as_micros()),
                    integer: dt.as_ref().is_some_and(kernel::is_integer),
                    decimal_scale: match dt {
                        Some(arrow::datatypes::DataType::Decimal128(_, s)) => Some(s),
                        _ => None,
                    },
                });
                features.push(FeatureField {
                    name: a.name.value.clone(),
                    dtype: out.to_string(),
                });
            }
            (ServingKind::Aggregate(served), features)
        }
        _ => {
            let mut features = Vec::new();
            let names: Vec<String> = match &def.view.body {
                ViewBody::Columns(cols) => cols.iter().map(|c| c.name.value.clone()).collect(),
                _ => inputs.clone(),
            };
            for (name, col) in names.iter().zip(&inputs) {
                features.push(FeatureField {
                    name: name.clone(),
                    dtype: field_type(col)?.to_string(),
                });
            }
            (ServingKind::AsOf, features)
        }
    };
    for (f, c) in features.iter().zip(&inputs) {
        let dt = field_type(c)?;
        if !codec::storable(&dt) {
            return Err(Error::InvalidRequest(format!(
                "view `{}`: feature `{}` is {dt}, which online serving does not store; set `online: false`",
                def.name(),
                f.name
            )));
        }
    }
    Ok((
        ServingPlan {
            kind,
            inputs,
            ttl_us: def.view.ttl.as_ref().map(|t| t.value.as_micros()),
        },
        key_fields,
        features,
    ))
}

/// Fallback values over every record evaluated at `until`.
fn fallback<'r>(
    how: Fallback,
    plan: &ServingPlan,
    features: &[FeatureField],
    records: impl Iterator<Item = &'r Record>,
    until: i64,
) -> Result<Option<Vec<Option<f64>>>> {
    if how == Fallback::None {
        return Ok(None);
    }
    let numeric: Vec<bool> = features
        .iter()
        .map(|f| {
            <arrow::datatypes::DataType as std::str::FromStr>::from_str(&f.dtype)
                .is_ok_and(|dt| kernel::is_numeric(&dt))
        })
        .collect();
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); features.len()];
    for r in records {
        let (status, _, values) = r.evaluate(plan, until)?;
        if status != Status::Present {
            continue;
        }
        for (i, v) in values.iter().enumerate() {
            match v {
                Value::Null => {}
                v => match v.as_f64() {
                    Some(x) if x.is_finite() => columns[i].push(x),
                    _ => {}
                },
            }
        }
    }
    Ok(Some(
        columns
            .into_iter()
            .zip(numeric)
            .map(|(mut xs, num): (Vec<f64>, bool)| {
                if !num {
                    return None;
                }
                match how {
                    Fallback::Zero => Some(0.0),
                    _ if xs.is_empty() => None,
                    Fallback::Mean => Some(xs.iter().sum::<f64>() / xs.len() as f64),
                    _ => {
                        xs.sort_by(f64::total_cmp);
                        let m = xs.len() / 2;
                        Some(if xs.len() % 2 == 1 {
                            xs[m]
                        } else {
                            (xs[m - 1] + xs[m]) / 2.0
                        })
                    }
                }
            })
            .collect(),
    ))
}

impl<'a> IntoFuture for Materialize<'a> {
    type Output = Result<MaterializeReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Encode records on every core, keeping their order.
fn encode_parallel(records: &[(&Vec<u8>, &Record)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let threads = super::worker_threads();
    let chunk = records.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(k, r)| ((*k).clone(), r.encode()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("encode thread panicked"))
            .collect()
    })
}

/// Columns the fold reads from each batch.
struct FoldColumns<'a> {
    keys: &'a [String],
    ts: &'a str,
    created: Option<&'a str>,
}

/// Fold the rows of `batches` whose key hashes to `part` (of `parts`) into records.
fn fold_part(
    batches: &[RecordBatch],
    plan: &ServingPlan,
    cols: &FoldColumns<'_>,
    horizon: i64,
    part: usize,
    parts: usize,
    progress: Option<&ScanProgress>,
) -> Result<HashMap<Vec<u8>, Record>> {
    let mut records: HashMap<Vec<u8>, Record> = HashMap::new();
    let mut key_buf = Vec::new();
    for batch in batches {
        let key_cols: Vec<ArrayRef> = cols
            .keys
            .iter()
            .map(|k| batch.column_by_name(k).cloned().expect("selected"))
            .collect();
        let ts = kernel::micros(
            batch.column_by_name(cols.ts).expect("selected"),
            "the event-time column",
        )?;
        let created = match cols.created {
            Some(c) => Some(kernel::micros(
                batch.column_by_name(c).expect("selected"),
                "the created-time column",
            )?),
            None => None,
        };
        let inputs: Vec<ArrayRef> = plan
            .inputs
            .iter()
            .map(|c| batch.column_by_name(c).cloned().expect("selected"))
            .collect();
        for row in 0..batch.num_rows() {
            if ts.is_null(row) || !encode_key(&key_cols, row, &mut key_buf)? {
                continue;
            }
            if parts > 1 && partition_of(&key_buf, parts) != part {
                continue;
            }
            let created = match &created {
                Some(c) if c.is_valid(row) => c.value(row),
                Some(_) => i64::MIN,
                None => 0,
            };
            let rec = match records.get_mut(key_buf.as_slice()) {
                Some(r) => r,
                None => records
                    .entry(key_buf.clone())
                    .or_insert_with(|| Record::empty(plan)),
            };
            let t = ts.value(row);
            if rec.needs_values(plan, t, created, horizon) {
                let values = inputs
                    .iter()
                    .map(|c| value_at(c, row))
                    .collect::<Result<Vec<_>>>()?;
                rec.add_row(
                    plan,
                    Row {
                        ts: t,
                        created,
                        values,
                    },
                    horizon,
                );
            } else {
                rec.touch(t);
            }
        }
        if let Some(p) = progress {
            p.add(batch.num_rows() as u64);
        }
    }
    Ok(records)
}

/// Which fold thread owns an encoded key (the stable entity hash canary routing uses).
fn partition_of(key: &[u8], parts: usize) -> usize {
    (quiver_registry::entity_hash(key) % parts as u64) as usize
}
