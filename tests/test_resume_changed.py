"""Resume after an input changed: the output equals a fresh run on the current inputs, or the
job refuses in one line naming the changed input (issue 34, "silently wrong").

A job is stopped in a later stage (a block of that stage fails, retries 0: the progress is saved
exactly as a kill leaves it at its last save), one input chunk is rewritten, and the same
command is resumed; the result is compared with a fresh run and with an independent reference.
"""
from __future__ import annotations

import os
import shutil
import signal
import time

import cc3d
import numpy as np
import pytest

import emarray
from emarray.engine import stages as engine_stages
from emarray.engine.checkpoint import PROGRESS_DIR, Checkpoint
from emarray.errors import BlockFailedError, InputChangedError, ResumeMismatchError

from .conftest import make_volume
from .helpers import cli, markers_in, one_error_line, prob_map, slow_job, unfinished, wait_for

SYNC = {"scheduler": "synchronous", "retries": 0}


class Stop(RuntimeError):
    pass


@pytest.fixture
def stop_in(monkeypatch):
    """``stop_in(stage, after)``: the next job fails in block ``after + 1`` of ``stage`` (once:
    the jobs after it run as usual)."""
    def arm(stage: str, after: int) -> None:
        real = engine_stages.run_block
        seen = {"n": 0, "fired": False}

        def run_block(st, index):
            if st.name == stage and not seen["fired"]:
                seen["n"] += 1
                if seen["n"] > after:
                    seen["fired"] = True
                    raise Stop(f"stopped in {stage}")
            return real(st, index)
        monkeypatch.setattr(engine_stages, "run_block", run_block)
    yield arm
    monkeypatch.undo()


def rewrite(path, region, data) -> None:
    """Rewrite part of an input in place (a new chunk file: a new mtime and content)."""
    v = emarray.open_volume(path)
    v.write(region, data)


def blobs(shape=(16, 24, 24), seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, np.uint8)
    for _ in range(40):
        z, y, x = (int(rng.integers(0, s - 3)) for s in shape)
        a[z:z + 3, y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = 1
    return a


def test_label_stopped_in_relabel_then_input_changed_equals_a_fresh_run(tmp_path, stop_in):
    a = blobs()
    make_volume(tmp_path / "m.zarr", a, (8, 8, 8))
    stop_in("relabel", 9)
    with pytest.raises(BlockFailedError, match="stopped in relabel"):
        emarray.label(tmp_path / "m.zarr", tmp_path / "l.zarr", **SYNC)
    # one chunk changes: a bar joins objects across it and a new object appears
    b = a.copy()
    b[0:8, 0:8, 0:8] = 0
    b[2:6, 1:8, 3] = 1
    b[6, 6, 6] = 1
    rewrite(tmp_path / "m.zarr", (slice(0, 8), slice(0, 8), slice(0, 8)), b[0:8, 0:8, 0:8])
    emarray.label(tmp_path / "m.zarr", tmp_path / "l.zarr", resume=True, **SYNC)
    got = emarray.open_volume(tmp_path / "l.zarr").read()
    np.testing.assert_array_equal(got, cc3d.connected_components(b, connectivity=26))
    fresh = emarray.label(tmp_path / "m.zarr", tmp_path / "fresh.zarr", **SYNC).read()
    np.testing.assert_array_equal(got, fresh)


def test_watershed_stopped_in_the_flood_then_input_changed(tmp_path, stop_in):
    rng = np.random.default_rng(0)
    bnd = rng.random((12, 80, 80)).astype(np.float32)
    make_volume(tmp_path / "b.zarr", bnd, (6, 10, 20))  # 64 blocks of >= 1024 voxels
    kw = {"seed_method": "components", "threshold": 0.3, "relabel": True, "halo": 1}
    stop_in("watershed", 60)  # of 64 blocks: most were flooded before the change
    with pytest.raises(BlockFailedError):
        emarray.watershed(tmp_path / "b.zarr", tmp_path / "w.zarr", **kw, **SYNC)
    new = bnd.copy()
    new[0:6, 0:10, 0:20] = rng.random((6, 10, 20)).astype(np.float32) * 0.5
    rewrite(tmp_path / "b.zarr", (slice(0, 6), slice(0, 10), slice(0, 20)), new[0:6, 0:10, 0:20])
    emarray.watershed(tmp_path / "b.zarr", tmp_path / "w.zarr", resume=True, **kw, **SYNC)
    got = emarray.open_volume(tmp_path / "w.zarr").read()
    fresh = emarray.watershed(tmp_path / "b.zarr", tmp_path / "f.zarr", **kw, **SYNC).read()
    np.testing.assert_array_equal(got, fresh)
    ids = np.unique(got)
    assert ids[0] >= 1 and ids.tolist() == list(range(1, ids.size + 1))  # 1..N, none shared


def test_agglomerate_stopped_in_relabel_then_boundary_changed(tmp_path, stop_in):
    rng = np.random.default_rng(1)
    bnd = rng.random((12, 20, 20)).astype(np.float32)
    make_volume(tmp_path / "b.zarr", bnd, (6, 10, 10))
    emarray.watershed(tmp_path / "b.zarr", tmp_path / "w.zarr", seed_method="components",
                      threshold=0.3, relabel=True, **SYNC)
    stop_in("relabel", 3)
    with pytest.raises(BlockFailedError):
        emarray.agglomerate(tmp_path / "w.zarr", tmp_path / "b.zarr", tmp_path / "s.zarr",
                            threshold=0.5, **SYNC)
    new = bnd.copy()
    new[6:12, 10:20, 0:10] = 0.01  # one chunk of the map becomes all interior: more merges
    rewrite(tmp_path / "b.zarr", (slice(6, 12), slice(10, 20), slice(0, 10)),
            new[6:12, 10:20, 0:10])
    emarray.agglomerate(tmp_path / "w.zarr", tmp_path / "b.zarr", tmp_path / "s.zarr",
                        threshold=0.5, resume=True, **SYNC)
    got = emarray.open_volume(tmp_path / "s.zarr").read()
    fresh = emarray.agglomerate(tmp_path / "w.zarr", tmp_path / "b.zarr", tmp_path / "f.zarr",
                                threshold=0.5, **SYNC).read()
    np.testing.assert_array_equal(got, fresh)


@pytest.mark.parametrize("op", ["threshold", "label", "smooth"])
def test_resume_of_a_finished_output_whose_input_changed_is_refused(tmp_path, op):
    rng = np.random.default_rng(2)
    a = rng.random((8, 12, 12)).astype(np.float32)
    src = make_volume(tmp_path / "p.zarr", a if op != "label" else (a > 0.6).astype(np.uint8),
                      (4, 6, 6))
    run = {"threshold": lambda dst, **k: emarray.threshold(src, dst, 0.5, **k),
           "label": lambda dst, **k: emarray.label(src, dst, **k),
           "smooth": lambda dst, **k: emarray.smooth(src, dst, sigma=1.0, **k)}[op]
    run(tmp_path / "o.zarr", **SYNC)
    before = emarray.open_volume(tmp_path / "o.zarr").read()
    # unchanged: a resume of the finished output is a no-op
    run(tmp_path / "o.zarr", resume=True, **SYNC)
    # rewritten in place (the same values, even): the digest of its chunks moved on
    rewrite(tmp_path / "p.zarr", (slice(0, 4), slice(0, 6), slice(0, 6)),
            emarray.open_volume(tmp_path / "p.zarr").read()[:4, :6, :6] * 0 + 1)
    with pytest.raises(InputChangedError, match=r"p\.zarr changed since it was computed.*--overwrite"):
        run(tmp_path / "o.zarr", resume=True, **SYNC)
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "o.zarr").read(), before)
    run(tmp_path / "o.zarr", overwrite=True, **SYNC)  # what the message says works
    assert not np.array_equal(emarray.open_volume(tmp_path / "o.zarr").read(), before)


def test_a_finished_output_resumed_by_the_cli_names_the_changed_input(tmp_path):
    from click.testing import CliRunner

    from emarray.cli import cli
    a = (np.random.default_rng(4).random((8, 8, 8)) > 0.5).astype(np.uint8)
    make_volume(tmp_path / "m.zarr", a, 4)
    args = ["-q", "label", str(tmp_path / "m.zarr"), str(tmp_path / "l.zarr")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    rewrite(tmp_path / "m.zarr", (slice(0, 4),) * 3, 1 - a[:4, :4, :4])
    r = CliRunner().invoke(cli, args + ["--resume"])
    assert r.exit_code == 2
    err = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(err) == 1 and os.fspath(tmp_path / "m.zarr") in err[0] and "changed" in err[0]


def test_label_killed_in_relabel_by_sigkill_then_input_changed(tmp_path):
    """The same with a real SIGKILL of a `python -m emarray` process in its last stage."""
    import subprocess
    import sys

    from .conftest import kill_when
    a = blobs((16, 32, 32), seed=5)
    make_volume(tmp_path / "m.zarr", a, (4, 8, 8))  # 64 blocks
    trace = tmp_path / "trace.tsv"
    env = {**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0", "EMARRAY_SLOW_WRITES": "0.02",
           "EMARRAY_TRACE": str(trace)}
    cmd = [sys.executable, "-m", "emarray", "-q", "label", str(tmp_path / "m.zarr"),
           str(tmp_path / "l.zarr"), "--scheduler", "synchronous"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)

    def relabelled() -> int:
        return sum(ln.split("\t")[1] == "relabel"
                   for ln in (trace.read_text().splitlines() if trace.exists() else []))
    kill_when(proc, relabelled, 40)
    b = a.copy()
    b[4:8, 8:16, 8:16] = 1 - b[4:8, 8:16, 8:16]  # one chunk inverted: ids shift everywhere after
    rewrite(tmp_path / "m.zarr", (slice(4, 8), slice(8, 16), slice(8, 16)), b[4:8, 8:16, 8:16])
    r = cli(*cmd[3:], "--resume")  # in process
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "l.zarr").read(),
                                  cc3d.connected_components(b, connectivity=26))


def test_resume_after_the_input_changed_recomputes_what_it_read(tmp_path, many_chunks):
    a, _ = many_chunks
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr")
    wait_for(lambda: markers_in(tmp_path / "m.zarr") >= 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # a different layout for the output is named
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value",
                              "0.3", "--resume", "--chunks", "2,4,8"))
    assert "storage layout" in line
    # the input is rewritten in place (same shape and dtype, new content)
    time.sleep(0.01)
    shutil.rmtree(tmp_path / "p.zarr")
    make_volume(tmp_path / "p.zarr", 1 - a, (4, 4, 8))
    # round two: a resume computes again every finished block whose input chunks changed, so
    # the output is wholly the new input's (never a mix)
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3", "--resume")
    assert r.returncode == 0, r.stderr
    assert "read input chunks changed since the job started" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  ((1 - a) > 0.3).astype(np.uint8))


def test_resume_refuses_a_job_with_other_parameters_by_name(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    with pytest.raises(ResumeMismatchError, match="value was 0.5, this run has 0.7"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.7, resume=True)


@pytest.mark.parametrize("op", ["threshold", "smooth"])
def test_resume_computes_again_what_read_chunks_rewritten_in_place(tmp_path, monkeypatch, op):
    """A chunk of the input rewritten while the job was stopped: the finished blocks that read
    it (with the halo, for smooth) run again, so the output is wholly from the new input."""
    from scipy import ndimage
    a, out = unfinished(tmp_path, monkeypatch, op=op)
    done, _ = Checkpoint(out / PROGRESS_DIR).load(op, 64)
    first = next(i for i in range(64) if done[i])
    z, y, x = (int(i) * 4 for i in np.unravel_index(first, (4, 4, 4)))
    src = emarray.open_volume(tmp_path / "p.zarr")
    meta = (tmp_path / "p.zarr" / "0" / "zarr.json").stat().st_mtime_ns
    b = a.copy()
    b[z:z + 4, y:y + 4, x:x + 4] = 1 - b[z:z + 4, y:y + 4, x:x + 4]
    src.write((slice(z, z + 4), slice(y, y + 4), slice(x, x + 4)), b[z:z + 4, y:y + 4, x:x + 4])
    assert (tmp_path / "p.zarr" / "0" / "zarr.json").stat().st_mtime_ns == meta  # chunks only
    r = cli("-q", op, tmp_path / "p.zarr", out, *(("--value", "0.5") if op == "threshold"
                                                   else ("--sigma", "1")), "--resume")
    assert r.returncode == 0, r.stderr
    got = emarray.open_volume(out).read()
    if op == "threshold":
        np.testing.assert_array_equal(got, b > 0.5)
    else:
        np.testing.assert_allclose(got, ndimage.gaussian_filter(b, 1.0), atol=1e-6)
