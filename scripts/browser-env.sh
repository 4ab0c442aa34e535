#!/usr/bin/env bash
# Installs what the debugger's browser test needs: Debian's chromium (headless) and the
# Python CDP client (websocket-client) in .venv next to pyarrow. Idempotent: does
# nothing when both are there. Prints the chromium path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QUIVER_VENV:-.venv}"
./scripts/python-env.sh
if ! command -v chromium >/dev/null; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing chromium from Debian's packages" >&2
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >&2
fi
if ! "$venv/bin/python" -c "import websocket" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "websocket-client>=1.6,<2" >&2
fi
command -v chromium
