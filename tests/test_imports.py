"""The module graph of difflab has no import cycles, and every module imports on its own.

The graph is read from each module's import statements, those inside functions included (a lazy import
hides a cycle, it does not remove it); only imports under ``if TYPE_CHECKING:`` are not edges. Importing ``a.b.c`` also imports the
packages ``a.b`` and ``a``, so those are edges too (except a module's own packages, which are being
imported already when it is).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "difflab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, in functions too, except those under ``if TYPE_CHECKING:``."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            todo += node.orelse
        else:
            todo += list(ast.iter_child_nodes(node))
    return out


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph() -> dict[str, set[str]]:
    """module -> the difflab modules its imports load."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.module is None or node.level:
                continue  # difflab uses absolute imports only
            else:  # from m import x: m, and m.x where x is a module
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            own_packages = set(_with_parents(name))  # being imported already when ``name`` is
            for target in targets:
                edges |= {m for m in _with_parents(target) if m in modules and m not in own_packages}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_difflab_has_no_import_cycle():
    graph = import_graph()
    assert "difflab.tasks.image" in graph and "difflab.report_html" in graph["difflab.tasks.image"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module imports first in its own interpreter (one process per module would take minutes: one
    process imports each in turn, after clearing difflab from sys.modules)."""
    names = sorted(import_graph())
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for m in [m for m in sys.modules if m == 'difflab' or m.startswith('difflab.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
