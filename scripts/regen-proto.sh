#!/usr/bin/env bash
# Regenerate federation's gRPC code from federation/proto (vendored protoc; no install).
#
#   ./scripts/regen-proto.sh           # rewrite federation/src/service/rpc/*.rs
#   ./scripts/regen-proto.sh --check   # fail if the checked-in code is stale (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
gen=(cargo run --quiet --manifest-path federation/gen/Cargo.toml --)
checked_in=federation/src/service/rpc/quiver.federation.v1.rs
if [ "${1:-}" = "--check" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "${gen[@]}" "$tmp" >/dev/null
    if ! diff -u "$checked_in" "$tmp/quiver.federation.v1.rs"; then
        echo "$checked_in is stale: run ./scripts/regen-proto.sh and commit the result" >&2
        exit 1
    fi
    echo "generated protocol code is current"
else
    "${gen[@]}"
fi
