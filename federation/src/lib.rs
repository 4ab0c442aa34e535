//! quiver's federated training across banks (not built yet).
//!
//! This crate will own cross-silo federated training: secure aggregation in the style
//! of SecAgg / SecAgg+ (pairwise and self masks, Shamir shares for dropout recovery,
//! quantized updates in a ring), differential privacy with an accountant, the
//! coordinator and worker gRPC services, local trainers (CPU by default, GPU behind a
//! cargo feature) and the `quiver-fed` CLI. Each bank's worker trains on training sets
//! from its own feature store; no bank's data or individual update leaves the bank.
//!
//! Today it contains no code: the federation issue builds it. Nothing here pretends
//! otherwise.
