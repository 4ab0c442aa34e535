#!/usr/bin/env bash
# Creates .venv with pyarrow for the interop test (a Flight client nobody here wrote) and
# the project's Python client (python/). Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${QUIVER_VENV:-.venv}"
if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pyarrow.flight" 2>/dev/null; }; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pyarrow>=15,<30"
fi
# The project's Python client (python/), editable: tests always see the checkout's code.
# With pandas: the client returns DataFrames when asked, and takes them as entity tables.
if ! "$venv/bin/python" -c "import quiver_client, pandas" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "./python[pandas]"
fi
"$venv/bin/python" -c "import pyarrow, pyarrow.flight; print('pyarrow', pyarrow.__version__, 'in', '$venv')"
