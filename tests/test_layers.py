"""The layers hold: each folder imports only the folders below it, and nothing forms a cycle.

Read from the source (ast), so the check imports nothing heavy. ARCHITECTURE.md draws the
same rules.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "guardproxy"
# What each layer may import from guardproxy; the composition root (app, cli, admin,
# feedback, ...) and demo/ may import anything.
ALLOWED: dict[str, set[str]] = {
    "transport": set(),
    "tasks": set(),
    "masking": set(),  # secrets out of reports, logs and errors: every layer that reports
    "logs": {"masking"},
    "policy": {"tasks", "masking"},
    "payloads": {"policy"},
    "sampling": {"payloads", "policy"},
    "guards": {"transport", "payloads", "policy", "sampling"},
    "breaker": {"policy", "tasks"},
    "hotpath": {"transport", "guards", "payloads", "breaker", "policy", "tasks", "masking", "logs"},
    "state": {"policy", "masking"},
    "monitors": {"hotpath", "breaker", "policy", "state", "payloads", "tasks"},
    "telemetry": {
        "transport",
        "hotpath",
        "breaker",
        "policy",
        "state",
        "guards",
        "tasks",
        "masking",
    },
    "grpc": {"transport", "hotpath", "guards", "payloads", "breaker", "policy", "tasks", "logs"},
}
ROOT = "root"


def layer_of(path: Path) -> str:
    """The layer a module belongs to: its top folder, a layered root module, or the root."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = parts[0]
    return name if name in ALLOWED else ROOT


def imports_of(path: Path) -> Iterator[str]:
    """The modules a file imports, relative imports resolved (`from ..transport` in grpc/)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["guardproxy", *path.relative_to(PACKAGE).parent.parts]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1]
            yield ".".join([*base, node.module] if node.module else base)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def edges() -> dict[str, set[str]]:
    """Layer -> layers it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "generated" in path.parts:
            continue
        source = layer_of(path)
        for module in imports_of(path):
            if module == "guardproxy" or not module.startswith("guardproxy."):
                continue
            target = module.split(".")[1]
            target = target if target in ALLOWED else ROOT
            if target != source:
                graph.setdefault(source, set()).add(target)
    return graph


def test_every_layer_imports_only_what_it_may() -> None:
    wrong = {
        layer: sorted(targets - ALLOWED[layer])
        for layer, targets in edges().items()
        if layer != ROOT and targets - ALLOWED[layer]
    }
    assert wrong == {}


def architecture_table() -> dict[str, set[str]]:
    """ARCHITECTURE.md's table: {layer: the layers its "may import" column names}."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.fullmatch(r"`(\w+)(?:/|\.py)`", cells[0]) if len(cells) == 3 else None
        if found:
            table[found.group(1)] = set(re.findall(r"`(\w+)`", cells[2]))
    return table


def test_architecture_md_draws_the_same_rules() -> None:
    assert architecture_table() == ALLOWED


def test_no_layer_imports_the_composition_root_and_there_is_no_cycle() -> None:
    graph = edges()
    assert not any(ROOT in targets for layer, targets in graph.items() if layer != ROOT)
    seen: set[str] = set()

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"cycle: {' -> '.join((*path, layer))}"
        if layer in seen:
            return
        for target in graph.get(layer, ()):
            visit(target, (*path, layer))
        seen.add(layer)

    for layer in graph:
        visit(layer, ())


def test_the_hot_path_loads_no_numpy_and_no_monitor() -> None:
    probe = (
        "import sys, guardproxy.hotpath.proxy; "
        "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith("
        "('guardproxy.monitors', 'guardproxy.state', 'guardproxy.telemetry'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_request_trust_paths_and_decoding_need_no_http_library() -> None:
    # The data port's handler calls these with plain strings, bytes and header mappings.
    for name in ("encoding", "paths", "trust"):
        path = PACKAGE / "hotpath" / f"{name}.py"
        assert roots_of(path) <= sys.stdlib_module_names | {"__future__"}, name


def roots_of(path: Path) -> set[str]:
    """The top-level names a file imports."""
    return {module.split(".")[0] for module in imports_of(path)}


def test_the_transport_needs_only_the_standard_library_httptools_and_uvloop() -> None:
    sources = sorted((PACKAGE / "transport").glob("*.py"))
    assert len(sources) > 10
    allowed = sys.stdlib_module_names | {"__future__", "httptools", "uvloop", "guardproxy"}
    for path in sources:
        assert roots_of(path) <= allowed, (path.name, roots_of(path) - allowed)


def test_no_aiohttp_on_the_data_path() -> None:
    data_path = [
        *(PACKAGE / "hotpath").glob("*.py"),
        *(PACKAGE / "guards").glob("*.py"),
        *(PACKAGE / name for name in ("dataport.py", "feedback.py", "telemetry/tracing.py")),
    ]
    assert len(data_path) > 15
    for path in data_path:
        assert not roots_of(path) & {"aiohttp", "multidict", "yarl"}, path.name
