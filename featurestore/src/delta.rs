//! Delta Lake access: locating, opening, registering and writing tables.

use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use url::Url;

use crate::storage::{self, Resolved};
use crate::{Error, Result};

/// Where a table is: its URL and the resolved options of its store (none for local
/// tables). Its `Debug` never shows option values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The table's URL (`file://` for local tables).
    pub url: Url,
    options: Resolved,
}

impl Location {
    /// The table a source reads: its `delta:` text against the repo root, with its
    /// `storage_options:` resolved against the environment (as received options in a
    /// process that follows another's definitions: [`storage::set_receiver_process`]).
    pub fn of_source(root: &Path, source: &crate::spec::Source) -> Result<Self> {
        let fail = |message: String| Error::Delta {
            table: source.delta.value.clone(),
            message,
        };
        let url = table_url(root, &source.delta.value).map_err(fail)?;
        let options = Resolved::resolve_source(
            storage::family(url.scheme()),
            &source.name.value,
            source
                .storage_options
                .iter()
                .map(|(k, v)| (k.as_str(), v.value.as_str())),
            storage::definition_origin(),
        )
        .map_err(|m| fail(format!("source `{}`: {m}", source.name.value)))?;
        Ok(Self { url, options })
    }

    /// A table named on a command line or in a request: a path relative to `root` or
    /// a URL; an object store's options come from the standard environment variables.
    pub fn parse(root: &Path, text: &str) -> std::result::Result<Self, String> {
        Ok(Self::from_url(table_url(root, text)?))
    }

    /// [`Location::parse`] for a URL already resolved: no options but the
    /// environment's.
    pub fn from_url(url: Url) -> Self {
        let options = Resolved::resolve(storage::family(url.scheme()), std::iter::empty())
            .unwrap_or_default();
        Self { url, options }
    }

    /// This location with store options given in code (the Rust SDK's way; YAML
    /// sources use `storage_options:`). Keys are checked as in YAML; secret values may
    /// be literal here, since nothing given in code is stored or printed, and they are
    /// redacted from errors like those read from the environment.
    ///
    /// ```
    /// use quiver_featurestore::delta::Location;
    ///
    /// let loc = Location::parse(std::path::Path::new(""), "s3://bank-a/features/transactions")
    ///     .unwrap()
    ///     .with_options([("aws_region", "eu-west-1"), ("aws_endpoint", "http://127.0.0.1:9000")])
    ///     .unwrap();
    /// assert_eq!(loc.display(), "s3://bank-a/features/transactions");
    /// assert!(Location::parse(std::path::Path::new(""), "s3://b/t")
    ///     .unwrap()
    ///     .with_options([("aws_regoin", "x")])
    ///     .is_err());
    /// ```
    pub fn with_options<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> std::result::Result<Self, String> {
        let family = storage::family(self.url.scheme()).ok_or_else(|| {
            format!(
                "{} is a local table; store options apply to object storage",
                self.display()
            )
        })?;
        for (k, v) in options {
            let (k, v) = (k.as_ref(), v.as_ref());
            storage::check_key(family, k)?;
            self.options.set(k, v)?;
        }
        Ok(self)
    }

    /// The same, with the `storage_options` of source `source` as another process
    /// wrote them (`${ENV_VAR}` resolved against this process's environment, host
    /// options from this process's own configuration: [`storage::Origin::Received`]):
    /// how a process that receives a plan opens its tables with its own credentials.
    pub fn with_received_options<'a>(
        mut self,
        source: &str,
        written: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> std::result::Result<Self, String> {
        self.options = Resolved::resolve_source(
            storage::family(self.url.scheme()),
            source,
            written,
            storage::Origin::Received,
        )?;
        Ok(self)
    }

    /// Whether the table is on the local disk.
    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
    }

    /// The table as a user wrote it: local paths without `file://`.
    pub fn display(&self) -> String {
        display_url(&self.url)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Delta {
            table: self.display(),
            message: storage::redact(&e.to_string()),
        }
    }

    fn builder(&self) -> Result<deltalake::DeltaTableBuilder> {
        storage::register_handlers();
        Ok(deltalake::DeltaTableBuilder::from_url(self.url.clone())
            .map_err(|e| self.err(e))?
            .with_storage_options(self.options.to_map()))
    }
}

impl From<Url> for Location {
    fn from(url: Url) -> Self {
        Self::from_url(url)
    }
}

impl From<&Url> for Location {
    fn from(url: &Url) -> Self {
        Self::from_url(url.clone())
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Self {
        location.clone()
    }
}

/// An opened Delta table at a fixed version.
#[derive(Debug, Clone)]
pub struct OpenTable {
    /// Where it is, with its store's options.
    pub location: Location,
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
        let mut url = Url::parse(loc).map_err(|e| format!("`{loc}` is not a valid URL: {e}"))?;
        if scheme == "file" {
            return Ok(url);
        }
        let Some(family) = storage::family(scheme) else {
            return Err(format!(
                "unsupported URL scheme `{scheme}://`; use a local path, `file://`, `s3://`, `az://`, `abfss://` or `gs://`"
            ));
        };
        if !family.compiled_in() {
            return Err(format!(
                "`{scheme}://` tables need the `{}` feature, which this build of quiver leaves out; build with `--features {}` (or the default features)",
                family.feature(),
                family.feature()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "`{loc}` names no bucket or container: write `{scheme}://BUCKET/path/to/table`"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "`{scheme}://` URLs may not carry credentials; put them in the environment or in `storage_options` as `${{ENV_VAR}}`"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{scheme}://` URLs take no query or fragment; SAS tokens go in `azure_storage_sas_key: ${{ENV_VAR}}`"
            ));
        }
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        return Ok(url);
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

/// Open the table at `location`, at `version` or the latest.
pub async fn open(location: impl Into<Location>, version: Option<i64>) -> Result<OpenTable> {
    let location = &location.into();
    let url = &location.url;
    if location.is_local() {
        let log = url.to_file_path().ok().map(|p| p.join("_delta_log"));
        if !log.as_ref().is_some_and(|l| l.is_dir()) {
            return Err(location.err("no Delta table here (no `_delta_log` folder)"));
        }
    }
    let mut builder = location.builder()?;
    if let Some(v) = version {
        builder = builder
            .with_version(u64::try_from(v).map_err(|_| location.err(format!("bad version {v}")))?);
    }
    let table = builder.load().await.map_err(|e| location.err(e))?;
    let version = table.version().map_or(-1, |v| v as i64);
    check_files_inside(&table, version).map_err(|e| location.err(e))?;
    let provider = table.table_provider().await.map_err(|e| location.err(e))?;
    let num_rows = table.snapshot().ok().map(|s| {
        s.log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(0) as u64)
            .sum()
    });
    Ok(OpenTable {
        location: location.clone(),
        version,
        schema: provider.schema(),
        num_rows,
        table: Arc::new(table),
    })
}

/// Refuse a table version whose log names a data file or a deletion vector outside the
/// table: an absolute path, a URL (`file:///…`, another bucket), or a relative path that
/// leaves the table root (`../`, also percent-encoded). The Delta protocol allows
/// absolute paths (shallow clones); quiver does not, because the reader would fetch
/// them through whatever store and credentials the session holds, so whoever can write
/// one table's log could make it read another's files. Checked on every open, before
/// any file is read; the error names the version and the path.
fn check_files_inside(table: &DeltaTable, version: i64) -> std::result::Result<(), String> {
    let Ok(snapshot) = table.snapshot() else {
        return Ok(());
    };
    for f in snapshot.log_data().iter() {
        let path = f.path();
        if !relative_inside(&path) {
            return Err(format!(
                "version {version} names the data file `{path}`, outside the table (absolute, another store, or leaving the table root); quiver reads only files inside a table"
            ));
        }
        if let Some(dv) = f.deletion_vector_descriptor() {
            let kind = dv.storage_type.to_string();
            let inside = match kind.as_str() {
                // Inline bitmap, or a file named by a UUID (with an optional prefix)
                // in the table root.
                "i" => true,
                // A UUID (20 characters of Z85) after an optional prefix the reader
                // makes a folder of: the prefix may hold letters and digits only.
                "u" => {
                    let p = &dv.path_or_inline_dv;
                    p.len() >= 20
                        && p.as_bytes()[..p.len() - 20]
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric())
                }
                _ => false,
            };
            if !inside {
                return Err(format!(
                    "version {version} gives `{path}` the deletion vector `{}{}`, outside the table; quiver reads only deletion vectors inside a table",
                    kind, dv.path_or_inline_dv
                ));
            }
        }
    }
    Ok(())
}

/// Whether `path` (as a Delta log writes it: relative, percent-encoded) stays inside
/// the table root: resolved against a root URL it keeps that root, and no segment,
/// decoded, is `..`.
fn relative_inside(path: &str) -> bool {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') {
        return false;
    }
    let decoded: String =
        url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    if decoded.starts_with('/')
        || decoded.contains('\\')
        || decoded.split('/').any(|seg| seg == ".." || seg == ".")
    {
        return false;
    }
    let root = Url::parse("quiver-table://table-root/t/").expect("a valid URL");
    match root.join(path) {
        Ok(u) => {
            u.scheme() == root.scheme()
                && u.host_str() == root.host_str()
                && u.path().starts_with(root.path())
        }
        Err(_) => false,
    }
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
        let snapshot = self.table.snapshot().map_err(|e| self.location.err(e))?;
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
        let provider = self.files_provider(&ctx.state(), paths).await?;
        ctx.register_table(name, provider)?;
        Ok(())
    }

    /// The provider of only the data files `paths` of this version, with the table's
    /// object store registered in `state`'s runtime.
    async fn files_provider(
        &self,
        state: &datafusion::execution::SessionState,
        paths: Vec<String>,
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        self.table
            .update_datafusion_session(state)
            .map_err(|e| self.location.err(e))?;
        let provider = self
            .table
            .table_provider()
            .with_file_paths(paths)
            .await
            .map_err(|e| self.location.err(e))?;
        Ok(provider)
    }

    /// A scan of only the data files `paths` of this version, projected, planned in
    /// `state` (whose runtime gets the table's object store).
    pub async fn scan_files(
        &self,
        state: &datafusion::execution::SessionState,
        paths: Vec<String>,
        projection: Option<&Vec<usize>>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let provider = self.files_provider(state, paths).await?;
        Ok(datafusion::catalog::TableProvider::scan(
            provider.as_ref(),
            state,
            projection,
            &[],
            None,
        )
        .await?)
    }

    /// Register the table in `ctx` under `name`.
    pub async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        self.table
            .update_datafusion_session(&ctx.state())
            .map_err(|e| self.location.err(e))?;
        let provider = self
            .table
            .table_provider()
            .await
            .map_err(|e| self.location.err(e))?;
        ctx.register_table(name, provider)?;
        Ok(())
    }
}

/// Write `batches` as a Delta table at `location` (created when missing).
pub async fn write(
    location: impl Into<Location>,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
) -> Result<i64> {
    write_with(&location.into(), batches, mode, &[], None).await
}

/// [`write`], partitioning a new table by `partition_by` (columns of the batches).
pub async fn write_partitioned(
    location: impl Into<Location>,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    partition_by: &[&str],
) -> Result<i64> {
    write_with(&location.into(), batches, mode, partition_by, None).await
}

/// [`write_partitioned`] with `metadata` recorded in the commit (the `commitInfo`
/// action of the log), as training sets record their lineage. The commit is atomic on
/// every store: a conditional put of the next log entry (S3 `If-None-Match`, Azure and
/// GCS preconditions, a local create-new), so two writers racing for one version never
/// both win; an append that loses the race retries on the next version.
pub async fn write_with(
    location: &Location,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    partition_by: &[&str],
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<i64> {
    let url = &location.url;
    if location.is_local()
        && let Ok(p) = url.to_file_path()
    {
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    // Loading a table that does not exist yet logs an error inside deltalake; a new
    // table is created from an unloaded handle instead.
    let exists = if location.is_local() {
        url.to_file_path()
            .is_ok_and(|p| p.join("_delta_log").is_dir())
    } else {
        location
            .builder()?
            .build_storage()
            .map_err(|e| location.err(e))?
            .is_delta_table_location()
            .await
            .map_err(|e| location.err(e))?
    };
    let table = if exists {
        location.builder()?.load().await
    } else {
        location.builder()?.build()
    }
    .map_err(|e| location.err(e))?;
    let mut write = table.write(batches).with_save_mode(mode);
    if !partition_by.is_empty() {
        write = write.with_partition_columns(partition_by.iter().map(|c| c.to_string()));
    }
    let mut commit = deltalake::kernel::transaction::CommitProperties::default();
    if let Some(metadata) = metadata {
        commit = commit.with_metadata(metadata);
    }
    if mode == SaveMode::ErrorIfExists {
        // deltalake checks that the table is absent before writing and, when another
        // writer commits version 0 first, would retry as version 1: both writers
        // "create" the table and it holds both sets of rows. Losing the race must be
        // an error instead.
        commit = commit.with_max_retries(0);
    }
    write = write.with_commit_properties(commit);
    let table = write.await.map_err(|e| {
        use deltalake::DeltaTableError as E;
        use deltalake::kernel::transaction::TransactionError as T;
        match e {
            E::VersionAlreadyExists(_)
            | E::Transaction {
                source: T::MaxCommitAttempts(_),
            } if mode == SaveMode::ErrorIfExists => location.err(
                "another writer created this table first; nothing of this write was committed",
            ),
            e => location.err(e),
        }
    })?;
    Ok(table.version().map_or(0, |v| v as i64))
}

#[cfg(test)]
mod tests {
    use super::relative_inside;

    #[test]
    fn only_relative_paths_inside_the_table_pass() {
        for ok in [
            "part-0001.parquet",
            "ts=2024-01-01%2000%3A00%3A00/part-1.parquet",
            "bank=a/day=1/part-1.snappy.parquet",
            "a b/c.parquet",
        ] {
            assert!(relative_inside(ok), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "file:///etc/passwd",
            "s3://other-bank/t/part-0.parquet",
            "//other-host/t/part-0.parquet",
            "../secret/part-0.parquet",
            "a/../../secret/part-0.parquet",
            "%2E%2E/secret/part-0.parquet",
            "%2e./secret/part-0.parquet",
            "a%2F..%2F..%2Fsecret",
            "..\\secret\\part-0.parquet",
            "",
        ] {
            assert!(!relative_inside(bad), "{bad}");
        }
    }
}
