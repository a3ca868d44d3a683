"""The package's shape: thin entry points on top, subpackages that import downwards only, small modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "neu_defects"
ENTRY_POINTS = ("train", "eval", "export", "predict", "explain", "cam_study", "cam_boxes", "benchmark", "report", "studies",
                "app")
# A subpackage may import those before it in this order, never one after it.
LAYERS = ("core", "data", "models", "saliency", "reporting", "deploy", "workflows")
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("neu_defects"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.startswith("neu_defects"))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_module_imports_another_in_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle(import_graph()) is None


def test_no_module_of_the_package_imports_an_entry_point():
    entries = {f"neu_defects.{e}" for e in ENTRY_POINTS}
    assert {(a, b) for a, targets in import_graph().items() for b in targets if b in entries} == set()


def test_subpackages_import_downwards_only():
    upward = []
    for source, targets in import_graph().items():
        layer = source.split(".")[1] if source.count(".") else None
        for target in targets:
            other = target.split(".")[1] if target.count(".") else None
            if layer in LAYERS and other in LAYERS and LAYERS.index(other) > LAYERS.index(layer):
                upward.append(f"{source} -> {target}")
    assert upward == []
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")} == set(LAYERS)


def test_entry_points_are_thin_and_sit_on_top():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == set(ENTRY_POINTS)
    for name in ENTRY_POINTS:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert functions == ["main"], f"{name}.py defines {functions}: entry points only wrap a library function"


def test_modules_are_small_or_say_why():
    long = [f"{p.relative_to(PACKAGE)}: {n} lines" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and "Over 350 lines because" not in p.read_text()]
    assert long == []
