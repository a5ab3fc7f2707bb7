"""Each defect found when emarray was attacked, reproduced for real (kills, links, workers, mounts).

Numbers in the test names follow the hardening issue's list.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray.engine import Runner
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.errors import (IncompleteVolumeError, InputChangedError, InvalidArgumentError,
                            ResumeMismatchError, SchedulerUnreachableError)

from .conftest import make_volume, real_dask_cluster, tree_digest
from .helpers import PY, cli, markers_in, one_error_line, prob_map, slow_job, wait_for


@pytest.fixture
def many_chunks(tmp_path):
    a = np.random.default_rng(6).random((32, 48, 64)).astype(np.float32)
    return a, make_volume(tmp_path / "p.zarr", a, (4, 4, 8))  # 768 tiny chunks


# -- data loss --------------------------------------------------------------------------------
def test_1_input_through_a_symlink_is_never_overwritten(tmp_path):
    a, _ = prob_map(tmp_path / "in.zarr")
    d = tmp_path / "d"
    d.mkdir()
    (d / "link.zarr").symlink_to(tmp_path / "in.zarr")
    (d / "in.zarr").symlink_to(tmp_path / "in.zarr")
    before = tree_digest(tmp_path / "in.zarr")
    for dst in (d / "in.zarr", tmp_path / "in.zarr", tmp_path / "in.zarr" / "0"):
        line = one_error_line(cli("threshold", d / "link.zarr", dst, "--value", "0.5",
                                  "--overwrite"))
        assert "overlaps the input" in line
    assert tree_digest(tmp_path / "in.zarr") == before
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "in.zarr").read(), a)


def test_1_an_output_reached_through_a_link_is_replaced_at_its_target(tmp_path):
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "real.zarr", 0.5)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "link.zarr", "--value", "0.8",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "link.zarr").is_symlink()  # the user's link stays a link
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "real.zarr").read(),
                                  (a > 0.8).astype(np.uint8))


def test_2_overwrite_killed_mid_job_keeps_the_old_output(tmp_path, many_chunks):
    a, src = many_chunks
    old = emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    before = tree_digest(tmp_path / "m.zarr")
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr", "--overwrite")
    new = tmp_path / ".m.zarr.emarray-new"
    wait_for(lambda: markers_in(new) >= 50, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the old output is whole and still answers
    assert tree_digest(tmp_path / "m.zarr") == before
    np.testing.assert_array_equal(old.read(), (a > 0.9).astype(np.uint8))
    # a plain rerun says it exists; the same --overwrite command finishes the job
    assert "already exists" in one_error_line(cli("threshold", tmp_path / "p.zarr",
                                                  tmp_path / "m.zarr", "--value", "0.3"))
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.3).astype(np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "p.zarr"]


def test_2_overwrite_killed_mid_job_can_be_resumed(tmp_path, many_chunks):
    a, src = many_chunks
    emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr", "--overwrite")
    new = tmp_path / ".m.zarr.emarray-new"
    wait_for(lambda: markers_in(new) >= 50, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3", "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming:" in r.stderr and " of 768 blocks already done" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.3).astype(np.uint8))


@pytest.mark.parametrize("state", ["old-set-aside-new-done", "old-set-aside-new-unfinished",
                                   "old-half-deleted"])
def test_2_a_replace_killed_during_the_swap_is_recovered_by_the_same_command(tmp_path, state):
    """The three states a kill between the renames or during the delete can leave."""
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    emarray.threshold(src, tmp_path / "n.zarr", 0.6)
    old, new = tmp_path / ".m.zarr.emarray-old", tmp_path / ".m.zarr.emarray-new"
    if state == "old-half-deleted":
        os.rename(tmp_path / "n.zarr", new)
        shutil.copytree(tmp_path / "m.zarr", old)
        (old / "zarr.json").unlink()
        os.rename(new, tmp_path / "m.zarr.tmp")
        shutil.rmtree(tmp_path / "m.zarr")
        os.rename(tmp_path / "m.zarr.tmp", tmp_path / "m.zarr")
        want = (a > 0.6)
    else:
        os.rename(tmp_path / "m.zarr", old)
        os.rename(tmp_path / "n.zarr", new)
        if state == "old-set-aside-new-unfinished":
            meta = json.loads((new / "zarr.json").read_text())
            meta["attributes"]["emarray"]["complete"] = False
            (new / "zarr.json").write_text(json.dumps(meta))
        want = (a > 0.6) if state == "old-set-aside-new-done" else (a > 0.9)
    # the user runs the same command again; first the interrupted swap is settled
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "x.zarr", "--value", "0.1")
    assert r.returncode == 0  # unrelated outputs are unaffected
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3", "--resume")
    assert r.returncode == 2 and "another job" in r.stderr  # settled, and the job named
    assert not old.exists()
    # an unfinished new output stays beside, for its own command's --resume
    assert new.exists() == (state == "old-set-aside-new-unfinished")
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  want.astype(np.uint8))
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "p.zarr", "x.zarr"]


def test_3_overwrite_never_deletes_what_emarray_did_not_make(tmp_path):
    import zarr
    _, src = prob_map(tmp_path / "p.zarr")
    # a folder holding a zarr.json beside a user's work
    thesis = tmp_path / "thesis"
    (thesis / "images").mkdir(parents=True)
    (thesis / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                  "attributes": {}}))
    (thesis / "thesis.tex").write_text("\\chapter{Results}")
    # a store another tool made, with a README beside its arrays
    other = tmp_path / "other.zarr"
    zarr.create_array(str(other / "raw"), shape=(4, 4), dtype="u1", chunks=(2, 2))
    zarr.open_group(str(other), mode="a")
    (other / "README.md").write_text("our raw data")
    # an emarray output into which a user put a file
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    (tmp_path / "m.zarr" / "notes.txt").write_text("mine")
    for dst, why in ((thesis, "not made by emarray"), (other, "not made by emarray"),
                     (tmp_path / "m.zarr", "notes.txt")):
        before = tree_digest(dst)
        line = one_error_line(cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.5",
                                  "--overwrite"))
        assert "refusing to overwrite" in line and why in line
        assert tree_digest(dst) == before


def test_3_demo_rerun_keeps_the_users_files(tmp_path):
    out = tmp_path / "demo"
    r = cli("-q", "demo", "--size", "16,32,32", "--out", out)
    assert r.returncode == 0, r.stderr
    (out / "notes.txt").write_text("my notes")
    r = cli("-q", "demo", "--size", "16,32,32", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "mask.zarr").is_dir() and (out / "sweep" / "sweep.png").is_file()


def test_4_two_jobs_into_one_output_the_second_names_the_first(tmp_path):
    a = np.random.default_rng(7).random((32, 48, 64)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (2, 2, 4))  # 6,144 tiny chunks: many seconds
    first = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr")
    wait_for(lambda: markers_in(tmp_path / "m.zarr") >= 5, first)
    for flag in ((), ("--overwrite",), ("--resume",)):
        line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr",
                                  "--value", "0.3", *flag))
        assert "being written by another emarray job" in line and f"pid {first.pid}" in line
    assert first.wait(120) == 0, first.stderr.read()
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.3).astype(np.uint8))
    assert not (tmp_path / ".m.zarr.emarray-lock").exists()


# -- wrong output with no error ---------------------------------------------------------------
@pytest.fixture
def worker_elsewhere(tmp_path):
    """A real `dask scheduler` and one `dask worker` whose working directory is another folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with real_dask_cluster(tmp_path, workers=1, cwd=elsewhere) as address:
        yield address, elsewhere


@pytest.mark.cluster
def test_5_relative_paths_reach_a_worker_in_another_directory(tmp_path, worker_elsewhere):
    address, elsewhere = worker_elsewhere
    a, src = prob_map(tmp_path / "p.zarr")
    # the worker's directory holds a same-named store of another shape
    other = make_volume(elsewhere / "p.zarr", np.zeros((2, 2, 2), np.float32), 2)
    r = cli("-q", "threshold", "p.zarr", "m.zarr", "--value", "0.5", "--scheduler", address,
            cwd=tmp_path, real=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.5).astype(np.uint8))
    assert not (elsewhere / "m.zarr").exists()
    # a job whose input a worker reads differently is refused before any work
    import dataclasses
    os.chdir(tmp_path)
    try:
        relative = dataclasses.replace(src, url="p.zarr", _handle=None)
        with pytest.raises(InputChangedError, match="elsewhere"):
            emarray.threshold(relative, tmp_path / "m2.zarr", 0.5, scheduler=address)
    finally:
        os.chdir(elsewhere.parent.parent)
    assert not (tmp_path / "m2.zarr").exists()
    assert other.read().shape == (2, 2, 2)


def test_6_an_unfinished_output_is_refused_as_input(tmp_path, many_chunks):
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr")
    wait_for(lambda: markers_in(tmp_path / "m.zarr") >= 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = tmp_path / "m.zarr"
    for args in (("threshold", m, tmp_path / "t.zarr", "--value", "0.5"),
                 ("rescale", m, tmp_path / "r.zarr", "--range", "0,1"),
                 ("export", m, tmp_path / "m.tif"),
                 ("sweep", m, m, "--out", tmp_path / "s")):
        line = one_error_line(cli(*args))
        assert "unfinished output of an interrupted emarray threshold job" in line
        assert "--resume" in line and "--allow-incomplete" in line
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "m.tif").exists()
    r = cli("info", m)
    assert r.returncode == 0 and "UNFINISHED" in r.stdout and "--resume" in r.stdout
    r = cli("-q", "export", m, tmp_path / "m.tif", "--allow-incomplete")
    assert r.returncode == 0, r.stderr
    with pytest.raises(IncompleteVolumeError):
        emarray.threshold(m, tmp_path / "t.zarr", 0.5)


def test_7_resume_after_the_input_changed_recomputes_what_it_read(tmp_path, many_chunks):
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


def test_7_resume_refuses_a_job_with_other_parameters_by_name(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    with pytest.raises(ResumeMismatchError, match="value was 0.5, this run has 0.7"):
        emarray.threshold(src, tmp_path / "m.zarr", 0.7, resume=True)


def test_8_rescale_over_the_whole_float32_range(tmp_path):
    a = np.array([-3.4e38, -1e38, 0.0, 1e38, 3.4e38, 1.0], np.float32).reshape(1, 2, 3)
    src = make_volume(tmp_path / "p.zarr", a, 2)
    got = emarray.rescale(src, tmp_path / "u8.zarr", (-3.4e38, 3.4e38)).read()
    ref = np.rint((a.astype(np.float64) + 3.4e38) * 255 / 6.8e38).clip(0, 255)
    np.testing.assert_array_equal(got, ref.astype(np.uint8))
    assert got.ravel().tolist() == [0, 90, 128, 165, 255, 128]
    for lo, hi in ((-1e39, 1.0), (0.0, 1e39), (1.0, 1.0 + 1e-9)):
        with pytest.raises(InvalidArgumentError, match="float32"):
            emarray.rescale(src, tmp_path / "x.zarr", (lo, hi))
    assert not (tmp_path / "x.zarr").exists()


def test_9_a_single_threshold_sweep_over_infinities_does_not_crash(tmp_path):
    p = np.array([[[np.inf, -np.inf, 0.2, 0.7, np.nan, np.inf]]], np.float32)
    t = np.array([[[1, 0, 0, 1, 1, 0]]], np.uint8)
    pv, tv = make_volume(tmp_path / "p.zarr", p, 3), make_volume(tmp_path / "t.zarr", t, 3)
    df = emarray.sweep(pv, tv, values=[0.5])
    assert df[["tp", "fp", "fn", "tn"]].values.tolist() == [[2, 1, 0, 2]]
    assert df.attrs["nan_voxels"] == {0: 1}


def test_9_numba_kernels_under_bounds_checking():
    """The sweep kernels run with NUMBA_BOUNDSCHECK=1: an out-of-range index raises."""
    code = r"""
import numpy as np
from emarray.ops._histogram_cpu import bucket_histogram, level_histogram, lookup_table
x = np.array([np.inf, -np.inf, np.nan, 0.5, 1e30, -1e30, 0.25, 0.75], np.float32)
cls = np.array([0, 1, 2, 0, 1, 0, 1, 0], np.uint8)
for ts in ([0.5], [0.25, 0.25], [0.0, 0.5, 1.0], list(np.linspace(0, 1, 101))):
    ts = np.array(ts, np.float32)
    tab, t0, inv = lookup_table(ts)
    out = np.zeros((ts.size + 1, 3), np.int64); nan = np.zeros(3, np.int64)
    bucket_histogram(x, cls, ts, tab, t0, inv, out, nan)
    ref = np.searchsorted(ts, x[~np.isnan(x)], side="left")
    assert out.sum() == 7 and nan.sum() == 1
    assert (np.bincount(ref, minlength=ts.size + 1) == out.sum(axis=1)).all()
u = np.arange(256, dtype=np.uint8); out = np.zeros((256, 3), np.int64)
level_histogram(u, np.zeros(256, np.uint8), out)
import numba
@numba.njit
def past_the_end(a):
    return a[a.size]
try:
    past_the_end(np.zeros(3))
except IndexError:
    print("checked")
"""
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1"}
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "checked"  # bounds checking really was on


def test_10_every_ome_unit_converts_as_pint_says():
    pint = pytest.importorskip("pint")
    from emarray._normalize import SPACE_UNITS, micrometres
    ureg = pint.UnitRegistry()
    for unit in SPACE_UNITS:
        want = ureg.Quantity(1, unit).to("micrometer").magnitude
        assert micrometres(unit) == pytest.approx(want, rel=1e-9), unit
    with pytest.raises(InvalidArgumentError, match="furlong"):
        micrometres("furlong")


def test_10_sweep_volumes_in_centimetres(tmp_path):
    p = np.full((2, 2, 2), 0.9, np.float32)
    pv = emarray.create_volume(tmp_path / "p.zarr", p.shape, p.dtype, 2, voxel_size=(1, 2, 3),
                               unit="centimeter")
    pv.write((slice(0, 2),) * 3, p)
    tv = make_volume(tmp_path / "t.zarr", np.ones((2, 2, 2), np.uint8), 2)
    df = emarray.sweep(emarray.open_volume(tmp_path / "p.zarr"), tv, values=[0.5])
    assert df["predicted_um3"].iloc[0] == pytest.approx(8 * 6 * 1e12)


def test_12_auto_falls_back_to_the_cpu_for_dtypes_without_a_kernel(tmp_path, monkeypatch):
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


# -- crashes -> one line, exit 2 --------------------------------------------------------------
@pytest.mark.parametrize("damage", ["malformed", "missing", "bad-shape"])
def test_13_a_broken_store_is_one_line(tmp_path, damage):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    arr = tmp_path / "m.zarr" / "0"
    if damage == "malformed":
        (arr / "zarr.json").write_text("{not json")
    elif damage == "missing":
        shutil.rmtree(arr)
    else:
        meta = json.loads((arr / "zarr.json").read_text())
        meta["shape"] = [-3, 2]
        (arr / "zarr.json").write_text(json.dumps(meta))
    for args in (("info", tmp_path / "m.zarr"),
                 ("threshold", tmp_path / "m.zarr", tmp_path / "x.zarr", "--value", "0.5"),
                 ("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5",
                  "--resume")):
        assert "broken" in one_error_line(cli(*args)) or damage == "bad-shape"


def test_13_a_kill_while_creating_leaves_nothing_at_the_output(tmp_path):
    """Creation happens beside the output: a leftover half-made store never blocks a rerun."""
    _, src = prob_map(tmp_path / "p.zarr")
    half = tmp_path / ".m.zarr.emarray-new"
    half.mkdir()
    (half / "zarr.json").write_text("{}")  # what a kill between group and array leaves
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5",
            "--resume")
    assert r.returncode == 0, r.stderr
    assert not half.exists() and emarray.open_volume(tmp_path / "m.zarr").shape == src.shape


def test_13_a_kill_after_the_job_was_recorded_but_before_the_array_is_resumed(tmp_path):
    """Killed between the group's attributes (the job) and the array's metadata: --resume
    finds its own half-made store, makes it again and finishes equal to a fresh run (a whole
    recipe killed at random moments met this)."""
    a, _ = prob_map(tmp_path / "p.zarr")
    args = ("-q", "threshold", tmp_path / "p.zarr", "--value", "0.5")
    assert cli(*args[:3], tmp_path / "ref.zarr", *args[3:]).returncode == 0
    half = tmp_path / ".m.zarr.emarray-new"
    shutil.copytree(tmp_path / "ref.zarr", half)
    for array_meta in half.glob("*/zarr.json"):
        array_meta.unlink()
    shutil.rmtree(half / PROGRESS_DIR, ignore_errors=True)
    r = cli(*args[:3], tmp_path / "m.zarr", *args[3:], "--resume")
    assert r.returncode == 0, r.stderr
    assert not half.exists()
    assert np.array_equal(emarray.open_volume(tmp_path / "m.zarr").read(), a > 0.5)


def test_14_unreachable_scheduler_is_one_line_within_the_timeout(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value",
                              "0.5", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1"))
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9 within 1 s" in line
    assert not (tmp_path / "m.zarr").exists()
    with pytest.raises(SchedulerUnreachableError):
        emarray.threshold(src, tmp_path / "m.zarr", 0.5, scheduler="tcp://127.0.0.1:9",
                          connect_timeout=0.5)


def _in_own_mounts(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a private mount namespace (real mounts, gone when it ends)."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the read-only and disk-full tests")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          cwd=cwd)


def test_14_read_only_output_folder_and_full_disk_are_one_line(tmp_path):
    prob_map(tmp_path / "p.zarr", shape=(40, 64, 64), chunks=(8, 32, 32))
    (tmp_path / "ro").mkdir()
    (tmp_path / "full").mkdir()
    em = f"{PY} -m emarray -q"
    script = (f"mount --bind ro ro && mount -o remount,ro,bind ro && "
              f"{em} threshold p.zarr ro/m.zarr --value 0.5; echo rc=$?; "
              f"mount -t tmpfs -o size=64k tmpfs full && "
              f"{em} threshold p.zarr full/m.zarr --value 0.5 --compression none; echo rc=$?; "
              f"{em} export p.zarr full/p.tif; echo rc=$?; ls -a full")
    r = _in_own_mounts(script, tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.stdout.count("rc=2") == 3, (r.stdout, r.stderr)
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors), r.stderr
    assert "not writable" in errors[0] or "Read-only" in errors[0]
    assert "No space left on device" in errors[1] and "No space left on device" in errors[2]
    assert "p.tif" not in r.stdout  # no half-written export left behind


def test_14_export_destinations_are_checked_first(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    (tmp_path / "dir.tif").mkdir()
    cases = [((tmp_path / "missing" / "x.tif",), "does not exist"),
             ((tmp_path / "x.h5", "--dataset", ""), "dataset must name"),
             ((tmp_path / "dir.tif",), "is a folder"),
             ((tmp_path / "p.zarr" / "x.tif",), "overlaps the input")]
    before = tree_digest(tmp_path)
    for args, msg in cases:
        assert msg in one_error_line(cli("export", tmp_path / "p.zarr", *args))
    assert tree_digest(tmp_path) == before


def test_15_an_absurd_synthetic_size_is_refused_before_anything_is_made(tmp_path):
    line = one_error_line(cli("synthetic", tmp_path / "s", "--size", "1e12"))
    assert "1e+36 voxels" in line
    assert not (tmp_path / "s").exists()


def test_16_tasks_are_submitted_through_a_bounded_window():
    consumed = []

    def calls():
        for i in range(10_000):
            consumed.append(i)
            yield (_record_max, (i, consumed))

    with Runner("threads", workers=2, window=16) as r:
        seen = r.run(calls(), total=10_000, combine=max)
    assert seen <= 16 + 2  # at most the window ahead of the first tasks to finish
    with Runner("synchronous") as r:
        assert r.run(((pow, (2, i)) for i in range(5))) == [1, 2, 4, 8, 16]


def _record_max(i, consumed):
    return len(consumed) - i  # how far submission ran ahead of this task


def test_16_a_synthetic_volume_of_many_blocks_starts_at_once(tmp_path):
    import tracemalloc
    tracemalloc.start()
    emarray.datasets.synthetic(tmp_path, (8, 64, 128), chunks=(1, 4, 8), kinds=("truth",),
                               workers=2)  # 2,048 blocks
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    assert emarray.open_volume(tmp_path / "truth.zarr").attrs["emarray"]["complete"]


def test_17_out_of_memory_halving_stops_at_the_minimum_and_never_redoes_work():
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


def test_17_the_gpu_memory_cap_is_split_between_processes_sharing_a_device():
    from emarray.engine.memory import split_memory_limit
    assert split_memory_limit(None, 1) == 0.5 and split_memory_limit(0.8, 4) == pytest.approx(0.2)
    assert split_memory_limit(8 * 2**30, 2) == 4 * 2**30
    assert Runner("processes", workers=3).processes_per_device() == 3
    assert Runner("threads", workers=3).processes_per_device() == 1


def test_18_kernels_are_found_from_a_plain_checkout(tmp_path):
    """PYTHONPATH=checkout with no install: emarray.kernels is not a package there."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in "
            "repr(f).lower()]; import emarray.cuda.modules as m; print(m.kernel_dir()); "
            "print(len(m.kernel_source('threshold.cu')) > 100)")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(root / "kernels"), "True"]
