//! The feature store's integration tests: one binary, one module per area.

/// The `quiver` binary: exit codes, JSON output, the scaffolded repo end to end.
mod cli;
mod common;
/// SIGKILL in the middle of materialization.
mod crash;
/// The Flight server: every RPC, tenants, hostile requests, TLS, metrics, SIGTERM.
mod flight;
/// Bad input at every boundary: each gives a located error and applies nothing.
mod hostile;
/// `quiver registry`: signed models, aliases, lineage, two processes at once.
mod models;
/// Delta tables on S3 (moto) and Azure Blob (Azurite) servers on loopback.
mod object_store;
/// Materialization and online lookups: online values equal training values.
mod online;
/// Every aggregate over every input type: online values equal training values.
mod parity;
/// Property tests of the point-in-time operator against a naive reference.
mod pit_props;
mod portable;
/// pyarrow's Flight client against `quiver serve`.
mod pyarrow;
/// Replicas over one table: scheduled materialization, freshness, restarts.
mod replicas;
/// Training sets from real Delta tables through the public API.
mod retrieval;
/// `score`: online features scored by the registered champion in one round trip.
mod score;
/// WebAssembly UDFs: examples, online parity, pinning, hostile guests.
mod udf;
/// apply / plan / versions in the registry.
mod versioning;
