//! Online serving: materialized feature values in a key-value store, read by entity
//! key with values computed as of the request time.
//!
//! ```text
//!  Delta tables ──materialize (incremental, atomic per view)──► OnlineStore (sled)
//!                                                                   │ records per key
//!  keys ──► OnlineFeatures::get(view, keys, now) ──► values, status, value time
//! ```
//!
//! Windowed aggregates stay correct as time passes without re-running
//! materialization: records keep the rows inside the view's largest window and values
//! are computed at request time (see `docs/online-serving.md`).

mod codec;
mod freshness;
mod materialize;
mod pages;
mod reader;
mod record;
mod store;

pub use freshness::{Freshness, ViewFreshness, freshness};
pub use materialize::{Materialize, MaterializeReport, ViewMaterialization};
pub use reader::{OnlineFeatures, StatusCounts};
pub use record::Status;
pub use store::{OnlineStore, RecordBytes, SledOnlineStore, TableMark, Watermark};

pub(crate) use codec::{key_type_ok, storable};

/// Threads for CPU-bound materialization work: every core, at most 8.
pub(crate) fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}
