"""Devboxes as seen from agent code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ._client import ApiClient


class ExecResult(NamedTuple):
    """The outcome of a command: unpacks as ``(exit_code, stdout, stderr)``."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ShellTools:
    def __init__(self, devbox: Devbox) -> None:
        self._devbox = devbox

    def _start(
        self, endpoint: str, command: str, env: dict[str, str] | None, cwd: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"command": command}
        if env:
            body["environment_variables"] = env
        if cwd:
            body["working_dir"] = cwd
        view: dict[str, Any] = self._devbox._client.request(
            "POST", f"/v1/devboxes/{self._devbox.id}/{endpoint}", body
        )
        return view

    def exec(
        self, command: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> ExecResult:
        """Run ``command`` with bash inside the devbox and wait for it to finish."""
        r = self._start("execute_sync", command, env, cwd)
        return ExecResult(int(r["exit_status"]), r.get("stdout") or "", r.get("stderr") or "")

    def exec_async(
        self, command: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> Execution:
        """Start ``command`` and return at once; see :class:`Execution`."""
        return Execution(self._devbox, self._start("execute_async", command, env, cwd))


class Execution:
    """A command started with :meth:`ShellTools.exec_async`."""

    def __init__(self, devbox: Devbox, view: dict[str, Any]) -> None:
        self._devbox = devbox
        self.id: str = view["execution_id"]
        self.view = view

    def _path(self, suffix: str = "") -> str:
        return f"/v1/devboxes/{self._devbox.id}/executions/{self.id}{suffix}"

    def refresh(self) -> dict[str, Any]:
        self.view = self._devbox._client.request("GET", self._path())
        return self.view

    @property
    def status(self) -> str:
        return str(self.refresh()["status"])

    def wait(self) -> ExecResult:
        """Wait for the command to finish (long-polling the server) and return its result."""
        from ._errors import RunloopError

        while True:
            try:
                self.view = self._devbox._client.request(
                    "POST",
                    self._path("/wait_for_status"),
                    {"statuses": ["completed"], "timeout_seconds": 25},
                )
            except RunloopError as e:
                if e.status == 408:
                    continue
                raise
            if self.view["status"] == "completed":
                v = self.view
                return ExecResult(
                    int(v["exit_status"]), v.get("stdout") or "", v.get("stderr") or ""
                )

    def kill(self) -> None:
        self.view = self._devbox._client.request("POST", self._path("/kill"))


class FileTools:
    """Paths are relative to the devbox user's home directory, or absolute inside the devbox."""

    def __init__(self, devbox: Devbox) -> None:
        self._devbox = devbox

    def _post(self, action: str, body: dict[str, Any]) -> bytes:
        import json

        return self._devbox._client.request_raw(
            "POST",
            f"/v1/devboxes/{self._devbox.id}/{action}",
            json.dumps(body).encode(),
            "application/json",
        )

    def read_file(self, path: str) -> str:
        return self._post("read_file_contents", {"file_path": path}).decode()

    def write_file(self, path: str, contents: str) -> None:
        """Create or replace the file, creating parent directories."""
        self._post("write_file_contents", {"file_path": path, "contents": contents})

    def create_file(self, path: str, contents: str = "") -> None:
        """Create the file (and its parent directories) with ``contents``."""
        self.write_file(path, contents)

    def delete_file(self, path: str) -> None:
        self._post("delete_file", {"file_path": path})

    def upload(self, path: str, data: bytes) -> None:
        """Write binary ``data`` to ``path`` in the devbox."""
        import uuid

        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body = head + data + f"\r\n--{boundary}--\r\n".encode()
        self._devbox._client.request_raw(
            "POST",
            f"/v1/devboxes/{self._devbox.id}/upload_file",
            body,
            f"multipart/form-data; boundary={boundary}",
        )

    def download(self, path: str) -> bytes:
        """The bytes of the file at ``path`` in the devbox."""
        return self._post("download_file", {"path": path})


class Devbox:
    def __init__(self, client: ApiClient, view: dict[str, Any]) -> None:
        self._client = client
        self.id: str = view["id"]
        self.view = view
        self.shell_tools = ShellTools(self)
        self.file_tools = FileTools(self)

    @property
    def status(self) -> str:
        self.view = self._client.request("GET", f"/v1/devboxes/{self.id}")
        return str(self.view["status"])

    def shutdown(self) -> None:
        self.view = self._client.request("POST", f"/v1/devboxes/{self.id}/shutdown")

    def __repr__(self) -> str:
        return f"Devbox(id={self.id!r})"
