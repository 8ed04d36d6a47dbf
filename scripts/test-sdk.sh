#!/usr/bin/env bash
# The Python SDK's own tests, in a throwaway uv environment: ruff lint and format check, pytest.
set -euo pipefail
cd "$(dirname "$0")/../sdk/python"
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
uv venv --quiet --python /usr/bin/python3 "$venv"
uv pip install --quiet --python "$venv/bin/python" "pydantic>=2,<3" pytest ruff
"$venv/bin/ruff" check runloop tests
"$venv/bin/ruff" format --check runloop tests
PYTHONPATH=. "$venv/bin/python" -m pytest -q tests
