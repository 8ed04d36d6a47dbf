"""``@runloop.function``: signatures become request and response schemas."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from ._coordinator import SystemCoordinator
from ._errors import DefinitionError

F = TypeVar("F", bound=Callable[..., Any])

#: Parameter types whose JSON type alone decides validity (see ``request_exact``).
_EXACT_TYPES: tuple[type, ...] = (str, int, float, bool)


@dataclass
class FunctionDefinition:
    """Everything the platform needs to know about one deployed function."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    request_model: type[BaseModel]
    return_adapter: TypeAdapter[Any]
    coordinator_params: list[str] = field(default_factory=list)
    #: Run again after a server crash instead of failing (the function must be idempotent).
    retryable: bool = False
    #: The return annotation (see ``rehearse``).
    returns: Any = None

    def request_schema(self) -> dict[str, Any]:
        return self.request_model.model_json_schema()

    def request_exact(self) -> bool:
        """Whether JSON types alone decide this function's requests: every parameter is a
        bare ``str``, ``int``, ``float`` or ``bool`` (no constraints, no validators). A request
        whose values have exactly those JSON types, with every required parameter and no
        other, is then valid, and the server need not ask the warm process (any other
        request still is checked by pydantic)."""
        decorators = self.request_model.__pydantic_decorators__
        if (
            decorators.validators
            or decorators.field_validators
            or decorators.root_validators
            or decorators.model_validators
        ):
            return False
        return all(
            f.annotation in _EXACT_TYPES and not f.metadata
            for f in self.request_model.model_fields.values()
        )

    def response_schema(self) -> dict[str, Any]:
        return self.return_adapter.json_schema()

    def validation_errors(self, request: Any) -> list[dict[str, str]]:
        """The schema violations of ``request``, empty when it is valid."""
        try:
            self.request_model.model_validate(request)
        except ValidationError as e:
            return [
                {
                    "field": ".".join(str(p) for p in err["loc"]) or "request",
                    "message": err["msg"],
                    "type": err["type"],
                }
                for err in e.errors()
            ]
        return []

    def arguments(self, request: Any) -> dict[str, Any]:
        """Validated keyword arguments, without the injected coordinator."""
        model = self.request_model.model_validate(request)
        return {name: getattr(model, name) for name in type(model).model_fields}

    def dump_result(self, value: Any) -> Any:
        return self.return_adapter.dump_python(value, mode="json")

    def rehearse(self) -> None:
        """Go through this function's request validation and result serialization once,
        without its code and without anything a user wrote: a process forked from the warm
        process does this before its run comes, so the memory those paths write to is
        already its own (copied on write) and the run does not wait for those copies.
        Validates an empty request (refused before any field's own validator); for a
        function whose requests JSON types alone decide, a request of zero values; and
        serializes a zero value of a plain return type."""
        self.validation_errors({})
        if self.request_exact():
            self.arguments(
                {name: f.annotation() for name, f in self.request_model.model_fields.items()}
            )
        origin = typing.get_origin(self.returns) or self.returns
        if origin in (str, int, float, bool, dict, list):
            self.dump_result(origin())


_REGISTRY: dict[str, FunctionDefinition] = {}


def registered_functions() -> dict[str, FunctionDefinition]:
    """The functions decorated so far, by name."""
    return dict(_REGISTRY)


def _is_coordinator(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, SystemCoordinator)


@overload
def function(fn: F) -> F: ...


@overload
def function(*, retryable: bool = False) -> Callable[[F], F]: ...


def function(fn: F | None = None, *, retryable: bool = False) -> F | Callable[[F], F]:
    """Deploy ``fn`` as a function. Every parameter and the return type must be annotated.

    ``@runloop.function(retryable=True)`` marks a function that is safe to run again: a run
    cut short by a server crash is queued again instead of failing.
    """
    if fn is None:
        return lambda f: _register(f, retryable)
    return _register(fn, retryable)


def _register(fn: F, retryable: bool) -> F:
    name = getattr(fn, "__name__", None)
    if not callable(fn) or not name:
        raise DefinitionError("@runloop.function must decorate a named function")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as e:  # unresolvable forward references and the like
        raise DefinitionError(f"function '{name}': its annotations cannot be resolved: {e}") from e
    fields: dict[str, Any] = {}
    coordinators: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise DefinitionError(
                f"function '{name}': parameter '{param.name}' is *args or **kwargs; "
                "declare each parameter by name with a type annotation"
            )
        if param.name not in hints:
            raise DefinitionError(
                f"function '{name}': parameter '{param.name}' has no type annotation; "
                "every parameter of a @runloop.function must be annotated"
            )
        annotation = hints[param.name]
        if _is_coordinator(annotation):
            coordinators.append(param.name)
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    if "return" not in hints:
        raise DefinitionError(
            f"function '{name}': the return type is not annotated; add '-> TYPE' "
            "(it becomes the response schema)"
        )
    try:
        request_model = create_model(  # type: ignore[call-overload]
            f"{name}_request",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
            **fields,
        )
        return_adapter: TypeAdapter[Any] = TypeAdapter(hints["return"])
        request_model.model_json_schema()
        return_adapter.json_schema()
    except Exception as e:
        raise DefinitionError(
            f"function '{name}': its types cannot be turned into a JSON schema: {e}"
        ) from e
    _REGISTRY[name] = FunctionDefinition(
        name=name,
        func=fn,
        is_async=inspect.iscoroutinefunction(fn),
        request_model=request_model,
        return_adapter=return_adapter,
        coordinator_params=coordinators,
        retryable=retryable,
        returns=hints["return"],
    )
    return fn
