"""Drive the standard input of devbox executions and a devbox's resource usage with Runloop's
own Python client, unchanged.

Run by tests/devbox_runtime.rs with OPENLOOP_URL and OPENLOOP_API_KEY set.
"""

import os
import time

import runloop_api_client
from runloop_api_client import Runloop

# No retries: a status the client would retry (409, 5xx) must show at once.
client = Runloop(
    bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"], max_retries=0
)


def expect(status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except runloop_api_client.APIStatusError as e:
        assert e.status_code == status, (e.status_code, e)
        return e
    raise AssertionError(f"{fn.__name__} succeeded; expected {status}")


def output_until(devbox_id, execution_id, text):
    deadline = time.time() + 20
    while True:
        ex = client.devboxes.executions.retrieve(execution_id, devbox_id=devbox_id)
        if text in ex.stdout:
            return ex
        assert time.time() < deadline, ex
        time.sleep(0.02)


devbox = client.devboxes.create_and_await_running()
send = client.devboxes.executions.send_std_in

# An interactive program: a read loop answers each line as it comes; EOF ends it.
ex = client.devboxes.execute_async(
    devbox.id,
    command='while read -r line; do echo "got:$line"; done; echo end',
    attach_stdin=True,
)
res = send(ex.execution_id, devbox_id=devbox.id, text="first\n")
assert res.success is True and res.execution_id == ex.execution_id and res.devbox_id == devbox.id, res
output_until(devbox.id, ex.execution_id, "got:first\n")
send(ex.execution_id, devbox_id=devbox.id, text="second line\nthird\n")
output_until(devbox.id, ex.execution_id, "got:third\n")
expect(400, send, ex.execution_id, devbox_id=devbox.id, text="")
expect(400, send, ex.execution_id, devbox_id=devbox.id)
expect(400, send, ex.execution_id, devbox_id=devbox.id, text="x", signal="EOF")
send(ex.execution_id, devbox_id=devbox.id, signal="EOF")
done = client.devboxes.executions.await_completed(ex.execution_id, devbox_id=devbox.id)
assert done.status == "completed" and done.exit_status == 0, done
assert done.stdout == "got:first\ngot:second line\ngot:third\nend\n", done.stdout
# A completed execution: a clear 409.
e = expect(400, send, ex.execution_id, devbox_id=devbox.id, text="more\n")
assert "has completed" in str(e), e

# After EOF no more text goes in (while the command still runs).
closing = client.devboxes.execute_async(devbox.id, command="cat >/dev/null; sleep 30", attach_stdin=True)
send(closing.execution_id, devbox_id=devbox.id, signal="EOF")
send(closing.execution_id, devbox_id=devbox.id, signal="EOF")
e = expect(400, send, closing.execution_id, devbox_id=devbox.id, text="late\n")
assert "closed" in str(e), e
client.devboxes.executions.kill(closing.execution_id, devbox_id=devbox.id)

# cat: what goes in comes out; a large input passes whole.
cat = client.devboxes.execute_async(devbox.id, command="cat | wc -c", attach_stdin=True)
blob = "x" * (300 << 10)
send(cat.execution_id, devbox_id=devbox.id, text=blob)
send(cat.execution_id, devbox_id=devbox.id, signal="EOF")
done = client.devboxes.executions.await_completed(cat.execution_id, devbox_id=devbox.id)
assert done.stdout.strip() == str(len(blob)), done.stdout

# INTERRUPT: SIGINT to the command.
loop = client.devboxes.execute_async(
    devbox.id,
    command="trap 'echo interrupted; exit 3' INT; echo ready; while true; do sleep 0.05; done",
    attach_stdin=True,
)
output_until(devbox.id, loop.execution_id, "ready\n")
send(loop.execution_id, devbox_id=devbox.id, signal="INTERRUPT")
done = client.devboxes.executions.await_completed(loop.execution_id, devbox_id=devbox.id)
assert done.exit_status == 3 and "interrupted" in done.stdout, done

# Without attach_stdin there is no input to send to; execute_sync cannot take it.
plain = client.devboxes.execute_async(devbox.id, command="sleep 30")
e = expect(400, send, plain.execution_id, devbox_id=devbox.id, text="x")
assert "attach_stdin" in str(e), e
client.devboxes.executions.kill(plain.execution_id, devbox_id=devbox.id)
expect(400, client.devboxes.execute_sync, devbox.id, command="cat", attach_stdin=True)
expect(404, send, "exe_nope", devbox_id=devbox.id, text="x")
expect(404, send, ex.execution_id, devbox_id="dbx_nope", text="x")

# Resource usage: CPU, memory and disk really used, from the devbox's cgroup and disk.
before = client.devboxes.retrieve_resource_usage(devbox.id)
assert before.id == devbox.id and before.status == "running" and before.end_time_ms is None, before
assert before.start_time_ms == devbox.create_time_ms, before
client.devboxes.execute_sync(
    devbox.id,
    command="timeout 1 sh -c 'while :; do :; done'; "
    "python3 -c 'b = bytearray(160 << 20); b[::4096] = b\"x\" * len(b[::4096])'; "
    "head -c 64M /dev/urandom > big.bin && sync",
)
after = client.devboxes.retrieve_resource_usage(devbox.id)
extra = after.model_extra
assert extra["cpu_seconds_used"] >= 0.8, extra
assert extra["memory_peak_bytes"] >= 160 << 20, extra
assert extra["disk_used_bytes"] - before.model_extra["disk_used_bytes"] >= 60 << 20, (before, after)
assert extra["disk_size_bytes"] > extra["disk_used_bytes"], extra
assert after.total_elapsed_seconds >= after.total_active_seconds >= 1, after
assert after.vcpu_seconds >= 1 and after.memory_gb_seconds >= 1 and after.disk_gb_seconds >= 1, after
expect(404, client.devboxes.retrieve_resource_usage, "dbx_nope")

client.devboxes.shutdown(devbox.id)
ended = client.devboxes.retrieve_resource_usage(devbox.id)
assert ended.status == "shutdown" and ended.end_time_ms is not None, ended
# What it used is recorded as it stopped; nothing is in use any more.
assert ended.model_extra["cpu_seconds_used"] >= extra["cpu_seconds_used"], (ended, after)
assert ended.model_extra["memory_peak_bytes"] >= 160 << 20, ended
assert ended.model_extra["disk_used_bytes"] >= 60 << 20, ended
assert ended.model_extra["memory_used_bytes"] is None, ended
elapsed = ended.total_elapsed_seconds
time.sleep(1.1)
assert client.devboxes.retrieve_resource_usage(devbox.id).total_elapsed_seconds == elapsed

print("stdin and usage check passed")
