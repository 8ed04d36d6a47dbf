"""The dashboard end to end, as a new user meets it, in a real Chromium against a real server.

The journey: sign in; deploy a project through the Deployments form (and a broken one); invoke
its functions from the generated forms; follow the runs live (the invocations table, a run's
log tail); cancel a run; use the devbox the example agent made (`test_dashboard_access.py` goes
on with a devbox's command box, API keys, CSRF and signing out; `pages.py` holds what both do
with a page). Every step asserts what a visitor sees; screenshots of every page go to the
artifacts directory.

The project under test is written by the `sources` fixture into a temporary directory:
`example_agent` (the seed's example, unchanged), `printer` (numbered lines about every 0.4 s),
`sleeper` (600 s) and `typed` (int, float, bool and list parameters for the generated form).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import EXAMPLE_AGENT, Api, Server
from pages import DEVBOX_TIMEOUT_MS, badge, fact, reloaded, row_ids, sign_in, watch
from playwright.sync_api import Page, expect

PROJECT = "ui_journey"
BROKEN = "ui_broken"

# The first build of a project makes its environment (uv): tens of seconds.
BUILD_TIMEOUT_MS = 240_000
RUN_TIMEOUT_MS = 120_000
UI_TIMEOUT_MS = 15_000

PRINTER_LINES = 20

# The seed's example function, copied as it is, then the functions this journey needs.
EXAMPLE_AGENT_PY = EXAMPLE_AGENT / "agent/bot.py"
MORE_FUNCTIONS = f"""

@runloop.function
def printer(lines: int = {PRINTER_LINES}, delay: float = 0.4) -> str:
    for i in range(1, lines + 1):
        print(f"line {{i}} of {{lines}}", flush=True)
        time.sleep(delay)
    return f"printed {{lines}} lines"


@runloop.function
def sleeper(seconds: float = 600) -> str:
    time.sleep(seconds)
    return "woke up"


@runloop.function
def typed(count: int, ratio: float, loud: bool, items: list[int]) -> dict:
    return {{"count": count, "ratio": ratio, "loud": loud, "items": items, "total": sum(items)}}
"""


def agent_py() -> str:
    return "import time\n\n" + EXAMPLE_AGENT_PY.read_text() + MORE_FUNCTIONS


RUNLOOP_TOML = '[module]\npath = "./agent"\nname = "agent"\n'
# Names a module that is not there: the build fails, saying so.
BROKEN_TOML = '[module]\npath = "./agent"\nname = "no_such_module"\n'


# --- the projects ---------------------------------------------------------------------------


@dataclass
class Sources:
    good: Path
    broken: Path


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Writes `files` under `root`, readable by everyone (the build runs as another uid)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def sources() -> Iterator[Sources]:
    work = Path(tempfile.mkdtemp(prefix="openloop-ui-src."))
    work.chmod(0o711)
    good = write_project(
        work / PROJECT,
        {"requirements.txt": "", "runloop.toml": RUNLOOP_TOML, "agent/agent.py": agent_py()},
    )
    broken = write_project(
        work / BROKEN,
        {"requirements.txt": "", "runloop.toml": BROKEN_TOML, "agent/agent.py": agent_py()},
    )
    yield Sources(good, broken)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def project(api: Api, sources: Sources) -> str:
    """The project, deployed: by the deployment test through the form when it ran first, by
    the API otherwise (so each test also runs alone)."""
    live = {f["project_name"] for f in api.get("/v1/functions")["functions"]}
    if PROJECT not in live:
        api.deploy(sources.good)
    return PROJECT


# --- helpers ------------------------------------------------------------------------------


def invoke_async(api: Api, function: str, request: dict[str, Any] | None = None) -> str:
    inv = api.post(f"/v1/functions/{PROJECT}/{function}/invoke_async", {"request": request or {}})
    return inv["id"]


def invocations(api: Api, **filters: str) -> list[dict[str, Any]]:
    q = "&".join(f"{k}={quote(v)}" for k, v in {"limit": "1000", **filters}.items())
    return api.get(f"/v1/functions/invocations?{q}")["invocations"]


def wait(api: Api, inv_id: str) -> dict[str, Any]:
    """The invocation once it has finished."""
    return api.post(f"/v1/functions/invocations/{inv_id}/wait", timeout=RUN_TIMEOUT_MS / 1000)


# --- 1. signing in --------------------------------------------------------------------------


# A wrong key is answered 401 with the form again: Chromium logs the status as an error.
@pytest.mark.allow_console_errors(r"status of 401 \(Unauthorized\) \(\S+/ui/login:")
def test_sign_in_redirects_and_returns(server: Server, page: Page, shot) -> None:
    page.goto(server.url("/ui/invocations"))
    expect(page).to_have_url(server.url("/ui/login?next=%2Fui%2Finvocations"))
    expect(page.get_by_role("heading", name="Sign in to Openloop")).to_be_visible()
    shot(page, "login")

    page.locator("#key").fill("olk_this-is-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key is not valid or has been revoked.")
    expect(page.locator("#key")).to_be_visible()
    shot(page, "login-wrong-key")

    page.locator("#key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url("/ui/invocations"))
    expect(page.get_by_role("heading", name="Invocations", exact=True)).to_be_visible()
    expect(page.locator("header.topbar")).to_contain_text("Sign out")


# A missing page is a bare 404 without an icon: Chromium also asks for /favicon.ico (404).
@pytest.mark.allow_console_errors(r"status of 404")
def test_every_navigation_link_opens_a_page(server: Server, page: Page) -> None:
    sign_in(page, server)
    links = page.locator("header.topbar nav a").evaluate_all(
        "links => links.map(a => [a.textContent, a.getAttribute('href')])"
    )
    assert len(links) >= 5, links
    broken = []
    for label, href in links:
        response = page.goto(server.url(href))
        assert response is not None
        if response.status != 200:
            broken.append(f"{label} ({href}): HTTP {response.status}")
            continue
        expect(page.locator("header.topbar nav a.active")).to_have_text(label)
    assert not broken, f"navigation links that do not open a page: {broken}"


# --- 2. deploying -------------------------------------------------------------------------


def deploy_through_form(page: Page, server: Server, source: Path) -> None:
    page.goto(server.url("/ui/deployments"))
    page.locator("summary", has_text="Deploy a repository").click()
    page.locator("input[name=source]").fill(str(source))
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(server.url("/ui/deployments/")) + r"dpl_\w+$"))


def test_deploy_through_the_form(
    server: Server, api: Api, sources: Sources, page: Page, shot
) -> None:
    sign_in(page, server, path="/ui/deployments")
    deploy_through_form(page, server, sources.good)
    dep_id = page.url.rsplit("/", 1)[-1]

    # Still building when the form answers: the log grows on the open page, which reloads
    # itself when the build ends.
    expect(badge(page)).to_have_text(re.compile(r"^(queued|building)$"))
    seen = watch(
        page,
        """() => [document.querySelectorAll('#build-log .log').length,
                  document.querySelector('h1 [data-status]').textContent]""",
        timeout=BUILD_TIMEOUT_MS / 1000,
    )
    counts = [count for count, _ in seen]
    assert counts and max(counts) > counts[0], f"the build log did not grow live: {seen}"
    assert reloaded(page), "the page did not reload itself when the build ended"
    expect(badge(page)).to_have_text("deployed")
    log_lines = page.locator("#build-log .log")
    assert log_lines.count() > 0
    expect(page.locator("#build-log")).to_contain_text("runloop.toml: module 'agent'")
    for fn in ("example_agent", "printer", "sleeper", "typed"):
        expect(fact(page, "Functions")).to_contain_text(fn)
    expect(fact(page, "Source")).to_have_text(str(sources.good))
    shot(page, "deployment-ok")
    assert api.get(f"/v1/deployments/{dep_id}")["status"] == "deployed"

    page.goto(server.url("/ui/deployments"))
    row = page.locator("#rows tr", has=page.locator(f"a[href='/ui/deployments/{dep_id}']"))
    expect(row).to_contain_text(PROJECT)
    expect(row.locator(".badge", has_text="live")).to_be_visible()
    expect(row.locator("[data-status]")).to_have_text("deployed")
    shot(page, "deployments-list")


def test_deployments_table_shows_new_deployments_live(
    server: Server, api: Api, project: str, sources: Sources, page: Page
) -> None:
    sign_in(page, server, path="/ui/deployments")
    dep = api.deploy(sources.good)
    row = page.locator("#rows tr", has=page.locator(f"a[href='/ui/deployments/{dep['id']}']"))
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(row.locator("[data-status]")).to_have_text("deployed")


def test_a_broken_deployment_shows_why(
    server: Server, api: Api, sources: Sources, page: Page, shot
) -> None:
    sign_in(page, server, path="/ui/deployments")
    deploy_through_form(page, server, sources.broken)
    dep_id = page.url.rsplit("/", 1)[-1]

    expect(badge(page)).to_have_text("failed", timeout=BUILD_TIMEOUT_MS)
    reason = page.get_by_role("alert")
    expect(reason).to_contain_text("Build failed:")
    expect(reason).to_contain_text("no_such_module")
    expect(page.locator("#build-log .log").first).to_be_visible()
    expect(page.locator("#build-log")).to_contain_text("no_such_module")
    shot(page, "deployment-failed")

    dep = api.get(f"/v1/deployments/{dep_id}")
    assert dep["status"] == "failed" and "no_such_module" in (dep["failure_reason"] or ""), dep


# --- 3. the project page and its forms ------------------------------------------------------


def test_project_page_invokes_the_example_agent(
    server: Server, api: Api, project: str, page: Page, shot
) -> None:
    sign_in(page, server, path=f"/ui/projects/{project}")
    expect(page.get_by_role("heading", name=f"Project {project}")).to_be_visible()
    for fn, params in {
        "example_agent": ["name"],
        "printer": ["lines", "delay"],
        "sleeper": ["seconds"],
        "typed": ["count", "ratio", "loud", "items"],
    }.items():
        card = page.locator(f"section#fn-{fn}")
        expect(card.get_by_role("heading", name="Request schema")).to_be_visible()
        expect(card.get_by_role("heading", name="Response schema")).to_be_visible()
        schemas = card.locator("pre.json")
        expect(schemas).to_have_count(2)
        for p in params:
            expect(schemas.nth(0)).to_contain_text(f'"{p}"')
            expect(card.locator(f"[name='arg.{p}']")).to_be_visible()
        expect(card.locator("[name='arg.system_coordinator']")).to_have_count(0)
    expect(page.locator("section#fn-example_agent pre.json").nth(1)).to_contain_text('"string"')
    # The typed form: one input per kind.
    typed = page.locator("section#fn-typed")
    expect(typed.locator("[name='arg.count']")).to_have_attribute("type", "number")
    expect(typed.locator("[name='arg.loud']")).to_have_attribute("type", "checkbox")
    expect(typed.locator("textarea[name='arg.items']")).to_be_visible()
    shot(page, "project")

    page.locator("section#fn-example_agent [name='arg.name']").fill("Bob")
    page.get_by_role("button", name="Invoke example_agent").click()
    expect(page).to_have_url(re.compile(r"/ui/invocations/[^/]+$"))
    inv_id = page.url.rsplit("/", 1)[-1]

    # The page follows the run and reloads itself when it ends.
    expect(badge(page)).to_have_text("success", timeout=RUN_TIMEOUT_MS + DEVBOX_TIMEOUT_MS)
    response = page.locator("h2:text-is('Response') + pre")
    expect(response).to_contain_text("executed hello from devbox")
    expect(response).to_contain_text("User: Bob")
    expect(page.locator("h2:text-is('Request') + pre.json")).to_contain_text('"Bob"')
    shot(page, "invocation-success")
    assert api.get(f"/v1/functions/invocations/{inv_id}")["status"] == "success"

    result_text = response.inner_text()
    devbox_link = page.locator("h2:text-is('Devboxes it created') + table a[href^='/ui/devboxes/']")
    expect(devbox_link).to_have_count(1)
    devbox_link.click()
    expect(page).to_have_url(re.compile(r"/ui/devboxes/[^/]+$"))
    devbox_id = page.url.rsplit("/", 1)[-1]
    assert f"Devbox ID: {devbox_id}" in result_text, result_text
    expect(page.get_by_role("heading", name=re.compile(r"^Devbox "))).to_contain_text(devbox_id)
    # The run's devbox is shut down once the run is over.
    expect(badge(page)).to_have_text("shutdown")
    expect(fact(page, "Created by")).to_contain_text("invocation")
    expect(fact(page, "Created by").locator(f"a[href='/ui/invocations/{inv_id}']")).to_be_visible()
    shot(page, "devbox-from-run")


def submit(page: Page, function: str) -> None:
    """Submits a function's form and waits for the page that answers it."""
    with page.expect_navigation():
        page.get_by_role("button", name=f"Invoke {function}").click()


# The rejected forms are answered 400 (with the form again): Chromium logs the status.
@pytest.mark.allow_console_errors(r"status of 400 \(Bad Request\) \(\S+/functions/typed/invoke:")
def test_typed_form_invokes_and_rejects_bad_input(
    server: Server, api: Api, project: str, page: Page, shot
) -> None:
    sign_in(page, server, path=f"/ui/projects/{project}")
    before = len(invocations(api, project=project, function="typed"))
    card = page.locator("section#fn-typed")

    # "seven" cannot even be typed into a number input: a visitor bypassing the browser's
    # own checks (here: the input made a text box) still gets a clear answer from the server.
    card.locator("[name='arg.count']").evaluate("el => { el.type = 'text'; }")
    card.locator("[name='arg.count']").fill("seven")
    card.locator("[name='arg.ratio']").fill("2.5")
    card.locator("[name='arg.items']").fill("[1, 2, 3]")
    submit(page, "typed")
    card = page.locator("section#fn-typed")
    expect(card.get_by_role("alert")).to_contain_text("count")
    expect(card.get_by_role("alert")).to_contain_text("whole number")
    # The form comes back filled in.
    expect(card.locator("[name='arg.items']")).to_have_value("[1, 2, 3]")
    expect(card.locator("[name='arg.ratio']")).to_have_value("2.5")
    shot(page, "project-form-error")

    # Well-formed JSON of the wrong type: the function's own schema (pydantic) rejects it.
    card.locator("[name='arg.count']").fill("7")
    card.locator("[name='arg.items']").fill('["x"]')
    submit(page, "typed")
    card = page.locator("section#fn-typed")
    expect(card.get_by_role("alert")).to_contain_text("items")

    # Not JSON at all.
    card.locator("[name='arg.items']").fill("[1, 2")
    submit(page, "typed")
    expect(page.locator("section#fn-typed").get_by_role("alert")).to_contain_text("JSON")
    assert len(invocations(api, project=project, function="typed")) == before, (
        "a rejected form created an invocation"
    )

    # And a good one.
    card = page.locator("section#fn-typed")
    card.locator("[name='arg.count']").fill("7")
    card.locator("[name='arg.ratio']").fill("2.5")
    card.locator("[name='arg.loud']").check()
    card.locator("[name='arg.items']").fill("[1, 2, 3]")
    page.get_by_role("button", name="Invoke typed").click()
    expect(page).to_have_url(re.compile(r"/ui/invocations/[^/]+$"))
    expect(badge(page)).to_have_text("success", timeout=RUN_TIMEOUT_MS)
    response = page.locator("h2:text-is('Response') + pre")
    expect(response).to_contain_text('"total": 6')
    expect(response).to_contain_text('"loud": true')
    expect(response).to_contain_text('"ratio": 2.5')
    assert len(invocations(api, project=project, function="typed")) == before + 1


# --- 4. the invocations table ---------------------------------------------------------------


def test_invocations_table_shows_new_runs_live(
    server: Server, api: Api, project: str, page: Page
) -> None:
    sign_in(page, server, path="/ui/invocations")
    expect(page.get_by_role("heading", name="Newest first, live")).to_be_visible()

    # A run started elsewhere shows up, and finishes, on the open page (no reload).
    inv_id = invoke_async(api, "typed", {"count": 1, "ratio": 1.0, "loud": False, "items": [1]})
    row = page.locator("#rows tr", has=page.locator(f"a[href='/ui/invocations/{inv_id}']"))
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(row).to_contain_text(f"{project} / typed")
    expect(row.locator("[data-status]")).to_have_text("success", timeout=RUN_TIMEOUT_MS)


def test_invocations_table_filters_by_status_and_function(
    server: Server, api: Api, project: str, page: Page
) -> None:
    done = invoke_async(api, "typed", {"count": 2, "ratio": 1.0, "loud": False, "items": [2]})
    canceled = invoke_async(api, "sleeper")
    api.post(f"/v1/functions/invocations/{canceled}/cancel")
    assert wait(api, done)["status"] == "success"
    done_row = page.locator(f"#rows a[href='/ui/invocations/{done}']")
    canceled_row = page.locator(f"#rows a[href='/ui/invocations/{canceled}']")

    sign_in(page, server, path="/ui/invocations")
    expect(done_row).to_be_visible()
    expect(canceled_row).to_be_visible()

    page.locator("select[name=status]").select_option("canceled")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"[?&]status=canceled"))
    expect(canceled_row).to_be_visible()
    expect(done_row).to_have_count(0)
    statuses = page.locator("#rows [data-status]").all_inner_texts()
    assert statuses and set(statuses) == {"canceled"}, statuses
    expect(page.locator("select[name=status]")).to_have_value("canceled")

    page.locator("select[name=status]").select_option("")
    page.locator("input[name=function]").fill("typed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"[?&]function=typed"))
    expect(done_row).to_be_visible()
    expect(canceled_row).to_have_count(0)
    functions = page.locator("#rows tr td:nth-child(2)").all_inner_texts()
    assert functions and all(f.endswith("/ typed") for f in functions), functions

    # Both at once: nothing is both a `typed` run and canceled.
    page.locator("select[name=status]").select_option("canceled")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#rows")).to_contain_text("No invocations match.")

    page.get_by_role("link", name="Clear").click()
    expect(page).to_have_url(server.url("/ui/invocations"))
    expect(done_row).to_be_visible()
    expect(canceled_row).to_be_visible()


def test_invocations_table_pages_by_keyset(
    server: Server, api: Api, project: str, page: Page, shot
) -> None:
    # More than a page: quick runs through the API.
    have = len(invocations(api))
    made = [
        invoke_async(api, "typed", {"count": i, "ratio": 0.5, "loud": True, "items": [i]})
        for i in range(max(0, 60 - have))
    ]
    for inv_id in made:
        assert wait(api, inv_id)["status"] == "success"
    newest = [i["id"] for i in invocations(api)][:100]
    assert len(newest) > 50

    sign_in(page, server, path="/ui/invocations")
    page1 = row_ids(page)
    assert page1 == newest[:50]
    shot(page, "invocations-list")

    page.get_by_role("link", name="Older →").click()
    expect(page).to_have_url(re.compile(rf"[?&]before={re.escape(newest[49])}"))
    expect(page.get_by_role("heading", name="Older invocations")).to_be_visible()
    expect(page.get_by_role("link", name="← Newest")).to_be_visible()
    page2 = row_ids(page)
    assert page2 == newest[50:100]
    assert not set(page1) & set(page2)
    shot(page, "invocations-older")

    page.get_by_role("link", name="← Newest").click()
    expect(page.get_by_role("heading", name="Newest first, live")).to_be_visible()
    assert row_ids(page) == page1


# --- 5. a run's live log --------------------------------------------------------------------


def test_running_invocation_shows_its_log_live(
    server: Server, api: Api, project: str, page: Page, shot
) -> None:
    sign_in(page, server)
    inv_id = invoke_async(api, "printer")
    page.goto(server.url(f"/ui/invocations/{inv_id}"))

    shots: list[Path] = []

    def screenshot_once(snapshot: list[Any]) -> None:
        count, status, _ = snapshot
        if status == "running" and count >= 5 and not shots:
            shots.append(shot(page, "invocation-running-logs"))

    snapshots = watch(
        page,
        """() => [document.querySelectorAll('#logs .log').length,
                  document.querySelector('h1 [data-status]').textContent,
                  document.querySelector('table.timeline tbody tr [data-status]')?.textContent]""",
        timeout=60,
        each=screenshot_once,
    )
    assert reloaded(page), "the page did not reload itself when the run ended"
    running = [s for s in snapshots if s[1] == "running"]
    counts = [c for c, _, _ in running]
    assert len(set(counts)) >= 4, f"the log did not grow on the open page: {snapshots}"
    assert counts == sorted(counts), counts
    assert 0 < min(counts) < PRINTER_LINES, counts

    # The end reloads the page, which then shows the outcome and the whole log.
    expect(badge(page)).to_have_text("success", timeout=RUN_TIMEOUT_MS)
    lines = page.locator("#logs .log")
    expect(lines).to_have_count(PRINTER_LINES)
    texts = lines.all_inner_texts()
    for i, text in enumerate(texts, start=1):
        assert text.endswith(f"stdout line {i} of {PRINTER_LINES}"), (i, text)
    expect(page.locator("h2:text-is('Response') + pre")).to_contain_text("printed 20 lines")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    shot(page, "invocation-finished-logs")

    # The timeline's first step is when the run was queued: the live status must not relabel it.
    relabeled = [s for s in running if s[2] != "queued"]
    assert not relabeled, (
        "while the run was running, the timeline's 'queued' step showed another status "
        f"(count, status, first step): {relabeled[:3]}"
    )


# --- 6. cancel --------------------------------------------------------------------------------


def test_cancel_a_running_invocation(
    server: Server, api: Api, project: str, page: Page, shot
) -> None:
    sign_in(page, server)
    inv_id = invoke_async(api, "sleeper")
    page.goto(server.url(f"/ui/invocations/{inv_id}"))
    expect(badge(page)).to_have_text("running", timeout=RUN_TIMEOUT_MS)

    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel").click()
    expect(badge(page)).to_have_text("canceled", timeout=UI_TIMEOUT_MS)
    assert dialogs == ["Cancel this run?"]
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.locator("table.timeline")).to_contain_text("canceled")
    shot(page, "invocation-canceled")
    assert api.get(f"/v1/functions/invocations/{inv_id}")["status"] == "canceled"
