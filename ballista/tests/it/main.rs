//! Integration tests: a real Ballista scheduler and executors (this crate's binaries)
//! as processes on 127.0.0.1.

mod cluster;
mod slicing;
mod tls;
