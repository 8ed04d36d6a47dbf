"""The HTTP client and coordinator against a stand-in server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

import runloop
from runloop._client import ApiClient

DEPTH_MESSAGE = (
    "call depth limit exceeded: p/f would run at call depth 11; the limit is 10 "
    "(`openloop serve --max-call-depth`)"
)


class Handler(BaseHTTPRequestHandler):
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


@pytest.fixture
def coordinator() -> Iterator[runloop.SystemCoordinator]:
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}", "olt_test")
    yield runloop.SystemCoordinator(client)
    server.shutdown()


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
