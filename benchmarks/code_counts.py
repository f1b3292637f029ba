"""Issue 29's before/after counts, read from the sources of two git revisions side by side.

    python benchmarks/code_counts.py e069ffb^ HEAD

Counts, over ``sae_bilingual/``: functions longer than 60 lines; ``Any`` in the annotations of
public functions (module-level and methods, names without a leading underscore); string
literals that restate a layout fact (``"tables"``, ``"features.parquet"``) or the
``("en", "ja")`` default outside ``defaults.py``; ``noqa`` comments; modules with a
``tests/test_<module>.py``.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import Counter
from pathlib import PurePosixPath

LONG_FUNCTION_LINES = 60
LAYOUT_LITERALS = ("tables", "features.parquet")


def _files(rev: str, prefix: str) -> dict[str, str]:
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, prefix], check=True,
                           capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], check=True, capture_output=True, text=True).stdout
            for n in names if n.endswith(".py")}


def _annotation_anys(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs, fn.args.vararg, fn.args.kwarg]
    notes = [a.annotation for a in args if a is not None and a.annotation is not None]
    if fn.returns is not None:
        notes.append(fn.returns)
    return sum(isinstance(n, ast.Name) and n.id == "Any" for note in notes for n in ast.walk(note))


def _public_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            out.append(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            out += [f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and (not f.name.startswith("_") or f.name == "__init__")]
    return out


def counts(rev: str) -> Counter:
    c: Counter = Counter()
    sources = _files(rev, "sae_bilingual")
    tests = {PurePosixPath(n).name for n in _files(rev, "tests")}
    for name, text in sources.items():
        tree = ast.parse(text)
        stem = PurePosixPath(name).stem
        if stem != "__init__":
            c["modules"] += 1
            c["modules with a test_<module>.py"] += f"test_{stem}.py" in tests
        c["noqa comments"] += text.count("# noqa")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                c[f"functions over {LONG_FUNCTION_LINES} lines"] += node.end_lineno - node.lineno + 1 > LONG_FUNCTION_LINES
            elif isinstance(node, ast.Constant) and node.value in LAYOUT_LITERALS:
                c[f"literal {node.value!r}"] += 1
            elif (isinstance(node, ast.Tuple) and [getattr(e, "value", None) for e in node.elts] == ["en", "ja"]
                  and not name.endswith("defaults.py")):
                c["literal ('en', 'ja') outside defaults.py"] += 1
        c["Any in public signatures"] += sum(_annotation_anys(f) for f in _public_functions(tree))
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default="HEAD")
    a = ap.parse_args()
    before, after = counts(a.before), counts(a.after)
    print(f"{'count':45s} {a.before:>12s} {a.after:>12s}")
    for key in sorted(before.keys() | after.keys()):
        print(f"{key:45s} {before[key]:12d} {after[key]:12d}")


if __name__ == "__main__":
    main()
