//! quiver's feature debugger (not built yet).
//!
//! This crate will own the step-by-step replay of one entity's feature value at one
//! time, with every version pinned (feature spec hash, Delta table versions, UDF
//! hash): the trace format (`trace.json` plus Arrow files per step), the local
//! read-only web page, and the `quiver-debug` CLI. It builds on the feature store's
//! point-in-time operator and, once they exist, its WebAssembly UDF host.
//!
//! Today it contains no code; nothing here pretends otherwise.
