//! WebAssembly feature UDFs: sandboxed functions that SQL views call.
//!
//! A UDF module is a plain WebAssembly core module (no WASI, no component model) that
//! speaks ABI v1 (`docs/udf-abi.md`): one call per batch, Arrow IPC in, Arrow IPC out.
//! A view lists the modules it calls (`udfs: [udfs/jaccard.wat]`); `apply` validates and
//! compiles each one, stores its bytes by hash, and pins the hash in the view's
//! definition, so a changed module is a new view version and every run of a version
//! calls the same code.
//!
//! Every call runs in a fresh instance (from wasmtime's pooling allocator) under a
//! deadline (training sets, materialization, serving) or fuel (replay), with a memory
//! cap held from the query's memory budget; everything the guest returns is checked
//! (status, bounds, size, compression, schema, row count) before it is used.
//!
//! ```
//! use quiver_featurestore::udf::{Budget, UdfHost};
//! use arrow::array::{Array, Float64Array};
//! use std::sync::Arc;
//!
//! let host = UdfHost::shared();
//! let wat = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../udfs/ratio.wat"))?;
//! let module = host.load("udfs/ratio.wat", &wat)?;
//! let f = module.function("ratio").unwrap();
//! let a = Arc::new(Float64Array::from(vec![Some(4.0), None])) as _;
//! let b = Arc::new(Float64Array::from(vec![Some(1.0), Some(2.0)])) as _;
//! let out = host.call(&module, f, &[a, b], 2, Budget::Deadline(std::time::Duration::from_secs(1)))?;
//! let out = out.output.as_any().downcast_ref::<Float64Array>().unwrap();
//! assert_eq!(out.value(0), 2.0);   // 4 / (1 + 1)
//! assert!(out.is_null(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod host;
mod meta;
pub(crate) mod scalar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use quiver_registry::ArtifactStore;
use serde::{Deserialize, Serialize};

pub use host::{Budget, CallOutcome, HostConfig, LoadedModule, UdfHost};
pub use meta::{ABI_VERSION, LOG_IMPORT, Metadata, SECTION, TYPES, UdfFunction, inspect};
pub use scalar::{CallRecord, Recorder};

use crate::{Error, Result};

/// A module a view calls, as its definition pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdfRef {
    /// Path in the repo, as the view wrote it.
    pub path: String,
    /// SHA-256 of the module's bytes, hex.
    pub sha256: String,
    /// Its functions, as its metadata declared them when applied.
    pub functions: Vec<UdfFunction>,
}

/// Largest module file read from a repo.
pub const MAX_MODULE_BYTES: usize = 16 << 20;

/// Where the modules a run calls come from, and how they run: the host, the store of
/// applied modules by hash, modules of a repo not yet applied, the budget of each call,
/// and an optional recorder of calls.
#[derive(Clone, Debug)]
pub struct UdfRuntime {
    host: Arc<UdfHost>,
    modules: Option<PathBuf>,
    pending: BTreeMap<String, Arc<LoadedModule>>,
    budget: Budget,
    recorder: Option<Recorder>,
}

impl UdfRuntime {
    /// Modules from `modules` (a content-addressed folder), run by `host` under its
    /// deadline.
    pub fn new(host: Arc<UdfHost>, modules: Option<PathBuf>) -> Self {
        let budget = Budget::Deadline(host.config().deadline);
        Self {
            host,
            modules,
            pending: BTreeMap::new(),
            budget,
            recorder: None,
        }
    }

    /// The host.
    pub fn host(&self) -> &Arc<UdfHost> {
        &self.host
    }

    /// The same, with calls bounded by `budget`.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The same, recording every call into `recorder`.
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The same, also knowing `modules` (loaded from a repo, not applied yet).
    pub fn with_pending(mut self, modules: impl IntoIterator<Item = Arc<LoadedModule>>) -> Self {
        for m in modules {
            self.pending.insert(m.sha256.clone(), m);
        }
        self
    }

    /// The module pinned by `r`: from the pending set, the host's cache, or the store of
    /// applied modules (whose bytes are checked against the hash).
    pub fn module(&self, r: &UdfRef) -> Result<Arc<LoadedModule>> {
        let udf_err = |message: String| Error::Udf {
            module: r.path.clone(),
            function: None,
            message,
        };
        if let Some(m) = self.pending.get(&r.sha256) {
            return Ok(m.clone());
        }
        let m = match self.host.cached(&r.sha256) {
            Some(m) => m,
            None => {
                let dir = self.modules.as_ref().ok_or_else(|| {
                    udf_err("no store of applied UDF modules is configured".into())
                })?;
                let bytes = ArtifactStore::new(dir).get(&r.sha256).map_err(|e| {
                    udf_err(format!(
                        "the applied module (sha256 {}) cannot be read: {e}; apply the repo again",
                        r.sha256
                    ))
                })?;
                self.host.load(&r.path, &bytes).map_err(udf_err)?
            }
        };
        if m.sha256 != r.sha256 || m.metadata.functions != r.functions {
            return Err(udf_err(format!(
                "the module read does not match the one applied (sha256 {})",
                r.sha256
            )));
        }
        Ok(m)
    }

    /// Store `module`'s bytes in the folder of applied modules (content-addressed), where
    /// [`module`](Self::module) finds them by hash.
    pub fn store(&self, module: &LoadedModule) -> Result<()> {
        let dir = self.modules.as_ref().ok_or_else(|| Error::Udf {
            module: module.path.clone(),
            function: None,
            message: "no store of applied UDF modules is configured".into(),
        })?;
        let digest = ArtifactStore::new(dir).put(module.bytes())?;
        debug_assert_eq!(digest, module.sha256);
        Ok(())
    }

    /// The bytes of the applied module `sha256` (checked against it), for a replica
    /// that follows this store.
    pub fn module_bytes(&self, sha256: &str) -> Result<Vec<u8>> {
        let dir = self.modules.as_ref().ok_or_else(|| Error::Udf {
            module: sha256.into(),
            function: None,
            message: "no store of applied UDF modules is configured".into(),
        })?;
        Ok(ArtifactStore::new(dir).get(sha256)?)
    }

    /// Whether the applied module `sha256` is stored here.
    pub fn has_module(&self, sha256: &str) -> bool {
        self.modules
            .as_ref()
            .is_some_and(|dir| ArtifactStore::new(dir).get(sha256).is_ok())
    }

    /// Store a module received from the store this one follows: it must hash to
    /// `sha256` and load (the host checks its ABI, metadata and limits) before it is
    /// kept, so an applied view never pins a module that was not checked here.
    pub fn import_module(&self, path: &str, sha256: &str, bytes: &[u8]) -> Result<()> {
        // The hash first: bytes that are not the pinned module are never compiled.
        let got = quiver_registry::sha256_hex(bytes);
        if got != sha256 {
            return Err(Error::Udf {
                module: path.into(),
                function: None,
                message: format!(
                    "the module received has sha256 {got}, not the {sha256} its view pins"
                ),
            });
        }
        let m = self.host.load(path, bytes).map_err(|message| Error::Udf {
            module: path.into(),
            function: None,
            message,
        })?;
        if m.sha256 != sha256 {
            return Err(Error::Udf {
                module: path.into(),
                function: None,
                message: format!(
                    "the module received has sha256 {}, not the {sha256} its view pins",
                    m.sha256
                ),
            });
        }
        self.store(&m)
    }

    /// Register every function of `refs` in `ctx`, bounded by this runtime's budget and
    /// by `ctx`'s memory pool.
    pub fn register(&self, ctx: &SessionContext, refs: &[UdfRef]) -> Result<()> {
        let pool = ctx.runtime_env().memory_pool.clone();
        for r in refs {
            let m = self.module(r)?;
            for f in &m.metadata.functions {
                ctx.register_udf(scalar::WasmUdf::udf(
                    self.host.clone(),
                    m.clone(),
                    f.clone(),
                    self.budget,
                    pool.clone(),
                    self.recorder.clone(),
                ));
            }
        }
        Ok(())
    }
}

/// Read, validate and compile the module at `path` (relative to `root`), as a repo
/// names it.
pub fn load_file(
    host: &UdfHost,
    root: &Path,
    path: &str,
) -> std::result::Result<Arc<LoadedModule>, String> {
    let rel = Path::new(path);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("a module path is relative to the repo and stays inside it (no `..`)".into());
    }
    let full = root.join(rel);
    let meta = std::fs::metadata(&full).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    if meta.len() > MAX_MODULE_BYTES as u64 {
        return Err(format!(
            "`{path}` is {} bytes, over the limit of {MAX_MODULE_BYTES} bytes for a module",
            meta.len()
        ));
    }
    let bytes = std::fs::read(&full).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    host.load(path, &bytes)
}
