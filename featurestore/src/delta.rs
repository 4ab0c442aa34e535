//! Delta Lake access: locating, opening, registering and writing tables.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use url::Url;

use crate::{Error, Result};

/// An opened Delta table at a fixed version.
#[derive(Debug, Clone)]
pub struct OpenTable {
    /// Where it is.
    pub url: Url,
    /// The version read.
    pub version: i64,
    /// Its Arrow schema.
    pub schema: SchemaRef,
    /// Rows in all its files, when the log has statistics.
    pub num_rows: Option<u64>,
    table: Arc<DeltaTable>,
}

/// Resolve the `delta:` text of a Source: a URL with a scheme, or a path relative to
/// the repo root.
pub fn table_url(root: &Path, location: &str) -> Result<Url, String> {
    let loc = location.trim();
    if loc.is_empty() {
        return Err("empty table location".into());
    }
    if let Some((scheme, _)) = loc.split_once("://") {
        let url = Url::parse(loc).map_err(|e| format!("`{loc}` is not a valid URL: {e}"))?;
        return match scheme {
            "file" => Ok(url),
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" => Err(format!(
                "`{scheme}://` tables need object-store support, which this build of quiver leaves out; copy the table to a local folder or use a build with the object-store features"
            )),
            other => Err(format!(
                "unsupported URL scheme `{other}://`; use a local path or `file://`"
            )),
        };
    }
    let path = root.join(loc);
    let abs = if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path)
    };
    let mut url =
        Url::from_directory_path(&abs).map_err(|_| format!("`{loc}` is not a usable path"))?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

fn delta_err(url: &Url, e: impl std::fmt::Display) -> Error {
    Error::Delta {
        table: display_url(url),
        message: e.to_string(),
    }
}

/// A URL as a user wrote it: local paths without `file://`.
pub fn display_url(url: &Url) -> String {
    if url.scheme() == "file" {
        url.to_file_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| url.to_string())
    } else {
        url.to_string()
    }
}

/// Open the table at `url`, at `version` or the latest.
pub async fn open(url: &Url, version: Option<i64>) -> Result<OpenTable> {
    if url.scheme() == "file" {
        let log = url.to_file_path().ok().map(|p| p.join("_delta_log"));
        if !log.as_ref().is_some_and(|l| l.is_dir()) {
            return Err(delta_err(
                url,
                "no Delta table here (no `_delta_log` folder)",
            ));
        }
    }
    let table = match version {
        Some(v) => {
            deltalake::open_table_with_version(
                url.clone(),
                u64::try_from(v).map_err(|_| delta_err(url, format!("bad version {v}")))?,
            )
            .await
        }
        None => deltalake::open_table(url.clone()).await,
    }
    .map_err(|e| delta_err(url, e))?;
    let version = table.version().map_or(-1, |v| v as i64);
    let provider = table
        .table_provider()
        .await
        .map_err(|e| delta_err(url, e))?;
    let num_rows = table.snapshot().ok().map(|s| {
        s.log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0) as u64)
            .sum()
    });
    Ok(OpenTable {
        url: url.clone(),
        version,
        schema: provider.schema(),
        num_rows,
        table: Arc::new(table),
    })
}

/// How a table's data files changed between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChanges {
    /// This many files were removed or rewritten (delete, update, optimize, or a new
    /// deletion vector on the same path): earlier rows may have changed.
    Rewritten(usize),
    /// Same files, another schema (a column added, dropped or retyped).
    SchemaChanged,
    /// Only these files (paths) were added.
    Added(Vec<String>),
}

impl OpenTable {
    /// The Arrow schema as text, to tell whether two versions' schemas differ (a
    /// column added, dropped or retyped).
    pub fn schema_fingerprint(&self) -> String {
        format!("{:?}", self.schema.fields())
    }

    /// Each data file of this version with an identity that changes when the file's
    /// rows change without its path changing: a deletion vector added or replaced (how
    /// Spark and Databricks delete rows) gives the same path a new identity.
    /// `(identity, path)`.
    pub fn file_ids(&self) -> Result<Vec<(String, String)>> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err(&self.url, e))?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|f| {
                let path = f.path().into_owned();
                let id = match f.deletion_vector_descriptor() {
                    None => path.clone(),
                    Some(dv) => format!(
                        "{path}#dv={}:{}:{}",
                        dv.storage_type,
                        dv.path_or_inline_dv,
                        dv.offset.unwrap_or(-1)
                    ),
                };
                (id, path)
            })
            .collect())
    }

    /// What changed in the data files from `old` (an earlier version of this table) to
    /// this version, as incremental materialization needs to know it.
    pub fn changes_since(&self, old: &OpenTable) -> Result<FileChanges> {
        let old_ids: std::collections::HashSet<String> =
            old.file_ids()?.into_iter().map(|(id, _)| id).collect();
        let new = self.file_ids()?;
        let new_ids: std::collections::HashSet<&str> =
            new.iter().map(|(id, _)| id.as_str()).collect();
        let removed = old_ids
            .iter()
            .filter(|f| !new_ids.contains(f.as_str()))
            .count();
        Ok(if removed > 0 {
            FileChanges::Rewritten(removed)
        } else if old.schema_fingerprint() != self.schema_fingerprint() {
            FileChanges::SchemaChanged
        } else {
            FileChanges::Added(
                new.into_iter()
                    .filter(|(id, _)| !old_ids.contains(id))
                    .map(|(_, path)| path)
                    .collect(),
            )
        })
    }

    /// Register only the data files `paths` of this version in `ctx` under `name`.
    pub async fn register_files(
        &self,
        ctx: &SessionContext,
        name: &str,
        paths: Vec<String>,
    ) -> Result<()> {
        self.table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| delta_err(&self.url, e))?;
        let provider = self
            .table
            .table_provider()
            .with_file_paths(paths)
            .await
            .map_err(|e| delta_err(&self.url, e))?;
        ctx.register_table(name, provider)?;
        Ok(())
    }

    /// Register the table in `ctx` under `name`.
    pub async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        self.table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| delta_err(&self.url, e))?;
        let provider = self
            .table
            .table_provider()
            .await
            .map_err(|e| delta_err(&self.url, e))?;
        ctx.register_table(name, provider)?;
        Ok(())
    }
}

/// Write `batches` as a Delta table at `url` (created when missing).
pub async fn write(url: &Url, batches: Vec<RecordBatch>, mode: SaveMode) -> Result<i64> {
    write_partitioned(url, batches, mode, &[]).await
}

/// [`write`], partitioning a new table by `partition_by` (columns of the batches).
pub async fn write_partitioned(
    url: &Url,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    partition_by: &[&str],
) -> Result<i64> {
    if url.scheme() == "file"
        && let Ok(p) = url.to_file_path()
    {
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    let exists = url.scheme() != "file"
        || url
            .to_file_path()
            .is_ok_and(|p| p.join("_delta_log").is_dir());
    // Loading a table that does not exist yet logs an error inside deltalake; a new
    // table is created from an unloaded handle instead.
    let table = if exists {
        DeltaTable::try_from_url(url.clone()).await
    } else {
        deltalake::DeltaTableBuilder::from_url(url.clone()).and_then(|b| b.build())
    }
    .map_err(|e| delta_err(url, e))?;
    let mut write = table.write(batches).with_save_mode(mode);
    if !partition_by.is_empty() {
        write = write.with_partition_columns(partition_by.iter().map(|c| c.to_string()));
    }
    let table = write.await.map_err(|e| delta_err(url, e))?;
    Ok(table.version().map_or(0, |v| v as i64))
}
