"""What a run's process costs before any of its work: the CPU time of creating and ending one
copy of a warm process, measured in a loop (the benchmark's `process_floor` figures).

Run with a deployment's own interpreter (its venv has the SDK and pydantic):

    python process_floor.py MODULE_DIR MODULE ROUNDS

Prints one JSON object, CPU microseconds per process (parent and children, user and system):
- ``bare_fork_us``: ``fork`` + ``_exit`` + ``waitpid`` of an interpreter that imported nothing;
- ``warm_fork_us``: the same, of an interpreter set up as the warm process sets itself up
  (the deployment's module imported, the SDK's preloads and rehearsals done, ``gc.freeze``);
- ``warm_isolated_us``: that warm interpreter forked the way a spare is, into user, mount and
  pid namespaces of its own, with its ids mapped and its run sealed (its own ``/proc`` and
  ``/tmp``, no capabilities, a seccomp filter), then ended: the least every run costs (it
  errs low: this process is not in the deployment's sandbox, whose larger mount table each
  run copies, and its filter is one instruction, not the run's);
- ``warm_isolated_idle_private_kib``: the private memory (its own pages, not its share of the
  warm process's) each of 32 such copies holds while it waits, having done nothing else: the
  least every sleeping run holds.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import struct
import sys
import time

#: The bare measurement, run by ``python -S -c`` (no site, no imports beyond ``os``).
BARE = """
import gc, os, sys
gc.collect(); gc.freeze()
n = int(sys.argv[1]); start = os.times()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
end = os.times()
spent = sum(e - s for e, s in zip(end[:4], start[:4]))
print(spent / n * 1e6)
"""


def bare_fork_us(rounds: int) -> float:
    """``BARE`` in an interpreter of its own (spawned without importing ``subprocess``)."""
    r, w = os.pipe()
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-S", "-c", BARE, str(rounds)],
        dict(os.environ),
        file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_CLOSE, r)],
    )
    os.close(w)
    with os.fdopen(r) as out:
        text = out.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the bare measurement failed")
    return float(text)


def per_process_us(rounds: int, child_work: object = None) -> float:
    """CPU microseconds per fork + exit + wait (parent and reaped children)."""
    from runloop import _isolation

    start = os.times()
    for _ in range(rounds):
        if child_work is None:
            pid = os.fork()
        else:
            pid = _isolation._fork_into_run_namespaces()
        if pid == 0:
            code = 0
            if child_work is not None:
                try:
                    child_work()  # type: ignore[operator]
                except BaseException:  # noqa: BLE001 - reported through the exit code
                    code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("a measured process could not isolate itself")
    end = os.times()
    spent = (
        (end.user - start.user)
        + (end.system - start.system)
        + (end.children_user - start.children_user)
        + (end.children_system - start.children_system)
    )
    return spent / rounds * 1e6


#: Idle isolated copies held at once for the memory figure.
IDLE = 32


def idle_private_kib(isolate: object) -> float:
    """The mean private memory of ``IDLE`` isolated copies of this process that did nothing
    else (each blocked on a pipe): what every sleeping run holds at least, whatever the number
    of runs (the pages they share with the warm process count for less the more runs there
    are)."""
    from runloop import _isolation

    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pids = []
    for _ in range(IDLE):
        pid = _isolation._fork_into_run_namespaces()
        if pid == 0:
            os.close(hold_w)
            os.close(ready_r)
            try:
                isolate()  # type: ignore[operator]
                os.write(ready_w, b"1")
            except BaseException:  # noqa: BLE001 - reported to the parent
                os.write(ready_w, b"0")
            os.read(hold_r, 1)
            os._exit(0)
        pids.append(pid)
    os.close(ready_w)
    os.close(hold_r)
    got = b""
    # A copy killed before it wrote its byte would leave this waiting on the others' ends of
    # the pipe: a minute is far more than 32 forks take.
    deadline = time.monotonic() + 60
    while len(got) < IDLE:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ready_r], [], [], left)[0]:
            break
        chunk = os.read(ready_r, IDLE)
        if not chunk:
            break
        got += chunk
    os.close(ready_r)
    if got != b"1" * IDLE:
        os.close(hold_w)
        for pid in pids:
            os.waitpid(pid, 0)
        raise SystemExit("an idle copy could not isolate itself")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += sum(
                int(line.split()[1])
                for line in f
                if line.startswith(("Private_Clean:", "Private_Dirty:"))
            )
    os.close(hold_w)
    for pid in pids:
        os.waitpid(pid, 0)
    return total / IDLE


def main() -> None:
    module_dir, module, rounds_arg = sys.argv[1:4]
    rounds = int(rounds_arg)
    figures = {"bare_fork_us": bare_fork_us(rounds)}

    # The warm process's own set-up (runloop._host.main, without its server).
    from runloop import _host, _isolation

    sys.path.insert(0, module_dir)
    importlib.import_module(module)
    _host._warm_up()
    figures["warm_fork_us"] = per_process_us(rounds)

    uid, gid = os.getuid(), os.getgid()
    # Allow everything: a filter of the run's kind, without the run's rules.
    allow_all = struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000)

    seal = _isolation.Seal(1 << 20, allow_all)

    def isolate() -> None:
        _isolation._map_own_ids(uid, gid)
        seal.apply()

    figures["warm_isolated_us"] = per_process_us(rounds, isolate)
    figures["warm_isolated_idle_private_kib"] = idle_private_kib(isolate)
    figures["cpus"] = float(len(os.sched_getaffinity(0)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
