#!/usr/bin/env bash
# The dashboard's browser tests (tests/ui): a real `openloop serve` driven by Debian's Chromium
# through Playwright, then ruff on the tests. Installs what it needs first
# (scripts/install-ui-test-deps.sh), and builds the server unless told not to.
# Every test runs (no -x); exits non-zero if any test, fixture or lint check failed. A browser
# or Playwright that cannot start is a failure, never a skip.
#
# Usage: scripts/test-ui.sh [pytest arguments, e.g. -k openapi]
# Env:   OPENLOOP_BIN          the server binary; when set, nothing is built
#                              (default target/debug/openloop, built with cargo first)
#        OPENLOOP_UI_BUILD=0   do not run cargo build (use target/debug/openloop as it is)
#        CHROMIUM              the browser (default /usr/bin/chromium)
#        OPENLOOP_UI_ARTIFACTS screenshots and server.log (default target/ui-artifacts)
#        OPENLOOP_UI_VENV      the Python environment (default target/ui-venv)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-ui-test-deps.sh
VENV=${OPENLOOP_UI_VENV:-target/ui-venv}

if [ -z "${OPENLOOP_BIN:-}" ] && [ "${OPENLOOP_UI_BUILD:-1}" != 0 ]; then
  cargo build -p openloop-cli -p openloop-devbox-agent
fi

status=0
# The caches go under target/, not into the source tree.
"$VENV/bin/python" -m pytest -v -rfEs -o cache_dir="$PWD/target/ui-pytest-cache" tests/ui "$@" \
  || status=$?
export RUFF_CACHE_DIR="$PWD/target/ui-ruff-cache"
# The SDK's ruff settings (line length 100, the same rule set).
"$VENV/bin/ruff" check --config sdk/python/pyproject.toml tests/ui || status=1
"$VENV/bin/ruff" format --check --config sdk/python/pyproject.toml tests/ui || status=1

if [ $status -ne 0 ]; then
  echo "UI tests FAILED (exit $status); screenshots and server.log: ${OPENLOOP_UI_ARTIFACTS:-target/ui-artifacts}" >&2
fi
exit $status
