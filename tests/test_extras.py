"""The lean install: with every extra's modules missing, emarray imports and its core jobs run
(help, info, threshold with a report, label, smooth, pyramid); a feature whose extra is missing
says which extra in one line (exit 2) before it writes anything; and every module-level import
of a third-party module in emarray/ is a core dependency of pyproject.toml.

A real core-only install is what a user gets; these tests make one in a process of this
environment by refusing the extras' modules at import (a meta path finder), which is what
Python does where they are not installed.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from .conftest import make_volume

import emarray
from emarray.errors import BackendUnavailableError
from emarray.extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: the module each third-party import names -> the declared distribution that brings it
#: (fsspec comes with dask, cloudpickle with distributed, anyio with starlette)
MODULE_DIST = {
    "numpy": "numpy", "dask": "dask", "distributed": "distributed", "zarr": "zarr",
    "numcodecs": "numcodecs", "google_crc32c": "google-crc32c", "click": "click", "tqdm": "tqdm",
    "psutil": "psutil", "numba": "numba", "yaml": "pyyaml", "scipy": "scipy",
    "tinybrain": "tinybrain", "cc3d": "connected-components-3d", "fastremap": "fastremap",
    "PIL": "pillow", "fsspec": "dask", "cloudpickle": "distributed",
    "tifffile": "tifffile", "imagecodecs": "imagecodecs", "h5py": "h5py",
    "tensorstore": "tensorstore", "edt": "edt", "skimage": "scikit-image", "zmesh": "zmesh",
    "pandas": "pandas", "matplotlib": "matplotlib", "s3fs": "s3fs", "gcsfs": "gcsfs",
    "aiohttp": "aiohttp", "neuroglancer": "neuroglancer", "selenium": "selenium",
    "starlette": "starlette", "anyio": "starlette", "uvicorn": "uvicorn", "jinja2": "jinja2",
    "torch": "torch", "kimimaro": "kimimaro", "dask_jobqueue": "dask-jobqueue",
    "cupy": "cupy-cuda12x", "cupyx": "cupy-cuda12x", "dask_cuda": "dask-cuda",
}
#: modules that belong to an extra's feature and are imported only after it is checked
EXTRA_MODULES = {"emarray/gui/": "gui", "emarray/models/unet.py": "train"}
#: what a core-only install lacks: every module an extra brings (jinja2 comes with
#: distributed, so a core install has it)
BLOCKED = sorted(set(EXTRAS) - {"jinja2"} | {"sklearn", "botocore", "aiobotocore", "networkx"})

#: runs the command lines given (JSON) in one process that cannot import ``BLOCKED``, and
#: writes each one's exit status, stdout and stderr (JSON) to a file
RUNNER = r"""
import contextlib, importlib.abc, io, json, sys
blocked, commands, result = set(json.loads(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}",
                                      name=name.split(".")[0])
        return None
sys.meta_path.insert(0, Missing())
import emarray, emarray.cli
runs = []
for argv in commands:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = ["emarray", *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            emarray.cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    runs.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
loaded = sorted({m.split(".")[0] for m in sys.modules} & blocked)
json.dump({"runs": runs, "loaded": loaded}, open(result, "w"))
"""


def run_without_extras(tmp_path: Path, *commands: list[str]) -> list[dict]:
    """Run ``commands`` (argument lists) in one process where no extra is installed."""
    result = tmp_path / "runs.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(BLOCKED), json.dumps(commands), str(result)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and result.exists(), proc.stderr[-3000:]
    got = json.loads(result.read_text())
    assert got["loaded"] == []
    return got["runs"]


def test_core_jobs_run_without_any_extra(tmp_path):
    rng = np.random.default_rng(3)
    prob = rng.random((8, 12, 16)).astype(np.float32)
    make_volume(tmp_path / "prob.zarr", prob, chunks=(4, 8, 8))
    runs = run_without_extras(
        tmp_path, ["--help"], ["info", "prob.zarr"],
        ["threshold", "prob.zarr", "mask.zarr", "--value", "0.6", "--report", "page.html"],
        ["label", "mask.zarr", "cells.zarr", "--connectivity", "6"],
        ["smooth", "prob.zarr", "smooth.zarr", "--sigma", "1"],
        ["pyramid", "cells.zarr", "--labels", "--levels", "2"])
    for r in runs:
        assert r["code"] == 0, r
    assert "threshold" in runs[0]["out"] and "watershed" in runs[0]["out"]
    assert "(8, 12, 16)" in runs[1]["out"] or "8, 12, 16" in runs[1]["out"]
    mask = emarray.open_volume(tmp_path / "mask.zarr").read()
    np.testing.assert_array_equal(mask, prob > 0.6)
    assert b"data:image/png;base64" in (tmp_path / "page.html").read_bytes()
    # label and smooth against SciPy, computed here where everything is installed
    from scipy import ndimage
    cells = emarray.open_volume(tmp_path / "cells.zarr").read()
    ref, n = ndimage.label(prob > 0.6)
    assert cells.max() == n and np.array_equal(cells > 0, ref > 0)
    for i in range(1, n + 1):  # the same objects, whatever their ids
        assert len(np.unique(cells[ref == i])) == 1
    assert len(emarray.open_volume(tmp_path / "cells.zarr").levels) > 1
    smooth = emarray.open_volume(tmp_path / "smooth.zarr").read()
    np.testing.assert_allclose(smooth, ndimage.gaussian_filter(prob, 1, mode="reflect"),
                               atol=1e-5)


#: a feature, its command line (paths in tmp_path), the extra it names and what it must not make
FEATURES = [
    ("watershed", ["watershed", "prob.zarr", "ws.zarr", "--threshold", "0.5"], "segment", "ws.zarr"),
    ("distance", ["distance", "prob.zarr", "dist.zarr", "--threshold", "0.5"], "segment",
     "dist.zarr"),
    ("ingest a TIFF", ["ingest", "stack.tif", "raw.zarr"], "formats", "raw.zarr"),
    ("export a TIFF", ["export", "prob.zarr", "prob.tif"], "formats", "prob.tif"),
    ("an N5 input", ["threshold", "vol.n5", "n5mask.zarr", "--value", "0.5"], "formats",
     "n5mask.zarr"),
    ("an s3:// input", ["info", "s3://bucket/prob.zarr"], "s3", None),
    ("an s3:// output", ["threshold", "prob.zarr", "s3://bucket/mask.zarr", "--value", "0.5"],
     "s3", None),
    ("sweep", ["sweep", "prob.zarr", "prob.zarr", "--out", "sweep"], "measure", "sweep"),
    ("the demo", ["demo", "--out", "demo"], "measure", "demo"),
    ("view", ["view", "prob.zarr"], "view", None),
    ("a recipe's step", ["run", "recipe.yaml"], "segment", "work"),
    ("gui", ["gui", "--no-open"], "gui", None),
]


def test_a_missing_extra_is_one_line_before_any_output(tmp_path):
    import tifffile
    prob = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    make_volume(tmp_path / "prob.zarr", prob, chunks=(4, 8, 8))
    tifffile.imwrite(tmp_path / "stack.tif", (prob * 255).astype(np.uint8), photometric="minisblack")
    (tmp_path / "vol.n5").mkdir()
    (tmp_path / "recipe.yaml").write_text(
        "workdir: work\nsteps:\n  data: {op: synthetic, shape: [8, 16, 16], chunks: 8}\n"
        "  ws: {op: watershed, boundary: data.prob, threshold: 0.5}\n")
    (tmp_path / "vol.n5" / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    before = sorted(p.name for p in tmp_path.iterdir())
    runs = run_without_extras(tmp_path, *[argv for _, argv, _, _ in FEATURES])
    for (what, _, extra, made), r in zip(FEATURES, runs):
        lines = r["err"].strip().splitlines()
        assert r["code"] == 2 and len(lines) == 1, (what, r)
        one = rf"error: (?:(?!: ).)* needs [\w.-]+: pip install 'emarray\[{extra}\]'"
        assert re.fullmatch(one, lines[0]), (what, lines)
        assert made is None or not (tmp_path / made).exists(), what
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "runs.json"])


def test_require_names_the_extra_or_the_broken_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage", None)  # what Python does for a missing module
    with pytest.raises(BackendUnavailableError) as e:
        require("skimage", "emarray watershed")
    assert str(e.value) == "emarray watershed needs scikit-image: pip install 'emarray[segment]'"
    # the operator's declared needs are checked before its arguments are even looked at
    with pytest.raises(BackendUnavailableError) as e:
        emarray.watershed(tmp_path / "nowhere.zarr", tmp_path / "ws.zarr", threshold=0.5)
    assert str(e.value) == "emarray watershed needs scikit-image: pip install 'emarray[segment]'"
    # an installed module that fails to import for another reason says why, besides the extra
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXTRAS, "brokenpkg", ("brokenpkg", "segment"))
    with pytest.raises(BackendUnavailableError) as e:
        require("brokenpkg", "emarray mesh")
    assert str(e.value).startswith("emarray mesh needs brokenpkg: pip install 'emarray[segment]' "
                                   "(ModuleNotFoundError: No module named 'no_such_dependency_xyz')")


# -- what pyproject.toml declares --------------------------------------------------------------
def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower()


def _extra(name: str) -> set[str]:
    """The distributions an extra installs, the extras it names included."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        inner = re.fullmatch(r"emarray\[(.*)\]", req)
        out |= set().union(*(_extra(e) for e in inner[1].split(","))) if inner else {_name(req)}
    return out


CORE = {_name(r) for r in PYPROJECT["project"]["dependencies"]} | {"fsspec", "jinja2"}


def _imports(path: Path, module_level: bool) -> set[tuple[str, int]]:
    """The third-party top modules ``path`` imports (with a line): at module level (not in a
    function's body), or anywhere."""
    tree = ast.parse(path.read_text())
    found: set[tuple[str, int]] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                found.update((a.name.split(".")[0], child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                found.add((child.module.split(".")[0], child.lineno))
            visit(child)
    visit(tree)
    return {(m, n) for m, n in found
            if m not in sys.stdlib_module_names and m not in ("emarray", "__future__")}


def _modules() -> list[Path]:
    return sorted((ROOT / "emarray").rglob("*.py"))


def test_module_level_imports_are_core_dependencies():
    wrong = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        allowed = set(CORE)
        for prefix, extra in EXTRA_MODULES.items():
            if rel.startswith(prefix):
                allowed |= _extra(extra)
        for module, line in _imports(path, module_level=True):
            if MODULE_DIST.get(module) not in allowed:
                wrong.append(f"{rel}:{line} imports {module} at module level, not a core "
                             "dependency: import it in the function that needs it, through "
                             "emarray.extras.require")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_import_is_declared_in_core_or_an_extra():
    extras = [e for e in PYPROJECT["project"]["optional-dependencies"] if e not in ("test", "dev")]
    declared = set(CORE).union(*(_extra(e) for e in extras))
    unknown = sorted({f"{path.relative_to(ROOT)}:{line} {module}"
                      for path in _modules() for module, line in _imports(path, False)
                      if MODULE_DIST.get(module) not in declared})
    assert not unknown, unknown
    # every module emarray.extras names an extra for: that extra installs its distribution
    for module, (dist, extra) in EXTRAS.items():
        assert dist in _extra(extra), (module, dist, extra)


def test_the_test_command_keeps_the_exact_torch_and_the_extras_take_a_range():
    deps = PYPROJECT["project"]["optional-dependencies"]
    assert "torch==2.13.0" in deps["test"]
    assert not any(r.startswith("torch==") for e, rs in deps.items() if e not in ("test", "dev")
                   for r in rs)
    # the test command installs every extra's distributions except the GPU's and gcs's
    # (no device, no Google bucket here)
    tested = _extra("test")
    for extra in set(deps) - {"test", "dev", "gpu", "gcs", "all"}:
        assert _extra(extra) - {"torch"} <= tested, extra
    assert _extra("all") == set().union(*(_extra(e) for e in deps if e not in ("test", "dev", "gpu",
                                                                               "all")))
