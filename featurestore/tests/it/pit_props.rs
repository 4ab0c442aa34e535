//! The compiled point-in-time join against a naive reference written as plain loops.
//!
//! Random data on an hour grid so that ties on timestamps, rows exactly on window
//! bounds (windows are whole hours), keys absent from the source, entity times before
//! any data, TTL expiry and nulls in aggregated columns all occur often.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::datasource::MemTable;
use proptest::prelude::*;
use quiver_featurestore::plan::{self, AggSpec, PitMode, PitSpec, PointInTimeNode};
use quiver_featurestore::spec::AggFunction;

use crate::common::{HOUR, ts_type};

#[derive(Debug, Clone)]
struct Row {
    key: i64,
    ts: i64,
    created: i64,
    v: Option<f64>,
    i: Option<i64>,
    s: Option<String>,
}

#[derive(Debug, Clone)]
struct Case {
    rows: Vec<Row>,
    /// Source partitions: row i goes to partition `i % parts`.
    parts: usize,
    with_created: bool,
    queries: Vec<(Option<i64>, i64)>,
    ttl: Option<i64>,
    windows: Vec<Option<i64>>,
}

const WINDOWS: [Option<i64>; 5] = [
    None,
    Some(HOUR),
    Some(3 * HOUR),
    Some(10 * HOUR),
    Some(24 * HOUR),
];

fn case() -> impl Strategy<Value = Case> {
    let row = (
        0..4i64,
        0..40i64,
        0..3i64,
        prop::option::weighted(0.8, -3i8..4),
        prop::option::weighted(0.8, -5i64..5),
        prop::option::weighted(0.8, prop::sample::select(vec!["a", "b", "c"])),
    );
    (
        prop::collection::vec(row, 0..60),
        1..4usize,
        any::<bool>(),
        prop::collection::vec((prop::option::weighted(0.95, 0..6i64), -5..45i64), 1..30),
        prop::option::of(1..30i64),
        prop::collection::vec(prop::sample::select(WINDOWS.to_vec()), 14),
    )
        .prop_map(|(rows, parts, with_created, queries, ttl, windows)| Case {
            rows: rows
                .into_iter()
                .map(|(key, h, c, v, i, s)| Row {
                    key,
                    ts: h * HOUR,
                    created: if with_created { c } else { 0 },
                    v: v.map(|x| x as f64 * 1.5),
                    i,
                    s: s.map(str::to_owned),
                })
                .collect(),
            parts,
            with_created,
            queries: queries.into_iter().map(|(k, h)| (k, h * HOUR)).collect(),
            ttl: ttl.map(|h| h * HOUR),
            windows,
        })
}

/// The aggregates under test: (function, column).
const AGGS: [(AggFunction, Option<&str>); 14] = [
    (AggFunction::Count, None),
    (AggFunction::Count, Some("v")),
    (AggFunction::Sum, Some("v")),
    (AggFunction::Avg, Some("v")),
    (AggFunction::Min, Some("v")),
    (AggFunction::Max, Some("v")),
    (AggFunction::Stddev, Some("v")),
    (AggFunction::Sum, Some("i")),
    (AggFunction::Min, Some("i")),
    (AggFunction::Max, Some("i")),
    (AggFunction::Avg, Some("i")),
    (AggFunction::CountDistinct, Some("s")),
    (AggFunction::Last, Some("s")),
    (AggFunction::Last, Some("v")),
];

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Num(f64),
    Str(String),
}

fn close(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => {
            (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs())) || (x.is_nan() && y.is_nan())
        }
        _ => a == b,
    }
}

fn src_batch(rows: &[&Row], with_created: bool) -> RecordBatch {
    let mut fields = vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
    ];
    let mut cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.key))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts))
                .with_timezone("UTC"),
        ),
    ];
    if with_created {
        fields.push(Field::new("created", ts_type(), false));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.created))
                .with_timezone("UTC"),
        ));
    }
    fields.extend([
        Field::new("v", DataType::Float64, true),
        Field::new("i", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]);
    cols.push(Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.v))));
    cols.push(Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.i))));
    cols.push(Arc::new(StringArray::from_iter(
        rows.iter().map(|r| r.s.as_deref()),
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

fn spec(c: &Case, mode: PitMode) -> PitSpec {
    PitSpec {
        view: "v".into(),
        keys: vec!["user_id".into()],
        entity_ts: "event_timestamp".into(),
        source_ts: "ts".into(),
        source_created: c.with_created.then(|| "created".into()),
        ttl_us: c.ttl,
        mode,
        tie_columns: Vec::new(),
        fallback_zero: false,
    }
}

/// Run the operator through DataFusion on in-memory tables.
fn run(c: &Case, mode: PitMode) -> RecordBatch {
    let entity = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter(c.queries.iter().map(|q| q.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(c.queries.iter().map(|q| q.1))
                    .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    let parts: Vec<Vec<RecordBatch>> = (0..c.parts)
        .map(|p| {
            let rows: Vec<&Row> = c
                .rows
                .iter()
                .enumerate()
                .filter(|(i, _)| i % c.parts == p)
                .map(|(_, r)| r)
                .collect();
            // Two batches per partition when there is enough data.
            let mid = rows.len() / 2;
            vec![
                src_batch(&rows[..mid], c.with_created),
                src_batch(&rows[mid..], c.with_created),
            ]
        })
        .collect();
    join(parts, entity, spec(c, mode))
}

fn values(batch: &RecordBatch, name: &str) -> Vec<Val> {
    let col = batch.column_by_name(name).unwrap();
    if matches!(col.data_type(), DataType::Utf8) {
        let s = col.as_string::<i32>();
        return (0..s.len())
            .map(|i| {
                if s.is_null(i) {
                    Val::Null
                } else {
                    Val::Str(s.value(i).to_owned())
                }
            })
            .collect();
    }
    let f = cast(col, &DataType::Float64).unwrap();
    let f = f.as_primitive::<Float64Type>();
    (0..f.len())
        .map(|i| {
            if f.is_null(i) {
                Val::Null
            } else {
                Val::Num(f.value(i))
            }
        })
        .collect()
}

// ---- the reference: plain loops ------------------------------------------------------

fn visible(c: &Case, key: Option<i64>, t: i64) -> Vec<&Row> {
    let Some(key) = key else { return Vec::new() };
    c.rows
        .iter()
        .filter(|r| r.key == key && r.ts <= t)
        .collect()
}

fn status(c: &Case, rows: &[&Row], t: i64) -> &'static str {
    match rows.iter().map(|r| r.ts).max() {
        None => "NOT_FOUND",
        Some(newest) if c.ttl.is_some_and(|ttl| newest < t - ttl) => "EXPIRED",
        Some(_) => "PRESENT",
    }
}

fn cmp_opt_f(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.total_cmp(&y),
    }
}

fn reference_agg(
    func: AggFunction,
    col: Option<&str>,
    window: Option<i64>,
    rows: &[&Row],
    t: i64,
) -> Val {
    let w: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| window.is_none_or(|w| r.ts > t - w))
        .collect();
    let nums: Vec<f64> = match col {
        Some("v") => w.iter().filter_map(|r| r.v).collect(),
        Some("i") => w.iter().filter_map(|r| r.i.map(|x| x as f64)).collect(),
        _ => Vec::new(),
    };
    let num = |x: Option<f64>| x.map(Val::Num).unwrap_or(Val::Null);
    match (func, col) {
        (AggFunction::Count, None) => Val::Num(w.len() as f64),
        (AggFunction::Count, Some(_)) => {
            Val::Num(w.iter().filter(|r| r.v.is_some()).count() as f64)
        }
        (AggFunction::Sum, _) => Val::Num(nums.iter().sum()),
        (AggFunction::Avg, _) => {
            num((!nums.is_empty()).then(|| nums.iter().sum::<f64>() / nums.len() as f64))
        }
        (AggFunction::Min, _) => num(nums.iter().copied().min_by(f64::total_cmp)),
        (AggFunction::Max, _) => num(nums.iter().copied().max_by(f64::total_cmp)),
        (AggFunction::Stddev, _) => num((nums.len() >= 2).then(|| {
            let mean = nums.iter().sum::<f64>() / nums.len() as f64;
            (nums.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (nums.len() - 1) as f64)
                .sqrt()
        })),
        (AggFunction::CountDistinct, _) => {
            let mut seen: Vec<&str> = w.iter().filter_map(|r| r.s.as_deref()).collect();
            seen.sort();
            seen.dedup();
            Val::Num(seen.len() as f64)
        }
        (AggFunction::Last, Some("s")) => w
            .iter()
            .filter(|r| r.s.is_some())
            .max_by(|a, b| {
                (a.ts, a.created)
                    .cmp(&(b.ts, b.created))
                    .then(a.s.cmp(&b.s))
            })
            .map(|r| Val::Str(r.s.clone().unwrap()))
            .unwrap_or(Val::Null),
        (AggFunction::Last, _) => num(w
            .iter()
            .filter(|r| r.v.is_some())
            .max_by(|a, b| {
                (a.ts, a.created)
                    .cmp(&(b.ts, b.created))
                    .then(cmp_opt_f(a.v, b.v))
            })
            .and_then(|r| r.v)),
    }
}

fn agg_name(k: usize) -> String {
    format!("f{k}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn aggregates_match_the_reference(c in case()) {
        let mode = PitMode::Aggregate(
            AGGS.iter().enumerate().map(|(k, (f, col))| AggSpec { output: agg_name(k), function: *f, column: col.map(str::to_owned), window_us: c.windows[k] }).collect(),
        );
        let out = run(&c, mode);
        prop_assert_eq!(out.num_rows(), c.queries.len());
        let status_col = values(&out, "v__status");
        let event_ts = out.column_by_name("v__event_timestamp").unwrap().as_primitive::<arrow::datatypes::TimestampMicrosecondType>().clone();
        let cols: Vec<Vec<Val>> = (0..AGGS.len()).map(|k| values(&out, &agg_name(k))).collect();
        for (q, &(key, t)) in c.queries.iter().enumerate() {
            let rows = visible(&c, key, t);
            let st = status(&c, &rows, t);
            prop_assert_eq!(&status_col[q], &Val::Str(st.into()), "status of query {} {:?}", q, (key, t));
            let newest = rows.iter().map(|r| r.ts).max();
            prop_assert_eq!(event_ts.is_valid(q).then(|| event_ts.value(q)), newest, "value time of query {}", q);
            for (k, (f, col)) in AGGS.iter().enumerate() {
                let want = if st == "PRESENT" { reference_agg(*f, *col, c.windows[k], &rows, t) } else { Val::Null };
                prop_assert!(close(&cols[k][q], &want), "{}({:?}) window {:?} query {} {:?}: got {:?}, want {:?}", f, col, c.windows[k], q, (key, t), cols[k][q], want);
            }
        }
    }

    #[test]
    fn as_of_columns_match_the_reference(c in case()) {
        let mode = PitMode::AsOf(vec![("v".into(), "v".into()), ("s".into(), "s".into()), ("i".into(), "i".into())]);
        let out = run(&c, mode);
        let got_v = values(&out, "v");
        let got_s = values(&out, "s");
        let got_i = values(&out, "i");
        for (q, &(key, t)) in c.queries.iter().enumerate() {
            let rows = visible(&c, key, t);
            let st = status(&c, &rows, t);
            let pick = if st == "PRESENT" {
                rows.iter().max_by(|a, b| (a.ts, a.created).cmp(&(b.ts, b.created)).then(cmp_opt_f(a.v, b.v)).then(a.s.cmp(&b.s)).then(a.i.cmp(&b.i))).copied()
            } else {
                None
            };
            let want_v = pick.and_then(|r| r.v).map(Val::Num).unwrap_or(Val::Null);
            let want_s = pick.and_then(|r| r.s.clone()).map(Val::Str).unwrap_or(Val::Null);
            let want_i = pick.and_then(|r| r.i).map(|x| Val::Num(x as f64)).unwrap_or(Val::Null);
            prop_assert!(close(&got_v[q], &want_v) && got_s[q] == want_s && close(&got_i[q], &want_i),
                "query {} {:?}: got ({:?}, {:?}, {:?}), want ({:?}, {:?}, {:?})", q, (key, t), got_v[q], got_s[q], got_i[q], want_v, want_s, want_i);
        }
    }
}

/// Run a point-in-time join of `spec` over one in-memory source batch and entity batch.
fn join_once(source: RecordBatch, entity: RecordBatch, spec: PitSpec) -> RecordBatch {
    join(vec![vec![source]], entity, spec)
}

/// Run a point-in-time join of `spec` through DataFusion over in-memory source
/// partitions and an entity batch. Every case also runs the physical plan after a
/// round trip through quiver's codec in a fresh session (as a distributed engine's
/// executor would), and must give the same rows.
fn join(parts: Vec<Vec<RecordBatch>>, entity: RecordBatch, spec: PitSpec) -> RecordBatch {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = plan::session();
        let schema = parts[0][0].schema();
        let source = ctx
            .read_table(Arc::new(MemTable::try_new(schema, parts).unwrap()))
            .unwrap()
            .into_unoptimized_plan();
        let entity = ctx.read_batch(entity).unwrap().into_unoptimized_plan();
        let node = PointInTimeNode::try_new(entity, source, spec)
            .unwrap()
            .into_plan();
        let df = ctx.execute_logical_plan(node).await.unwrap();
        let schema = Arc::new(df.schema().as_arrow().clone());
        let physical = df.clone().create_physical_plan().await.unwrap();
        let batches = df.collect().await.unwrap();
        let local = concat_batches(&schema, &batches).unwrap();
        let bytes = plan::portable::to_bytes(physical).unwrap();
        let elsewhere = datafusion::prelude::SessionContext::new();
        let decoded = plan::portable::from_bytes(&bytes, &elsewhere.task_ctx()).unwrap();
        let remote = datafusion::physical_plan::collect(decoded, elsewhere.task_ctx())
            .await
            .unwrap();
        assert_eq!(
            concat_batches(&schema, &remote).unwrap(),
            local,
            "the decoded plan gives the local rows"
        );
        local
    })
}

/// Entity rows (user_id, event_timestamp in µs).
fn entity_rows(keys: Vec<i64>, ts: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("event_timestamp", ts_type(), false),
        ])),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ],
    )
    .unwrap()
}

fn base_spec(mode: PitMode) -> PitSpec {
    PitSpec {
        view: "v".into(),
        keys: vec!["user_id".into()],
        entity_ts: "event_timestamp".into(),
        source_ts: "ts".into(),
        source_created: None,
        ttl_us: None,
        mode,
        tie_columns: Vec::new(),
        fallback_zero: false,
    }
}

#[test]
fn nanosecond_times_never_show_a_row_before_it_happened() {
    // Source times in nanoseconds: 1 µs + {-500, 0, +1, +999} ns. A request at exactly
    // 1 µs sees the first two; a request at 1 µs + 999 ns is rounded down to 1 µs and
    // sees the same two, never the rows after it.
    use arrow::array::TimestampNanosecondArray;
    let ns_type = DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, Some("UTC".into()));
    let t = 1_000_000_000i64; // 1,000,000 µs, in ns
    let source = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("ts", ns_type.clone(), false),
            Field::new("v", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 1, 1, 1])),
            Arc::new(
                TimestampNanosecondArray::from(vec![t - 500, t, t + 1, t + 999])
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(vec![1.0, 10.0, 100.0, 1000.0])),
        ],
    )
    .unwrap();
    let entity = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("event_timestamp", ns_type, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 1, 1])),
            Arc::new(
                TimestampNanosecondArray::from(vec![t, t + 999, t + 1000]).with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    let out = join_once(
        source,
        entity,
        base_spec(PitMode::Aggregate(vec![AggSpec {
            output: "s".into(),
            function: AggFunction::Sum,
            column: Some("v".into()),
            window_us: None,
        }])),
    );
    let s = cast(out.column_by_name("s").unwrap(), &DataType::Float64).unwrap();
    let s = s.as_primitive::<Float64Type>();
    assert_eq!((s.value(0), s.value(1), s.value(2)), (11.0, 11.0, 1111.0));
}

#[test]
fn tied_rows_resolve_by_every_column_whatever_is_requested() {
    // Two rows of one key at the same time: (a=1, b="z") and (a=2, b="a"). The row with
    // the larger `a` wins, so asking for `b` alone must give "a", not "z".
    let source = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("ts", ts_type(), false),
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1, 1])),
            Arc::new(TimestampMicrosecondArray::from(vec![HOUR, HOUR]).with_timezone("UTC")),
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec!["z", "a"])),
        ],
    )
    .unwrap();
    let entity = entity_rows(vec![1], vec![2 * HOUR]);
    let pick = |mode: PitMode| {
        let mut spec = base_spec(mode);
        spec.tie_columns = vec!["a".into(), "b".into()];
        join_once(source.clone(), entity.clone(), spec)
    };
    let both = pick(PitMode::AsOf(vec![
        ("a".into(), "a".into()),
        ("b".into(), "b".into()),
    ]));
    let only_b = pick(PitMode::AsOf(vec![("b".into(), "b".into())]));
    let b = |batch: &RecordBatch| {
        batch
            .column_by_name("b")
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string()
    };
    assert_eq!(b(&both), "a");
    assert_eq!(b(&only_b), "a");
}

#[test]
fn a_windowed_sum_that_overflowed_recovers_and_stddev_slides() {
    // Two values of 1.5e308 overflow a 2-hour sum to +inf; once they leave the window
    // the sum is exactly the rest again (a running sum used to stay at +inf).
    let v = [1.5e308, 1.5e308, 2.0, 3.0, 5.0];
    let ts: Vec<i64> = (0..v.len() as i64).map(|i| i * HOUR).collect();
    let source = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, false),
            Field::new("ts", ts_type(), false),
            Field::new("v", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1; v.len()])),
            Arc::new(TimestampMicrosecondArray::from(ts.clone()).with_timezone("UTC")),
            Arc::new(Float64Array::from(v.to_vec())),
        ],
    )
    .unwrap();
    let entity = entity_rows(vec![1; v.len()], ts);
    let agg = |output: &str, function| AggSpec {
        output: output.into(),
        function,
        column: Some("v".into()),
        window_us: Some(2 * HOUR),
    };
    let out = join_once(
        source,
        entity,
        base_spec(PitMode::Aggregate(vec![
            agg("s", AggFunction::Sum),
            agg("sd", AggFunction::Stddev),
        ])),
    );
    let col = |name: &str| {
        let c = cast(out.column_by_name(name).unwrap(), &DataType::Float64).unwrap();
        let c = c.as_primitive::<Float64Type>();
        (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i)))
            .collect::<Vec<_>>()
    };
    // Windows (t - 2h, t]: {a}, {a, b}, {b, 2}, {2, 3}, {3, 5}.
    assert_eq!(
        col("s"),
        [
            Some(1.5e308),
            Some(f64::INFINITY),
            Some(1.5e308 + 2.0),
            Some(5.0),
            Some(8.0)
        ]
    );
    let sd = col("sd");
    assert_eq!(sd[0], None);
    assert_eq!(sd[1], Some(0.0));
    assert!((sd[3].unwrap() - 0.5f64.sqrt()).abs() < 1e-15, "{sd:?}");
    assert!((sd[4].unwrap() - 2f64.sqrt()).abs() < 1e-15, "{sd:?}");
}
