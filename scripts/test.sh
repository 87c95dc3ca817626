#!/usr/bin/env bash
# Run the whole Loa Xã test suite against real servers (installs what it needs first).
# Extra arguments go to pytest, e.g. scripts/test.sh -k telemetry
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
exec .venv/bin/python -m pytest "$@"
