#!/usr/bin/env bash
# Bring up the Loa Xã demo on this machine (installs what it needs first). Extra arguments go to
# `loaxa demo`, e.g. scripts/demo.sh --for 60
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec .venv/bin/loaxa demo "$@"
