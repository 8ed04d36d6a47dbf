"""Suspend/resume and disk snapshots, driven with Runloop's own Python client, unchanged.

Run by tests/devbox_disks.rs with OPENLOOP_URL and OPENLOOP_API_KEY set. Exits non-zero
(an AssertionError or a client exception) when any call does not work as the client expects.
Uses the client's own waits (`await_suspended`, `await_running`, `disk_snapshots.await_completed`)
with float timeouts.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import runloop_api_client
from runloop_api_client import Runloop
from runloop_api_client.lib.polling import PollingConfig

client = Runloop(bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"])
# The client retries a 409 by default; the calls expected to be refused use this one.
strict = client.with_options(max_retries=0)
wait = PollingConfig(interval_seconds=0.25, timeout_seconds=90.5)


def sh(devbox_id, command):
    r = client.devboxes.execute_sync(devbox_id, command=command)
    assert r.exit_status == 0, (command, r)
    return r.stdout


def conflict(call, needle):
    """`call` (made with `strict`, so a 409 is not retried) answers 409 mentioning `needle`."""
    try:
        call()
    except runloop_api_client.ConflictError as e:
        assert needle in str(e), e
        return
    raise AssertionError(f"expected a 409 mentioning {needle!r}")


# ------------------------------------------------------------------ suspend and resume
box = client.devboxes.create_and_await_running(
    name="disk-check",
    environment_variables={"GREETING": "hi"},
    launch_parameters={"launch_commands": ["echo launched >> /home/user/launches.txt"]},
    entrypoint="sleep 1000",
)
client.devboxes.write_file_contents(box.id, file_path="keep/data.txt", contents="kept\n")
digest = sh(box.id, "head -c 5242880 /dev/urandom > big.bin && sha256sum big.bin | cut -d' ' -f1").strip()
running_cmd = client.devboxes.execute_async(box.id, command="sleep 300")

view = client.devboxes.suspend(box.id)
assert view.status in ("suspending", "suspended"), view
view = client.devboxes.await_suspended(box.id, polling_config=wait)
assert view.status == "suspended", view
ended = client.devboxes.executions.retrieve(running_cmd.execution_id, devbox_id=box.id)
assert ended.status == "completed" and ended.exit_status != 0, f"the running command was killed: {ended}"
conflict(lambda: strict.devboxes.execute_sync(box.id, command="true"), "resume it first")
conflict(lambda: strict.devboxes.suspend(box.id), "only a running devbox")

view = client.devboxes.resume(box.id)
assert view.status in ("resuming", "running"), view
view = client.devboxes.await_running(box.id, polling_config=wait)
assert view.status == "running", view
statuses = [t.status for t in view.state_transitions]
assert statuses[-4:] == ["suspending", "suspended", "resuming", "running"], statuses
out = sh(box.id, "cat keep/data.txt; sha256sum big.bin | cut -d' ' -f1; echo $GREETING; wc -l < launches.txt; pgrep -xc sleep")
assert out == f"kept\n{digest}\nhi\n2\n1\n", f"files, environment, launch commands, entrypoint (only) after resume: {out!r}"
conflict(lambda: strict.devboxes.resume(box.id), "only a suspended devbox")

# ------------------------------------------------------------------ disk snapshots
snap = client.devboxes.snapshot_disk(
    box.id, name="first", commit_message="with data", metadata={"purpose": "check", "team": "a"}
)
assert snap.source_devbox_id == box.id and snap.name == "first", snap
assert snap.commit_message == "with data" and snap.metadata == {"purpose": "check", "team": "a"}, snap
assert snap.size_bytes >= 5 * 1024 * 1024, snap
st = client.devboxes.disk_snapshots.query_status(snap.id)
assert st.status == "complete" and st.snapshot.id == snap.id, st
# The devbox goes on after its snapshot (it was only paused for the copy).
assert sh(box.id, "echo after >> keep/data.txt; cat keep/data.txt") == "kept\nafter\n"

later = client.devboxes.snapshot_disk_async(box.id, name="second", metadata={"purpose": "check", "team": "b"})
assert later.id != snap.id and later.source_devbox_id == box.id, later
done = client.devboxes.disk_snapshots.await_completed(later.id, polling_config=wait)
assert done.status == "complete" and done.snapshot.size_bytes >= snap.size_bytes, done

page = client.devboxes.disk_snapshots.list(devbox_id=box.id, limit=1)
assert [s.id for s in page.snapshots] == [later.id] and page.has_more and page.total_count == 2, page
assert [s.id for s in client.devboxes.disk_snapshots.list(devbox_id=box.id, limit=1)] == [later.id, snap.id]
assert [s.id for s in client.devboxes.list_disk_snapshots(devbox_id=box.id)] == [later.id, snap.id]
team_a = client.devboxes.disk_snapshots.list(extra_query={"metadata[team]": "a"})
assert [s.id for s in team_a.snapshots] == [snap.id] and team_a.total_count == 1, team_a
either = client.devboxes.disk_snapshots.list(extra_query={"metadata[team][in]": "b,a"})
assert [s.id for s in either.snapshots] == [later.id, snap.id], either
assert client.devboxes.disk_snapshots.list(metadata_key="nothing-has-key").snapshots == []
assert client.devboxes.disk_snapshots.list(include_total_count=False).total_count is None
assert client.devboxes.disk_snapshots.list(source_blueprint_id="bpt_none").snapshots == []

renamed = client.devboxes.disk_snapshots.update(snap.id, name="renamed", metadata={"team": "c"})
assert renamed.name == "renamed" and renamed.metadata == {"team": "c"}, renamed
assert renamed.commit_message == "with data", "fields left out stay"

# Two devboxes from one snapshot at once: they share it, each writes only its own layer.
with ThreadPoolExecutor(2) as pool:
    kids = list(
        pool.map(
            lambda i: client.devboxes.create_and_await_running(snapshot_id=snap.id, name=f"from-snapshot-{i}"),
            range(2),
        )
    )
for kid in kids:
    assert kid.snapshot_id == snap.id, kid
    out = sh(kid.id, "cat keep/data.txt; sha256sum big.bin | cut -d' ' -f1; wc -l < launches.txt")
    assert out == f"kept\n{digest}\n2\n", f"the snapshot's files (as at the first snapshot): {out!r}"
sh(kids[0].id, "echo changed > keep/data.txt && rm big.bin")
assert sh(kids[1].id, "cat keep/data.txt; test -f big.bin && echo still") == "kept\nstill\n"
assert sh(box.id, "cat keep/data.txt") == "kept\nafter\n"

# A devbox started from a snapshot, snapshotted in turn: its changes over its snapshot,
# deletions included.
grandchild_snap = client.devboxes.snapshot_disk(kids[0].id, name="of-a-child")
grandchild = client.devboxes.create_and_await_running(snapshot_id=grandchild_snap.id)
assert sh(grandchild.id, "cat keep/data.txt; test -e big.bin || echo deleted") == "changed\ndeleted\n"

# Suspend and resume a devbox started from a snapshot; snapshot it while suspended.
client.devboxes.suspend(kids[1].id)
client.devboxes.await_suspended(kids[1].id, polling_config=wait)
suspended_snap = client.devboxes.snapshot_disk(kids[1].id, name="while-suspended")
assert suspended_snap.size_bytes >= 5 * 1024 * 1024, suspended_snap
client.devboxes.resume(kids[1].id)
client.devboxes.await_running(kids[1].id, polling_config=wait)
assert sh(kids[1].id, "cat keep/data.txt; wc -l < launches.txt") == "kept\n2\n"

# A snapshot in use cannot be deleted (409); once its devboxes are shut down it can.
conflict(lambda: strict.devboxes.disk_snapshots.delete(snap.id), "in use")
for kid in kids:
    client.devboxes.shutdown(kid.id)
client.devboxes.disk_snapshots.delete(snap.id)
assert client.devboxes.disk_snapshots.query_status(snap.id).status == "deleted"
assert snap.id not in [s.id for s in client.devboxes.disk_snapshots.list()]
try:
    client.devboxes.create(snapshot_id=snap.id)
    raise AssertionError("a deleted snapshot cannot be started from")
except runloop_api_client.NotFoundError:
    pass

# Shutting down a suspended devbox frees it for good.
client.devboxes.suspend(grandchild.id)
gone = client.devboxes.shutdown(grandchild.id)
assert gone.status == "shutdown", gone
conflict(lambda: strict.devboxes.resume(grandchild.id), "only a suspended devbox")

# ------------------------------------------------------------------ idle policy
idle = client.devboxes.create_and_await_running(
    launch_parameters={"after_idle": {"idle_time_seconds": 1, "on_idle": "suspend"}}
)
client.devboxes.write_file_contents(idle.id, file_path="idle.txt", contents="still here\n")
view = client.devboxes.await_suspended(idle.id, polling_config=wait)
assert view.status == "suspended" and view.shutdown_reason is None, view
client.devboxes.resume(idle.id)
assert sh(idle.id, "cat idle.txt") == "still here\n"
idle_off = client.devboxes.create_and_await_running(
    launch_parameters={"lifecycle": {"after_idle": {"idle_time_seconds": 1.5, "on_idle": "shutdown"}}}
)
try:
    client.devboxes.await_suspended(idle_off.id, polling_config=wait)
    raise AssertionError("an idle devbox set to shut down does not suspend")
except runloop_api_client.RunloopError as e:
    assert "shutdown" in str(e), e
assert client.devboxes.retrieve(idle_off.id).shutdown_reason == "idle"

for d in (box.id, idle.id):
    client.devboxes.shutdown(d)
print("all disk calls worked")
