"""Jobs on a real dask cluster: relative paths reach workers in another folder, an unreachable
scheduler or a cluster whose workers all die is one line, distributed logs stay quiet."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tifffile

import emarray
from emarray.engine.checkpoint import PROGRESS_DIR, Checkpoint
from emarray.errors import InputChangedError, SchedulerUnreachableError

from .conftest import make_volume, real_dask_cluster
from .helpers import PY, cli, one_error_line, prob_map, wait_for


@pytest.mark.cluster
def test_relative_paths_reach_a_worker_in_another_directory(tmp_path, dask_cluster, monkeypatch):
    address, elsewhere = dask_cluster  # the session's cluster: its workers run in `elsewhere`
    a, src = prob_map(tmp_path / "p.zarr")
    # the workers' directory holds a same-named store of another shape
    other = make_volume(elsewhere / "p.zarr", np.zeros((2, 2, 2), np.float32), 2)
    try:
        r = cli("-q", "threshold", "p.zarr", "m.zarr", "--value", "0.5", "--scheduler", address,
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                      (a > 0.5).astype(np.uint8))
        assert not (elsewhere / "m.zarr").exists()
        # a job whose input a worker reads differently is refused before any work
        import dataclasses
        monkeypatch.chdir(tmp_path)
        relative = dataclasses.replace(src, url="p.zarr", _handle=None)
        with pytest.raises(InputChangedError, match=re.escape(str(elsewhere))):
            emarray.threshold(relative, tmp_path / "m2.zarr", 0.5, scheduler=address)
        assert not (tmp_path / "m2.zarr").exists()
        assert other.read().shape == (2, 2, 2)
    finally:
        shutil.rmtree(elsewhere / "p.zarr")  # the session's cluster as it was


def test_unreachable_scheduler_is_one_line_within_the_timeout(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value",
                              "0.5", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"))
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9 within 1 s" in line
    assert not (tmp_path / "m.zarr").exists()
    with pytest.raises(SchedulerUnreachableError):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, scheduler="tcp://127.0.0.1:9",
                          connect_timeout=0.5)


@pytest.mark.cluster
def test_distributed_ingest_reads_a_relative_source_from_the_client_folder(tmp_path,
                                                                           dask_cluster):
    address, elsewhere = dask_cluster  # the session's cluster: its workers run in `elsewhere`
    here = tmp_path / "here"
    (here / "slices").mkdir(parents=True)
    a = np.random.default_rng(4).integers(0, 255, (6, 20, 24), dtype=np.uint8)
    tifffile.imwrite(here / "stack.tif", a, photometric="minisblack")
    for z in range(a.shape[0]):
        tifffile.imwrite(here / "slices" / f"{z}.tif", a[z], photometric="minisblack")
    # a decoy with the same names where the workers run: reading it would be silently wrong
    tifffile.imwrite(elsewhere / "stack.tif", a[::-1].copy(), photometric="minisblack")
    (elsewhere / "slices").mkdir()
    tifffile.imwrite(elsewhere / "slices" / "0.tif", a[1], photometric="minisblack")
    try:
        for src, dst in (("stack.tif", "a.zarr"), ("slices", "b.zarr")):
            r = cli("-q", "ingest", src, dst, "--chunks", "2,8,8", "--voxel-size", "1,1,1",
                    "--scheduler", address, cwd=here)
            assert r.returncode == 0, r.stderr
            np.testing.assert_array_equal(emarray.open_volume(here / dst).read(), a)
    finally:  # the session's cluster as it was
        (elsewhere / "stack.tif").unlink()
        shutil.rmtree(elsewhere / "slices")


@pytest.mark.cluster
def test_a_job_whose_workers_all_die_stops_with_one_line(tmp_path):
    import psutil
    a = np.random.default_rng(6).random((32, 48, 64)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 4, 8))
    procs: list = []
    with real_dask_cluster(tmp_path, workers=1, procs=procs) as address:
        job = subprocess.Popen(
            [PY, "-m", "emarray", "-q", "smooth", str(tmp_path / "p.zarr"), str(tmp_path / "s.zarr"),
             "--sigma", "1", "--scheduler", address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "EMARRAY_WORKER_TIMEOUT": "4", "EMARRAY_CHECKPOINT_SECONDS": "0"})
        progress = tmp_path / "s.zarr" / PROGRESS_DIR
        wait_for(lambda: progress.exists() and Checkpoint(progress).done_count("smooth") > 3, job)
        nanny = psutil.Process(procs[1].pid)
        for p in [nanny] + nanny.children(recursive=True):  # the nanny first: it restarts workers
            p.kill()
        job.wait(120)  # it ends (wall-clock figures belong in benchmarks, not here)
        err = job.stderr.read()
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert job.returncode == 2 and len(lines) == 1, err
        assert "every dask worker" in lines[0] and "--resume" in lines[0]
    r = cli("-q", "smooth", tmp_path / "p.zarr", tmp_path / "s.zarr", "--sigma", "1", "--resume")
    assert r.returncode == 0, r.stderr
    from scipy import ndimage
    np.testing.assert_allclose(emarray.open_volume(tmp_path / "s.zarr").read(),
                               ndimage.gaussian_filter(a, 1.0), atol=1e-6)


@pytest.mark.cluster
def test_local_cluster_prints_no_distributed_logs(tmp_path):
    make_volume(tmp_path / "p.zarr", np.ones((8, 8, 8), np.float32), 4)
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5",
            "--scheduler", "local-cluster", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "distributed" not in r.stderr and "INFO" not in r.stderr
    assert "dask dashboard: http" in r.stderr
