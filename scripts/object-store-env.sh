#!/usr/bin/env bash
# Installs the object-store servers the object-storage tests run against, on
# 127.0.0.1 only: moto's S3 server (PyPI `moto[server]`) and the Azure SDK that creates
# the test container into .venv, Azurite (npm `azurite`, Azure Blob) into a cache
# folder outside the clone. Idempotent. Prints the Azurite binary as its last line;
# scripts/object_stores.py starts both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QUIVER_VENV:-.venv}"
./scripts/python-env.sh >/dev/null
if ! "$venv/bin/python" -c "import moto.server, azure.storage.blob" 2>/dev/null; then
  echo "installing moto[server] and azure-storage-blob into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto[server]>=5.0.20,<6" "azure-storage-blob>=12.19,<13" >&2
fi
azurite_dir="${QUIVER_AZURITE_DIR:-${HOME:-/nonexistent}/.cache/quiver/azurite}"
if [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null; then
    ./scripts/apt-install.sh npm
  fi
  echo "installing azurite into $azurite_dir" >&2
  mkdir -p "$azurite_dir"
  npm install --prefix "$azurite_dir" --no-audit --no-fund --silent "azurite@3" >&2
fi
echo "$azurite_dir/node_modules/.bin/azurite-blob"
