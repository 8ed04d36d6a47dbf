"""Drive Openloop's devbox API with Runloop's own Python client, unchanged.

Run by tests/devbox_api.rs with OPENLOOP_URL and OPENLOOP_API_KEY set. Exits non-zero
(an AssertionError or a client exception) when any call does not work as the client expects.
"""

import io
import os
import time

from runloop_api_client import Runloop
from runloop_api_client.lib.polling import PollingConfig

client = Runloop(bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"])

# create (and the client's own wait for running)
devbox = client.devboxes.create_and_await_running(
    name="client-check",
    environment_variables={"GREETING": "hello"},
    launch_parameters={"launch_commands": ["echo launched > /home/user/launch.txt"]},
    metadata={"suite": "runloop_client"},
)
assert devbox.status == "running", devbox
assert devbox.name == "client-check"
assert devbox.metadata == {"suite": "runloop_client"}
assert [t.status for t in devbox.state_transitions][:1] == ["provisioning"], devbox.state_transitions
fetched = client.devboxes.retrieve(devbox.id)
assert fetched.id == devbox.id and fetched.status == "running"

# execute_sync (deprecated in the client, still part of the API)
r = client.devboxes.execute_sync(devbox.id, command="echo $GREETING; cat launch.txt; echo err >&2; exit 3")
assert r.devbox_id == devbox.id
assert r.exit_status == 3, r
assert r.stdout == "hello\nlaunched\n", r
assert r.stderr == "err\n", r

# execute_and_await_completion (execute + wait_for_status)
done = client.devboxes.execute_and_await_completion(devbox.id, command="seq 1 5")
assert done.status == "completed" and done.exit_status == 0, done
assert done.stdout == "1\n2\n3\n4\n5\n", done

# files: text and binary, relative and absolute paths
client.devboxes.write_file_contents(devbox.id, file_path="notes/a.txt", contents="text ✓\n")
assert client.devboxes.read_file_contents(devbox.id, file_path="notes/a.txt") == "text ✓\n"
assert client.devboxes.read_file_contents(devbox.id, file_path="/home/user/notes/a.txt") == "text ✓\n"
blob = bytes(range(256)) * 4096
client.devboxes.upload_file(devbox.id, path="data/blob.bin", file=("blob.bin", io.BytesIO(blob)))
got = client.devboxes.download_file(devbox.id, path="data/blob.bin")
assert got.read() == blob
r = client.devboxes.execute_sync(devbox.id, command="sha256sum data/blob.bin | cut -c1-16; stat -c %s data/blob.bin")
assert r.stdout.split()[1] == str(len(blob)), r

# execute_async + poll, streaming, kill
ex = client.devboxes.execute_async(devbox.id, command="for i in 1 2 3; do echo line $i; sleep 0.2; done")
assert ex.status in ("queued", "running"), ex
lines = "".join(chunk.output for chunk in client.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=devbox.id))
assert lines == "line 1\nline 2\nline 3\n", lines
deadline = time.time() + 30
while True:
    cur = client.devboxes.executions.retrieve(ex.execution_id, devbox_id=devbox.id)
    if cur.status == "completed":
        break
    assert time.time() < deadline
    time.sleep(0.05)
assert cur.exit_status == 0 and cur.stdout == lines, cur

long = client.devboxes.execute_async(devbox.id, command="sleep 300")
client.devboxes.executions.kill(long.execution_id, devbox_id=devbox.id)
killed = client.devboxes.executions.retrieve(long.execution_id, devbox_id=devbox.id)
assert killed.status == "completed" and killed.exit_status != 0, killed
r = client.devboxes.execute_sync(devbox.id, command="pgrep -c sleep || true")
assert r.stdout.strip() == "0", f"the killed command's process is gone: {r}"

client.devboxes.keep_alive(devbox.id)

# The client's own long-poll helpers, with their default (float) timeouts: `await_running`
# and `executions.await_completed` send `"timeout_seconds": 30.0` / `25.0` (or what remains
# of their overall timeout, fractions and all).
second = client.devboxes.create(
    name="client-check-await",
    # Numbers the client types as int, sent as floats: integral ones are taken as whole.
    launch_parameters={"keep_alive_time_seconds": 600.0, "custom_cpu_cores": 1.5},
)
running = client.devboxes.await_running(second.id)
assert running.id == second.id and running.status == "running", running
assert running.launch_parameters.keep_alive_time_seconds == 600, running.launch_parameters
slow = client.devboxes.execute_async(second.id, command="sleep 1; echo slow done")
completed = client.devboxes.executions.await_completed(slow.execution_id, devbox_id=second.id)
assert completed.status == "completed" and completed.exit_status == 0, completed
assert completed.stdout == "slow done\n", completed
# Already completed: answered at once.
again = client.devboxes.executions.await_completed(slow.execution_id, devbox_id=second.id)
assert again.status == "completed", again
# An overall timeout with a fraction reaches the server as one.
quick = client.devboxes.await_running(second.id, polling_config=PollingConfig(timeout_seconds=2.5))
assert quick.status == "running", quick
client.devboxes.shutdown(second.id)

# shutdown, then list
client.devboxes.shutdown(devbox.id)
after = client.devboxes.retrieve(devbox.id)
assert after.status == "shutdown" and after.shutdown_reason == "api_shutdown", after
assert after.end_time_ms is not None
first_page = client.devboxes.list(limit=1)
assert len(first_page.devboxes) == 1 and first_page.has_more, first_page
# A limit sent as a float (the query reads `limit=1.0`) is the whole number it is.
assert len(client.devboxes.list(limit=1.0).devboxes) == 1
listed = [d.id for d in client.devboxes.list(status="shutdown")]
assert devbox.id in listed, listed
all_ids = [d.id for d in client.devboxes.list(limit=1)]  # auto-pagination over pages of one
assert devbox.id in list(d.id for d in client.devboxes.list(limit=1)), all_ids
print("runloop_api_client: all devbox calls worked")
