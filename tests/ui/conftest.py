"""Fixtures of the dashboard's browser tests: a real Openloop server and a real Chromium.

Run them with `scripts/test-ui.sh` (it installs Chromium, Playwright and pytest first).

Fixtures:
  server    (session) a running `openloop serve` on a free loopback port and a fresh data
            directory: `.base_url`, `.admin_key`, `.data_dir`, `.log_path`.
  api       (session) `Api(server)`: the JSON API with the admin key (`get`, `post`, `delete`,
            and `deploy(source=examples/example_python_agent)`, which waits for the build).
  browser   (session) Playwright's Chromium: Debian's /usr/bin/chromium (env CHROMIUM), headless.
  page      (test) a fresh context and page. Every console message of type `error` and every
            uncaught page error fails the test at teardown; a test that expects some marks
            itself `@pytest.mark.allow_console_errors(r"regex", ...)`. A failing test's page
            is saved as `FAILED-<test>.png`.
  shot      `shot(page, name)` saves a full-page screenshot as `<artifacts>/<name>.png` and
            returns its path.

Environment:
  OPENLOOP_BIN           the server binary (default target/debug/openloop)
  CHROMIUM               the browser (default /usr/bin/chromium)
  OPENLOOP_UI_ARTIFACTS  screenshots and the server log (default target/ui-artifacts)
  OPENLOOP_UI_KEEP_DATA  1: keep the server's data directory after the run
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("OPENLOOP_BIN") or REPO / "target/debug/openloop")
CHROMIUM = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("OPENLOOP_UI_ARTIFACTS") or REPO / "target/ui-artifacts")
EXAMPLE_AGENT = REPO / "examples/example_python_agent"

SERVER_START_TIMEOUT = 60.0
# SIGTERM: the server shuts its devboxes down (unmounts, cgroups) before it exits.
SERVER_STOP_TIMEOUT = 60.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_console_errors(*patterns): console errors matching one of these regexes "
        "(re.search) do not fail the test",
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Only this run's screenshots and log are left in the artifacts directory.
    for old in [*ARTIFACTS.glob("*.png"), *ARTIFACTS.glob("*.log")]:
        old.unlink()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    # Keeps each phase's report on the item, so the page fixture knows whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# --- the server -------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    admin_key: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return self.base_url + path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no server log: {e})"


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(prefix)]


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    if not os.access(BIN, os.X_OK):
        pytest.fail(
            f"no server binary at {BIN}: build it (cargo build -p openloop-cli "
            "-p openloop-devbox-agent) or set OPENLOOP_BIN",
            pytrace=False,
        )
    # Not pytest's tmp_path: its directories are 0700, and devbox sandboxes run as an
    # unprivileged uid that must traverse to the data directory (as in scripts/schemathesis.sh).
    work = Path(tempfile.mkdtemp(prefix="openloop-ui."))
    work.chmod(0o711)
    data_dir = work / "data"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = ARTIFACTS / "server.log"
    env = dict(os.environ, NO_COLOR="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=env,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while http_status(base_url + "/health") != 200:
            if process.poll() is not None:
                pytest.fail(
                    f"the server exited with {process.returncode} before answering /health; "
                    f"its log ({log_path}):\n{log_tail(log_path)}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the server did not answer {base_url}/health within "
                    f"{SERVER_START_TIMEOUT:.0f} s; its log ({log_path}):\n{log_tail(log_path)}",
                    pytrace=False,
                )
            time.sleep(0.1)
        # Written on the first start, before the server listens.
        admin_key = (data_dir / "admin-key").read_text().strip()
        yield Server(base_url, admin_key, data_dir, log_path, process)
    finally:
        stop_server(process, log_path)
        if os.environ.get("OPENLOOP_UI_KEEP_DATA") == "1":
            print(f"\nkept the server's data directory: {data_dir}")
        elif mounts_under(work):
            # Never delete through a mount that the server left behind.
            print(f"\nleft {work} in place: mounts remain under it: {mounts_under(work)}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def stop_server(process: subprocess.Popen[bytes], log_path: Path) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(
            f"the server did not stop within {SERVER_STOP_TIMEOUT:.0f} s of SIGTERM (killed); "
            f"its log ({log_path}):\n{log_tail(log_path)}",
            pytrace=False,
        )


# --- the JSON API -------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, method: str, path: str, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"{method} {path}: {status} {body}")


class Api:
    """The server's JSON API with a key (the admin key by default)."""

    def __init__(self, server: Server, key: str | None = None):
        self.server = server
        self.key = server.admin_key if key is None else key

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server.url(path), data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ApiError(method, path, e.code, detail) from None
        return json.loads(raw) if raw else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, {} if body is None else body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def deploy(
        self,
        source: str | os.PathLike[str] = EXAMPLE_AGENT,
        name: str | None = None,
        timeout: float = 600,
        expect: str | None = "deployed",
    ) -> dict[str, Any]:
        """`POST /v1/deployments`, then polls the deployment until it is `deployed` or `failed`.

        (A deployment goes `queued` -> `building` -> `deployed` | `failed`; there is no
        `ready`.) Returns the final deployment; with `expect` (default "deployed") fails the
        test, with the end of the build log, when it ended otherwise.
        """
        body: dict[str, Any] = {"source": str(Path(source).resolve())}
        if name is not None:
            body["name"] = name
        dep = self.post("/v1/deployments", body)
        deadline = time.monotonic() + timeout
        while dep["status"] not in ("deployed", "failed"):
            if time.monotonic() > deadline:
                pytest.fail(f"deployment {dep['id']} still {dep['status']} after {timeout:.0f} s")
            time.sleep(0.5)
            dep = self.get(f"/v1/deployments/{dep['id']}")
        if expect is not None and dep["status"] != expect:
            logs = self.get(f"/v1/deployments/{dep['id']}/logs")
            lines = "\n".join(entry["line"] for entry in logs["logs"][-40:])
            pytest.fail(f"deployment {dep['id']} is {dep['status']}, not {expect}: {dep}\n{lines}")
        return dep


@pytest.fixture(scope="session")
def api(server: Server) -> Api:
    return Api(server)


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run scripts/install-ui-test-deps.sh", pytrace=False
        )
    # Running as root, Chromium refuses its own sandbox ("Running as root without --no-sandbox
    # is not supported"): chromium_sandbox=False makes Playwright pass --no-sandbox. The browser
    # only ever loads the server under test, on loopback.
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, chromium_sandbox=False
    )
    yield browser
    browser.close()


def save_screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    """Saves a (full-page) screenshot as `<artifacts>/<name>.png`; returns its path.

    A full page costs time with its height: about 0.3 s for ordinary pages, but 10 s for
    /openapi.json as Chromium's JSON viewer shows it (one 200 kB line of text).
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name.removesuffix(".png")).strip("_") or "page"
    path = ARTIFACTS / f"{safe}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture(scope="session")
def shot() -> Callable[[Page, str], Path]:
    """`shot(page, name, full_page=True)`: a screenshot in the artifacts directory."""
    return save_screenshot


def describe_console(msg: ConsoleMessage) -> str:
    loc = msg.location
    where = f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc and loc.get("url") else ""
    return f"console.error: {msg.text}{where}"


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    marker = request.node.get_closest_marker("allow_console_errors")
    allowed = [re.compile(p) for p in (marker.args if marker else ())]
    errors: list[str] = []

    def record(text: str) -> None:
        if not any(p.search(text) for p in allowed):
            errors.append(text)

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on("console", lambda msg: msg.type == "error" and record(describe_console(msg)))
    page.on("pageerror", lambda exc: record(f"pageerror: {exc}"))
    page.console_errors = errors  # the test may look at (or clear) what was recorded so far
    yield page

    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        try:
            save_screenshot(page, f"FAILED-{request.node.name}")
        except Exception as e:  # noqa: BLE001 - the test's own failure is what matters
            print(f"could not save the failed page's screenshot: {e}")
    context.close()
    if errors:
        pytest.fail(
            f"{len(errors)} console error(s) or page error(s):\n" + "\n".join(errors),
            pytrace=False,
        )
