"""No import cycles among sdmc's modules (issue 14 part 5).

The import graph is read from the source with :mod:`ast`, so it holds every import, the ones inside functions
too: a function-level import that closes a loop is a cycle hidden from the interpreter, not a cure for it.
An edge ``a -> b`` means module ``a`` imports module ``b`` (or a name from it); importing ``pkg.mod`` also
imports ``pkg`` (its ``__init__``) first, so that edge is recorded as well.  Imports under
``if TYPE_CHECKING:`` are types for the reader, never executed, and are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import tomllib

ROOT = Path(__file__).resolve().parents[1]

# Cycles still owned by another engineer when this test landed: {frozenset of modules: who removes it}.
# Remove an entry when its cycle is gone (the test fails on a stale entry, so the list cannot rot).
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` for every module of the installed layout (pyproject's package-dir mapping)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mods: dict[str, Path] = {}
    for pkg, folder in mapping.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            owner = max((p for p in mapping if name == p or name.startswith(p + ".")), key=len)
            if owner == pkg:  # sdmc/ maps sdmc, but frontends/ is sdmc.frontends: the longest prefix owns it
                mods[name] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The sdmc modules ``name`` imports (at any depth of its code)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            prefix = ".".join(parts[:i])
            if prefix in mods and prefix != name:
                found.add(prefix)

    tree = ast.parse(path.read_text(), str(path))
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            add(module)
            for alias in node.names:  # `from . import checkpoint` imports a module
                if f"{module}.{alias.name}" in mods:
                    add(f"{module}.{alias.name}")
    return found


def import_graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        g.add_edges_from((name, dep) for dep in _imports(name, path, mods))
    return g


def _is_package_edge(a: str, b: str) -> bool:
    """A package's ``__init__`` re-exporting its own submodule (``sdmc.ir -> sdmc.ir.graph``) and the submodule
    importing its package back are one unit, not a design cycle; only such edges are set aside."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def cycles() -> list[frozenset[str]]:
    """Strongly connected groups of modules, ignoring the package <-> own-submodule edges."""
    g = import_graph()
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if _is_package_edge(a, b)])
    return [frozenset(c) for c in nx.strongly_connected_components(g) if len(c) > 1]


def test_graph_sees_known_imports():
    g = import_graph()
    assert ("sdmc.checkpoint", "sdmc.config") in g.edges  # `from .config import ...`
    assert ("sdmc.diffusion.sampling", "sdmc.diffusion.schedule") in g.edges
    assert ("sdmc.frontends.trace", "sdmc.ir") in g.edges  # frontends/ maps to sdmc.frontends


def test_detector_finds_a_function_level_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "sdmc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n")
    mods = {"sdmc": pkg / "__init__.py", "sdmc.a": pkg / "a.py", "sdmc.b": pkg / "b.py", "sdmc.c": pkg / "c.py"}
    assert _imports("sdmc.a", mods["sdmc.a"], mods) == {"sdmc", "sdmc.b"}
    assert _imports("sdmc.b", mods["sdmc.b"], mods) == {"sdmc", "sdmc.a"}
    assert _imports("sdmc.c", mods["sdmc.c"], mods) == set()  # a type-only import runs nothing


def test_no_import_cycles():
    found = cycles()
    unknown = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    stale = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not unknown, f"import cycles among sdmc modules: {unknown}"
    assert not stale, f"KNOWN_CYCLES lists cycles that are gone; delete them: {stale}"
