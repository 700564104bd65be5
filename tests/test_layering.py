"""Imports run one way: reparam <- supernet <- search; train sits on supernet; deploy never
imports search; data and tasks stand apart; no module imports itself back through others.
Checked on the source, so a new import cannot slip in."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "repas"
# what each subpackage may import from repas (besides itself)
ALLOWED = {
    "reparam": {"spec", "errors"},
    "supernet": {"reparam", "spec", "errors", "atomic", "sr_geometry"},
    "search": {"supernet", "graph", "reparam", "spec", "latency_table", "errors", "atomic"},
    "train": {"supernet", "reparam", "spec", "errors", "atomic", "config", "distributed"},
    "deploy": {"reparam", "spec", "latency_table", "errors", "atomic", "colour", "sr_geometry", "json_files"},
    "data": {"errors", "spec", "colour", "atomic"},
    "tasks": {"errors", "colour", "sr_geometry"},
    "graph": {"supernet", "errors", "atomic", "json_files", "models", "latency_table"},
    "models": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The repas modules ``path`` imports, at its top or inside a function (an import moved
    into a function to break a cycle still is one): ``from a import b`` counts a.b when
    that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("repas")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repas"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if module_path(sub) is not None else node.module)
    return found


def module_path(name: str) -> Path | None:
    base = ROOT.parent / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def repas_imports(path: Path) -> set[str]:
    return {name.split(".")[1] for name in imported_modules(path) if "." in name}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_subpackage_imports_run_one_way(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = repas_imports(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(ROOT.parent)} imports repas.{sorted(bad)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def module_graph() -> dict[str, set[str]]:
    """Module -> the repas modules it imports (a package's __init__ stands for the package;
    a module does not depend on the package that contains it)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = module_name(path)
        graph[name] = {m for m in imported_modules(path) if m != name and not name.startswith(m + ".")}
    return graph


def collapse(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The same graph between names cut to ``depth`` parts (repas.search.budget -> repas.search)."""
    out: dict[str, set[str]] = {}
    for node, targets in graph.items():
        key = ".".join(node.split(".")[:depth])
        out.setdefault(key, set()).update(".".join(t.split(".")[:depth]) for t in targets)
    return {k: v - {k} for k, v in out.items()}


def test_no_module_imports_itself_back():
    """Imports between modules form no cycle, inside a subpackage or across them."""
    cycle = find_cycle(module_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_cycle_between_subpackages_and_top_level_modules():
    """Top-level modules and subpackages, taken whole, depend on each other one way only."""
    cycle = find_cycle(collapse(module_graph(), 2))
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert collapse({"repas.x.a": {"repas.y.b"}, "repas.y.c": {"repas.x"}}, 2) == \
        {"repas.x": {"repas.y"}, "repas.y": {"repas.x"}}


def test_importing_deploy_does_not_load_training_code():
    code = "import sys, repas.deploy; print(sorted(m for m in sys.modules if m.startswith(('repas.search', 'timm'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
