//! quiver's Kubernetes operator (not built yet).
//!
//! This crate will own the CRD types `FeaturePipeline` (feature repo, schedule,
//! materialization, Delta version snapshots) and `ModelServingPolicy` (model,
//! champion/challenger, traffic split, rollback thresholds), their idempotent
//! reconcilers (server-side apply, finalizers, status conditions), a `crdgen` binary
//! and the `quiver-operator` binary with its deploy manifests.
//!
//! Today it contains no code; nothing here pretends otherwise.
