//! quiver's Flight protocol as types both sides share (docs/flight-protocol.md): the
//! client SDK, `quiver serve` and any tool that speaks to it use these, so the wire
//! format is written once. A leaf crate: arrow, serde and rustls, nothing of the
//! engine (DataFusion, Delta, sled, wasmtime).
//!
//! - [`Command`]: the JSON commands of tickets and descriptors, checked against
//!   [`WireLimits`] ([`Command::decode`]); [`json_batch`] turns JSON key columns into
//!   an Arrow batch.
//! - [`actions`]: the body of every `DoAction` call, one type per action.
//! - [`FeatureField`]: one output feature of a view and its Arrow type, as view
//!   summaries list them.
//! - [`ensure_crypto_provider`]: the process's rustls provider (ring), chosen once.

pub mod actions;
mod command;

pub use command::{Command, CommandError, WireLimits, json_batch};

/// One output feature of a view and its Arrow type.
///
/// ```
/// let f = quiver_flight_proto::FeatureField { name: "n_7d".into(), dtype: "Int64".into() };
/// assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"name":"n_7d","dtype":"Int64"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeatureField {
    /// Feature name.
    pub name: String,
    /// Arrow type, as Arrow prints it (`Int64`, `Float64`, `Utf8`, ...).
    pub dtype: String,
}

/// Choose rustls's crypto provider (ring) for the process, once: ring and aws-lc are
/// both in quiver's dependency tree, so rustls cannot pick one itself. Every TLS
/// server and client of quiver calls this first.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
