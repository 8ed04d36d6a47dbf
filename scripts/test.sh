#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, starts PostgreSQL,
# builds the workspace, builds the devbox base image once, then runs the Rust tests
# (SQLite and PostgreSQL) and the Python SDK tests (ruff + pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export OPENLOOP_TEST_POSTGRES_URL=${OPENLOOP_TEST_POSTGRES_URL:-$(scripts/start-postgres.sh)}

cargo build --workspace --all-targets
# The devbox base image is built once and cached in /var/cache/openloop/images.
./target/debug/openloop image build

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

scripts/test-sdk.sh
