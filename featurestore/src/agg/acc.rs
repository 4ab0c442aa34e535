//! [`Acc`]: the accumulator of count, sum, avg, min, max, stddev and count_distinct,
//! shared by the training-set kernel and the online store.
//!
//! The caller decides which input values exist (nulls never reach an accumulator) and
//! in which order rows enter and leave; the accumulator owns everything else: integer
//! sums stay exact and refuse to overflow Int64, floating sums and moments go through
//! [`DdSum`] and [`Moments`], extremes slide with a monotonic queue, distinct values
//! are counted so they can leave again, and an empty window gives 0 for `count`,
//! `count_distinct` and `sum`, null for the rest.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::hash::Hash;

use hashbrown::HashMap;

use super::{DdSum, Moments};
use crate::spec::AggFunction;

/// The error both paths give when an integer sum leaves Int64.
pub(crate) const INT_SUM_OVERFLOW: &str = "an integer sum does not fit in Int64; cast the column to a floating type (in a SQL view) to aggregate it";

/// A numeric input value. Integer columns stay integers (exact sums, integer `min` and
/// `max`); every other numeric type is read as f64, decimals as Arrow's `cast` reads
/// them ([`decimal_to_f64`](super::decimal_to_f64)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// From an integer column.
    Int(i64),
    /// From a floating or decimal column.
    Float(f64),
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Num::Int(x) => x as f64,
            Num::Float(x) => x,
        }
    }

    /// Integers by value, floats by IEEE total order (`-0 < +0`, NaN largest).
    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (a, b) => a.f64().total_cmp(&b.f64()),
        }
    }
}

/// One non-null input value of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Item<K> {
    /// A row (`count`) or a non-null value (`count(col)`).
    Present,
    /// A number (`sum`, `avg`, `min`, `max`, `stddev`).
    Num(Num),
    /// A value's identity (`count_distinct`).
    Key(K),
}

/// A finished aggregate value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Out {
    /// No value (an empty window of `avg`, `min`, `max`, `stddev`).
    Null,
    /// An Int64 value (`count`, `count_distinct`, integer `sum`, `min`, `max`).
    Int(i64),
    /// A Float64 value.
    Float(f64),
}

/// The running state of one aggregate over the values that entered and did not leave.
///
/// Values leave in the order they entered (a window slides forward), which is what
/// lets `min` and `max` keep only a monotonic queue. `sliding: false` promises no value
/// leaves, and `min`/`max` then keep only the best value, so a state kept for all
/// history stays one value however many rows it saw.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Acc<K: Hash + Eq> {
    /// `count`.
    Count(i64),
    /// `sum`/`avg` of integers, exact in i128.
    SumInt {
        /// The exact sum.
        sum: i128,
        /// How many values.
        n: i64,
    },
    /// `sum`/`avg` of floats.
    SumFloat {
        /// The sum.
        sum: DdSum,
        /// How many values.
        n: i64,
    },
    /// `stddev`.
    Moments(Moments),
    /// `min`/`max`: the candidates, best first, with the sequence number of each.
    Extreme {
        /// `max` (else `min`).
        max: bool,
        /// Whether values leave (else only the best is kept).
        sliding: bool,
        /// Values added so far.
        added: u64,
        /// Values removed so far.
        removed: u64,
        /// Candidates (sequence number, value), best first.
        queue: VecDeque<(u64, Num)>,
    },
    /// `count_distinct`: how many times each value is in.
    Distinct(HashMap<K, u32>),
}

impl<K: Hash + Eq> Acc<K> {
    /// The empty state of `function` (not `last`); `integer` when its input is an
    /// integer column.
    pub(crate) fn new(function: AggFunction, integer: bool, sliding: bool) -> Self {
        use AggFunction as F;
        match function {
            F::Count | F::Last => Acc::Count(0),
            F::Sum | F::Avg if integer => Acc::SumInt { sum: 0, n: 0 },
            F::Sum | F::Avg => Acc::SumFloat {
                sum: DdSum::default(),
                n: 0,
            },
            F::Min | F::Max => Acc::Extreme {
                max: function == F::Max,
                sliding,
                added: 0,
                removed: 0,
                queue: VecDeque::new(),
            },
            F::Stddev => Acc::Moments(Moments::default()),
            F::CountDistinct => Acc::Distinct(HashMap::new()),
        }
    }

    /// Forget every value (a new key starts).
    pub(crate) fn reset(&mut self) {
        match self {
            Acc::Count(n) => *n = 0,
            Acc::SumInt { sum, n } => (*sum, *n) = (0, 0),
            Acc::SumFloat { sum, n } => (*sum, *n) = (DdSum::default(), 0),
            Acc::Moments(m) => *m = Moments::default(),
            Acc::Extreme {
                added,
                removed,
                queue,
                ..
            } => {
                (*added, *removed) = (0, 0);
                queue.clear();
            }
            Acc::Distinct(counts) => counts.clear(),
        }
    }

    /// A value enters.
    pub(crate) fn add(&mut self, item: Item<K>) {
        match (self, item) {
            (
                Acc::Extreme {
                    max,
                    sliding,
                    added,
                    queue,
                    ..
                },
                Item::Num(x),
            ) => {
                // Later values win ties, so a queue entry is never older than one it
                // beat; an equal value replaces the older one.
                let back_beats_x = if *max {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                while let Some(&(_, back)) = queue.back() {
                    if x.cmp(back) == back_beats_x {
                        break;
                    }
                    queue.pop_back();
                }
                if *sliding || queue.is_empty() {
                    queue.push_back((*added, x));
                }
                *added += 1;
            }
            (acc, item) => acc.count(item, 1),
        }
    }

    /// The oldest value still in leaves (only for `sliding` states of `min`/`max`).
    pub(crate) fn remove(&mut self, item: Item<K>) {
        match self {
            Acc::Extreme {
                sliding,
                removed,
                queue,
                ..
            } => {
                debug_assert!(*sliding, "a value left a state built for all history");
                if queue.front().is_some_and(|&(seq, _)| seq == *removed) {
                    queue.pop_front();
                }
                *removed += 1;
            }
            acc => acc.count(item, -1),
        }
    }

    /// A value enters (`sign` 1) or leaves (`sign` -1) every state but `Extreme`.
    fn count(&mut self, item: Item<K>, sign: i32) {
        match (self, item) {
            (Acc::Count(n), _) => *n += i64::from(sign),
            (Acc::SumInt { sum, n }, Item::Num(x)) => {
                let x = match x {
                    Num::Int(x) => i128::from(x),
                    // A u64 beyond Int64 (the training set refuses the column).
                    Num::Float(x) => x as i128,
                };
                *sum += i128::from(sign) * x;
                *n += i64::from(sign);
            }
            (Acc::SumFloat { sum, n }, Item::Num(x)) => {
                if sign > 0 {
                    sum.add(x.f64());
                } else {
                    sum.remove(x.f64());
                }
                *n += i64::from(sign);
            }
            (Acc::Moments(m), Item::Num(x)) if sign > 0 => m.add(x.f64()),
            (Acc::Moments(m), Item::Num(x)) => m.remove(x.f64()),
            (Acc::Distinct(counts), Item::Key(k)) if sign > 0 => *counts.entry(k).or_insert(0) += 1,
            (Acc::Distinct(counts), Item::Key(k)) => {
                if let Some(c) = counts.get_mut(&k) {
                    *c -= 1;
                    if *c == 0 {
                        counts.remove(&k);
                    }
                }
            }
            _ => debug_assert!(false, "an input that does not fit the aggregate"),
        }
    }

    /// Fold in the state of other values (both for all history: no value leaves).
    pub(crate) fn combine(&mut self, other: Self) {
        match (self, other) {
            (Acc::Count(n), Acc::Count(m)) => *n += m,
            (Acc::SumInt { sum, n }, Acc::SumInt { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            (Acc::SumFloat { sum, n }, Acc::SumFloat { sum: s, n: m }) => {
                sum.combine(&s);
                *n += m;
            }
            (Acc::Moments(a), Acc::Moments(b)) => a.combine(&b),
            (me @ Acc::Extreme { .. }, Acc::Extreme { queue, .. }) => {
                for (_, x) in queue {
                    me.add(Item::Num(x));
                }
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => {
                for (k, c) in b {
                    *a.entry(k).or_insert(0) += c;
                }
            }
            _ => debug_assert!(false, "states of different aggregates"),
        }
    }

    /// The value of `function` over the values in. `Err` when an integer sum does not
    /// fit in Int64 ([`INT_SUM_OVERFLOW`]).
    pub(crate) fn finish(&self, function: AggFunction) -> Result<Out, &'static str> {
        let avg = function == AggFunction::Avg;
        Ok(match self {
            Acc::Count(n) => Out::Int(*n),
            Acc::Distinct(counts) => Out::Int(counts.len() as i64),
            Acc::SumInt { n: 0, .. } if avg => Out::Null,
            Acc::SumInt { sum, n } if avg => Out::Float(*sum as f64 / *n as f64),
            Acc::SumInt { sum, .. } => Out::Int(i64::try_from(*sum).map_err(|_| INT_SUM_OVERFLOW)?),
            Acc::SumFloat { n: 0, .. } if avg => Out::Null,
            Acc::SumFloat { sum, n } if avg => Out::Float(sum.value() / *n as f64),
            Acc::SumFloat { n: 0, .. } => Out::Float(0.0),
            Acc::SumFloat { sum, .. } => Out::Float(sum.value()),
            Acc::Moments(m) => m.stddev().map_or(Out::Null, Out::Float),
            Acc::Extreme { queue, .. } => match queue.front() {
                None => Out::Null,
                Some((_, Num::Int(x))) => Out::Int(*x),
                Some((_, Num::Float(x))) => Out::Float(*x),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type A = Acc<u32>;

    fn slide(function: AggFunction, xs: &[Num], width: usize) -> Vec<Out> {
        let integer = matches!(xs.first(), Some(Num::Int(_)));
        let mut acc = A::new(function, integer, true);
        let mut out = Vec::new();
        for (i, x) in xs.iter().enumerate() {
            acc.add(Item::Num(*x));
            if i >= width {
                acc.remove(Item::Num(xs[i - width]));
            }
            out.push(acc.finish(function).unwrap());
        }
        out
    }

    fn fresh(function: AggFunction, xs: &[Num]) -> Out {
        let integer = matches!(xs.first(), Some(Num::Int(_)));
        let mut acc = A::new(function, integer, false);
        for x in xs {
            acc.add(Item::Num(*x));
        }
        acc.finish(function).unwrap()
    }

    #[test]
    fn a_sliding_state_equals_a_fresh_one_over_the_same_values() {
        let ints: Vec<Num> = (0..60).map(|i| Num::Int((i * 37 % 23) - 11)).collect();
        let floats: Vec<Num> = (0..60)
            .map(|i| Num::Float(((i * 7919) % 101) as f64 * 0.37 - 9.0))
            .collect();
        for xs in [&ints, &floats] {
            for f in [
                AggFunction::Sum,
                AggFunction::Avg,
                AggFunction::Min,
                AggFunction::Max,
                AggFunction::Stddev,
                AggFunction::Count,
            ] {
                for width in [1, 3, 10] {
                    let slid = slide(f, xs, width);
                    for (i, got) in slid.iter().enumerate() {
                        let want = fresh(f, &xs[(i + 1).saturating_sub(width)..=i]);
                        match (got, want) {
                            (Out::Float(a), Out::Float(b)) => {
                                assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{f} {i}")
                            }
                            _ => assert_eq!(*got, want, "{f} width {width} at {i}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_states_give_zero_for_counts_and_sums_and_null_for_the_rest() {
        let cases = [
            (AggFunction::Count, false, Out::Int(0)),
            (AggFunction::CountDistinct, false, Out::Int(0)),
            (AggFunction::Sum, true, Out::Int(0)),
            (AggFunction::Sum, false, Out::Float(0.0)),
            (AggFunction::Avg, true, Out::Null),
            (AggFunction::Avg, false, Out::Null),
            (AggFunction::Min, false, Out::Null),
            (AggFunction::Max, true, Out::Null),
            (AggFunction::Stddev, false, Out::Null),
        ];
        for (f, integer, want) in cases {
            assert_eq!(A::new(f, integer, true).finish(f).unwrap(), want, "{f}");
        }
    }

    #[test]
    fn an_all_history_extreme_keeps_one_value_and_ties_take_the_later() {
        let mut acc = A::new(AggFunction::Max, false, false);
        for x in (0..1000).rev() {
            acc.add(Item::Num(Num::Float(x as f64)));
        }
        let Acc::Extreme { queue, .. } = &acc else {
            unreachable!()
        };
        assert_eq!(queue.len(), 1);
        assert_eq!(acc.finish(AggFunction::Max).unwrap(), Out::Float(999.0));
        // -0 and +0 are distinct under total order; max picks +0 whichever came first.
        let mut z = A::new(AggFunction::Max, false, true);
        z.add(Item::Num(Num::Float(0.0)));
        z.add(Item::Num(Num::Float(-0.0)));
        assert_eq!(
            z.finish(AggFunction::Max).unwrap(),
            Out::Float(0.0),
            "total order"
        );
    }

    #[test]
    fn integer_sums_are_exact_and_refuse_to_overflow() {
        let mut acc = A::new(AggFunction::Sum, true, true);
        acc.add(Item::Num(Num::Int(i64::MAX)));
        acc.add(Item::Num(Num::Int(1)));
        assert_eq!(acc.finish(AggFunction::Sum), Err(INT_SUM_OVERFLOW));
        assert_eq!(
            acc.finish(AggFunction::Avg).unwrap(),
            Out::Float((i64::MAX as f64 + 1.0) / 2.0)
        );
        acc.remove(Item::Num(Num::Int(i64::MAX)));
        assert_eq!(acc.finish(AggFunction::Sum).unwrap(), Out::Int(1));
    }

    #[test]
    fn distinct_values_leave_when_their_last_copy_leaves() {
        let mut acc = A::new(AggFunction::CountDistinct, false, true);
        for k in [1, 2, 1] {
            acc.add(Item::Key(k));
        }
        assert_eq!(acc.finish(AggFunction::CountDistinct).unwrap(), Out::Int(2));
        acc.remove(Item::Key(1));
        assert_eq!(acc.finish(AggFunction::CountDistinct).unwrap(), Out::Int(2));
        acc.remove(Item::Key(2));
        assert_eq!(acc.finish(AggFunction::CountDistinct).unwrap(), Out::Int(1));
        let mut other = A::new(AggFunction::CountDistinct, false, false);
        other.add(Item::Key(7));
        acc.combine(other);
        assert_eq!(acc.finish(AggFunction::CountDistinct).unwrap(), Out::Int(2));
    }
}
