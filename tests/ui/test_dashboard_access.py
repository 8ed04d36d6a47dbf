"""The dashboard end to end, beyond the deployment journey (`test_dashboard.py`): a devbox's page
and command box, managing API keys, CSRF and signing out; in a real Chromium against a real
server, screenshots to the artifacts directory."""

from __future__ import annotations

import re
import time

import pytest
from conftest import Api, ApiError, Server
from pages import DEVBOX_TIMEOUT_MS, badge, fact, sign_in
from playwright.sync_api import Browser, Page, expect

# --- 7. devboxes ----------------------------------------------------------------------------


def test_devbox_command_box_and_shutdown(server: Server, api: Api, page: Page, shot) -> None:
    devbox = api.post("/v1/devboxes", {}, timeout=DEVBOX_TIMEOUT_MS / 1000)
    assert devbox["status"] == "running", devbox
    keys = api.get("/v1/keys")["keys"]
    admin = next(k for k in keys if server.admin_key.startswith(k["prefix"]))

    sign_in(page, server, path=f"/ui/devboxes/{devbox['id']}")
    expect(badge(page)).to_have_text("running")
    expect(fact(page, "Created by")).to_have_text(f"key {admin['name']}")

    page.locator("input[name=command]").fill("echo hello-from-ui")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"#exec-"))
    execution = page.locator("section.execution", has_text="$ echo hello-from-ui")
    expect(execution.locator("pre.output.stdout")).to_have_text("hello-from-ui\n")
    expect(execution.locator("strong.exit")).to_have_text("0")
    shot(page, "devbox-output")

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Shut down").click()
    expect(badge(page)).to_have_text("shutdown", timeout=60_000)
    expect(page.locator("input[name=command]")).to_have_count(0)
    assert api.get(f"/v1/devboxes/{devbox['id']}")["status"] == "shutdown"


# --- 8. API keys ------------------------------------------------------------------------------


def test_api_key_lifecycle(server: Server, api: Api, browser: Browser, page: Page, shot) -> None:
    name = f"e2e-key-{int(time.time())}"
    sign_in(page, server, path="/ui/keys")
    page.locator("input[name=name]").fill(name)
    page.get_by_role("button", name="Create key").click()
    secret_box = page.locator("#new-key-secret")
    expect(secret_box).to_be_visible()
    secret = secret_box.inner_text().strip()
    assert secret and secret != server.admin_key
    expect(page.locator("#new-key")).to_contain_text(name)
    row = page.locator(f"tr[data-key-name='{name}']")
    expect(row.locator(".badge")).to_have_text("active")
    expect(row).to_contain_text(secret[:8])
    shot(page, "keys-new-secret")

    # Shown once: the page again does not show it.
    page.goto(server.url("/ui/keys"))
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.content()
    expect(row).to_be_visible()

    # It works against the API.
    as_new = Api(server, key=secret)
    assert any(k["name"] == name for k in as_new.get("/v1/keys")["keys"])

    # A second visitor signs in with it.
    other = browser.new_context()
    try:
        other_page = other.new_page()
        sign_in(other_page, server, key=secret, path="/ui/keys")
        expect(other_page.locator("header.topbar")).to_contain_text(f"key {name}")

        page.once("dialog", lambda d: d.accept())
        row.get_by_role("button", name="Revoke").click()
        expect(page).to_have_url(server.url("/ui/keys"))
        expect(row.locator(".badge")).to_have_text("revoked")
        expect(row.get_by_role("button", name="Revoke")).to_have_count(0)

        with pytest.raises(ApiError) as denied:
            as_new.get("/v1/keys")
        assert denied.value.status == 401

        # The revoked key's session is over: its next page is the sign-in page.
        other_page.goto(server.url("/ui/invocations"))
        expect(other_page).to_have_url(server.url("/ui/login?next=%2Fui%2Finvocations"))
    finally:
        other.close()


def test_reloading_the_new_key_page_creates_no_second_key(
    server: Server, api: Api, page: Page
) -> None:
    name = f"reload-key-{int(time.time())}"
    sign_in(page, server, path="/ui/keys")
    page.locator("input[name=name]").fill(name)
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").inner_text().strip()

    # A visitor reloads the page that shows the secret (a browser asks to resubmit the form;
    # headless Chromium resubmits without asking).
    page.reload()
    try:
        assert secret not in page.content()
        named = [k for k in api.get("/v1/keys")["keys"] if k["name"] == name]
        assert len(named) == 1, (
            f"reloading the page that showed the new key's secret created another key named "
            f"{name!r}: {named}; the page now shows another secret: "
            f"{page.locator('#new-key-secret').all_inner_texts()}"
        )
    finally:
        for k in api.get("/v1/keys")["keys"]:
            if k["name"] == name and k["revoked_at_ms"] is None:
                api.post(f"/v1/keys/{k['id']}/revoke")


# --- 9. CSRF and signing out --------------------------------------------------------------


def test_csrf_is_required_and_sign_out_works(server: Server, api: Api, page: Page) -> None:
    sign_in(page, server, path="/ui/keys")
    probe = f"csrf-probe-{int(time.time())}"

    def key_names() -> list[str]:
        return [k["name"] for k in api.get("/v1/keys")["keys"]]

    # The session cookie goes along (the context's cookies); only the form's token is missing.
    no_token = page.request.post(server.url("/ui/keys"), form={"name": probe}, max_redirects=0)
    assert no_token.status == 403, no_token.status
    assert "did not come from this dashboard" in no_token.text()
    wrong = page.request.post(
        server.url("/ui/keys"), form={"name": probe, "csrf": "olc_wrong"}, max_redirects=0
    )
    assert wrong.status == 403, wrong.status
    assert probe not in key_names()

    # The same request with the page's token does create a key: the cookie was good.
    token = page.locator("form[action='/ui/keys'] input[name=csrf]").get_attribute("value")
    ok = page.request.post(
        server.url("/ui/keys"), form={"name": probe, "csrf": token or ""}, max_redirects=0
    )
    # The answer is a redirect to the page that shows the secret once.
    assert ok.status == 303, ok.status
    assert ok.headers["location"].startswith("/ui/keys?created="), ok.headers
    created = [k for k in api.get("/v1/keys")["keys"] if k["name"] == probe]
    assert len(created) == 1
    api.post(f"/v1/keys/{created[0]['id']}/revoke")

    session = next(c for c in page.context.cookies() if c["name"] == "openloop_session")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(server.url("/ui/login"))
    page.goto(server.url("/ui/keys"))
    expect(page).to_have_url(server.url("/ui/login?next=%2Fui%2Fkeys"))

    # The old cookie is dead on the server too, not only deleted in the browser.
    page.context.add_cookies([session])
    page.goto(server.url("/ui/keys"))
    expect(page).to_have_url(server.url("/ui/login?next=%2Fui%2Fkeys"))
