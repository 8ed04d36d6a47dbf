"""Drive Openloop's /v1/secrets and devbox secrets with Runloop's own Python client, unchanged.

Run by tests/secrets.rs with OPENLOOP_URL, OPENLOOP_API_KEY and SECRET_VALUE set. Leaves the
secrets `agent_token` (= SECRET_VALUE) and `other_secret` behind for the test to go on with.
Exits non-zero (an AssertionError or a client exception) when any call does not work as the
client expects, or when any response holds a secret's value.
"""

import hashlib
import os
import time

import runloop_api_client
from runloop_api_client import Runloop

client = Runloop(
    bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"]
)
value = os.environ["SECRET_VALUE"]
first_value = "first-" + value[::-1]
other_value = "other-" + value


def call(method, *args, **kwargs):
    """Call a `with_raw_response` method; check that no value is in the body; parse it."""
    resp = method(*args, **kwargs)
    text = resp.http_response.text
    for v in (value, first_value, other_value):
        assert v not in text, f"a secret value came back: {text}"
    return resp.parse()


raw = client.secrets.with_raw_response

# create: SecretView without the value
created = call(raw.create, name="agent_token", value=first_value)
assert created.name == "agent_token", created
assert (
    created.id
    and created.create_time_ms > 0
    and created.update_time_ms == created.create_time_ms
), created
assert set(created.model_dump()) == {
    "id",
    "name",
    "create_time_ms",
    "update_time_ms",
}, created
other = call(raw.create, name="other_secret", value=other_value)

# a second create with the same name is refused
try:
    client.secrets.create(name="agent_token", value="again")
    raise AssertionError("a duplicate name was accepted")
except runloop_api_client.ConflictError as e:
    assert "agent_token" in str(e), e

# a name that is not an environment variable name is refused
try:
    client.secrets.create(name="not-valid", value="x")
    raise AssertionError("an invalid name was accepted")
except runloop_api_client.BadRequestError:
    pass

# retrieve, by name and by id
got = call(raw.retrieve, "agent_token")
assert got.id == created.id and got.name == "agent_token", got
got = call(raw.retrieve_by_id, other.id)
assert got.name == "other_secret", got

# list: pages, has_more, total_count; newest first
page = call(raw.list, limit=1)
assert len(page.secrets) == 1 and page.has_more and page.total_count == 2, page
assert page.secrets[0].name == "other_secret", page
full = call(raw.list)
assert [s.name for s in full.secrets] == [
    "other_secret",
    "agent_token",
] and not full.has_more, full

# update by name: new value, update time moves, value never returned
time.sleep(0.01)
updated = call(raw.update, "agent_token", value=value)
assert updated.id == created.id and updated.update_time_ms > created.update_time_ms, (
    updated
)
assert updated.create_time_ms == created.create_time_ms, updated

# update by id, delete by name and by id
temp = call(raw.create, name="temp_secret", value="temporary-value")
call(raw.update_by_id, temp.id, value="temporary-value-2")
gone = call(raw.delete, "temp_secret")
assert gone.id == temp.id and gone.name == "temp_secret", gone
try:
    client.secrets.retrieve("temp_secret")
    raise AssertionError("a deleted secret was found")
except runloop_api_client.NotFoundError:
    pass
temp = call(raw.create, name="temp_secret", value="temporary-value")
assert call(raw.delete_by_id, temp.id).name == "temp_secret"
try:
    client.secrets.delete("temp_secret")
    raise AssertionError("a deleted secret was deleted again")
except runloop_api_client.NotFoundError:
    pass

# a devbox with secrets: the value is the variable's, and its output is redacted
devbox = client.devboxes.create_and_await_running(secrets={"MY_SECRET": "agent_token"})
assert devbox.status == "running", devbox
r = client.devboxes.execute_sync(
    devbox.id,
    command='printf %s "$MY_SECRET" | sha256sum | cut -c1-64; echo "got $MY_SECRET"; echo "$MY_SECRET" >&2',
)
assert r.exit_status == 0, r
digest, echoed = r.stdout.splitlines()
assert digest == hashlib.sha256(value.encode()).hexdigest(), (
    "the devbox has the secret's value"
)
assert echoed == "got [REDACTED:agent_token]", r
assert r.stderr == "[REDACTED:agent_token]\n", r

# streamed output, the value split across writes: still redacted
ex = client.devboxes.execute_async(
    devbox.id,
    command='printf "a%s" "${MY_SECRET:0:5}"; sleep 0.3; printf "%s b\\n" "${MY_SECRET:5}"',
)
streamed = "".join(
    c.output
    for c in client.devboxes.executions.stream_stdout_updates(
        ex.execution_id, devbox_id=devbox.id
    )
)
assert streamed == "a[REDACTED:agent_token] b\n", streamed
done = client.devboxes.executions.retrieve(ex.execution_id, devbox_id=devbox.id)
assert done.stdout == streamed, done
client.devboxes.shutdown(devbox.id)

# an unknown secret name: refused, naming it
try:
    client.devboxes.create(secrets={"X": "no_such_secret"})
    raise AssertionError("a devbox was created with an unknown secret")
except runloop_api_client.NotFoundError as e:
    assert "no_such_secret" in str(e), e

print("all secret calls worked")
