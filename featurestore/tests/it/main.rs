//! The feature store's integration tests: one binary, one module per area.

/// The `quiver` binary: exit codes, JSON output, the scaffolded repo end to end.
mod cli;
mod common;
/// Bad input at every boundary: each gives a located error and applies nothing.
mod hostile;
/// Property tests of the point-in-time operator against a naive reference.
mod pit_props;
/// Training sets from real Delta tables through the public API.
mod retrieval;
/// apply / plan / versions in the registry.
mod versioning;
