"""``python -m runloop._host``: the warm process of one deployment.

It imports the agent module once, then serves the server over the control socket
(fd given by ``--control-fd``), one JSON object per line:

- ``{"op": "validate", "id", "function", "request"}`` -> ``{"id", "errors": [...]}``
- ``{"op": "run", "id", "invocation_id", "function", "request", "key", "env"}``
  hands the run to a child forked ahead of time -> ``{"id", "pid", "spare"}``; when the
  child ends
  ``{"event": "exit", "invocation_id", "pid", "code" | "signal"}``
- ``{"op": "kill", "invocation_id"}`` kills the run's process group.

Each run is isolated from every other run and from this process: its process is forked
ahead of time and, before any run code, enters user, mount and pid namespaces of its own
(so it sees, signals and traces only its own processes, under its own ``/proc``), mounts a
size-limited tmpfs of its own as ``/tmp`` (gone when the run ends), drops every
capability, loads the sandbox's seccomp filter (no namespaces, mounts, ``bpf``, …) and
makes itself non-dumpable, so no other process of the deployment can read its memory.

The child has three streams to the server's engine socket (``control``, ``stdout``,
``stderr``); its file descriptors 1 and 2 become the output streams, so nothing a
function prints can be mistaken for its result, which travels as a length-prefixed
JSON frame on ``control``. A spare connects them as soon as it is isolated, under this
host's spare registration and a random name of its own (``spare``, ``spare_stdout``,
``spare_stderr``); the reply to ``run`` names the spare that took the run, and the server
starts it on those streams. A spare whose registration failed connects them when its run
arrives instead, under the run's own key.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import ctypes
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

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_CAP_VERSION_3 = 0x20080522


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _non_dumpable() -> None:
    """No process of the same user may trace this one or read its memory or environment."""
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def _enter_run_namespaces() -> None:
    """Own user, mount and pid namespaces (pid 1 is this process's next child)."""
    uid, gid = os.getuid(), os.getgid()
    # The host process is not dumpable, so its /proc files are not its own; this process
    # must own its /proc/self to write its maps. Its run's pid 1 is sealed non-dumpable.
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID), "unshare")
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
    _write_file("/proc/self/gid_map", f"{gid} {gid} 1")


def _seal_run(tmp_bytes: int, seccomp: bytes) -> None:
    """In the run's pid 1, before any run code: its own /proc and /tmp, no capabilities,
    the sandbox's seccomp filter, not dumpable."""
    _check(
        _libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
        "mounting the run's /proc",
    )
    opts = f"size={max(tmp_bytes, 4096)},mode=1777".encode()
    _check(
        _libc.mount(b"tmpfs", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, opts),
        "mounting the run's /tmp",
    )
    for cap in range(64):
        _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    buf = ctypes.create_string_buffer(seccomp, len(seccomp))
    prog = _SockFprog(len(seccomp) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
        "installing the run's seccomp filter",
    )
    _non_dumpable()


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


def _connect(
    path: str, invocation_id: str, key: str, channel: str, spare: str | None = None
) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    header: dict[str, str] = {"invocation_id": invocation_id, "key": key, "channel": channel}
    if spare is not None:
        header["spare"] = spare
    s.sendall(json.dumps(header).encode() + b"\n")
    return s


#: A spare's three streams, connected ahead of its run: control, stdout, stderr.
Streams = tuple[socket.socket, socket.socket, socket.socket]


def _run_child(
    msg: dict[str, Any],
    fn: FunctionDefinition,
    engine_socket: str,
    streams: Streams | None,
) -> None:
    """Body of the forked child; never returns."""
    code = 0
    control: socket.socket | None = None
    try:
        os.setsid()
        path, inv, key = engine_socket, msg["invocation_id"], msg["key"]
        if streams is not None:
            control, out, err = streams
        else:
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
        _close_streams(streams, control)
        os._exit(code)


def _close_streams(streams: Streams | None, control: socket.socket | None) -> None:
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
    for s in [*(streams or ()), control]:
        if s is not None:
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


#: Runs' processes kept forked and isolated ahead of time: two, so that a run arriving while
#: the process for the next one is still being prepared does not wait for it.
SPARES = 2


class Spare:
    """A run's process forked and isolated ahead of time, waiting for its run."""

    def __init__(self, forked: int, write: int, report: int, name: str) -> None:
        #: The process forked from the host; it exits once it has forked the run's pid 1.
        self.forked = forked
        #: The random name its streams registered under (see ``Host._register_spare``).
        self.name = name
        #: The run's message goes here.
        self.write = write
        #: The run's pid (4 bytes), or 0 and the reason its isolation failed.
        self.report = report
        self.pid: int | None = None

    def close(self) -> None:
        for fd in (self.write, self.report):
            try:
                os.close(fd)
            except OSError:
                pass


class Host:
    def __init__(
        self,
        control: socket.socket,
        engine_socket: str,
        run_tmp_bytes: int,
        seccomp: bytes,
        spare: tuple[str, str] | None = None,
    ) -> None:
        self.control = control
        self.engine_socket = engine_socket
        self.run_tmp_bytes = run_tmp_bytes
        self.seccomp = seccomp
        #: (id, key) this host's spares register with on the engine socket.
        self.spare_registration = spare
        self.buffer = b""
        self.children: dict[int, str] = {}
        self.by_invocation: dict[str, int] = {}
        #: Invocations killed before their run arrived (oldest first, at most 1,024).
        self.killed_early: dict[str, bool] = {}
        self.functions = registered_functions()
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        #: The next run's process, forked and isolated ahead of time.
        self.spares: collections.deque[Spare] = collections.deque()
        #: Forking a spare failed (the process limit); set again when a process of ours ends.
        self.fork_failed = False
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def send(self, obj: Any) -> None:
        self.control.sendall(json.dumps(obj).encode() + b"\n")

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.control, selectors.EVENT_READ, "control")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.send({"event": "ready", "functions": sorted(self.functions)})
        while True:
            # Spares are replaced when nothing else waits: a request (a validation, the next
            # run) never queues behind a fork.
            ready = self.sel.select(timeout=0)
            if not ready and len(self.spares) < SPARES and not self.fork_failed:
                self._try_fork_spare()
                continue
            for key, _ in ready or self.sel.select():
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
            if self.killed_early.pop(msg["invocation_id"], None) is not None:
                # Its kill arrived first (a cancel raced the start): it never runs.
                self.send({"id": msg["id"], "error": "the run was canceled before it started"})
                return
            try:
                pid, name = self._hand_to_spare(msg)
            except RuntimeError as e:
                self.send({"id": msg["id"], "error": str(e)})
                return
            self.children[pid] = msg["invocation_id"]
            self.by_invocation[msg["invocation_id"]] = pid
            self.send({"id": msg["id"], "pid": pid, "spare": name})
        elif op == "kill":
            inv_id = msg.get("invocation_id", "")
            pid = self.by_invocation.get(inv_id)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            elif inv_id:
                # Not started yet: its run, when it comes, is refused. (Bounded: a kill for a
                # run that had already ended is remembered too, and forgotten in turn.)
                self.killed_early[inv_id] = True
                while len(self.killed_early) > 1024:
                    self.killed_early.pop(next(iter(self.killed_early)))

    def _try_fork_spare(self) -> None:
        """Fork one more run's process ahead of time if the system lets us (at its process
        limit it does not: then no more is tried until a process of ours ends, and a run
        forks its own)."""
        try:
            self._fork_spare()
        except OSError as e:
            self.fork_failed = True
            print(f"openloop: could not fork a process ahead of time: {e}", file=sys.stderr)

    def _fork_spare(self) -> None:
        """Fork and isolate a run's process ahead of time; it waits on a pipe."""
        r, w = os.pipe()
        report_r, report_w = os.pipe()
        name = os.urandom(12).hex()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.close(report_r)
            # The other spares' pipes stay theirs: a copy held here would keep a spare's
            # message pipe open after the host hands it its run, and it would wait forever.
            for other in self.spares:
                other.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.sel.close()
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            self._become_run(r, report_w, name)
        os.close(r)
        os.close(report_w)
        self.spares.append(Spare(pid, w, report_r, name))

    def _become_run(self, r: int, report_w: int, name: str) -> None:
        """In the forked process: isolate, fork the run's pid 1, report its pid, exit.
        Never returns."""
        try:
            _enter_run_namespaces()
            pid = os.fork()
        except BaseException as e:  # noqa: BLE001 - reported to the host
            os.write(report_w, struct.pack("i", 0) + f"{type(e).__name__}: {e}".encode())
            os._exit(71)
        if pid != 0:
            os.write(report_w, struct.pack("i", pid))
            os._exit(0)
        try:
            _seal_run(self.run_tmp_bytes, self.seccomp)
        except BaseException:  # noqa: BLE001 - the host sees the pipe close
            os._exit(71)
        os.close(report_w)
        streams = self._register_spare(name)
        chunks = []
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            os._exit(0)
        msg = json.loads(b"".join(chunks))
        _run_child(msg, registered_functions()[msg["function"]], self.engine_socket, streams)

    def _register_spare(self, name: str) -> Streams | None:
        """Tell the server this process waits for a run, so that it moves it into a run
        cgroup now rather than when the run starts, and connect the run's three streams now,
        off its path. Best effort: without them (``None``), the run's start moves the
        process and the run connects its streams itself."""
        if self.spare_registration is None:
            return None
        spare_id, key = self.spare_registration
        opened: list[socket.socket] = []
        try:
            control = _connect(self.engine_socket, spare_id, key, "spare", name)
            opened.append(control)
            control.settimeout(10)
            if control.recv(1) != b"\x01":
                raise OSError("the server did not take this process as a spare")
            control.settimeout(None)
            for channel in ("spare_stdout", "spare_stderr"):
                opened.append(_connect(self.engine_socket, spare_id, key, channel, name))
            return (opened[0], opened[1], opened[2])
        except OSError:
            for s in opened:
                s.close()
            return None

    def _spare_pid(self, spare: Spare) -> int:
        """The pid of the spare's run process, once it reported it (raises if it failed)."""
        if spare.pid is None:
            data = b""
            while True:
                chunk = os.read(spare.report, 4096)
                if not chunk:
                    break
                data += chunk
            pid = struct.unpack("i", data[:4])[0] if len(data) >= 4 else 0
            if pid <= 0:
                reason = data[4:].decode(errors="replace") or "its process ended during set-up"
                raise RuntimeError(f"the run could not be isolated: {reason}")
            spare.pid = pid
        return spare.pid

    def _hand_to_spare(self, msg: dict[str, Any]) -> tuple[int, str]:
        """Give the run to the waiting process (forking one if there is none); its pid and
        the name its streams registered under."""
        last = "no process could be started"
        for _ in range(2):
            if not self.spares:
                try:
                    self._fork_spare()
                except OSError as e:
                    raise RuntimeError(
                        f"could not start the run's process: {e} (the deployment's process limit)"
                    ) from None
            spare = self.spares.popleft()
            try:
                pid = self._spare_pid(spare)
                data = json.dumps(msg).encode()
                while data:
                    data = data[os.write(spare.write, data) :]
                spare.close()
                return pid, spare.name
            except (OSError, RuntimeError) as e:
                spare.close()  # that process died while waiting; fork another
                last = str(e)
        raise RuntimeError(f"could not start the run's process: {last}")

    def reap(self) -> None:
        # As pid 1 of its sandbox, this process also reaps each run's process (reparented to
        # it when the process that forked it exits) and those forked processes themselves.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.fork_failed = False
            inv = self.children.pop(pid, None)
            if inv is None:
                for spare in [s for s in self.spares if s.pid == pid]:
                    spare.close()
                    self.spares.remove(spare)
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
        for spare in self.spares:
            if spare.pid is not None:
                try:
                    os.kill(spare.pid, signal.SIGKILL)
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
    parser.add_argument("--engine-socket", required=True)
    parser.add_argument("--run-tmp-bytes", type=int, required=True)
    parser.add_argument("--run-seccomp", required=True)
    parser.add_argument("--spare-id")
    parser.add_argument("--spare-key")
    args = parser.parse_args()
    _non_dumpable()
    with open(args.run_seccomp, "rb") as f:
        seccomp = f.read()
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
    spare = (args.spare_id, args.spare_key) if args.spare_id and args.spare_key else None
    Host(control, args.engine_socket, args.run_tmp_bytes, seccomp, spare).serve()


if __name__ == "__main__":
    main()
