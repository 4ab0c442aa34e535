//! The as-of path of the point-in-time join (column and SQL views): the newest row at
//! or before each query time, without keeping or sorting the source.
//!
//! ```text
//! queries of one key, sorted:     t0        t1              t2
//! buckets:                 (-inf, t0] (t0, t1]       (t1, t2]     (t2, inf): dropped
//! ```
//!
//! Each source row lands in the bucket of the first query at or after its event time,
//! where only the best row (newest event time, then created time, then the values of
//! *all* the view's columns, whatever was requested) is kept. A query's row is then the best of the last non-empty bucket at or before it:
//! every row in a later bucket is strictly newer than every row in an earlier one.
//! Cost: one hash lookup and one binary search per source row; memory: one slot per
//! query and source partition, plus the source batches that hold a kept row.

use std::cmp::Ordering;

use arrow::array::{Array, RecordBatch, new_null_array};
use arrow::compute::interleave;
use arrow::datatypes::DataType;
use datafusion::common::Result;

use super::kernel::{
    Answer, KeyIndex, NO_GROUP, Queries, SourceLayout, Status, cmp_rows, finish, route,
};
use crate::agg::{pick_order, status_at};

const NONE: u32 = u32::MAX;

/// The best row of one bucket so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Best {
    ts: i64,
    created: i64,
    batch: u32,
    row: u32,
}

const EMPTY: Best = Best {
    ts: i64::MIN,
    created: i64::MIN,
    batch: NONE,
    row: 0,
};

/// One source partition's buckets and the batches their rows live in.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) best: Vec<Best>,
    pub(crate) batches: Vec<RecordBatch>,
}

impl Part {
    pub(crate) fn new(queries: usize) -> Self {
        Self {
            best: vec![EMPTY; queries],
            batches: Vec::new(),
        }
    }
}

/// `candidate` beats `current` in the order of [`pick_order`].
fn beats(candidate: &Best, current: &Best, cols: &[usize], batches: &[RecordBatch]) -> bool {
    current.batch == NONE
        || pick_order(
            (candidate.ts, candidate.created),
            (current.ts, current.created),
            || {
                cmp_rows(
                    cols,
                    (&batches[candidate.batch as usize], candidate.row),
                    (&batches[current.batch as usize], current.row),
                )
            },
        ) == Ordering::Greater
}

/// Put the rows of one source batch into `part`'s buckets; returns how many rows
/// matched an asked-for key at or before one of its query times.
pub(crate) fn scan_batch(
    index: &KeyIndex,
    layout: &SourceLayout,
    tie: &[usize],
    queries: &Queries,
    batch: RecordBatch,
    groups: &mut Vec<u32>,
    part: &mut Part,
) -> Result<usize> {
    let (ts, created) = route(index, layout, &batch, groups)?;
    let batch_no = part.batches.len() as u32;
    part.batches.push(batch);
    let (mut matched, mut kept) = (0, false);
    for (row, &g) in groups.iter().enumerate() {
        if g == NO_GROUP || ts.is_null(row) {
            continue;
        }
        let t = ts.value(row);
        let (qs, qe) = (queries.offsets[g as usize], queries.offsets[g as usize + 1]);
        let j = qs + queries.t[qs..qe].partition_point(|&q| q < t);
        if j == qe {
            continue; // newer than every query of its key
        }
        matched += 1;
        let candidate = Best {
            ts: t,
            created: match &created {
                Some(c) if c.is_valid(row) => c.value(row),
                Some(_) => i64::MIN,
                None => 0,
            },
            batch: batch_no,
            row: row as u32,
        };
        if beats(&candidate, &part.best[j], tie, &part.batches) {
            part.best[j] = candidate;
            kept = true;
        }
    }
    if !kept {
        part.batches.pop();
    }
    Ok(matched)
}

/// Merge the partitions' buckets and answer every entity row.
pub(crate) fn answer(
    parts: Vec<Part>,
    queries: &Queries,
    n_groups: usize,
    cols: &[usize],
    tie: &[usize],
    ttl_us: Option<i64>,
    value_types: &[DataType],
) -> Result<Answer> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut best = vec![EMPTY; queries.order.len()];
    for part in parts {
        let offset = batches.len() as u32;
        batches.extend(part.batches);
        for (slot, mut b) in best.iter_mut().zip(part.best) {
            if b.batch == NONE {
                continue;
            }
            b.batch += offset;
            if beats(&b, slot, tie, &batches) {
                *slot = b;
            }
        }
    }
    let n = queries.order.len();
    let mut status = Vec::with_capacity(n);
    let mut event_ts = Vec::with_capacity(n);
    let mut picks: Vec<Best> = Vec::with_capacity(n);
    for g in 0..=n_groups {
        let mut carry = EMPTY;
        for j in queries.offsets[g]..queries.offsets[g + 1] {
            if g < n_groups && best[j].batch != NONE {
                carry = best[j];
            }
            let t = queries.t[j];
            let st = status_at((carry.batch != NONE).then_some(carry.ts), t, ttl_us);
            status.push(st as u8);
            event_ts.push((carry.batch != NONE).then_some(carry.ts));
            picks.push(if st == Status::Present { carry } else { EMPTY });
        }
    }
    let (inverse, status, event_ts) = finish(&status, event_ts, queries)?;
    let mut values = Vec::with_capacity(cols.len());
    for (&c, dt) in cols.iter().zip(value_types) {
        let nulls = new_null_array(dt, 1);
        let mut arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
        arrays.push(nulls.as_ref());
        let null_src = arrays.len() - 1;
        let indices: Vec<(usize, usize)> = inverse
            .values()
            .iter()
            .map(|&pos| {
                let p = &picks[pos as usize];
                if p.batch == NONE {
                    (null_src, 0)
                } else {
                    (p.batch as usize, p.row as usize)
                }
            })
            .collect();
        values.push(interleave(&arrays, &indices)?);
    }
    Ok(Answer {
        status,
        event_ts,
        values,
    })
}
