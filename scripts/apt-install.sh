#!/usr/bin/env bash
# Installs Debian packages (with sudo when not root), quietly, without recommends:
#   scripts/apt-install.sh PACKAGE...
# Used by the environment scripts for what the tests need beyond cargo and pip.
set -euo pipefail
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "installing $* from Debian's packages" >&2
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2
