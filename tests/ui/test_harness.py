"""The harness itself: a real server, a real Chromium, screenshots, the console-error guard and
the API helper. Nothing about the dashboard: its tests live beside this file."""

from __future__ import annotations

import json
import struct
import urllib.request

import pytest
from conftest import Api, Server

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_server_answers_health(server: Server) -> None:
    with urllib.request.urlopen(server.url("/health"), timeout=10) as r:
        assert r.status == 200
        assert json.load(r) == {"status": "ok"}
    assert server.admin_key
    assert (server.data_dir / "admin-key").exists()


# The server has no favicon: Chromium asks for /favicon.ico next to any page that declares no
# icon, and logs the 404 as a console error. Dashboard pages declare their own icon.
@pytest.mark.allow_console_errors(r"/favicon\.ico")
def test_chromium_opens_openapi_and_screenshots(server: Server, page, shot) -> None:
    response = page.goto(server.url("/openapi.json"))
    assert response is not None and response.status == 200
    assert '"openapi"' in page.inner_text("body")

    # The viewport, not the whole page: the OpenAPI document is now a page tall enough that
    # a full-page capture of it passes Chromium's 30 s screenshot timeout on this machine.
    path = shot(page, "harness-openapi", full_page=False)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    # IHDR: the first chunk holds the width and the height: the viewport's.
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1280 and height >= 800, (width, height)
    assert len(data) > 1000, f"{path} is only {len(data)} bytes"


def test_console_errors_are_recorded(page) -> None:
    with page.expect_event("console"):
        page.evaluate("console.error('harness: a console error')")
    with page.expect_event("pageerror"):
        page.evaluate("setTimeout(() => { throw new Error('harness: an uncaught error'); })")
    assert len(page.console_errors) == 2, page.console_errors
    assert "console.error: harness: a console error" in page.console_errors[0]
    assert "harness: an uncaught error" in page.console_errors[1]
    # They would fail this test at teardown: this test expected them.
    page.console_errors.clear()


@pytest.mark.allow_console_errors(r"harness: expected")
def test_allowed_console_errors_do_not_fail(page) -> None:
    with page.expect_event("console"):
        page.evaluate("console.error('harness: expected error')")
    assert page.console_errors == []


def test_api_deploys_the_example_agent(api: Api) -> None:
    dep = api.deploy()
    assert dep["status"] == "deployed"
    assert dep["project_name"] == "example_python_agent"
    assert dep["functions"] == ["example_agent"]
    assert api.get(f"/v1/deployments/{dep['id']}")["id"] == dep["id"]
