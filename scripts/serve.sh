#!/usr/bin/env bash
# Build and start Openloop on its embedded defaults (SQLite and sandboxes under ./.openloop,
# listening on 127.0.0.1:8700). Installs what it needs first. Extra arguments go to `openloop serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace
./target/release/openloop image build
exec ./target/release/openloop serve "$@"
