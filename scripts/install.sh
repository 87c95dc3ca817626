#!/usr/bin/env bash
# Install Loa Xã for one role on Debian 12 / Raspberry Pi OS (bookworm). Safe to re-run (upgrades
# use it too): it only adds what is missing, never stops, disables or restarts a running service,
# and never overwrites a config in /etc/loaxa.
#
#   scripts/install.sh gateway   # a commune's Raspberry Pi: gateway + its LAN broker + audio out
#   scripts/install.sh server    # the district/province server: scheduler + central broker + TTS
#   scripts/install.sh dev       # a developer's machine / CI: everything the demo and tests start
#   scripts/install.sh ROLE --print-packages   # list the Debian packages of ROLE and stop
#
# gateway and server also create the system user `loaxa`, and install that role's systemd unit
# (not enabled: enable it once /etc/loaxa holds the config — see docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."

role="${1:-}"
shift || true
print_only=0
for arg in "$@"; do
  case "$arg" in
    --print-packages) print_only=1 ;;
    *) echo "install.sh: unknown option '$arg' (see the header of scripts/install.sh)" >&2; exit 2 ;;
  esac
done

BASE=(python3 python3-venv python3-dev gcc sqlite3)
case "$role" in
  gateway)
    # the LAN broker, audio for the local amplifier; no InfluxDB here (the gateway writes to the centre's)
    PACKAGES=("${BASE[@]}" mosquitto mosquitto-clients ffmpeg)
    UNITS=(loaxa-gateway.service)
    EXTRA="" ;;
  server)
    # the central broker, audio processing and Vietnamese TTS; InfluxDB is installed and run per
    # docs/operations.md (a 2.x/3.x server or Debian's influxdb), not by this script
    PACKAGES=("${BASE[@]}" mosquitto mosquitto-clients ffmpeg espeak-ng)
    UNITS=(loaxa-scheduler.service)
    EXTRA="" ;;
  dev)
    # every real server and tool the demo and the test suite start themselves (chromium: the web UI tests)
    PACKAGES=("${BASE[@]}" mosquitto mosquitto-clients influxdb influxdb-client victoria-metrics ffmpeg
              espeak-ng socat postgresql faketime chromium)
    UNITS=()
    EXTRA="[dev]" ;;
  *)
    echo "usage: scripts/install.sh gateway|server|dev [--print-packages]" >&2
    exit 2 ;;
esac

if [ "$print_only" = 1 ]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  # policy-rc.d 101: packages installed now are not started by their maintainer scripts (the demo
  # and tests start their own servers); services that were already running are left untouched.
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ "$role" = dev ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && added_policy=1
    trap '[ "$added_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
echo "==> pip install -e .$EXTRA"
.venv/bin/python -m pip install -q --upgrade pip > .venv/pip.log 2>&1 || { cat .venv/pip.log; exit 1; }
.venv/bin/python -m pip install -q -e ".$EXTRA" >> .venv/pip.log 2>&1 || { cat .venv/pip.log; exit 1; }

if [ "$role" != dev ]; then
  if ! id loaxa >/dev/null 2>&1; then
    echo "==> creating system user loaxa"
    $SUDO useradd --system --home-dir /var/lib/loaxa --shell /usr/sbin/nologin loaxa
  fi
  if [ "$role" = gateway ]; then
    for g in gpio dialout audio; do
      getent group "$g" >/dev/null && $SUDO usermod -a -G "$g" loaxa
    done
  fi
  $SUDO install -d -o root -g loaxa -m 0750 /etc/loaxa
  $SUDO install -d -o loaxa -g loaxa -m 0750 /var/lib/loaxa
  if command -v systemctl >/dev/null && [ -d /etc/systemd/system ]; then
    for u in "${UNITS[@]}"; do
      $SUDO install -m 0644 "systemd/$u" "/etc/systemd/system/$u"
      echo "==> installed /etc/systemd/system/$u (enable it once /etc/loaxa is configured:" \
           "systemctl enable --now $u)"
    done
    $SUDO systemctl daemon-reload 2>/dev/null || true
  fi
  if [ "$(pwd)" != /opt/loaxa ]; then
    echo "note: the systemd units run /opt/loaxa/.venv/bin/loaxa; this checkout is $(pwd)"
  fi
fi
echo "==> ready ($role): .venv/bin/loaxa --help"
