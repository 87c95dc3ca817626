#!/usr/bin/env bash
# Install what Loa Xã needs on Debian 12 / Raspberry Pi OS (bookworm): system packages and a
# Python virtual environment in .venv with the project installed in it.
#   scripts/install-deps.sh          # runtime + demo
#   scripts/install-deps.sh --test   # also what the test suite needs (test libraries)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

APT_PACKAGES=(python3 python3-venv python3-dev gcc mosquitto mosquitto-clients influxdb influxdb-client
              victoria-metrics ffmpeg espeak-ng socat sqlite3 faketime)
# (the web UI tests will add chromium and chromium-driver here)

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts these as system services on install; Loa Xã's demo and tests start their own.
for svc in mosquitto influxdb victoria-metrics; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
extras="."
[ "$want_test" = 1 ] && extras=".[dev]"
echo "==> pip install -e $extras"
.venv/bin/python -m pip install -q --upgrade pip > .venv/pip.log 2>&1 || { cat .venv/pip.log; exit 1; }
.venv/bin/python -m pip install -q -e "$extras" >> .venv/pip.log 2>&1 || { cat .venv/pip.log; exit 1; }
echo "==> ready: .venv/bin/loaxa --help"
