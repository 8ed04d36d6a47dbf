"""The Openloop agent SDK, importable as ``runloop``.

Decorate ordinary Python functions with :func:`function` to deploy them; declare a
parameter of type :class:`SystemCoordinator` to get devboxes and the rest of the
platform injected.
"""

from ._coordinator import SystemCoordinator
from ._devbox import Devbox, ExecResult, Execution, FileTools, ShellTools
from ._errors import CallDepthExceeded, DefinitionError, InvocationFailed, RunloopError
from ._function import FunctionDefinition, function, registered_functions

__all__ = [
    "CallDepthExceeded",
    "DefinitionError",
    "Devbox",
    "ExecResult",
    "Execution",
    "FileTools",
    "FunctionDefinition",
    "InvocationFailed",
    "RunloopError",
    "ShellTools",
    "SystemCoordinator",
    "function",
    "registered_functions",
]
