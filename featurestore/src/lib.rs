//! quiver's feature store.
//!
//! Feature definitions are written once, in YAML, in a *feature repo*; they compile to
//! DataFusion plans over Delta Lake tables. The same definition produces point-in-time
//! correct training sets and the values that serving reads, so training and serving do
//! not drift apart.
//!
//! ```text
//!  YAML repo ──load──► spec (located, bounded) ──resolve against Delta──► ViewDefinition
//!                                                                          │ apply: versioned
//!                                                                          ▼ in the registry
//!  entity table ──► PointInTimeJoin(view@version) over Delta scans ──► training set (+ lineage)
//!                                   └──► values as of t ──► online store (materialization)
//! ```
//!
//! What it is: the YAML spec ([`spec`]), the compiler and point-in-time operator
//! ([`plan`]), training-set retrieval ([`offline`]), versioned definitions
//! ([`FeatureStore::plan`], [`FeatureStore::apply`]) and the `quiver` CLI.
//! What it is not (yet): the online store and the Arrow Flight server arrive with the
//! online-serving work.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use quiver_featurestore::FeatureStore;
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("defs.yaml"), "kind: Entity\nname: user\njoin_keys: [user_id]\n")?;
//! let store = FeatureStore::open(dir.path())?;
//! let plan = store.plan().await?;
//! assert_eq!(plan.changes.len(), 1);         // the entity would be added
//! store.apply().await?;
//! assert!(store.plan().await?.is_empty());   // nothing left to do
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod agg;
pub mod audit;
pub mod catalog;
pub mod cli;
#[cfg(feature = "flight")]
pub mod client;
pub mod definition;
pub mod delta;
pub mod diff;
mod error;
pub mod explain;
pub mod ipc;
mod limits;
pub mod model_inputs;
pub mod offline;
pub mod online;
pub mod plan;
#[cfg_attr(not(feature = "flight"), allow(dead_code))]
mod scoring;
#[cfg(feature = "flight")]
pub mod serve;
pub mod spec;
pub mod storage;
mod store;
pub mod udf;

pub use definition::{FeatureField, ViewDefinition};
pub use error::{Error, Result};
pub use limits::Limits;
pub use store::{
    AppliedView, ApplyReport, FeatureStore, FeatureStoreBuilder, KIND_ENTITY, KIND_SOURCE,
    KIND_VIEW,
};
