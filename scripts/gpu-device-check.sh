#!/usr/bin/env bash
# The GPU checks of docs/training-devices.md, for a session lent a GPU machine that has
# no Rust toolchain and no network (the `device` tool's machines).
#
#   ./scripts/gpu-device-check.sh build    # here, no GPU needed: about 75 min on 2 cores
#   # then, with the device tool: run `bash .gpu-check/run.sh`, carry [".gpu-check"]
#
# `build` fetches CUDA 13.0's compiler and libraries from PyPI (as check-gpu.sh does),
# links against a stub libcuda.so.1 generated from cudarc's driver bindings (the
# driver library is not on PyPI; the real one is loaded on the GPU machine), builds the
# federation unit tests and the local_training bench in release with `--features
# gpu`, strips and gzips them into .gpu-check/ (about 30 MB) with run.sh beside them.
# On the GPU machine run.sh finds cuBLAS, cuRAND, NVRTC and the CUDA runtime in its
# Python packages, runs every unit test (among them
# train::tests::cuda_computes_what_the_reference_computes) and the bench, and writes
# test.log and bench.log to $OUT.
#
# QUIVER_GPU_TARGET_DIR: where to build (default ~/.cache/quiver-gpu/target, apart from
# the CPU builds: the gpu feature changes candle-core).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "build" ] || { sed -n '2,18p' "$0"; exit 2; }

. scripts/cuda-env.sh

# A stub libcuda.so.1 with every driver function cudarc declares, for the linker only.
bindings=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' | sort | tail -1)
[ -n "$bindings" ] || { cargo fetch >/dev/null; bindings=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' | sort | tail -1); }
stub=$(mktemp -d)
grep -o 'fn cu[A-Za-z0-9_]*' "$bindings" | sort -u | sed 's/^fn \(.*\)/void \1(void) {}/' >"$stub/cuda.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/libcuda.so" "$stub/cuda.c"
rm -rf "$stub"

export CARGO_TARGET_DIR=${QUIVER_GPU_TARGET_DIR:-$HOME/.cache/quiver-gpu/target}
export CARGO_INCREMENTAL=0
tests=$(cargo test --release -p quiver-federation --features gpu --lib --no-run --message-format json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
bench=$(cargo bench -p quiver-federation --features gpu --bench local_training --no-run --message-format json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -n "$tests" ] && [ -n "$bench" ] || { echo "build failed; rerun the cargo commands above to see why" >&2; exit 1; }
mkdir -p .gpu-check
grep -qx '/.gpu-check/' .git/info/exclude 2>/dev/null || echo '/.gpu-check/' >>.git/info/exclude
cp "$tests" .gpu-check/fed-lib-test
cp "$bench" .gpu-check/local-training
strip .gpu-check/fed-lib-test .gpu-check/local-training
gzip -9f .gpu-check/fed-lib-test .gpu-check/local-training
cat >.gpu-check/run.sh <<'RUN'
#!/bin/bash
# On the GPU machine: the checks of docs/training-devices.md.
cd "$(dirname "$0")"
set -x
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
for f in *.gz; do gunzip -f "$f"; done
chmod +x fed-lib-test local-training
libs=$(find /opt /usr/local /usr/lib \( -name 'libcublas.so.13*' -o -name 'libcublasLt.so.13*' \
    -o -name 'libcurand.so.10*' -o -name 'libnvrtc.so.13*' -o -name 'libcudart.so.13*' \) 2>/dev/null \
    | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
ldd ./fed-lib-test | grep -E 'cuda|cublas|curand|nvrtc|not found'
set -o pipefail
timeout 240 ./fed-lib-test --test-threads 2 2>&1 | tee "$OUT/test.log"
echo "tests exit: $?"
timeout 200 ./local-training --seconds 1.5 2>&1 | tee "$OUT/bench.log"
echo "bench exit: $?"
RUN
chmod +x .gpu-check/run.sh
du -sh .gpu-check
echo "ready: with the device tool run \`bash .gpu-check/run.sh\`, carry [\".gpu-check\"]"
