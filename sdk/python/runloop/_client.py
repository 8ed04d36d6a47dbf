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
import re
import socket
from typing import TYPE_CHECKING, Any

from ._errors import RunloopError, error_for

if TYPE_CHECKING:
    import http.client

#: What no method or request target may hold (``http.client`` refuses the same).
_NOT_IN_REQUEST_LINE = frozenset(map(chr, range(0x21))) | {"\x7f"}


def _bad_response(why: str) -> RunloopError:
    return RunloopError(0, "bad_response", f"the Openloop API's answer is not HTTP: {why}")


_DIGITS = re.compile(rb"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
#: Consumed bytes of a chunked answer are dropped from the front once there are this many.
_COMPACT = 1 << 20


class _Answer:
    """The answer on one connection, read as far as it goes and no further."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.ended = False

    def more(self) -> bool:
        """Read what comes next; false at the end of the stream. A reset ends it too: the
        server may close as soon as it has answered a request it did not read to the end
        (a refused key, a body over the limit), and what it sent is still the answer."""
        if self.ended:
            return False
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.ended = True
            return False
        self.buf += chunk
        return True

    def line(self, sep: bytes, cut: str) -> bytes:
        """The bytes up to ``sep``, which are consumed with it."""
        end = self.buf.find(sep, self.pos)
        while end < 0:
            if not self.more():
                raise _bad_response(cut)
            end = self.buf.find(sep, self.pos)
        text = bytes(self.buf[self.pos : end])
        self.pos = end + len(sep)
        return text

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes."""
        while len(self.buf) - self.pos < n:
            if not self.more():
                got = len(self.buf) - self.pos
                raise _bad_response(f"its body ended after {got} of {n} bytes")
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def compact(self) -> None:
        if self.pos >= _COMPACT:
            del self.buf[: self.pos]
            self.pos = 0

    def read(self, method: str) -> tuple[int, bytes]:
        """Status and body, as ``http.client`` reads them: interim answers skipped, the body
        by ``Content-Length``, chunks or the end of the stream, none for ``HEAD``, 204 and 304."""
        if not self.more():
            raise ConnectionError("the Openloop API closed the connection without answering")
        while True:
            head = self.line(b"\r\n\r\n", "it ended before its headers did").split(b"\r\n")
            parts = head[0].split(b" ", 2)
            if (
                len(parts) < 2
                or not parts[0].startswith(b"HTTP/")
                or not _DIGITS.fullmatch(parts[1])
            ):
                raise _bad_response(f"status line {head[0][:80]!r}")
            status = int(parts[1])
            if not 100 <= status < 200:
                break
        headers: dict[bytes, bytes] = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304):
            return status, b""
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            return status, self.chunked()
        if b"content-length" in headers:
            length = headers[b"content-length"]
            if not _DIGITS.fullmatch(length):
                raise _bad_response(f"its Content-Length is {length[:40]!r}")
            with self.take(int(length)) as body:
                return status, bytes(body)
        while self.more():
            pass
        return status, bytes(self.buf[self.pos :])

    def chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = self.line(b"\r\n", "a chunk's size line is cut off").split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size):
                raise _bad_response(f"a chunk's size is {size[:40]!r}")
            n = int(size, 16)
            if n == 0:
                return bytes(out)  # trailers, if any, are not read
            with self.take(n) as data:
                out += data
            with self.take(2) as crlf:
                if crlf != b"\r\n":
                    raise _bad_response("a chunk does not end where its size says")
            self.compact()


def _unix_request(
    path: str, method: str, target: str, headers: dict[str, str], data: bytes | None
) -> tuple[int, bytes]:
    """One request on a new connection to the Unix socket ``path``; no timeout (runs are
    long). It says ``Connection: close``; its answer is read to its own end."""
    if _NOT_IN_REQUEST_LINE.intersection(method + target):
        raise RunloopError(0, "bad_request", f"not a valid HTTP request: {method} {target!r}")
    for value in headers.values():
        if "\r" in value or "\n" in value or "\0" in value:
            raise RunloopError(0, "bad_request", "an HTTP header value holds a line break")
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(data) if data is not None else 0}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            if data:
                sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            # The server answered before it read the whole request (and closed): that
            # answer, if there is one, says why.
            try:
                return _Answer(sock).read(method)
            except (ConnectionError, RunloopError):
                raise e from None
        return _Answer(sock).read(method)


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
