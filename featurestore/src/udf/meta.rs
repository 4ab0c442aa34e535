//! What a module declares, read without running it: the `quiver.udf.v1` custom section,
//! the exports and imports the ABI allows.

use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// Name of the custom section holding a module's metadata.
pub const SECTION: &str = "quiver.udf.v1";
/// The ABI version this host speaks.
pub const ABI_VERSION: i32 = 1;
/// The only import a module may have: `(import "quiver" "log" (func (param i32 i32)))`.
pub const LOG_IMPORT: (&str, &str) = ("quiver", "log");

/// Argument and return types a UDF may declare (Arrow names).
pub const TYPES: [&str; 6] = ["Boolean", "Int32", "Int64", "Float32", "Float64", "Utf8"];

/// One function of a module, as its metadata declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdfFunction {
    /// SQL name and export name.
    pub name: String,
    /// Argument types, Arrow names (`Float64`, `Utf8`, ...).
    pub args: Vec<String>,
    /// Return type, an Arrow name.
    pub returns: String,
    /// Same inputs give the same output, always. Feature views take only these.
    pub deterministic: bool,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl UdfFunction {
    /// The Arrow argument types.
    pub fn arg_types(&self) -> Vec<DataType> {
        self.args
            .iter()
            .map(|a| arrow_type(a).unwrap_or(DataType::Null))
            .collect()
    }

    /// The Arrow return type.
    pub fn return_type(&self) -> DataType {
        arrow_type(&self.returns).unwrap_or(DataType::Null)
    }

    /// `name(Float64, Float64) -> Float64`.
    pub fn signature(&self) -> String {
        format!(
            "{}({}) -> {}",
            self.name,
            self.args.join(", "),
            self.returns
        )
    }
}

/// The metadata section's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The functions, each exported under its name.
    pub functions: Vec<UdfFunction>,
}

pub(crate) fn arrow_type(name: &str) -> Option<DataType> {
    Some(match name {
        "Boolean" => DataType::Boolean,
        "Int32" => DataType::Int32,
        "Int64" => DataType::Int64,
        "Float32" => DataType::Float32,
        "Float64" => DataType::Float64,
        "Utf8" => DataType::Utf8,
        _ => return None,
    })
}

/// Most functions in one module; longest metadata section.
const MAX_FUNCTIONS: usize = 64;
const MAX_ARGS: usize = 16;
const MAX_SECTION_BYTES: usize = 64 * 1024;

fn is_sql_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

/// Parse and check `bytes` (a compiled module) without running it: valid WebAssembly,
/// one metadata section that parses, every declared function exported with the ABI's
/// signature, the ABI exports present, no import but the log function.
pub fn inspect(bytes: &[u8]) -> Result<Metadata, String> {
    let mut validator = wasmparser::Validator::new();
    validator
        .validate_all(bytes)
        .map_err(|e| format!("not a valid WebAssembly module: {e}"))?;
    let mut section: Option<Vec<u8>> = None;
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut imported_funcs: Vec<u32> = Vec::new();
    let mut types: Vec<(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>)> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid WebAssembly module: {e}"))?;
        match payload {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                return Err("a component, not a core module (ABI v1 takes core modules)".into());
            }
            Payload::CustomSection(c) if c.name() == SECTION => {
                if section.is_some() {
                    return Err(format!("two `{SECTION}` sections"));
                }
                if c.data().len() > MAX_SECTION_BYTES {
                    return Err(format!(
                        "the `{SECTION}` section is {} bytes, over {MAX_SECTION_BYTES}",
                        c.data().len()
                    ));
                }
                section = Some(c.data().to_vec());
            }
            Payload::TypeSection(r) => {
                for rec in r.into_iter_err_on_gc_types() {
                    let f = rec.map_err(|e| e.to_string())?;
                    types.push((f.params().to_vec(), f.results().to_vec()));
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.map_err(|e| e.to_string())?;
                    let allowed =
                        (imp.module, imp.name) == LOG_IMPORT && matches!(imp.ty, TypeRef::Func(_));
                    if !allowed {
                        return Err(format!(
                            "imports `{}::{}`; the only import a UDF may have is the function `{}::{}` (no WASI, no host access)",
                            imp.module, imp.name, LOG_IMPORT.0, LOG_IMPORT.1
                        ));
                    }
                    if let TypeRef::Func(t) = imp.ty {
                        imported_funcs.push(t);
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t.map_err(|e| e.to_string())?);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(|e| e.to_string())?;
                    exports.push((e.name.to_owned(), e.kind, e.index));
                }
            }
            _ => {}
        }
    }
    use wasmparser::ValType::{I32, I64};
    let sig = |index: u32| -> Option<&(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>)> {
        let n_imp = imported_funcs.len() as u32;
        let t = if index < n_imp {
            imported_funcs[index as usize]
        } else {
            *func_types.get((index - n_imp) as usize)?
        };
        types.get(t as usize)
    };
    for t in &imported_funcs {
        if types.get(*t as usize) != Some(&(vec![I32, I32], vec![])) {
            return Err(format!(
                "imports `{}::{}` with the wrong type; it is (func (param i32 i32))",
                LOG_IMPORT.0, LOG_IMPORT.1
            ));
        }
    }
    let export = |name: &str| exports.iter().find(|e| e.0 == name);
    let check_func = |name: &str,
                      want: (Vec<wasmparser::ValType>, Vec<wasmparser::ValType>),
                      text: &str|
     -> Result<(), String> {
        match export(name) {
            Some((_, ExternalKind::Func, idx)) if sig(*idx) == Some(&want) => Ok(()),
            Some((_, ExternalKind::Func, _)) => Err(format!(
                "export `{name}` has the wrong type; ABI v1 wants {text}"
            )),
            _ => Err(format!(
                "no exported function `{name}` ({text}); see docs/udf-abi.md"
            )),
        }
    };
    match export("memory") {
        Some((_, ExternalKind::Memory, 0)) => {}
        _ => return Err("no exported memory `memory`".into()),
    }
    check_func(
        "quiver_abi_version",
        (vec![], vec![I32]),
        "(func (result i32))",
    )?;
    check_func(
        "alloc",
        (vec![I32], vec![I32]),
        "(func (param i32) (result i32))",
    )?;
    check_func(
        "dealloc",
        (vec![I32, I32], vec![]),
        "(func (param i32 i32))",
    )?;
    let section = section.ok_or_else(|| {
        format!("no `{SECTION}` custom section: a UDF module declares its functions there (docs/udf-abi.md)")
    })?;
    let meta: Metadata = serde_json::from_slice(&section)
        .map_err(|e| format!("the `{SECTION}` section is not valid metadata: {e}"))?;
    if meta.functions.is_empty() || meta.functions.len() > MAX_FUNCTIONS {
        return Err(format!(
            "the `{SECTION}` section declares {} functions; a module has 1 to {MAX_FUNCTIONS}",
            meta.functions.len()
        ));
    }
    for (i, f) in meta.functions.iter().enumerate() {
        if !is_sql_name(&f.name) {
            return Err(format!(
                "function `{}`: a UDF name is lowercase letters, digits and `_`, at most 64 bytes",
                f.name
            ));
        }
        if meta.functions[..i].iter().any(|g| g.name == f.name) {
            return Err(format!("function `{}` is declared twice", f.name));
        }
        if ["memory", "alloc", "dealloc", "quiver_abi_version"].contains(&f.name.as_str()) {
            return Err(format!(
                "function `{}`: the name is reserved by the ABI",
                f.name
            ));
        }
        if f.args.is_empty() || f.args.len() > MAX_ARGS {
            return Err(format!(
                "function `{}`: {} arguments; a UDF takes 1 to {MAX_ARGS}",
                f.name,
                f.args.len()
            ));
        }
        for t in f.args.iter().chain([&f.returns]) {
            if arrow_type(t).is_none() {
                return Err(format!(
                    "function `{}`: type `{t}` is not one of {}",
                    f.name,
                    TYPES.join(", ")
                ));
            }
        }
        check_func(
            &f.name,
            (vec![I32, I32], vec![I64]),
            "(func (param i32 i32) (result i64))",
        )
        .map_err(|e| format!("function `{}` is declared in `{SECTION}`, but {e}", f.name))?;
    }
    Ok(meta)
}
