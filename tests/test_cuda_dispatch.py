"""The CUDA backend's dispatch, errors, CPU twins and packaging: everything that needs no GPU."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray import backends
from emarray.engine import Runner
from emarray.engine.memory import parse_memory_limit
from emarray.errors import BackendUnavailableError, InvalidArgumentError
from emarray.kernel_table import CTYPES, FAMILIES
from emarray.ops.rescale import rescale_block_cpu

from .conftest import make_volume, tree_digest
from .helpers import PY

ROOT = Path(__file__).resolve().parents[1]


def _has_cupy() -> bool:
    try:
        import cupy  # noqa: F401
        return True
    except ImportError:
        return False


def test_importing_emarray_does_not_import_cupy_or_torch():
    code = ("import emarray, emarray.cuda.elementwise, sys; "
            "print(sorted(m for m in ('cupy', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_operator_with_a_backend_has_its_cpu_path_and_its_cuda_path_imports():
    """Every declared operator that takes --backend runs registered block functions: a CPU one,
    and (where declared) a CUDA one whose module imports without CuPy."""
    from emarray.spec import operators
    regs = backends.registered()
    with_backend = [op for op in operators().values() if "backend" in op.run and op.name != "predict"]
    assert {op.name for op in with_backend} >= {"threshold", "rescale", "smooth", "label",
                                                "pyramid", "sweep", "clip"}
    for op in with_backend:
        assert op.blocks, op.name
        assert callable(backends.implementation(op.blocks, "cpu")), op.name
    cuda = sorted(name for name, backend in regs if backend == "cuda")
    assert cuda == ["distance", "histogram", "label", "pool", "rescale", "smooth", "threshold"]
    for name in cuda:
        assert callable(backends.implementation(name, "cuda")), name  # imports, no CuPy needed


@pytest.mark.skipif(_has_cupy(), reason="CuPy is installed here")
@pytest.mark.parametrize("func", ["threshold", "rescale"])
def test_cuda_without_cupy_is_a_clear_error_before_work(tmp_path, func):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    before = tree_digest(tmp_path)
    args = (0.5,) if func == "threshold" else ((0.0, 1.0),)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'emarray\[gpu\]'"):
        getattr(emarray, func)(src, tmp_path / "o.zarr", *args, backend="cuda")
    assert tree_digest(tmp_path) == before
    assert backends.resolve_backend("auto") == "cpu"  # auto falls back


def test_cuda_scheduler_without_dask_cuda_is_named(tmp_path):
    try:
        import dask_cuda  # noqa: F401
        pytest.skip("dask-cuda is installed here")
    except ImportError:
        pass
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    with pytest.raises(BackendUnavailableError, match="dask-cuda"):
        emarray.threshold(src, tmp_path / "o.zarr", 0.5, scheduler="cuda")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("value,expect", [(None, None), (0.25, 0.25), ("0.5", 0.5), (1, 1.0),
                                          ("8GB", 8 * 10**9), ("8GiB", 8 * 2**30),
                                          ("512MiB", 512 * 2**20), ("1.5 GB", 15 * 10**8),
                                          (2**33, 2**33)])
def test_memory_limit_parsing_follows_dask(value, expect):
    from dask.utils import parse_bytes
    assert parse_memory_limit(value) == expect
    if isinstance(value, str) and value[-1] == "B":
        assert parse_memory_limit(value) == parse_bytes(value)  # the same rule as dask's


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, -0.5, float("nan"), "1B", "1kB", 2.5, True])
def test_bad_memory_limit_is_refused_before_work(tmp_path, bad):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    with pytest.raises(InvalidArgumentError, match="gpu memory limit"):
        emarray.threshold(src, tmp_path / "o.zarr", 0.5, backend="cpu", gpu_memory_limit=bad)
    assert not (tmp_path / "o.zarr").exists()


def test_instantiation_table_covers_the_issue_dtypes():
    for dt in ("uint8", "uint16", "int32", "float32", "float64"):
        assert np.dtype(dt) in CTYPES
    assert len(FAMILIES["threshold.cu"]) == 4 * len(CTYPES)  # gt, ge, lt, le


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "float64"])
def test_rescale_cpu_twin_matches_a_float64_reference(dtype):
    rng = np.random.default_rng(0)
    x = (rng.random(10007) * 300 - 20).astype(dtype)
    lo, hi = 10.0, 250.0
    got = rescale_block_cpu(x, lo=lo, hi=hi)
    ref = np.clip(np.rint((x.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255)
    exact = (x.astype(np.float64) - lo) * 255.0 / (hi - lo)
    near_half = np.abs(exact - np.floor(exact) - 0.5) < 1e-3  # float32 may round either way
    assert np.array_equal(got[~near_half], ref[~near_half].astype(np.uint8))
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("chunks", [(4, 4, 4), (3, 7, 5), (16, 16, 16)])
def test_rescale_operator_matches_numpy(tmp_path, chunks):
    a = (np.random.default_rng(2).random((11, 13, 17)) * 2 - 0.5).astype(np.float32)
    a[0, 0, :3] = [np.nan, np.inf, -np.inf]
    src = make_volume(tmp_path / "p.zarr", a, chunks)
    got = emarray.rescale(src, tmp_path / "u8.zarr", (0.0, 1.0)).read()
    # an independent float64 reference; float32 arithmetic may round a value within 1e-3 of
    # a half the other way
    exact = np.nan_to_num(a.astype(np.float64) * 255.0, nan=0.0, posinf=255, neginf=0)
    ref = np.clip(np.rint(exact), 0, 255).astype(np.uint8)
    near_half = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
    np.testing.assert_array_equal(got[~near_half], ref[~near_half])
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert got[0, 0, :3].tolist() == [0, 255, 0]
    with pytest.raises(InvalidArgumentError, match="lo < hi"):
        emarray.rescale(src, tmp_path / "x.zarr", (1.0, 1.0))


def test_rescale_cli(tmp_path):
    from click.testing import CliRunner

    from emarray.cli import cli
    a = np.linspace(-1, 2, 60, dtype=np.float32).reshape(3, 4, 5)
    make_volume(tmp_path / "p.zarr", a, 2)
    r = CliRunner().invoke(cli, ["-q", "rescale", str(tmp_path / "p.zarr"),
                                 str(tmp_path / "u8.zarr"), "--range", "0,1"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "u8.zarr").read(),
                                  rescale_block_cpu(a, lo=0, hi=1))


def test_wheel_ships_the_kernel_sources(tmp_path):
    """Build the wheel, install it in a clean virtual environment, find the sources from there."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("emarray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # install the wheel's files into the clean environment (no dependencies needed for this)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                        site, str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = ("import importlib.metadata as m, pathlib; d = m.distribution('emarray'); "
            "print('\\n'.join(f'{f}={pathlib.Path(d.locate_file(f)).read_text()!r}' for f in "
            "d.files if str(f).endswith(('.cu', '.cuh'))))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    found = dict(line.split("=", 1) for line in r.stdout.strip().splitlines())
    for src in (ROOT / "kernels").glob("*.cu*"):
        key = f"emarray/kernels/{src.name}"
        assert key in found, (key, sorted(found), names)
        assert eval(found[key]) == src.read_text()
    assert "emarray/kernel_table.py" in names


def test_auto_falls_back_to_the_cpu_for_dtypes_without_a_kernel(tmp_path, monkeypatch):
    from emarray import backends
    from emarray.errors import BackendUnavailableError
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert backends.resolve_backend("auto", "threshold", np.float32) == "cuda"
    for dt in (np.float16, np.uint64):
        assert backends.resolve_backend("auto", "threshold", dt) == "cpu"
        assert backends.resolve_backend("auto", "rescale", dt) == "cpu"
    a = np.linspace(0, 1, 64).astype(np.float16).reshape(4, 4, 4)
    src = make_volume(tmp_path / "h.zarr", a, 2)
    with pytest.raises(BackendUnavailableError, match="no threshold kernel for float16"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, backend="cuda")
    assert not (tmp_path / "m.zarr").exists()
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.5)  # auto: the CPU, and right
    np.testing.assert_array_equal(m.read(), (a > 0.5).astype(np.uint8))


def test_out_of_memory_halving_stops_at_the_minimum_and_never_redoes_work():
    from emarray.cuda.streaming import retry_in_halves
    from emarray.errors import GpuOutOfMemoryError

    class Oom(Exception):
        pass

    done_ranges: list[tuple[int, int]] = []

    def attempt(a, b, piece, done, fits=256):
        for s in range(a, b, piece):
            if piece > fits:
                raise Oom()
            done_ranges.append((s, min(s + piece, b)))
            done[0] = min(s + piece, b)

    retry_in_halves(attempt, 0, 10_000, 4096, 64, Oom, lambda: None)
    covered = np.zeros(10_000, int)
    for a, b in done_ranges:
        covered[a:b] += 1
    assert (covered == 1).all()  # every element exactly once: nothing redone
    recovered = []
    with pytest.raises(GpuOutOfMemoryError, match="the block at voxels 0:8.*pieces of 64"):
        retry_in_halves(lambda a, b, p, d: attempt(a, b, p, d, fits=0), 0, 10_000, 4096, 64, Oom,
                        lambda: recovered.append(1), "the block at voxels 0:8")
    assert len(recovered) == 7  # 4096 -> 64: six halvings, then the final failure


def test_the_gpu_memory_cap_is_split_between_processes_sharing_a_device():
    from emarray.engine.memory import split_memory_limit
    assert split_memory_limit(None, 1) == 0.5 and split_memory_limit(0.8, 4) == pytest.approx(0.2)
    assert split_memory_limit(8 * 2**30, 2) == 4 * 2**30
    assert Runner("processes", workers=3).processes_per_device() == 3
    assert Runner("threads", workers=3).processes_per_device() == 1


def test_kernels_are_found_from_a_plain_checkout(tmp_path):
    """PYTHONPATH=checkout with no install: emarray.kernels is not a package there."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in "
            "repr(f).lower()]; import emarray.cuda.modules as m; print(m.kernel_dir()); "
            "print(len(m.kernel_source('threshold.cu')) > 100)")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(root / "kernels"), "True"]
