"""Training's sampler, paired augmentation and losses, against independent references."""
from __future__ import annotations

import numpy as np
import pytest

from emarray.training.augment import AugmentConfig, draw
from emarray.training.sampler import IGNORE, ArraySource, Pair, PatchSampler, Target
from tests.conftest import make_volume

SIZE = (6, 10, 14)
ALL = AugmentConfig(elastic=0.0, contrast=0.0, gamma=0.0, noise=0.0, blur=0.0)


def _coords(shape, origin=(0, 0, 0)):
    """Labels encoding each voxel's coordinates, and a raw that is a linear function of them."""
    z, y, x = np.indices(shape)
    z, y, x = z + origin[0], y + origin[1], x + origin[2]
    lab = (((z + 50) * 200 + y + 50) * 200 + x + 50).astype(np.int64)  # boxes may start < 0
    raw = (z * 0.5 + y * 0.25 + x * 0.125).astype(np.float32)
    return raw, lab


def _decode(lab):
    return lab // 40_000 - 50, (lab // 200) % 200 - 50, lab % 200 - 50


def _apply(t, raw, lab):
    box = t.box
    # the box may start before 0 (deformations): build the arrays for it from coordinates
    r, labb = _coords(tuple(b.stop - b.start for b in box), tuple(b.start for b in box))
    return t.apply(r, labb)


@pytest.mark.parametrize("aniso", [False, True])
def test_geometric_transforms_move_raw_and_labels_together(aniso):
    cfg = AugmentConfig(elastic=0.0, contrast=0.0, gamma=0.0, noise=0.0, blur=0.0,
                        anisotropic=aniso)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        t = draw(rng, SIZE, cfg)
        seen.add(repr(t.ops))
        x, lab = _apply(t, None, None)
        assert x.shape == SIZE and lab.shape == SIZE
        z, y, xx = _decode(lab)
        np.testing.assert_array_equal(x, (z * 0.5 + y * 0.25 + xx * 0.125).astype(np.float32))
        # every source voxel of the box appears once: a permutation, nothing interpolated
        assert np.unique(lab).size == lab.size
        if aniso:  # z is never swapped with y or x: each output section comes from one section
            assert all(np.unique(z[k]).size == 1 for k in range(SIZE[0]))
    assert len(seen) > 10


def test_elastic_and_misalignment_sample_labels_at_the_nearest_source_voxel():
    cfg = AugmentConfig(elastic=1.0, elastic_magnitude=(2.0, 3.0, 3.0), elastic_spacing=(3, 4, 4),
                        misalignment=1.0, misalignment_shift=3, contrast=0.0, gamma=0.0,
                        noise=0.0, blur=0.0)
    rng = np.random.default_rng(1)
    moved = 0
    for _ in range(20):
        t = draw(rng, SIZE, cfg)
        assert t.coords is not None
        x, lab = _apply(t, None, None)
        z, y, xx = _decode(lab)
        # raw is linear in the coordinates, so its interpolation is exact: it is f(source
        # position); the label is the voxel nearest that position, at most half a voxel away
        f_label = z * 0.5 + y * 0.25 + xx * 0.125
        assert np.abs(x - f_label).max() <= 0.5 * (0.5 + 0.25 + 0.125) + 1e-4
        exact = np.stack([z, y, xx]).astype(np.float32)
        np.testing.assert_array_equal(exact, np.floor(t.coords + 0.5))
        moved += int((np.abs(t.coords - np.indices(SIZE)).max()) > 0.5)
    assert moved >= 15


def test_labels_keep_only_their_values_under_every_transform():
    values = np.array([0, 3, 7, 1_000_003, 2**40], np.int64)
    rng = np.random.default_rng(2)
    lab_vol = values[rng.integers(0, values.size, (30, 40, 40))]
    raw = rng.integers(0, 255, lab_vol.shape).astype(np.uint8)
    full = AugmentConfig(elastic=1.0, misalignment=1.0, missing_section=0.3, contrast=1, gamma=1,
                         noise=1, blur=1)
    s = PatchSampler([Pair(ArraySource(raw), ArraySource(lab_vol))], (8, 16, 16), (8, 16, 16),
                     target=Target(classes=2, foreground=(3, 7)), augment=full, seed=3)
    for step in range(20):
        rng2 = np.random.default_rng(step)
        k, start = s.location(rng2)
        t = draw(rng2, s.patch, full)
        box = tuple(slice(a + b.start, a + b.stop) for a, b in zip(start, t.box))
        from emarray.engine.contract import read_padded
        src = read_padded(ArraySource(lab_vol), box, "reflect")
        _, lab = t.apply(read_padded(ArraySource(raw), box, "reflect").astype(np.float32), src)
        assert set(np.unique(lab)) <= set(values.tolist())
        x, y = s.batch(step, 2)
        assert set(np.unique(y)) <= {0, 1}


def test_intensity_changes_raw_only_and_missing_sections_are_blank():
    cfg = AugmentConfig.off()
    cfg = AugmentConfig(**{**cfg.__dict__, "contrast": 1.0, "gamma": 1.0, "noise": 1.0, "blur": 1.0,
                           "missing_section": 0.5})
    t = draw(np.random.default_rng(5), SIZE, cfg)
    raw, lab = _coords(SIZE)
    x, lab2 = t.apply(raw / raw.max(), lab)
    np.testing.assert_array_equal(lab2, lab)
    assert t.missing and all(np.all(x[z] == 0) for z in t.missing)
    assert not np.allclose(x, raw / raw.max())


def _pair_arrays(shape=(23, 37, 41), seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, shape).astype(np.uint8)
    lab = np.zeros(shape, np.uint32)
    lab[5:15, 10:25, 8:30] = 4
    lab[2:6, 2:8, 30:40] = 9
    return raw, lab


@pytest.mark.parametrize("chunks", [(5, 7, 9), (23, 37, 41), (8, 16, 16)])
def test_zarr_patches_equal_in_ram_patches(tmp_path, chunks):
    raw, lab = _pair_arrays()
    r = make_volume(tmp_path / "r.zarr", raw, chunks)
    lv = make_volume(tmp_path / "l.zarr", lab, chunks)
    aug = AugmentConfig(elastic=0.5, misalignment=0.3)
    kw = dict(target=Target(), augment=aug, mode="foreground", seed=4, cache_bytes=1 << 16)
    a = PatchSampler([Pair(r, lv)], (8, 16, 16), (8, 16, 16), **kw)
    b = PatchSampler([Pair(ArraySource(raw), ArraySource(lab))], (8, 16, 16), (8, 16, 16), **kw)
    for step in range(12):
        xa, ya = a.batch(step, 2)
        xb, yb = b.batch(step, 2)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    st = a.cache_stats()
    assert st["hits"] > 0 and st["misses"] > 0


def test_unaugmented_patches_are_the_volume_at_the_location(tmp_path):
    raw, lab = _pair_arrays()
    s = PatchSampler([Pair(ArraySource(raw), ArraySource(lab))], (12, 20, 20), (4, 12, 12),
                     target=Target(), mode="uniform", seed=1, normalize=(10.0, 2.0))
    for i in range(10):
        rng = np.random.default_rng([1, i])
        k, start = s.location(np.random.default_rng([1, i]))
        x, y = s.sample(rng)
        assert x.shape == (1, 12, 20, 20) and y.shape == (4, 12, 12)
        win = tuple(slice(a, a + o) for a, o in zip(start, (4, 12, 12)))
        np.testing.assert_array_equal(y, (lab[win] > 0).astype(np.int8))   # valid net: centre crop
        inner = x[0, 4:8, 4:16, 4:16]
        np.testing.assert_allclose(inner, (raw[win].astype(np.float32) - 10) / 2, rtol=1e-6)


def test_patches_stay_inside_the_mask_and_outside_the_held_out_region(tmp_path):
    raw, lab = _pair_arrays((30, 40, 40))
    mask = np.zeros(raw.shape, np.uint8)
    mask[3:20, 5:35, 0:25] = 1
    mask[22:30, :, :] = 1
    held = (slice(22, 30), slice(0, 40), slice(0, 40))
    vols = [make_volume(tmp_path / f"{n}.zarr", a, (7, 9, 11)) for n, a in
            (("r", raw), ("l", lab), ("m", mask))]
    for mode, per_region in (("uniform", 0), ("foreground", 0), ("balanced", 0), ("uniform", 4),
                             ("foreground", 4)):
        s = PatchSampler([Pair(*vols, exclude=held)], (6, 12, 12), (6, 12, 12), target=Target(),
                         augment=AugmentConfig(elastic=1.0), mode=mode, seed=2,
                         patches_per_region=per_region)
        for i in range(40):
            k, start = s.location(np.random.default_rng([i]), s.zone(i // 4))
            win = tuple(slice(a, a + 6 if j == 0 else a + 12) for j, a in enumerate(start))
            assert mask[win].all(), (mode, start)
            assert win[0].stop <= 22, (mode, start)
        for step in range(5):  # deformed patches: what came from outside the mask is ignored
            x, y = s.batch(step, 2)
            assert set(np.unique(y)) <= {IGNORE, 0, 1}


def test_foreground_and_balanced_sampling_find_rare_classes():
    raw, lab = _pair_arrays((30, 60, 60))
    lab[:] = 0
    lab[10:13, 30:33, 30:33] = 1   # 27 foreground voxels in 108,000
    src = [Pair(ArraySource(raw), ArraySource(lab))]
    hits = {}
    for mode in ("uniform", "foreground", "balanced"):
        s = PatchSampler(src, (4, 8, 8), (4, 8, 8), target=Target(), mode=mode, seed=0,
                         foreground_fraction=0.5)
        hits[mode] = np.mean([s.batch(i, 1)[1].any() for i in range(200)])
    assert hits["uniform"] < 0.1
    assert 0.4 < hits["foreground"] < 0.8
    assert hits["balanced"] > 0.4


def test_softmax_targets_check_their_classes():
    t = Target(classes=3, binary=False, ignore=9)
    np.testing.assert_array_equal(t(np.array([0, 2, 9, 1]), None), [0, 2, IGNORE, 1])
    from emarray.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="label value 5"):
        t.check(np.array([0, 5, 9]), "labels")


# -- losses against NumPy --------------------------------------------------------------------
def _np_bce(z, t):
    p = 1 / (1 + np.exp(-z))
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def test_losses_equal_numpy_and_ignore_ignored_voxels():
    torch = pytest.importorskip("torch")
    from emarray.training.losses import LossConfig, loss
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 1, 3, 4, 5)).astype(np.float64)
    t = rng.integers(0, 2, (2, 3, 4, 5))
    t[0, 0] = IGNORE
    valid = t >= 0
    w = np.where(t == 1, 3.0, 0.5) * valid
    bce = (_np_bce(z[:, 0], np.clip(t, 0, 1)) * w).sum() / w.sum()
    p = 1 / (1 + np.exp(-z[:, 0]))
    tt = (t == 1).astype(float)
    dice = 1 - (2 * (p * tt * w).sum() + 1) / ((p * w).sum() + (tt * w).sum() + 1)
    zt, tt_ = torch.tensor(z, dtype=torch.float32), torch.tensor(t)
    for kind, want in (("bce", bce), ("dice", dice), ("bce+dice", bce + dice)):
        got = float(loss(zt, tt_, LossConfig(kind, (0.5, 3.0)), False, 2))
        assert abs(got - want) < 1e-5, kind
    # what the net says on ignored voxels changes nothing
    z2 = z.copy()
    z2[0, 0, 0] += 100
    assert float(loss(torch.tensor(z2, dtype=torch.float32), tt_, LossConfig(), False, 2)) == \
        pytest.approx(float(loss(zt, tt_, LossConfig(), False, 2)), abs=1e-6)


def test_softmax_cross_entropy_and_ohem_equal_numpy():
    torch = pytest.importorskip("torch")
    from emarray.training.losses import LossConfig, loss
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1, 3, 2, 6, 6))
    t = rng.integers(0, 3, (1, 2, 6, 6))
    lse = np.log(np.exp(z).sum(1))
    ce = lse - np.take_along_axis(z, t[:, None], 1)[:, 0]
    got = float(loss(torch.tensor(z, dtype=torch.float32), torch.tensor(t), LossConfig("bce"), True, 3))
    assert abs(got - ce.mean()) < 1e-5
    # OHEM (binary): every positive, and the hardest 2x as many negatives
    zb = rng.normal(size=(1, 1, 4, 8, 8))
    tb = (rng.random((1, 4, 8, 8)) < 0.1).astype(np.int64)
    v = _np_bce(zb[:, 0], tb)
    npos = int(tb.sum())
    neg = np.sort(v[tb == 0])[::-1][:2 * npos]
    want = (v[tb == 1].sum() + neg.sum()) / (npos + neg.size)
    got = float(loss(torch.tensor(zb, dtype=torch.float32), torch.tensor(tb),
                     LossConfig("bce", ohem=2.0, ohem_min=0), False, 2))
    assert abs(got - want) < 1e-5


def test_several_patches_per_region_come_from_that_region(tmp_path):
    """With patches_per_region K, patches i*K..i*K+K-1 lie in one region of whole cells (when a
    window fits there), the regions move, and zarr still equals RAM."""
    raw, lab = _pair_arrays((64, 160, 160))
    lab[20:50, 60:140, 30:150] = 2
    r = make_volume(tmp_path / "r.zarr", raw, (16, 32, 32))
    lv = make_volume(tmp_path / "l.zarr", lab, (16, 32, 32))
    kw = dict(target=Target(), mode="foreground", seed=5, patches_per_region=4)
    s = PatchSampler([Pair(r, lv)], (8, 24, 24), (8, 24, 24), **kw)
    ram = PatchSampler([Pair(ArraySource(raw), ArraySource(lab))], (8, 24, 24), (8, 24, 24), **kw)
    assert s.region_cells == (1, 2, 2)
    zones = set()
    for group in range(12):
        k, box = s.zone(group)
        zones.add(tuple((b.start, b.stop) for b in box))
        lo = [b.start * 32 for b in box]
        hi = [min(n, b.stop * 32) for b, n in zip(box, raw.shape)]
        for i in range(4):
            _, start = s.location(np.random.default_rng([group, i]), (k, box))
            for a, o in enumerate((8, 24, 24)):
                assert lo[a] <= start[a] and start[a] + o <= hi[a], (box, start)
    assert len(zones) > 4
    for step in range(6):
        for a, b in zip(s.batch(step, 3), ram.batch(step, 3)):
            np.testing.assert_array_equal(a, b)
