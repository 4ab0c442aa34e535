//! quiver's UDF ABI v1 for Rust guests (docs/udf-abi.md): `alloc`/`dealloc`, the ABI
//! version, and [`call`], which decodes the input batch, runs a function on it and
//! encodes its column (or its error) as the result region.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{Field, Schema};

/// The ABI version (the export `quiver_abi_version`).
pub const ABI_VERSION: i32 = 1;

/// The guest's `alloc`: `len` bytes, 8-byte aligned, owned by the host until `dealloc`.
pub fn alloc(len: usize) -> *mut u8 {
    let layout = std::alloc::Layout::from_size_align(len.max(1), 8).expect("layout");
    // SAFETY: the layout has a non-zero size.
    unsafe { std::alloc::alloc(layout) }
}

/// The guest's `dealloc` of what [`alloc`] returned.
///
/// # Safety
/// `ptr` and `len` must come from one call of [`alloc`], freed once.
pub unsafe fn dealloc(ptr: *mut u8, len: usize) {
    let layout = std::alloc::Layout::from_size_align(len.max(1), 8).expect("layout");
    // SAFETY: the caller passes what alloc returned with the same length.
    unsafe { std::alloc::dealloc(ptr, layout) }
}

fn decode(input: &[u8]) -> Result<RecordBatch, String> {
    let reader = StreamReader::try_new(input, None).map_err(|e| e.to_string())?;
    let mut out = None;
    for b in reader {
        out = Some(b.map_err(|e| e.to_string())?);
    }
    out.ok_or_else(|| "no record batch in the input".to_owned())
}

fn encode(column: ArrayRef) -> Result<Vec<u8>, String> {
    let schema = Arc::new(Schema::new(vec![Field::new("out", column.data_type().clone(), true)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![column]).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut w = StreamWriter::try_new(&mut buf, &schema).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    drop(w);
    Ok(buf)
}

/// The result region `[status u32][0 u32][payload]`, leaked to the host; packed
/// `(address << 32) | length`.
fn region(status: u32, payload: &[u8]) -> i64 {
    let len = 8 + payload.len();
    let p = alloc(len);
    // SAFETY: p holds len bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(p, len) };
    out[..4].copy_from_slice(&status.to_le_bytes());
    out[4..8].copy_from_slice(&[0; 4]);
    out[8..].copy_from_slice(payload);
    ((p as usize as i64) << 32) | len as i64
}

/// Decode the input at `[ptr, ptr + len)`, run `f` on it, encode its column.
///
/// # Safety
/// `ptr` and `len` must be the range the host wrote the input to.
pub unsafe fn call(
    ptr: *const u8,
    len: usize,
    f: impl FnOnce(&RecordBatch) -> Result<ArrayRef, String>,
) -> i64 {
    // SAFETY: the host wrote len bytes at ptr (the ABI).
    let input = unsafe { std::slice::from_raw_parts(ptr, len) };
    match decode(input).and_then(|b| f(&b)).and_then(encode) {
        Ok(bytes) => region(0, &bytes),
        Err(e) => region(1, e.as_bytes()),
    }
}

/// Declare a module's functions (the `quiver.udf.v1` custom section) and export the
/// ABI's `quiver_abi_version`, `alloc` and `dealloc`.
#[macro_export]
macro_rules! quiver_udf_module {
    ($json:literal) => {
        #[unsafe(link_section = "quiver.udf.v1")]
        #[used]
        static QUIVER_UDF_METADATA: [u8; $json.len()] = *$json;

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn quiver_abi_version() -> i32 {
            $crate::abi::ABI_VERSION
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn alloc(len: i32) -> i32 {
            $crate::abi::alloc(len as u32 as usize) as usize as i32
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn dealloc(ptr: i32, len: i32) {
            // SAFETY: the host gives back what alloc returned.
            unsafe { $crate::abi::dealloc(ptr as u32 as usize as *mut u8, len as u32 as usize) }
        }
    };
}
