"""resolution: labels pooled by mode to each pyramid level, upsampled back and matched against
the original, against a whole-array NumPy reference (mode windows, np.repeat, IoU, VOI)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from skimage.metrics import variation_of_information

import emarray

from .conftest import make_volume
from .test_segment import cells, refused


def mode_pool(a: np.ndarray) -> np.ndarray:
    """2x2x2 windows (even shapes), the most frequent value, ties to the first in z,y,x."""
    out = np.zeros(tuple(s // 2 for s in a.shape), a.dtype)
    for z, y, x in np.ndindex(out.shape):
        w = a[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel().tolist()
        c = Counter(w)
        top = max(c.values())
        out[z, y, x] = next(v for v in w if c[v] == top)
    return out


def reference(truth: np.ndarray, levels: int, iou: float) -> list[dict]:
    rows, level = [], truth
    for k in range(1, levels + 1):
        level = mode_pool(level)
        f = 2 ** k
        up = level.repeat(f, 0).repeat(f, 1).repeat(f, 2)
        split, merge = variation_of_information(truth, up)
        lost = []
        for i in np.unique(truth[truth > 0]):
            t = truth == i
            best = max((np.count_nonzero(t & (up == j)) / np.count_nonzero(t | (up == j))
                        for j in np.unique(up[t]) if j > 0), default=0.0)
            if best < iou:  # above 0.5 a match is one-to-one by itself
                lost.append(int(t.sum()))
        rows.append({"factor": f"{f},{f},{f}", "voi": split + merge, "lost": len(lost),
                     "smallest_lost": min(lost, default=0), "largest_lost": max(lost, default=0)})
    return rows


def test_the_study_equals_a_whole_array_reference(tmp_path):
    truth, _ = cells(shape=(8, 24, 32), n=10, seed=41)
    rng = np.random.default_rng(41)
    for k in range(12):  # small objects, some lost at each factor
        z, y, x = int(rng.integers(0, 7)), int(rng.integers(0, 22)), int(rng.integers(0, 30))
        s = int(rng.integers(1, 4))
        truth[z:z + s, y:y + s, x:x + s] = 100 + k
    truth[truth == 3] = 0  # a background too
    for chunks in [(8, 24, 32), (3, 7, 10)]:
        v = make_volume(tmp_path / f"t{chunks[0]}.zarr", truth, chunks)
        df = emarray.resolution(v, out=tmp_path / f"study{chunks[0]}", levels=2,
                                factors="2,2,2", iou=0.6)
        want = reference(truth, 2, 0.6)
        assert df["factor"].tolist() == ["1,1,1", "2,2,2", "4,4,4"]
        assert df.loc[0, "recovered"] == df.loc[0, "objects"] == len(np.unique(truth)) - 1
        for row, ref in zip(df.iloc[1:].to_dict(orient="records"), want):
            assert row["voi"] == pytest.approx(ref["voi"], abs=1e-9)
            for key in ("lost", "smallest_lost", "largest_lost"):
                assert row[key] == ref[key], (key, row, ref)
        assert df["lost"].iloc[-1] > df["lost"].iloc[1] > 0
        saved = json.loads((tmp_path / f"study{chunks[0]}" / "resolution.json").read_text())
        assert [r["lost"] for r in saved["levels"]] == df["lost"].tolist()
        assert (tmp_path / f"study{chunks[0]}" / "resolution.png").stat().st_size > 0


def test_bad_input_is_one_line(tmp_path):
    make_volume(tmp_path / "f.zarr", np.zeros((4, 8, 8), np.float32), 4)
    make_volume(tmp_path / "l.zarr", np.zeros((4, 8, 8), np.uint32), 4)
    for args, says in (((tmp_path / "f.zarr",), "integer labels"),
                       ((tmp_path / "l.zarr", "--factors", "3,2,2"), "factors must be 1 or 2"),
                       ((tmp_path / "l.zarr", "--iou", "0"), "iou must be >= 0.01")):
        assert says in refused("resolution", *args, "--out", tmp_path / "s")
    assert not (tmp_path / "s").exists()
