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
//! What it is not (yet): model versions, artifacts, aliases, lineage queries and
//! serving state arrive with the model-registry work and will live here too.
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

mod store;

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
}

/// Result with the registry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
