//! quiver's step-by-step feature debugger.
//!
//! `quiver-debug trace` replays one entity's feature value at one time with every
//! version pinned ([`quiver_featurestore::explain`] does the replay) and writes a
//! **trace folder** ([`folder`]): `trace.json` plus one Arrow IPC file per step that has
//! rows. `quiver-debug show` prints it; `quiver-debug serve` shows it on a local,
//! read-only web page ([`page`]) whose assets are embedded in the binary.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use quiver_featurestore::{FeatureStore, explain};
//! let store = FeatureStore::open("features/")?;
//! let req = explain::ExplainRequest::new("user_txn_stats", [("user_id", "42")], 1_704_067_200_000_000);
//! let mut trace = explain::explain(&store, &req).await?;
//! quiver_wasm_debugger::folder::write(std::path::Path::new("trace-42"), &mut trace)?;
//! println!("{}: {}", trace.verdict, trace.reason);
//! # Ok(()) }
//! ```

pub mod folder;
pub mod page;
