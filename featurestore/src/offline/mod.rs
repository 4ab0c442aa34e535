//! Offline retrieval: point-in-time training sets from Delta tables.

mod entities;
mod retrieve;
mod write;

pub use retrieve::{
    EntityInput, FeatureRef, HistoricalFeatures, Lineage, PreparedTrainingSet, TrainingSet,
    ViewUse, parse_feature_refs,
};
pub use write::OutputFormat;
