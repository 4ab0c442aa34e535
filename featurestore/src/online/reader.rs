//! [`OnlineFeatures`]: entity keys in, feature values as of the request time out.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::codec::{self, Value};
use super::record::{Record, Status};
use super::store::{OnlineStore, Watermark};
use crate::spec::{EVENT_TS_SUFFIX, STATUS_SUFFIX, suggest};
use crate::{Error, Result};

/// A materialized view, ready to serve.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) watermark: Watermark,
    key_types: Vec<DataType>,
    feature_types: Vec<DataType>,
    fallback: Option<Vec<Value>>,
}

fn parse_type(view: &str, name: &str, dtype: &str) -> Result<DataType> {
    DataType::from_str(dtype).map_err(|e| Error::Corrupt {
        what: format!("watermark of {view}"),
        message: format!("type `{dtype}` of `{name}`: {e}"),
    })
}

impl Served {
    fn new(watermark: Watermark) -> Result<Self> {
        let v = &watermark.view;
        let key_types = watermark
            .key_fields
            .iter()
            .map(|f| parse_type(v, &f.name, &f.dtype))
            .collect::<Result<Vec<_>>>()?;
        let feature_types = watermark
            .features
            .iter()
            .map(|f| parse_type(v, &f.name, &f.dtype))
            .collect::<Result<Vec<_>>>()?;
        let fallback = watermark.fallback.as_ref().map(|fb| {
            fb.iter()
                .zip(&feature_types)
                .map(|(x, dt)| match (x, dt) {
                    (
                        Some(x),
                        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64,
                    ) => Value::Int(x.round() as i64),
                    (
                        Some(x),
                        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64,
                    ) => Value::UInt(x.round().max(0.0) as u64),
                    // Zero, as the training set's cast of 0 gives it.
                    (Some(x), DataType::Decimal128(..)) if *x == 0.0 => Value::Decimal(0),
                    (Some(x), _) => Value::Float(*x),
                    (None, _) => Value::Null,
                })
                .collect()
        });
        Ok(Self {
            watermark,
            key_types,
            feature_types,
            fallback,
        })
    }
}

/// Counts of statuses in one answer, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Values computed from stored rows.
    pub present: u64,
    /// Unknown keys without fallback.
    pub not_found: u64,
    /// Keys whose newest row is older than the ttl.
    pub expired: u64,
    /// Unknown keys served the fallback.
    pub fallback: u64,
}

/// Online feature lookups over an [`OnlineStore`].
///
/// The result has the key columns, the features, `VIEW__status` and
/// `VIEW__event_timestamp`: the same layout as a training set row.
#[derive(Debug)]
pub struct OnlineFeatures {
    store: Arc<dyn OnlineStore>,
    views: RwLock<HashMap<String, Arc<Served>>>,
}

impl OnlineFeatures {
    /// Serve from `store`.
    pub fn new(store: Arc<dyn OnlineStore>) -> Self {
        Self {
            store,
            views: RwLock::new(HashMap::new()),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn OnlineStore> {
        &self.store
    }

    pub(crate) fn served(&self, view: &str) -> Result<Arc<Served>> {
        if let Some(s) = self.views.read().expect("online cache lock").get(view) {
            return Ok(s.clone());
        }
        let Some(wm) = self.store.watermark(view)? else {
            let names = self.store.views()?;
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            return Err(Error::NotFound {
                what: if names.iter().any(|n| n == view) {
                    format!("view `{view}` is not materialized")
                } else {
                    format!(
                        "view `{view}` is not materialized; run `quiver materialize` (materialized views: {})",
                        suggest(view, &refs)
                    )
                },
            });
        };
        let served = Arc::new(Served::new(wm)?);
        self.views
            .write()
            .expect("online cache lock")
            .insert(view.to_owned(), served.clone());
        Ok(served)
    }

    /// Forget cached watermarks (after a materialization in this process).
    pub fn refresh(&self) {
        self.views.write().expect("online cache lock").clear();
    }

    /// The watermark of a materialized view.
    pub fn watermark(&self, view: &str) -> Result<Watermark> {
        Ok(self.served(view)?.watermark.clone())
    }

    /// Indices of `features` (all when `None`) among the view's served features.
    fn select(served: &Served, features: Option<&[String]>) -> Result<Vec<usize>> {
        let names: Vec<&str> = served
            .watermark
            .features
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        match features {
            None => Ok((0..names.len()).collect()),
            Some(fs) => fs
                .iter()
                .map(|f| {
                    names
                        .iter()
                        .position(|n| n == f)
                        .ok_or_else(|| Error::NotFound {
                            what: format!(
                                "view `{}` has no online feature `{f}`; {}",
                                served.watermark.view,
                                suggest(f, &names)
                            ),
                        })
                })
                .collect(),
        }
    }

    /// Output schema of a lookup.
    pub fn schema(&self, view: &str, features: Option<&[String]>) -> Result<SchemaRef> {
        let served = self.served(view)?;
        let idx = Self::select(&served, features)?;
        Ok(Arc::new(output_schema(&served, &idx)))
    }

    /// Values of `features` (all when `None`) of `view` for the keys in `keys` (a batch
    /// holding the view's join key columns) as of `now_us` (UTC microseconds).
    pub fn get(
        &self,
        view: &str,
        features: Option<&[String]>,
        keys: &RecordBatch,
        now_us: i64,
    ) -> Result<(RecordBatch, StatusCounts)> {
        let served = self.served(view)?;
        let idx = Self::select(&served, features)?;
        let wm = &served.watermark;
        let n = keys.num_rows();
        let mut key_cols: Vec<ArrayRef> = Vec::with_capacity(wm.key_fields.len());
        for (f, dt) in wm.key_fields.iter().zip(&served.key_types) {
            let col = keys.column_by_name(&f.name).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the request has no key column `{}` (view `{}` is keyed by {})",
                    f.name,
                    wm.view,
                    wm.key_fields
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let opts = CastOptions {
                safe: false,
                ..Default::default()
            };
            let cast = cast_with_options(col, dt, &opts).map_err(|e| {
                Error::InvalidRequest(format!(
                    "key column `{}` must hold {} values, got {}: {e}",
                    f.name,
                    dt,
                    col.data_type()
                ))
            })?;
            key_cols.push(cast);
        }
        let mut encoded = Vec::with_capacity(n);
        let mut valid = Vec::with_capacity(n);
        let mut buf = Vec::new();
        for row in 0..n {
            let ok = codec::encode_key(&key_cols, row, &mut buf)?;
            valid.push(ok);
            encoded.push(if ok { buf.clone() } else { Vec::new() });
        }
        let records = self.store.get(wm, &encoded)?;
        let mut counts = StatusCounts::default();
        let mut statuses = Vec::with_capacity(n);
        let mut times: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut columns: Vec<Vec<Value>> = vec![Vec::with_capacity(n); idx.len()];
        for (rec, ok) in records.iter().zip(&valid) {
            let found = match (rec, ok) {
                (Some(bytes), true) => {
                    Some(Record::decode(bytes, &wm.plan)?.evaluate(&wm.plan, now_us)?)
                }
                _ => None,
            };
            let (status, ts, mut values) = match found {
                Some(x) => x,
                None => match &served.fallback {
                    Some(fb) => (Status::Fallback, None, fb.clone()),
                    None => (
                        Status::NotFound,
                        None,
                        vec![Value::Null; served.feature_types.len()],
                    ),
                },
            };
            match status {
                Status::Present => counts.present += 1,
                Status::NotFound => counts.not_found += 1,
                Status::Expired => counts.expired += 1,
                Status::Fallback => counts.fallback += 1,
            }
            statuses.push(status.as_str());
            times.push(ts);
            for (out, &i) in columns.iter_mut().zip(&idx) {
                out.push(std::mem::replace(&mut values[i], Value::Null));
            }
        }
        let schema = Arc::new(output_schema(&served, &idx));
        let mut arrays: Vec<ArrayRef> = key_cols;
        for (vals, &i) in columns.iter().zip(&idx) {
            let refs: Vec<&Value> = vals.iter().collect();
            arrays.push(codec::to_array(&served.feature_types[i], &refs)?);
        }
        arrays.push(Arc::new(StringArray::from(statuses)));
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from(times).with_timezone("UTC"),
        ));
        Ok((RecordBatch::try_new(schema, arrays)?, counts))
    }
}

fn output_schema(served: &Served, idx: &[usize]) -> Schema {
    let wm = &served.watermark;
    let mut fields: Vec<Field> = wm
        .key_fields
        .iter()
        .zip(&served.key_types)
        .map(|(f, dt)| Field::new(&f.name, dt.clone(), true))
        .collect();
    for &i in idx {
        fields.push(Field::new(
            &wm.features[i].name,
            served.feature_types[i].clone(),
            true,
        ));
    }
    fields.push(Field::new(
        format!("{}{STATUS_SUFFIX}", wm.view),
        DataType::Utf8,
        false,
    ));
    fields.push(Field::new(
        format!("{}{EVENT_TS_SUFFIX}", wm.view),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    Schema::new(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_type_names_parse_back() {
        for dt in [
            DataType::Int64,
            DataType::UInt32,
            DataType::Float64,
            DataType::Boolean,
            DataType::Utf8,
            DataType::Utf8View,
            DataType::LargeUtf8,
            DataType::Date32,
            DataType::Decimal128(12, 2),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
        ] {
            assert_eq!(DataType::from_str(&dt.to_string()).unwrap(), dt, "{dt}");
        }
    }
}
