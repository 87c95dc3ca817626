#!/usr/bin/env bash
# What the README's two commands (scripts/demo.sh, scripts/test.sh) install: the `dev` role of
# scripts/install.sh — every real server the demo and the tests start, and .venv with the project
# and its test tools. Production machines use scripts/install.sh gateway|server instead.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/install.sh dev
