"""``python -m runloop._manifest``: import an agent module and describe its functions.

Used by the deployment build. Writes JSON to ``--out``: ``{"functions": [...]}`` or
``{"error": "..."}`` (exit status 1). Nothing the module prints can corrupt it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from typing import Any

from ._errors import DefinitionError
from ._function import registered_functions


def describe(module_dir: str, module: str) -> dict[str, Any]:
    sys.path.insert(0, module_dir)
    try:
        importlib.import_module(module)
    except DefinitionError as e:
        return {"error": str(e)}
    except BaseException as e:  # noqa: BLE001 - any failure of user code is reported
        tb = traceback.format_exc(limit=-8)
        return {"error": f"importing module '{module}' failed: {type(e).__name__}: {e}\n{tb}"}
    functions = registered_functions()
    if not functions:
        return {
            "error": f"module '{module}' defines no @runloop.function; "
            "decorate at least one function with @runloop.function"
        }
    return {
        "functions": [
            {
                "name": f.name,
                "is_async": f.is_async,
                "retryable": f.retryable,
                "request_schema": f.request_schema(),
                "request_exact": f.request_exact(),
                "response_schema": f.response_schema(),
            }
            for f in functions.values()
        ]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module-dir", required=True)
    parser.add_argument("--module", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = describe(args.module_dir, args.module)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    sys.stdout.flush()
    raise SystemExit(1 if "error" in result else 0)


if __name__ == "__main__":
    main()
