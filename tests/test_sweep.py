"""sweep against a per-threshold NumPy count (and scikit-learn's confusion matrix): every level of
a uint8 map, infinities and NaN, voxel units, warnings at the edge or for an empty truth."""
from __future__ import annotations

import json
import os
import subprocess
import zlib

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import confusion_matrix

import emarray
from emarray.cli import cli as cli_group
from emarray.errors import EmarrayWarning, InvalidArgumentError, OutputExistsError, ShapeMismatchError

from .conftest import make_volume, tree_digest
from .helpers import PY, cli


def naive(prob, truth_pos, t, valid=None):
    """The per-threshold NumPy count the sweep replaces (exact, in float64)."""
    valid = np.ones(prob.shape, bool) if valid is None else valid
    valid = valid & ~np.isnan(prob.astype(np.float64))
    pred = (prob.astype(np.float64) > t) & valid
    pos = truth_pos & valid
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    tn = int((valid & ~pred & ~pos).sum())
    return tp, fp, fn, tn


def check(df, prob, truth_pos, valid=None):
    for _, r in df.iterrows():
        assert (r.tp, r.fp, r.fn, r.tn) == naive(prob, truth_pos, r.threshold, valid), r.threshold


def _map(rng, shape, dtype):
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    a = rng.random(shape).astype(dtype)
    a.flat[::4] = np.round(a.flat[::4], 2)  # many values exactly at the thresholds k/100
    return a


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8"])
@pytest.mark.parametrize("chunks", [(4, 5, 6), (13, 17, 19), (3, 17, 2)])
def test_counts_equal_the_per_threshold_count(tmp_path, dtype, chunks):
    rng = np.random.default_rng(zlib.crc32(repr((dtype, chunks)).encode()))
    prob = _map(rng, (13, 17, 19), dtype)
    truth = (rng.random(prob.shape) < 0.3).astype(np.uint8)
    pv = make_volume(tmp_path / "p.zarr", prob, chunks)
    tv = make_volume(tmp_path / "t.zarr", truth, (5, 5, 5))
    values = None if dtype != "uint8" else [-1, 0, 0.5, 100, 127.5, 254, 255, 300]
    df = emarray.sweep(pv, tv, thresholds=100, values=values)
    assert len(df) == (100 if values is None else len(values))
    check(df, prob, truth > 0)


def test_agrees_with_scikit_learn_confusion_matrix(tmp_path):
    rng = np.random.default_rng(1)
    prob = rng.random((9, 10, 11)).astype(np.float32)
    truth = (rng.random(prob.shape) < 0.4).astype(np.uint8)
    df = emarray.sweep(make_volume(tmp_path / "p.zarr", prob, 4),
                       make_volume(tmp_path / "t.zarr", truth, 4), values=[0.1, 0.5, 0.77])
    for _, r in df.iterrows():
        tn, fp, fn, tp = confusion_matrix(truth.ravel(), (prob > r.threshold).ravel(),
                                          labels=[0, 1]).ravel()
        assert (r.tp, r.fp, r.fn, r.tn) == (tp, fp, fn, tn)
        from sklearn.metrics import f1_score, jaccard_score
        assert r.f1 == pytest.approx(f1_score(truth.ravel(), (prob > r.threshold).ravel()))
        assert r.iou == pytest.approx(jaccard_score(truth.ravel(), (prob > r.threshold).ravel()))


@pytest.mark.parametrize("kind", ["empty", "all"])
def test_empty_and_all_positive_truth(tmp_path, kind):
    prob = np.random.default_rng(2).random((6, 7, 8)).astype(np.float32)
    truth = np.zeros(prob.shape, np.uint8) if kind == "empty" else np.ones(prob.shape, np.uint8)
    df = emarray.sweep(make_volume(tmp_path / "p.zarr", prob, 3),
                       make_volume(tmp_path / "t.zarr", truth, 3), thresholds=10)
    check(df, prob, truth > 0)
    if kind == "empty":
        assert (df.recall == 0).all() and df.volume_diff_percent.isna().all()
    else:
        assert (df.fp == 0).all() and (df.precision[df.tp > 0] == 1).all()


def test_nan_voxels_are_excluded_and_reported(tmp_path):
    prob = np.random.default_rng(3).random((5, 6, 7)).astype(np.float32)
    prob[0, 0, :4] = np.nan
    prob[4, 5, 6] = np.nan
    truth = (np.random.default_rng(4).random(prob.shape) < 0.5).astype(np.uint8)
    df = emarray.sweep(make_volume(tmp_path / "p.zarr", prob, 3),
                       make_volume(tmp_path / "t.zarr", truth, 3), thresholds=20)
    assert df.attrs["nan_voxels"] == {0: 5}
    check(df, prob, truth > 0)
    assert (df.tp + df.fp + df.fn + df.tn == prob.size - 5).all()


def test_mask_ignore_value_and_truth_value(tmp_path):
    rng = np.random.default_rng(5)
    prob = rng.random((8, 9, 10)).astype(np.float32)
    truth = rng.integers(0, 4, prob.shape).astype(np.uint16)  # 3 = "unknown"
    mask = (rng.random(prob.shape) < 0.7).astype(np.uint8)
    pv = make_volume(tmp_path / "p.zarr", prob, 4)
    tv = make_volume(tmp_path / "t.zarr", truth, 4)
    mv = make_volume(tmp_path / "m.zarr", mask, 4)
    df = emarray.sweep(pv, tv, thresholds=10, truth_value=2, ignore_value=3, mask=mv)
    valid = (mask > 0) & (truth != 3)
    check(df, prob, truth == 2, valid)
    assert df.attrs["excluded_voxels"][0] == int((~valid).sum())


def test_multichannel_one_pass(tmp_path):
    rng = np.random.default_rng(6)
    prob = rng.random((3, 6, 7, 8)).astype(np.float32)
    truth3 = (rng.random((6, 7, 8)) < 0.5).astype(np.uint8)
    truth4 = (rng.random((3, 6, 7, 8)) < 0.5).astype(np.uint8)
    pv = emarray.create_volume(tmp_path / "p.zarr", prob.shape, "float32", (2, 3, 4, 4))
    pv.write(tuple(slice(0, s) for s in prob.shape), prob)
    tv3 = make_volume(tmp_path / "t3.zarr", truth3, 3)
    tv4 = emarray.create_volume(tmp_path / "t4.zarr", truth4.shape, "uint8", (1, 6, 7, 8))
    tv4.write(tuple(slice(0, s) for s in truth4.shape), truth4)
    df = emarray.sweep(pv, tv3, thresholds=10)
    assert sorted(df.channel.unique()) == [0, 1, 2]
    for c in range(3):
        check(df[df.channel == c], prob[c], truth3 > 0)
    df = emarray.sweep(pv, emarray.open_volume(tmp_path / "t4.zarr"), thresholds=10)
    for c in range(3):
        check(df[df.channel == c], prob[c], truth4[c] > 0)
    one = emarray.sweep(pv, tv3, thresholds=10, channel=1)
    assert list(one.channel.unique()) == [1]
    with pytest.raises(InvalidArgumentError, match="channel 3"):
        emarray.sweep(pv, tv3, channel=3)


def test_volume_in_cubic_micrometres(tmp_path):
    prob = np.ones((2, 2, 2), np.float32)
    truth = np.ones((2, 2, 2), np.uint8)
    df = emarray.sweep(make_volume(tmp_path / "p.zarr", prob, 2, voxel_size=(40, 4, 4)),
                       make_volume(tmp_path / "t.zarr", truth, 2), values=[0.5])
    assert df.predicted_voxels[0] == 8
    assert df.predicted_um3[0] == pytest.approx(8 * 0.04 * 0.004 * 0.004)
    assert df.volume_diff_percent[0] == 0


@pytest.mark.parametrize("kw,err,match", [
    ({"values": "0.1,nan"}, InvalidArgumentError, "values must be finite, got nan"),
    ({"thresholds": 0}, InvalidArgumentError, "thresholds must be a whole number"),
    ({"thresholds": "many"}, InvalidArgumentError, "'many'"),
    ({"truth_value": float("inf")}, InvalidArgumentError, "truth_value must be finite"),
])
def test_bad_arguments_fail_before_work(tmp_path, kw, err, match):
    pv = make_volume(tmp_path / "p.zarr", np.zeros((2, 2, 2), np.float32), 2)
    tv = make_volume(tmp_path / "t.zarr", np.zeros((2, 2, 2), np.uint8), 2)
    with pytest.raises(err, match=match):
        emarray.sweep(pv, tv, out=tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_and_existing_outputs(tmp_path):
    pv = make_volume(tmp_path / "p.zarr", np.zeros((2, 2, 2), np.float32), 2)
    tv = make_volume(tmp_path / "t.zarr", np.zeros((2, 2, 3), np.uint8), 2)
    with pytest.raises(ShapeMismatchError, match=r"\(2, 2, 3\)"):
        emarray.sweep(pv, tv)
    tv = make_volume(tmp_path / "t2.zarr", np.zeros((2, 2, 2), np.uint8), 2)
    emarray.sweep(pv, tv, out=tmp_path / "out")
    before = tree_digest(tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        emarray.sweep(pv, tv, out=tmp_path / "out", values=[0.3])
    assert tree_digest(tmp_path / "out") == before
    emarray.sweep(pv, tv, out=tmp_path / "out", values=[0.3], overwrite=True)


def test_gala_boundary_sweep_through_the_cli(shared_data, tmp_path):
    """The real boundary map against its ground-truth boundary (gt == 0), checked naively."""
    import h5py
    run = CliRunner()
    for src, dst in (("train-p1.lzf.h5", "p.zarr"), ("train-gt.lzf.h5", "gt.zarr")):
        r = run.invoke(cli_group, ["-q", "ingest", str(shared_data / "gala-flyem" / src),
                             str(tmp_path / dst), "--dataset", "stack", "--chunks", "16,64,64"])
        assert r.exit_code == 0, r.output
    r = run.invoke(cli_group, ["-q", "sweep", str(tmp_path / "p.zarr"), str(tmp_path / "gt.zarr"),
                         "--out", str(tmp_path / "sw"), "--truth-value", "0"])
    assert r.exit_code == 0, r.output
    assert "best F1" in r.output
    with h5py.File(shared_data / "gala-flyem/train-p1.lzf.h5") as f:
        prob = f["stack"][...]
    with h5py.File(shared_data / "gala-flyem/train-gt.lzf.h5") as f:
        gt = f["stack"][...]
    df = pd.read_csv(tmp_path / "sw" / "sweep.csv")
    assert len(df) == 100
    check(df, prob, gt == 0)
    meta = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    best = meta["best"]["0"]["f1"]
    assert best["f1"] == pytest.approx(0.51, abs=0.02) and best["threshold"] >= 0.95
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 10_000


def test_sweep_runs_on_processes_and_a_local_cluster(tmp_path):
    prob = np.random.default_rng(7).random((10, 11, 12)).astype(np.float32)
    truth = (prob + np.random.default_rng(8).random(prob.shape) * 0.5 > 0.8).astype(np.uint8)
    pv = make_volume(tmp_path / "p.zarr", prob, 4)
    tv = make_volume(tmp_path / "t.zarr", truth, 4)
    ref = emarray.sweep(pv, tv, thresholds=20, scheduler="synchronous")
    for sched in ("processes", "local-cluster"):
        df = emarray.sweep(pv, tv, thresholds=20, scheduler=sched, workers=2)
        pd.testing.assert_frame_equal(df, ref)


@pytest.mark.parametrize("tv,iv", [(300, None), (2.5, None), (1, -7), (1, 1.5)])
def test_values_the_truth_dtype_cannot_hold(tmp_path, tv, iv):
    rng = np.random.default_rng(11)
    prob = rng.random((4, 5, 6)).astype(np.float32)
    truth = rng.integers(0, 3, prob.shape).astype(np.uint8)
    df = emarray.sweep(make_volume(tmp_path / "p.zarr", prob, 3),
                       make_volume(tmp_path / "t.zarr", truth, 3), thresholds=5,
                       truth_value=tv, ignore_value=iv)
    check(df, prob, truth.astype(np.float64) == tv)  # nothing ignored: no voxel equals iv


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "int16", "int32", "uint32",
                                   "int64"])
def test_both_bucket_kernels_count_as_searchsorted(dtype):
    """The branch-free kernel (fine tables) and the searching one (clustered thresholds) give
    the bucket NumPy's searchsorted gives, values at and next to every threshold included."""
    from emarray.ops._histogram_cpu import bucket_histogram, lookup_table, one_step
    from emarray.ops.sweep import exact_thresholds, sweep_thresholds
    dt = np.dtype(dtype)
    rng = np.random.default_rng(zlib.crc32(dtype.encode()))
    cases = {"uniform": sweep_thresholds(100, None, dt), "clustered": None}
    if dt.kind == "f":
        x = rng.random(50_001).astype(dt)
        cases["clustered"] = np.array([0.3, np.nextafter(0.3, 1), 0.30001, 0.9])
        x[:8] = [np.nan, np.inf, -np.inf, 0.3, np.nextafter(dt.type(0.3), dt.type(1)), 0, 1, -2]
    else:
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, 50_001, dtype=dt, endpoint=True)
        cases["clustered"] = np.array([info.min + 1.0, info.min + 2.0, 0.0, info.max - 1.0])
        x[:4] = [info.min, info.max, 0, 1]
    for name, ts in cases.items():
        edges = exact_thresholds(dt, np.asarray(ts, np.float64))
        edges = np.unique(edges)
        x[8:8 + edges.size] = edges.astype(dt)  # values equal to every threshold
        cls = rng.integers(0, 3, x.size).astype(np.uint8)
        tab, t0, inv = lookup_table(edges)
        fast = dt.kind == "f" or dt.itemsize <= 4
        if name == "clustered" and dt != np.int8:  # int8's 256 values fit the table's cells
            fast = False
        assert one_step(edges, tab, t0, inv, dt) == fast, name
        out = np.zeros((edges.size + 1, 3), np.int64)
        nan = np.zeros(3, np.int64)
        bucket_histogram(x, cls, edges, tab, t0, inv, out, nan)
        finite = ~np.isnan(x.astype(np.float64)) if dt.kind == "f" else np.ones(x.size, bool)
        ref = np.zeros_like(out)
        np.add.at(ref, (np.searchsorted(edges, x[finite], side="left"), cls[finite]), 1)
        np.testing.assert_array_equal(out, ref, err_msg=f"{dtype} {name}")
        assert nan.tolist() == np.bincount(cls[~finite], minlength=3).tolist()


def test_a_single_threshold_sweep_over_infinities_does_not_crash(tmp_path):
    p = np.array([[[np.inf, -np.inf, 0.2, 0.7, np.nan, np.inf]]], np.float32)
    t = np.array([[[1, 0, 0, 1, 1, 0]]], np.uint8)
    pv, tv = make_volume(tmp_path / "p.zarr", p, 3), make_volume(tmp_path / "t.zarr", t, 3)
    df = emarray.sweep(pv, tv, values=[0.5])
    assert df[["tp", "fp", "fn", "tn"]].values.tolist() == [[2, 1, 0, 2]]
    assert df.attrs["nan_voxels"] == {0: 1}


def test_numba_kernels_under_bounds_checking():
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


def test_sweep_volumes_in_centimetres(tmp_path):
    p = np.full((2, 2, 2), 0.9, np.float32)
    pv = emarray.create_volume(tmp_path / "p.zarr", p.shape, p.dtype, 2, voxel_size=(1, 2, 3),
                               unit="centimeter")
    pv.write((slice(0, 2),) * 3, p)
    tv = make_volume(tmp_path / "t.zarr", np.ones((2, 2, 2), np.uint8), 2)
    df = emarray.sweep(emarray.open_volume(tmp_path / "p.zarr"), tv, values=[0.5])
    assert df["predicted_um3"].iloc[0] == pytest.approx(8 * 6 * 1e12)


def test_sweep_of_a_uint8_map_covers_every_level(shared_data, tmp_path):
    gala = shared_data / "gala-flyem"
    p = emarray.ingest(gala / "train-p1.lzf.h5", tmp_path / "p.zarr", voxel_size="10,10,10")
    t = emarray.ingest(gala / "train-gt.lzf.h5", tmp_path / "t.zarr", voxel_size="10,10,10")
    u8 = emarray.rescale(p, tmp_path / "p8.zarr", (0, 1))
    with _no_emarray_warning():
        df = emarray.sweep(u8, t, truth_value=0)
    assert len(df) == 255 and df["threshold"].tolist() == list(range(255))
    # independent count at every level
    prob, truth = u8.read(), t.read() == 0
    for k in (0, 100, 200, 254):
        pred = prob > k
        assert df.loc[k, "tp"] == np.count_nonzero(pred & truth)
        assert df.loc[k, "fp"] == np.count_nonzero(pred & ~truth)
    best = df.loc[df["f1"].idxmax()]
    assert best["threshold"] > 200 and best["f1"] > 0.45  # not the meaningless "t=0"
    assert df["f1"].nunique() > 100


class _no_emarray_warning:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings(record=True)
        self.got = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.got if issubclass(w.category, EmarrayWarning)]


def test_sweep_warns_at_the_edge_and_for_an_empty_truth(tmp_path):
    p = np.linspace(0, 1, 64, dtype=np.float32).reshape(4, 4, 4)
    pv = make_volume(tmp_path / "p.zarr", p, 2)
    tv = make_volume(tmp_path / "t.zarr", (p > 0.98).astype(np.uint8), 2)
    with pytest.warns(EmarrayWarning, match="edge of the thresholds swept"):
        df = emarray.sweep(pv, tv, values=[0.1, 0.2, 0.3])
    assert "edge" in df.attrs["warnings"][0]
    empty = make_volume(tmp_path / "e.zarr", np.zeros((4, 4, 4), np.uint8), 2)
    with pytest.warns(EmarrayWarning, match="no positive voxel"):
        emarray.sweep(pv, empty)
    r = cli("sweep", tmp_path / "p.zarr", tmp_path / "e.zarr", "--out", tmp_path / "s", "-q")
    assert r.returncode == 0 and "warning: the truth has no positive voxel" in r.stderr
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["warnings"]
