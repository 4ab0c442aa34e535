//! The audit log of scored requests: an append-only Delta table, partitioned by day.
//!
//! Every row `quiver serve` scores gets a request id; the id, the time, the tenant, the
//! entity key, the model inputs, the model version and alias, the score and (when asked)
//! the contributions are appended to `<repo>/.quiver/audit` by a background writer that
//! commits at least once a second (or every [`AuditConfig::max_batch`] rows). The score
//! response is sent only after its rows are queued, the queue is bounded (a full queue
//! makes requests wait, it never drops rows), and shutdown flushes what is queued: the
//! rows at risk are those of the last second before a crash.
//!
//! Request ids start with the time in milliseconds (hex), so [`lookup`] reads only the
//! day's partition: one request is found in well under a second.
//!
//! ```no_run
//! # async fn run() -> quiver_featurestore::Result<()> {
//! let found = quiver_featurestore::audit::lookup(
//!     std::path::Path::new("repo/.quiver/audit"),
//!     "19a8e2b1c4f-5e0c1d2a3b4c5d6e-0",
//! )
//! .await?;
//! if let Some(rec) = found {
//!     println!("{} scored {} with {}@{}", rec.request_id, rec.score, rec.model, rec.model_version);
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::delta::Location;
use crate::{Error, Result};

/// One scored row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// `<time ms, hex>-<random, hex>-<row>`.
    pub request_id: String,
    /// When it was scored (UTC microseconds).
    pub time_us: i64,
    /// Who asked.
    pub tenant: String,
    /// Model name.
    pub model: String,
    /// Version that scored it.
    pub model_version: u64,
    /// Alias that routed to it (`champion`, `challenger`).
    pub model_alias: String,
    /// The entity key, as a JSON object of key columns.
    pub entity: String,
    /// The model's inputs, as a JSON object of feature name to value, in model order.
    pub inputs: String,
    /// The score.
    pub score: f64,
    /// Per-feature contributions (JSON), when the request asked for them.
    pub contributions: Option<String>,
}

/// How the writer batches.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditConfig {
    /// Commit when this many rows are waiting (default 8192).
    pub max_batch: usize,
    /// ... or when the oldest has waited this long (default 1 s).
    pub max_delay: Duration,
    /// Rows queued and not yet committed before requests wait for the writer (default
    /// 65,536).
    pub queue_rows: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_batch: 8192,
            max_delay: Duration::from_secs(1),
            queue_rows: 65_536,
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("tenant", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("model_version", DataType::UInt64, false),
        Field::new("model_alias", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("inputs", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("contributions", DataType::Utf8, true),
        Field::new("day", DataType::Utf8, false),
    ]))
}

fn day_of(time_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(time_us)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

fn to_batch(rows: &[AuditRecord]) -> Result<RecordBatch> {
    let col = |f: &dyn Fn(&AuditRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        col(&|r| &r.request_id),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time_us))
                .with_timezone("UTC"),
        ),
        col(&|r| &r.tenant),
        col(&|r| &r.model),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.model_version),
        )),
        col(&|r| &r.model_alias),
        col(&|r| &r.entity),
        col(&|r| &r.inputs),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.contributions.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| day_of(r.time_us)),
        )),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// The audit table of a local folder (created when missing).
fn local(path: &Path) -> Result<Location> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
    let abs = path.canonicalize().map_err(|e| Error::io(path, e))?;
    url::Url::from_directory_path(&abs)
        .map(Location::from_url)
        .map_err(|()| Error::InvalidRequest(format!("bad audit path {}", path.display())))
}

/// Where the audit table is: a local folder, or a URL on object storage (its store's
/// options from the environment), as `quiver serve --audit-log` takes it.
pub fn location(text: &str) -> Result<Location> {
    if text.contains("://") {
        Location::parse(Path::new(""), text)
            .map_err(|m| Error::InvalidRequest(format!("audit log {text}: {m}")))
    } else {
        local(Path::new(text))
    }
}

/// One commit of `rows`; an append that loses a race with another writer (a second
/// replica auditing to the same table) retries on the next version.
async fn append(location: &Location, rows: &[AuditRecord]) -> Result<()> {
    crate::delta::write_partitioned(location, vec![to_batch(rows)?], SaveMode::Append, &["day"])
        .await?;
    Ok(())
}

/// Where an audit log is written.
#[derive(Debug, Clone)]
pub enum AuditTarget {
    /// A local folder (created when missing).
    Folder(PathBuf),
    /// A table at a location, local or on object storage.
    Table(Location),
}

/// A handle to queue rows; cloned into every request.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<(Vec<AuditRecord>, OwnedSemaphorePermit)>,
    /// One permit per queued, uncommitted row: the real bound of the queue.
    rows: Arc<Semaphore>,
    queue_rows: usize,
    location: Location,
}

/// The writer task; [`AuditWriter::finish`] flushes and waits.
#[derive(Debug)]
pub struct AuditWriter {
    task: tokio::task::JoinHandle<()>,
}

impl AuditLog {
    /// Start a writer appending to the Delta table in the local folder `path`
    /// (created when missing).
    pub fn start(path: impl Into<PathBuf>, config: AuditConfig) -> Result<(Self, AuditWriter)> {
        Self::start_at(local(&path.into())?, config)
    }

    /// Start a writer for `target`.
    pub fn start_target(target: &AuditTarget, config: AuditConfig) -> Result<(Self, AuditWriter)> {
        match target {
            AuditTarget::Folder(p) => Self::start(p.clone(), config),
            AuditTarget::Table(l) => Self::start_at(l.clone(), config),
        }
    }

    /// Start a writer appending to the Delta table at `location`, local or on object
    /// storage (created when missing).
    pub fn start_at(location: Location, config: AuditConfig) -> Result<(Self, AuditWriter)> {
        let queue_rows = config.queue_rows.clamp(1, Semaphore::MAX_PERMITS);
        let rows = Arc::new(Semaphore::new(queue_rows));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_writer(location.clone(), config, rx));
        Ok((
            Self {
                tx,
                rows,
                queue_rows,
                location,
            },
            AuditWriter { task },
        ))
    }

    /// The table's location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Queue `rows`; waits while the queue is full. Fails only when the writer stopped.
    pub async fn record(&self, rows: Vec<AuditRecord>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let stopped = || Error::InvalidRequest("the audit writer has stopped".into());
        // A request larger than the whole queue takes all of it.
        let n = rows.len().min(self.queue_rows) as u32;
        let permit = self
            .rows
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| stopped())?;
        self.tx.send((rows, permit)).map_err(|_| stopped())
    }
}

impl AuditWriter {
    /// Wait for the writer to commit everything queued (every [`AuditLog`] handle must
    /// be dropped first, or this waits for them), at most `timeout`.
    pub async fn finish(self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::error!("the audit writer did not finish in time; queued rows are lost");
        }
    }
}

async fn run_writer(
    location: Location,
    config: AuditConfig,
    mut rx: mpsc::UnboundedReceiver<(Vec<AuditRecord>, OwnedSemaphorePermit)>,
) {
    let mut pending: Vec<AuditRecord> = Vec::new();
    // Released on commit: while commits fail, the permits stay taken and new requests
    // wait in `record` instead of memory growing.
    let mut held: Vec<OwnedSemaphorePermit> = Vec::new();
    loop {
        let deadline = tokio::time::sleep(config.max_delay);
        tokio::pin!(deadline);
        let closed = loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some((rows, permit)) => {
                        pending.extend(rows);
                        held.push(permit);
                        if pending.len() >= config.max_batch {
                            break false;
                        }
                    }
                    None => break true,
                },
                _ = &mut deadline => break false,
            }
        };
        if !pending.is_empty() {
            // A failed commit is retried with the next one; rows are kept meanwhile.
            match append(&location, &pending).await {
                Ok(()) => {
                    pending.clear();
                    held.clear();
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = pending.len(), "audit commit failed; retrying with the next");
                    if !closed {
                        tokio::time::sleep(config.max_delay.min(Duration::from_secs(1))).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if append(&location, &pending).await.is_ok() {
                            pending.clear();
                            held.clear();
                        }
                    }
                }
            }
        }
        if closed {
            if !pending.is_empty() {
                tracing::error!(
                    rows = pending.len(),
                    "audit rows could not be committed at shutdown"
                );
            }
            return;
        }
    }
}

/// A fresh request id for rows scored now: `<ms hex>-<random hex>`; append `-<row>`.
pub fn new_request_prefix(now_us: i64) -> String {
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness");
    format!(
        "{:x}-{}",
        now_us.div_euclid(1000).max(0),
        hex::encode(bytes)
    )
}

/// Largest request id accepted by [`lookup`].
const MAX_ID: usize = 128;

/// The time (ms) a request id starts with, after checking its shape.
fn check_id(request_id: &str) -> Result<i64> {
    if request_id.is_empty()
        || request_id.len() > MAX_ID
        || !request_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(Error::InvalidRequest(format!(
            "`{}` is not a request id (ids look like 19a8e2b1c4f-5e0c1d2a3b4c5d6e-0)",
            request_id.chars().take(MAX_ID).collect::<String>()
        )));
    }
    request_id
        .split('-')
        .next()
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .ok_or_else(|| Error::InvalidRequest(format!("`{request_id}` does not start with a time")))
}

/// Find one scored row by its request id in the audit table in the local folder `path`
/// (`None` when there is no audit table yet).
pub async fn lookup(path: &Path, request_id: &str) -> Result<Option<AuditRecord>> {
    let location = Location::parse(Path::new(""), &path.display().to_string())
        .map_err(|m| Error::InvalidRequest(format!("audit log {}: {m}", path.display())))?;
    lookup_at(&location, request_id).await
}

/// [`lookup`] in the audit table at `location`, local or on object storage.
pub async fn lookup_at(location: &Location, request_id: &str) -> Result<Option<AuditRecord>> {
    let ms = check_id(request_id)?;
    if location.is_local()
        && !location
            .url
            .to_file_path()
            .is_ok_and(|p| p.join("_delta_log").is_dir())
    {
        return Ok(None);
    }
    let table = crate::delta::open(location, None).await?;
    let ctx = SessionContext::new();
    table.register(&ctx, "audit").await?;
    let day = day_of(ms.saturating_mul(1000));
    let df = ctx.table("audit").await?.filter(
        datafusion::prelude::col("day")
            .eq(datafusion::prelude::lit(day))
            .and(datafusion::prelude::col("request_id").eq(datafusion::prelude::lit(request_id))),
    )?;
    let batches = df.collect().await?;
    for b in batches {
        if b.num_rows() == 0 {
            continue;
        }
        return Ok(Some(from_batch(&b, 0)?));
    }
    Ok(None)
}

fn from_batch(b: &RecordBatch, row: usize) -> Result<AuditRecord> {
    let s = |name: &str| -> Result<Option<String>> {
        let c = b
            .column_by_name(name)
            .ok_or_else(|| corrupt(format!("no column {name}")))?;
        let c = arrow::compute::cast(c, &DataType::Utf8)?;
        let c = c
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| corrupt(format!("column {name} is not text")))?;
        Ok(c.is_valid(row).then(|| c.value(row).to_owned()))
    };
    let req = |name: &str| -> Result<String> {
        s(name)?.ok_or_else(|| corrupt(format!("{name} is null")))
    };
    let time = b
        .column_by_name("time")
        .and_then(|c| arrow::compute::cast(c, &DataType::Int64).ok())
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(row))
        })
        .ok_or_else(|| corrupt("time"))?;
    let version = b
        .column_by_name("model_version")
        .and_then(|c| arrow::compute::cast(c, &DataType::UInt64).ok())
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<UInt64Array>()
                .map(|a| a.value(row))
        })
        .ok_or_else(|| corrupt("model_version"))?;
    let score = b
        .column_by_name("score")
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<Float64Array>()
                .map(|a| a.value(row))
        })
        .ok_or_else(|| corrupt("score"))?;
    Ok(AuditRecord {
        request_id: req("request_id")?,
        time_us: time,
        tenant: req("tenant")?,
        model: req("model")?,
        model_version: version,
        model_alias: req("model_alias")?,
        entity: req("entity")?,
        inputs: req("inputs")?,
        score,
        contributions: s("contributions")?,
    })
}

fn corrupt(message: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "audit table".into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, time_us: i64) -> AuditRecord {
        AuditRecord {
            request_id: id.into(),
            time_us,
            tenant: "bank_a".into(),
            model: "fraud".into(),
            model_version: 3,
            model_alias: "champion".into(),
            entity: r#"{"user_id":7}"#.into(),
            inputs: r#"{"txn_count_7d":2.0}"#.into(),
            score: 0.25,
            contributions: None,
        }
    }

    #[tokio::test]
    async fn rows_are_committed_and_found_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit");
        let (log, writer) = AuditLog::start(
            &path,
            AuditConfig {
                max_batch: 3,
                max_delay: Duration::from_millis(50),
                queue_rows: 16,
            },
        )
        .unwrap();
        let now = chrono::Utc::now().timestamp_micros();
        let prefix = new_request_prefix(now);
        let rows: Vec<AuditRecord> = (0..7).map(|i| rec(&format!("{prefix}-{i}"), now)).collect();
        log.record(rows[..4].to_vec()).await.unwrap();
        log.record(rows[4..].to_vec()).await.unwrap();
        drop(log);
        writer.finish(Duration::from_secs(30)).await;
        let got = lookup(&path, &format!("{prefix}-5"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, rows[5]);
        assert!(
            lookup(&path, &format!("{prefix}-9"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(lookup(&path, "not an id; drop table").await.is_err());
        assert!(lookup(&path, &"a".repeat(500)).await.is_err());
    }
}
