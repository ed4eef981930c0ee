"""The sizes table in docs/development.md is the code's (scripts/sizes.py makes it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def sizes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sizes", REPO / "scripts" / "sizes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sizes"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_the_doc_table_is_the_code_s() -> None:
    script = sizes()
    doc = script.in_doc(script.DOC.read_text(encoding="utf-8"))
    assert doc == script.table(), "run: python scripts/sizes.py --write"


def test_functions_are_measured_from_decorator_to_last_line() -> None:
    import ast

    code = "@wrap\ndef f():\n    def inner():\n        pass\n    return 1\n\nclass C:\n    def m(self):\n        pass\n"
    assert sizes()._functions(ast.parse(code)) == [(5, "f"), (2, "C.m")]


def test_every_room_is_in_the_table() -> None:
    script = sizes()
    rooms = {r.name for r in script.rooms()}
    table = script.table()
    assert {"server", "upstream", "translate", "cli", "config", "names", "demo"} <= rooms
    assert all(f"| `{room}` |" in table for room in rooms)
