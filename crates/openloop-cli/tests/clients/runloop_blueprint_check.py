"""Blueprints, driven with Runloop's own Python client, unchanged.

Run by tests/devbox_blueprints.rs with OPENLOOP_URL and OPENLOOP_API_KEY set. Exits non-zero
(an AssertionError or a client exception) when any call does not work as the client expects.
Uses the client's own wait (`blueprints.await_build_complete`, `create_and_await_build_complete`)
with float timeouts. Prints `first build: X s`, `cached build: Y s` and the ids the Rust side
checks further.
"""

import os
import time
import warnings

# `preview` and `execute_sync` are deprecated in the client, still sent as they are.
warnings.simplefilter("ignore", DeprecationWarning)

import runloop_api_client
from runloop_api_client import Runloop
from runloop_api_client.lib.polling import PollingConfig

client = Runloop(bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"])
# The client retries a 409 by default; the calls expected to be refused use this one.
strict = client.with_options(max_retries=0)
wait = PollingConfig(interval_seconds=0.2, timeout_seconds=240.5)


def sh(devbox_id, command):
    r = client.devboxes.execute_sync(devbox_id, command=command)
    assert r.exit_status == 0, (command, r)
    return r.stdout


def refused(error, call, needle):
    """`call` (made with `strict`) fails with `error` mentioning `needle`."""
    try:
        call()
    except error as e:
        assert needle in str(e), e
        return
    raise AssertionError(f"expected {error.__name__} mentioning {needle!r}")


DOCKERFILE = """\
# the base image, then everything a blueprint may do
FROM openloop-base
ARG GREETING=hello
ENV APP_HOME=/opt/app MODE="blue print"
WORKDIR /opt/app
COPY app/ ./
COPY --chown=user notes.txt /home/user/notes.txt
RUN echo "$GREETING from $(id -un)" > built.txt && \\
    mkdir -p /usr/local/share/bp && touch /usr/local/share/bp/marker && \\
    echo visible-in-the-log
USER user
RUN id -un > /home/user/whoami-at-build.txt
"""
FILES = {
    "app/main.py": "print('hi from app')\n",
    "app/pkg/__init__.py": "VALUE = 7\n",
    "notes.txt": "notes\n",
    "/etc/bp-mounted.txt": "mounted\n",
}
BASE = dict(
    dockerfile=DOCKERFILE,
    file_mounts=FILES,
    build_args={"GREETING": "bonjour"},
    system_setup_commands=["echo setup-as-$(id -un) > /etc/setup.txt"],
    metadata={"team": "blue"},
)

# ------------------------------------------------------------------ preview
preview = client.blueprints.preview(name="bp-base", **BASE)
assert preview.dockerfile.startswith("# the base image"), preview
assert preview.dockerfile.endswith("whoami-at-build.txt\nUSER root\nRUN echo setup-as-$(id -un) > /etc/setup.txt\nUSER user\n"), preview
assert client.blueprints.preview(name="x", system_setup_commands=["true"]).dockerfile == "FROM openloop-base\nRUN true\n"

# ------------------------------------------------------------------ build, first and cached
t0 = time.monotonic()
bp = client.blueprints.create(name="bp-base", **BASE)
assert bp.status in ("queued", "building"), bp
assert bp.state == "created" and bp.parameters.name == "bp-base", bp
assert bp.parameters.dockerfile == DOCKERFILE, bp
bp = client.blueprints.await_build_complete(bp.id, polling_config=wait)
first = time.monotonic() - t0
assert bp.status == "build_complete" and bp.build_finish_time_ms >= bp.create_time_ms, bp
assert bp.metadata == {"team": "blue"}, bp
logs = client.blueprints.logs(bp.id)
assert logs.blueprint_id == bp.id
messages = [line.message for line in logs.logs]
assert "visible-in-the-log" in messages, messages
assert any(m.startswith("RUN echo") for m in messages), messages
assert all(line.level in ("info", "error") and line.timestamp_ms > 0 for line in logs.logs)
first_ms = bp.build_finish_time_ms - bp.create_time_ms
print(f"first build: {first:.2f} s with the client's polling, {first_ms} ms on the server")

t0 = time.monotonic()
again = client.blueprints.create_and_await_build_complete(name="bp-base-again", polling_config=wait, **BASE)
cached = time.monotonic() - t0
assert again.status == "build_complete" and again.id != bp.id, again
assert any("reused" in line.message for line in client.blueprints.logs(again.id).logs)
cached_ms = again.build_finish_time_ms - again.create_time_ms
print(f"cached build: {cached:.2f} s with the client's polling, {cached_ms} ms on the server")
assert cached_ms < first_ms, (cached_ms, first_ms)

# ------------------------------------------------------------------ devboxes from it
box = client.devboxes.create_and_await_running(blueprint_id=bp.id, environment_variables={"MINE": "1"})
assert box.blueprint_id == bp.id, box
out = sh(
    box.id,
    "pwd; cat built.txt main.py pkg/__init__.py /etc/setup.txt /etc/bp-mounted.txt; "
    "echo \"$MODE|$APP_HOME|$MINE\"; id -un; cat /home/user/whoami-at-build.txt; "
    "stat -c %U /home/user/notes.txt; test -f /usr/local/share/bp/marker && echo marker; "
    "touch /usr/local/share/bp/marker 2>/dev/null || echo not-mine",
)
assert out == (
    "/opt/app\nbonjour from root\nprint('hi from app')\nVALUE = 7\nsetup-as-root\nmounted\n"
    "blue print|/opt/app|1\nuser\nuser\nuser\nmarker\nnot-mine\n"
), out
# Its own writes go to its own disk; the layer is shared read-only.
sh(box.id, "echo changed > /home/user/notes.txt")
by_name = client.devboxes.create_and_await_running(blueprint_name="bp-base-again")
assert by_name.blueprint_id == again.id, by_name
assert sh(by_name.id, "cat built.txt /home/user/notes.txt") == "bonjour from root\nnotes\n"
# A snapshot of a devbox from a blueprint holds the blueprint's files too.
snap = client.devboxes.snapshot_disk(by_name.id, name="from-blueprint")
from_snap = client.devboxes.create_and_await_running(snapshot_id=snap.id)
assert sh(from_snap.id, "cat /opt/app/built.txt /home/user/notes.txt") == "bonjour from root\nnotes\n"
client.devboxes.shutdown(from_snap.id)
print(f"devbox ids: {box.id} {by_name.id}")

# ------------------------------------------------------------------ stacking
child = client.blueprints.create_and_await_build_complete(
    name="bp-child",
    dockerfile="FROM bp-base\nENV CHILD=yes\nRUN cat built.txt > child.txt\n",
    polling_config=wait,
)
assert child.base_blueprint_id == bp.id, child
grand = client.blueprints.create_and_await_build_complete(
    name="bp-grandchild",
    base_blueprint_id=child.id,
    system_setup_commands=["echo third > /opt/app/third.txt"],
    polling_config=wait,
)
g = client.devboxes.create_and_await_running(blueprint_id=grand.id)
assert sh(g.id, "cat child.txt third.txt main.py; echo $MODE $CHILD") == (
    "bonjour from root\nthird\nprint('hi from app')\nblue print yes\n"
)
client.devboxes.shutdown(g.id)

# ------------------------------------------------------------------ pip install, offline
PKG = {
    "pkg/pyproject.toml": '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
    '[project]\nname = "bpdemo"\nversion = "1.0"\n',
    "pkg/bpdemo/__init__.py": "VALUE = 'installed offline'\n",
}
pip = client.blueprints.create_and_await_build_complete(
    name="bp-pip",
    dockerfile="FROM openloop-base\nCOPY pkg /ctx/pkg\n"
    "RUN pip install --break-system-packages --no-index --no-build-isolation /ctx/pkg\n",
    file_mounts=PKG,
    polling_config=wait,
)
p = client.devboxes.create_and_await_running(blueprint_id=pip.id)
assert sh(p.id, "cd /tmp && python3 -c 'import bpdemo; print(bpdemo.VALUE)'") == "installed offline\n"
client.devboxes.shutdown(p.id)

# ------------------------------------------------------------------ secrets: the build's only
client.secrets.create(name="BP_TOKEN", value="s3cr3t-build-value")
sec = client.blueprints.create_and_await_build_complete(
    name="bp-secret",
    dockerfile="FROM openloop-base\nRUN echo token=$TOKEN && test -n \"$TOKEN\"\n",
    secrets={"TOKEN": "BP_TOKEN"},
    polling_config=wait,
)
messages = [line.message for line in client.blueprints.logs(sec.id).logs]
assert "token=[REDACTED:BP_TOKEN]" in messages, messages
assert not any("s3cr3t-build-value" in m for m in messages), messages
s_box = client.devboxes.create_and_await_running(blueprint_id=sec.id)
assert sh(s_box.id, "echo \"[$TOKEN]\"") == "[]\n"
client.devboxes.shutdown(s_box.id)

# ------------------------------------------------------------------ a failing build
failing = client.blueprints.create(name="bp-fails", dockerfile="FROM openloop-base\nRUN echo about-to-fail && exit 3\n")
try:
    client.blueprints.await_build_complete(failing.id, polling_config=wait)
    raise AssertionError("a failing RUN must fail the build")
except runloop_api_client.RunloopError as e:
    assert "failed" in str(e), e
failing = client.blueprints.retrieve(failing.id)
assert failing.status == "failed" and failing.failure_reason == "build_failed", failing
messages = [line.message for line in client.blueprints.logs(failing.id).logs]
assert "about-to-fail" in messages, messages
assert any("exited with 3" in m for m in messages), messages
refused(runloop_api_client.ConflictError, lambda: strict.devboxes.create(blueprint_id=failing.id), "build_complete")
# A build that fills its disk says so (fallocate: no data written).
full = client.blueprints.create(
    name="bp-full",
    dockerfile="FROM openloop-base\n"
    "RUN fallocate -l $(( $(df --output=avail -B1 / | tail -1) - 8388608 )) /fill && fallocate -l 64M /more\n",
)
try:
    client.blueprints.await_build_complete(full.id, polling_config=wait)
    raise AssertionError("a full disk must fail the build")
except runloop_api_client.RunloopError:
    pass
full = client.blueprints.retrieve(full.id)
assert full.status == "failed" and full.failure_reason == "out_of_disk", full

# ------------------------------------------------------------------ what cannot build: 400
bad = runloop_api_client.BadRequestError
for kwargs, needle in [
    (dict(dockerfile="FROM openloop-base\nFROBNICATE now\n"), "unknown instruction `FROBNICATE`"),
    (dict(dockerfile="FROM no-such-blueprint\n"), "no built blueprint of yours"),
    (dict(dockerfile="FROM openloop-base\nCOPY missing.txt /x\n"), "not in the build context"),
    (dict(dockerfile="FROM openloop-base\nCOPY ../../etc/passwd /x\n"), "leaves the build context"),
    (dict(dockerfile="FROM openloop-base\nUSER nobody\n"), "does not exist in the image"),
    (dict(dockerfile="FROM openloop-base\n", base_blueprint_id=bp.id), "names its parent in FROM"),
    (dict(build_context={"type": "object", "object_id": "obj_1"}), "no object store"),
    (dict(file_mounts={"../escape": "x"}), "leaves the build context"),
]:
    refused(bad, lambda: strict.blueprints.create(name="bad", **kwargs), needle)
    refused(bad, lambda: strict.blueprints.preview(name="bad", **kwargs), needle)

# ------------------------------------------------------------------ list
page = client.blueprints.list(name="bp-base")
assert [b.id for b in page] == [bp.id], page
failed = client.blueprints.list(status="failed")
assert [b.id for b in failed] == [full.id, failing.id], failed
first_page = client.blueprints.list(limit=2)
assert len(first_page.blueprints) == 2 and first_page.has_more, first_page
assert client.blueprints.list_public().blueprints == []

# ------------------------------------------------------------------ delete
refused(runloop_api_client.ConflictError, lambda: strict.blueprints.delete(bp.id), "in use by 1 devbox")
client.devboxes.shutdown(box.id)
client.blueprints.delete(bp.id)
assert client.blueprints.retrieve(bp.id).state == "deleted"
refused(runloop_api_client.NotFoundError, lambda: strict.devboxes.create(blueprint_id=bp.id), "not found")
# The identical blueprint still has its layer.
assert sh(by_name.id, "cat built.txt") == "bonjour from root\n"
client.devboxes.shutdown(by_name.id)
check = client.devboxes.create_and_await_running(blueprint_id=again.id)
assert sh(check.id, "cat built.txt") == "bonjour from root\n"
client.devboxes.shutdown(check.id)

# ------------------------------------------------------------------ root devboxes
# Runloop's user_parameters: root of the devbox's own user namespace, confined as a build is.
ROOT = {"user_parameters": {"username": "root", "uid": 0}}
r = client.devboxes.create_and_await_running(launch_parameters=ROOT)
out = sh(r.id, "id -u; echo $HOME; pwd; echo evil > /usr/bin/evil && cat /usr/bin/evil; wc -l < /proc/self/uid_map")
assert out == "0\n/root\n/root\nevil\n2\n", out
for cmd in ["mount -t tmpfs none /mnt", "unshare -r true", "chroot / true", "ip link set lo down"]:
    assert client.devboxes.execute_sync(r.id, command=cmd).exit_status != 0, cmd
plain = client.devboxes.create_and_await_running(launch_parameters={"user_parameters": {"username": "user", "uid": 1000}})
assert client.devboxes.execute_sync(plain.id, command="test -e /usr/bin/evil").exit_status != 0
client.devboxes.shutdown(plain.id)
client.devboxes.suspend(r.id)
client.devboxes.await_suspended(r.id, polling_config=wait)
client.devboxes.resume(r.id)
client.devboxes.await_running(r.id, polling_config=wait)
assert sh(r.id, "id -u; cat /usr/bin/evil") == "0\nevil\n"
snap = client.devboxes.snapshot_disk(r.id, name="root-made")
u = client.devboxes.create_and_await_running(snapshot_id=snap.id)
assert sh(u.id, "cat /usr/bin/evil; id -u; (echo x >> /usr/bin/evil) 2>/dev/null || echo refused") == "evil\n1000\nrefused\n"
client.devboxes.shutdown(u.id)
client.devboxes.shutdown(r.id)
rb = client.blueprints.create_and_await_build_complete(
    name="bp-root", dockerfile="FROM openloop-base\nUSER root\n", polling_config=wait
)
rd = client.devboxes.create_and_await_running(blueprint_id=rb.id)
assert sh(rd.id, "id -u; pwd") == "0\n/root\n"
client.devboxes.shutdown(rd.id)
refused(
    bad,
    lambda: strict.devboxes.create(launch_parameters={"user_parameters": {"username": "admin", "uid": 0}}),
    "user_parameters",
)
print(f"root snapshot: {snap.id}")

print(f"kept blueprint: {again.id}")
print("all blueprint calls worked")
