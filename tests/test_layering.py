"""Imports run one way: reparam <- supernet <- search; deploy never imports search;
data and tasks stand apart. Checked on the source, so a new import cannot slip in."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "repas"
# what each subpackage may import from repas (besides itself)
ALLOWED = {
    "reparam": {"spec", "errors"},
    "supernet": {"reparam", "spec", "errors", "atomic"},
    "search": {"supernet", "reparam", "spec", "latency_table", "errors", "atomic", "config", "data"},
    "deploy": {"reparam", "spec", "latency_table", "errors", "atomic", "colour"},
    "data": {"errors", "spec", "colour"},
    "tasks": {"errors", "colour"},
}


def repas_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "repas" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_subpackage_imports_run_one_way(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = repas_imports(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(ROOT.parent)} imports repas.{sorted(bad)}"


def test_importing_deploy_does_not_load_training_code():
    code = "import sys, repas.deploy; print(sorted(m for m in sys.modules if m.startswith(('repas.search', 'timm'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
