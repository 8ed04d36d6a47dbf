#!/usr/bin/env bash
# Fuzz the API against its own OpenAPI document with schemathesis (from PyPI): a live server
# on a temporary data directory (SQLite) with its admin key, some real data in it (the test
# fixture deployed, one invocation, one devbox), then every operation with bounded examples.
# Checks: no 5xx, every response's status, content type and body as documented.
#
# Usage: scripts/schemathesis.sh [extra schemathesis arguments]
# Env:   OPENLOOP_BIN (default target/debug/openloop), SCHEMATHESIS_MAX_EXAMPLES (default 50),
#        SCHEMATHESIS_VERSION (default the pinned one below).
#
# Excluded operation (and why):
#   POST /v1/deployments: `source` is a directory on the server or a git URL; fuzzed values
#     would have the server copy arbitrary host directories (`/`) or clone arbitrary URLs.
#     Its errors are covered by the Rust tests (crates/openloop-cli/tests/errors.rs).
#   POST /v1/repositories: for the same reason (a connection with poll_seconds runs
#     git ls-remote on its URL, and deploys it). A connection is made below instead, and the
#     public webhook is fuzzed like everything else (crates/openloop-cli/tests/repositories_limits.rs
#     covers creation's errors).
# Everything else is fuzzed, devbox creation included (bounded: a few examples, and the
# server's own per-key quota). Streams (SSE) are fuzzed too: with ids that do not exist they
# answer at once; they are not followed.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${OPENLOOP_BIN:-target/debug/openloop}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-50}
VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
[ -x "$BIN" ] || cargo build -p openloop-cli -p openloop-devbox-agent

WORK=$(mktemp -d /tmp/openloop-schemathesis.XXXXXX)
# Devbox sandboxes run as an unprivileged uid that must traverse to the data directory.
chmod 0711 "$WORK"
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        # SIGTERM: the server shuts its devboxes down (unmounts, cgroups) before exiting.
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# schemathesis in a throwaway virtual environment.
uv venv --quiet --python /usr/bin/python3 "$WORK/venv"
uv pip install --quiet --python "$WORK/venv/bin/python" "schemathesis==$VERSION"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
"$BIN" serve --port "$PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
    curl -fsS "$URL/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; echo "the server exited" >&2; exit 1; }
    sleep 0.1
done
KEY=$(cat "$WORK/data/admin-key")
AUTH="Authorization: Bearer $KEY"

# Real data, so that lists and views are checked with content in them.
"$BIN" deploy --server "$URL" --api-key "$KEY" crates/openloop-cli/tests/fixtures/test_agent >/dev/null
curl -fsS -X POST "$URL/v1/functions/test_agent/echo/invoke_sync" -H "$AUTH" \
    -H 'Content-Type: application/json' --data '{"request": {"text": "hi"}}' >/dev/null
curl -fsS -X POST "$URL/v1/devboxes" -H "$AUTH" -H 'Content-Type: application/json' \
    --data '{"name": "schemathesis"}' >/dev/null
# A connected repository (webhooks only: its URL is never fetched) with one recorded delivery.
REPO=$(curl -fsS -X POST "$URL/v1/repositories" -H "$AUTH" -H 'Content-Type: application/json' \
    --data "{\"url\": \"$WORK/never-fetched.git\", \"name\": \"schemathesis\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -sS -o /dev/null -X POST "$URL/v1/repositories/$REPO/webhook" -H 'X-GitHub-Event: push' \
    -H 'Content-Type: application/json' --data '{}'
# A built blueprint, so its reads are fuzzed past the 404.
BLUEPRINT=$(curl -fsS -X POST "$URL/v1/blueprints" -H "$AUTH" -H 'Content-Type: application/json' \
    --data '{"name": "schemathesis", "system_setup_commands": ["true"]}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

cat >"$WORK/schemathesis.toml" <<'EOF'
# Devbox creation starts real sandboxes: a few examples are enough.
[[operations]]
include-path-regex = "^/v1/devboxes(/create_and_await_running)?$"
include-method = "POST"
generation.max-examples = 4
EOF
cat >>"$WORK/schemathesis.toml" <<EOF
# The connected repository's reads and its public webhook, by its real id (random ids only
# reach the 404): anything fuzzed into the webhook's headers and body must be refused cleanly.
[[operations]]
include-operation-id-regex = "^repositories_(get|deliveries|webhook)\$"
parameters = { "path.id" = "$REPO" }
# The blueprint's reads, by its real id.
[[operations]]
include-operation-id-regex = "^blueprints_(get|logs)\$"
parameters = { "path.id" = "$BLUEPRINT" }
EOF

set +e
# Run from the temporary directory: schemathesis keeps a cache (`.schemathesis/`) in its cwd.
(cd "$WORK" && "$WORK/venv/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
    --header "$AUTH" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --exclude-operation-id deployments_create \
    --exclude-operation-id repositories_create \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,coverage,fuzzing,stateful \
    --workers 2 \
    --request-timeout 90 \
    --seed 1 \
    --no-color \
    "$@")
status=$?
set -e
if [ $status -ne 0 ]; then
    echo "--- server log (last 50 lines) ---" >&2
    tail -n 50 "$WORK/server.log" >&2
fi
exit $status
