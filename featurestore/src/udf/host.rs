//! The wasmtime host: engines, compiled modules, one sandboxed call per batch.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use wasmtime::{
    Caller, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

use super::meta::{self, Metadata, UdfFunction};

/// How often the deadline clock ticks.
const TICK: Duration = Duration::from_millis(5);
/// Longest error message a guest may return; longer ones are cut.
const MAX_GUEST_ERROR: usize = 4 * 1024;
/// Longest single log message; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 1024;

/// Bounds and switches of a [`UdfHost`].
///
/// ```
/// let mut config = quiver_featurestore::udf::HostConfig::default();
/// config.max_memory_bytes = 64 << 20;
/// assert!(config.pooling);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostConfig {
    /// Largest linear memory of one instance, in bytes. Counted against the query's
    /// memory budget while the instance runs.
    pub max_memory_bytes: usize,
    /// Largest output (IPC bytes) of one call.
    pub max_output_bytes: usize,
    /// Most log messages of one call; more is an error (a log flood).
    pub max_log_messages: usize,
    /// Most log bytes of one call.
    pub max_log_bytes: usize,
    /// Wall-clock deadline of one call during training sets and materialization.
    pub deadline: Duration,
    /// Fuel of one call during replay (the debugger): deterministic, and shown.
    pub fuel: u64,
    /// Instantiate from wasmtime's pooling allocator (memories and tables reused
    /// across instances). Off: every instance maps its own memory.
    pub pooling: bool,
    /// Instances the pool holds at once (concurrent calls beyond wait for none: they
    /// fail with a clear error).
    pub pool_slots: u32,
    /// Keep compiled modules by hash (off: every load compiles again).
    pub cache: bool,
    /// Most bytes the compiled-module cache holds (each module counted as its source
    /// plus its compiled code); the least recently used modules go first.
    pub cache_bytes: usize,
    /// Longest one module may take to compile. A module crafted to be slow to compile
    /// fails validation with its name after this; the compiler thread finishes in the
    /// background and the process goes on serving.
    pub compile_deadline: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 256 << 20,
            max_output_bytes: 256 << 20,
            max_log_messages: 100,
            max_log_bytes: 16 * 1024,
            deadline: Duration::from_secs(10),
            fuel: 10_000_000_000,
            pooling: true,
            pool_slots: 128,
            cache: true,
            cache_bytes: 256 << 20,
            compile_deadline: Duration::from_secs(20),
        }
    }
}

/// What bounds one call: a wall-clock deadline (training sets, materialization,
/// serving) or fuel (replay: the same module and input always stop at the same point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Stop the call after this long.
    Deadline(Duration),
    /// Stop the call after this many units of fuel (about one per instruction).
    Fuel(u64),
}

/// One call's result.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The output column, `rows` long, of the declared type.
    pub output: ArrayRef,
    /// Fuel spent (fuel budgets only).
    pub fuel_used: Option<u64>,
    /// What the guest logged.
    pub logs: Vec<String>,
    /// Wall time of the call: instantiation, the guest, checking its output (not the
    /// input's encoding, nor compiling a module for fuel on its first replay).
    pub elapsed: Duration,
}

/// A validated, compiled module.
pub struct LoadedModule {
    /// The path it was written at in the repo (for messages).
    pub path: String,
    /// SHA-256 of its bytes, hex: what views pin.
    pub sha256: String,
    /// Its declared functions.
    pub metadata: Metadata,
    bytes: Arc<[u8]>,
    deadline: InstancePre<GuestState>,
    fuel: OnceLock<Result<InstancePre<GuestState>, String>>,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl LoadedModule {
    /// The module's bytes as written (text or binary).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A declared function by name.
    pub fn function(&self, name: &str) -> Option<&UdfFunction> {
        self.metadata.functions.iter().find(|f| f.name == name)
    }
}

struct GuestState {
    max_memory: usize,
    memory_refused: Option<usize>,
    /// Why the log function stopped the guest.
    log_refused: Option<String>,
    logs: Vec<String>,
    log_bytes: usize,
    max_log_messages: usize,
    max_log_bytes: usize,
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_refused = Some(desired);
            return Err(wasmtime::Error::msg("memory cap"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Runs UDF modules: two engines (deadlines; fuel), compiled modules by hash, a clock
/// for deadlines. One per process is enough ([`UdfHost::shared`]); tests make their
/// own to compare configurations.
///
/// Guarantees: nothing starts until a module is loaded (a process without UDFs never
/// reserves the engines' address space); an engine that cannot reserve its pool
/// (a limited address space) falls back to allocation on demand, and one that cannot
/// start at all is an error of the load, never a panic. Floating-point results do not
/// depend on the CPU: NaNs are canonicalized and relaxed SIMD is deterministic, so a
/// replica or a Ballista executor on another CPU computes the same values.
pub struct UdfHost {
    config: HostConfig,
    deadline_engine: OnceLock<Result<Engine, String>>,
    fuel_engine: OnceLock<Result<Engine, String>>,
    cache: Mutex<ModuleCache>,
    /// Modules that failed to compile (or ran past the compile deadline), by hash: not
    /// compiled again (at most [`MAX_FAILED_KEPT`]).
    failed: Mutex<HashMap<String, String>>,
    stop: Arc<AtomicBool>,
}

/// Compiler threads running at once in a process, stragglers past their deadline
/// included; more compiles wait for none, they fail clearly.
const MAX_COMPILING: usize = 4;
static COMPILING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Failed modules remembered per host.
const MAX_FAILED_KEPT: usize = 256;

/// Why compiling gave no module: the module's doing (remembered, never compiled
/// again) or the host's (busy, no thread: try again).
enum CompileError {
    Module(String),
    Host(String),
}

impl CompileError {
    fn into_message(self) -> String {
        match self {
            CompileError::Module(m) | CompileError::Host(m) => m,
        }
    }
}

/// Compiled modules by hash, least recently used first out, bounded in bytes.
#[derive(Default)]
struct ModuleCache {
    entries: HashMap<String, (Arc<LoadedModule>, usize, u64)>,
    bytes: usize,
    tick: u64,
}

impl ModuleCache {
    fn get(&mut self, sha256: &str) -> Option<Arc<LoadedModule>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(sha256).map(|(m, _, used)| {
            *used = tick;
            m.clone()
        })
    }

    fn insert(&mut self, sha256: String, module: Arc<LoadedModule>, size: usize, max: usize) {
        if size > max {
            return;
        }
        self.tick += 1;
        if let Some((_, old, _)) = self.entries.insert(sha256, (module, size, self.tick)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > max {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, size, _)) = self.entries.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }
}

impl std::fmt::Debug for UdfHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdfHost")
            .field("config", &self.config)
            .finish()
    }
}

impl Drop for UdfHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn engine(config: &HostConfig, fuel: bool) -> Result<Engine, String> {
    let pooled = if config.pooling {
        match Engine::new(&engine_config(config, fuel, true)) {
            Ok(e) => return Ok(e),
            Err(e) => {
                tracing::warn!(error = %e, "the UDF pool cannot reserve its address space; UDF instances are allocated on demand");
                Some(e.to_string())
            }
        }
    } else {
        None
    };
    Engine::new(&engine_config(config, fuel, false)).map_err(|e| match pooled {
        Some(p) => {
            format!("cannot start the WebAssembly engine: {e} (with the pooling allocator: {p})")
        }
        None => format!("cannot start the WebAssembly engine: {e}"),
    })
}

fn engine_config(config: &HostConfig, fuel: bool, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_multi_memory(false).max_wasm_stack(512 * 1024);
    // The same bits on every CPU: "deterministic" UDFs run on replicas and Ballista
    // executors that may be other machines.
    c.cranelift_nan_canonicalization(true);
    c.relaxed_simd_deterministic(true);
    if fuel {
        c.consume_fuel(true);
    } else {
        c.epoch_interruption(true);
    }
    if !pooling {
        // On demand, each instance reserves only its memory cap (with explicit bounds
        // checks), not the 4 GiB + guard of the default: it fits a limited address
        // space.
        let cap = (config.max_memory_bytes as u64).div_ceil(65536) * 65536;
        c.memory_reservation(cap)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0);
    }
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(config.pool_slots)
            .total_memories(config.pool_slots)
            .total_tables(config.pool_slots)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(config.max_memory_bytes)
            // Reused memories stay mapped (zeroed with memset, not released and
            // faulted in again): most of a small call's cost otherwise.
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

static SHARED: OnceLock<Arc<UdfHost>> = OnceLock::new();

impl UdfHost {
    /// A host with `config`. Nothing starts yet: the engines and the deadline clock
    /// start when the first module is loaded.
    pub fn new(config: HostConfig) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self::lazy(config)))
    }

    /// The process's host, with the default configuration.
    pub fn shared() -> Arc<Self> {
        SHARED
            .get_or_init(|| Arc::new(Self::lazy(HostConfig::default())))
            .clone()
    }

    fn lazy(config: HostConfig) -> Self {
        Self {
            config,
            deadline_engine: OnceLock::new(),
            fuel_engine: OnceLock::new(),
            cache: Mutex::new(ModuleCache::default()),
            failed: Mutex::new(HashMap::new()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The engine for deadlines, started (with its clock) on first use.
    fn deadline_engine(&self) -> Result<Engine, String> {
        self.deadline_engine
            .get_or_init(|| {
                let e = engine(&self.config, false)?;
                let (clock, stop) = (e.clone(), self.stop.clone());
                std::thread::Builder::new()
                    .name("quiver-udf-clock".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(TICK);
                            clock.increment_epoch();
                        }
                    })
                    .map_err(|e| format!("cannot start the UDF deadline clock: {e}"))?;
                Ok(e)
            })
            .clone()
    }

    /// Its configuration.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// A module already loaded, by hash.
    pub fn cached(&self, sha256: &str) -> Option<Arc<LoadedModule>> {
        self.cache.lock().ok()?.get(sha256)
    }

    /// Bytes the compiled-module cache holds now.
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.bytes)
    }

    /// Validate and compile `bytes` (a `.wasm` binary or `.wat` text). Everything the
    /// ABI demands is checked here, before any code runs.
    pub fn load(&self, path: &str, bytes: &[u8]) -> Result<Arc<LoadedModule>, String> {
        let sha256 = quiver_registry::sha256_hex(bytes);
        if self.config.cache
            && let Some(m) = self.cached(&sha256)
        {
            return Ok(m);
        }
        if let Some(why) = self
            .failed
            .lock()
            .ok()
            .and_then(|f| f.get(&sha256).cloned())
        {
            return Err(why);
        }
        let binary = to_binary(bytes)?;
        let metadata = meta::inspect(&binary)?;
        let deadline = match self.compile(&self.deadline_engine()?, &binary) {
            Ok(d) => d,
            Err(CompileError::Module(e)) => {
                if let Ok(mut f) = self.failed.lock()
                    && f.len() < MAX_FAILED_KEPT
                {
                    f.insert(sha256.clone(), e.clone());
                }
                return Err(e);
            }
            // A busy compiler is no verdict on the module: not remembered.
            Err(CompileError::Host(e)) => return Err(e),
        };
        let image = deadline.module().image_range();
        let size = bytes.len() + (image.end as usize).saturating_sub(image.start as usize);
        let module = Arc::new(LoadedModule {
            path: path.to_owned(),
            sha256: sha256.clone(),
            metadata,
            bytes: bytes.into(),
            deadline,
            fuel: OnceLock::new(),
        });
        if self.config.cache
            && let Ok(mut c) = self.cache.lock()
        {
            c.insert(sha256, module.clone(), size, self.config.cache_bytes);
        }
        Ok(module)
    }

    fn compile(
        &self,
        engine: &Engine,
        binary: &[u8],
    ) -> Result<InstancePre<GuestState>, CompileError> {
        // Compiled on a thread of its own under a deadline: a module crafted to be slow
        // to compile fails here, and the caller goes on (the thread finishes alone).
        let (tx, rx) = std::sync::mpsc::channel();
        let (e, b) = (engine.clone(), binary.to_vec());
        if COMPILING.fetch_add(1, Ordering::SeqCst) >= MAX_COMPILING {
            COMPILING.fetch_sub(1, Ordering::SeqCst);
            return Err(CompileError::Host(format!(
                "{MAX_COMPILING} modules are compiling already (slow ones included); try again later"
            )));
        }
        std::thread::Builder::new()
            .name("quiver-udf-compile".into())
            .spawn(move || {
                let _ = tx.send(Module::new(&e, &b));
                COMPILING.fetch_sub(1, Ordering::SeqCst);
            })
            .map_err(|e| {
                COMPILING.fetch_sub(1, Ordering::SeqCst);
                CompileError::Host(format!("cannot start a compiler thread: {e}"))
            })?;
        let limit = self.config.compile_deadline;
        let module = match rx.recv_timeout(limit) {
            Ok(m) => m.map_err(|e| CompileError::Module(format!("does not compile: {e}")))?,
            Err(_) => {
                return Err(CompileError::Module(format!(
                    "took more than {} ms to compile (a module's compile time is bounded); make it smaller",
                    limit.as_millis()
                )));
            }
        };
        let mut linker: Linker<GuestState> = Linker::new(engine);
        linker
            .func_wrap(meta::LOG_IMPORT.0, meta::LOG_IMPORT.1, log)
            .map_err(|e| CompileError::Host(e.to_string()))?;
        linker
            .instantiate_pre(&module)
            .map_err(|e| CompileError::Module(format!("does not link: {e}")))
    }

    fn fuel_pre(&self, module: &LoadedModule) -> Result<InstancePre<GuestState>, String> {
        let engine = self
            .fuel_engine
            .get_or_init(|| engine(&self.config, true))
            .clone()?;
        module
            .fuel
            .get_or_init(|| {
                self.compile(&engine, &to_binary(&module.bytes)?)
                    .map_err(CompileError::into_message)
            })
            .clone()
    }

    /// A store for one instance on `engine`: the memory limiter, the log's bounds, and
    /// `budget` (a deadline in clock ticks, or fuel).
    fn store(&self, engine: &Engine, budget: Budget) -> Result<Store<GuestState>, String> {
        let mut store = Store::new(
            engine,
            GuestState {
                max_memory: self.config.max_memory_bytes,
                memory_refused: None,
                log_refused: None,
                logs: Vec::new(),
                log_bytes: 0,
                max_log_messages: self.config.max_log_messages,
                max_log_bytes: self.config.max_log_bytes,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        match budget {
            Budget::Deadline(d) => {
                store.set_epoch_deadline((d.as_micros() / TICK.as_micros()).max(1) as u64 + 1);
                store.epoch_deadline_trap();
            }
            Budget::Fuel(f) => store.set_fuel(f).map_err(|e| e.to_string())?,
        }
        Ok(store)
    }

    /// Instantiate `module` from the pool (deadline engine) and drop the instance: what
    /// every call pays before the guest runs. A check that a module starts, and the
    /// benchmark's measure of instantiation.
    pub fn instantiate(&self, module: &LoadedModule) -> Result<Duration, String> {
        let started = Instant::now();
        let budget = Budget::Deadline(self.config.deadline);
        let mut store = self.store(module.deadline.module().engine(), budget)?;
        // A start function, data and element segments and the initial memory and
        // tables run and are allocated here, under the same deadline and caps as a
        // call.
        module.deadline.instantiate(&mut store).map_err(|e| {
            explain(
                "instantiation",
                e,
                &store,
                budget,
                self.config.max_memory_bytes,
            )
        })?;
        Ok(started.elapsed())
    }

    /// Call `function` of `module` once on `args` (already of the declared types,
    /// `rows` long). Errors say what the guest did wrong; the module and function are
    /// added by the caller.
    pub fn call(
        &self,
        module: &LoadedModule,
        function: &UdfFunction,
        args: &[ArrayRef],
        rows: usize,
        budget: Budget,
    ) -> Result<CallOutcome, String> {
        let input = encode_input(function, args, rows)?;
        if input.len() > self.config.max_memory_bytes {
            return Err(format!(
                "the input batch is {} bytes, over the instance's memory cap of {} bytes",
                input.len(),
                self.config.max_memory_bytes
            ));
        }
        let pre = match budget {
            Budget::Deadline(_) => module.deadline.clone(),
            Budget::Fuel(_) => self.fuel_pre(module)?,
        };
        let started = Instant::now();
        let mut store = self.store(pre.module().engine(), budget)?;
        let what = |stage: &str, e: wasmtime::Error, store: &Store<GuestState>| {
            explain(stage, e, store, budget, self.config.max_memory_bytes)
        };
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| what("instantiation", e, &store))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("exports no memory")?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "quiver_abi_version")
            .map_err(|e| e.to_string())?
            .call(&mut store, ())
            .map_err(|e| what("`quiver_abi_version`", e, &store))?;
        if version != meta::ABI_VERSION {
            return Err(format!(
                "speaks ABI version {version}; this host speaks version {}",
                meta::ABI_VERSION
            ));
        }
        let len = i32::try_from(input.len()).map_err(|_| "the input batch is over 2 GiB")?;
        let ptr = instance
            .get_typed_func::<i32, i32>(&mut store, "alloc")
            .map_err(|e| e.to_string())?
            .call(&mut store, len)
            .map_err(|e| what("`alloc`", e, &store))?;
        let size = memory.data_size(&store);
        if ptr == 0 || (ptr as u32 as usize).saturating_add(input.len()) > size {
            return Err(format!(
                "`alloc({len})` returned {ptr}, not a range inside its memory ({size} bytes)"
            ));
        }
        memory
            .write(&mut store, ptr as u32 as usize, &input)
            .map_err(|e| e.to_string())?;
        let packed = instance
            .get_typed_func::<(i32, i32), i64>(&mut store, &function.name)
            .map_err(|e| e.to_string())?
            .call(&mut store, (ptr, len))
            .map_err(|e| what("the call", e, &store))?;
        let (out_ptr, out_len) = (
            (packed as u64 >> 32) as usize,
            (packed as u64 & 0xffff_ffff) as usize,
        );
        let size = memory.data_size(&store);
        if out_ptr.saturating_add(out_len) > size || out_len < 8 {
            return Err(format!(
                "returned the range [{out_ptr}, {out_ptr}+{out_len}), which is not a result inside its memory ({size} bytes; a result is at least 8 bytes)"
            ));
        }
        if out_len - 8 > self.config.max_output_bytes {
            return Err(format!(
                "returned {} bytes, over the output limit of {} bytes",
                out_len - 8,
                self.config.max_output_bytes
            ));
        }
        let region = &memory.data(&store)[out_ptr..out_ptr + out_len];
        let status = u32::from_le_bytes(region[..4].try_into().expect("4 bytes"));
        let payload = &region[8..];
        let fuel_used = match budget {
            Budget::Fuel(f) => Some(f - store.get_fuel().unwrap_or(0)),
            Budget::Deadline(_) => None,
        };
        match status {
            0 => {}
            1 => {
                let cut = &payload[..payload.len().min(MAX_GUEST_ERROR)];
                return Err(format!("failed: {}", String::from_utf8_lossy(cut)));
            }
            s => {
                return Err(format!(
                    "returned status {s}; ABI v1 knows 0 (ok) and 1 (error)"
                ));
            }
        }
        let output = decode_output(payload, rows, &function.return_type())?;
        Ok(CallOutcome {
            output,
            fuel_used,
            logs: std::mem::take(&mut store.data_mut().logs),
            elapsed: started.elapsed(),
        })
    }
}

fn explain(
    stage: &str,
    e: wasmtime::Error,
    store: &Store<GuestState>,
    budget: Budget,
    cap: usize,
) -> String {
    if let Some(desired) = store.data().memory_refused {
        return format!(
            "{stage} tried to grow its memory to {desired} bytes, over the cap of {cap} bytes"
        );
    }
    if let Some(why) = &store.data().log_refused {
        return format!("{stage} stopped: {why}");
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => match budget {
            Budget::Deadline(d) => format!("{stage} ran past its deadline of {d:?}"),
            Budget::Fuel(_) => format!("{stage} was interrupted"),
        },
        Some(Trap::OutOfFuel) => match budget {
            Budget::Fuel(f) => format!("{stage} ran out of fuel ({f} units)"),
            Budget::Deadline(_) => format!("{stage} ran out of fuel"),
        },
        Some(t) => format!("{stage} trapped: {t}"),
        None => format!("{stage} failed: {e}"),
    }
}

fn log(mut caller: Caller<'_, GuestState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let memory = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::Error::msg("log: no memory"))?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = memory.data(&caller);
    let refuse = |caller: &mut Caller<'_, GuestState>, why: String| {
        caller.data_mut().log_refused = Some(why.clone());
        Err(wasmtime::Error::msg(why))
    };
    if ptr.saturating_add(len) > data.len() {
        return refuse(
            &mut caller,
            format!("`log` was given [{ptr}, {ptr}+{len}), outside its memory"),
        );
    }
    let text = String::from_utf8_lossy(&data[ptr..ptr + len.min(MAX_LOG_MESSAGE)]).into_owned();
    let state = caller.data_mut();
    state.log_bytes += len;
    if state.logs.len() >= state.max_log_messages || state.log_bytes > state.max_log_bytes {
        let why = format!(
            "log flood: more than {} messages or {} bytes of log in one call",
            state.max_log_messages, state.max_log_bytes
        );
        return refuse(&mut caller, why);
    }
    state.logs.push(text);
    Ok(())
}

/// The binary of a module written as binary or as text.
fn to_binary(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.to_vec());
    }
    wat::parse_bytes(bytes)
        .map(|b| b.into_owned())
        .map_err(|e| format!("not a valid WebAssembly module: {e}"))
}

/// The argument columns as one IPC stream: fields `arg0..`, of the declared types.
pub(crate) fn encode_input(
    function: &UdfFunction,
    args: &[ArrayRef],
    rows: usize,
) -> Result<Vec<u8>, String> {
    let batch = args_batch(function, args, rows)?;
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    drop(w);
    Ok(out)
}

/// The argument columns as the batch the guest receives: `arg0..`, of the declared
/// types, nullable.
pub(crate) fn args_batch(
    function: &UdfFunction,
    args: &[ArrayRef],
    rows: usize,
) -> Result<RecordBatch, String> {
    let fields: Vec<Field> = function
        .arg_types()
        .into_iter()
        .enumerate()
        .map(|(i, t)| Field::new(format!("arg{i}"), t, true))
        .collect();
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        args.to_vec(),
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| format!("arguments do not match the declared types: {e}"))
}

/// Read a guest's output: uncompressed IPC, one batch, one column of `want`, `rows`
/// rows. Compression is refused before anything is decoded.
pub(crate) fn decode_output(
    payload: &[u8],
    rows: usize,
    want: &DataType,
) -> Result<ArrayRef, String> {
    let mut pos = 0usize;
    let mut batches = 0;
    while pos + 8 <= payload.len() {
        let word = u32::from_le_bytes(payload[pos..pos + 4].try_into().expect("4"));
        let (meta_len, start) = if word == 0xffff_ffff {
            (
                u32::from_le_bytes(payload[pos + 4..pos + 8].try_into().expect("4")) as usize,
                pos + 8,
            )
        } else {
            (word as usize, pos + 4)
        };
        if meta_len == 0 {
            break;
        }
        let end = start
            .checked_add(meta_len)
            .filter(|e| *e <= payload.len())
            .ok_or_else(|| {
                format!(
                    "returned IPC whose message at byte {pos} runs past the end ({} bytes)",
                    payload.len()
                )
            })?;
        let mut aligned = arrow::buffer::MutableBuffer::new(meta_len);
        aligned.extend_from_slice(&payload[start..end]);
        let message = arrow::ipc::root_as_message(&aligned)
            .map_err(|e| format!("returned IPC with an unreadable message at byte {pos}: {e}"))?;
        if let Some(batch) = message.header_as_record_batch() {
            batches += 1;
            if batch.compression().is_some() {
                return Err(
                    "returned compressed IPC; ABI v1 takes uncompressed batches only".into(),
                );
            }
        }
        if message.header_as_dictionary_batch().is_some() {
            return Err("returned a dictionary batch; ABI v1 takes plain columns only".into());
        }
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a negative body length")?;
        pos = end
            .checked_add(body)
            .ok_or("a body length that overflows")?;
    }
    if batches != 1 {
        return Err(format!(
            "returned {batches} record batches; ABI v1 wants exactly one"
        ));
    }
    let reader = StreamReader::try_new(Cursor::new(payload), None)
        .map_err(|e| format!("returned unreadable IPC: {e}"))?;
    let schema = reader.schema();
    if schema.fields().len() != 1 {
        return Err(format!(
            "returned {} columns; a UDF returns exactly one",
            schema.fields().len()
        ));
    }
    let got = schema.field(0).data_type();
    if got != want {
        return Err(format!(
            "returned a {got} column; its metadata declares {want}"
        ));
    }
    let mut out = None;
    for b in reader {
        let b = b.map_err(|e| format!("returned an invalid batch: {e}"))?;
        out = Some(b);
    }
    let batch = out.ok_or("returned no record batch")?;
    if batch.num_rows() != rows {
        return Err(format!(
            "returned {} rows for {rows} input rows; a UDF returns one value per row",
            batch.num_rows()
        ));
    }
    Ok(batch.column(0).clone())
}
