//! What the point-in-time kernel reads from its inputs: entity keys as dense group
//! ids ([`KeyIndex`]), event and request times as UTC microseconds with the rounding
//! that keeps a row from being seen before it happened, and which types aggregate as
//! numbers.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, exec_err};
use hashbrown::HashMap;

/// Group id of rows that match no entity key.
pub(crate) const NO_GROUP: u32 = u32::MAX;

/// Where the key, time and value columns are in source batches.
#[derive(Debug, Clone)]
pub(crate) struct SourceLayout {
    pub(crate) keys: Vec<usize>,
    pub(crate) ts: usize,
    pub(crate) created: Option<usize>,
}

/// The first step of both point-in-time paths for one source batch: the entity group
/// of each row into `groups` ([`NO_GROUP`] for keys not asked for), and the rows' event
/// and created times in µs, rounded up ([`micros`]).
pub(crate) fn route(
    index: &KeyIndex,
    layout: &SourceLayout,
    batch: &RecordBatch,
    groups: &mut Vec<u32>,
) -> Result<(TimestampMicrosecondArray, Option<TimestampMicrosecondArray>)> {
    let keys: Vec<ArrayRef> = layout
        .keys
        .iter()
        .map(|&i| batch.column(i).clone())
        .collect();
    index.lookup(&keys, groups)?;
    let ts = micros(batch.column(layout.ts), "the event-time column")?;
    let created = match layout.created {
        Some(c) => Some(micros(batch.column(c), "the created-time column")?),
        None => None,
    };
    Ok((ts, created))
}

/// `array` cast to `to`, an error (not a null) where a value does not fit.
pub(crate) fn strict_cast(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    Ok(cast_with_options(array, to, &opts)?)
}

/// Source rows' event or created times as UTC microseconds, a nanosecond time rounded
/// **up**: a row is never seen before it happened. With entity times rounded down
/// ([`query_micros`]), a row at `r` is visible to a request at `t` exactly when
/// `ceil_µs(r) <= floor_µs(t)`, offline and online alike (docs/point-in-time.md).
pub(crate) fn micros(array: &ArrayRef, what: &str) -> Result<TimestampMicrosecondArray> {
    micros_rounded(array, what, true)
}

/// Entity (request) times as UTC microseconds, a nanosecond time rounded **down**: a
/// request never sees past its own time.
pub(crate) fn query_micros(array: &ArrayRef, what: &str) -> Result<TimestampMicrosecondArray> {
    micros_rounded(array, what, false)
}

fn micros_rounded(array: &ArrayRef, what: &str, up: bool) -> Result<TimestampMicrosecondArray> {
    if let DataType::Timestamp(TimeUnit::Nanosecond, tz) = array.data_type() {
        let ns = array.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let us: TimestampMicrosecondArray = ns.unary(|v: i64| {
            let q = v.div_euclid(1000);
            if up && v.rem_euclid(1000) != 0 {
                q + 1
            } else {
                q
            }
        });
        return Ok(us.with_timezone_opt(tz.clone()));
    }
    let to = match array.data_type() {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Date32 | DataType::Date64 => DataType::Timestamp(TimeUnit::Microsecond, None),
        other => {
            return exec_err!("{what} must be a timestamp or date column, found {other}");
        }
    };
    Ok(strict_cast(array, &to)?
        .as_primitive::<TimestampMicrosecondType>()
        .clone())
}

/// Integer types that widen to Int64 without loss (every one but UInt64).
fn is_small_int(dt: &DataType) -> bool {
    dt.is_integer() && *dt != DataType::UInt64
}

/// True for the integer types whose sums and extrema stay integers.
pub(crate) fn is_integer(dt: &DataType) -> bool {
    dt.is_integer()
}

/// True for the types `sum`, `avg`, `min`, `max` and `stddev` accept.
pub(crate) fn is_numeric(dt: &DataType) -> bool {
    is_integer(dt)
        || matches!(
            dt,
            DataType::Float16
                | DataType::Float32
                | DataType::Float64
                | DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..)
        )
}

/// Maps entity keys to dense group ids.
pub(crate) enum KeyIndex {
    /// One integer key column: hashed as i64.
    Int(HashMap<i64, u32>),
    /// Anything else: hashed in Arrow's row format.
    Rows(RowConverter, HashMap<Box<[u8]>, u32>),
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyIndex({} groups)", self.len())
    }
}

impl KeyIndex {
    /// Build from the entity key columns; returns the group of each entity row
    /// ([`NO_GROUP`] for rows with a null key).
    pub(crate) fn build(keys: &[ArrayRef]) -> Result<(Self, Vec<u32>)> {
        let n = keys.first().map_or(0, |k| k.len());
        let mut groups = Vec::with_capacity(n);
        if keys.len() == 1 && is_small_int(keys[0].data_type()) {
            let col = strict_cast(&keys[0], &DataType::Int64)?;
            let col = col.as_primitive::<Int64Type>();
            let mut map = HashMap::with_capacity(n);
            for i in 0..n {
                if col.is_null(i) {
                    groups.push(NO_GROUP);
                    continue;
                }
                let next = map.len() as u32;
                groups.push(*map.entry(col.value(i)).or_insert(next));
            }
            return Ok((KeyIndex::Int(map), groups));
        }
        let conv = RowConverter::new(
            keys.iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect(),
        )?;
        let rows = conv.convert_columns(keys)?;
        let mut map: HashMap<Box<[u8]>, u32> = HashMap::with_capacity(n);
        for i in 0..n {
            if keys.iter().any(|k| k.is_null(i)) {
                groups.push(NO_GROUP);
                continue;
            }
            let row = rows.row(i);
            let bytes = row.as_ref();
            let next = map.len() as u32;
            let g = match map.get(bytes) {
                Some(g) => *g,
                None => {
                    map.insert(bytes.into(), next);
                    next
                }
            };
            groups.push(g);
        }
        Ok((KeyIndex::Rows(conv, map), groups))
    }

    /// Number of distinct keys.
    pub(crate) fn len(&self) -> usize {
        match self {
            KeyIndex::Int(m) => m.len(),
            KeyIndex::Rows(_, m) => m.len(),
        }
    }

    /// Group of each source row ([`NO_GROUP`] when its key was not asked for or is null).
    pub(crate) fn lookup(&self, keys: &[ArrayRef], out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        let n = keys.first().map_or(0, |k| k.len());
        match self {
            KeyIndex::Int(map) => {
                let col = strict_cast(&keys[0], &DataType::Int64)?;
                let col = col.as_primitive::<Int64Type>();
                let values = col.values();
                if col.null_count() == 0 {
                    out.extend(values.iter().map(|v| *map.get(v).unwrap_or(&NO_GROUP)));
                } else {
                    out.extend((0..n).map(|i| {
                        if col.is_null(i) {
                            NO_GROUP
                        } else {
                            *map.get(&values[i]).unwrap_or(&NO_GROUP)
                        }
                    }));
                }
            }
            KeyIndex::Rows(conv, map) => {
                let rows = conv.convert_columns(keys)?;
                let any_nulls = keys.iter().any(|k| k.null_count() > 0);
                out.extend((0..n).map(|i| {
                    if any_nulls && keys.iter().any(|k| k.is_null(i)) {
                        NO_GROUP
                    } else {
                        *map.get(rows.row(i).as_ref()).unwrap_or(&NO_GROUP)
                    }
                }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, StringArray, TimestampNanosecondArray};

    use super::*;

    #[test]
    fn nanosecond_rows_round_up_and_requests_round_down() {
        let ns: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![1_000, 1_001, -1]));
        let rows = micros(&ns, "ts").unwrap();
        assert_eq!(rows.values().to_vec(), vec![1, 2, 0]);
        let asks = query_micros(&ns, "t").unwrap();
        assert_eq!(asks.values().to_vec(), vec![1, 1, -1]);
        let bad: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
        let e = micros(&bad, "ts").unwrap_err().to_string();
        assert!(e.contains("ts must be a timestamp or date column"), "{e}");
    }

    #[test]
    fn keys_map_to_dense_groups_and_nulls_to_none() {
        let keys: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(vec![
            Some(7),
            None,
            Some(3),
            Some(7),
        ]))];
        let (index, groups) = KeyIndex::build(&keys).unwrap();
        assert_eq!(groups, vec![0, NO_GROUP, 1, 0]);
        assert_eq!(index.len(), 2);
        let source: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(vec![Some(3), Some(9), None]))];
        let mut out = Vec::new();
        index.lookup(&source, &mut out).unwrap();
        assert_eq!(out, vec![1, NO_GROUP, NO_GROUP]);

        // Composite keys go through the row format, with the same rules.
        let keys: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])),
            Arc::new(Int32Array::from(vec![1, 2, 1])),
        ];
        let (index, groups) = KeyIndex::build(&keys).unwrap();
        assert_eq!(groups, vec![0, 1, NO_GROUP]);
        index.lookup(&keys, &mut out).unwrap();
        assert_eq!(out, vec![0, 1, NO_GROUP]);
    }

    #[test]
    fn integer_and_numeric_types() {
        assert!(is_integer(&DataType::UInt64) && !is_integer(&DataType::Float64));
        assert!(is_numeric(&DataType::Decimal128(10, 2)) && !is_numeric(&DataType::Utf8));
    }
}
