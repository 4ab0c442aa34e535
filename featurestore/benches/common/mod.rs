//! Shared by the bench binaries: data generation, Delta writes, memory and timing.
#![allow(dead_code)] // each bench uses a subset

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::protocol::SaveMode;
use quiver_featurestore::delta;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) const DAY: i64 = 86_400_000_000;

pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `--name N` from the command line, or `default`.
pub(crate) fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// Write `batches` as one Delta commit each.
pub(crate) async fn write_delta(root: &Path, rel: &str, batches: Vec<RecordBatch>) {
    let url = delta::table_url(root, rel).unwrap();
    for (i, b) in batches.into_iter().enumerate() {
        let mode = if i == 0 {
            SaveMode::Overwrite
        } else {
            SaveMode::Append
        };
        delta::write(&url, vec![b], mode)
            .await
            .expect("write delta");
    }
}

/// `n` transactions of `users` users in `[start, start + span)`, time-ordered, in 4
/// batches: user_id, ts, amount, device_id. Activity is skewed: user = users * u^2.
pub(crate) fn transactions(
    users: usize,
    n: usize,
    start: i64,
    span: i64,
    seed: u64,
) -> Vec<RecordBatch> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut txn: Vec<(i64, i64)> = (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            (
                (users as f64 * u * u) as i64,
                start + rng.random_range(0..span),
            )
        })
        .collect();
    txn.sort_unstable_by_key(|r| r.1);
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", ts_type(), false),
        Field::new("amount", DataType::Float64, false),
        Field::new("device_id", DataType::Utf8, false),
    ]));
    txn.chunks(txn.len().div_ceil(4))
        .map(|c| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.0))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(c.iter().map(|r| r.1))
                            .with_timezone("UTC"),
                    ),
                    Arc::new(Float64Array::from_iter_values(
                        c.iter()
                            .map(|r| (r.0 % 97) as f64 * 1.25 + (r.1 % 1000) as f64 / 100.0),
                    )),
                    Arc::new(StringArray::from_iter_values(c.iter().map(|r| {
                        format!("dev-{:x}", (r.0 * 7 + (r.1 / DAY) % 3) % 1_000_003)
                    }))),
                ],
            )
            .unwrap()
        })
        .collect()
}

/// Peak resident set size of this process since the last reset.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reset the peak RSS counter (Linux).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The `p`-th percentile (0..=100) of sorted `xs`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
