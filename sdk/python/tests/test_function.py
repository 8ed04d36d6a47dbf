"""The decorator: schemas from annotations, injected coordinators, clear definition errors."""

from __future__ import annotations

from typing import Annotated, Optional

import pytest
from pydantic import BaseModel, Field

import runloop
from runloop import DefinitionError, ExecResult
from runloop._function import registered_functions


class Item(BaseModel):
    name: str
    qty: int = 1


def test_schema_from_annotations() -> None:
    @runloop.function
    def order(
        items: list[Item], note: Optional[str] = None, coordinator: runloop.SystemCoordinator = None
    ) -> dict[str, int]:
        return {i.name: i.qty for i in items}

    f = registered_functions()["order"]
    schema = f.request_schema()
    assert schema["required"] == ["items"]
    assert set(schema["properties"]) == {"items", "note"}, "the coordinator is not a request field"
    assert f.coordinator_params == ["coordinator"]
    assert f.response_schema() == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    kwargs = f.arguments({"items": [{"name": "a", "qty": 2}]})
    assert isinstance(kwargs["items"][0], Item)
    assert f.dump_result(order(**kwargs)) == {"a": 2}


def test_validation_errors_name_the_field() -> None:
    @runloop.function
    def greet(name: str, times: int = 1) -> str:
        return name * times

    f = registered_functions()["greet"]
    assert f.validation_errors({"name": "x"}) == []
    errors = f.validation_errors({"times": "lots"})
    fields = {e["field"] for e in errors}
    assert fields == {"name", "times"}
    assert f.validation_errors({"name": "x", "other": 1})[0]["field"] == "other"


def test_missing_parameter_annotation_names_function_and_parameter() -> None:
    with pytest.raises(DefinitionError) as e:

        @runloop.function
        def broken(name, count: int) -> str:  # type: ignore[no-untyped-def]
            return ""

    assert "'broken'" in str(e.value) and "'name'" in str(e.value)


def test_missing_return_annotation() -> None:
    with pytest.raises(DefinitionError, match="'no_return': the return type is not annotated"):

        @runloop.function
        def no_return(name: str):  # type: ignore[no-untyped-def]
            return name


def test_var_args_are_refused() -> None:
    with pytest.raises(DefinitionError, match="'kw'"):

        @runloop.function
        def splat(**kw: int) -> int:
            return 0


def test_async_functions_are_marked() -> None:
    @runloop.function
    async def later(x: int) -> int:
        return x

    assert registered_functions()["later"].is_async


def test_exec_result_unpacks_and_prints() -> None:
    r = ExecResult(0, "hello\n", "")
    code, out, err = r
    assert (code, out, err) == (0, "hello\n", "")
    assert r.exit_code == 0 and r.ok
    assert "hello" in str(r) and "exit_code=0" in str(r)


def test_retryable_form() -> None:
    @runloop.function(retryable=True)
    def again(x: int) -> int:
        return x

    @runloop.function()
    def once(x: int) -> int:
        return x

    assert registered_functions()["again"].retryable
    assert not registered_functions()["once"].retryable
    assert again(3) == 3


def test_request_exact_only_for_bare_json_types() -> None:
    @runloop.function
    def plain_types(text: str, n: int, ratio: float = 0.5, loud: bool = False) -> str:
        return text

    @runloop.function
    def with_model(item: Item) -> str:
        return item.name

    @runloop.function
    def with_optional(text: Optional[str]) -> str:
        return text or ""

    @runloop.function
    def with_constraint(n: Annotated[int, Field(gt=0)]) -> int:
        return n

    @runloop.function
    def with_coordinator(text: str, coordinator: runloop.SystemCoordinator) -> str:
        return text

    fns = registered_functions()
    assert fns["plain_types"].request_exact()
    assert fns["with_coordinator"].request_exact()
    assert not fns["with_model"].request_exact()
    assert not fns["with_optional"].request_exact()
    assert not fns["with_constraint"].request_exact()
