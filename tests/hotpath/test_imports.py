"""The data path imports no aiohttp: its server and upstream pool are guardproxy.transport."""

from __future__ import annotations

import ast
from pathlib import Path

import guardproxy

PACKAGE = Path(guardproxy.__file__).parent
DATA_PATH = [
    *sorted((PACKAGE / "hotpath").glob("*.py")),
    *sorted((PACKAGE / "guards").glob("*.py")),
    PACKAGE / "dataport.py",
    PACKAGE / "feedback.py",
    PACKAGE / "telemetry" / "tracing.py",
]
FORBIDDEN = {"aiohttp", "multidict", "yarl"}


def imported(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_aiohttp_on_the_data_path() -> None:
    assert len(DATA_PATH) > 15
    for path in DATA_PATH:
        assert not imported(path) & FORBIDDEN, f"{path.relative_to(PACKAGE)} imports aiohttp"
