#!/usr/bin/env bash
# Installs everything Lineside needs on a fresh Debian machine: system packages and a .venv with the project.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] || ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto systemd libseccomp2 >/dev/null
  fi
  if ! command -v npm >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
fi
# Eclipse Tahu's Sparkplug decoder: the tests judge Lineside's Sparkplug encoder with it
if command -v npm >/dev/null && [ ! -d tests/node/node_modules/sparkplug-payload ]; then
  npm install --prefix tests/node --no-audit --no-fund --silent >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
