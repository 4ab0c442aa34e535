//! Integration tests of the registry: real sled on disk, real Ed25519 keys, real files.

mod common;
mod models;
mod onnx;
mod replication;
mod serving;
