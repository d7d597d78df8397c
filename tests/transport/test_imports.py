"""guardproxy.transport stands alone: the standard library, httptools and uvloop only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import guardproxy.transport

ALLOWED = {"httptools", "uvloop"}
PACKAGE = Path(guardproxy.transport.__file__).parent


def imported(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_transport_imports_nothing_else_from_guardproxy_nor_third_parties() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 10
    for path in sources:
        outside = imported(path) - ALLOWED - set(sys.stdlib_module_names) - {"__future__"}
        assert not outside, f"{path.name} imports {sorted(outside)}"
