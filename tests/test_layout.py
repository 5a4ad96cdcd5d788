"""The code's shape, as a newcomer relies on it: no import cycles between irscreen's
modules, and inference (models, screening) never imports training code."""
from __future__ import annotations

import ast
from pathlib import Path

import irscreen

ROOT = Path(irscreen.__file__).parent
TRAINING = {"irscreen.train", "irscreen.data", "irscreen.recipes"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Every irscreen module -> the irscreen modules it imports (at any depth of the file)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import submodule` depends on the submodule, not on pkg's __init__
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [node.module] + subs
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph = import_graph()
    # a package importing its own submodules (to re-export them) is not a cycle
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in edges[m]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [m])


def test_inference_never_imports_training_code():
    graph = import_graph()
    for m, deps in graph.items():
        if m.startswith(("irscreen.models", "irscreen.screening", "irscreen.features", "irscreen.pipeline")):
            assert not deps & TRAINING, (m, deps & TRAINING)
