"""What the dashboard's UI tests do with a page: sign in, read a page's status badge and facts,
follow a page that updates itself live."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from conftest import Server
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

# The first devbox may need the base image, which the server builds on first use.
DEVBOX_TIMEOUT_MS = 300_000


def sign_in(
    page: Page, server: Server, key: str | None = None, path: str = "/ui/invocations"
) -> None:
    """Signs in through the form and lands on `path`."""
    page.goto(server.url(f"/ui/login?next={quote(path, safe='')}"))
    page.locator("#key").fill(server.admin_key if key is None else key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url(path))


def badge(page: Page) -> Locator:
    """The status badge in the page's title (a deployment, an invocation, a devbox)."""
    return page.locator("h1 [data-status]")


def row_ids(page: Page) -> list[str]:
    """The invocation ids of the table's rows, top to bottom."""
    hrefs = page.locator("#rows tr td:first-child a").evaluate_all(
        "links => links.map(a => a.getAttribute('href'))"
    )
    return [h.rsplit("/", 1)[-1] for h in hrefs]


def watch(
    page: Page, script: str, timeout: float, each: Callable[[list[Any]], None] | None = None
) -> list[list[Any]]:
    """Marks the page's document, then evaluates `script` (a function returning a list) about
    five times a second until the document is replaced (the page reloaded itself) or `timeout`
    seconds pass. Returns what it saw in the first document, in order."""
    page.evaluate("window.__sameDocument = true")
    seen: list[list[Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            same, snapshot = page.evaluate(f"() => [window.__sameDocument === true, ({script})()]")
        except PlaywrightError:  # the document went away while evaluating
            break
        if not same:
            break
        seen.append(snapshot)
        if each is not None:
            each(snapshot)
        time.sleep(0.2)
    return seen


def reloaded(page: Page) -> bool:
    """Whether the document `watch` marked has been replaced."""
    return page.evaluate("window.__sameDocument !== true")


def fact(page: Page, term: str) -> Locator:
    """The value next to `term` in a page's facts (`dl.facts`)."""
    return page.locator(f"dl.facts dt:text-is('{term}') + dd")
