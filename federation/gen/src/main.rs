//! Writes `federation/src/service/rpc/quiver.federation.v1.rs` from
//! `federation/proto/quiver/federation/v1/coordinator.proto`.
//!
//! ```text
//! cargo run --manifest-path federation/gen/Cargo.toml -- <out dir>
//! ```
//!
//! Run from the repository root. The output directory defaults to the checked-in
//! location; `scripts/regen-proto.sh
//! --check` writes to a temporary one and compares.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Paths from where it runs (the repo root, as scripts/regen-proto.sh does), not from
    // where it was compiled: a target directory shared between checkouts at other
    // paths reuses this binary, and a compile-time path would point at the other one.
    let here = std::env::current_dir()?.join("federation");
    let root = if here.join("proto").is_dir() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    };
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("src/service/rpc"));
    std::fs::create_dir_all(&out)?;
    // SAFETY: single-threaded, before anything reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure()
        .out_dir(&out)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_protos(
            &[root.join("proto/quiver/federation/v1/coordinator.proto")],
            &[root.join("proto")],
        )?;
    println!("wrote {}", out.join("quiver.federation.v1.rs").display());
    Ok(())
}
