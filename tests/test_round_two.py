"""Round two of breaking emarray on purpose: every defect of the second hardening list, reproduced
for real (kills, planted files, workers in another folder, chunks deleted or rewritten in place).

Test names follow the numbers of that list; the unnumbered items are named for what they check.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tifffile

import emarray
from emarray.engine.checkpoint import PROGRESS_DIR, Bitmap, Checkpoint
from emarray.errors import BlockFailedError, ChunkReadError, CorruptStateError, JobFailedError

from .conftest import make_volume, real_dask_cluster, tree_digest
from .helpers import cli, one_error_line, prob_map, slow_job, wait_for

PY = sys.executable


def _unfinished(tmp_path: Path, monkeypatch, name: str = "m.zarr", shape=(16, 16, 16),
                chunks=(4, 4, 4), op: str = "threshold") -> tuple[np.ndarray, Path]:
    """An input and an output of ``op`` left unfinished (a block kept failing): progress saved."""
    a = np.random.default_rng(3).random(shape).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, chunks)
    from emarray.engine import faults
    real_write, calls = faults.write_block, {"n": 0}

    def fails_at_the_20th(writes, what):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError(errno.EIO, "injected: the disk went away", what)
        return real_write(writes, what)

    monkeypatch.setattr(faults, "write_block", fails_at_the_20th)
    monkeypatch.setenv("EMARRAY_CHECKPOINT_SECONDS", "0")
    run = {"retries": 0, "scheduler": "synchronous"}
    with pytest.raises(BlockFailedError):
        if op == "threshold":
            emarray.threshold(tmp_path / "p.zarr", tmp_path / name, 0.5, **run)
        else:
            emarray.smooth(tmp_path / "p.zarr", tmp_path / name, 1.0, **run)
    monkeypatch.setattr(faults, "write_block", real_write)
    assert Checkpoint(tmp_path / name / PROGRESS_DIR).done_count(op) > 0
    return a, tmp_path / name


# -- data loss --------------------------------------------------------------------------------
def test_1_objects_never_writes_its_side_files_into_an_input(tmp_path):
    lab = np.zeros((4, 8, 8), np.uint32)
    lab[1:3, 2:5, 2:5] = 7
    make_volume(tmp_path / "L.zarr", lab, (2, 4, 4))
    before = tree_digest(tmp_path / "L.zarr")
    line = one_error_line(cli("objects", tmp_path / "L.zarr", "--out",
                              tmp_path / "L.zarr" / "zarr.csv"))
    assert "overlaps the input" in line
    assert tree_digest(tmp_path / "L.zarr") == before
    assert int(emarray.open_volume(tmp_path / "L.zarr").read().max()) == 7


def test_1_a_side_file_that_exists_is_refused_without_overwrite(tmp_path):
    lab = np.zeros((4, 8, 8), np.uint32)
    lab[0, 0, 0] = 3
    make_volume(tmp_path / "L.zarr", lab, 4)
    (tmp_path / "T.json").write_text("my notes")
    # a side file that no manifest lists is the user's: refused by name, even with --overwrite
    for extra in ((), ("--overwrite",)):
        line = one_error_line(cli("objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv",
                                  *extra))
        assert "T.json" in line and "emarray did not write" in line
        assert (tmp_path / "T.json").read_text() == "my notes"
        assert not (tmp_path / "T.csv").exists()
    (tmp_path / "T.json").unlink()
    r = cli("-q", "objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv")
    assert r.returncode == 0, r.stderr
    line = one_error_line(cli("objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv"))
    assert "--overwrite" in line
    r = cli("-q", "objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "T.json").read_text())["count"] == 1


def test_1_sweep_and_match_folders_inside_an_input_are_refused(tmp_path):
    a, _ = prob_map(tmp_path / "p.zarr")
    make_volume(tmp_path / "t.zarr", (a > 0.5).astype(np.uint8), 4)
    before = tree_digest(tmp_path / "p.zarr")
    line = one_error_line(cli("sweep", tmp_path / "p.zarr", tmp_path / "t.zarr", "--out",
                              tmp_path / "p.zarr" / "sweep"))
    assert "overlaps the input" in line
    line = one_error_line(cli("match", tmp_path / "t.zarr", tmp_path / "t.zarr", "--out",
                              tmp_path / "t.zarr"))
    assert "overlaps the input" in line
    assert tree_digest(tmp_path / "p.zarr") == before


@pytest.mark.parametrize("planted", ["0/c/x/notes.txt", ".emarray-progress/mine.txt",
                                     "0/c/0/0/99", "0/c/0/0/0.bak", "figures/plot.png"])
def test_2_overwrite_refuses_what_the_metadata_does_not_account_for(tmp_path, planted):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    f = tmp_path / "m.zarr" / planted
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("the user's")
    before = tree_digest(tmp_path / "m.zarr")
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value",
                              "0.3", "--overwrite"))
    assert "files emarray did not write" in line
    assert planted.split("/")[-1] in line or planted.split("/")[0] + "/" in line
    assert tree_digest(tmp_path / "m.zarr") == before


def test_2_overwrite_still_replaces_an_output_with_its_levels_and_progress(tmp_path):
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    emarray.pyramid(tmp_path / "m.zarr", levels=1)
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(), a > 0.3)


def test_2_pyramid_overwrite_keeps_a_users_file_inside_a_level(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    emarray.pyramid(tmp_path / "m.zarr", levels=1)
    (tmp_path / "m.zarr" / "1" / "keep.txt").write_text("mine")
    line = one_error_line(cli("pyramid", tmp_path / "m.zarr", "--levels", "1", "--overwrite"))
    assert "keep.txt" in line
    assert (tmp_path / "m.zarr" / "1" / "keep.txt").read_text() == "mine"


# -- code execution from a data folder ----------------------------------------------------------
class _Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("part", ["progress", "result"])
def test_3_a_planted_pickle_in_the_progress_folder_never_runs(tmp_path, monkeypatch, part):
    _, out = _unfinished(tmp_path, monkeypatch)
    marker = tmp_path / "PWNED"
    assert pickle.loads(pickle.dumps(_Planted(str(tmp_path / "probe")))) == 0  # it would run
    assert (tmp_path / "probe").exists()
    (out / PROGRESS_DIR / f"threshold.{part}").write_bytes(pickle.dumps(_Planted(str(marker))))
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", out, "--value", "0.5",
                              "--resume"))
    assert f"threshold.{part}" in line and "not an emarray progress file" in line
    assert not marker.exists()


def test_3_a_damaged_progress_file_is_one_line_naming_it(tmp_path, monkeypatch):
    a, out = _unfinished(tmp_path, monkeypatch)
    f = out / PROGRESS_DIR / "threshold.progress"
    f.write_bytes(f.read_bytes()[:40])  # a zip cut short
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", out, "--value", "0.5",
                              "--resume"))
    assert str(f) in line and "damaged" in line
    f.unlink()  # as the line says: without it the job starts that stage again
    r = cli("-q", "threshold", tmp_path / "p.zarr", out, "--value", "0.5", "--resume")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(out).read(), a > 0.5)


def test_3_progress_round_trips_every_summary_the_operators_fold():
    from emarray.engine.serialize import dumps, loads
    from emarray.ops.components import PIECE
    pieces = np.zeros(3, PIECE)
    pieces["node"] = [1, 2, 3]
    value = [(0, ([((0, 1, 2), np.arange(3))], pieces)), (1, {"id": np.arange(4, dtype=np.uint64),
                                                               "x": np.float64(np.nan)}),
             (2, (np.zeros((2, 3)), {"k": None, "big": 2**70, "f": float("-inf")}))]
    back = loads(dumps(value))
    assert back[0][1][0][0][0] == (0, 1, 2) and back[0][1][1].dtype == PIECE
    np.testing.assert_array_equal(back[0][1][1], pieces)
    assert np.isnan(back[1][1]["x"]) and back[2][1][1]["big"] == 2**70
    assert back[2][1][1]["f"] == float("-inf") and back[2][1][1]["k"] is None
    with pytest.raises(TypeError):
        dumps(np.array([object()]))
    with pytest.raises(CorruptStateError):
        loads(b"not a zip")


# -- silently wrong -------------------------------------------------------------------------------
@pytest.mark.cluster
def test_4_distributed_ingest_reads_a_relative_source_from_the_client_folder(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    (here / "slices").mkdir(parents=True)
    elsewhere.mkdir()
    a = np.random.default_rng(4).integers(0, 255, (6, 20, 24), dtype=np.uint8)
    tifffile.imwrite(here / "stack.tif", a, photometric="minisblack")
    for z in range(a.shape[0]):
        tifffile.imwrite(here / "slices" / f"{z}.tif", a[z], photometric="minisblack")
    # a decoy with the same names where the workers run: reading it would be silently wrong
    tifffile.imwrite(elsewhere / "stack.tif", a[::-1].copy(), photometric="minisblack")
    with real_dask_cluster(tmp_path, workers=2, cwd=elsewhere) as address:
        for src, dst in (("stack.tif", "a.zarr"), ("slices", "b.zarr")):
            r = cli("-q", "ingest", src, dst, "--chunks", "2,8,8", "--voxel-size", "1,1,1",
                    "--scheduler", address, cwd=here)
            assert r.returncode == 0, r.stderr
            np.testing.assert_array_equal(emarray.open_volume(here / dst).read(), a)


def _emarray_made(tmp_path: Path, name: str) -> tuple[np.ndarray, Path]:
    """A volume emarray made (so that --overwrite may replace it), of many tiny chunks."""
    a = np.random.default_rng(6).random((32, 48, 64)).astype(np.float32)
    make_volume(tmp_path / "src.zarr", a, (4, 4, 8))
    emarray.rescale(tmp_path / "src.zarr", tmp_path / name, (0, 1))
    return a, tmp_path / name


def test_5_a_job_never_reads_an_input_that_another_job_replaces(tmp_path):
    _, x = _emarray_made(tmp_path, "x.zarr")
    reader = slow_job(x, tmp_path / "y.zarr")
    wait_for(lambda: (tmp_path / "y.zarr" / PROGRESS_DIR).exists()
             and Checkpoint(tmp_path / "y.zarr" / PROGRESS_DIR).done_count("threshold") > 5,
             reader)
    line = one_error_line(cli("rescale", tmp_path / "src.zarr", x, "--range", "0,2",
                              "--overwrite"))
    assert "being read by another emarray job" in line
    reader.wait(120)
    assert reader.returncode == 0, reader.stderr.read()


def test_5_a_job_never_starts_reading_an_input_being_replaced(tmp_path):
    _, x = _emarray_made(tmp_path, "x.zarr")
    writer = subprocess.Popen([PY, "-m", "emarray", "-q", "rescale", str(tmp_path / "src.zarr"),
                               str(x), "--range", "0,2", "--overwrite", "--scheduler",
                               "synchronous"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0",
                                              "EMARRAY_SLOW_WRITES": "0.005"})
    new = tmp_path / ".x.zarr.emarray-new"
    wait_for(lambda: (new / PROGRESS_DIR).exists()
             and Checkpoint(new / PROGRESS_DIR).done_count("rescale") > 5, writer)
    line = one_error_line(cli("threshold", x, tmp_path / "y.zarr", "--value", "100"))
    assert "being written by another emarray job" in line and "rescale" in line
    assert not (tmp_path / "y.zarr").exists()
    writer.wait(120)
    assert writer.returncode == 0, writer.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zarr", "x.zarr"]  # no lock left


@pytest.mark.parametrize("op", ["threshold", "smooth"])
def test_6_resume_computes_again_what_read_chunks_rewritten_in_place(tmp_path, monkeypatch, op):
    """A chunk of the input rewritten while the job was stopped: the finished blocks that read
    it (with the halo, for smooth) run again, so the output is wholly from the new input."""
    from scipy import ndimage
    a, out = _unfinished(tmp_path, monkeypatch, op=op)
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


def test_6_a_recipe_runs_a_step_again_when_its_input_chunks_change_in_place(tmp_path):
    a, _ = prob_map(tmp_path / "p.zarr")
    recipe = {"steps": {"mask": {"op": "threshold", "src": str(tmp_path / "p.zarr"),
                                 "value": 0.5}}}
    work = tmp_path / "work"
    assert emarray.run_pipeline(recipe, workdir=work).ran == ["mask"]
    assert emarray.run_pipeline(recipe, workdir=work).ran == []
    emarray.open_volume(tmp_path / "p.zarr").write((slice(0, 4), slice(0, 8), slice(0, 8)),
                                                   np.ones((4, 8, 8), np.float32))
    assert emarray.run_pipeline(recipe, workdir=work).ran == ["mask"]
    b = a.copy()
    b[:4, :8, :8] = 1
    np.testing.assert_array_equal(emarray.open_volume(work / "mask.zarr").read(), b > 0.5)


def _exact_rescale(x: int, lo, hi) -> int:
    v = (Fraction(int(x)) - Fraction(lo)) * 255 / (Fraction(hi) - Fraction(lo))
    f = v.numerator // v.denominator
    if v - f > Fraction(1, 2) or (v - f == Fraction(1, 2) and f % 2 == 1):
        f += 1
    return min(max(f, 0), 255)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32",
                                   "uint64", "int64"])
def test_7_rescale_is_exact_for_every_integer_dtype_at_its_extremes(tmp_path, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    ranges = [(int(info.min), int(info.max)), (int(info.max) - 1000, int(info.max)),
              (int(info.min), int(info.min) + 37), (-3.7, 1000.2)]
    for k, (lo, hi) in enumerate(ranges):
        span = int(hi - lo)
        vals = [info.min, info.max, info.min + 1, info.max - 1] + [
            min(max(int(lo) + int(d), int(info.min)), int(info.max))
            for d in rng.integers(-5, min(span, 2**62) + 5, 244)]
        x = np.array(vals, dtype).reshape(2, 4, 31)
        v = make_volume(tmp_path / f"x{k}.zarr", x, (1, 4, 8))
        got = emarray.rescale(v, tmp_path / f"y{k}.zarr", (lo, hi)).read()
        want = np.array([_exact_rescale(i, lo, hi) for i in x.ravel()], np.uint8).reshape(x.shape)
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype} [{lo}, {hi}]")


def test_7_rescale_range_on_the_command_line_is_exact(tmp_path):
    x = np.array([[[2**64 - 1, 2**64 - 2, 2**64 - 1000, 2**60]]], np.uint64)
    make_volume(tmp_path / "x.zarr", x, 1)
    r = cli("-q", "rescale", tmp_path / "x.zarr", tmp_path / "y.zarr", "--range",
            f"{2**64 - 1000},{2**64 - 1}")
    assert r.returncode == 0, r.stderr
    assert emarray.open_volume(tmp_path / "y.zarr").read().ravel().tolist() == [255, 255, 0, 0]


def test_8_integer_values_stay_integers(tmp_path):
    u = np.array([[[2**64 - 1, 2**64 - 2, 2**64 - 3, 0]]], np.uint64)
    make_volume(tmp_path / "u.zarr", u, (1, 1, 2))
    r = cli("-q", "threshold", tmp_path / "u.zarr", tmp_path / "m.zarr", "--value",
            str(2**64 - 2), "--compare", "ge")
    assert r.returncode == 0, r.stderr
    assert emarray.open_volume(tmp_path / "m.zarr").read().ravel().tolist() == [1, 1, 0, 0]
    i = np.array([[[2**53, 2**53 + 1, 2**53 + 2]]], np.int64)
    make_volume(tmp_path / "i.zarr", i, 1)
    m = emarray.threshold(tmp_path / "i.zarr", tmp_path / "n.zarr", 2**53 + 1, compare="gt")
    assert m.read().ravel().tolist() == [0, 0, 1]
    # the background 2**64 - 1 is a value of uint64 data: accepted, and exact
    lab = np.full((1, 3, 3), 2**64 - 1, np.uint64)
    lab[0, 0, 0] = 2**64 - 2
    lab[0, 2, 2] = 5
    make_volume(tmp_path / "l.zarr", lab, (1, 2, 2))
    r = cli("-q", "label", tmp_path / "l.zarr", tmp_path / "c.zarr", "--background",
            str(2**64 - 1))
    assert r.returncode == 0, r.stderr
    out = emarray.open_volume(tmp_path / "c.zarr").read()
    assert out[0, 0, 0] == 1 and out[0, 2, 2] == 2 and int(out.sum()) == 3


def test_9_a_missing_chunk_of_an_emarray_volume_is_named(tmp_path):
    a, src = prob_map(tmp_path / "p.zarr")
    a[:] = 0  # all zeros: every chunk is still written
    make_volume(tmp_path / "z.zarr", a, (4, 8, 8))
    m = emarray.threshold(tmp_path / "z.zarr", tmp_path / "m.zarr", 0.5)
    info = emarray.info(m)
    assert info["chunks_stored"] == info["chunks_expected"] == 3 * 2 * 3
    chunk = tmp_path / "m.zarr" / "0" / "c" / "1" / "1" / "2"
    chunk.unlink()
    line = one_error_line(cli("-q", "threshold", tmp_path / "m.zarr", tmp_path / "n.zarr",
                              "--value", "0"))
    assert "0/c/1/1/2" in line and "missing" in line
    assert "DAMAGED" in emarray.info(m)["status"]
    with pytest.raises(ChunkReadError):
        emarray.open_volume(tmp_path / "m.zarr").read()


def test_9_info_counts_the_chunks_of_a_foreign_volume(tmp_path):
    import zarr
    arr = zarr.create_array(str(tmp_path / "f.zarr"), shape=(8, 8, 8), chunks=(4, 4, 4),
                            dtype="uint8", fill_value=0)
    arr[:4] = 1  # zarr leaves the empty half unwritten
    r = cli("info", tmp_path / "f.zarr")
    assert r.returncode == 0, r.stderr
    assert "4 of 8 chunks" in r.stdout and "not stored" in r.stdout


def test_10_a_model_file_with_damaged_weights_is_refused(tmp_path):
    pytest.importorskip("torch")
    import zipfile
    from emarray.models import new_model
    p = Path(new_model(tmp_path / "m.pt", depth=2, filters=4))
    with zipfile.ZipFile(p) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(p.read_bytes())
    at = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra) + 100
    data[at] ^= 0xFF  # one flipped byte in the weights
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    raw = np.zeros((8, 16, 16), np.uint8)
    make_volume(tmp_path / "r.zarr", raw, 8)
    line = one_error_line(cli("predict", tmp_path / "r.zarr", tmp_path / "bad.pt",
                              tmp_path / "o.zarr"))
    assert "CRC" in line and "bad.pt" in line
    assert not (tmp_path / "o.zarr").exists()


def test_11_predict_warns_of_nan_in_the_raw_volume(tmp_path):
    pytest.importorskip("torch")
    from emarray.models import new_model
    model = new_model(tmp_path / "m.pt", depth=2, filters=4)
    a = np.random.default_rng(1).random((8, 32, 32)).astype(np.float32)
    a[4, 10, 10] = a[4, 20, 20] = np.nan
    make_volume(tmp_path / "r.zarr", a, (8, 16, 16))
    r = cli("-q", "predict", tmp_path / "r.zarr", model, tmp_path / "o.zarr")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "holds 2 NaN voxels" in r.stderr
    n = int(np.isnan(emarray.open_volume(tmp_path / "o.zarr").read()).sum())
    assert f"here {n:,} of" in r.stderr and n > 2


def _train_config(tmp_path: Path, raw: np.ndarray, **over) -> Path:
    import yaml
    make_volume(tmp_path / "raw.zarr", raw, (8, 32, 32))
    truth = (np.random.default_rng(2).random(raw.shape) > 0.5).astype(np.uint8)
    make_volume(tmp_path / "truth.zarr", truth, (8, 32, 32))
    cfg = {"out": str(tmp_path / "run"), "steps": 4, "batch": 1, "patch": "8,16,16",
           "threads": 1, "log_every": 1, "checkpoint_every": 2,
           "data": {"raw": str(tmp_path / "raw.zarr"), "labels": str(tmp_path / "truth.zarr")},
           "model": {"depth": 2, "filters": 4}, "augment": {"elastic": 0.0}, **over}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


def test_11_train_refuses_nan_raw_and_a_diverging_rate_in_one_line(tmp_path):
    pytest.importorskip("torch")
    raw = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    raw[:, 5, :] = np.nan
    line = one_error_line(cli("-q", "train", _train_config(tmp_path / "a", raw)))
    assert "NaN or infinite" in line and "raw.zarr" in line
    ok = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    line = one_error_line(cli("-q", "train", _train_config(tmp_path / "b", ok,
                                                           optimizer={"lr": 1e308})))
    assert "optimizer.lr" in line and "1e+308" in line


# -- hangs and exhaustion -------------------------------------------------------------------------
def test_12_a_filter_wider_than_the_volume_is_folded_onto_it(tmp_path):
    from scipy import ndimage
    a = np.random.default_rng(2).random((6, 10, 12)).astype(np.float32)
    make_volume(tmp_path / "a.zarr", a, (3, 4, 5))
    # VmHWM: this process's own peak (ru_maxrss would carry pytest's over the exec)
    code = ("import emarray; emarray.smooth({!r}, {!r}, 1.0, truncate=1e9); "
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    r = subprocess.run([PY, "-c", code.format(str(tmp_path / "a.zarr"), str(tmp_path / "s.zarr"))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) < 1_500_000  # KiB: bounded by the volume, not the halo
    # the weights past 38.7 sigma are exactly 0, so truncate 50 is the same filter for SciPy
    want = ndimage.gaussian_filter(a.astype(np.float64), 1.0, truncate=50)
    np.testing.assert_allclose(emarray.open_volume(tmp_path / "s.zarr").read(), want, atol=1e-6)
    s = emarray.smooth(tmp_path / "a.zarr", tmp_path / "t.zarr", 1e6)  # nearly the mean
    np.testing.assert_allclose(s.read(), a.mean(), atol=1e-4)
    want = ndimage.gaussian_filter(a.astype(np.float64), (3, 7, 9), mode="reflect")
    got = emarray.smooth(tmp_path / "a.zarr", tmp_path / "u.zarr", (3, 7, 9)).read()
    np.testing.assert_allclose(got, want, atol=1e-6)  # radius 12..36 on axes of 6..12


def test_12_a_block_too_large_for_memory_is_refused_before_any_work(tmp_path):
    emarray.create_volume(tmp_path / "big.zarr", (1, 65536, 65536), "uint8", (1, 4096, 4096))
    line = one_error_line(cli("smooth", tmp_path / "big.zarr", tmp_path / "s.zarr", "--sigma",
                              "0,10000,10000"))
    assert "GiB" in line and "smaller sigma" in line
    assert not (tmp_path / "s.zarr").exists()
    line = one_error_line(cli("smooth", tmp_path / "big.zarr", tmp_path / "s.zarr", "--sigma",
                              "1e9"))
    assert "too large" in line


@pytest.mark.cluster
def test_13_a_job_whose_workers_all_die_stops_with_one_line(tmp_path):
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


def test_14_the_driver_keeps_a_bit_per_block():
    import tracemalloc
    n = 2**30 + 5
    tracemalloc.start()
    done = Bitmap(n)
    for i in (0, 7, 8, n - 1):
        done.set(i)
    first = list(zip(range(5), done.missing()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert done.bits.nbytes == (n + 7) // 8  # 128 MiB for a billion blocks, not 9 GiB
    assert peak < done.bits.nbytes + 16 * 2**20  # one slice of 2**20 blocks unpacked at a time
    assert [i for _, i in first] == [1, 2, 3, 4, 5]
    assert done[7] and not done[6] and done.count() == 4


# -- raw tracebacks -> one line -------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (("threshold", "{p}", "{d}/m.zarr", "--value", "0.5", "--scheduler", "foo://x"),
     "unknown protocol 'foo'"),
    (("synthetic", "{d}/s", "--size", str(2**40)), "limited to"),
    (("synthetic", "{d}/s", "--size", "8", "--chunks", "0"), "chunks must be positive"),
    (("threshold", "{p}", "{d}/m.zarr", "--value", "0.5", "--chunks", "0,4,4"),
     "chunks must be positive"),
    (("synthetic", "{d}/s", "--size", "8", "--chunks", "4,0,4"), "chunks must be positive"),
])
def test_raw_tracebacks_are_one_line_and_leave_nothing(tmp_path, args, says):
    prob_map(tmp_path / "p.zarr")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_error_line(cli(*(a.format(p=tmp_path / "p.zarr", d=tmp_path) for a in args)))
    assert says in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_job_that_fails_before_any_block_leaves_no_unfinished_output(tmp_path):
    from emarray.engine import BlockGrid, Stage, Write, run_job
    from emarray.engine.contract import MAX_BLOCKS

    def create(path):
        return emarray.create_volume(path, (4, 4, 4), "uint8", 2)

    def stages(out):
        return [Stage("huge", lambda ctx: None, BlockGrid((MAX_BLOCKS + 1, 1, 1), (1, 1, 1)),
                      writes=[Write(out)])]

    with pytest.raises(emarray.errors.InvalidArgumentError, match="blocks"):
        run_job(tmp_path / "o.zarr", create, job={"operator": "x"}, stages=stages,
                options=emarray.RunOptions())
    assert list(tmp_path.iterdir()) == []


# -- poor messages and wasted work ----------------------------------------------------------------
def test_pyramid_levels_that_cannot_be_made_are_named(tmp_path):
    make_volume(tmp_path / "one.zarr", np.ones((1, 1, 1), np.uint8), 1)
    line = one_error_line(cli("pyramid", tmp_path / "one.zarr", "--levels", "2"))
    assert "None" not in line and "already 1 voxel" in line


def test_a_damaged_pipeline_state_is_named_and_nothing_is_orphaned(tmp_path):
    prob_map(tmp_path / "p.zarr")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  mask: {{op: threshold, src: {tmp_path / 'p.zarr'}, value: 0.5}}\n")
    work = tmp_path / "work"
    assert cli("-q", "run", recipe, "--workdir", work).returncode == 0
    (work / ".emarray-pipeline.json").write_text("{not json")
    before = tree_digest(work / "mask.zarr")
    for extra in ((), ("--overwrite",)):
        line = one_error_line(cli("run", recipe, "--workdir", work, *extra))
        assert ".emarray-pipeline.json" in line and "damaged" in line
    assert tree_digest(work / "mask.zarr") == before


def test_every_step_output_is_checked_before_the_first_step_runs(tmp_path):
    prob_map(tmp_path / "p.zarr")
    work = tmp_path / "work"
    recipe = {"steps": {"mask": {"op": "threshold", "src": str(tmp_path / "p.zarr"), "value": 0.5},
                        "cells": {"op": "label", "src": "mask", "out": str(work)}}}
    with pytest.raises(emarray.errors.InvalidArgumentError, match="is .or holds. the workdir"):
        emarray.run_pipeline(recipe, workdir=work)
    assert not work.exists()
    recipe["steps"]["cells"]["out"] = str(work / "mask.zarr" / "inner.zarr")
    with pytest.raises(emarray.errors.InvalidArgumentError, match="inside the output of step"):
        emarray.run_pipeline(recipe, workdir=work)


def test_a_pyramid_step_on_a_path_input_does_not_rerun_its_readers(tmp_path):
    a = (np.random.default_rng(0).random((8, 32, 32)) * 255).astype(np.uint8)
    make_volume(tmp_path / "raw.zarr", a, (4, 16, 16))
    recipe = {"steps": {"levels": {"op": "pyramid", "src": str(tmp_path / "raw.zarr"), "levels": 1},
                        "mask": {"op": "threshold", "src": str(tmp_path / "raw.zarr"),
                                 "value": 100}}}
    work = tmp_path / "work"
    assert sorted(emarray.run_pipeline(recipe, workdir=work).ran) == ["levels", "mask"]
    assert emarray.run_pipeline(recipe, workdir=work).ran == []


def test_set_keeps_a_region_as_text(tmp_path):
    pytest.importorskip("torch")
    raw = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    cfg = _train_config(tmp_path, raw)
    r = cli("train", cfg, "--set", "validation.region=8:16,:,:", "--print-config")
    assert r.returncode == 0, r.stderr
    assert "region: '8:16,:,:'" in r.stdout
    line = one_error_line(cli("train", cfg, "--set", "validation.region=40:50,:,:"))
    assert "'40:50' is empty or outside 0:16" in line and "{" not in line


def test_a_failed_replacement_says_where_its_unfinished_output_is(tmp_path, monkeypatch):
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    before = tree_digest(tmp_path / "m.zarr")
    real_write = emarray.Volume.write
    calls = {"n": 0}

    def full_disk(self, region, block):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.url)
        return real_write(self, region, block)

    monkeypatch.setattr(emarray.Volume, "write", full_disk)
    with pytest.raises(JobFailedError) as e:
        emarray.threshold(src, tmp_path / "m.zarr", 0.3, overwrite=True, retries=0,
                          scheduler="synchronous")
    msg = str(e.value)
    new = tmp_path / ".m.zarr.emarray-new"
    assert "No space left on device" in msg and str(new) in msg and "rm -r" in msg
    assert "--resume" in msg and new.exists()
    assert tree_digest(tmp_path / "m.zarr") == before
    monkeypatch.setattr(emarray.Volume, "write", real_write)
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.3, resume=True)
    np.testing.assert_array_equal(m.read(), a > 0.3)


# -- found as a new user would ---------------------------------------------------------------------
def test_a_pyramid_level_is_an_input_with_its_own_voxel_size(tmp_path):
    a = (np.random.default_rng(0).random((8, 32, 32)) * 255).astype(np.uint8)
    make_volume(tmp_path / "x.zarr", a, (4, 16, 16), voxel_size=(8, 8, 8))
    emarray.pyramid(tmp_path / "x.zarr", levels=1)
    lv = emarray.open_volume(tmp_path / "x.zarr" / "1")
    assert lv.voxel_size == (16.0, 16.0, 16.0) and lv.translation == (4.0, 4.0, 4.0)
    r = cli("-q", "upsample", tmp_path / "x.zarr" / "1", tmp_path / "up.zarr", "--like",
            tmp_path / "x.zarr", "--mode", "nearest")
    assert r.returncode == 0, r.stderr
    coarse = lv.read()
    # each fine voxel centre 8i lies in the coarse voxel round((8i - 4) / 16)
    idx = [np.clip(np.floor((np.arange(n) * 8 - 4) / 16 + 0.5).astype(int), 0, m - 1)
           for n, m in zip(a.shape, coarse.shape)]
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "up.zarr").read(),
                                  coarse[np.ix_(*idx)])
    emarray.create_volume(tmp_path / "big.zarr", (40, 32, 32), "uint8", 8, voxel_size=(8, 8, 8))
    line = one_error_line(cli("upsample", tmp_path / "x.zarr" / "1", tmp_path / "up2.zarr",
                              "--like", tmp_path / "big.zarr"))
    assert "does not cover" in line and not (tmp_path / "up2.zarr").exists()


def test_out_with_a_trailing_slash_and_info_into_a_closed_pipe(tmp_path):
    a, _ = prob_map(tmp_path / "p.zarr")
    make_volume(tmp_path / "t.zarr", (a > 0.5).astype(np.uint8), 4)
    r = cli("sweep", tmp_path / "p.zarr", tmp_path / "t.zarr", "--out", f"{tmp_path / 'sw'}/",
            "--values", "0.5")
    assert r.returncode == 0 and "//" not in r.stdout, r.stdout
    p = subprocess.Popen([PY, "-m", "emarray", "info", str(tmp_path / "p.zarr")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written (as `| head` leaves)
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and "error" not in err.lower(), err


def test_logs_get_lines_not_carriage_returns(tmp_path):
    pytest.importorskip("torch")
    from emarray.models import new_model
    a, _ = prob_map(tmp_path / "p.zarr", shape=(24, 16, 20), chunks=(2, 8, 8))
    r = cli("export", tmp_path / "p.zarr", tmp_path / "p.tif")
    assert r.returncode == 0 and "\r" not in r.stderr, r.stderr
    assert "export: 12 slabs to do" in r.stderr and "(100%)" in r.stderr
    raw = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    r = cli("train", _train_config(tmp_path / "t", raw))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "train: 4 steps to do" in r.stderr
    model = new_model(tmp_path / "m.pt", depth=2, filters=4, dropout=0.2)
    job = subprocess.Popen([PY, "-m", "emarray", "predict", str(tmp_path / "t" / "raw.zarr"),
                            str(model), str(tmp_path / "o.zarr"), "--mc-samples", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = job.stderr.readline()
    assert "predict:" in first and "to do" in first
    job.communicate(timeout=300)
    assert job.returncode == 0


def test_the_training_plot_draws_a_single_logged_point(tmp_path):
    from PIL import Image
    from emarray.training.report import plot
    state = {"history": [{"step": 20, "loss": 0.6, "lr": 1e-3, "elapsed_s": 1.0}],
             "evaluations": [], "best": None, "stopped": "", "step": 20}
    plot(state, tmp_path / "t.png", "f1")
    img = np.asarray(Image.open(tmp_path / "t.png").convert("RGB")).astype(int)
    left = img[:, : img.shape[1] // 2]
    blue = (np.abs(left - np.array([31, 119, 180])).sum(axis=2) < 60).sum()
    assert blue > 5  # the point is drawn, not an empty panel


def test_2_overwrite_replaces_an_interrupted_output_with_its_progress(tmp_path, monkeypatch):
    """What an interrupted job keeps (its bitmap, its record of the inputs' chunks) is the
    output's own: --overwrite replaces it."""
    a, out = _unfinished(tmp_path, monkeypatch)
    assert (out / PROGRESS_DIR / "inputs.npz").is_file()
    r = cli("-q", "threshold", tmp_path / "p.zarr", out, "--value", "0.2", "--overwrite")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(out).read(), a > 0.2)
