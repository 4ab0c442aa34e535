//! What one point-in-time join computes: shared by the logical node and the exec.

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::common::{Result, plan_err};

use super::kernel::{AggPlan, Input, Mode, SourceLayout, is_integer, is_numeric};
use crate::spec::{AggFunction, EVENT_TS_SUFFIX, STATUS_SUFFIX};

/// One aggregate feature of a point-in-time join.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub struct AggSpec {
    /// Output column name.
    pub output: String,
    /// The function.
    pub function: AggFunction,
    /// Aggregated source column (`None` for `count` of rows).
    pub column: Option<String>,
    /// Window in microseconds (`None` = all history up to `t`).
    pub window_us: Option<i64>,
}

/// How values are computed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub enum PitMode {
    /// Values of the newest row as of `t`: `(output name, source column)`.
    AsOf(Vec<(String, String)>),
    /// Windowed aggregates.
    Aggregate(Vec<AggSpec>),
}

/// A point-in-time join of an entity table (keys + time) with a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, serde::Serialize, serde::Deserialize)]
pub struct PitSpec {
    /// View name: prefixes the status and event-time columns.
    pub view: String,
    /// Join key columns, same names in the entity table and the source.
    pub keys: Vec<String>,
    /// Time column of the entity table.
    pub entity_ts: String,
    /// Event-time column of the source.
    pub source_ts: String,
    /// Created-time column of the source (tie-breaker).
    pub source_created: Option<String>,
    /// Time to live in microseconds.
    pub ttl_us: Option<i64>,
    /// What to compute.
    pub mode: PitMode,
    /// As-of views: the source columns that order rows with equal event and created
    /// time (largest wins, nulls smallest), in the view's feature order: all of the
    /// view's columns, so the row picked never depends on which features a request
    /// names (online serving keeps the same order). Empty: the output columns.
    pub tie_columns: Vec<String>,
    /// Keys with no row as of `t` get status `FALLBACK` and 0 in every numeric
    /// feature, as online serving answers them (`fallback: zero`).
    pub fallback_zero: bool,
}

fn index_of(schema: &Schema, name: &str, side: &str) -> Result<usize> {
    match schema.index_of(name) {
        Ok(i) => Ok(i),
        Err(_) => plan_err!(
            "column `{name}` not found in the {side} (it has: {})",
            column_list(schema)
        ),
    }
}

/// The output type of `function` over a column of type `input`.
pub fn aggregate_type(function: AggFunction, input: Option<&DataType>) -> Result<DataType> {
    use AggFunction as F;
    Ok(match (function, input) {
        (F::Count | F::CountDistinct, _) => DataType::Int64,
        (F::Last, Some(dt)) => dt.clone(),
        (F::Sum | F::Min | F::Max, Some(dt)) if is_integer(dt) => DataType::Int64,
        (F::Sum | F::Min | F::Max | F::Avg | F::Stddev, Some(dt)) if is_numeric(dt) => {
            DataType::Float64
        }
        (f, Some(dt)) => {
            return plan_err!("`{f}` needs a numeric column, found {dt}");
        }
        (f, None) => return plan_err!("`{f}` needs a column"),
    })
}

impl PitSpec {
    /// Name of the status column.
    pub fn status_column(&self) -> String {
        format!("{}{STATUS_SUFFIX}", self.view)
    }

    /// Name of the value-time column.
    pub fn event_ts_column(&self) -> String {
        format!("{}{EVENT_TS_SUFFIX}", self.view)
    }

    /// Feature output columns and their types, given the source schema.
    pub fn feature_fields(&self, source: &Schema) -> Result<Vec<Field>> {
        let mut out = Vec::new();
        match &self.mode {
            PitMode::AsOf(cols) => {
                for (name, col) in cols {
                    let f = source.field(index_of(source, col, "source")?);
                    out.push(Field::new(name, f.data_type().clone(), true));
                }
            }
            PitMode::Aggregate(aggs) => {
                for a in aggs {
                    let input = match &a.column {
                        Some(c) => Some(source.field(index_of(source, c, "source")?).data_type()),
                        None => None,
                    };
                    out.push(Field::new(
                        &a.output,
                        aggregate_type(a.function, input)?,
                        true,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Every column the join adds: features, status, value time.
    pub fn added_fields(&self, source: &Schema) -> Result<Vec<Field>> {
        let mut out = self.feature_fields(source)?;
        out.push(Field::new(self.status_column(), DataType::Utf8, false));
        out.push(Field::new(
            self.event_ts_column(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ));
        Ok(out)
    }

    /// The kernel's plan for a source of this schema.
    pub(crate) fn kernel_plan(&self, source: &Schema) -> Result<(Mode, SourceLayout)> {
        let layout = SourceLayout {
            keys: self
                .keys
                .iter()
                .map(|k| index_of(source, k, "source"))
                .collect::<Result<_>>()?,
            ts: index_of(source, &self.source_ts, "source")?,
            created: self
                .source_created
                .as_ref()
                .map(|c| index_of(source, c, "source"))
                .transpose()?,
        };
        let mode = match &self.mode {
            PitMode::AsOf(cols) => {
                let out: Vec<usize> = cols
                    .iter()
                    .map(|(_, c)| index_of(source, c, "source"))
                    .collect::<Result<_>>()?;
                let tie = if self.tie_columns.is_empty() {
                    out.clone()
                } else {
                    self.tie_columns
                        .iter()
                        .map(|c| index_of(source, c, "source"))
                        .collect::<Result<_>>()?
                };
                Mode::AsOf(out, tie)
            }
            PitMode::Aggregate(aggs) => Mode::Aggregate(
                aggs.iter()
                    .map(|a| {
                        let input = match &a.column {
                            None => Input::Rows,
                            Some(c) => {
                                let idx = index_of(source, c, "source")?;
                                let dt = source.field(idx).data_type();
                                aggregate_type(a.function, Some(dt))?;
                                match a.function {
                                    AggFunction::Count | AggFunction::Last => Input::Validity(idx),
                                    AggFunction::CountDistinct => Input::Distinct(idx),
                                    _ if is_integer(dt) => Input::Int(idx),
                                    _ => Input::Float(idx),
                                }
                            }
                        };
                        Ok(AggPlan {
                            function: a.function,
                            input,
                            window_us: a.window_us,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        Ok((mode, layout))
    }
}

impl PitSpec {
    /// The mode as the plan printers show it (`as_of=[...]` or `aggs=[...]`).
    pub(crate) fn fmt_mode(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match &self.mode {
            PitMode::AsOf(cols) => write!(
                f,
                " as_of=[{}]",
                cols.iter()
                    .map(|(o, c)| if o == c {
                        o.clone()
                    } else {
                        format!("{o}:={c}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            PitMode::Aggregate(aggs) => {
                let parts: Vec<String> = aggs
                    .iter()
                    .map(|a| {
                        let w = a
                            .window_us
                            .and_then(crate::spec::Duration::from_micros)
                            .map(|d| format!(" over {d}"))
                            .unwrap_or_default();
                        format!(
                            "{}:={}({}){w}",
                            a.output,
                            a.function,
                            a.column.as_deref().unwrap_or("*")
                        )
                    })
                    .collect();
                write!(f, " aggregates=[{}]", parts.join(", "))
            }
        }
    }
}

/// A schema's column names, comma-separated, for errors that list what there is.
pub(crate) fn column_list(schema: &arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
