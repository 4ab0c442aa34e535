# Sourced by check-gpu.sh and gpu-device-check.sh: CUDA 13.0's compiler and libraries
# from PyPI in a virtual environment (about 1.3 GB, once), exported as CUDA_HOME,
# CUDA_PATH, PATH and LIBRARY_PATH; sets `cuda` to the toolkit folder.
#
# QUIVER_CUDA_VENV: where the environment goes (default ~/.cache/quiver/cuda13).
# CUDA_COMPUTE_CAP: the GPU generation kernels are built for (default 90, H100/H200).
venv=${QUIVER_CUDA_VENV:-$HOME/.cache/quiver/cuda13}
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
fi
# One CUDA release for every part: a newer nvvm emits PTX the 13.0 ptxas refuses.
"$venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*"
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
# The wheels ship versioned libraries only; the linker and cudarc look for lib*.so.
for f in "$cuda"/lib/lib*.so.*; do
    base=${f%%.so.*}.so
    [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
done
[ -e "$cuda/lib64" ] || ln -s lib "$cuda/lib64"
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" PATH="$cuda/bin:$PATH" LIBRARY_PATH="$cuda/lib"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
