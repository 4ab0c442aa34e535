//! What the online store keeps per (view, entity key), how materialization merges new
//! source rows into it, and how serving computes values from it at request time.
//!
//! - Column and SQL views: the newest row (event time, created time, values).
//! - Aggregate views: the newest event time, the source rows still inside the view's
//!   largest window (older ones can never be read again, because serving time only
//!   moves forward), and for features without a window a running partial state.
//!
//! Values are computed when a request arrives, over the window ending at the request's
//! time, with the same rules as training sets (docs/point-in-time.md): a 7-day count
//! falls as rows leave the window even if materialization has not run since.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::codec::{Reader, Value, Writer};
pub use crate::agg::Status;
use crate::agg::{
    Acc, DdSum, Item, Moments, Num, Out, decimal_to_f64, pick_order, status_at, window_floor,
};
use crate::spec::AggFunction;
use crate::{Error, Result};

const RECORD_ASOF: u8 = 1;
const RECORD_AGG: u8 = 2;

/// How one aggregate feature is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServedAgg {
    pub(crate) function: AggFunction,
    /// Index into [`ServingPlan::inputs`]; `None` for `count` of rows.
    pub(crate) input: Option<usize>,
    /// Window in microseconds; `None` = all history (served from a partial state).
    pub(crate) window_us: Option<i64>,
    /// Whether the input is an integer column (sums, min and max stay integers).
    pub(crate) integer: bool,
    /// The input's decimal scale when it is a Decimal128 column: values are read as
    /// f64 the way Arrow's cast (and so the training-set kernel) reads them, and
    /// `min`/`max` are served as Float64 like the training set's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) decimal_scale: Option<i8>,
}

impl ServedAgg {
    /// A stored value as this aggregate's input, read the way the training-set kernel
    /// reads its column; `None` for null (nulls never enter an aggregate).
    fn item(&self, v: &Value) -> Option<Item<Vec<u8>>> {
        use AggFunction as F;
        if v.is_null() {
            return None;
        }
        Some(match self.function {
            F::Count | F::Last => Item::Present,
            F::CountDistinct => Item::Key(distinct_bytes(v)),
            _ => Item::Num(self.number(v)?),
        })
    }

    /// The input of `count` (`None`: count rows), or the value of column `input`.
    fn row_item(&self, row: &Row) -> Option<Item<Vec<u8>>> {
        match self.input {
            None => Some(Item::Present),
            Some(i) => self.item(&row.values[i]),
        }
    }

    fn number(&self, v: &Value) -> Option<Num> {
        match (v, self.decimal_scale) {
            (Value::Decimal(d), Some(s)) => Some(Num::Float(decimal_to_f64(*d, s))),
            (Value::Int(x), _) if self.integer => Some(Num::Int(*x)),
            (Value::UInt(x), _) if self.integer => {
                Some(i64::try_from(*x).map_or(Num::Float(*x as f64), Num::Int))
            }
            _ => v.as_f64().map(Num::Float),
        }
    }

    /// An empty state for all history (nothing ever leaves it).
    fn acc(&self) -> Acc<Vec<u8>> {
        Acc::new(self.function, self.integer, false)
    }
}

/// Everything serving needs to evaluate a view's records; stored with the watermark
/// so that a record is always read with the plan that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ServingKind {
    /// Values of the newest row, one per feature.
    AsOf,
    /// Aggregates over stored rows and partials.
    Aggregate(Vec<ServedAgg>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServingPlan {
    pub(crate) kind: ServingKind,
    /// Source columns stored per row (as-of: the feature columns, in feature order).
    pub(crate) inputs: Vec<String>,
    pub(crate) ttl_us: Option<i64>,
}

impl ServingPlan {
    /// Rows older than this before `until` can never be read again.
    pub(crate) fn max_window_us(&self) -> Option<i64> {
        match &self.kind {
            ServingKind::AsOf => None,
            ServingKind::Aggregate(aggs) => aggs.iter().filter_map(|a| a.window_us).max(),
        }
    }

    /// Rows at or before this, materialized up to `until`, can never be read again:
    /// the largest window's floor at `until` (serving time only moves forward).
    pub(crate) fn horizon(&self, until: i64) -> i64 {
        self.max_window_us()
            .map_or(i64::MAX, |w| window_floor(until, w))
    }

    fn windowless(&self) -> impl Iterator<Item = &ServedAgg> {
        let aggs: &[ServedAgg] = match &self.kind {
            ServingKind::Aggregate(a) => a,
            ServingKind::AsOf => &[],
        };
        aggs.iter().filter(|a| a.window_us.is_none())
    }
}

/// One source row as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) ts: i64,
    pub(crate) created: i64,
    pub(crate) values: Vec<Value>,
}

impl Row {
    fn key(&self) -> (i64, i64) {
        (self.ts, self.created)
    }

    /// Newer, or as new with larger values: the row a point-in-time lookup picks.
    fn beats(&self, other: &Row) -> bool {
        pick_order(self.key(), other.key(), || {
            cmp_values(&self.values, &other.values)
        }) == Ordering::Greater
    }
}

fn cmp_values(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = x.cmp_same_type(y);
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Running state of one window-less aggregate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Partial {
    /// Every aggregate but `last`: the accumulator training sets use too.
    Acc(Acc<Vec<u8>>),
    /// `last`: the row it picks so far, with only the feature's value.
    Last(Option<Row>),
}

impl Partial {
    fn new(a: &ServedAgg) -> Self {
        match a.function {
            AggFunction::Last => Partial::Last(None),
            _ => Partial::Acc(a.acc()),
        }
    }

    fn add(&mut self, a: &ServedAgg, row: &Row) {
        match self {
            Partial::Acc(acc) => {
                if let Some(item) = a.row_item(row) {
                    acc.add(item);
                }
            }
            Partial::Last(cur) => {
                let Some(v) = a.input.map(|i| &row.values[i]).filter(|v| !v.is_null()) else {
                    return;
                };
                let candidate = Row {
                    ts: row.ts,
                    created: row.created,
                    values: vec![v.clone()],
                };
                if cur.as_ref().is_none_or(|c| candidate.beats(c)) {
                    *cur = Some(candidate);
                }
            }
        }
    }

    /// Fold in the partial state of other rows.
    fn combine(&mut self, other: Partial) {
        match (self, other) {
            (Partial::Acc(acc), Partial::Acc(other)) => acc.combine(other),
            (Partial::Last(cur), Partial::Last(Some(row)))
                if cur.as_ref().is_none_or(|c| row.beats(c)) =>
            {
                *cur = Some(row);
            }
            _ => {}
        }
    }

    /// Whether this state is the kind `a` keeps (a record read back from disk).
    fn fits(&self, a: &ServedAgg) -> bool {
        match (self, Partial::new(a)) {
            (Partial::Acc(x), Partial::Acc(y)) => {
                std::mem::discriminant(x) == std::mem::discriminant(&y)
                    && match (x, &y) {
                        (Acc::Extreme { max: p, .. }, Acc::Extreme { max: q, .. }) => p == q,
                        _ => true,
                    }
            }
            (Partial::Last(_), Partial::Last(_)) => true,
            _ => false,
        }
    }
}

fn distinct_bytes(v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    w.value(v);
    w.buf
}

/// A view's state for one entity key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    AsOf(Row),
    Aggregate {
        newest: i64,
        rows: Vec<Row>,
        partials: Vec<Partial>,
    },
}

impl Record {
    /// An empty record for `plan` (never stored empty).
    pub(crate) fn empty(plan: &ServingPlan) -> Self {
        match &plan.kind {
            ServingKind::AsOf => Record::AsOf(Row {
                ts: i64::MIN,
                created: i64::MIN,
                values: Vec::new(),
            }),
            ServingKind::Aggregate(_) => Record::Aggregate {
                newest: i64::MIN,
                rows: Vec::new(),
                partials: plan.windowless().map(Partial::new).collect(),
            },
        }
    }

    /// Whether a row at `(ts, created)` can change what this record serves; when not,
    /// [`touch`](Self::touch) records its time and its values need not be read.
    pub(crate) fn needs_values(
        &self,
        plan: &ServingPlan,
        ts: i64,
        created: i64,
        horizon: i64,
    ) -> bool {
        match self {
            Record::AsOf(best) => {
                best.values.is_empty() || (ts, created) >= (best.ts, best.created)
            }
            Record::Aggregate { partials, .. } => {
                !partials.is_empty() || (plan.max_window_us().is_some() && ts > horizon)
            }
        }
    }

    /// Note a row that [`needs_values`](Self::needs_values) said cannot change values.
    pub(crate) fn touch(&mut self, ts: i64) {
        if let Record::Aggregate { newest, .. } = self {
            *newest = (*newest).max(ts);
        }
    }

    /// Add one source row. Rows at or before `horizon` (= until - the largest
    /// window) only update the newest time and the window-less partials.
    pub(crate) fn add_row(&mut self, plan: &ServingPlan, row: Row, horizon: i64) {
        match self {
            Record::AsOf(best) => {
                if best.values.is_empty() || row.beats(best) {
                    *best = row;
                }
            }
            Record::Aggregate {
                newest,
                rows,
                partials,
            } => {
                *newest = (*newest).max(row.ts);
                for (p, a) in partials.iter_mut().zip(plan.windowless()) {
                    p.add(a, &row);
                }
                if plan.max_window_us().is_some() && row.ts > horizon {
                    rows.push(row);
                }
            }
        }
    }

    /// Sort stored rows by time and drop those at or before `horizon`.
    pub(crate) fn finish(&mut self, horizon: i64) {
        if let Record::Aggregate { rows, .. } = self {
            rows.retain(|r| r.ts > horizon);
            rows.sort_by_key(Row::key);
        }
    }

    /// Combine with `other` (built from rows this record has not seen).
    pub(crate) fn absorb(&mut self, other: Record, horizon: i64) {
        match (&mut *self, other) {
            (Record::AsOf(best), Record::AsOf(row))
                if !row.values.is_empty() && (best.values.is_empty() || row.beats(best)) =>
            {
                *best = row;
            }
            (
                Record::Aggregate {
                    newest,
                    rows,
                    partials,
                },
                Record::Aggregate {
                    newest: n2,
                    rows: r2,
                    partials: p2,
                },
            ) => {
                *newest = (*newest).max(n2);
                rows.extend(r2);
                for (p, q) in partials.iter_mut().zip(p2) {
                    p.combine(q);
                }
            }
            _ => {}
        }
        self.finish(horizon);
    }

    /// Add rows and finish: the one-shot form of [`add_row`](Self::add_row).
    #[cfg(test)]
    pub(crate) fn merge(&mut self, plan: &ServingPlan, new_rows: Vec<Row>, until: i64) {
        let horizon = plan.horizon(until);
        for r in new_rows {
            self.add_row(plan, r, horizon);
        }
        self.finish(horizon);
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Record::AsOf(r) => {
                w.u8(RECORD_ASOF);
                write_row(&mut w, r);
            }
            Record::Aggregate {
                newest,
                rows,
                partials,
            } => {
                w.u8(RECORD_AGG);
                w.i64(*newest);
                w.u32(rows.len() as u32);
                for r in rows {
                    write_row(&mut w, r);
                }
                w.u32(partials.len() as u32);
                for p in partials {
                    write_partial(&mut w, p);
                }
            }
        }
        w.buf
    }

    pub(crate) fn decode(bytes: &[u8], plan: &ServingPlan) -> Result<Self> {
        let n_inputs = plan.inputs.len();
        let mut r = Reader::new(bytes);
        let rec = match r.u8()? {
            RECORD_ASOF => Record::AsOf(read_row(&mut r, n_inputs)?),
            RECORD_AGG => {
                let newest = r.i64()?;
                let n = r.u32()? as usize;
                let mut rows = Vec::with_capacity(n.min(bytes.len()));
                for _ in 0..n {
                    rows.push(read_row(&mut r, n_inputs)?);
                }
                let n = r.u32()? as usize;
                let windowless: Vec<&ServedAgg> = plan.windowless().collect();
                if n != windowless.len() {
                    return Err(Error::Corrupt {
                        what: "online record".into(),
                        message: format!(
                            "{n} partial states for {} features without a window",
                            windowless.len()
                        ),
                    });
                }
                let mut partials = Vec::with_capacity(n);
                for a in windowless {
                    partials.push(read_partial(&mut r, a)?);
                }
                Record::Aggregate {
                    newest,
                    rows,
                    partials,
                }
            }
            t => {
                return Err(Error::Corrupt {
                    what: "online record".into(),
                    message: format!("unknown record tag {t}"),
                });
            }
        };
        if !r.done() {
            return Err(Error::Corrupt {
                what: "online record".into(),
                message: "trailing bytes".into(),
            });
        }
        Ok(rec)
    }

    /// Status, value time and feature values as of `now`.
    pub(crate) fn evaluate(
        &self,
        plan: &ServingPlan,
        now: i64,
    ) -> Result<(Status, Option<i64>, Vec<Value>)> {
        let newest = match self {
            Record::AsOf(r) => r.ts,
            Record::Aggregate { newest, .. } => *newest,
        };
        let n_features = match &plan.kind {
            ServingKind::AsOf => plan.inputs.len(),
            ServingKind::Aggregate(a) => a.len(),
        };
        if status_at(Some(newest), now, plan.ttl_us) == Status::Expired {
            return Ok((Status::Expired, Some(newest), vec![Value::Null; n_features]));
        }
        let values = match (self, &plan.kind) {
            (Record::AsOf(r), ServingKind::AsOf) => r.values.clone(),
            (Record::Aggregate { rows, partials, .. }, ServingKind::Aggregate(aggs)) => {
                let mut out = Vec::with_capacity(aggs.len());
                let mut p = partials.iter();
                for a in aggs {
                    out.push(match a.window_us {
                        None => from_partial(
                            a,
                            p.next().ok_or_else(|| Error::Corrupt {
                                what: "online record".into(),
                                message: "missing partial".into(),
                            })?,
                        )?,
                        Some(w) => {
                            let lo = rows.partition_point(|r| r.ts <= window_floor(now, w));
                            let hi = rows.partition_point(|r| r.ts <= now);
                            over_window(a, &rows[lo..hi])?
                        }
                    });
                }
                out
            }
            _ => {
                return Err(Error::Corrupt {
                    what: "online record".into(),
                    message: "record does not match the view's serving plan".into(),
                });
            }
        };
        Ok((Status::Present, Some(newest), values))
    }
}

fn write_row(w: &mut Writer, r: &Row) {
    w.i64(r.ts);
    w.i64(r.created);
    for v in &r.values {
        w.value(v);
    }
}

fn read_row(r: &mut Reader<'_>, n: usize) -> Result<Row> {
    let ts = r.i64()?;
    let created = r.i64()?;
    let values = (0..n).map(|_| r.value()).collect::<Result<_>>()?;
    Ok(Row {
        ts,
        created,
        values,
    })
}

fn write_partial(w: &mut Writer, p: &Partial) {
    match p {
        Partial::Acc(Acc::Count(n)) => {
            w.u8(1);
            w.i64(*n);
        }
        Partial::Acc(Acc::SumInt { sum, n }) => {
            w.u8(2);
            w.buf.extend_from_slice(&sum.to_le_bytes());
            w.i64(*n);
        }
        Partial::Acc(Acc::SumFloat { sum, n }) => {
            w.u8(8);
            write_dd(w, sum);
            w.i64(*n);
        }
        Partial::Acc(Acc::Extreme { queue, .. }) => {
            w.u8(10);
            match queue.front() {
                None => w.u8(0),
                Some((_, Num::Int(x))) => {
                    w.u8(1);
                    w.i64(*x);
                }
                Some((_, Num::Float(x))) => {
                    w.u8(2);
                    w.f64(*x);
                }
            }
        }
        Partial::Acc(Acc::Moments(m)) => {
            w.u8(9);
            let (n, s1, s2) = m.to_parts();
            w.i64(n);
            write_dd(w, &s1);
            write_dd(w, &s2);
        }
        Partial::Acc(Acc::Distinct(counts)) => {
            w.u8(6);
            // Sorted, so one state always encodes to the same bytes.
            let mut keys: Vec<&Vec<u8>> = counts.keys().collect();
            keys.sort_unstable();
            w.u32(keys.len() as u32);
            for b in keys {
                w.bytes(b);
            }
        }
        Partial::Last(row) => {
            w.u8(7);
            match row {
                None => w.u8(0),
                Some(r) => {
                    w.u8(1);
                    write_row(w, r);
                }
            }
        }
    }
}

/// One window-less state of `a`, checked to be the kind `a` keeps.
fn read_partial(r: &mut Reader<'_>, a: &ServedAgg) -> Result<Partial> {
    let from_items = |items: &mut dyn Iterator<Item = Item<Vec<u8>>>| {
        let mut acc = a.acc();
        for item in items {
            acc.add(item);
        }
        Partial::Acc(acc)
    };
    let p = match r.u8()? {
        1 => Partial::Acc(Acc::Count(r.i64()?)),
        2 => {
            let lo = r.i64()? as u64 as u128;
            let hi = r.i64()? as u64 as u128;
            Partial::Acc(Acc::SumInt {
                sum: ((hi << 64) | lo) as i128,
                n: r.i64()?,
            })
        }
        // An earlier release's double-double sum: the same value, no large part.
        3 => {
            let (hi, lo) = (r.f64()?, r.f64()?);
            let (nan, pos_inf, neg_inf) = (r.u32()?, r.u32()?, r.u32()?);
            let n = r.i64()?;
            Partial::Acc(Acc::SumFloat {
                sum: DdSum::from_parts([hi, lo, 0.0, 0.0], [n, 0], [nan, pos_inf, neg_inf]),
                n,
            })
        }
        8 => Partial::Acc(Acc::SumFloat {
            sum: read_dd(r)?,
            n: r.i64()?,
        }),
        // An earlier release's extreme, kept as a stored value.
        4 => {
            let v = r.value()?;
            from_items(&mut a.item(&v).into_iter())
        }
        10 => match r.u8()? {
            0 => from_items(&mut std::iter::empty()),
            1 => from_items(&mut std::iter::once(Item::Num(Num::Int(r.i64()?)))),
            _ => from_items(&mut std::iter::once(Item::Num(Num::Float(r.f64()?)))),
        },
        // An earlier release's Welford state (until the next full rebuild).
        5 => {
            let n = r.i64()?;
            let (mean, m2) = (r.f64()?, r.f64()?);
            Partial::Acc(Acc::Moments(Moments::from_welford(n, mean, m2)))
        }
        9 => {
            let n = r.i64()?;
            let s1 = read_dd(r)?;
            let s2 = read_dd(r)?;
            Partial::Acc(Acc::Moments(Moments::from_parts(n, s1, s2)))
        }
        6 => {
            let n = r.u32()? as usize;
            let mut keys = Vec::with_capacity(n.min(r.remaining()));
            for _ in 0..n {
                keys.push(Item::Key(r.bytes()?.to_vec()));
            }
            from_items(&mut keys.into_iter())
        }
        7 => match r.u8()? {
            0 => Partial::Last(None),
            _ => Partial::Last(Some(read_row(r, 1)?)),
        },
        t => {
            return Err(Error::Corrupt {
                what: "online record".into(),
                message: format!("unknown partial tag {t}"),
            });
        }
    };
    if !p.fits(a) {
        return Err(Error::Corrupt {
            what: "online record".into(),
            message: format!("partial state does not fit `{}`", a.function),
        });
    }
    Ok(p)
}

fn write_dd(w: &mut Writer, s: &DdSum) {
    let (f, n, c) = s.to_parts();
    for x in f {
        w.f64(x);
    }
    for x in n {
        w.i64(x);
    }
    for x in c {
        w.u32(x);
    }
}

fn read_dd(r: &mut Reader<'_>) -> Result<DdSum> {
    let f = [r.f64()?, r.f64()?, r.f64()?, r.f64()?];
    let n = [r.i64()?, r.i64()?];
    let c = [r.u32()?, r.u32()?, r.u32()?];
    Ok(DdSum::from_parts(f, n, c))
}

fn value(out: std::result::Result<Out, &'static str>) -> Result<Value> {
    Ok(match out.map_err(|m| Error::InvalidRequest(m.into()))? {
        Out::Null => Value::Null,
        Out::Int(x) => Value::Int(x),
        Out::Float(x) => Value::Float(x),
    })
}

fn from_partial(a: &ServedAgg, p: &Partial) -> Result<Value> {
    match p {
        Partial::Acc(acc) => value(acc.finish(a.function)),
        Partial::Last(r) => Ok(r
            .as_ref()
            .map(|r| r.values[0].clone())
            .unwrap_or(Value::Null)),
    }
}

/// One aggregate over the rows of its window: the accumulator of training sets, filled
/// with the window's rows.
fn over_window(a: &ServedAgg, rows: &[Row]) -> Result<Value> {
    if a.function == AggFunction::Last {
        let i = a.input.expect("last reads a column");
        return Ok(rows
            .iter()
            .filter(|r| !r.values[i].is_null())
            .max_by(|x, y| pick_order(x.key(), y.key(), || x.values[i].cmp_same_type(&y.values[i])))
            .map(|r| r.values[i].clone())
            .unwrap_or(Value::Null));
    }
    let mut acc = a.acc();
    for item in rows.iter().filter_map(|r| a.row_item(r)) {
        acc.add(item);
    }
    value(acc.finish(a.function))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(function: AggFunction, input: Option<usize>, window_us: Option<i64>) -> ServedAgg {
        ServedAgg {
            function,
            input,
            window_us,
            integer: false,
            decimal_scale: None,
        }
    }

    #[test]
    fn windows_slide_at_request_time() {
        let plan = ServingPlan {
            kind: ServingKind::Aggregate(vec![
                agg(AggFunction::Count, None, Some(10)),
                agg(AggFunction::Sum, Some(0), None),
            ]),
            inputs: vec!["amount".into()],
            ttl_us: Some(100),
        };
        let mut rec = Record::empty(&plan);
        let row = |ts, v: f64| Row {
            ts,
            created: 0,
            values: vec![Value::Float(v)],
        };
        rec.merge(&plan, vec![row(1, 1.0), row(5, 2.0), row(8, 4.0)], 8);
        let rec = Record::decode(&rec.encode(), &plan).unwrap();
        let at = |now| rec.evaluate(&plan, now).unwrap();
        assert_eq!(at(8).2, vec![Value::Int(3), Value::Float(7.0)]);
        assert_eq!(
            at(12).2,
            vec![Value::Int(2), Value::Float(7.0)],
            "the row at 1 left the window (2, 12]"
        );
        assert_eq!(at(18).2[0], Value::Int(0));
        assert_eq!(at(200).0, Status::Expired);
    }

    #[test]
    fn horizon_prunes_rows_that_cannot_be_read_again() {
        let plan = ServingPlan {
            kind: ServingKind::Aggregate(vec![agg(AggFunction::Count, None, Some(10))]),
            inputs: vec![],
            ttl_us: None,
        };
        let mut rec = Record::empty(&plan);
        rec.merge(
            &plan,
            (0..100)
                .map(|t| Row {
                    ts: t,
                    created: 0,
                    values: vec![],
                })
                .collect(),
            99,
        );
        let Record::Aggregate { rows, .. } = &rec else {
            panic!()
        };
        assert_eq!(rows.len(), 10);
    }

    #[test]
    fn corrupt_records_are_errors() {
        let plan = ServingPlan {
            kind: ServingKind::AsOf,
            inputs: vec!["x".into()],
            ttl_us: None,
        };
        let mut rec = Record::empty(&plan);
        rec.merge(
            &plan,
            vec![Row {
                ts: 1,
                created: 0,
                values: vec![Value::Bytes(b"abc".to_vec())],
            }],
            1,
        );
        let bytes = rec.encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut], &plan).is_err());
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Record::decode(&extra, &plan).is_err());
    }
}
