//! The semantics of a feature value that the training-set kernel (`plan::kernel`,
//! `plan::asof`) and online serving (`online::record`) share, so no training/serving
//! skew can come from two implementations of one rule (docs/point-in-time.md):
//!
//! - [`Status`] and [`status_at`]: `NOT_FOUND` without a row, `EXPIRED` past the TTL
//!   (`newest < t - ttl`), else `PRESENT`; `FALLBACK` for `fallback: zero`.
//! - [`window_floor`]: a window `w` at `t` holds the rows with `t - w < ts <= t`.
//! - [`pick_order`]: which of two rows a point-in-time lookup (and `last`) picks: the
//!   later event time, then the later created time, then the larger values.
//! - [`Acc`]: the one accumulator of every aggregate but `last` (count, sum, avg, min,
//!   max, stddev, count_distinct): how a value enters and leaves, which values are
//!   ignored, and what an empty window gives. The kernel slides it over sorted rows;
//!   the online store keeps it per key for features without a window and refills it
//!   from the stored rows of a window at request time.
//! - [`exact`]: the sums behind it ([`DdSum`], [`Moments`]), exact enough that adding
//!   and removing values in any order gives what one fresh pass gives.
//! - [`decimal_to_f64`]: Arrow's own decimal-to-float conversion, which the kernel
//!   gets through `cast` and serving calls directly.

mod acc;
mod exact;

use std::cmp::Ordering;

pub(crate) use acc::{Acc, INT_SUM_OVERFLOW, Item, Num, Out};
use arrow::datatypes::Decimal128Type;
pub(crate) use exact::{DdSum, Moments};
use serde::{Deserialize, Serialize};

/// Status of a feature value for one key at one time: the same in training sets and
/// online. Every feature of a view shares it (it derives from the key's newest row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum Status {
    /// A value computed from the entity's rows.
    Present = 0,
    /// No row of the key at or before the time.
    NotFound = 1,
    /// The newest row is older than the view's ttl at that time.
    Expired = 2,
    /// No row, and the view's `fallback: zero` value is given.
    Fallback = 3,
}

impl Status {
    /// The name clients and training sets see.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "PRESENT",
            Status::NotFound => "NOT_FOUND",
            Status::Expired => "EXPIRED",
            Status::Fallback => "FALLBACK",
        }
    }

    /// The status named `name` ([`Status::as_str`]), if it is one.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [
            Status::Present,
            Status::NotFound,
            Status::Expired,
            Status::Fallback,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether a value was found (computed, expired, or the view's fallback).
    pub(crate) fn found(self) -> bool {
        !matches!(self, Status::NotFound)
    }

    /// The status stored as `self as u8`.
    pub(crate) fn from_u8(b: u8) -> Self {
        match b {
            0 => Status::Present,
            1 => Status::NotFound,
            2 => Status::Expired,
            _ => Status::Fallback,
        }
    }
}

/// The status at `t` of a key whose newest row at or before `t` is `newest`.
pub(crate) fn status_at(newest: Option<i64>, t: i64, ttl_us: Option<i64>) -> Status {
    match newest {
        None => Status::NotFound,
        Some(n) if ttl_us.is_some_and(|ttl| n < t.saturating_sub(ttl)) => Status::Expired,
        Some(_) => Status::Present,
    }
}

/// Rows with event time `<= window_floor(t, w)` are outside the window `w` at `t`.
pub(crate) fn window_floor(t: i64, window_us: i64) -> i64 {
    t.saturating_sub(window_us)
}

/// The order in which a point-in-time lookup (and `last`) prefers rows: the later
/// event time, then the later created time, then `values` (which compares the rows'
/// values, nulls smallest), so the pick never depends on file order.
pub(crate) fn pick_order(
    a: (i64, i64),
    b: (i64, i64),
    values: impl FnOnce() -> Ordering,
) -> Ordering {
    a.cmp(&b).then_with(values)
}

/// A Decimal128 value with `scale` as f64, exactly as Arrow's `cast` computes it.
pub(crate) fn decimal_to_f64(value: i128, scale: i8) -> f64 {
    arrow::compute::kernels::cast::single_decimal_to_float_lossy::<Decimal128Type, _>(
        &|x: i128| x as f64,
        value,
        i32::from(scale),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_read_back_from_its_name() {
        for s in [
            Status::Present,
            Status::NotFound,
            Status::Expired,
            Status::Fallback,
        ] {
            assert_eq!(Status::from_name(s.as_str()), Some(s));
        }
        assert_eq!(Status::from_name("expired"), None);
        assert!(!Status::NotFound.found() && Status::Fallback.found());
    }

    #[test]
    fn decimals_convert_like_arrow_cast() {
        use arrow::array::{AsArray, Decimal128Array};
        use arrow::datatypes::{DataType, Float64Type};
        let raw = [12345i128, -1, 0, 99_999_999_999];
        let arr = Decimal128Array::from(raw.to_vec())
            .with_precision_and_scale(12, 2)
            .unwrap();
        let cast = arrow::compute::cast(&arr, &DataType::Float64).unwrap();
        let cast = cast.as_primitive::<Float64Type>();
        for (i, r) in raw.iter().enumerate() {
            assert_eq!(decimal_to_f64(*r, 2).to_bits(), cast.value(i).to_bits());
        }
        assert_eq!(cast.len(), 4);
    }
}
