//! Stable, compact, bounds-checked encodings for the online store: entity keys and
//! single values. Arrow's row format is not used here because it is not promised to
//! stay the same across Arrow versions, and stored records outlive a binary.

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};

use crate::{Error, Result};

/// One value as stored online.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Decimal(i128),
}

impl Value {
    /// Arrow's order for the type: nulls first, floats by total order, strings by bytes.
    pub(crate) fn cmp_same_type(&self, other: &Value) -> Ordering {
        use Value::*;
        match (self, other) {
            (Null, Null) => Ordering::Equal,
            (Null, _) => Ordering::Less,
            (_, Null) => Ordering::Greater,
            (Int(a), Int(b)) => a.cmp(b),
            (UInt(a), UInt(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Bool(a), Bool(b)) => a.cmp(b),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Decimal(a), Decimal(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::UInt(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
}

/// True when values of `dt` can be stored online.
pub(crate) fn storable(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
            | DataType::Decimal128(..)
    )
}

/// Read row `i` of `a` as a [`Value`].
pub(crate) fn value_at(a: &ArrayRef, i: usize) -> Result<Value> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match a.data_type() {
        DataType::Int8 => Value::Int(a.as_primitive::<Int8Type>().value(i) as i64),
        DataType::Int16 => Value::Int(a.as_primitive::<Int16Type>().value(i) as i64),
        DataType::Int32 => Value::Int(a.as_primitive::<Int32Type>().value(i) as i64),
        DataType::Int64 => Value::Int(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Value::UInt(a.as_primitive::<UInt8Type>().value(i) as u64),
        DataType::UInt16 => Value::UInt(a.as_primitive::<UInt16Type>().value(i) as u64),
        DataType::UInt32 => Value::UInt(a.as_primitive::<UInt32Type>().value(i) as u64),
        DataType::UInt64 => Value::UInt(a.as_primitive::<UInt64Type>().value(i)),
        DataType::Float16 => Value::Float(a.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => Value::Float(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => Value::Float(a.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Utf8 => Value::Bytes(a.as_string::<i32>().value(i).as_bytes().to_vec()),
        DataType::LargeUtf8 => Value::Bytes(a.as_string::<i64>().value(i).as_bytes().to_vec()),
        DataType::Utf8View => Value::Bytes(a.as_string_view().value(i).as_bytes().to_vec()),
        DataType::Binary => Value::Bytes(a.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Value::Bytes(a.as_binary::<i64>().value(i).to_vec()),
        DataType::BinaryView => Value::Bytes(a.as_binary_view().value(i).to_vec()),
        DataType::Date32 => Value::Int(a.as_primitive::<Date32Type>().value(i) as i64),
        DataType::Date64 => Value::Int(a.as_primitive::<Date64Type>().value(i)),
        DataType::Timestamp(TimeUnit::Second, _) => {
            Value::Int(a.as_primitive::<TimestampSecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Value::Int(a.as_primitive::<TimestampMillisecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Value::Int(a.as_primitive::<TimestampMicrosecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            Value::Int(a.as_primitive::<TimestampNanosecondType>().value(i))
        }
        DataType::Decimal128(..) => Value::Decimal(a.as_primitive::<Decimal128Type>().value(i)),
        other => {
            return Err(Error::InvalidRequest(format!(
                "values of type {other} cannot be stored online"
            )));
        }
    })
}

/// Build an array of `dt` from values (which must match the type).
pub(crate) fn to_array(dt: &DataType, values: &[&Value]) -> Result<ArrayRef> {
    use arrow::array::*;
    use std::sync::Arc;
    let int = |v: &Value| match v {
        Value::Int(x) => Some(*x),
        Value::UInt(x) => Some(*x as i64),
        _ => None,
    };
    let bytes = |v: &Value| match v {
        Value::Bytes(b) => Some(b.clone()),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    Ok(match dt {
        DataType::Int8 => Arc::new(Int8Array::from_iter(
            values.iter().map(|v| int(v).map(|x| x as i8)),
        )),
        DataType::Int16 => Arc::new(Int16Array::from_iter(
            values.iter().map(|v| int(v).map(|x| x as i16)),
        )),
        DataType::Int32 => Arc::new(Int32Array::from_iter(
            values.iter().map(|v| int(v).map(|x| x as i32)),
        )),
        DataType::Int64 => Arc::new(Int64Array::from_iter(values.iter().map(|v| int(v)))),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let u = UInt64Array::from_iter(values.iter().map(|v| match v {
                Value::UInt(x) => Some(*x),
                Value::Int(x) => Some(*x as u64),
                _ => None,
            }));
            arrow::compute::cast(&u, dt)?
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let f = Float64Array::from_iter(values.iter().map(|v| v.as_f64()));
            arrow::compute::cast(&f, dt)?
        }
        DataType::Boolean => Arc::new(BooleanArray::from_iter(values.iter().map(|v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        }))),
        DataType::Utf8 => Arc::new(StringArray::from_iter(values.iter().map(|v| text(v)))),
        DataType::LargeUtf8 => {
            Arc::new(LargeStringArray::from_iter(values.iter().map(|v| text(v))))
        }
        DataType::Utf8View => Arc::new(StringViewArray::from_iter(values.iter().map(|v| text(v)))),
        DataType::Binary => Arc::new(BinaryArray::from_iter(values.iter().map(|v| bytes(v)))),
        DataType::LargeBinary => {
            Arc::new(LargeBinaryArray::from_iter(values.iter().map(|v| bytes(v))))
        }
        DataType::BinaryView => {
            Arc::new(BinaryViewArray::from_iter(values.iter().map(|v| bytes(v))))
        }
        DataType::Date32 => Arc::new(Date32Array::from_iter(
            values.iter().map(|v| int(v).map(|x| x as i32)),
        )),
        DataType::Date64 => Arc::new(Date64Array::from_iter(values.iter().map(|v| int(v)))),
        DataType::Timestamp(unit, tz) => {
            let raw = Int64Array::from_iter(values.iter().map(|v| int(v)));
            let arr: ArrayRef = match unit {
                TimeUnit::Second => Arc::new(
                    TimestampSecondArray::from(raw.values().to_vec()).with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Millisecond => Arc::new(
                    TimestampMillisecondArray::from(raw.values().to_vec())
                        .with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Microsecond => Arc::new(
                    TimestampMicrosecondArray::from(raw.values().to_vec())
                        .with_timezone_opt(tz.clone()),
                ),
                TimeUnit::Nanosecond => Arc::new(
                    TimestampNanosecondArray::from(raw.values().to_vec())
                        .with_timezone_opt(tz.clone()),
                ),
            };
            // Restore nulls.
            let data = arr
                .to_data()
                .into_builder()
                .nulls(raw.nulls().cloned())
                .build()?;
            make_array(data)
        }
        DataType::Decimal128(p, s) => Arc::new(
            Decimal128Array::from_iter(values.iter().map(|v| match v {
                Value::Decimal(d) => Some(*d),
                _ => None,
            }))
            .with_precision_and_scale(*p, *s)?,
        ),
        other => {
            return Err(Error::InvalidRequest(format!(
                "values of type {other} cannot be served online"
            )));
        }
    })
}

/// Appends values and integers to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.u8(0),
            Value::Int(x) => {
                self.u8(1);
                self.i64(*x)
            }
            Value::UInt(x) => {
                self.u8(2);
                self.buf.extend_from_slice(&x.to_le_bytes())
            }
            Value::Float(x) => {
                self.u8(3);
                self.f64(*x)
            }
            Value::Bool(b) => {
                self.u8(4);
                self.u8(*b as u8)
            }
            Value::Bytes(b) => {
                self.u8(5);
                self.bytes(b)
            }
            Value::Decimal(d) => {
                self.u8(6);
                self.buf.extend_from_slice(&d.to_le_bytes())
            }
        }
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt {
        what: "online record".into(),
        message: format!("truncated or malformed ({what})"),
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| corrupt(what))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, "u32")?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8, "i64")?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(
            self.take(8, "f64")?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n, "bytes")
    }
    pub(crate) fn value(&mut self) -> Result<Value> {
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Int(self.i64()?),
            2 => Value::UInt(u64::from_le_bytes(
                self.take(8, "u64")?.try_into().expect("8 bytes"),
            )),
            3 => Value::Float(self.f64()?),
            4 => Value::Bool(self.u8()? != 0),
            5 => Value::Bytes(self.bytes()?.to_vec()),
            6 => Value::Decimal(i128::from_le_bytes(
                self.take(16, "i128")?.try_into().expect("16 bytes"),
            )),
            t => return Err(corrupt(&format!("value tag {t}"))),
        })
    }
    pub(crate) fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
    /// Bytes left to read (a bound for capacities taken from counts in the input).
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Entity key bytes: per key column a tag and the value; integers big-endian so keys
/// sort numerically, strings length-prefixed. `None` for a row with a null key.
pub(crate) fn encode_key(cols: &[ArrayRef], row: usize, out: &mut Vec<u8>) -> Result<bool> {
    out.clear();
    for c in cols {
        match value_at(c, row)? {
            Value::Null => return Ok(false),
            Value::Int(v) => {
                out.push(1);
                out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
            }
            Value::UInt(v) => {
                out.push(1);
                let v = i64::try_from(v).map_err(|_| {
                    Error::InvalidRequest(format!("key {v} does not fit a 64-bit signed integer"))
                })?;
                out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
            }
            Value::Bytes(b) => {
                out.push(2);
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(&b);
            }
            other => {
                return Err(Error::InvalidRequest(format!(
                    "join keys must be integers or strings, found {other:?}"
                )));
            }
        }
    }
    Ok(true)
}

/// True when values of `dt` can be join keys online.
pub(crate) fn key_type_ok(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn values_round_trip_and_truncation_is_an_error() {
        let vals = [
            Value::Null,
            Value::Int(-3),
            Value::UInt(7),
            Value::Float(1.5),
            Value::Bool(true),
            Value::Bytes(b"ab".to_vec()),
            Value::Decimal(-12345),
        ];
        let mut w = Writer::default();
        for v in &vals {
            w.value(v);
        }
        let mut r = Reader::new(&w.buf);
        for v in &vals {
            assert_eq!(&r.value().unwrap(), v);
        }
        assert!(r.done());
        for cut in 0..w.buf.len() {
            let mut r = Reader::new(&w.buf[..cut]);
            let all: Result<Vec<Value>> = (0..vals.len()).map(|_| r.value()).collect();
            assert!(all.is_err(), "cut at {cut} must fail");
        }
    }

    #[test]
    fn integer_keys_sort_numerically() {
        let a: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![-5, 3, 100]));
        let mut keys = Vec::new();
        for i in 0..3 {
            let mut k = Vec::new();
            assert!(encode_key(&[a.clone()], i, &mut k).unwrap());
            keys.push(k);
        }
        assert!(keys[0] < keys[1] && keys[1] < keys[2]);
    }
}
