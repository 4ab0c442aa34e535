#!/usr/bin/env bash
# Installs what the debugger's browser test needs: Debian's chromium (headless) and the
# Python CDP client (websocket-client) in .venv next to pyarrow. Idempotent: does
# nothing when both are there. Prints the chromium path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QUIVER_VENV:-.venv}"
./scripts/python-env.sh
if ! command -v chromium >/dev/null; then
  ./scripts/apt-install.sh chromium fonts-dejavu-core
fi
if ! "$venv/bin/python" -c "import websocket" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "websocket-client>=1.6,<2" >&2
fi
command -v chromium
