//! Every bound the registry puts on what it reads from outside (names, manifests,
//! artifacts, model files, lineage walks), in one place. They are part of the formats:
//! a registry written under one set of bounds must read under the next, so they are
//! constants, not settings. (The feature store's bounds, which users tune, are its
//! `Limits` struct.)

/// Most nodes one traversal visits, so a huge graph cannot exhaust memory.
pub const MAX_TRAVERSAL: usize = 100_000;

/// Most input features a model may take.
pub const MAX_FEATURES: usize = 4096;

/// Most layers of an MLP.
pub const MAX_LAYERS: usize = 16;

/// Widest MLP layer.
pub const MAX_WIDTH: usize = 4096;

/// Most rows one run of an ONNX model is given (explanations are split to fit).
pub const MAX_RUN_ROWS: usize = 4096;

/// Largest artifact accepted (1 GiB): bigger models belong in an object store, and a
/// bound keeps a bad path from filling memory.
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Longest model name, in bytes.
pub const MAX_NAME: usize = 128;

/// Most metrics per version.
pub const MAX_METRICS: usize = 256;

/// Most tags per version.
pub const MAX_TAGS: usize = 64;

/// Most extra upstream lineage ids per version.
pub const MAX_UPSTREAM: usize = 1024;

/// Longest description or tag value, in bytes.
pub const MAX_TEXT: usize = 4096;

/// Longest key of the metadata store, in bytes.
pub const MAX_KEY_LEN: usize = 512;
