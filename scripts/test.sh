#!/usr/bin/env bash
# The project's test command (README "Quick start"; .ci/run calls it too).
#
# Runs formatting checks and every test of the workspace: unit tests, the one
# integration binary per crate, and doctests. Anything the tests need beyond cargo is
# installed here, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== Python with pyarrow (Flight interop), chromium (the debugger's page), object-store servers"
./scripts/browser-env.sh >/dev/null
./scripts/object-store-env.sh >/dev/null

echo "== cargo test --workspace"
# --no-fail-fast: one run reports every failing test, not just the first binary's.
cargo test --workspace --no-fail-fast "$@"

echo "== all tests passed in $(( $(date +%s) - started ))s"
