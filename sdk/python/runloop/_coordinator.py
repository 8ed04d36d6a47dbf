"""The platform handle injected into functions that ask for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import InvocationFailed

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
        secrets: dict[str, str] | None = None,
    ) -> Devbox:
        """Start a new devbox and wait until it is running.

        ``network=True`` gives it outbound internet access (never the host's own services).
        ``secrets`` maps environment variables to secret names (``/v1/secrets``); a run may
        only pass on the secrets its deployment names in ``runloop.toml``.
        """
        from ._devbox import Devbox

        body: dict[str, Any] = {
            "name": name,
            "environment_variables": env_vars or {},
            "entrypoint": entrypoint,
            "launch_parameters": {"launch_commands": setup_commands or []},
            "network": "outbound" if network else "none",
            "secrets": secrets or {},
        }
        view = self._client.request("POST", "/v1/devboxes", body)
        return Devbox(self._client, view)

    def invoke(self, project: str, function: str, request: dict[str, Any]) -> Any:
        """Run another deployed function and return its result.

        The new invocation is recorded with this one as its parent; while this call waits,
        the new run may use this run's slot. A failed run raises
        :class:`runloop.InvocationFailed` carrying the remote error; invoking past the server's
        call-depth limit raises :class:`runloop.CallDepthExceeded`.
        """
        view = self._client.request(
            "POST", f"/v1/functions/{project}/{function}/invoke_sync", {"request": request}
        )
        if view["status"] != "success":
            raise InvocationFailed(view)
        return view["result"]

    async def ainvoke(self, project: str, function: str, request: dict[str, Any]) -> Any:
        """:meth:`invoke` for ``async def`` functions: awaits without blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.invoke, project, function, request)

    def invoke_async(self, project: str, function: str, request: dict[str, Any]) -> str:
        """Queue another function's run and return its invocation id at once."""
        view = self._client.request(
            "POST", f"/v1/functions/{project}/{function}/invoke_async", {"request": request}
        )
        return str(view["id"])

    def get_invocation(self, invocation_id: str) -> dict[str, Any]:
        """The current state of an invocation this run started (status, result, error).

        Polling this keeps the run's slot; :meth:`wait` lends it to the runs it waits on.
        """
        view: dict[str, Any] = self._client.request(
            "GET", f"/v1/functions/invocations/{invocation_id}"
        )
        return view

    def wait(self, invocation_id: str) -> Any:
        """Wait for an invocation this run started (see :meth:`invoke_async`); return its result.

        While it waits, this run's slot is lent to the runs it waits on. A failed run raises
        :class:`runloop.InvocationFailed`.
        """
        view = self._client.request("POST", f"/v1/functions/invocations/{invocation_id}/wait")
        if view["status"] != "success":
            raise InvocationFailed(view)
        return view["result"]

    async def await_result(self, invocation_id: str) -> Any:
        """:meth:`wait` for ``async def`` functions: awaits without blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.wait, invocation_id)

    def get_devbox(self, devbox_id: str) -> Devbox:
        from ._devbox import Devbox

        return Devbox(self._client, self._client.request("GET", f"/v1/devboxes/{devbox_id}"))
