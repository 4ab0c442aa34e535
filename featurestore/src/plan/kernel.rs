//! The point-in-time kernel: pure, synchronous computation on Arrow arrays.
//!
//! ```text
//!  entity rows (keys, t) ──► KeyIndex: key -> group id
//!  source batches ──(per partition, in parallel)──► Entry {group, ts, created, batch, row}
//!                                                     │ rows of keys not asked for are dropped here
//!  counting sort by group, then sort each group by (ts, created)
//!  queries sorted by (group, t)
//!  per group, a sweep: `hi` = rows with ts <= t, `lo[w]` = rows with ts <= t - w;
//!  each aggregate keeps an incremental state over [lo, hi)
//! ```
//!
//! # Semantics (the contract the property tests check against a naive reference)
//! - A query `(key, t)` sees the source rows of `key` with event time `<= t`.
//! - Status: `NOT_FOUND` when it sees no row; `EXPIRED` when the newest row it sees is
//!   older than `t - ttl` (strictly); else `PRESENT`. Values are null unless `PRESENT`.
//! - Column (as-of) features: the values of the newest row it sees. Ties on event time
//!   are broken by the created time (newest wins), then by the row's values (largest
//!   wins, nulls smallest) so the result never depends on file order.
//! - Aggregates see rows with event time in `(t - window, t]` (all rows `<= t` without a
//!   window) and ignore nulls. Empty windows give 0 for `count`, `count_distinct` and
//!   `sum`, null for the rest; `stddev` (sample) needs two values.
//! - Rows with a null key or a null event time are ignored.
//!
//! # Cost
//! O(N + Q) hashing, O(N log n_k) sorting within keys, and an O(N + Q) sweep; every
//! aggregate, `stddev` included, updates in O(1) as a row enters or leaves a window
//! (`crate::agg`).

use std::cmp::Ordering;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array, new_null_array,
};
use arrow::compute::{SortOptions, interleave, take};
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{Result, exec_err};

pub(crate) use crate::agg::Status;
use crate::agg::{
    Acc, INT_SUM_OVERFLOW, Item, Num, Out as AggOut, pick_order, status_at, window_floor,
};
use crate::spec::AggFunction;

pub(crate) use super::keys::{
    KeyIndex, NO_GROUP, SourceLayout, is_integer, is_numeric, micros, query_micros, route,
    strict_cast,
};

const NONE: u32 = u32::MAX;

/// One source row routed to an entity group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) group: u32,
    pub(crate) batch: u32,
    pub(crate) row: u32,
    pub(crate) ts: i64,
    pub(crate) created: i64,
}

/// How one aggregate reads its column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// `count` of rows.
    Rows,
    /// Only nullness matters (`count(col)`, `last(col)`).
    Validity(usize),
    /// Integer values (column index).
    Int(usize),
    /// Floating values (column index).
    Float(usize),
    /// Value identity in row format (column index).
    Distinct(usize),
}

/// One aggregate to compute.
#[derive(Debug, Clone)]
pub(crate) struct AggPlan {
    pub(crate) function: AggFunction,
    pub(crate) input: Input,
    pub(crate) window_us: Option<i64>,
}

/// What the kernel computes.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Values of the newest row; the column indices in the source batches.
    /// Output columns, and the columns that order tied rows.
    AsOf(Vec<usize>, Vec<usize>),
    /// Aggregates.
    Aggregate(Vec<AggPlan>),
}

/// Per-batch prepared inputs of the aggregates.
#[derive(Debug)]
pub(crate) enum Prepared {
    None,
    Int(Int64Array),
    Float(Float64Array),
    Rows(Rows),
}

/// A retained source batch and its prepared aggregate inputs.
#[derive(Debug)]
pub(crate) struct SourceBatch {
    pub(crate) batch: RecordBatch,
    pub(crate) prepared: Vec<Prepared>,
}

/// Route the rows of one source batch; returns the number of rows kept. The batch is
/// retained (with prepared inputs) only when it has rows for asked-for keys.
pub(crate) fn scan_batch(
    index: &KeyIndex,
    layout: &SourceLayout,
    aggs: &[AggPlan],
    batch: RecordBatch,
    batch_no: u32,
    groups: &mut Vec<u32>,
    entries: &mut Vec<Entry>,
    retained: &mut Vec<SourceBatch>,
) -> Result<usize> {
    let (ts, created) = route(index, layout, &batch, groups)?;
    let before = entries.len();
    let ts_values = ts.values();
    for (row, &group) in groups.iter().enumerate() {
        if group == NO_GROUP || ts.is_null(row) {
            continue;
        }
        let created = match &created {
            Some(c) if c.is_valid(row) => c.value(row),
            Some(_) => i64::MIN,
            None => 0,
        };
        entries.push(Entry {
            group,
            batch: batch_no,
            row: row as u32,
            ts: ts_values[row],
            created,
        });
    }
    let kept = entries.len() - before;
    if kept > 0 {
        let prepared = aggs
            .iter()
            .map(|a| prepare(&batch, &a.input))
            .collect::<Result<_>>()?;
        retained.push(SourceBatch { batch, prepared });
    }
    Ok(kept)
}

fn prepare(batch: &RecordBatch, input: &Input) -> Result<Prepared> {
    Ok(match input {
        Input::Rows | Input::Validity(_) => Prepared::None,
        Input::Int(c) => Prepared::Int(
            strict_cast(batch.column(*c), &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .clone(),
        ),
        Input::Float(c) => Prepared::Float(
            strict_cast(batch.column(*c), &DataType::Float64)?
                .as_primitive::<arrow::datatypes::Float64Type>()
                .clone(),
        ),
        Input::Distinct(c) => {
            let col = batch.column(*c);
            let conv = RowConverter::new(vec![SortField::new(col.data_type().clone())])?;
            Prepared::Rows(conv.convert_columns(std::slice::from_ref(col))?)
        }
    })
}

/// Everything the sweep needs, in sorted order.
struct Sorted<'a> {
    entries: Vec<Entry>,
    /// Start of each group's rows in `entries` (len = groups + 1).
    offsets: Vec<usize>,
    batches: &'a [SourceBatch],
}

/// Counting sort by group, then each group by (ts, created).
fn sort_entries(parts: Vec<Vec<Entry>>, n_groups: usize) -> (Vec<Entry>, Vec<usize>) {
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut offsets = vec![0usize; n_groups + 1];
    for part in &parts {
        for e in part {
            offsets[e.group as usize + 1] += 1;
        }
    }
    for g in 0..n_groups {
        offsets[g + 1] += offsets[g];
    }
    let mut cursor = offsets.clone();
    let mut sorted = vec![
        Entry {
            group: 0,
            batch: 0,
            row: 0,
            ts: 0,
            created: 0
        };
        total
    ];
    for part in parts {
        for e in part {
            let slot = &mut cursor[e.group as usize];
            sorted[*slot] = e;
            *slot += 1;
        }
    }
    (sorted, offsets)
}

fn sort_groups(entries: &mut [Entry], offsets: &[usize], base: usize) {
    for w in offsets.windows(2) {
        let group = &mut entries[w[0] - base..w[1] - base];
        if group.len() > 1
            && !group
                .windows(2)
                .all(|p| (p[0].ts, p[0].created) <= (p[1].ts, p[1].created))
        {
            group.sort_unstable_by_key(|e| (e.ts, e.created));
        }
    }
}

/// Sorted-order values of one aggregate's column.
enum Column<'a> {
    None,
    Valid(Vec<bool>),
    Int(Vec<i64>, Vec<bool>),
    Float(Vec<f64>, Vec<bool>),
    Distinct(Vec<Option<&'a [u8]>>),
}

fn gather_column<'a>(
    sorted: &Sorted<'a>,
    k: usize,
    input: &Input,
    range: std::ops::Range<usize>,
) -> Column<'a> {
    let entries = &sorted.entries[range];
    let b = sorted.batches;
    match input {
        Input::Rows => Column::None,
        Input::Validity(c) => Column::Valid(
            entries
                .iter()
                .map(|e| {
                    b[e.batch as usize]
                        .batch
                        .column(*c)
                        .is_valid(e.row as usize)
                })
                .collect(),
        ),
        Input::Int(_) => {
            let mut vals = Vec::with_capacity(entries.len());
            let mut valid = Vec::with_capacity(entries.len());
            for e in entries {
                let Prepared::Int(a) = &b[e.batch as usize].prepared[k] else {
                    unreachable!("prepared as int")
                };
                vals.push(a.values()[e.row as usize]);
                valid.push(a.is_valid(e.row as usize));
            }
            Column::Int(vals, valid)
        }
        Input::Float(_) => {
            let mut vals = Vec::with_capacity(entries.len());
            let mut valid = Vec::with_capacity(entries.len());
            for e in entries {
                let Prepared::Float(a) = &b[e.batch as usize].prepared[k] else {
                    unreachable!("prepared as float")
                };
                vals.push(a.values()[e.row as usize]);
                valid.push(a.is_valid(e.row as usize));
            }
            Column::Float(vals, valid)
        }
        Input::Distinct(c) => Column::Distinct(
            entries
                .iter()
                .map(|e| {
                    let sb = &b[e.batch as usize];
                    let Prepared::Rows(rows) = &sb.prepared[k] else {
                        unreachable!("prepared as rows")
                    };
                    sb.batch
                        .column(*c)
                        .is_valid(e.row as usize)
                        .then(|| rows.row(e.row as usize).data())
                })
                .collect(),
        ),
    }
}

/// Per-query output of one aggregate, in sorted query order.
enum Outs {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    /// Entry index (into sorted entries) of the chosen row, or NONE.
    Pick(Vec<u32>),
}

/// One aggregate's accumulator ([`Acc`], shared with online serving) and the
/// sorted-order column it reads; `last` has no accumulator (it picks a row).
struct State<'a> {
    col: &'a Column<'a>,
    acc: Option<Acc<&'a [u8]>>,
}

impl<'a> State<'a> {
    fn new(function: AggFunction, col: &'a Column<'a>) -> Self {
        let integer = matches!(col, Column::Int(..));
        let acc = (function != AggFunction::Last).then(|| Acc::new(function, integer, true));
        State { col, acc }
    }

    fn add(&mut self, i: usize) {
        if let (Some(acc), Some(item)) = (&mut self.acc, item(self.col, i)) {
            acc.add(item);
        }
    }

    fn remove(&mut self, i: usize) {
        if let (Some(acc), Some(item)) = (&mut self.acc, item(self.col, i)) {
            acc.remove(item);
        }
    }
}

/// Entry `i`'s input in `col`, or `None` when it is null (nulls never enter).
#[inline]
fn item<'a>(col: &Column<'a>, i: usize) -> Option<Item<&'a [u8]>> {
    match col {
        Column::None => Some(Item::Present),
        Column::Valid(v) => v[i].then_some(Item::Present),
        Column::Int(vals, valid) => valid[i].then(|| Item::Num(Num::Int(vals[i]))),
        Column::Float(vals, valid) => valid[i].then(|| Item::Num(Num::Float(vals[i]))),
        Column::Distinct(keys) => keys[i].map(Item::Key),
    }
}

/// Which entity rows to answer, sorted by (group, t).
pub(crate) struct Queries {
    /// Entity row of each sorted query.
    pub(crate) order: Vec<u32>,
    /// Time of each sorted query.
    pub(crate) t: Vec<i64>,
    /// Start of each group's queries in `order` (len = groups + 2: the last group holds
    /// rows with null keys).
    pub(crate) offsets: Vec<usize>,
}

impl Queries {
    pub(crate) fn new(groups: &[u32], t: &[i64], n_groups: usize) -> Self {
        let nulls = n_groups;
        let gid = |g: u32| if g == NO_GROUP { nulls } else { g as usize };
        let mut offsets = vec![0usize; n_groups + 2];
        for &g in groups {
            offsets[gid(g) + 1] += 1;
        }
        for i in 0..=n_groups {
            offsets[i + 1] += offsets[i];
        }
        let mut cursor = offsets.clone();
        let mut order = vec![0u32; groups.len()];
        for (row, &g) in groups.iter().enumerate() {
            let slot = &mut cursor[gid(g)];
            order[*slot] = row as u32;
            *slot += 1;
        }
        for w in offsets.windows(2) {
            order[w[0]..w[1]].sort_unstable_by_key(|&r| t[r as usize]);
        }
        let t = order.iter().map(|&r| t[r as usize]).collect();
        Self { order, t, offsets }
    }
}

/// Results of one thread's groups, in sorted query order.
struct Chunk {
    /// An integer sum did not fit Int64 (reported as an error, never clamped).
    overflow: bool,
    status: Vec<u8>,
    event_ts: Vec<Option<i64>>,
    outs: Vec<Outs>,
}

/// The answer for every entity row, in entity order.
pub(crate) struct Answer {
    pub(crate) status: StringArray,
    pub(crate) event_ts: TimestampMicrosecondArray,
    pub(crate) values: Vec<ArrayRef>,
}

/// Status and value-time columns in entity order, from values in sorted query order
/// (the null-key group last), and the permutation that maps entity rows to sorted
/// positions.
pub(crate) fn finish(
    status: &[u8],
    event_ts: Vec<Option<i64>>,
    queries: &Queries,
) -> Result<(UInt32Array, StringArray, TimestampMicrosecondArray)> {
    let mut inverse = vec![0u32; queries.order.len()];
    for (pos, &row) in queries.order.iter().enumerate() {
        inverse[row as usize] = pos as u32;
    }
    let inverse = UInt32Array::from(inverse);
    let status = StringArray::from_iter_values(
        inverse
            .values()
            .iter()
            .map(|&p| Status::from_u8(status[p as usize]).as_str()),
    );
    let event_ts = take(&TimestampMicrosecondArray::from(event_ts), &inverse, None)?;
    let event_ts = event_ts
        .as_primitive::<TimestampMicrosecondType>()
        .clone()
        .with_timezone("UTC");
    Ok((inverse, status, event_ts))
}

/// `fallback: zero`: rows with status `NOT_FOUND` become `FALLBACK`, with 0 in every
/// numeric feature and null in the others, exactly what online serving answers for an
/// unknown key.
pub(crate) fn apply_zero_fallback(answer: Answer) -> Result<Answer> {
    let missing: BooleanArray = answer
        .status
        .iter()
        .map(|s| Some(s == Some(Status::NotFound.as_str())))
        .collect();
    if missing.true_count() == 0 {
        return Ok(answer);
    }
    let status = StringArray::from_iter_values(answer.status.iter().map(|s| match s {
        Some(s) if s == Status::NotFound.as_str() => Status::Fallback.as_str(),
        Some(s) => s,
        None => "",
    }));
    let values = answer
        .values
        .into_iter()
        .map(|v| {
            if !is_numeric(v.data_type()) {
                return Ok(v);
            }
            let zero = strict_cast(
                &(std::sync::Arc::new(Int64Array::from(vec![0i64])) as ArrayRef),
                v.data_type(),
            )?;
            let zeros = arrow::array::Scalar::new(zero);
            Ok(arrow::compute::kernels::zip::zip(&missing, &zeros, &v)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Answer {
        status,
        event_ts: answer.event_ts,
        values,
    })
}

/// Among entries `[start, last]` of equal (ts, created) as `last`, those passing `ok`,
/// the largest by `cols` (nulls smallest).
fn break_tie(
    sorted: &Sorted<'_>,
    cols: &[usize],
    start: usize,
    last: usize,
    ok: impl Fn(usize) -> bool,
) -> usize {
    let key = (sorted.entries[last].ts, sorted.entries[last].created);
    let mut best = last;
    let mut k = last;
    while k > start {
        k -= 1;
        let e = &sorted.entries[k];
        if (e.ts, e.created) != key {
            break;
        }
        let b = &sorted.entries[best];
        if ok(k)
            && pick_order((e.ts, e.created), (b.ts, b.created), || {
                let batch = |e: &Entry| (&sorted.batches[e.batch as usize].batch, e.row);
                cmp_rows(cols, batch(e), batch(b))
            }) == Ordering::Greater
        {
            best = k;
        }
    }
    best
}

/// Compare two rows by the given columns (nulls smallest): the value part of
/// [`pick_order`].
pub(crate) fn cmp_rows(cols: &[usize], a: (&RecordBatch, u32), b: (&RecordBatch, u32)) -> Ordering {
    for &c in cols {
        let ord = match arrow::array::make_comparator(
            a.0.column(c).as_ref(),
            b.0.column(c).as_ref(),
            SortOptions::default(),
        ) {
            Ok(cmp) => cmp(a.1 as usize, b.1 as usize),
            Err(_) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// Sweep groups `groups`, whose entries are `range` of the full sort.
fn sweep(
    sorted: &Sorted<'_>,
    range: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
    queries: &Queries,
    aggs: &[AggPlan],
    ttl_us: Option<i64>,
    columns: &[Column<'_>],
) -> Chunk {
    let nq = queries.offsets[groups.end] - queries.offsets[groups.start];
    let mut chunk = Chunk {
        overflow: false,
        status: Vec::with_capacity(nq),
        event_ts: Vec::with_capacity(nq),
        outs: aggs
            .iter()
            .zip(columns)
            .map(|(a, c)| match (a.function, c) {
                (AggFunction::Last, _) => Outs::Pick(Vec::with_capacity(nq)),
                (AggFunction::Count | AggFunction::CountDistinct, _) => {
                    Outs::Int(Vec::with_capacity(nq))
                }
                (AggFunction::Sum | AggFunction::Min | AggFunction::Max, Column::Int(..)) => {
                    Outs::Int(Vec::with_capacity(nq))
                }
                _ => Outs::Float(Vec::with_capacity(nq)),
            })
            .collect(),
    };
    let base = range.start;
    let mut states: Vec<State<'_>> = aggs
        .iter()
        .zip(columns)
        .map(|(a, c)| State::new(a.function, c))
        .collect();
    let mut lo = vec![0usize; aggs.len()];
    let mut added = vec![0usize; aggs.len()];
    for g in groups {
        let (gs, ge) = (sorted.offsets[g] - base, sorted.offsets[g + 1] - base);
        let entries = &sorted.entries[sorted.offsets[g]..sorted.offsets[g + 1]];
        for s in states.iter_mut() {
            if let Some(acc) = &mut s.acc {
                acc.reset();
            }
        }
        lo.iter_mut().for_each(|l| *l = gs);
        added.iter_mut().for_each(|a| *a = gs);
        let mut hi = gs;
        for q in queries.offsets[g]..queries.offsets[g + 1] {
            let t = queries.t[q];
            while hi < ge && entries[hi - gs].ts <= t {
                hi += 1;
            }
            let status = status_at((hi > gs).then(|| entries[hi - 1 - gs].ts), t, ttl_us);
            chunk.status.push(status as u8);
            chunk
                .event_ts
                .push((hi > gs).then(|| entries[hi - 1 - gs].ts));
            let present = status == Status::Present;
            for (k, agg) in aggs.iter().enumerate() {
                let state = &mut states[k];
                for i in added[k]..hi {
                    state.add(i);
                }
                added[k] = hi.max(added[k]);
                if let Some(w) = agg.window_us {
                    let bound = window_floor(t, w);
                    while lo[k] < hi && entries[lo[k] - gs].ts <= bound {
                        state.remove(lo[k]);
                        lo[k] += 1;
                    }
                }
                let (l, h) = (lo[k], hi);
                match (&mut chunk.outs[k], &state.acc) {
                    (Outs::Pick(v), _) => {
                        let Column::Valid(valid) = state.col else {
                            unreachable!("last reads validity")
                        };
                        let mut pick = NONE;
                        if present && let Some(i) = (l..h).rev().find(|&i| valid[i]) {
                            let Input::Validity(col) = agg.input else {
                                unreachable!("last reads validity")
                            };
                            pick =
                                break_tie(sorted, &[col], base + l, base + i, |k| valid[k - base])
                                    as u32;
                        }
                        v.push(pick);
                    }
                    (out, Some(acc)) => {
                        let value = match present.then(|| acc.finish(agg.function)) {
                            None => AggOut::Null,
                            Some(Ok(v)) => v,
                            Some(Err(_)) => {
                                chunk.overflow = true;
                                AggOut::Null
                            }
                        };
                        match (out, value) {
                            (Outs::Int(v), AggOut::Int(x)) => v.push(Some(x)),
                            (Outs::Float(v), AggOut::Float(x)) => v.push(Some(x)),
                            (Outs::Int(v), _) => v.push(None),
                            (Outs::Float(v), _) => v.push(None),
                            (Outs::Pick(_), _) => unreachable!("matched above"),
                        }
                    }
                    (_, None) => unreachable!("only last has no accumulator"),
                }
            }
        }
    }
    chunk
}

/// Sort the routed entries and sweep every group's queries, splitting groups over
/// `threads`; the outputs come back in entity order. `value_types` are the features'
/// output types.
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer(
    parts: Vec<Vec<Entry>>,
    batches: &[SourceBatch],
    queries: &Queries,
    n_groups: usize,
    aggs: &[AggPlan],
    ttl_us: Option<i64>,
    value_types: &[DataType],
    threads: usize,
) -> Result<Answer> {
    let (mut entries, offsets) = sort_entries(parts, n_groups);

    // Split groups into chunks of similar entry counts, one per thread.
    let threads = threads.max(1);
    let total = entries.len().max(1);
    let mut bounds = vec![0usize];
    for g in 0..n_groups {
        let target = total * bounds.len() / threads;
        if offsets[g + 1] >= target && bounds.len() < threads && g + 1 < n_groups {
            bounds.push(g + 1);
        }
    }
    bounds.push(n_groups);
    bounds.dedup();

    // Sort within groups, in parallel over the chunks.
    std::thread::scope(|s| {
        let mut rest: &mut [Entry] = &mut entries;
        let mut consumed = 0;
        for w in bounds.windows(2) {
            let (a, b) = (offsets[w[0]], offsets[w[1]]);
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(b - consumed);
            rest = tail;
            consumed = b;
            let offs = &offsets[w[0]..=w[1]];
            s.spawn(move || sort_groups(mine, offs, a));
        }
    });

    let sorted = Sorted {
        entries,
        offsets,
        batches,
    };
    let chunks: Vec<Chunk> = std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let (g0, g1) = (w[0], w[1]);
                let (sorted, queries) = (&sorted, queries);
                s.spawn(move || {
                    let range = sorted.offsets[g0]..sorted.offsets[g1];
                    let columns: Vec<Column<'_>> = aggs
                        .iter()
                        .enumerate()
                        .map(|(k, a)| gather_column(sorted, k, &a.input, range.clone()))
                        .collect();
                    sweep(sorted, range, g0..g1, queries, aggs, ttl_us, &columns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sweep thread panicked"))
            .collect()
    });
    if chunks.iter().any(|c| c.overflow) {
        return exec_err!("{INT_SUM_OVERFLOW}");
    }

    // Sorted order: the chunks, then the null-key group (NOT_FOUND).
    let null_q = queries.offsets[n_groups + 1] - queries.offsets[n_groups];
    let mut status: Vec<u8> = Vec::with_capacity(queries.order.len());
    let mut event_ts: Vec<Option<i64>> = Vec::with_capacity(queries.order.len());
    for c in &chunks {
        status.extend_from_slice(&c.status);
        event_ts.extend_from_slice(&c.event_ts);
    }
    status.extend(std::iter::repeat_n(Status::NotFound as u8, null_q));
    event_ts.extend(std::iter::repeat_n(None, null_q));
    let (inverse, status, event_ts) = finish(&status, event_ts, queries)?;

    let mut chunks = chunks;
    let mut values = Vec::with_capacity(aggs.len());
    for (k, agg) in aggs.iter().enumerate() {
        let parts: Vec<Outs> = chunks
            .iter_mut()
            .map(|c| std::mem::replace(&mut c.outs[k], Outs::Pick(Vec::new())))
            .collect();
        let column: ArrayRef = match (agg.function, &value_types[k]) {
            (AggFunction::Last, dt) => {
                let mut picks: Vec<u32> = parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Outs::Pick(v) => v,
                        _ => Vec::new(),
                    })
                    .collect();
                picks.extend(std::iter::repeat_n(NONE, null_q));
                let Input::Validity(c) = agg.input else {
                    unreachable!("last reads validity")
                };
                gather_picks(&sorted, &picks, c, dt, &inverse)?
            }
            (_, DataType::Int64) => {
                let mut v: Vec<Option<i64>> = parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Outs::Int(v) => v,
                        _ => Vec::new(),
                    })
                    .collect();
                v.extend(std::iter::repeat_n(None, null_q));
                take(&Int64Array::from(v), &inverse, None)?
            }
            _ => {
                let mut v: Vec<Option<f64>> = parts
                    .into_iter()
                    .flat_map(|p| match p {
                        Outs::Float(v) => v,
                        _ => Vec::new(),
                    })
                    .collect();
                v.extend(std::iter::repeat_n(None, null_q));
                take(&Float64Array::from(v), &inverse, None)?
            }
        };
        values.push(column);
    }
    Ok(Answer {
        status,
        event_ts,
        values,
    })
}

/// Values of column `c` at the picked entries (null where none), in entity order.
fn gather_picks(
    sorted: &Sorted<'_>,
    picks: &[u32],
    c: usize,
    dt: &DataType,
    inverse: &UInt32Array,
) -> Result<ArrayRef> {
    let nulls = new_null_array(dt, 1);
    let mut arrays: Vec<&dyn Array> = sorted
        .batches
        .iter()
        .map(|b| b.batch.column(c).as_ref())
        .collect();
    arrays.push(nulls.as_ref());
    let null_src = arrays.len() - 1;
    let indices: Vec<(usize, usize)> = inverse
        .values()
        .iter()
        .map(|&pos| match picks[pos as usize] {
            NONE => (null_src, 0),
            e => {
                let e = &sorted.entries[e as usize];
                (e.batch as usize, e.row as usize)
            }
        })
        .collect();
    Ok(interleave(&arrays, &indices)?)
}
