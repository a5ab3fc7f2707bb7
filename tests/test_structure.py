"""The package's layering: no import cycles, the CPU path never imports the CUDA backend, no
module reaches into another's private names."""
from __future__ import annotations

import ast
import os
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "emarray"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for each import inside the package."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "emarray":
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            found += [(s, []) for s in subs]
            if len(subs) < len(names):
                found.append((target, [n for n in names if f"{target}.{n}" not in mods]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("emarray")]
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of any length: the strongly connected components of more than one
    module (Tarjan's algorithm, iterative).

    >>> cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    [['a', 'b', 'c']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def test_no_import_cycles():
    """No cycle of imports of any length (function-local imports count too), the package's
    ``__init__`` aside (it only re-exports)."""
    mods = _modules()
    edges = {m: {t for t, _ in _imports(m, p, mods) if t in mods and t != m and t != "emarray"}
             for m, p in mods.items() if m != "emarray"}
    assert not cycles(edges), cycles(edges)


def test_the_cycle_finder_finds_cycles_of_three():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_cpu_path_never_imports_the_cuda_backend():
    mods = _modules()
    for m, p in mods.items():
        if m.startswith(("emarray.cuda", "emarray.kernels")):
            continue
        bad = [t for t, _ in _imports(m, p, mods) if t.startswith("emarray.cuda")]
        assert not bad, (m, bad)


def test_no_module_takes_another_modules_private_names():
    mods = _modules()
    for m, p in mods.items():
        for target, names in _imports(m, p, mods):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, (m, target, private)


def test_modules_stay_small():
    big = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert max(big.values()) < 700, sorted(big.items(), key=lambda kv: -kv[1])[:3]


def test_module_names_are_unique_where_they_mislead():
    """No two modules named checkpoint.py or run.py (a model file vs job progress)."""
    names = [p.name for p in PKG.rglob("*.py") if p.name != "__init__.py"]
    for n in ("checkpoint.py", "run.py"):
        assert names.count(n) <= 1, n
    assert not os.path.exists(PKG / "ops" / "convert.py")
