//! The feature store's one error type.

use crate::spec::Diagnostics;

/// Errors of the feature store. Variants say what the caller must do differently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The feature repo has problems; each names file, line and column.
    #[error("{0}")]
    Spec(Diagnostics),
    /// A request names a view, version or feature that is not applied.
    #[error("{what}")]
    NotFound {
        /// What is missing, with a suggestion where there is one.
        what: String,
    },
    /// A request is malformed or over a limit (bad feature reference, entity table
    /// without the needed columns, too many rows).
    #[error("{0}")]
    InvalidRequest(String),
    /// A Delta table could not be opened, read or written.
    #[error("Delta table {table}: {message}")]
    Delta {
        /// URL or path of the table.
        table: String,
        /// What went wrong.
        message: String,
    },
    /// Query planning or execution failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow-level failure (bad cast, bad batch).
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Writing Parquet failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The metadata registry failed.
    #[error(transparent)]
    Registry(#[from] quiver_registry::Error),
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// The feature server refused or failed a request; `code` is the gRPC status code
    /// name (`NotFound`, `PermissionDenied`, `InvalidArgument`, ...).
    #[error("server answered {code}: {message}")]
    Remote {
        /// gRPC status code name.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A WebAssembly UDF module was refused or failed: invalid, over a bound, trapped,
    /// or returned something the ABI does not allow.
    #[error("UDF module `{module}`{}: {message}", function.as_ref().map(|f| format!(", function `{f}`")).unwrap_or_default())]
    Udf {
        /// The module's path in the repo.
        module: String,
        /// The function, when one call failed.
        function: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// A stored definition could not be read back.
    #[error("stored definition {what} is unreadable: {message}")]
    Corrupt {
        /// Which definition.
        what: String,
        /// Why.
        message: String,
    },
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Spec(_) => "spec",
            Error::NotFound { .. } => "not_found",
            Error::InvalidRequest(_) => "invalid_request",
            Error::Delta { .. } => "delta",
            Error::DataFusion(_) => "datafusion",
            Error::Arrow(_) => "arrow",
            Error::Parquet(_) => "parquet",
            Error::Registry(_) => "registry",
            Error::Io { .. } => "io",
            Error::Corrupt { .. } => "corrupt",
            Error::Remote { .. } => "remote",
            Error::Udf { .. } => "udf",
        }
    }

    /// True when the caller's input is at fault (exit code 1), false for internal
    /// failures (exit code 2).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Spec(_)
            | Error::NotFound { .. }
            | Error::InvalidRequest(_)
            | Error::Delta { .. }
            | Error::Udf { .. } => true,
            Error::DataFusion(e) => matches!(
                e.find_root(),
                datafusion::error::DataFusionError::Plan(_)
                    | datafusion::error::DataFusionError::SQL(..)
                    | datafusion::error::DataFusionError::SchemaError(..)
                    | datafusion::error::DataFusionError::Execution(_)
                    | datafusion::error::DataFusionError::ArrowError(..)
            ),
            Error::Registry(e) => !matches!(
                e,
                quiver_registry::Error::Replication(_)
                    | quiver_registry::Error::Storage { .. }
                    | quiver_registry::Error::Corrupt { .. }
                    | quiver_registry::Error::Io { .. }
            ),
            Error::Remote { code, .. } => {
                !matches!(code.as_str(), "Internal" | "Unknown" | "DataLoss")
            }
            _ => false,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Error::Spec(d)
    }
}

/// Result with the feature store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
