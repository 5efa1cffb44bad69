"""The package's shape: folders import only downward, and no module grows past what one concept needs."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"

# Each folder may import the folders of lower levels only; folders of one level never import each other.
LEVELS = {
    "errors": 0,
    "job": 1,
    "engine": 2, "io": 2,
    "models": 3, "work": 3,
    "run": 4,
    "node": 5, "ops": 5,
    "cli": 6,
    "__main__": 7,
}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _folder(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, folder) of every `batchgen.<folder>` import, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "batchgen" else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "batchgen" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_folder_has_a_level():
    folders = {_folder(p) for p in _modules()} - {"__init__"}
    assert folders <= set(LEVELS), f"give these a level in LEVELS: {sorted(folders - set(LEVELS))}"


def test_imports_only_go_down():
    upward = []
    for path in _modules():
        here = _folder(path)
        if here == "__init__":
            continue
        for line, there in _imports(path):
            if there != here and LEVELS.get(there, 99) >= LEVELS[here]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports batchgen.{there}")
    assert upward == [], "imports that go up or sideways:\n" + "\n".join(upward)


def test_modules_stay_small():
    big = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert big == [], "split these by concept:\n" + "\n".join(big)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a `work` module importing `run` is caught."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from batchgen.run.runner import Runner\n")
    assert _imports(bad) == [(2, "run")]
