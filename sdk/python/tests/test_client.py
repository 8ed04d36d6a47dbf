"""The HTTP client and coordinator against stand-in servers: on loopback (``http://``, through
``http.client``) and on a Unix socket (``unix:``, the client's own HTTP/1.1, as in a run)."""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

import runloop
from runloop._client import ApiClient

DEPTH_MESSAGE = (
    "call depth limit exceeded: p/f would run at call depth 11; the limit is 10 "
    "(`openloop serve --max-call-depth`)"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.endswith("/invoke_sync"):
            error = {"code": "call_depth_exceeded", "message": DEPTH_MESSAGE}
            self._answer(409, {"error": error})
        elif self.path == "/v1/functions/invocations/inv_ok/wait":
            self._answer(200, {"id": "inv_ok", "status": "success", "result": 7})
        elif self.path == "/v1/functions/invocations/inv_chunked/wait":
            data = json.dumps({"id": "inv_chunked", "status": "success", "result": [1, 2]})
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (data[:5], data[5:]):
                self.wfile.write(f"{len(piece):x};ext=1\r\n{piece}\r\n".encode())
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/v1/functions/invocations/inv_cut/wait":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"id": "inv_cut"')
            self.close_connection = True
        elif self.path == "/v1/functions/invocations/inv_bad/wait":
            error = {"type": "ValueError", "message": "boom", "traceback": None}
            body = {"id": "inv_bad", "project_name": "p", "function_name": "f"}
            self._answer(200, {**body, "status": "failure", "error": error})
        else:
            self._answer(404, {"error": {"code": "not_found", "message": self.path}})

    def do_GET(self) -> None:  # noqa: N802
        self._answer(404, {"error": {"code": "not_found", "message": self.path}})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class UnixHandler(Handler):
    def address_string(self) -> str:
        return "unix"


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve_tcp(tmp: Path) -> tuple[socketserver.BaseServer, str]:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _serve_unix(tmp: Path) -> tuple[socketserver.BaseServer, str]:
    path = tmp / "api.sock"
    return UnixServer(str(path), UnixHandler), f"unix:{path}"


@pytest.fixture(params=[_serve_tcp, _serve_unix], ids=["http", "unix"])
def coordinator(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[runloop.SystemCoordinator]:
    serve: Callable[[Path], tuple[socketserver.BaseServer, str]] = request.param
    server, url = serve(tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield runloop.SystemCoordinator(ApiClient(url, "olt_test"))
    server.shutdown()
    server.server_close()


def test_call_depth_refusal_is_raised_in_the_caller(coordinator: runloop.SystemCoordinator) -> None:
    with pytest.raises(runloop.CallDepthExceeded) as e:
        coordinator.invoke("p", "f", {})
    assert isinstance(e.value, runloop.RunloopError)
    assert e.value.status == 409
    assert e.value.code == "call_depth_exceeded"
    assert e.value.message == DEPTH_MESSAGE
    assert "call depth 11; the limit is 10" in str(e.value)


def test_wait_returns_the_result_or_raises(coordinator: runloop.SystemCoordinator) -> None:
    assert coordinator.wait("inv_ok") == 7
    with pytest.raises(runloop.InvocationFailed, match="p/f failure: ValueError: boom"):
        coordinator.wait("inv_bad")


def test_other_errors_stay_runloop_errors(coordinator: runloop.SystemCoordinator) -> None:
    with pytest.raises(runloop.RunloopError) as e:
        coordinator.get_invocation("inv_missing")
    assert type(e.value) is runloop.RunloopError
    assert e.value.status == 404


def test_chunked_answers_are_decoded(coordinator: runloop.SystemCoordinator) -> None:
    assert coordinator.wait("inv_chunked") == [1, 2]


def test_an_answer_cut_short_is_an_error_not_a_result(
    coordinator: runloop.SystemCoordinator,
) -> None:
    with pytest.raises(runloop.RunloopError) as e:
        coordinator.wait("inv_cut")
    assert e.value.code == "bad_response"
    assert "ended after 16 of 100 bytes" in e.value.message


def test_a_line_break_cannot_smuggle_a_header_over_the_unix_socket(tmp_path: Path) -> None:
    client = ApiClient(f"unix:{tmp_path / 'api.sock'}", "olt_x\r\nX-Admin: 1")
    with pytest.raises(runloop.RunloopError, match="line break"):
        client.request("GET", "/v1/functions/invocations/inv_ok")
    client = ApiClient(f"unix:{tmp_path / 'api.sock'}", "olt_x")
    with pytest.raises(runloop.RunloopError, match="not a valid HTTP request"):
        client.request("GET", "/v1/functions/invocations/inv ok HTTP/1.1\r\nX: 1")


def test_the_client_imports_neither_http_client_nor_ssl() -> None:
    """A run's warm process imports the client before it forks (for coordinator functions):
    ``http.client`` would bring ``ssl`` and ``email`` into every run's process."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, runloop._client; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "'http.client'" not in out.stdout
    assert "'ssl'" not in out.stdout


def _one_answer(tmp: Path, answer: bytes) -> str:
    """A Unix socket that reads one request's headers (not its body), sends ``answer`` and
    closes: a server refusing a request before reading it to the end."""
    import socket

    path = tmp / "raw.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return f"unix:{path}"


def test_an_answer_before_the_body_was_read_is_still_the_answer(tmp_path: Path) -> None:
    body = json.dumps({"error": {"code": "unauthorized", "message": "invalid key"}}).encode()
    answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    client = ApiClient(_one_answer(tmp_path, answer), "olt_bad")
    with pytest.raises(runloop.RunloopError) as e:
        client.request_raw("POST", "/v1/devboxes/dbx_1/upload_file", b"x" * (8 << 20), "x/y")
    assert e.value.status == 401
    assert e.value.message == "invalid key"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}", "Content-Length is b'-1'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n{}", "Content-Length is b'0x2'"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
            "does not end where its size says",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n", "size is b'-2'"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", "ended before its headers"),
    ],
)
def test_a_malformed_answer_is_an_error_not_a_result(
    tmp_path: Path, answer: bytes, why: str
) -> None:
    client = ApiClient(_one_answer(tmp_path, answer), "olt_x")
    with pytest.raises(runloop.RunloopError) as e:
        client.request("GET", "/v1/functions")
    assert e.value.code == "bad_response"
    assert why in e.value.message


def test_no_answer_at_all_is_a_connection_error(tmp_path: Path) -> None:
    client = ApiClient(_one_answer(tmp_path, b""), "olt_x")
    with pytest.raises(ConnectionError, match="without answering"):
        client.request("GET", "/v1/functions")
