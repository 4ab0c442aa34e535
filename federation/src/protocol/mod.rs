//! Secure aggregation as pure, synchronous code: no I/O, no clocks, no threads.
//!
//! [`secagg`] implements SecAgg (Bonawitz et al., CCS 2017) with the sparse neighbour
//! graph of SecAgg+ (Bell et al., CCS 2020) as an option; [`shamir`], [`prg`] and
//! [`quantize`] are its parts. The service layer moves the messages and enforces the
//! stage deadlines; everything that decides what is accepted lives here, so it is
//! tested without a network.

pub mod prg;
pub mod quantize;
pub mod secagg;
pub mod shamir;

pub use crate::limits::MAX_CLIENTS;
pub use crate::limits::MAX_VECTOR_LEN;

/// Why a protocol step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The round's parameters are inconsistent.
    #[error("secure aggregation configuration: {0}")]
    Config(String),
    /// A message failed a check: bad signature, wrong round, wrong sender, wrong size.
    /// The sender is treated as dropped; the round goes on when it still can.
    #[error("rejected message from client {from} at {stage}: {reason}")]
    Rejected {
        /// Claimed sender.
        from: u32,
        /// Protocol stage.
        stage: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The coordinator asked for something the protocol forbids (a lying or broken
    /// coordinator): the client reveals nothing and leaves the round.
    #[error("refusing the coordinator's request at {stage}: {reason}")]
    Refused {
        /// Protocol stage.
        stage: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Too few clients are left for the threshold: the round is abandoned and nothing
    /// more is revealed.
    #[error("round aborted at {stage}: {have} clients left, the threshold is {need}")]
    Aborted {
        /// Protocol stage.
        stage: &'static str,
        /// Clients left.
        have: usize,
        /// Threshold.
        need: usize,
    },
    /// Fewer shares than the threshold.
    #[error("{have} shares, {need} needed")]
    NotEnoughShares {
        /// Shares given.
        have: usize,
        /// Threshold.
        need: usize,
    },
    /// A local input is unusable (NaN, wrong length, too large).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A step was called out of order.
    #[error("out of order: {0}")]
    OutOfOrder(String),
    /// The random source or a primitive failed.
    #[error("crypto: {0}")]
    Crypto(String),
}
