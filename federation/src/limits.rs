//! Every bound federation puts on what it reads from outside (protocol messages,
//! gRPC messages, bank reports, model sizes, the privacy ledger), in one place. They
//! are part of the protocol and its files: coordinator and banks must agree on them,
//! so they are constants, not settings.

/// Most clients in one round (Shamir shares are indexed by one byte).
pub const MAX_CLIENTS: usize = 254;

/// Longest vector one round aggregates (words).
pub const MAX_VECTOR_LEN: usize = 64 << 20;

/// Largest gRPC message the coordinator accepts and a bank sends (a masked vector of
/// 16 M words).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Largest task a bank accepts from the coordinator. The largest real one is a round's
/// start with the biggest allowed model (about 1 MB of parameters); stage inputs are
/// at most 254 adverts, shares or signatures. Decoding allocates at most a small
/// multiple of this, whatever the coordinator sends.
pub const MAX_TASK_BYTES: usize = 8 << 20;

/// Largest ciphertext of one encrypted share pair.
pub const MAX_CIPHERTEXT: usize = 1024;

/// Largest signature.
pub const MAX_SIGNATURE: usize = 128;

/// Largest bank report (JSON).
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// Most features a federated model takes.
pub const MAX_FEATURES: usize = 256;

/// Widest hidden layer of the MLP.
pub const MAX_HIDDEN: usize = 1024;

/// Largest ledger file read (bytes).
pub const MAX_LEDGER_BYTES: u64 = 16 << 20;

/// Round lines kept per dataset (the curves carry the whole history).
pub const MAX_ROUNDS_KEPT: usize = 10_000;
