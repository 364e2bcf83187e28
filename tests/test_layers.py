"""The import structure of ``orchestration`` and ``aullm_core``, read from the source (every import,
function-level ones included): one folder per stage, no circle, no arrow from a lower stage to a higher
one, no code named by a dotted string, and aullm_core never importing orchestration."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The stages of orchestration, lowest first: a module may import its own stage and lower ones.
STAGES = ("folds", "search", "results", "sweep", "tracking", "reports", "export", "cli")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph(package: str) -> nx.DiGraph:
    paths = sorted((ROOT / package).rglob("*.py"))
    modules = {_module(p): p for p in paths}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imports(path):
            if target in modules and target != name and modules[target].name != "__init__.py":
                graph.add_edge(name, target)
    return graph


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


@pytest.fixture(scope="module")
def orchestration() -> nx.DiGraph:
    return _graph("orchestration")


def test_every_orchestration_module_lives_in_a_stage_folder(orchestration) -> None:
    loose = [m for m in orchestration if m.count(".") == 1 and m.split(".")[1] not in STAGES]
    assert loose == [], f"modules outside the stage folders {STAGES}: {loose}"
    assert {_stage(m) for m in orchestration if m.count(".") > 1} <= set(STAGES)


def test_no_import_circle(orchestration) -> None:
    assert list(nx.simple_cycles(orchestration)) == []


def test_no_arrow_from_a_lower_stage_to_a_higher_one(orchestration) -> None:
    upward = [(a, b) for a, b in orchestration.edges
              if _stage(a) and _stage(b) and STAGES.index(_stage(b)) > STAGES.index(_stage(a))]
    assert upward == []


def test_aullm_core_never_imports_orchestration() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "aullm_core").rglob("*.py")
                 if any(i.split(".")[0] == "orchestration" for i in _imports(p))]
    assert offenders == []


def test_no_code_is_named_by_a_dotted_string() -> None:
    """The fold function, cache loader and tracker are passed as callables (``FoldCode``, ``SweepHooks``),
    never imported by name at run time."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "orchestration").rglob("*.py")
                 if "import_module" in p.read_text() or "__import__(" in p.read_text()]
    assert offenders == []


def test_no_module_is_much_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for package in ("orchestration", "aullm_core")
            for p in (ROOT / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}
