//! quiver's federated training across banks.
//!
//! - [`protocol`]: secure aggregation in the style of SecAgg / SecAgg+ (pairwise and
//!   self masks from X25519 agreement, Shamir shares for dropout recovery, quantized
//!   updates in Z_(2^32), Ed25519-signed messages bound to their round) as pure,
//!   synchronous state machines;
//! - [`aggregate`]: what travels inside the masked vector (updates, counts, losses)
//!   and the FedAvg / FedProx / FedAdam server step; bank-level DP's clipped,
//!   Skellam-noised encoding;
//! - [`dp`]: the RDP accountant of DP-SGD and of distributed Skellam noise, and
//!   privacy budgets;
//! - [`train`]: logistic regression and MLP trainers with DP-SGD, on the CPU one
//!   example at a time, or batched on the CPU's cores or an NVIDIA GPU (the `gpu`
//!   feature);
//! - [`service`]: the gRPC coordinator and worker over mutual TLS (the service and
//!   its messages are `federation/proto`, generated into [`service::rpc`]), and
//!   in-process simulation; the `quiver-fed` binary drives them.
//!
//! Not built yet (see docs/federation.md): DP for round 0's feature statistics.

pub mod aggregate;
pub mod dp;
pub mod ledger;
pub mod limits;
pub mod protocol;
pub mod service;
pub mod train;
