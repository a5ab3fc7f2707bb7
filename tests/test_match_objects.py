"""emarray.objects against scikit-image's regionprops; emarray.match against a dense IoU matrix
(stardist's matching), scikit-image's variation_of_information and adapted_rand_error; their
CSV tables hold the exact values (Python fractions as the reference), the histogram's ticks
are readable."""
from __future__ import annotations

import json

import cc3d
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.measure import regionprops_table
from skimage.metrics import adapted_rand_error, variation_of_information

import emarray
from emarray.errors import InvalidArgumentError

from .conftest import make_volume
from .helpers import cli, one_error_line


def instances(shape, seed, smooth=1.5, level=0.52, connectivity=6):
    r = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(r.random(shape), smooth) > level
    return cc3d.connected_components(mask.astype(np.uint8), connectivity=connectivity,
                                     out_dtype=np.uint32)


# -- objects ------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [(4, 5, 6), (16, 30, 30), (1, 7, 3)])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int64"])
def test_objects_equal_regionprops(tmp_path, chunks, dtype):
    a = (instances((16, 30, 30), 1) * 7).astype(dtype)  # sparse, non-sequential ids
    raw = np.random.default_rng(2).random(a.shape).astype(np.float32) * 100
    lv = make_volume(tmp_path / "l.zarr", a, chunks, voxel_size=(40, 4, 4))
    rv = make_volume(tmp_path / "r.zarr", raw, chunks)
    df = emarray.objects(lv, raw=rv, out=tmp_path / "o.csv")
    ref = pd.DataFrame(regionprops_table(
        a, intensity_image=raw, properties=("label", "area", "bbox", "centroid",
                                            "intensity_mean", "intensity_min", "intensity_max")))
    assert len(df) == len(ref) > 5
    np.testing.assert_array_equal(df["id"], ref["label"])
    np.testing.assert_array_equal(df["voxels"], ref["area"])
    for j, a_ in enumerate("zyx"):
        np.testing.assert_array_equal(df[f"bbox_{a_}0"], ref[f"bbox-{j}"])
        np.testing.assert_array_equal(df[f"bbox_{a_}1"], ref[f"bbox-{j + 3}"])
        np.testing.assert_allclose(df[f"centroid_{a_}"], ref[f"centroid-{j}"])
    np.testing.assert_allclose(df["centroid_z_um"], ref["centroid-0"] * 0.040)
    np.testing.assert_allclose(df["volume_um3"], ref["area"] * 40 * 4 * 4 / 1e9)
    np.testing.assert_allclose(df["mean_intensity"], ref["intensity_mean"], rtol=1e-5)
    np.testing.assert_array_equal(df["min_intensity"], ref["intensity_min"])
    np.testing.assert_array_equal(df["max_intensity"], ref["intensity_max"])
    back = pd.read_csv(tmp_path / "o.csv")
    np.testing.assert_array_equal(back["voxels"], df["voxels"])
    summary = json.loads((tmp_path / "o.json").read_text())
    assert summary["count"] == len(ref) and (tmp_path / "o.png").stat().st_size > 1000


def test_objects_cli_refuses_an_existing_table_and_a_bad_suffix(tmp_path):
    make_volume(tmp_path / "l.zarr", instances((6, 8, 8), 3), 4)
    r = cli("objects", tmp_path / "l.zarr", "--out", tmp_path / "o.csv", "-q")
    assert r.returncode == 0, r.stderr
    assert "objects" in r.stdout
    before = (tmp_path / "o.csv").read_bytes()
    line = one_error_line(cli("objects", tmp_path / "l.zarr", "--out", tmp_path / "o.csv"))
    assert "already exists" in line and (tmp_path / "o.csv").read_bytes() == before
    line = one_error_line(cli("objects", tmp_path / "l.zarr", "--out", tmp_path / "o.xlsx"))
    assert ".csv or .parquet" in line
    make_volume(tmp_path / "f.zarr", np.zeros((4, 4, 4), np.float32), 2)
    line = one_error_line(cli("objects", tmp_path / "f.zarr", "--out", tmp_path / "p.csv"))
    assert "integer ids" in line


# -- match --------------------------------------------------------------------------------------
def stardist_reference(t, p, thr):
    """The dense IoU matrix and stardist's assignment (the naive reference)."""
    tid, pid = np.unique(t[t > 0]), np.unique(p[p > 0])
    inter = np.array([[np.sum((t == a) & (p == b)) for b in pid] for a in tid], float)
    ta = np.array([np.sum(t == a) for a in tid])
    pa = np.array([np.sum(p == b) for b in pid])
    iou = inter / (ta[:, None] + pa[None, :] - inter)
    n = min(tid.size, pid.size)
    r, c = linear_sum_assignment(-(iou >= thr).astype(float) - iou / (2 * n))
    ok = iou[r, c] >= thr
    return int(ok.sum()), float(iou[r, c][ok].sum()), tid.size, pid.size


def pair(seed):
    t = instances((14, 28, 28), seed)
    p = t.copy()
    other = instances((14, 28, 28), seed + 100)
    p[:, :, 14:] = other[:, :, 14:]  # half right, half another segmentation
    p[p > 0] += 1000
    p[ndimage.binary_erosion(p > 0, iterations=1) == 0] = 0  # shrunk objects
    return t, p


@pytest.mark.parametrize("chunks", [(5, 7, 8), (14, 28, 28), (3, 3, 3)])
def test_match_equals_dense_references(tmp_path, chunks):
    t, p = pair(4)
    res = emarray.match(make_volume(tmp_path / "p.zarr", p, chunks),
                        make_volume(tmp_path / "t.zarr", t, chunks), out=tmp_path / "m")
    for row in res["matching"].itertuples():
        tp, s, nt, npred = stardist_reference(t, p, row.threshold)
        assert (row.tp, row.fp, row.fn) == (tp, npred - tp, nt - tp)
        assert row.f1 == pytest.approx(2 * tp / (2 * tp + (npred - tp) + (nt - tp)))
        assert row.mean_matched_score * row.tp == pytest.approx(s)
    split, merge = variation_of_information(t, p)
    assert res["voi_split"] == pytest.approx(split) and res["voi_merge"] == pytest.approx(merge)
    are, prec, rec = adapted_rand_error(t, p)
    assert res["adapted_rand_error"] == pytest.approx(are)
    assert (res["adapted_rand_precision"], res["adapted_rand_recall"]) == pytest.approx((prec, rec))
    objs = pd.read_csv(tmp_path / "m" / "objects.csv")
    truth_rows = objs[objs["kind"] == "truth"]
    assert len(truth_rows) == len(np.unique(t[t > 0]))
    fp_rows = objs[objs["kind"] == "false_positive"]
    assert len(fp_rows) == res["n_pred"] - res["matching"].set_index("threshold").loc[0.5, "tp"]
    for f in ("match.json", "matching.csv", "objects.csv", "match.png"):
        assert (tmp_path / "m" / f).stat().st_size > 0


def test_match_per_object_flags_and_volume_difference(tmp_path):
    t = np.zeros((4, 10, 30), np.uint32)
    t[:, :, 0:8], t[:, :, 10:18], t[:, :, 20:24], t[:, :, 26:30] = 1, 2, 3, 4
    p = np.zeros_like(t)
    p[:, :, 0:7] = 11                                   # 1: matched, 1/8 smaller
    p[:, :5, 10:18], p[:, 5:, 10:18] = 12, 13           # 2: split in two
    p[:, :, 20:30] = 14                                 # 3 and 4: merged into one
    res = emarray.match(make_volume(tmp_path / "p.zarr", p, (2, 5, 10)),
                        make_volume(tmp_path / "t.zarr", t, (2, 5, 10)))
    o = res["objects"].set_index("truth_id")
    assert o.loc[1, "matched_pred_id"] == 11
    assert o.loc[1, "relative_volume_difference"] == pytest.approx(-1 / 8)
    assert o.loc[2, "split"] and not o.loc[1, "split"]
    assert o.loc[3, "merged"] and o.loc[4, "merged"] and not o.loc[1, "merged"]
    assert res["mean_abs_relative_volume_difference"] == pytest.approx(
        o["relative_volume_difference"].abs().mean())


def test_match_labels_masks_first(tmp_path):
    t, p = pair(5)
    make_volume(tmp_path / "p.zarr", (p > 0).astype(np.uint8), (7, 14, 14))
    make_volume(tmp_path / "t.zarr", (t > 0).astype(np.uint8), (7, 14, 14))
    r = cli("match", tmp_path / "p.zarr", tmp_path / "t.zarr", "--out", tmp_path / "m",
            "--label", "--connectivity", "6", "-q")
    assert r.returncode == 0, r.stderr
    assert "VOI split" in r.stdout
    lt = emarray.open_volume(tmp_path / "m" / "truth-labels.zarr").read()
    np.testing.assert_array_equal(lt, t)  # instances() numbers as label does
    make_volume(tmp_path / "f.zarr", (p > 0).astype(np.float32), (7, 14, 14))
    line = one_error_line(cli("match", tmp_path / "f.zarr", tmp_path / "t.zarr", "--out",
                              tmp_path / "m2"))
    assert "not instance ids; give --label-first" in line
    # a 0/1 mask taken as instances is one object: said, not silently scored
    r = cli("match", tmp_path / "p.zarr", tmp_path / "t.zarr", "--out", tmp_path / "m3", "-q")
    assert r.returncode == 0 and "warning: " in r.stderr and "--label" in r.stderr


def test_match_refuses_mismatched_shapes_before_work(tmp_path):
    a = make_volume(tmp_path / "a.zarr", np.zeros((4, 4, 4), np.uint32), 2)
    b = make_volume(tmp_path / "b.zarr", np.zeros((4, 4, 5), np.uint32), 2)
    with pytest.raises(emarray.errors.ShapeMismatchError):
        emarray.match(a, b, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(InvalidArgumentError, match="threshold"):
        emarray.match(a, a, match_threshold=0)


def test_gala_watershed_against_truth(tmp_path, shared_data):
    gt = emarray.ingest(shared_data / "gala-flyem/train-gt.lzf.h5", tmp_path / "gt.zarr",
                        chunks=(16, 50, 100), progress=False)
    ws = emarray.ingest(shared_data / "gala-flyem/train-ws.lzf.h5", tmp_path / "ws.zarr",
                        chunks=(16, 50, 100), progress=False)
    res = emarray.match(ws, gt)
    t, p = gt.read(), ws.read()
    split, merge = variation_of_information(t, p)
    assert (res["voi_split"], res["voi_merge"]) == pytest.approx((split, merge))
    assert res["adapted_rand_error"] == pytest.approx(adapted_rand_error(t, p)[0])
    assert res["n_true"] == 87 and res["n_pred"] == len(np.unique(p[p > 0]))


def test_objects_parquet_or_a_clear_line_without_pyarrow(tmp_path):
    make_volume(tmp_path / "l.zarr", instances((6, 8, 8), 6), 4)
    r = cli("objects", tmp_path / "l.zarr", "--out", tmp_path / "o.parquet", "-q")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert "needs pyarrow" in one_error_line(r)
        assert not (tmp_path / "o.parquet").exists()
        return
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == len(np.unique(instances((6, 8, 8), 6))) - 1


def _one_assignment_over_linked_pairs(t, p, iou, thr, n_scale):
    """The reference, from the rule rather than from match.py's steps: one Hungarian assignment
    (stardist's cost) over the dense IoU matrix of every object with a candidate pair (IoU >= thr),
    in which a pair takes part when its two objects are linked through candidate pairs. The links
    are grown here by boolean matrix products until they stop changing (no graph library, no
    groups solved one by one, no shortcut for groups of one object)."""
    tid, ti = np.unique(t, return_inverse=True)
    pid, pj = np.unique(p, return_inverse=True)
    dense = np.zeros((tid.size, pid.size))
    dense[ti, pj] = iou
    cand = dense >= thr
    rows, cols = cand.any(axis=1), cand.any(axis=0)
    dense, cand = dense[rows][:, cols], cand[rows][:, cols]
    reach = np.eye(cand.shape[0], dtype=bool)  # truth objects linked to each truth object
    while True:
        grown = reach | ((reach.astype(int) @ cand.astype(int) @ cand.T.astype(int)) > 0)
        if (grown == reach).all():
            break
        reach = grown
    linked = (reach.astype(int) @ cand.astype(int)) > 0
    score = np.where(linked, dense, 0.0)
    r, c = linear_sum_assignment(-(score >= thr).astype(float) - score / (2 * n_scale))
    ok = score[r, c] >= thr
    return int(ok.sum()), float(score[r, c][ok].sum())


def _whole_matrix_count(t, p, iou, thr):
    """How many pairs stardist's assignment over the whole IoU matrix matches at ``thr``."""
    tid, ti = np.unique(t, return_inverse=True)
    pid, pj = np.unique(p, return_inverse=True)
    dense = np.zeros((tid.size, pid.size))
    dense[ti, pj] = iou
    r, c = linear_sum_assignment(-(dense >= thr).astype(float))
    return int((dense[r, c] >= thr).sum())


@pytest.mark.parametrize("seed", range(4))
def test_assignment_equals_one_assignment_over_the_whole_matrix(seed):
    """assign's pairs are one-to-one, all at or above the threshold, as many as the whole IoU
    matrix allows, with the total IoU of one Hungarian assignment over all linked pairs at once."""
    from emarray.ops.match import assign
    r = np.random.default_rng(seed)
    pairs = np.unique(np.stack([r.integers(0, 60, 500), r.integers(0, 70, 500)], 1), axis=0)
    t, p = pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)
    iou = r.random(len(t))
    iou[::9] = 0.5  # ties at a threshold
    for thr in (0.1, 0.3, 0.5, 0.7, 0.9):  # 0.9: many groups of one truth or one pred object
        got = assign(t, p, iou, thr, 40)
        assert np.unique(t[got]).size == np.unique(p[got]).size == got.size  # one-to-one
        assert (iou[got] >= thr).all()
        count, total = _one_assignment_over_linked_pairs(t, p, iou, thr, 40)
        assert got.size == count == _whole_matrix_count(t, p, iou, thr), thr
        assert iou[got].sum() == pytest.approx(total, rel=1e-12, abs=0), thr


@pytest.mark.parametrize("nx", [1, 7, 8, 9, 17, 64])
def test_run_tables_equal_numpy_for_every_run_length(nx):
    """The per-block run kernels (runs skipped eight voxels at a time) against NumPy, for rows
    whose length is below, at and past a multiple of eight and runs of every length."""
    from emarray.ops._runs import object_table, pair_table
    rng = np.random.default_rng(nx)
    lengths = rng.integers(1, 20, 4000)
    ids = np.repeat(rng.integers(0, 6, lengths.size), lengths)[: 5 * 3 * nx]
    lab = np.resize(ids, (5, 3, nx)).astype(np.uint32)
    got_ids, voxels, lo, hi, *_ = object_table(lab, None)
    ref_ids, first, counts = np.unique(lab.ravel(), return_index=True, return_counts=True)
    keep = ref_ids != 0
    order = np.argsort(first[keep])
    assert got_ids.tolist() == ref_ids[keep][order].tolist()
    assert voxels.tolist() == counts[keep][order].tolist()
    for k, v in enumerate(got_ids):
        where = np.argwhere(lab == v)
        assert lo[k].tolist() == where.min(axis=0).tolist()
        assert hi[k].tolist() == where.max(axis=0).tolist()
    truth = np.resize(np.repeat(rng.integers(0, 3, lengths.size), lengths[::-1]),
                      lab.shape).astype(np.uint32)
    pairs = pair_table(truth, lab)
    ref = {}
    for a, b in zip(truth.ravel().tolist(), lab.ravel().tolist()):
        ref[(a, b)] = ref.get((a, b), 0) + 1
    got = {(int(a), int(b)): int(n) for a, b, n in zip(pairs["t"], pairs["p"], pairs["n"])}
    assert got == ref


@pytest.mark.parametrize("voxel,unit,translation", [
    ((10, 10, 10), "nanometer", None),           # 87945 * (1000 * 0.001**3) was 0.08794500000000001
    ((50, 4.6, 4.6), "nanometer", (100, 0.3, 0.7)),
    ((0.01, 0.004, 0.004), "micrometer", None),
    ((40, 8, 8), "angstrom", (0.1, 0.2, 0.3)),
])
def test_csv_tables_hold_the_exact_values_not_float_noise(tmp_path, voxel, unit, translation):
    """Every physical value in the objects and sweep CSVs is the decimal its inputs make (voxel
    sizes as written, Python fractions as the reference); ratios are the double nearest the
    true ratio; each CSV reads back to the very doubles returned."""
    from fractions import Fraction as F

    import pandas as pd
    rng = np.random.default_rng(7)
    lab = rng.integers(0, 40, (12, 30, 30)).astype(np.uint32)
    lab[lab > 30] = 0
    v = emarray.create_volume(tmp_path / "l.zarr", lab.shape, lab.dtype, (6, 15, 15),
                              voxel_size=voxel, unit=unit, translation=translation)
    v.write(tuple(slice(0, s) for s in lab.shape), lab)
    df = emarray.objects(v, out=tmp_path / "o.csv", progress=False)
    text = pd.read_csv(tmp_path / "o.csv", dtype=str)
    um = {"nanometer": F(1, 1000), "micrometer": F(1), "angstrom": F(1, 10000)}[unit]
    size = [F(str(s)) for s in voxel]
    origin = [F(str(o)) for o in (translation or (0, 0, 0))]
    idx = np.indices(lab.shape)
    for row in text.itertuples():
        i = int(row.id)
        n = int(np.count_nonzero(lab == i))
        assert F(row.volume_um3) == n * size[0] * size[1] * size[2] * um ** 3, row.volume_um3
        for j, a in enumerate("zyx"):
            s = int(idx[j][lab == i].sum())
            exact = (F(s, n) * size[j] + origin[j]) * um
            assert float(getattr(row, f"centroid_{a}_um")) == float(exact)
    back = pd.read_csv(tmp_path / "o.csv", float_precision="round_trip")
    pd.testing.assert_frame_equal(back, df.reset_index(drop=True), check_dtype=False,
                                  check_exact=True)
    mask = emarray.create_volume(tmp_path / "p.zarr", lab.shape, "float32", (6, 15, 15),
                                 voxel_size=voxel, unit=unit)
    prob = rng.random(lab.shape).astype(np.float32)
    mask.write(tuple(slice(0, s) for s in lab.shape), prob)
    emarray.sweep(mask, v, out=tmp_path / "s", thresholds=20, progress=False)
    sw = pd.read_csv(tmp_path / "s" / "sweep.csv", dtype=str)
    for row in sw.itertuples():
        for count, col in ((row.predicted_voxels, row.predicted_um3),
                           (row.true_voxels, row.true_um3)):
            assert F(col) == int(count) * size[0] * size[1] * size[2] * um ** 3, col
        tp, fp = int(row.tp), int(row.fp)
        assert float(row.precision) == (float(F(tp, tp + fp)) if tp + fp else 0.0)
        assert F(row.threshold) == F(int(round(float(row.threshold) * 20)), 20)
    # match's tables: ratios of counts, each the double nearest the true ratio
    other = emarray.create_volume(tmp_path / "o.zarr", lab.shape, lab.dtype, (6, 15, 15),
                                  voxel_size=voxel, unit=unit)
    other.write(tuple(slice(0, s) for s in lab.shape), np.roll(lab, 2, axis=2))
    emarray.match(other, v, out=tmp_path / "m", progress=False)
    mt = pd.read_csv(tmp_path / "m" / "matching.csv", dtype=str)
    for row in mt.itertuples():
        tp, fp, fn = int(row.tp), int(row.fp), int(row.fn)
        assert float(row.precision) == float(F(tp, tp + fp)) and float(row.f1) == float(
            F(2 * tp, 2 * tp + fp + fn))
    obj = pd.read_csv(tmp_path / "m" / "objects.csv", dtype=str).dropna(
        subset=["relative_volume_difference"])
    for row in obj[obj["kind"] == "truth"].itertuples():
        if int(row.pred_voxels):
            want = F(int(row.pred_voxels) - int(row.truth_voxels), int(row.truth_voxels))
            assert float(row.relative_volume_difference) == float(want)


@pytest.mark.parametrize("lo,hi", [(2.3e-4, 8.1e-4), (9e-4, 3.1e-3), (1e-3, 0.12), (1e-6, 0.1),
                                   (1e-4, 30.0), (1000.0, 1100.0)])
def test_the_objects_histogram_has_readable_ticks(tmp_path, monkeypatch, lo, hi):
    """Three or more labelled ticks inside the data's range, increasing, whatever the spread
    (a log axis over less than a decade showed one tick, or none); whole counts up the side."""
    import pandas as pd

    from emarray import figures
    from emarray.ops.objects import plot_volumes
    made = []
    real = figures.subplots
    monkeypatch.setattr(figures, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    v = np.concatenate([[lo, hi], np.geomspace(lo, hi, 50)])
    plot_volumes(pd.DataFrame({"volume_um3": v}), tmp_path / "h.png", title="t")
    fig, ax = made[0]
    fig.canvas.draw()
    ticks = [(t, lab.get_text()) for t, lab in zip(ax.get_xticks(), ax.get_xticklabels())
             if lo <= t <= hi and lab.get_text()]
    assert len(ticks) >= 3, ticks
    assert [float(text.replace("−", "-")) for _, text in ticks] == sorted(
        float(text.replace("−", "-")) for _, text in ticks)
    assert all(float(y).is_integer() for y in ax.get_yticks())
    assert (tmp_path / "h.png").stat().st_size > 1000
