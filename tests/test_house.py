"""House rule: the package has no import cycle, counting imports inside functions (issue 18).

Why: ~90 function-local imports used to hide two cycles (study <-> pipeline <-> executors,
models.catalogue -> llmjp -> registry -> catalogue); a lazy import makes a cycle work until
someone moves a line. The graph is read from the source (every ``import`` statement, at any
depth), so a cycle is found whether or not its imports run.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sae_bilingual"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source.

    ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``.
    """
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import a.b.c` of a package module: its nearest module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _own_submodules(comp: list[str]) -> bool:
    """A package and modules inside it only (its __init__ importing its own parts): allowed."""
    top = min(comp, key=len)
    return all(m == top or m.startswith(top + ".") for m in comp)


def test_every_module_imports() -> None:
    failed = []
    for name in _modules():
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  listed below
            failed.append(f"{name}: {type(e).__name__}: {e}")
    assert not failed, "\n".join(failed)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert cycles(graph) == [["a", "b", "c"], ["p", "p.x"]]
    assert [c for c in cycles(graph) if not _own_submodules(c)] == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert graph["sae_bilingual.study.run"] >= {"sae_bilingual.study.executors", "sae_bilingual.study.plan"}
    bad = [c for c in cycles(graph) if not _own_submodules(c)]
    assert not bad, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in bad)


OPTIONAL_EXTRAS = {"wandb", "ray", "submitit"}
"""The only modules the package may import inside a function (extras a user may not install)."""


def test_only_optional_extras_are_imported_inside_functions() -> None:
    local = []
    for name, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        local += [(name, a.name) for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        local.append((name, node.module or ""))
    assert all(mod.split(".")[0] in OPTIONAL_EXTRAS for _, mod in local), local
    assert len(local) <= 15, local
