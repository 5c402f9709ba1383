#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a venv in .venv with fabpm and its extras, and Mosquitto.
# torch 2.13.0 is installed first, alone, so pip takes the local CPU wheel and never a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.fabpm-installed
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[bootstrap] installing packages (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q "torch>=2.4"
  .venv/bin/python -m pip install -q -e ".[all]"
  touch "$stamp"
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "[bootstrap] installing mosquitto (Debian package)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq mosquitto >/dev/null; fi
fi
if [ "${FABPM_BROWSER:-1}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[bootstrap] installing chromium (Debian package) for the console's browser tests"
  if [ "$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "[bootstrap] chromium unavailable: browser tests will skip"
  else (sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null) || echo "[bootstrap] chromium unavailable: browser tests will skip"; fi
fi
