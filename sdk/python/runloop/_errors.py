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


class CallDepthExceeded(RunloopError):
    """A function invoked another past the server's call-depth limit (``--max-call-depth``).

    Raised in the calling function; the message names the depth and the limit.
    """


#: Server error codes with an exception class of their own.
ERRORS_BY_CODE: dict[str, type[RunloopError]] = {"call_depth_exceeded": CallDepthExceeded}


def error_for(status: int, code: str, message: str) -> RunloopError:
    """The exception for an error the server answered."""
    return ERRORS_BY_CODE.get(code, RunloopError)(status, code, message)


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
