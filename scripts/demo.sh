#!/usr/bin/env bash
# The main job: set-up, then `fabpm demo` (simulator, edge, cloud and console on this machine).
set -euo pipefail
cd "$(dirname "$0")/.."
FABPM_BROWSER=0 scripts/bootstrap.sh
exec .venv/bin/fabpm demo "$@"
