"""evaluate: an agglomeration scored at every threshold from one pass, against scikit-image's
scores of the segmentation agglomerate writes at each threshold."""
from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

import emarray

from .conftest import make_volume
from .test_segment import cells, refused


def agglomerated(tmp_path, chunks, min_size=0):
    truth, b = cells(shape=(10, 30, 32), n=12, seed=31)
    bv = make_volume(tmp_path / "b.zarr", b, chunks)
    tv = make_volume(tmp_path / "t.zarr", truth, chunks)
    f = emarray.watershed(bv, tmp_path / "f.zarr", threshold=0.2, seed_method="maxima",
                          halo=(2, 6, 6))
    cuts = [0.1, 0.3, 0.45, 0.6, 0.9]
    s = emarray.agglomerate(f, bv, tmp_path / "s.zarr", threshold=cuts[0],
                            thresholds=cuts[1:], min_size=min_size)
    return s, tv, truth, cuts


@pytest.mark.parametrize("chunks,min_size", [((10, 30, 32), 0), ((4, 11, 13), 40)])
def test_every_threshold_scores_as_scikit_image_on_the_cut(tmp_path, chunks, min_size):
    s, tv, truth, cuts = agglomerated(tmp_path, chunks, min_size)
    df = emarray.evaluate(s, tv, out=tmp_path / "eval", thresholds=cuts)
    assert df["threshold"].tolist() == cuts
    for t, row in zip(cuts, df.itertuples()):
        seg = s.read() if t == cuts[0] else emarray.open_volume(s.url + f"/t{t:g}").read()
        split, merge = variation_of_information(truth, seg)
        assert (row.voi_split, row.voi_merge) == pytest.approx((split, merge), abs=1e-9), t
        assert row.adapted_rand_error == pytest.approx(adapted_rand_error(truth, seg)[0],
                                                       abs=1e-9)
        assert row.segments == len(np.unique(seg[seg > 0]))
    assert len(set(df["segments"])) > 2  # the cuts differ
    best = json.loads((tmp_path / "eval" / "evaluate.json").read_text())["best"]
    assert best["voi"] == pytest.approx(df["voi"].min())
    assert best["threshold"] == df.loc[df["voi"].idxmin(), "threshold"]
    assert (tmp_path / "eval" / "evaluate.png").stat().st_size > 0
    again = emarray.evaluate(s, tv, thresholds=cuts, min_size=0)  # the graph's cuts, unmerged
    if min_size:
        assert (again["segments"] >= df["segments"]).all()
        assert (again["segments"] > df["segments"]).any()


def test_the_default_is_a_hundred_and_one_thresholds_and_bad_input_is_one_line(tmp_path):
    s, tv, truth, _ = agglomerated(tmp_path, (5, 15, 16))
    code_out = emarray.evaluate(s, tv)
    assert code_out["threshold"].tolist() == pytest.approx([k / 100 for k in range(101)])
    make_volume(tmp_path / "small.zarr", truth[:5], (5, 15, 16))
    make_volume(tmp_path / "float.zarr", truth.astype(np.float32), (5, 15, 16))
    for args, says in (((s.url + "/t0.3", tmp_path / "t.zarr"), "holds no graph.npz"),
                       ((s.url, tmp_path / "small.zarr"), "the truth has shape"),
                       ((s.url, tmp_path / "float.zarr"), "not instance ids"),
                       ((s.url, tmp_path / "t.zarr", "--thresholds", "0.5,2"),
                        "within [0, 1]")):
        line = refused("evaluate", *args, "--out", tmp_path / "e")
        assert says in line, line
    assert not (tmp_path / "e").exists()
    # fragments rewritten since the graph was built: refused before any work
    f = emarray.open_volume(tmp_path / "f.zarr")
    f.write((slice(0, 1), slice(0, 1), slice(0, 1)), np.array([[[7]]], f.dtype))
    assert "changed since" in refused("evaluate", s.url, tmp_path / "t.zarr", "--out",
                                      tmp_path / "e")


def test_skeletons_add_the_erl_of_every_cut_as_emarray_erl_scores_it(tmp_path):
    """With skeletons, each threshold's ERL equals emarray.erl on the segmentation agglomerate
    wrote at that threshold (an independent path: it reads the written cut)."""
    s, tv, truth, cuts = agglomerated(tmp_path, (4, 11, 13))
    sk = tmp_path / "skel"
    sk.mkdir()
    rng = np.random.default_rng(3)
    for k, obj in enumerate(np.unique(truth[truth > 0])[:6]):
        z, y, x = np.nonzero(truth == obj)
        pick = np.sort(rng.choice(len(z), size=min(12, len(z)), replace=False))
        # a path through voxels of the object, in x, y, z at voxel centres (voxel size 1)
        rows = [f"{i + 1} 0 {x[j] + 0.5} {y[j] + 0.5} {z[j] + 0.5} 1 {i if i else -1}"
                for i, j in enumerate(pick)]
        (sk / f"{k}.swc").write_text("\n".join(rows) + "\n")
    df = emarray.evaluate(s, tv, skeletons=sk, out=tmp_path / "eval", thresholds=cuts)
    for t, row in zip(cuts, df.itertuples()):
        cut = s if t == cuts[0] else emarray.open_volume(s.url + f"/t{t:g}")
        want = emarray.erl(cut, sk)
        assert (row.erl, row.erl_merge) == pytest.approx((want.erl, want.erl_merge)), t
    assert df["erl"].nunique() > 1 and (df["erl_merge"] <= df["erl"] + 1e-12).all()
    assert "erl" in (tmp_path / "eval" / "evaluate.csv").read_text().splitlines()[0]
