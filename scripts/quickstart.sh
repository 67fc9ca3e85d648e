#!/usr/bin/env bash
# One command, fresh machine: install, then train -> quantize -> bundle -> daemon -> verdicts over MQTT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/quickstart.py "$@"
