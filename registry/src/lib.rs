//! quiver's metadata registry.
//!
//! The registry is the one place where quiver records *what was decided*: which
//! feature definitions are applied, at which version, and (as later parts land)
//! which models were registered, with their artifacts, signatures and lineage.
//!
//! Today it owns the [`MetadataStore`]: a sled database of versioned definitions.
//! Every applied definition gets a SHA-256 content hash and a version number that only
//! grows; every version is kept and can be read back; one apply writes all of its
//! changes in a single transaction, so readers see either all of an apply or none of it.
//!
//! Next to definitions, the same database holds the model registry
//! ([`ModelRegistry`]: versions with Ed25519-signed manifests, content-addressed
//! artifacts, aliases with their full history, trusted signers) and the
//! [`Lineage`] graph (Delta table → feature view → training set → model → endpoint).
//! [`Model`] scores the native formats ([`NativeModel`]) and, with the default `onnx`
//! feature, ONNX files (through tract), with per-feature contributions;
//! [`FeatureStats`] measures drift (PSI, KS) against training statistics.
//!
//! ```
//! use quiver_registry::{ChangeSet, MetadataStore};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir()?;
//! let store = MetadataStore::open(dir.path())?;
//! let mut changes = ChangeSet::new();
//! changes.upsert("feature_view", "user_txn_stats", json!({"ttl": "45d"}));
//! let applied = store.apply(changes)?;
//! assert_eq!(applied.changes[0].version, 1);
//!
//! let current = store.current("feature_view", "user_txn_stats")?.unwrap();
//! assert_eq!(current.version, 1);
//! assert_eq!(current.definition["ttl"], "45d");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod artifact;
mod changes;
mod config;
mod drift;
mod format;
pub mod limits;
mod lineage;
mod models;
mod native;
#[cfg(feature = "onnx")]
mod onnx;
mod serving;
mod signing;
mod store;

pub use artifact::{ArtifactStore, sha256_hex};
pub use changes::{Change, Cursor, Event, Replication, Sequenced};
pub use config::{parse_json_config, read_json_config};
pub use drift::{DEFAULT_PSI_THRESHOLD, DriftReport, FeatureStats, LiveDrift, drift_report};
pub use format::Model;
pub use limits::{
    MAX_ARTIFACT_BYTES, MAX_FEATURES, MAX_LAYERS, MAX_METRICS, MAX_TAGS, MAX_TEXT, MAX_TRAVERSAL,
    MAX_UPSTREAM, MAX_WIDTH,
};
pub use lineage::{Edge, Lineage, Node, NodeKind, Subgraph};
pub use models::{
    AliasEvent, AliasState, InputFeature, InputSchema, LoadedVersion, Manifest, ModelRecord,
    ModelRegistry, ModelVersion, Registration, check_model_inputs,
};
pub use native::{Activation, Contributions, DenseLayer, IG_STEPS, InputTransform, NativeModel};
#[cfg(feature = "onnx")]
pub use onnx::{EXACT_SHAPLEY_MAX_FEATURES, OnnxModel, SHAPLEY_PERMUTATIONS};
pub use serving::{
    CHALLENGER, CHAMPION, Deployment, LatencyHistogram, MAX_TENANTS_TRACKED, MetricsSnapshot,
    ModelServer, Rollback, RollbackForward, RolloutPolicy, Scored, Served, TenantMetrics,
    VersionMetrics, WatchHandle, entity_hash, histogram_psi, routing_bucket,
};
pub use signing::{SigningKey, verify_signature};
pub use store::{
    ApplyRecord, ChangeKind, ChangeSet, DefinitionChange, DefinitionRecord, MetadataStore,
    canonical_json, content_hash,
};

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying sled database failed (disk full, permissions, held by another
    /// process). Retry once the cause is fixed; nothing was half-written.
    #[error("registry storage at {path}: {source}")]
    Storage {
        /// Folder of the database.
        path: String,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// Another process (a running `quiver serve`?) holds the database.
    #[error(
        "the registry {path} is in use by another process (a running `quiver serve`?); send the request to that server, or stop it first"
    )]
    Locked {
        /// Folder of the database.
        path: String,
    },
    /// A stored record could not be decoded: the database was written by an
    /// incompatible version or damaged on disk.
    #[error("registry record {key} is corrupt: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why it could not be read.
        reason: String,
    },
    /// Someone else applied changes after the caller planned against the registry.
    /// Plan again and re-apply.
    #[error(
        "the registry changed since this apply was planned (planned against apply #{expected}, now at #{found}); run `plan` again"
    )]
    Conflict {
        /// The apply id the caller planned against.
        expected: u64,
        /// The apply id found in the store.
        found: u64,
    },
    /// A name or key does not meet the store's rules (empty, too long, contains NUL).
    #[error("invalid registry key `{key}`: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// Something asked for does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// An input is over its bound.
    #[error("{what} is {size} bytes/items, over the limit of {limit}")]
    TooLarge {
        /// Which input.
        what: String,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// Stored bytes or a manifest no longer match what was registered: refuse to load.
    #[error("{what} was tampered with or damaged: {reason}")]
    Tampered {
        /// Which artifact or version.
        what: String,
        /// The mismatch.
        reason: String,
    },
    /// A signer is unknown, or known with another key.
    #[error("untrusted signature: {0}")]
    Untrusted(String),
    /// A key or signature is malformed, or the random source failed.
    #[error("{0}")]
    Crypto(String),
    /// A model artifact is malformed.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A model does not fit its input schema or the feature views it names.
    #[error("schema mismatch: {0}")]
    SchemaMismatch(String),
    /// A follower cannot import an event of the registry it follows: out of order,
    /// from another registry, or its records disagree (nothing was written).
    #[error("replication: {0}")]
    Replication(String),
    /// A compare-and-set alias move lost a race.
    #[error(
        "alias {alias} moved meanwhile: expected {expected:?}, found {found:?}; read it again and retry"
    )]
    AliasMoved {
        /// `model/alias`.
        alias: String,
        /// Version the caller expected.
        expected: Option<u64>,
        /// Version found.
        found: Option<u64>,
    },
}

/// Result with the registry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
