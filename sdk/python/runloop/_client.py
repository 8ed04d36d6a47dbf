"""A small HTTP client for the Openloop API (standard library only)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from ._errors import RunloopError, error_for


class ApiClient:
    """Talks to the server with a Bearer token; requests have no timeout (runs are long)."""

    def __init__(self, base_url: str | None = None, token: str | None = None) -> None:
        url = base_url or os.environ.get("OPENLOOP_API_URL") or "http://127.0.0.1:8700"
        self.base_url = url.rstrip("/")
        self.token = token or os.environ.get("OPENLOOP_TOKEN") or os.environ.get("OPENLOOP_API_KEY")
        if not self.token:
            raise RunloopError(0, "unauthenticated", "no Openloop token: set OPENLOOP_TOKEN")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        raw = self.request_raw(
            method,
            path,
            None if body is None else json.dumps(body).encode(),
            "application/json",
        )
        return json.loads(raw) if raw else None

    def request_raw(
        self, method: str, path: str, data: bytes | None, content_type: str | None
    ) -> bytes:
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if content_type and data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                err = json.loads(payload)["error"]
                raise error_for(e.code, err.get("code", "error"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise RunloopError(e.code, "http_error", payload.decode(errors="replace")) from None
