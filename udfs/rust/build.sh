#!/usr/bin/env bash
# Builds the Rust example UDF for wasm32-unknown-unknown when that target is installed
# (`rustup target add wasm32-unknown-unknown`), into udfs/rust/quiver_udf_example.wasm.
set -euo pipefail
cd "$(dirname "$0")"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "the wasm32-unknown-unknown target is not installed: rustup target add wasm32-unknown-unknown" >&2
  exit 1
fi
cargo build --release --target wasm32-unknown-unknown
cp "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/quiver_udf_example.wasm" .
echo "udfs/rust/quiver_udf_example.wasm ($(wc -c < quiver_udf_example.wasm) bytes)"
