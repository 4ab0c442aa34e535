//! Definitions resolved against their data: what `apply` stores and training sets read.
//!
//! A [`ViewDefinition`] carries the view together with its entity, its sources and its
//! output schema, so one stored version describes everything that produced a feature
//! value: if a source's path or time column changes, the view's version changes too.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};

pub use crate::definition::{FeatureField, ViewDefinition};
use crate::delta::{self, OpenTable};
use crate::plan::{self, PitSpec};
use crate::spec::{
    Diagnostic, Diagnostics, Entity, FeatureRepo, FeatureView, Loc, Origin, Source, ViewBody,
    suggest,
};
use crate::udf::{LoadedModule, UdfHost, UdfRef, UdfRuntime};

/// A repo resolved against its Delta tables.
#[derive(Debug, Clone)]
pub struct ResolvedRepo {
    /// The parsed repo.
    pub repo: FeatureRepo,
    /// Every view, resolved.
    pub views: BTreeMap<String, ViewDefinition>,
    /// Every source's table, as opened.
    pub tables: BTreeMap<String, OpenTable>,
    /// Every UDF module the views call, validated and compiled, by hash.
    pub udf_modules: BTreeMap<String, Arc<LoadedModule>>,
}

fn diag(origin: &Origin, loc: Loc, message: impl Into<String>) -> Diagnostic {
    let loc = if loc == Loc::default() {
        origin.loc
    } else {
        loc
    };
    Diagnostic::new(&origin.file, loc, message)
}

fn columns(schema: &Schema) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

fn is_time(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    )
}

fn check_column(
    schema: &Schema,
    name: &str,
    origin: &Origin,
    loc: Loc,
    whose: &str,
    diags: &mut Diagnostics,
) -> Option<DataType> {
    match schema.field_with_name(name) {
        Ok(f) => Some(f.data_type().clone()),
        Err(_) => {
            let cols = columns(schema);
            diags.push(
                diag(origin, loc, format!("{whose} has no column `{name}`"))
                    .with_hint(suggest(name, &cols)),
            );
            None
        }
    }
}

/// Load, validate and compile the UDF modules `view` lists; their refs, or `None` after
/// reporting what is wrong.
fn resolve_udfs(
    view: &FeatureView,
    root: &std::path::Path,
    host: &UdfHost,
    modules: &mut BTreeMap<String, Arc<LoadedModule>>,
    diags: &mut Diagnostics,
) -> Option<Vec<UdfRef>> {
    if view.udfs.is_empty() {
        return Some(Vec::new());
    }
    let o = &view.origin;
    let before = diags.0.len();
    let mut refs: Vec<UdfRef> = Vec::new();
    use datafusion::execution::FunctionRegistry;
    let builtins = plan::session();
    for path in &view.udfs {
        let m = match crate::udf::load_file(host, root, &path.value) {
            Ok(m) => m,
            Err(e) => {
                diags.push(
                    diag(o, path.loc, format!("UDF module `{}`: {e}", path.value))
                        .with_hint("see docs/udf-abi.md for what a module exports and declares"),
                );
                continue;
            }
        };
        for f in &m.metadata.functions {
            if !f.deterministic {
                diags.push(diag(
                    o,
                    path.loc,
                    format!(
                        "UDF module `{}`: function `{}` is declared non-deterministic; a feature view calls only deterministic functions (the same value in training sets and online)",
                        path.value, f.name
                    ),
                ));
            }
            if let Some(other) = refs
                .iter()
                .find(|r| r.functions.iter().any(|g| g.name == f.name))
            {
                diags.push(diag(
                    o,
                    path.loc,
                    format!(
                        "UDF module `{}`: function `{}` is also declared by `{}`",
                        path.value, f.name, other.path
                    ),
                ));
            }
            if builtins.udf(&f.name).is_ok()
                || builtins.udaf(&f.name).is_ok()
                || builtins.udwf(&f.name).is_ok()
            {
                diags.push(diag(
                    o,
                    path.loc,
                    format!(
                        "UDF module `{}`: function `{}` has the name of a built-in SQL function",
                        path.value, f.name
                    ),
                ).with_hint("rename it in the module's metadata and export"));
            }
        }
        refs.push(UdfRef {
            path: path.value.clone(),
            sha256: m.sha256.clone(),
            functions: m.metadata.functions.clone(),
        });
        modules.insert(m.sha256.clone(), m);
    }
    (diags.0.len() == before).then_some(refs)
}

/// Resolve every source and view of `repo` against the data, with `host` compiling the
/// UDF modules views call. All problems are reported together.
pub async fn resolve(repo: &FeatureRepo, host: &Arc<UdfHost>) -> Result<ResolvedRepo, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut udf_modules = BTreeMap::new();
    let mut tables = BTreeMap::new();
    for source in repo.sources.values() {
        let o = &source.origin;
        let location = match delta::Location::of_source(&repo.root, source) {
            Ok(l) => l,
            Err(e) => {
                let msg = match e {
                    crate::Error::Delta { message, .. } => message,
                    other => other.to_string(),
                };
                diags.push(diag(o, source.delta.loc, msg));
                continue;
            }
        };
        let url = &location.url;
        let table = match delta::open(&location, None).await {
            Ok(t) => t,
            Err(e) => {
                let msg = match &e {
                    crate::Error::Delta { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                diags.push(
                    diag(
                        o,
                        source.delta.loc,
                        format!(
                            "source `{}`: cannot open Delta table `{}` ({})",
                            source.name,
                            source.delta,
                            delta::display_url(url)
                        ),
                    )
                    .with_hint(if location.is_local() {
                        format!("{msg}; paths are relative to the repo root")
                    } else {
                        format!("{msg}; credentials come from the environment and `storage_options` (docs/object-storage.md)")
                    }),
                );
                continue;
            }
        };
        let whose = format!("Delta table `{}` of source `{}`", source.delta, source.name);
        for (col, what) in [
            (Some(&source.timestamp), "timestamp"),
            (source.created_timestamp.as_ref(), "created_timestamp"),
        ] {
            let Some(col) = col else { continue };
            if let Some(dt) =
                check_column(&table.schema, &col.value, o, col.loc, &whose, &mut diags)
                && !is_time(&dt)
            {
                diags.push(
                    diag(
                        o,
                        col.loc,
                        format!(
                            "`{what}` column `{}` is {dt}, not a timestamp or date",
                            col.value
                        ),
                    )
                    .with_hint("store event times as Delta `timestamp` (or `date`) values"),
                );
            }
        }
        tables.insert(source.name.value.clone(), table);
    }

    let mut views = BTreeMap::new();
    for view in repo.views.values() {
        let entity = &repo.entities[&view.entity.value];
        let sources: Vec<&Source> = view
            .sources
            .iter()
            .map(|s| &repo.sources[&s.value])
            .collect();
        if sources.iter().any(|s| !tables.contains_key(&s.name.value)) {
            continue; // already reported at the source
        }
        let before = diags.0.len();
        let Some(udfs) = resolve_udfs(view, &repo.root, host, &mut udf_modules, &mut diags) else {
            continue;
        };
        let runtime = UdfRuntime::new(host.clone(), None)
            .with_pending(udfs.iter().map(|r| udf_modules[&r.sha256].clone()));
        let features = match &view.body {
            ViewBody::Sql(_) => {
                resolve_sql(
                    view,
                    entity,
                    &sources,
                    &tables,
                    (&runtime, &udfs),
                    &mut diags,
                )
                .await
            }
            _ => resolve_simple(
                view,
                entity,
                sources[0],
                &tables[&sources[0].name.value],
                &mut diags,
            ),
        };
        if let (Some(features), true) = (features, diags.0.len() == before) {
            views.insert(
                view.name.value.clone(),
                ViewDefinition {
                    view: view.clone(),
                    entity: entity.clone(),
                    sources: sources.into_iter().cloned().collect(),
                    features,
                    udfs,
                },
            );
        }
    }
    if diags.is_empty() {
        Ok(ResolvedRepo {
            repo: repo.clone(),
            views,
            tables,
            udf_modules,
        })
    } else {
        diags.sort();
        Err(diags)
    }
}

fn resolve_simple(
    view: &FeatureView,
    entity: &Entity,
    source: &Source,
    table: &OpenTable,
    diags: &mut Diagnostics,
) -> Option<Vec<FeatureField>> {
    let o = &view.origin;
    let schema = &table.schema;
    let whose = format!("source `{}`", source.name);
    let before = diags.0.len();
    for key in &entity.join_keys {
        if schema.field_with_name(&key.value).is_err() {
            diags.push(
                diag(
                    o,
                    view.sources[0].loc,
                    format!(
                        "{whose} has no column `{}`, a join key of entity `{}`",
                        key.value, entity.name
                    ),
                )
                .with_hint(suggest(&key.value, &columns(schema))),
            );
        }
    }
    match &view.body {
        ViewBody::Columns(cols) => {
            for c in cols {
                check_column(schema, &c.column.value, o, c.column.loc, &whose, diags);
            }
        }
        ViewBody::Aggregates(aggs) => {
            for a in aggs {
                let Some(c) = &a.column else { continue };
                if let Some(dt) = check_column(schema, &c.value, o, c.loc, &whose, diags)
                    && let Err(e) = plan::aggregate_type(a.function, Some(&dt))
                {
                    diags.push(
                            diag(o, c.loc, format!("feature `{}`: {}", a.name, e.strip_backtrace()))
                                .with_hint("aggregate a numeric column, or use `count`, `count_distinct` or `last`"),
                        );
                }
            }
        }
        ViewBody::Sql(_) => unreachable!("SQL views are resolved by resolve_sql"),
    }
    if diags.0.len() != before {
        return None;
    }
    let features: Vec<String> = view
        .declared_features()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let spec = plan::pit_spec(
        view,
        entity,
        &source.timestamp.value,
        source.created_timestamp.as_ref().map(|c| c.value.clone()),
        &features,
        false,
        "event_timestamp",
    );
    let fields = fields_of(&spec, schema, o, diags)?;
    check_online(view, entity, schema, &fields, diags);
    Some(fields)
}

/// Online views need integer or string keys and values the online store can hold.
fn check_online(
    view: &FeatureView,
    entity: &Entity,
    schema: &Schema,
    features: &[FeatureField],
    diags: &mut Diagnostics,
) {
    if !view.online {
        return;
    }
    let o = &view.origin;
    for k in &entity.join_keys {
        if let Ok(f) = schema.field_with_name(&k.value)
            && !crate::online::key_type_ok(f.data_type())
        {
            diags.push(
                    diag(o, view.name.loc, format!("view `{}` is served online but its join key `{}` is {}", view.name, k.value, f.data_type()))
                        .with_hint("online serving needs integer or string keys; cast the key in a SQL view, or set `online: false`"),
                );
        }
    }
    for f in features {
        let ok = <DataType as std::str::FromStr>::from_str(&f.dtype)
            .is_ok_and(|dt| crate::online::storable(&dt));
        if !ok {
            diags.push(
                diag(o, view.name.loc, format!("view `{}` is served online but feature `{}` is {}, which the online store does not hold", view.name, f.name, f.dtype))
                    .with_hint("cast it to a number or string in a SQL view, or set `online: false`"),
            );
        }
    }
}

fn fields_of(
    spec: &PitSpec,
    schema: &Schema,
    o: &Origin,
    diags: &mut Diagnostics,
) -> Option<Vec<FeatureField>> {
    match spec.feature_fields(schema) {
        Ok(fields) => Some(
            fields
                .iter()
                .map(|f| FeatureField {
                    name: f.name().clone(),
                    dtype: f.data_type().to_string(),
                })
                .collect(),
        ),
        Err(e) => {
            diags.push(diag(o, Loc::default(), e.strip_backtrace()));
            None
        }
    }
}

async fn resolve_sql(
    view: &FeatureView,
    entity: &Entity,
    sources: &[&Source],
    tables: &BTreeMap<String, OpenTable>,
    (runtime, udfs): (&UdfRuntime, &[UdfRef]),
    diags: &mut Diagnostics,
) -> Option<Vec<FeatureField>> {
    let ViewBody::Sql(body) = &view.body else {
        unreachable!()
    };
    let o = &view.origin;
    let ctx = plan::session();
    if let Err(e) = runtime.register(&ctx, udfs) {
        diags.push(diag(o, Loc::default(), e.to_string()));
        return None;
    }
    for s in sources {
        if let Err(e) = tables[&s.name.value].register(&ctx, &s.name.value).await {
            diags.push(diag(o, Loc::default(), e.to_string()));
            return None;
        }
    }
    let df = match plan::sql_frame(&ctx, &body.sql.value).await {
        Ok(df) => df,
        Err(e) => {
            diags.push(
                diag(o, body.sql.loc, format!("SQL of view `{}`: {e}", view.name)).with_hint(
                    format!(
                        "the query may read only the view's sources: {}",
                        sources
                            .iter()
                            .map(|s| s.name.value.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            );
            return None;
        }
    };
    let schema = df.schema().as_arrow().clone();
    let whose = format!("the output of view `{}`'s SQL", view.name);
    let ts_name = body
        .timestamp
        .as_ref()
        .map(|t| t.value.clone())
        .unwrap_or_else(|| sources[0].timestamp.value.clone());
    let ts_loc = body
        .timestamp
        .as_ref()
        .map(|t| t.loc)
        .unwrap_or(body.sql.loc);
    let before = diags.0.len();
    for key in &entity.join_keys {
        check_column(&schema, &key.value, o, body.sql.loc, &whose, diags);
    }
    if let Some(dt) = check_column(&schema, &ts_name, o, ts_loc, &whose, diags)
        && !is_time(&dt)
    {
        diags.push(diag(
            o,
            ts_loc,
            format!("event-time column `{ts_name}` of {whose} is {dt}, not a timestamp"),
        ));
    }
    if let Some(features) = &body.features {
        for f in features {
            check_column(&schema, &f.value, o, f.loc, &whose, diags);
        }
    } else if plan::sql_feature_columns(&schema, &entity.keys(), &ts_name).is_empty() {
        diags.push(
            diag(
                o,
                body.sql.loc,
                format!("{whose} has no columns besides the join keys and `{ts_name}`"),
            )
            .with_hint("select at least one value column"),
        );
    }
    if diags.0.len() != before {
        return None;
    }
    let features: Vec<String> = match &body.features {
        Some(f) => f.iter().map(|f| f.value.clone()).collect(),
        None => plan::sql_feature_columns(&schema, &entity.keys(), &ts_name),
    };
    let spec = plan::pit_spec(
        view,
        entity,
        &ts_name,
        None,
        &features,
        false,
        "event_timestamp",
    );
    let fields = fields_of(&spec, &schema, o, diags)?;
    check_online(view, entity, &schema, &fields, diags);
    Some(fields)
}

impl Entity {
    /// Join key column names.
    pub fn keys(&self) -> Vec<String> {
        self.join_keys.iter().map(|k| k.value.clone()).collect()
    }
}
