//! Integration tests of quiver-federation: the secure-aggregation protocol run with
//! real keys and real crypto, message by message; the accountant against published
//! figures; the coordinator and workers over real gRPC and mutual TLS on loopback.

mod cli;
mod dp;
mod secagg;
mod service;
