//! Writing training sets: Parquet, CSV or a Delta table, never half-written.

use std::path::{Path, PathBuf};

use deltalake::protocol::SaveMode;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::TrainingSet;
use crate::{Error, Result, delta};

/// Name of the Parquet key-value metadata entry holding a training set's lineage.
pub const LINEAGE_METADATA_KEY: &str = "quiver.lineage";

/// Output formats of a training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputFormat {
    /// One Parquet file; lineage in its key-value metadata (`quiver.lineage`).
    Parquet,
    /// One CSV file with a header.
    Csv,
    /// A Delta table folder; lineage in the commit's metadata.
    Delta,
}

impl OutputFormat {
    /// `.parquet` → Parquet, `.csv` → CSV, anything else → a Delta table folder.
    pub fn infer(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("parquet") | Some("pq") => OutputFormat::Parquet,
            Some("csv") => OutputFormat::Csv,
            _ => OutputFormat::Delta,
        }
    }
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

impl TrainingSet {
    /// Write to `path`. Files are written beside the target and renamed into place, so
    /// a crash leaves the old file or the new one; an existing target is an error
    /// unless `overwrite`.
    ///
    /// A URL (`s3://bucket/sets/train`, `az://...`, `gs://...`) names a Delta table on
    /// object storage, its store's options taken from the environment; its commit is
    /// a conditional put, so a racing writer loses cleanly instead of overwriting.
    pub async fn write(&self, path: &Path, format: OutputFormat, overwrite: bool) -> Result<()> {
        let lineage = serde_json::to_string(&self.lineage).unwrap_or_default();
        let text = path.to_string_lossy();
        if text.contains("://") {
            if format != OutputFormat::Delta {
                return Err(Error::InvalidRequest(format!(
                    "{text}: only Delta tables are written to object storage (a commit there is atomic, a file upload half-done is not); drop the .parquet/.csv extension or write locally"
                )));
            }
            let location = delta::Location::parse(Path::new(""), &text)
                .map_err(|m| Error::InvalidRequest(format!("{text}: {m}")))?;
            return self.write_delta(&location, overwrite, lineage).await;
        }
        if path.exists() && !overwrite {
            return Err(Error::InvalidRequest(format!(
                "{} exists; pass --overwrite to replace it",
                path.display()
            )));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        match format {
            OutputFormat::Parquet | OutputFormat::Csv => {
                let tmp = temp_beside(path);
                let result = self.write_file(&tmp, format, lineage);
                if let Err(e) = result {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            }
            OutputFormat::Delta => {
                let location = delta::Location::parse(Path::new(""), &path.display().to_string())
                    .map_err(Error::InvalidRequest)?;
                self.write_delta(&location, overwrite, lineage).await?;
            }
        }
        Ok(())
    }

    /// One Delta commit holding the rows, with the lineage in its `commitInfo`.
    async fn write_delta(
        &self,
        location: &delta::Location,
        overwrite: bool,
        lineage: String,
    ) -> Result<()> {
        let mode = if overwrite {
            SaveMode::Overwrite
        } else {
            SaveMode::ErrorIfExists
        };
        let mut metadata = serde_json::Map::new();
        metadata.insert(
            LINEAGE_METADATA_KEY.into(),
            serde_json::Value::String(lineage),
        );
        delta::write_with(location, self.batches.clone(), mode, &[], Some(metadata)).await?;
        Ok(())
    }

    fn write_file(&self, tmp: &Path, format: OutputFormat, lineage: String) -> Result<()> {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        match format {
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_key_value_metadata(Some(vec![KeyValue::new(
                        LINEAGE_METADATA_KEY.into(),
                        lineage,
                    )]))
                    .build();
                let mut w = ArrowWriter::try_new(file, self.schema.clone(), Some(props))?;
                for b in &self.batches {
                    w.write(b)?;
                }
                w.close()?;
            }
            _ => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file);
                for b in &self.batches {
                    w.write(b)?;
                }
            }
        }
        Ok(())
    }
}
