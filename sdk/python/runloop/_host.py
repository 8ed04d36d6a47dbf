"""``python -m runloop._host``: the warm process of one deployment.

It imports the agent module once, then serves the server over the control socket
(fd given by ``--control-fd``), one JSON object per line:

- ``{"op": "validate", "id", "function", "request"}`` -> ``{"id", "errors": [...]}``
- ``{"op": "run", "id", "invocation_id", "function", "request", "socket", "key", "env"}``
  forks a child for the run -> ``{"id", "pid"}``; when the child ends
  ``{"event": "exit", "invocation_id", "pid", "code" | "signal"}``
- ``{"op": "kill", "invocation_id"}`` kills the run's process group.

The child connects three streams to the server's engine socket (``control``, ``stdout``,
``stderr``); its file descriptors 1 and 2 become the output streams, so nothing a
function prints can be mistaken for its result, which travels as a length-prefixed
JSON frame on ``control``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

from ._function import FunctionDefinition, registered_functions


class FrameWriter:
    """Length-prefixed JSON frames, safe to call from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, obj: Any) -> None:
        data = json.dumps(obj, default=repr).encode()
        with self._lock:
            self._sock.sendall(struct.pack(">I", len(data)) + data)


class FrameLogHandler(logging.Handler):
    def __init__(self, frames: FrameWriter) -> None:
        super().__init__(logging.NOTSET)
        self._frames = frames

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
            self._frames.send(
                {
                    "type": "log",
                    "ts_ms": int(record.created * 1000),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": message,
                }
            )
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _connect(path: str, invocation_id: str, key: str, channel: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    header = {"invocation_id": invocation_id, "key": key, "channel": channel}
    s.sendall(json.dumps(header).encode() + b"\n")
    return s


def _run_child(msg: dict[str, Any], fn: FunctionDefinition) -> None:
    """Body of the forked child; never returns."""
    code = 0
    try:
        os.setsid()
        path, inv, key = msg["socket"], msg["invocation_id"], msg["key"]
        control = _connect(path, inv, key, "control")
        out = _connect(path, inv, key, "stdout")
        err = _connect(path, inv, key, "stderr")
        # The server moves this process into the run's own cgroup, then sends one byte:
        # nothing of the function runs before its limits hold.
        if control.recv(1) != b"\x01":
            os._exit(70)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        out.close()
        err.close()
        sys.stdout = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False),
            encoding="utf-8",
            errors="replace",
            line_buffering=True,
            write_through=True,
        )
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False),
            encoding="utf-8",
            errors="replace",
            line_buffering=True,
            write_through=True,
        )
        frames = FrameWriter(control)
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(FrameLogHandler(frames))
        root.setLevel(logging.INFO)
        os.environ.update(msg.get("env") or {})
        try:
            kwargs = fn.arguments(msg["request"])
            if fn.coordinator_params:
                from ._coordinator import SystemCoordinator

                coordinator = SystemCoordinator(invocation_id=inv)
                for name in fn.coordinator_params:
                    kwargs[name] = coordinator
            if fn.is_async:
                value = asyncio.run(fn.func(**kwargs))
            else:
                value = fn.func(**kwargs)
            result = fn.dump_result(value)
            _flush()
            frames.send({"type": "result", "value": result})
        except BaseException as e:  # noqa: BLE001 - every failure is reported
            _flush()
            frames.send(
                {
                    "type": "error",
                    "error": {
                        "type": type(e).__name__,
                        "message": str(e),
                        "traceback": traceback.format_exc(),
                    },
                }
            )
    except BaseException:  # noqa: BLE001 - the server could not be reached
        code = 70
    finally:
        _flush()
        os._exit(code)


def _flush() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:  # noqa: BLE001
            pass


class Host:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.buffer = b""
        self.children: dict[int, str] = {}
        self.by_invocation: dict[str, int] = {}
        self.functions = registered_functions()
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        #: A process forked ahead of time for the next run: (pid, write end of its pipe).
        self.spare: tuple[int, int] | None = None
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def send(self, obj: Any) -> None:
        self.control.sendall(json.dumps(obj).encode() + b"\n")

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.control, selectors.EVENT_READ, "control")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self._fork_spare()
        self.send({"event": "ready", "functions": sorted(self.functions)})
        while True:
            for key, _ in self.sel.select():
                if key.data == "wake":
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                else:
                    chunk = self.control.recv(1 << 16)
                    if not chunk:
                        self.shutdown()
                        return
                    self.buffer += chunk
                    while b"\n" in self.buffer:
                        line, self.buffer = self.buffer.split(b"\n", 1)
                        self.handle(json.loads(line))
            self.reap()

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        fn = self.functions.get(msg.get("function", ""))
        if op == "validate":
            if fn is None:
                self.send(
                    {
                        "id": msg["id"],
                        "errors": [
                            {"field": "function", "message": "unknown function", "type": "unknown"}
                        ],
                    }
                )
            else:
                self.send({"id": msg["id"], "errors": fn.validation_errors(msg.get("request"))})
        elif op == "run":
            if fn is None:
                self.send({"id": msg["id"], "error": f"unknown function {msg.get('function')!r}"})
                return
            pid = self._hand_to_spare(msg)
            self.children[pid] = msg["invocation_id"]
            self.by_invocation[msg["invocation_id"]] = pid
            self.send({"id": msg["id"], "pid": pid})
            # The next run's process is forked now, off that run's critical path.
            self._fork_spare()
        elif op == "kill":
            pid = self.by_invocation.get(msg.get("invocation_id", ""))
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _fork_spare(self) -> None:
        """Fork the next run's process ahead of time; it waits for its run on a pipe."""
        if self.spare is not None:
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.sel.close()
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            chunks = []
            while True:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            if not chunks:
                os._exit(0)
            msg = json.loads(b"".join(chunks))
            _run_child(msg, registered_functions()[msg["function"]])
        os.close(r)
        self.spare = (pid, w)

    def _hand_to_spare(self, msg: dict[str, Any]) -> int:
        """Give the run to the waiting process (forking one if there is none); its pid."""
        for _ in range(2):
            self._fork_spare()
            assert self.spare is not None
            pid, w = self.spare
            self.spare = None
            try:
                data = json.dumps(msg).encode()
                while data:
                    data = data[os.write(w, data) :]
                os.close(w)
                return pid
            except OSError:
                os.close(w)  # that process died while waiting; fork another
        raise RuntimeError("could not start the run's process")

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            inv = self.children.pop(pid, None)
            if inv is None:
                if self.spare is not None and self.spare[0] == pid:
                    os.close(self.spare[1])
                    self.spare = None
                continue
            self.by_invocation.pop(inv, None)
            event: dict[str, Any] = {"event": "exit", "invocation_id": inv, "pid": pid}
            if os.WIFSIGNALED(status):
                event["signal"] = os.WTERMSIG(status)
            else:
                event["code"] = os.waitstatus_to_exitcode(status)
            event["ts_ms"] = int(time.time() * 1000)
            self.send(event)

    def shutdown(self) -> None:
        if self.spare is not None:
            try:
                os.kill(self.spare[0], signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module-dir", required=True)
    parser.add_argument("--module", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args()
    control = socket.socket(fileno=args.control_fd)
    sys.path.insert(0, args.module_dir)
    try:
        import importlib

        importlib.import_module(args.module)
    except BaseException as e:  # noqa: BLE001
        control.sendall(
            json.dumps(
                {"event": "failed", "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
            ).encode()
            + b"\n"
        )
        raise SystemExit(1) from None
    # Objects that exist now (the module, pydantic, the SDK) move to a permanent generation:
    # collections in forked children then never touch them, so their pages stay shared.
    import gc

    gc.collect()
    gc.freeze()
    Host(control).serve()


if __name__ == "__main__":
    main()
