//! UDF functions as DataFusion scalar UDFs: one guest call per batch.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::host::{Budget, LoadedModule, UdfHost};
use super::meta::UdfFunction;

/// One recorded call, for the debugger.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Module path as written in the repo.
    pub module: String,
    /// Module hash.
    pub sha256: String,
    /// Function name.
    pub function: String,
    /// The arguments (`arg0..`), as the guest received them.
    pub input: RecordBatch,
    /// The output column (`out`), or the error.
    pub output: std::result::Result<RecordBatch, String>,
    /// Fuel spent (replay only).
    pub fuel_used: Option<u64>,
    /// What the guest logged.
    pub logs: Vec<String>,
    /// Wall time in microseconds.
    pub micros: u64,
}

/// Where recorded calls go.
pub type Recorder = Arc<Mutex<Vec<CallRecord>>>;

/// One function of one module as a DataFusion scalar UDF.
pub(crate) struct WasmUdf {
    host: Arc<UdfHost>,
    module: Arc<LoadedModule>,
    function: UdfFunction,
    signature: Signature,
    budget: Budget,
    pool: Arc<dyn MemoryPool>,
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for WasmUdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WasmUdf({} from {})",
            self.function.signature(),
            self.module.path
        )
    }
}

impl PartialEq for WasmUdf {
    fn eq(&self, other: &Self) -> bool {
        self.module.sha256 == other.module.sha256
            && self.function == other.function
            && self.budget == other.budget
    }
}

impl Eq for WasmUdf {}

impl Hash for WasmUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.module.sha256.hash(state);
        self.function.name.hash(state);
        self.budget.hash(state);
    }
}

impl WasmUdf {
    pub(crate) fn udf(
        host: Arc<UdfHost>,
        module: Arc<LoadedModule>,
        function: UdfFunction,
        budget: Budget,
        pool: Arc<dyn MemoryPool>,
        recorder: Option<Recorder>,
    ) -> ScalarUDF {
        let volatility = if function.deterministic {
            Volatility::Immutable
        } else {
            Volatility::Volatile
        };
        ScalarUDF::new_from_impl(Self {
            host,
            module,
            signature: Signature::user_defined(volatility),
            function,
            budget,
            pool,
            recorder,
        })
    }

    fn fail(&self, message: impl std::fmt::Display) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::Execution(format!(
            "UDF `{}` of module `{}` (sha256 {}): {message}",
            self.function.name,
            self.module.path,
            &self.module.sha256[..12]
        ))
    }
}

impl ScalarUDFImpl for WasmUdf {
    fn name(&self) -> &str {
        &self.function.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.function.return_type())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let want = self.function.arg_types();
        if arg_types.len() != want.len() {
            return plan_err!(
                "UDF `{}` takes {} arguments ({}), given {}",
                self.function.name,
                want.len(),
                self.function.signature(),
                arg_types.len()
            );
        }
        for (i, (got, w)) in arg_types.iter().zip(&want).enumerate() {
            if got != w && !can_cast_types(got, w) {
                return plan_err!(
                    "UDF `{}`: argument {} is {got}, which does not convert to {w} ({})",
                    self.function.name,
                    i + 1,
                    self.function.signature()
                );
            }
        }
        Ok(want)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let want = self.function.arg_types();
        let arrays: Vec<ArrayRef> = arrays
            .iter()
            .zip(&want)
            .map(|(a, w)| {
                if a.data_type() == w {
                    Ok(a.clone())
                } else {
                    cast(a, w)
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        // The instance's memory cap is held from the query's budget while it runs.
        let reservation =
            MemoryConsumer::new(format!("UDF {}", self.function.name)).register(&self.pool);
        if let Err(e) = reservation.try_grow(self.host.config().max_memory_bytes) {
            return Err(self.fail(format!(
                "the query's memory budget cannot hold an instance ({} bytes): {e}",
                self.host.config().max_memory_bytes
            )));
        }
        let result = self
            .host
            .call(&self.module, &self.function, &arrays, rows, self.budget);
        drop(reservation);
        if let Some(rec) = &self.recorder {
            let input =
                super::host::args_batch(&self.function, &arrays, rows).map_err(|e| self.fail(e))?;
            let (output, fuel_used, logs, micros) = match &result {
                Ok(o) => (
                    RecordBatch::try_from_iter([("out", o.output.clone())])
                        .map_err(|e| e.to_string()),
                    o.fuel_used,
                    o.logs.clone(),
                    o.elapsed.as_micros() as u64,
                ),
                Err(e) => (Err(e.clone()), None, Vec::new(), 0),
            };
            if let Ok(mut r) = rec.lock() {
                r.push(CallRecord {
                    module: self.module.path.clone(),
                    sha256: self.module.sha256.clone(),
                    function: self.function.name.clone(),
                    input,
                    output,
                    fuel_used,
                    logs,
                    micros,
                });
            }
        }
        match result {
            Ok(o) => Ok(ColumnarValue::Array(o.output)),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// A WebAssembly UDF as a plan carries it to another process: the module itself (a
/// view's modules are bounded by `MAX_MODULE_BYTES`), the function and the budget.
#[derive(serde::Serialize, serde::Deserialize)]
struct PortableUdf {
    path: String,
    sha256: String,
    module_hex: String,
    function: String,
    deadline_ms: Option<u64>,
    fuel: Option<u64>,
}

/// `udf` as bytes another process can rebuild it from (`None`: not a WebAssembly UDF).
pub(crate) fn encode_portable(udf: &ScalarUDF) -> Option<Vec<u8>> {
    let w = udf.inner().downcast_ref::<WasmUdf>()?;
    let (deadline_ms, fuel) = match w.budget {
        Budget::Deadline(d) => (Some(d.as_millis() as u64), None),
        Budget::Fuel(f) => (None, Some(f)),
    };
    serde_json::to_vec(&PortableUdf {
        path: w.module.path.clone(),
        sha256: w.module.sha256.clone(),
        module_hex: hex::encode(w.module.bytes()),
        function: w.function.name.clone(),
        deadline_ms,
        fuel,
    })
    .ok()
}

/// Rebuild a UDF from [`encode_portable`]'s bytes in this process: the module is loaded
/// (and checked: hash, ABI, limits) by the process's shared host. Its memory is held
/// against an unbounded pool: the receiving side has no query context here.
pub(crate) fn decode_portable(name: &str, buf: &[u8]) -> Result<ScalarUDF> {
    let bad = |m: String| {
        datafusion::error::DataFusionError::Execution(format!("UDF `{name}` received: {m}"))
    };
    let p: PortableUdf = serde_json::from_slice(buf).map_err(|e| bad(e.to_string()))?;
    let bytes = hex::decode(&p.module_hex).map_err(|e| bad(e.to_string()))?;
    if bytes.len() > super::MAX_MODULE_BYTES {
        return Err(bad(format!(
            "the module is over {} bytes",
            super::MAX_MODULE_BYTES
        )));
    }
    if quiver_registry::sha256_hex(&bytes) != p.sha256 {
        return Err(bad(format!("the module does not hash to {}", p.sha256)));
    }
    let host = UdfHost::shared();
    let module = host.load(&p.path, &bytes).map_err(bad)?;
    let function = module.function(&p.function).cloned().ok_or_else(|| {
        bad(format!(
            "module {} has no function `{}`",
            p.path, p.function
        ))
    })?;
    // The sender's budget is a wish: never more than this process's own bounds.
    let own = host.config();
    let budget = match (p.deadline_ms, p.fuel) {
        (_, Some(f)) => Budget::Fuel(f.min(own.fuel)),
        (Some(ms), None) => {
            Budget::Deadline(std::time::Duration::from_millis(ms).min(own.deadline))
        }
        (None, None) => Budget::Deadline(own.deadline),
    };
    Ok(WasmUdf::udf(
        host,
        module,
        function,
        budget,
        Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default()),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_udf_runs_under_the_receivers_own_budget() {
        let wat = include_str!("../../../udfs/ratio.wat");
        let body = |deadline_ms: Option<u64>, fuel: Option<u64>| {
            serde_json::json!({
                "path": "udfs/ratio.wat",
                "sha256": quiver_registry::sha256_hex(wat.as_bytes()),
                "module_hex": hex::encode(wat.as_bytes()),
                "function": "ratio",
                "deadline_ms": deadline_ms,
                "fuel": fuel,
            })
            .to_string()
        };
        let own = UdfHost::shared().config().clone();
        let budget = |buf: String| {
            let udf = decode_portable("ratio", buf.as_bytes()).unwrap();
            udf.inner().downcast_ref::<WasmUdf>().unwrap().budget
        };
        assert_eq!(
            budget(body(Some(u64::MAX), None)),
            Budget::Deadline(own.deadline)
        );
        assert_eq!(budget(body(None, Some(u64::MAX))), Budget::Fuel(own.fuel));
        assert_eq!(
            budget(body(Some(5), None)),
            Budget::Deadline(std::time::Duration::from_millis(5))
        );
    }
}
