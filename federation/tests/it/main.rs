//! Integration tests of quiver-federation: the secure-aggregation protocol run with
//! real keys and real crypto, message by message.

mod dp;
mod secagg;
