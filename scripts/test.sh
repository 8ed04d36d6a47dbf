#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, starts PostgreSQL,
# builds the workspace, builds the devbox base image once, then runs the Rust tests
# (SQLite and PostgreSQL), schemathesis against a live server, the Python SDK tests
# (ruff + pytest) and the dashboard's browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# Two statements: `export X=$(cmd)` would hide a failing start-postgres.sh from `set -e`.
if [ -z "${OPENLOOP_TEST_POSTGRES_URL:-}" ]; then
    OPENLOOP_TEST_POSTGRES_URL=$(scripts/start-postgres.sh)
fi
export OPENLOOP_TEST_POSTGRES_URL
# The PostgreSQL variants of the tests fail (never skip) without a database here.
export OPENLOOP_REQUIRE_POSTGRES=1

cargo build --workspace --all-targets
# The devbox base image is built once and cached in /var/cache/openloop/images.
./target/debug/openloop image build

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The API against its own OpenAPI document: no 5xx, every response as documented.
scripts/schemathesis.sh

scripts/test-sdk.sh
# The dashboard in a real browser (Debian's Chromium through Playwright).
OPENLOOP_UI_BUILD=0 scripts/test-ui.sh
