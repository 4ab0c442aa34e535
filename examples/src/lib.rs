//! Runnable quiver scenarios. Each topic is a binary under `examples/<topic>/` (see
//! `examples/README.md`); shared pieces, such as the fraud scenario's data generator,
//! live in this library. Nothing outside `examples/` depends on it.

pub mod fraud_data;
