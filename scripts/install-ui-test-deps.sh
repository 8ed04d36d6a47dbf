#!/usr/bin/env bash
# Install what the browser tests of the dashboard (tests/ui) need, idempotently:
#   - what the server itself needs (scripts/install-deps.sh: uv, python3, bubblewrap, ...);
#   - Debian's Chromium (/usr/bin/chromium) and fonts, so screenshots render text;
#   - a Python environment at target/ui-venv (OPENLOOP_UI_VENV) with Playwright and pytest.
# Then it checks that Playwright launches that Chromium headless, and fails if it does not.
#
# The browser is always Debian's: Playwright is driven with executable_path=/usr/bin/chromium
# (env CHROMIUM). Never run `playwright install`: browser downloads are not reachable here, and
# the tests must not depend on a browser build of Playwright's own. The wheel's bundled driver
# (node + the Playwright server, inside the wheel from PyPI) is what talks to Chromium over a pipe.
#
# Pinned versions (verified together with chromium 156.0.8078.108-1~deb12u1 of bookworm-security
# and Python 3.11 of Debian): bump them together, and run scripts/test-ui.sh after.
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_VERSION=1.65.2
PYTEST_VERSION=9.2.0
RUFF_VERSION=0.17.6
VENV=${OPENLOOP_UI_VENV:-target/ui-venv}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

scripts/install-deps.sh

# Chromium and fonts from Debian. fonts-dejavu-core is fontconfig's default sans-serif, serif
# and monospace here and covers most letters and symbols; fonts-liberation stands in, with the
# same metrics, for Arial, Helvetica, Times and Courier, which stylesheets often name. Without
# any font, Chromium renders text as empty boxes.
need_apt=()
[ -x "$CHROMIUM" ] || need_apt+=(chromium)
for pkg in fonts-dejavu-core fonts-liberation fontconfig; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing apt packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # With Chromium's recommends (libgl1-mesa-dri, upower, ...): the set verified here.
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
[ -x "$CHROMIUM" ] || { echo "error: $CHROMIUM is missing after installing chromium" >&2; exit 1; }

# The Python environment: outside the source tree (target/ is ignored by git), reused across
# runs; `uv pip install` of already-satisfied pins is a local check (no download).
if ! [ -x "$VENV/bin/python" ]; then
  uv venv --quiet --python /usr/bin/python3 "$VENV"
fi
uv pip install --quiet --python "$VENV/bin/python" \
  "playwright==$PLAYWRIGHT_VERSION" "pytest==$PYTEST_VERSION" "ruff==$RUFF_VERSION"

# Prove that Playwright drives this Chromium headless, here, as this user.
#
# As root, Chromium refuses to start with its sandbox ("Running as root without --no-sandbox is
# not supported", crbug.com/638180): its setuid/namespace sandbox is not meant to be run by
# root. Playwright passes --no-sandbox itself unless chromium_sandbox=True is asked for
# (chromium_sandbox defaults to False); tests/ui/conftest.py says chromium_sandbox=False
# explicitly. That is acceptable here: the browser only loads pages of the Openloop server
# under test, on loopback. Nothing else is required: headless needs no X server, /dev/shm is
# large enough (and Playwright passes --disable-dev-shm-usage anyway); the "Failed to connect
# to the bus" (D-Bus) lines Chromium prints on stderr are harmless noise.
CHROMIUM="$CHROMIUM" "$VENV/bin/python" - <<'EOF'
import os
import sys
from importlib import metadata

from playwright.sync_api import sync_playwright

chromium = os.environ["CHROMIUM"]
try:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, chromium_sandbox=False)
        page = browser.new_page()
        page.set_content("<p id=t>ok</p>")
        assert page.inner_text("#t") == "ok"
        version = browser.version
        browser.close()
except Exception as e:  # noqa: BLE001 - any failure here is fatal, with its message
    sys.exit(f"error: Playwright cannot launch {chromium} headless: {e}")
print(f"ui test deps ready: chromium {version}, playwright {metadata.version('playwright')}")
EOF
