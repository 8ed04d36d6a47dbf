"""`python -m runloop._manifest`: what a deployment build reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]


def describe(tmp_path: Path, source: str) -> tuple[int, dict]:
    (tmp_path / "mod.py").write_text(source)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runloop._manifest",
            "--module-dir",
            str(tmp_path),
            "--module",
            "mod",
            "--out",
            str(out),
        ],
        cwd=SDK,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SDK), "PATH": "/usr/bin:/bin"},
    )
    return proc.returncode, json.loads(out.read_text())


def test_manifest_lists_functions(tmp_path: Path) -> None:
    code, m = describe(
        tmp_path,
        "import runloop\nprint('noise at import')\n"
        "@runloop.function\ndef f(a: int) -> int:\n    return a\n",
    )
    assert code == 0
    assert [f["name"] for f in m["functions"]] == ["f"]
    assert m["functions"][0]["request_schema"]["properties"]["a"]["type"] == "integer"


def test_manifest_reports_definition_errors(tmp_path: Path) -> None:
    code, m = describe(
        tmp_path, "import runloop\n@runloop.function\ndef f(a) -> int:\n    return a\n"
    )
    assert code == 1
    assert "function 'f': parameter 'a' has no type annotation" in m["error"]


def test_manifest_reports_import_errors_and_empty_modules(tmp_path: Path) -> None:
    code, m = describe(tmp_path, "import not_a_module_anywhere\n")
    assert code == 1 and "ModuleNotFoundError" in m["error"]
    code, m = describe(tmp_path, "x = 1\n")
    assert code == 1 and "no @runloop.function" in m["error"]
