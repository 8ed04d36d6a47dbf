"""A small HTTP client for the Openloop API (standard library only).

Inside a function's sandbox the API is a Unix socket (``OPENLOOP_API_URL`` is
``unix:/run/openloop/api.sock``): function code has no network path to the server.
Elsewhere it is an ``http://`` URL.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any

from ._errors import RunloopError, error_for


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket; no timeout (runs are long)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self._path)
        self.sock = sock


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

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        """A new connection and the path prefix of the API on it."""
        if self.base_url.startswith("unix:"):
            return _UnixConnection(self.base_url[len("unix:") :]), ""
        parts = urllib.parse.urlsplit(self.base_url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc)
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.netloc)
        else:
            raise RunloopError(0, "bad_url", f"unsupported Openloop API URL {self.base_url!r}")
        return conn, parts.path.rstrip("/")

    def request_raw(
        self, method: str, path: str, data: bytes | None, content_type: str | None
    ) -> bytes:
        conn, prefix = self._connection()
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type and data is not None:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            body: bytes = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                err = json.loads(body)["error"]
                code, message = str(err.get("code", "error")), str(err.get("message", ""))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise RunloopError(
                    resp.status, "http_error", body.decode(errors="replace")
                ) from None
            raise error_for(resp.status, code, message)
        return body
