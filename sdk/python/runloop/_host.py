"""``python -m runloop._host``: the warm process of one deployment.

It imports the agent module once, then serves the server over the control socket
(fd given by ``--control-fd``), one JSON object per line:

- ``{"op": "validate", "id", "function", "request"}`` -> ``{"id", "errors": [...]}``
- ``{"op": "taken", "spare", "invocation_id", "function"}``: the server gave a run to the spare
  ``spare`` (directly, on that spare's control stream); this process notes which run the
  spare's process is, forks a replacement, and when the process ends sends
  ``{"event": "exit", "invocation_id", "pid", "code" | "signal"}``
- ``{"op": "kill", "invocation_id"}`` kills the run's process group.

It sends ``{"event": "spare_failed", "error"}`` when a process for the next run could not
be forked, isolated or registered (a run waiting for one then fails with that reason).

Each run is isolated from every other run and from this process: its process is forked
ahead of time (straight into its namespaces with ``clone`` while this process has one
thread; else by fork, unshare and fork again) and, before any run code, is in user, mount
and pid namespaces of its own
(so it sees, signals and traces only its own processes, under its own ``/proc``), mounts a
size-limited tmpfs of its own as ``/tmp`` (gone when the run ends), drops every
capability, loads the sandbox's seccomp filter (no namespaces, mounts, ``bpf``, …) and
makes itself non-dumpable, so no other process of the deployment can read its memory.

Spares (the processes of the next runs) are forked and isolated ahead of time. Each
registers on the server's engine socket as soon as it is isolated, under this host's spare
registration and a random name of its own, with three streams: ``spare`` (control),
``spare_stdout`` and ``spare_stderr``. The server moves it into a run cgroup of its own and
says so with one byte; the spare then makes fds 1 and 2 its output streams (so nothing a
function prints can be mistaken for its result, which travels as a length-prefixed JSON
frame on the control stream) and waits. A run comes from the server as one length-prefixed
JSON frame on that control stream (``{"invocation_id", "function", "request", "env"}``):
this process is not on the run's path, and learns of it afterwards through ``taken``.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

from ._function import FunctionDefinition, registered_functions
from ._isolation import (
    _SYS_CLONE,
    Seal,
    _enter_run_namespaces,
    _fork_into_run_namespaces,
    _map_own_ids,
    _non_dumpable,
    _release_free_memory,
    _single_threaded,
)
from ._run import (
    _NOT_ISOLATED,
    _NOT_REGISTERED,
    Streams,
    _connect,
    _rehearse,
    _rehearse_spare,
    _serve_one_run,
)

#: Runs' processes kept forked, isolated and registered ahead of time. Preparing one (fork,
#: namespaces, mounts, the server's cgroup move, three connections) takes 10-20 ms of wall
#: time on a busy 2-core machine, several runs' worth: a run finds one ready only if the
#: replacements forked for the last few runs have had that long. Measured here with one
#: client calling an echo function back to back: with four, half the runs waited for a spare
#: (p50 3.57 ms); with six, the median run found one ready (p50 3.31 ms), with eight 3.04 ms.
#: Each idle one costs about 2.8 MB of private memory (its page tables and the pages its
#: set-up and rehearsal wrote), so six is the compromise for a server of many deployments.
SPARES = 6

#: Spares that ended before the server's ``taken`` for them arrived, remembered this long
#: (by name) so that their run still gets its exit status.
_GONE_KEPT = 256


class Spare:
    """A run's process forked and isolated ahead of time, waiting for its run."""

    def __init__(self, forked: int, report: int, name: str) -> None:
        #: The process forked from the host: the run's pid 1 itself when it was forked
        #: straight into its namespaces, else one that exits once it has forked that pid 1.
        self.forked = forked
        #: The random name its streams registered under (see ``Host._register_spare``).
        self.name = name
        #: The run's pid (4 bytes), or 0 and the reason its isolation failed.
        self.report = report
        self.pid: int | None = None
        #: Why it could not be isolated, once known.
        self.failure: str | None = None

    def learn_pid(self, block: bool) -> None:
        """Read the pid its forked process reported (written before that process exits,
        so it is there once the spare's pid 1 could have ended)."""
        if self.pid is not None or self.failure is not None or self.report < 0:
            return
        try:
            if block:
                select.select([self.report], [], [], 10)
            data = os.read(self.report, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            data = b""
            self.failure = str(e)
        pid = struct.unpack("i", data[:4])[0] if len(data) >= 4 else 0
        if pid > 0:
            self.pid = pid
        elif self.failure is None:
            self.failure = data[4:].decode(errors="replace") or "its process ended during set-up"
        self.close()

    def close(self) -> None:
        if self.report >= 0:
            try:
                os.close(self.report)
            except OSError:
                pass
            self.report = -1


def _exit_fields(status: int) -> dict[str, int]:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"code": os.waitstatus_to_exitcode(status)}


class Host:
    def __init__(
        self,
        control: socket.socket,
        engine_socket: str,
        run_tmp_bytes: int,
        seccomp: bytes,
        spare: tuple[str, str],
    ) -> None:
        self.control = control
        self.engine_socket = engine_socket
        self.run_tmp_bytes = run_tmp_bytes
        #: Each run's sealing, prepared once (see ``Seal``).
        self.seal = Seal(run_tmp_bytes, seccomp)
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
        #: The next runs' processes, forked and isolated ahead of time, by name.
        self.spares: dict[str, Spare] = {}
        #: Spares that ended before their ``taken`` came: name -> (pid, exit fields).
        self.gone: collections.OrderedDict[str, tuple[int, dict[str, int]]] = (
            collections.OrderedDict()
        )
        #: Forking a spare failed (the process limit); set again when a process of ours ends.
        self.fork_failed = False
        #: Spares that failed in a row, and when the next may be forked (a spare that cannot
        #: be isolated or registered is not retried in a tight loop).
        self.failures = 0
        self.next_fork = 0.0
        #: The function of the last run (spares forked next rehearse it).
        self.last_function: str | None = None
        #: This process's ids, which each run maps to themselves in its user namespace.
        self.uid, self.gid = os.getuid(), os.getgid()
        #: Spares are forked straight into their namespaces while that works (see
        #: ``_fork_into_run_namespaces``); otherwise by fork, unshare and fork again.
        self.clone_works = _SYS_CLONE is not None
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
            # Spares are replaced when nothing else waits: a request (a validation, a kill)
            # never queues behind a fork.
            timeout: float | None = None
            if len(self.spares) < SPARES and not self.fork_failed:
                timeout = max(0.0, self.next_fork - time.monotonic())
            ready = self.sel.select(timeout=timeout)
            if not ready and timeout is not None:
                self._try_fork_spare()
                continue
            for key, _ in ready:
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
        if op == "validate":
            fn = self.functions.get(msg.get("function", ""))
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
        elif op == "taken":
            if isinstance(msg.get("function"), str):
                self.last_function = msg["function"]
            self._taken(str(msg.get("spare", "")), str(msg.get("invocation_id", "")))
        elif op == "kill":
            inv_id = msg.get("invocation_id", "")
            pid = self.by_invocation.get(inv_id)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            elif inv_id:
                # Not started yet: its process is killed when its ``taken`` comes. (Bounded:
                # a kill for a run that had already ended is remembered too, and forgotten
                # in turn.)
                self.killed_early[inv_id] = True
                while len(self.killed_early) > 1024:
                    self.killed_early.pop(next(iter(self.killed_early)))

    def _taken(self, name: str, inv: str) -> None:
        """The server started run ``inv`` on spare ``name``: that process is now the run's."""
        spare = self.spares.pop(name, None)
        if spare is None:
            ended = self.gone.pop(name, None)
            if ended is not None:
                pid, fields = ended
                self.send({"event": "exit", "invocation_id": inv, "pid": pid, **fields})
            return
        spare.learn_pid(block=True)
        if spare.pid is None:
            return
        self.failures = 0
        self.children[spare.pid] = inv
        self.by_invocation[inv] = spare.pid
        if self.killed_early.pop(inv, None) is not None:
            try:
                os.killpg(spare.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _spare_failed(self, reason: str) -> None:
        self.failures += 1
        self.next_fork = time.monotonic() + min(2.0, 0.05 * 2 ** (self.failures - 1))
        self.send({"event": "spare_failed", "error": reason})

    def _try_fork_spare(self) -> None:
        """Fork one more run's process ahead of time if the system lets us (at its process
        limit it does not: then no more is tried until a process of ours ends, and a run
        waiting for a process fails)."""
        try:
            self._fork_spare()
        except OSError as e:
            self.fork_failed = True
            self._spare_failed(
                f"could not start the run's process: {e} (the deployment's process limit)"
            )

    def _fork_spare(self) -> None:
        """Fork and isolate a run's process ahead of time; it registers with the server."""
        name = os.urandom(12).hex()
        if self.clone_works and _single_threaded():
            try:
                pid = _fork_into_run_namespaces()
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EINVAL, errno.ENOSYS):
                    raise
                self.clone_works = False
            else:
                if pid == 0:
                    self._leave_host()
                    try:
                        _map_own_ids(self.uid, self.gid)
                    except BaseException:  # noqa: BLE001 - the host sees the exit code
                        os._exit(_NOT_ISOLATED)
                    self._seal_and_serve(name)
                spare = Spare(pid, -1, name)
                spare.pid = pid
                self.spares[name] = spare
                return
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            self._leave_host()
            self._become_run(report_w, name)
        os.close(report_w)
        os.set_blocking(report_r, False)
        self.spares[name] = Spare(pid, report_r, name)

    def _leave_host(self) -> None:
        """In a spare's process: let go of what is the host's."""
        # The other spares' pipes stay theirs.
        for other in self.spares.values():
            other.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.sel.close()
        self.control.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _become_run(self, report_w: int, name: str) -> None:
        """In the forked process: isolate, fork the run's pid 1, report its pid, exit.
        Never returns."""
        try:
            _enter_run_namespaces()
            pid = os.fork()
        except BaseException as e:  # noqa: BLE001 - reported to the host
            os.write(report_w, struct.pack("i", 0) + f"{type(e).__name__}: {e}".encode())
            os._exit(_NOT_ISOLATED)
        if pid != 0:
            os.write(report_w, struct.pack("i", pid))
            os._exit(0)
        os.close(report_w)
        self._seal_and_serve(name)

    def _seal_and_serve(self, name: str) -> None:
        """In the run's pid 1, in its namespaces: seal it, register it as a spare, serve
        its run. Never returns."""
        try:
            self.seal.apply()
            os.setsid()
        except BaseException:  # noqa: BLE001 - the host sees the exit code
            os._exit(_NOT_ISOLATED)
        streams = self._register_spare(name)
        if streams is None:
            os._exit(_NOT_REGISTERED)
        _serve_one_run(streams, self.last_function)

    def _register_spare(self, name: str) -> Streams | None:
        """Tell the server this process waits for a run, so that it moves it into a run
        cgroup now rather than when the run starts, and connect the run's three streams now,
        off its path. ``None`` if the server did not take it."""
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
            if inv is not None:
                self.by_invocation.pop(inv, None)
                event: dict[str, Any] = {"event": "exit", "invocation_id": inv, "pid": pid}
                event.update(_exit_fields(status))
                event["ts_ms"] = int(time.time() * 1000)
                self.send(event)
                continue
            self._spare_ended(pid, status)

    def _spare_ended(self, pid: int, status: int) -> None:
        """A spare's process (or the process that forked it) ended before its run was
        known here."""
        for spare in list(self.spares.values()):
            spare.learn_pid(block=False)
            if pid == spare.forked and spare.failure is not None:
                del self.spares[spare.name]
                self._spare_failed(f"the run could not be isolated: {spare.failure}")
                return
            if pid != spare.pid:
                continue
            del self.spares[spare.name]
            spare.close()
            fields = _exit_fields(status)
            # Its run may have been handed to it already (the server's ``taken`` follows).
            self.gone[spare.name] = (pid, fields)
            while len(self.gone) > _GONE_KEPT:
                self.gone.popitem(last=False)
            code = fields.get("code")
            if code == _NOT_ISOLATED:
                self._spare_failed("the run could not be isolated (its sandbox set-up failed)")
            elif code == _NOT_REGISTERED:
                self._spare_failed(
                    "the run's process could not register with the server's engine socket"
                )
            return

    def shutdown(self) -> None:
        for spare in self.spares.values():
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


def _preload(functions: dict[str, FunctionDefinition]) -> None:
    """Import now, once, what the runs of these functions import on their way, so that no
    run pays for it: ``asyncio`` for ``async def`` functions, and the API client for
    functions given a ``SystemCoordinator`` (which makes one as it is injected: about 4 ms
    of imports in every run otherwise). Nothing more: whatever the warm process holds, every
    run's process copies the page tables of and tears down (``asyncio`` alone is about
    2.5 MB of the warm process, measured with the benchmark's deployment)."""
    if any(fn.is_async for fn in functions.values()):
        import asyncio  # noqa: F401
    if any(fn.coordinator_params for fn in functions.values()):
        from . import _client, _devbox  # noqa: F401


def _warm_up() -> None:
    """What the warm process does once its module is imported and before its first fork
    (``openloop-bench``'s process floor does the same, to measure copies of this process)."""
    _preload(registered_functions())
    # Every function's request validation and result serialization, and the framing, once
    # here: what they set up on first use (validators' and encoders' caches) is then written
    # once, into pages all spares share, instead of once in every spare's own copy (about a
    # quarter of a megabyte less per run's process, measured with the benchmark's functions).
    for fn in registered_functions().values():
        _rehearse(fn.name)
    _rehearse_spare()
    # Objects that exist now (the module, pydantic, the SDK) move to a permanent generation:
    # collections in forked children then never touch them, so their pages stay shared.
    import gc

    gc.collect()
    gc.freeze()
    # What importing and rehearsing freed goes back to the system (3.5 MB of 17.5 with the
    # benchmark's functions): each fork copies the page tables of the memory this process
    # holds and each run's exit tears its copy down, so that is about 0.1 ms of CPU less per
    # run (the benchmark's process floor: warm fork 1.42 -> 1.29 ms).
    _release_free_memory()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module-dir", required=True)
    parser.add_argument("--module", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--engine-socket", required=True)
    parser.add_argument("--run-tmp-bytes", type=int, required=True)
    parser.add_argument("--run-seccomp", required=True)
    parser.add_argument("--spare-id", required=True)
    parser.add_argument("--spare-key", required=True)
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
    _warm_up()
    spare = (args.spare_id, args.spare_key)
    Host(control, args.engine_socket, args.run_tmp_bytes, seccomp, spare).serve()


if __name__ == "__main__":
    main()
