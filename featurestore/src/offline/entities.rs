//! Reading entity tables (keys + time) from files, Delta tables or memory.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use crate::{Error, Result, delta};

/// Where the entity rows come from.
#[derive(Debug, Clone)]
pub enum EntityInput {
    /// A CSV or Parquet file, or a Delta table folder.
    Path(PathBuf),
    /// Rows already in memory.
    Batches(Vec<RecordBatch>),
}

async fn frame(ctx: &SessionContext, path: &Path) -> Result<DataFrame> {
    let shown = path.display().to_string();
    // A Delta table: a folder, or a URL on object storage (options from the environment).
    let remote = shown.contains("://");
    if remote || path.is_dir() {
        if !remote && !path.join("_delta_log").is_dir() {
            return Err(Error::InvalidRequest(format!(
                "{shown} is a folder but not a Delta table; pass a .csv or .parquet file or a Delta table folder"
            )));
        }
        let location = delta::Location::parse(Path::new(""), &shown)
            .map_err(|m| Error::InvalidRequest(format!("{shown}: {m}")))?;
        let table = delta::open(&location, None).await?;
        table.register(ctx, "__entities").await?;
        return Ok(ctx.table("__entities").await?);
    }
    if !path.is_file() {
        return Err(Error::InvalidRequest(format!(
            "entity table {shown} not found"
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "csv" => {
            ctx.read_csv(
                shown.as_str(),
                CsvReadOptions::new()
                    .has_header(true)
                    .file_extension(".csv"),
            )
            .await?
        }
        "parquet" | "pq" => {
            ctx.read_parquet(
                shown.as_str(),
                ParquetReadOptions::new().file_extension(&format!(".{ext}")),
            )
            .await?
        }
        _ => {
            return Err(Error::InvalidRequest(format!(
                "cannot tell the format of {shown}: use a .csv or .parquet file, or a Delta table folder"
            )));
        }
    })
}

/// The entity rows, at most `max_rows`.
pub(crate) async fn read(
    ctx: &SessionContext,
    input: EntityInput,
    max_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let batches = match input {
        EntityInput::Batches(b) => b,
        EntityInput::Path(path) => {
            frame(ctx, &path)
                .await?
                .limit(0, Some(max_rows.saturating_add(1)))?
                .collect()
                .await?
        }
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > max_rows {
        return Err(Error::InvalidRequest(format!(
            "the entity table has more than {max_rows} rows; split it into smaller requests"
        )));
    }
    Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
}
