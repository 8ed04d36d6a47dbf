"""Drive Openloop's devbox tunnels with Runloop's own Python client, unchanged.

Run by tests/devbox_runtime.rs with OPENLOOP_URL and OPENLOOP_API_KEY set. Tunnel URLs are
`http://{port}-{tunnel_key}.tunnel.localhost:{server port}/`; `*.localhost` need not resolve
here, so requests go to the server's loopback address with that Host header. Exits non-zero
when something does not work as a client of Runloop's tunnels expects.
"""

import base64
import json
import os
import pathlib
import socket
import time
import urllib.parse

import httpx
import runloop_api_client
from runloop_api_client import Runloop

URL = os.environ["OPENLOOP_URL"]
# No retries: a status the client would retry (409, 5xx) must show at once.
client = Runloop(bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=URL, max_retries=0)
SERVER = urllib.parse.urlparse(URL)
PORT = SERVER.port
HTTP = httpx.Client(timeout=30)


def host(port, key):
    return f"{port}-{key}.tunnel.localhost:{PORT}"


def through(port, key, path="/", method="GET", headers=None, **kw):
    h = {"Host": host(port, key), **(headers or {})}
    return HTTP.request(method, f"http://127.0.0.1:{PORT}{path}", headers=h, **kw)


def error_of(resp):
    return resp.json()["error"]["message"]


def wait_listening(port, key, headers=None):
    """Until the server started inside the devbox answers (502 while nothing listens)."""
    deadline = time.time() + 20
    while True:
        r = through(port, key, "/headers", headers=headers)
        if r.status_code != 502:
            return r
        assert time.time() < deadline, f"port {port} never listened: {r.text}"
        time.sleep(0.05)


def expect(status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except runloop_api_client.APIStatusError as e:
        assert e.status_code == status, (e.status_code, e)
        return e
    raise AssertionError(f"{fn.__name__} succeeded; expected {status}")


# A tunnel asked for at creation, open by default.
devbox = client.devboxes.create_and_await_running(tunnel={"http_keep_alive": True})
assert devbox.status == "running", devbox
t = devbox.tunnel
assert t is not None and t.auth_mode == "open" and t.auth_token is None, t
assert len(t.tunnel_key) == 32 and int(t.tunnel_key, 16) >= 0, t.tunnel_key
assert t.http_keep_alive is True and t.wake_on_http is False and t.create_time_ms > 0, t
key = t.tunnel_key
assert client.devboxes.retrieve(devbox.id).tunnel.tunnel_key == key

# Nothing listens yet: 502 that says so.
r = through(8081, key, "/headers")
assert r.status_code == 502, (r.status_code, r.text)
assert "nothing is listening on port 8081" in error_of(r), r.text

# A web server inside the devbox (python3 is in the base image), reached through the tunnel.
server_py = (pathlib.Path(__file__).parent / "devbox_echo_server.py").read_text()
client.devboxes.write_file_contents(devbox.id, file_path="/home/user/echo.py", contents=server_py)
client.devboxes.execute_async(devbox.id, command="python3 /home/user/echo.py 8081")
client.devboxes.execute_async(
    devbox.id,
    command="mkdir -p site && echo hello-from-the-devbox > site/index.html && cd site && python3 -m http.server 8080 --bind 127.0.0.1",
)
seen = wait_listening(8081, key)
assert seen.status_code == 200, seen.text
headers = seen.json()
# The devbox sees a sensible Host, the original one beside it.
assert headers["host"] == "localhost:8081", headers
assert headers["x-forwarded-host"] == host(8081, key), headers

r = wait_listening(8080, key)
r = through(8080, key, "/index.html")
assert r.status_code == 200 and r.text == "hello-from-the-devbox\n", (r.status_code, r.text)
# Host names are case-insensitive.
r = HTTP.get(f"http://127.0.0.1:{PORT}/index.html", headers={"Host": host(8080, key).upper()})
assert r.status_code == 200, r.text

# A body of 3 MiB goes in and comes back intact.
blob = os.urandom(3 << 20)
r = through(8081, key, "/echo", method="POST", content=blob)
assert r.status_code == 200 and r.content == blob, (r.status_code, len(r.content))

# A WebSocket through the tunnel.
sock = socket.create_connection(("127.0.0.1", PORT), timeout=10)
ws_key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(
    (
        f"GET /ws HTTP/1.1\r\nHost: {host(8081, key)}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
)
head = b""
while b"\r\n\r\n" not in head:
    chunk = sock.recv(4096)
    assert chunk, head
    head += chunk
assert head.startswith(b"HTTP/1.1 101"), head
head, rest = head.split(b"\r\n\r\n", 1)


def ws_roundtrip(text, rest):
    data = text.encode()
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
    while len(rest) < 2 or len(rest) < 2 + rest[1]:
        chunk = sock.recv(4096)
        assert chunk, rest
        rest += chunk
    n = rest[1]
    assert rest[0] == 0x81, rest
    return rest[2 : 2 + n].decode(), rest[2 + n :]


for word in ("one", "two"):
    got, rest = ws_roundtrip(word, rest)
    assert got == f"echo:{word}", got

# A tunnel reaches only its own devbox: a server on another devbox's port is not behind it.
# (Both devboxes have no network at all; the agent connects inside the devbox.)
other = client.devboxes.create_and_await_running()
client.devboxes.write_file_contents(other.id, file_path="/home/user/echo.py", contents=server_py)
client.devboxes.execute_async(other.id, command="python3 /home/user/echo.py 8082")
other_tunnel = client.devboxes.enable_tunnel(other.id)
wait_listening(8082, other_tunnel.tunnel_key)
r = through(8082, key, "/headers")
assert r.status_code == 502 and "nothing is listening on port 8082" in error_of(r), r.text
client.devboxes.shutdown(other.id)
r = through(8082, other_tunnel.tunnel_key, "/headers")
assert r.status_code == 404, r.text

# Bad input: unknown key, malformed host name, ports that are not ports.
r = through(8080, "0" * 32)
assert r.status_code == 404 and "no tunnel named" in error_of(r), r.text
r = HTTP.get(f"http://127.0.0.1:{PORT}/", headers={"Host": f"nokey.tunnel.localhost:{PORT}"})
assert r.status_code == 404, r.text
for port in ("0", "65536", "99999", "http"):
    r = through(port, key)
    assert r.status_code == 400 and "is not a port" in error_of(r), (port, r.text)
# The API still answers on its own host name.
assert HTTP.get(f"{URL}/health").status_code == 200

# One tunnel per devbox: the same settings answer the same tunnel, others conflict.
again = client.devboxes.enable_tunnel(devbox.id, http_keep_alive=True)
assert again.tunnel_key == key, again
expect(409, client.devboxes.enable_tunnel, devbox.id, auth_mode="authenticated")
expect(409, client.devboxes.enable_tunnel, devbox.id, wake_on_http=True)
expect(404, client.devboxes.enable_tunnel, "dbx_does_not_exist")

# Removing it: its URL answers 404 at once, and the WebSocket still open through it is cut.
client.devboxes.remove_tunnel(devbox.id)
r = through(8080, key, "/index.html")
assert r.status_code == 404, r.text
sock.settimeout(10)
assert sock.recv(100) == b"", "the WebSocket outlived its tunnel"
sock.close()
assert client.devboxes.retrieve(devbox.id).tunnel is None
expect(404, client.devboxes.remove_tunnel, devbox.id)
expect(404, client.devboxes.remove_tunnel, "dbx_does_not_exist")

# An authenticated tunnel: only its token passes, and the devbox never sees it.
auth = client.devboxes.enable_tunnel(devbox.id, auth_mode="authenticated")
assert auth.auth_mode == "authenticated" and auth.auth_token and auth.tunnel_key != key, auth
akey = auth.tunnel_key
r = through(8080, akey, "/index.html")
assert r.status_code == 401 and "X-Runloop-Tunnel-Authorization" in error_of(r), r.text
bad = {"X-Runloop-Tunnel-Authorization": "Bearer " + "f" * len(auth.auth_token)}
r = through(8080, akey, "/index.html", headers=bad)
assert r.status_code == 401, r.text
# A bad token reaches nothing, not even the port check.
r = through("0", akey, headers=bad)
assert r.status_code == 401, r.text
good = {"X-Runloop-Tunnel-Authorization": f"Bearer {auth.auth_token}"}
r = through(8080, akey, "/index.html", headers=good)
assert r.status_code == 200 and r.text == "hello-from-the-devbox\n", r.text
seen = through(8081, akey, "/headers", headers=good).json()
assert "x-runloop-tunnel-authorization" not in seen, seen
assert client.devboxes.retrieve(devbox.id).tunnel.auth_token == auth.auth_token

# Shutting the devbox down: 404 at once.
client.devboxes.shutdown(devbox.id)
r = through(8080, akey, "/index.html", headers=good)
assert r.status_code == 404, r.text
assert client.devboxes.retrieve(devbox.id).tunnel is None
expect(409, client.devboxes.enable_tunnel, devbox.id)

# wake_on_http: a request through the tunnel of a suspended devbox resumes it, and its
# entrypoint starts the server again; the request is answered once the server listens.
sleeper = client.devboxes.create_and_await_running(
    entrypoint=(
        "mkdir -p /home/user/site && cd /home/user/site && echo awake > index.html"
        " && exec python3 -m http.server 8080 --bind 127.0.0.1"
    ),
    tunnel={"wake_on_http": True},
)
assert sleeper.tunnel.wake_on_http is True, sleeper.tunnel
wkey = sleeper.tunnel.tunnel_key
wait_listening(8080, wkey)
client.devboxes.suspend(sleeper.id)
assert client.devboxes.await_suspended(sleeper.id).status == "suspended"
r = through(8080, wkey, "/index.html")
assert r.status_code == 200 and r.text == "awake\n", (r.status_code, r.text)
assert client.devboxes.retrieve(sleeper.id).status == "running"
client.devboxes.shutdown(sleeper.id)
r = through(8080, wkey, "/index.html")
assert r.status_code == 404, r.text

# Without wake_on_http a suspended devbox's tunnel does not wake it.
plain = client.devboxes.create_and_await_running(tunnel={"auth_mode": "open"})
client.devboxes.suspend(plain.id)
client.devboxes.await_suspended(plain.id)
r = through(8080, plain.tunnel.tunnel_key, "/")
assert r.status_code == 404 and "not running" in error_of(r), r.text
assert client.devboxes.retrieve(plain.id).status == "suspended"
client.devboxes.shutdown(plain.id)

print("tunnel check passed")
