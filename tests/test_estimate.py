"""``--estimate`` (issue 38): a sample of the blocks, into a scratch folder, and the cost of the
whole run; nothing the user has is touched. The estimate-vs-actual table for several operators
and sizes comes from ``benchmarks/estimate_compare.py`` (timings are not asserted tightly here:
the machine running the tests is shared).
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.chunk_cache import CACHE
from emarray.cli import cli as main
from emarray.engine import RunOptions, estimate
from emarray.engine.estimate import Estimate, Session, StageCost, spread, walltime
from emarray.errors import InvalidArgumentError
from emarray.spec import operators

from .conftest import make_volume, tree_digest


@pytest.fixture(autouse=True)
def short_samples(request, monkeypatch):
    """Samples of a fraction of a second, not two: the tests' volumes are small."""
    monkeypatch.setattr(estimate, "MIN_SECONDS", 0.1)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32)


def test_cli_estimate_prints_the_cost_and_touches_nothing(tmp_path):
    src = make_volume(tmp_path / "p.zarr", blobs((16, 64, 64)), (8, 16, 16))
    before, files = tree_digest(tmp_path), listing(tmp_path)
    r = run_cli("threshold", src.url, tmp_path / "m.zarr", "--value", "0.5", "--estimate",
                "--workers", "2")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert re.fullmatch(r"estimate for threshold: (\d+) of 32 blocks sampled, spread over the "
                        r"volume", lines[0]) and 8 <= int(lines[0].split()[3]) <= 32
    assert any(x.startswith("  wall time: ") and "with threads, 2 worker threads" in x
               for x in lines)
    assert any(x.startswith("  peak memory per worker: ") for x in lines)
    assert any(x.startswith("  read: ") and "decompressed" in x for x in lines)
    assert any(x.startswith("  output storage: ") for x in lines)
    assert listing(tmp_path) == files and tree_digest(tmp_path) == before  # no output, no scratch
    # an output that exists stays as it is (no --overwrite needed: it is never written)
    emarray.threshold(src, tmp_path / "m.zarr", 0.2)
    before = tree_digest(tmp_path)
    assert run_cli("threshold", src.url, tmp_path / "m.zarr", "--value", "0.5",
                   "--estimate").exit_code == 0
    assert tree_digest(tmp_path) == before


def test_estimate_against_a_measured_run(tmp_path, monkeypatch):
    """Smoothing (halo reads through the chunk cache) of 64 blocks, 10 of them sampled: the
    bytes read are exact, the output's size is within 30 % of the real one, and the time and
    memory are of the measured run's order (within a factor 3: the machine running the tests
    is shared; the 30 % table is the benchmark's)."""
    a = blobs((64, 256, 256), seed=1)
    src = make_volume(tmp_path / "p.zarr", a, (16, 64, 64))
    emarray.smooth(src, tmp_path / "warm.zarr", 2.0)  # imports and compiles: warm for both
    monkeypatch.setattr(estimate, "MAX_SAMPLE", 10)
    monkeypatch.setattr(estimate, "MIN_SECONDS", 2.0)
    CACHE.clear()
    est = emarray.smooth(src, tmp_path / "s.zarr", 2.0, estimate=True, scheduler="synchronous")
    assert isinstance(est, Estimate) and not (tmp_path / "s.zarr").exists()
    assert est.stages[0].sampled == 10 and est.stages[0].blocks == 64
    # bytes read: every block's read region (grown by the halo, clipped), counted here
    halo = int(4 * 2.0 + 0.5)
    grid = emarray.engine.BlockGrid(a.shape, (16, 64, 64))
    want = 0
    for idx in grid.indices():
        region = grid.region(idx)
        want += np.prod([min(s.stop + halo, n) - max(s.start - halo, 0)
                         for s, n in zip(region, a.shape)]) * 4
    assert est.read_bytes == want
    CACHE.clear()
    t0 = time.perf_counter()
    out = emarray.smooth(src, tmp_path / "s.zarr", 2.0, scheduler="synchronous")
    took = time.perf_counter() - t0
    stored = sum(f.stat().st_size for f in (tmp_path / "s.zarr" / "0").rglob("*")
                 if f.is_file() and f.name != "zarr.json")
    assert out.shape == a.shape
    assert abs(est.output_bytes - stored) <= 0.3 * stored
    assert took / 3 <= est.seconds <= took * 3, (est.seconds, took)
    assert est.memory_per_worker >= est.base_memory + est.stages[0].block_memory
    assert est.stages[0].block_memory >= a[:16, :64 + 2 * halo, :64 + 2 * halo].nbytes


def test_a_multi_stage_operator_and_a_reduction_are_estimated_stage_by_stage(tmp_path):
    mask = (blobs((16, 64, 64), seed=2) > 0.7).astype(np.uint8)
    src = make_volume(tmp_path / "m.zarr", mask, (8, 16, 16))
    truth = make_volume(tmp_path / "t.zarr", mask, (8, 16, 16))
    files = listing(tmp_path)
    est = emarray.label(src, tmp_path / "l.zarr", estimate=True)
    assert [s.name for s in est.stages][:2] == ["label", "offsets"] and len(est.stages) >= 3
    assert est.output_bytes is not None and est.output_bytes > 0
    est = emarray.sweep(src, truth, thresholds=4, out=tmp_path / "sw", estimate=True)
    assert [s.name for s in est.stages] == ["sweep"] and est.output_bytes is None
    assert listing(tmp_path) == files


def test_a_recipe_is_estimated_step_by_step_in_a_scratch_workdir(tmp_path):
    recipe = {"steps": {"data": {"op": "synthetic", "shape": [16, 64, 64], "chunks": 16},
                        "mask": {"op": "threshold", "src": "data.prob", "value": 0.5},
                        "cells": {"op": "label", "src": "mask"}}}
    said: list[str] = []
    r = emarray.run_pipeline(recipe, workdir=tmp_path / "work", estimate=True, echo=said.append)
    names = [s.name for s in r.estimate.stages]
    assert names[:4] == ["data: synthetic raw", "data: synthetic truth", "data: synthetic prob",
                         "mask: threshold"] and names[4].startswith("cells: ")
    assert said[0].startswith("estimate for recipe ")
    assert listing(tmp_path) == []  # no workdir, no scratch


def test_a_killed_estimate_s_scratch_is_removed_by_the_next_and_nothing_else(tmp_path):
    import socket
    import subprocess
    src = make_volume(tmp_path / "p.zarr", blobs((8, 32, 32)), 8)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process of this machine that has ended
    host = socket.gethostname()
    stale = tmp_path / f".m.zarr.emarray-estimate-{host}-{gone.pid}-0"
    elsewhere = tmp_path / f".m.zarr.emarray-estimate-another-host-{gone.pid}-0"
    mine = tmp_path / ".m.zarr.notes"
    for folder in (stale, elsewhere, mine):
        (folder / "m.zarr").mkdir(parents=True)
    emarray.threshold(src, tmp_path / "m.zarr", 0.5, estimate=True)
    assert listing(tmp_path) == sorted([elsewhere.name, mine.name, "p.zarr"])


def test_estimate_is_refused_with_resume_and_for_an_operator_that_writes_into_its_input(tmp_path):
    with pytest.raises(InvalidArgumentError, match="either estimate or resume"):
        RunOptions(estimate=True, resume=True)
    src = make_volume(tmp_path / "p.zarr", blobs((8, 32, 32)), 8)
    before = tree_digest(tmp_path)
    r = run_cli("pyramid", src.url, "--levels", "1", "--estimate")
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: pyramid writes into its input, which --estimate never touches; estimate it on "
        "a copy of the input"]
    r = run_cli("threshold", src.url, tmp_path / "m.zarr", "--value", "0.5", "--estimate",
                "--resume")
    assert r.exit_code == 2 and "either estimate or resume" in r.output
    assert tree_digest(tmp_path) == before


def test_every_operator_that_runs_blocks_takes_estimate():
    ops = [op for op in operators().values() if "scheduler" in op.run]
    assert ops and all("estimate" in op.run for op in ops)


def test_slurm_request_from_the_estimate():
    s = Session("threshold")
    s.runner = {"scheduler": "slurm", "workers": 4, "threads": 1, "base": 2 * 10**9,
                "slurm": {"processes": 2}}
    s.stages.append(StageCost("threshold", 100, 10, 3000.0, 10**9, 0))
    e = s.result()
    assert e.memory_per_worker == 3 * 10**9
    # 1.5 x the time, in whole minutes; 1.25 x the memory of the job's two workers, in GB
    assert e.slurm == {"walltime": walltime(e.seconds * 1.5), "memory": "8GB", "processes": 2}
    assert walltime(4500.5) == "01:16:00" and walltime(4500) == "01:15:00"
    assert walltime(30) == "00:10:00"
    assert any("--slurm-walltime 01:" in x for x in e.lines())


def test_the_sample_is_spread_over_the_grid_and_repeatable():
    assert spread(1000, 5) == [100, 300, 500, 700, 900]
    assert spread(4, 10) == [0, 1, 2, 3]
