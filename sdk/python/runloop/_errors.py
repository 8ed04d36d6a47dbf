from __future__ import annotations


class DefinitionError(TypeError):
    """A ``@runloop.function`` that cannot be deployed (for example a missing annotation)."""


class RunloopError(RuntimeError):
    """An error answered by the Openloop server."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
