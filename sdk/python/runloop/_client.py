"""A small HTTP client for the Openloop API (standard library only).

Inside a function's sandbox the API is a Unix socket (``OPENLOOP_API_URL`` is
``unix:/run/openloop/api.sock``): function code has no network path to the server.
Elsewhere it is an ``http://`` URL.

On the Unix socket it speaks HTTP/1.1 itself, one request per connection: ``http.client``
brings ``ssl`` and ``email`` with it, and the warm process of a deployment whose functions
are given a ``SystemCoordinator`` imports this module before it forks every run's process
(``runloop._host._preload``), so every run would copy those modules' pages and tear them down
(about 0.1 ms of CPU and 1 MB of the warm process, measured with ``openloop-bench``'s
deployment). ``http.client`` is imported only for ``http://`` and ``https://`` URLs.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

from ._errors import RunloopError, error_for

if TYPE_CHECKING:
    import http.client

#: What no method or request target may hold (``http.client`` refuses the same).
_NOT_IN_REQUEST_LINE = frozenset(map(chr, range(0x21))) | {"\x7f"}


def _bad_response(why: str) -> RunloopError:
    return RunloopError(0, "bad_response", f"the Openloop API's answer is not HTTP: {why}")


def _dechunk(body: bytes) -> bytes:
    """The payload of a ``Transfer-Encoding: chunked`` body."""
    out = bytearray()
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise _bad_response("a chunk's size line is cut off")
        try:
            size = int(body[pos:end].split(b";", 1)[0], 16)
        except ValueError:
            raise _bad_response("a chunk's size is not hexadecimal") from None
        if size == 0:
            return bytes(out)
        start = end + 2
        if len(body) < start + size + 2:
            raise _bad_response("a chunk is cut off")
        out += body[start : start + size]
        pos = start + size + 2


def _parse_response(raw: bytes) -> tuple[int, bytes]:
    """Status and body of one whole HTTP/1.1 response (read until the server closed)."""
    while True:
        head, sep, body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise _bad_response("it ended before its headers did")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise _bad_response(f"status line {lines[0][:80]!r}")
        status = int(parts[1])
        if not 100 <= status < 200:
            break
        raw = body  # an interim answer; the real one follows
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return status, _dechunk(body)
    if b"content-length" in headers:
        try:
            length = int(headers[b"content-length"])
        except ValueError:
            raise _bad_response("its Content-Length is not a number") from None
        if len(body) < length:
            raise _bad_response(f"its body ended after {len(body)} of {length} bytes")
        return status, body[:length]
    return status, body


def _unix_request(
    path: str, method: str, target: str, headers: dict[str, str], data: bytes | None
) -> tuple[int, bytes]:
    """One request on a new connection to the Unix socket ``path``; no timeout (runs are
    long). The connection says ``Connection: close``, so the answer ends where the stream
    does."""
    if _NOT_IN_REQUEST_LINE.intersection(method + target):
        raise RunloopError(0, "bad_request", f"not a valid HTTP request: {method} {target!r}")
    for value in headers.values():
        if "\r" in value or "\n" in value or "\0" in value:
            raise RunloopError(0, "bad_request", "an HTTP header value holds a line break")
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(data) if data is not None else 0}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (data or b"")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    finally:
        sock.close()
    return _parse_response(b"".join(chunks))


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
        """A new connection to an ``http://`` or ``https://`` URL and the API's path on it."""
        import http.client
        import urllib.parse

        parts = urllib.parse.urlsplit(self.base_url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc)
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.netloc)
        else:
            raise RunloopError(0, "bad_url", f"unsupported Openloop API URL {self.base_url!r}")
        return conn, parts.path.rstrip("/")

    def _send(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        if self.base_url.startswith("unix:"):
            return _unix_request(self.base_url[len("unix:") :], method, path, headers, data)
        import http.client

        conn, prefix = self._connection()
        try:
            conn.request(method, prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except http.client.IncompleteRead as e:
            got = len(e.partial)
            raise _bad_response(
                f"its body ended after {got} of {got + (e.expected or 0)} bytes"
            ) from None
        except http.client.HTTPException as e:
            raise _bad_response(f"{type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def request_raw(
        self, method: str, path: str, data: bytes | None, content_type: str | None
    ) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type and data is not None:
            headers["Content-Type"] = content_type
        status, body = self._send(method, path, data, headers)
        if status >= 400:
            try:
                err = json.loads(body)["error"]
                code, message = str(err.get("code", "error")), str(err.get("message", ""))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise RunloopError(status, "http_error", body.decode(errors="replace")) from None
            raise error_for(status, code, message)
        return body
