//! `jaccard(a Utf8, b Utf8) -> Float64` in Rust: the same function as
//! `udfs/jaccard.wat`, for a view's `udfs: [udfs/rust/quiver_udf_example.wasm]`.

pub mod abi;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Float64Array};

quiver_udf_module!(
    b"{\"functions\":[{\"name\":\"jaccard\",\"args\":[\"Utf8\",\"Utf8\"],\"returns\":\"Float64\",\"deterministic\":true,\"description\":\"Jaccard similarity of two comma-separated sets (Rust)\"}]}"
);

/// |A ∩ B| / |A ∪ B| of two comma-separated sets; `None` when both are empty.
pub fn jaccard(a: &str, b: &str) -> Option<f64> {
    let set = |s: &str| s.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect::<BTreeSet<_>>();
    let (a, b) = (set(a), set(b));
    let union = a.union(&b).count();
    (union > 0).then(|| a.intersection(&b).count() as f64 / union as f64)
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn run(batch: &arrow_array::RecordBatch) -> Result<ArrayRef, String> {
    let a = batch.column(0).as_string_opt::<i32>().ok_or("argument 1 is not Utf8")?;
    let b = batch.column(1).as_string_opt::<i32>().ok_or("argument 2 is not Utf8")?;
    let out: Float64Array = (0..batch.num_rows())
        .map(|i| {
            if a.is_null(i) || b.is_null(i) {
                None
            } else {
                jaccard(a.value(i), b.value(i))
            }
        })
        .collect();
    Ok(Arc::new(out))
}


#[cfg(target_arch = "wasm32")]
#[unsafe(export_name = "jaccard")]
pub unsafe extern "C" fn jaccard_call(ptr: i32, len: i32) -> i64 {
    // SAFETY: the host wrote the input there (the ABI).
    unsafe { abi::call(ptr as u32 as usize as *const u8, len as u32 as usize, run) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_values_as_the_wat_example() {
        assert_eq!(super::jaccard("d1,d2", "d2,d3"), Some(1.0 / 3.0));
        assert_eq!(super::jaccard("d1,d1,d2,", "d2"), Some(0.5));
        assert_eq!(super::jaccard("", ""), None);
    }
}
