"""A devbox living on another node of the cluster, driven through this node with Runloop's own
Python client, unchanged.

Run by tests/cluster.rs with OPENLOOP_URL (a node the devbox does not live on),
OPENLOOP_API_KEY and DEVBOX_ID set. Every call below is forwarded to the devbox's node; the
client sees one Openloop. Exits non-zero when any call does not work as the client expects.
"""

import io
import os

from runloop_api_client import Runloop

client = Runloop(bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"])
box_id = os.environ["DEVBOX_ID"]

box = client.devboxes.await_running(box_id)
assert box.status == "running", box

r = client.devboxes.execute_sync(box_id, command="echo from-$(hostname -s 2>/dev/null || echo box)")
assert r.exit_status == 0 and r.stdout.startswith("from-"), r

client.devboxes.write_file_contents(box_id, file_path="cluster/a.txt", contents="across nodes ✓\n")
assert client.devboxes.read_file_contents(box_id, file_path="cluster/a.txt") == "across nodes ✓\n"

blob = bytes(range(256)) * 4096
client.devboxes.upload_file(box_id, path="cluster/blob.bin", file=("blob.bin", io.BytesIO(blob)))
assert client.devboxes.download_file(box_id, path="cluster/blob.bin").read() == blob

ex = client.devboxes.execute_async(box_id, command="sleep 0.5; echo done async")
done = client.devboxes.executions.await_completed(ex.execution_id, devbox_id=box_id)
assert done.status == "completed" and done.stdout == "done async\n", done

client.devboxes.shutdown(box_id)
after = client.devboxes.retrieve(box_id)
assert after.status == "shutdown", after
print("CLUSTER DEVBOX OK")
