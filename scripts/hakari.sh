#!/usr/bin/env bash
# Checks that workspace-hack/ (the crate that gives every third-party dependency one
# feature set across the workspace, so building any subset reuses what a workspace
# build compiled; docs/build.md) is what cargo-hakari generates from the current
# manifests, and that every member depends on it. CI runs this; after changing a
# dependency, run `cargo hakari generate && cargo hakari manage-deps` and commit.
#
# cargo-hakari is installed (pinned, --locked) into a tools folder kept beside the
# target cache, so only the first run on a machine pays for it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.9.39
tools="${QUIVER_TOOLS_DIR:-${HOME:-/nonexistent}/.cache/quiver/tools}"
if command -v cargo-hakari >/dev/null && cargo hakari --version | grep -q "$version"; then
  hakari=(cargo hakari)
else
  if ! [ -x "$tools/bin/cargo-hakari" ] || ! "$tools/bin/cargo-hakari" hakari --version | grep -q "$version"; then
    echo "installing cargo-hakari $version into $tools"
    cargo install --quiet --locked --root "$tools" --version "$version" cargo-hakari
  fi
  hakari=("$tools/bin/cargo-hakari" hakari)
fi

"${hakari[@]}" generate --diff || {
  echo "workspace-hack/Cargo.toml is stale: run 'cargo hakari generate' and commit it" >&2
  exit 1
}
"${hakari[@]}" manage-deps --dry-run || {
  echo "a member does not depend on workspace-hack: run 'cargo hakari manage-deps'" >&2
  exit 1
}
echo "workspace-hack is current"
