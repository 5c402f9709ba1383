#!/usr/bin/env bash
# The test command: set-up, lint, format check, type check, then the test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k outbox).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "[test] ruff check"; ruff check .
echo "[test] ruff format --check"; ruff format --check .
echo "[test] mypy shared edge opcua_sim fabpm cloud"; mypy shared edge opcua_sim fabpm cloud
# PostgreSQL runs the storage tests too where one answers (CI machines have it on 127.0.0.1:5432).
if [ -z "${FABPM_TEST_PG_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
  export FABPM_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:5432/test"
fi
echo "[test] pytest"
exec python -m pytest -q -p no:cacheprovider "$@"
