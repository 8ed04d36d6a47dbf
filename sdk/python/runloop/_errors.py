from __future__ import annotations

from typing import Any


class DefinitionError(TypeError):
    """A ``@runloop.function`` that cannot be deployed (for example a missing annotation)."""


class RunloopError(RuntimeError):
    """An error answered by the Openloop server."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class InvocationFailed(RuntimeError):
    """A function invoked through the coordinator did not succeed."""

    def __init__(self, invocation: dict[str, Any]) -> None:
        error = invocation.get("error") or {}
        super().__init__(
            f"{invocation.get('project_name')}/{invocation.get('function_name')} "
            f"{invocation.get('status')}: {error.get('type')}: {error.get('message')}"
        )
        self.invocation = invocation
        self.error = error
