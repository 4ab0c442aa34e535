#!/usr/bin/env bash
# Creates .venv with pyarrow for the interop test (a Flight client nobody here wrote).
# Idempotent: does nothing when .venv already imports pyarrow.flight.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QUIVER_VENV:-.venv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pyarrow.flight" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pyarrow>=15,<30"
"$venv/bin/python" -c "import pyarrow, pyarrow.flight; print('pyarrow', pyarrow.__version__, 'in', '$venv')"
