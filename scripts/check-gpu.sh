#!/usr/bin/env bash
# Compile the `gpu` feature (candle's CUDA backend) on a machine without a GPU or a
# CUDA install: fetches CUDA 13.0's compiler and libraries from PyPI into a virtual
# environment (about 1.3 GB, once) and runs `cargo check` with the feature on.
# It proves the build, not the run: running needs an NVIDIA GPU and its driver.
#
#   ./scripts/check-gpu.sh
#
# QUIVER_CUDA_VENV: where the environment goes (default ~/.cache/quiver/cuda13).
# CUDA_COMPUTE_CAP: the GPU generation kernels are built for (default 90, H100).
# CARGO_TARGET_DIR: as usual (default target/gpu-check, apart from the CPU builds).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/cuda-env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/gpu-check}
nvcc --version | tail -1
cargo check -p quiver-federation --features gpu --all-targets
echo "the gpu feature compiles (CUDA 13.0, compute capability $CUDA_COMPUTE_CAP)"
