"""Client side of the Celery peer: prints one JSON line for openloop-bench.

    python celery_driver.py --calls N --clients C --seconds S --warmup W

Latency: one client, `W` warm-up calls, then `N` calls of `echo.delay("hi").get()`, each timed
on its own (`latencies_ms`; openloop-bench takes the percentiles, as it does for Openloop).

Throughput: `C` concurrent clients, each calling `echo.delay("hi").get()` in a loop until `S`
seconds have passed; calls started before the end count, and the elapsed time runs to the last
one's end (the same rule as Openloop's figure). The clients are processes, not threads: a
thread pool would share one GIL, so the client's own Python (serialising, publishing, reading
the pub/sub reply) would be capped at one core and charged to Celery; and Celery's Redis result
consumer is not safe to share between threads (celery/celery#4480, #6414). Each process is
forked before any connection is made and opens its own.
"""

import argparse
import json
import multiprocessing as mp
import sys
import time

from celery_app import echo

# The first call waits for the worker; later ones should take milliseconds.
FIRST_CALL_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0


def call(timeout: float = CALL_TIMEOUT_S) -> None:
    got = echo.delay("hi").get(timeout=timeout)
    if got != "hi":
        raise RuntimeError(f"unexpected echo: {got!r}")


def client(go, ready, start_at, seconds, out) -> None:
    try:
        go.wait()
        for _ in range(5):  # this process's own connections
            call()
        ready.wait()  # every client warm
        ready.wait()  # the parent has set start_at
        start = start_at.value
        stop = start + seconds
        while time.monotonic() < start:
            time.sleep(0.0005)
        n = 0
        while time.monotonic() < stop:
            call()
            n += 1
        out.put(("ok", n, time.monotonic()))
    except BaseException as e:  # reported by the parent
        out.put(("error", repr(e), 0.0))
        ready.abort()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup", type=int, default=100)
    a = p.parse_args()

    ctx = mp.get_context("fork")
    go = ctx.Event()
    ready = ctx.Barrier(a.clients + 1)
    start_at = ctx.Value("d", 0.0)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(go, ready, start_at, a.seconds, out), daemon=True)
        for _ in range(a.clients)
    ]
    for pr in procs:
        pr.start()

    try:
        call(FIRST_CALL_TIMEOUT_S)
    except Exception as e:
        print(f"the Celery worker did not answer: {e!r}", file=sys.stderr)
        return 1
    for _ in range(a.warmup):
        call()
    lat = []
    for _ in range(a.calls):
        t = time.perf_counter()
        call()
        lat.append((time.perf_counter() - t) * 1000.0)

    go.set()
    ready.wait(timeout=120)
    start_at.value = time.monotonic() + 0.05
    ready.wait(timeout=10)
    done = 0
    last = start_at.value
    for _ in procs:
        status, n, end = out.get(timeout=a.seconds + 120)
        if status != "ok":
            print(f"a Celery client failed: {n}", file=sys.stderr)
            return 1
        done += n
        last = max(last, end)
    for pr in procs:
        pr.join()
    print(
        json.dumps(
            {
                "latencies_ms": lat,
                "throughput_calls": done,
                "throughput_seconds": last - start_at.value,
                "clients": a.clients,
                "client_kind": "process",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
