"""The platform handle injected into functions that ask for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import ApiClient
    from ._devbox import Devbox


class SystemCoordinator:
    """Gives a running function access to devboxes and other platform tools.

    Devboxes created here belong to the current invocation and are shut down when it ends.
    """

    def __init__(self, client: ApiClient | None = None, invocation_id: str | None = None) -> None:
        if client is None:
            from ._client import ApiClient

            client = ApiClient()
        self._client = client
        self.invocation_id = invocation_id

    def create_devbox(
        self,
        env_vars: dict[str, str] | None = None,
        setup_commands: list[str] | None = None,
        entrypoint: str | None = None,
        name: str | None = None,
        network: bool = False,
    ) -> Devbox:
        """Start a new devbox and wait until it is running.

        ``network=True`` gives it outbound internet access (never the host's own services).
        """
        from ._devbox import Devbox

        body: dict[str, Any] = {
            "name": name,
            "environment_variables": env_vars or {},
            "entrypoint": entrypoint,
            "launch_parameters": {"launch_commands": setup_commands or []},
            "network": "outbound" if network else "none",
        }
        view = self._client.request("POST", "/v1/devboxes", body)
        return Devbox(self._client, view)

    def get_devbox(self, devbox_id: str) -> Devbox:
        from ._devbox import Devbox

        return Devbox(self._client, self._client.request("GET", f"/v1/devboxes/{devbox_id}"))
