"""Who may import whom in app/vllama: the table in docs/development.md ("Rooms and their
contracts"), checked against every `import vllama...` in the package, imports inside
functions included. A new room, or a new import across rooms, needs a line in that table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "app" / "vllama"
DOC = REPO / "docs" / "development.md"
_ROW = re.compile(r"^\| `(\w+)` \|[^|]*\| (.+) \|$")


def rules() -> dict[str, set[str] | None]:
    """room -> rooms it may import (None: everything), from the doc's table."""
    section = DOC.read_text().split("## Rooms and their contracts", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        if m := _ROW.match(line):
            cell = m.group(2).strip()
            table[m.group(1)] = None if cell == "everything" else set(re.findall(r"`(\w+)`", cell))
    return table


def room_of(path: Path) -> str | None:
    """`server/app.py` -> server, `config.py` -> config; the package's __init__ -> None."""
    first = path.relative_to(PACKAGE).parts[0]
    return None if first == "__init__.py" else first.removesuffix(".py")


def imported_rooms(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vllama" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_the_doc_table_covers_every_room() -> None:
    rooms = {room_of(p) for p in PACKAGE.rglob("*.py")} - {None}
    assert rooms == set(rules()), "rooms of app/vllama vs the table in docs/development.md"


def test_every_import_is_allowed_by_the_table() -> None:
    table = rules()
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = room_of(path)
        if room is None:
            continue
        allowed = table[room]
        for target in sorted(imported_rooms(path) - {room}):
            if allowed is not None and target not in allowed:
                crossings.append(f"{path.relative_to(REPO)} imports vllama.{target}")
    assert crossings == []


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    module = tmp_path / "pool.py"
    module.write_text("def f():\n    from vllama.models.info import read_model_config\n")
    assert imported_rooms(module) == {"models"}
    assert "models" not in (rules()["upstream"] or set())
