"""Drive Openloop's /v1/network-policies with Runloop's own Python client, unchanged.

Run by tests/network.rs with OPENLOOP_URL and OPENLOOP_API_KEY set. Exits non-zero when a
call does not work as the client expects.
"""

import os

import runloop_api_client
from runloop_api_client import Runloop

client = Runloop(bearer_token=os.environ["OPENLOOP_API_KEY"], base_url=os.environ["OPENLOOP_URL"])

created = client.network_policies.create(
    name="lan-web",
    description="the LAN's web server",
    allowed_cidrs=[{"cidr": "192.168.77.0/24", "ports": [{"port": 80, "protocol": "TCP"}]}],
)
assert created.id and created.name == "lan-web", created
assert created.egress.allow_all is False
assert created.egress.allowed_cidrs[0].cidr == "192.168.77.0/24"
assert created.egress.allowed_cidrs[0].ports[0].port == 80
assert created.egress.allowed_cidrs[0].ports[0].protocol == "TCP"

got = client.network_policies.retrieve(created.id)
assert got.id == created.id and got.description == "the LAN's web server", got

updated = client.network_policies.update(created.id, allow_all=True, name="everything")
assert updated.name == "everything" and updated.egress.allow_all is True, updated
# As Runloop documents: allow_all implies devbox-to-devbox traffic.
assert updated.egress.allow_devbox_to_devbox is True, updated
assert updated.update_time_ms >= created.update_time_ms

other = client.network_policies.create(name="nothing")
assert other.egress.allowed_cidrs == [] and other.egress.allow_all is False

listed = [p.id for p in client.network_policies.list()]
assert created.id in listed and other.id in listed, listed
named = [p.id for p in client.network_policies.list(name="noth")]
assert named == [other.id], named

for bad in ("10.0.0.1/8", "300.1.1.1/32", "example.com"):
    try:
        client.network_policies.create(name="bad", allowed_cidrs=[{"cidr": bad}])
    except runloop_api_client.BadRequestError as e:
        assert "allowed_cidrs" in str(e), e
    else:
        raise AssertionError(f"{bad} was accepted")

deleted = client.network_policies.delete(other.id)
assert deleted.id == other.id
try:
    client.network_policies.retrieve(other.id)
except runloop_api_client.NotFoundError:
    pass
else:
    raise AssertionError("a deleted policy is still there")

# A devbox under a policy, created with the client's own parameter.
devbox = client.devboxes.create_and_await_running(
    launch_parameters={"network_policy_id": created.id}
)
assert devbox.status == "running", devbox
client.devboxes.shutdown(devbox.id)
print("all network policy calls worked")
