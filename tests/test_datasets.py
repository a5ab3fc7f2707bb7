from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import emarray
from emarray.datasets import synthetic_block

from .helpers import cli, one_error_line


@pytest.mark.parametrize("kind", ["raw", "truth", "prob"])
def test_blocks_do_not_depend_on_chunking(kind):
    shape = (40, 70, 90)
    whole = synthetic_block(kind, tuple(slice(0, s) for s in shape), shape, seed=3)
    for z0, y0, x0, d in [(0, 0, 0, 17), (13, 31, 47, 23), (39, 69, 89, 1)]:
        reg = (slice(z0, min(z0 + d, 40)), slice(y0, min(y0 + d, 70)), slice(x0, min(x0 + d, 90)))
        np.testing.assert_array_equal(synthetic_block(kind, reg, shape, seed=3), whole[reg])
    assert not np.array_equal(whole, synthetic_block(kind, tuple(slice(0, s) for s in shape),
                                                      shape, seed=4))


def test_synthetic_volume_is_em_like(tmp_path):
    vols = emarray.datasets.synthetic(tmp_path, (64, 96, 96), chunks=(32, 48, 48))
    truth, prob, raw = (vols[k].read() for k in ("truth", "prob", "raw"))
    assert truth.dtype == np.uint32 and prob.dtype == np.float32 and raw.dtype == np.uint8
    fg = truth > 0
    assert 0.03 < fg.mean() < 0.3
    # objects are compact blobs: each id is one connected component
    ids = np.unique(truth[fg])
    labels, n = ndimage.label(fg)
    assert n == len(ids) > 5
    # the probability map is informative but noisy
    pred = prob > 0.5
    f1 = 2 * (pred & fg).sum() / (pred.sum() + fg.sum())
    assert 0.5 < f1 < 0.98
    assert raw[fg].mean() < raw[~fg].mean() - 30  # objects are darker than cytoplasm
    # written volumes equal the per-block function over the whole volume
    np.testing.assert_array_equal(prob, synthetic_block("prob", tuple(slice(0, s) for s in
                                                                      (64, 96, 96)), (64, 96, 96)))


def test_an_absurd_synthetic_size_is_refused_before_anything_is_made(tmp_path):
    line = one_error_line(cli("synthetic", tmp_path / "s", "--size", "1e12"))
    assert "1e+36 voxels" in line
    assert not (tmp_path / "s").exists()
