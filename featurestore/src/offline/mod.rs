//! Offline retrieval: point-in-time training sets from Delta tables.

mod engine;
mod entities;
mod retrieve;
#[cfg(feature = "ballista")]
pub mod tls;
mod write;

pub use engine::Engine;
#[cfg(feature = "ballista")]
pub use engine::ballista_codecs;
pub use entities::EntityInput;
pub use retrieve::{
    FeatureRef, HistoricalFeatures, Lineage, PreparedTrainingSet, TrainingSet, ViewUse,
    parse_feature_refs,
};
#[cfg(feature = "ballista")]
pub use tls::ClusterTls;
pub use write::{LINEAGE_METADATA_KEY, OutputFormat};
