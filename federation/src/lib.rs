//! quiver's federated training across banks.
//!
//! Built so far: [`protocol`], secure aggregation in the style of SecAgg / SecAgg+
//! (pairwise and self masks from X25519 agreement, Shamir shares for dropout recovery,
//! quantized updates in Z_(2^32), Ed25519-signed messages bound to their round) as
//! pure, synchronous state machines.
//!
//! Not built yet (see docs/federation.md): differential privacy and its accountant,
//! the coordinator and worker gRPC services, local trainers and the `quiver-fed` CLI.

pub mod aggregate;
pub mod dp;
pub mod protocol;
pub mod service;
pub mod train;
pub mod wire;
