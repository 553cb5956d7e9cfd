#!/usr/bin/env bash
# Run the whole test suite (lint, then pytest on PostgreSQL) — the README's test command.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/generation -k cancel
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv requirements-dev.txt
bash scripts/services.sh >/dev/null
bash scripts/system-deps.sh
.venv/bin/ruff check .
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/genonaut}"
export REDIS_TEST_URL="${REDIS_TEST_URL:-redis://127.0.0.1:6379/15}"
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --create-db "$@"
