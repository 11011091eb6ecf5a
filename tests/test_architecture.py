"""The package's shape: no import circle among its modules, lazy imports inside functions included
(a circle is two modules that each need the other: one home for an idea is missing)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module → the lucidlm modules it imports, anywhere in its body."""
    modules = {module_name(p): p for p in (SRC / "lucidlm").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                for alias in node.names:
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {t for t in found if t in modules and t != name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    assert len(graph) > 50 and "lucidlm.data.cebab" in graph["lucidlm.evaluation.causal"]
    assert "lucidlm.experiment" in graph["lucidlm.corrections.learn"]  # imported inside a function: seen too
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"an import circle: {' → '.join(error.args[1])}") from None
