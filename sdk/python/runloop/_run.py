"""A run's own process, once isolated: the frames it speaks with the server (its control
stream), its output streams, the rehearsal of its function, and serving its one run
(``_serve_one_run``, which never returns)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import sys
import threading
import traceback
from typing import Any

from ._function import registered_functions


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


def _connect(path: str, spare_id: str, key: str, channel: str, spare: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    header = {"invocation_id": spare_id, "key": key, "channel": channel, "spare": spare}
    s.sendall(json.dumps(header).encode() + b"\n")
    return s


#: A spare's three streams, connected ahead of its run: control, stdout, stderr.
Streams = tuple[socket.socket, socket.socket, socket.socket]

#: Exit codes of a spare that never got to wait for a run.
_NOT_ISOLATED = 71
_NOT_REGISTERED = 72


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes, or ``None`` if the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_frame(sock: socket.socket) -> Any:
    """One length-prefixed JSON frame, or ``None`` if the stream ends first."""
    header = _read_exact(sock, 4)
    if header is None:
        return None
    body = _read_exact(sock, struct.unpack(">I", header)[0])
    return None if body is None else json.loads(body)


def _text_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="replace",
        line_buffering=True,
        write_through=True,
    )


def _rehearse(function: str | None) -> None:
    """Touch what a run goes through before it comes (see ``FunctionDefinition.rehearse``):
    the framing, and the function its warm process ran last, the likeliest next. Best
    effort: nothing here may keep the spare from its run."""
    try:
        body = json.dumps({"type": "result", "value": {"k": [1, 2.5, "v", None, True]}})
        json.loads(body)
        struct.unpack(">I", struct.pack(">I", len(body)))
        fn = registered_functions().get(function or "")
        if fn is not None:
            fn.rehearse()
    except Exception:  # noqa: BLE001, S110 - a rehearsal only saves time
        pass


def _attach_output(control: socket.socket, out_fd: int, err_fd: int) -> FrameWriter:
    """The run's output: ``sys.stdout`` and ``sys.stderr`` on ``out_fd`` and ``err_fd``,
    and the root logger's records as frames on ``control``."""
    sys.stdout = _text_stream(out_fd)
    sys.stderr = _text_stream(err_fd)
    frames = FrameWriter(control)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(FrameLogHandler(frames))
    root.setLevel(logging.INFO)
    return frames


#: Rounds of :func:`_rehearse_spare`: CPython specializes a function's code after a few
#: calls (eight in 3.11), in place; from then on calls no longer write to it.
_SPARE_REHEARSALS = 16


def _rehearse_spare() -> None:
    """In the warm process, before it forks: go through what every spare does before its
    run, where that is harmless here (its output streams and logging on a socket pair and
    ``/dev/null``, reading a frame, the library calls that let go of the warm process's
    signal handling and selector), then put everything back. Code that a process runs for
    the first time writes to itself as CPython specializes it, and a forked process's writes
    copy pages: run here first, those writes land once, in pages every spare shares (about
    a sixth of a megabyte less per run's process, and the CPU of those copies)."""
    import selectors
    import signal

    root = logging.getLogger()
    saved = (sys.stdout, sys.stderr, list(root.handlers), root.level)
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    frame = json.dumps({"function": "", "request": {}, "env": {}}).encode()
    try:
        for _ in range(_SPARE_REHEARSALS):
            a, b = socket.socketpair()
            with a, b:
                _attach_output(a, devnull, devnull)
                _flush()
                b.sendall(struct.pack(">I", len(frame)) + frame)
                _read_frame(a)
            selectors.DefaultSelector().close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
    except Exception:  # noqa: BLE001, S110 - a rehearsal only saves work (out of descriptors, say)
        pass
    finally:
        sys.stdout, sys.stderr = saved[0], saved[1]
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[2]:
            root.addHandler(h)
        root.setLevel(saved[3])
        os.close(devnull)


def _serve_one_run(streams: Streams, hint: str | None) -> None:
    """In a registered spare: get ready for a run, wait for it on the control stream, run
    it. Never returns."""
    code = 0
    control, out, err = streams
    try:
        # Everything that does not depend on the run happens before it comes.
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        out.close()
        err.close()
        frames = _attach_output(control, 1, 2)
        _rehearse(hint)
        msg = _read_frame(control)
        if msg is None:
            # The server let this spare go unused (its deployment was replaced).
            os._exit(0)
        try:
            name = msg["function"]
            fn = registered_functions().get(name)
            if fn is None:
                raise LookupError(f"unknown function {name!r}")
            os.environ.update(msg.get("env") or {})
            kwargs = fn.arguments(msg["request"])
            if fn.coordinator_params:
                from ._coordinator import SystemCoordinator

                coordinator = SystemCoordinator(invocation_id=msg["invocation_id"])
                for param in fn.coordinator_params:
                    kwargs[param] = coordinator
            if fn.is_async:
                import asyncio  # preloaded by the warm process when a function is async

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
        _close_streams(streams)
        os._exit(code)


def _close_streams(streams: Streams) -> None:
    """Close the run's streams before its process exits. The kernel closes an exiting
    process's descriptors only after tearing down its memory (a copy of the warm process:
    about 1.5 ms), and the server ends the run when its streams close; the result is already
    sent. (Processes the run started keep their own copies of fds 1 and 2 until the server
    kills them with the run's cgroup.)"""
    for fd in (1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    for s in streams:
        try:
            s.close()
        except OSError:
            pass


def _flush() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:  # noqa: BLE001
            pass
