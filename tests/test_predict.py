"""Inference: `emarray predict` equals one sliding window over the whole volume.

The reference here runs the network tile by tile over the whole (reflect-padded) volume in
RAM, with tile positions computed by its own loop; MONAI's sliding_window_inference is a
second, independent reference where its tiling is the same.

Tolerance: ``predict`` runs its convolutions channels-last in batches (oneDNN), the references
one contiguous patch at a time (PyTorch's own convolution), so their float32 sums differ a
little: the check allows 1e-4 of the output's range. The test models see a high-contrast input
(normalised by 128,16) so that their outputs vary: there a wrong blend or a tile misplaced by one
voxel differs by 1e-2 to 1e-1 of the range, a hundred times the tolerance and more.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import emarray  # noqa: E402
from emarray.engine.checkpoint import PROGRESS_DIR, Checkpoint  # noqa: E402
from emarray.models import UNetConfig, build_model, load_model, new_model  # noqa: E402
from emarray.ops.predict import mc_seed, tile_weights  # noqa: E402

from .conftest import make_volume, real_dask_cluster  # noqa: E402
from .helpers import cli, one_error_line, wait_for  # noqa: E402


def assert_close(got, want):
    assert got.shape == want.shape
    spread = float(np.ptp(want))
    assert spread > 1e-3  # the network's output varies: a wrong tiling would show
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * spread)


def _starts(n: int, o: int, s: int) -> list[int]:
    if n <= o:
        return [0]
    out, k = [], 0
    while k * s + o < n:
        out.append(k * s)
        k += 1
    out.append(n - o)
    return sorted(set(out))


def reference(raw, mf, patch, overlap, blend, channels=None, samples=0, seed=0):
    """The whole-volume sliding window, one tile at a time, in C order of the tiles."""
    cfg = mf.config
    out, ctx = cfg.output_size(patch), cfg.context()
    x = (raw.astype(np.float32) - np.float32(mf.normalize["mean"])) / np.float32(mf.normalize["std"])
    if x.ndim == 3:
        x = x[None]
    n = x.shape[1:]
    pad = [(0, 0)] + [(c, max(m, o) - m + c) for m, o, c in zip(n, out, ctx)]
    xp = np.pad(x, pad, mode="symmetric")
    w = tile_weights(out, blend)
    chans = list(channels) if channels is not None else list(range(cfg.out_channels))
    acc = np.zeros((len(chans), *[max(m, o) for m, o in zip(n, out)]), np.float32)
    accv = np.zeros_like(acc)
    wsum = np.zeros(acc.shape[1:], np.float32)
    strides = [o - v for o, v in zip(out, overlap)]
    for t in np.ndindex(*[len(_starts(m, o, s)) for m, o, s in zip(n, out, strides)]):
        start = [_starts(m, o, s)[i] for i, m, o, s in zip(t, n, out, strides)]
        inp = xp[(slice(None),) + tuple(slice(a, a + o + 2 * c) for a, o, c in zip(start, out, ctx))]
        preds = []
        for k in range(max(1, samples)):
            from emarray.models.unet import mc_seeds
            with torch.no_grad():
                if samples > 1:
                    with mc_seeds([mc_seed(seed, start, k)]):
                        y = mf.module(torch.from_numpy(inp[None].copy()))
                else:
                    y = mf.module(torch.from_numpy(inp[None].copy()))
            preds.append(y[0].numpy()[chans])
        p = np.stack(preds)
        where = (slice(None),) + tuple(slice(a, a + o) for a, o in zip(start, out))
        acc[where] += w * p.mean(axis=0, dtype=np.float64).astype(np.float32)
        accv[where] += w * p.var(axis=0, dtype=np.float64).astype(np.float32)
        wsum[where[1:]] += w
    crop = (slice(None),) + tuple(slice(0, m) for m in n)
    mean, var = (acc / wsum)[crop], (accv / wsum)[crop]
    if len(chans) == 1:
        mean, var = mean[0], var[0]
    return mean, var


def _raw(shape, seed=0, dtype=np.uint8):
    from scipy import ndimage
    a = np.random.default_rng(seed).random(shape)
    a = ndimage.gaussian_filter(a, 1.5)
    a = (a - a.min()) / (a.max() - a.min())
    return (a * 255).astype(dtype) if np.dtype(dtype).kind == "u" else a.astype(dtype)


def _model(tmp_path, name="m.pt", **kw):
    kw = {"depth": 2, "filters": 4, "seed": 3, "normalize": "128,16", **kw}
    return new_model(tmp_path / name, **kw)


# -- the model zoo ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    UNetConfig(depth=2, filters=2),
    UNetConfig(depth=3, filters=2, padding="valid"),
    UNetConfig(depth=3, filters=2, padding="valid", pool=((1, 2, 2), (2, 2, 2)), residual=True),
    UNetConfig(depth=3, filters=2, pool=((1, 2, 2), (1, 2, 2)), norm="group", out_channels=3,
               activation="softmax"),
    UNetConfig(depth=4, filters=2, padding="valid", norm="instance", dropout=0.3),
])
def test_sizes_are_what_the_network_does(cfg):
    net = build_model(cfg, seed=0).eval()
    rng = np.random.default_rng(0)
    tried = 0
    for _ in range(12):
        size = tuple(int(s) for s in rng.integers(8, 70, 3))
        want = cfg.output_size(size)
        x = torch.zeros((1, cfg.in_channels) + size)
        if want is None:
            continue
        tried += 1
        with torch.no_grad():
            assert tuple(net(x).shape) == (1, cfg.out_channels) + want
    for a in range(3):  # the admissible sizes all run, with the listed outputs
        for s in cfg.admissible(a, 8, 80)[:3]:
            size = tuple(s if i == a else cfg.admissible(i, 8, 80)[0] for i in range(3))
            with torch.no_grad():
                y = net(torch.zeros((1, cfg.in_channels) + size))
            assert tuple(y.shape[2:]) == cfg.output_size(size)
    if cfg.padding == "valid":
        s = cfg.admissible(0, 1, 100)[0]
        assert cfg.output_size((s + 1, s, s)) is None or cfg.factor[0] == 1
        ctx = cfg.context()
        size = tuple(cfg.admissible(a, 1, 100)[0] for a in range(3))
        assert all(i - 2 * c == o for i, c, o in zip(size, ctx, cfg.output_size(size)))


def test_receptive_field_is_the_gradients_extent():
    for cfg in (UNetConfig(depth=3, filters=8, norm="none"),
                UNetConfig(depth=3, filters=8, padding="valid", norm="none",
                           pool=((1, 2, 2), (2, 2, 2)))):
        net = build_model(cfg, seed=1).eval()
        size = tuple(cfg.nearest_admissible((56, 56, 56)))
        x = torch.randn((4, 1) + size, requires_grad=True)  # several inputs: no dead paths
        y = net(x)
        c = [s // 2 for s in y.shape[2:]]
        y[:, 0, c[0], c[1], c[2]].sum().backward()
        g = x.grad[:, 0].abs().sum(dim=0)
        extent = []
        for axis in range(3):
            nz = torch.nonzero(g.sum(dim=[d for d in range(3) if d != axis])).flatten()
            extent.append(int(nz.max() - nz.min() + 1))
        assert tuple(extent) == cfg.receptive_field()


def test_model_file_roundtrip_and_torchscript(tmp_path):
    p = _model(tmp_path, depth=3, padding="valid", anisotropic=True, dropout=0.2, residual=True,
               normalize="10,20")
    a, b = load_model(p), load_model(p)
    x = torch.rand((2, 1, *a.patch))
    with torch.no_grad():
        np.testing.assert_array_equal(a.module(x).numpy(), b.module(x).numpy())
    assert a.normalize == {"mean": 10.0, "std": 20.0}
    assert a.config.pool == ((1, 2, 2), (2, 2, 2)) and a.config.padding == "valid"
    ts = emarray.models.export_torchscript(p, tmp_path / "m.ts")
    c = load_model(ts)
    assert c.torchscript and c.patch == a.patch
    with torch.no_grad():
        np.testing.assert_allclose(c.module(x).numpy(), a.module(x).numpy(), atol=1e-6)
    # seeded: the same seed gives the same weights, another seed others
    q = _model(tmp_path, "q.pt", depth=3, padding="valid", anisotropic=True, dropout=0.2,
               residual=True, normalize="10,20")
    r = _model(tmp_path, "r.pt", depth=3, padding="valid", anisotropic=True, dropout=0.2,
               residual=True, normalize="10,20", seed=4)
    sa, sq, sr = (load_model(f).module.state_dict() for f in (p, q, r))
    assert all(torch.equal(sa[k], sq[k]) for k in sa)
    assert not all(torch.equal(sa[k], sr[k]) for k in sa)


def test_model_cli_new_and_info(tmp_path):
    r = cli("model", "new", tmp_path / "m.pt", "--depth", "3", "--filters", "4", "--padding",
            "valid", "--anisotropic", "--channels-out", "2")
    assert r.returncode == 0, r.stderr
    r = cli("model", "info", tmp_path / "m.pt")
    assert r.returncode == 0, r.stderr
    assert "valid padding" in r.stdout and "receptive field: 26,44,44" in r.stdout
    assert "context per side 12,20,20" in r.stdout and "channels 1 -> 2" in r.stdout
    assert "z: 28->4," in r.stdout and "y: 84->44," in r.stdout and "x: 84->44," in r.stdout
    # the smallest admissible sizes it prints are what the network really does
    with torch.no_grad():
        y = load_model(tmp_path / "m.pt").module(torch.zeros((1, 1, 28, 84, 84)))
    assert tuple(y.shape) == (1, 2, 4, 44, 44)
    n = sum(p.numel() for p in load_model(tmp_path / "m.pt").module.parameters())
    assert f"parameters: {n:,}" in r.stdout
    # an existing file is not replaced without --overwrite
    before = (tmp_path / "m.pt").read_bytes()
    assert "exists" in one_error_line(cli("model", "new", tmp_path / "m.pt"))
    assert (tmp_path / "m.pt").read_bytes() == before
    assert "depth must be a whole number >= 1" in one_error_line(
        cli("model", "new", tmp_path / "n.pt", "--depth", "0"))
    assert "no model file" in one_error_line(cli("model", "info", tmp_path / "none.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert "not a readable model file" in one_error_line(cli("model", "info", tmp_path / "junk.pt"))


# -- weights and tiles against MONAI ---------------------------------------------------------------
def test_tile_weights_and_tiles_are_monais():
    from monai.data.utils import compute_importance_map, dense_patch_slices

    from emarray.ops.predict import Tiling
    for size in [(8, 8, 8), (5, 12, 7), (16, 64, 64)]:
        np.testing.assert_allclose(tile_weights(size, "gaussian"),
                                   compute_importance_map(size, "gaussian").numpy(), rtol=1e-6)
        np.testing.assert_array_equal(tile_weights(size, "constant"), np.ones(size, np.float32))
        b = tile_weights(size, "bump")
        assert b.min() > 0 and b.max() <= 1
    for shape, out, stride in [((20, 33, 64), (8, 16, 16), (6, 12, 16)), ((9, 9, 9), (8, 8, 8), (1, 3, 8))]:
        t = Tiling(shape, out, (0, 0, 0), stride)
        mine = [tuple(int(s) for s in st) for st in np.array(np.meshgrid(
            *[t.starts(a) for a in range(3)], indexing="ij")).reshape(3, -1).T]
        theirs = [tuple(s.start for s in sl) for sl in dense_patch_slices(shape, out, stride)]
        assert sorted(mine) == sorted(theirs)


def test_equals_monai_sliding_window(tmp_path):
    from monai.inferers import sliding_window_inference
    m = _model(tmp_path, filters=4, patch=(8, 16, 16))
    mf = load_model(m)
    a = _raw((20, 40, 36))
    v = make_volume(tmp_path / "raw.zarr", a, (5, 10, 12))
    for blend in ("gaussian", "constant"):
        out = emarray.predict(v, m, tmp_path / f"{blend}.zarr", overlap=(4, 8, 8), blend=blend,
                              block=(10, 20, 24)).read()
        x = torch.from_numpy(((a.astype(np.float32) - 128) / 16)[None, None])
        with torch.no_grad():
            theirs = sliding_window_inference(x, (8, 16, 16), 4, mf.module, overlap=0.5,
                                              mode=blend)[0, 0].numpy()
        assert_close(out, theirs)


# -- equality with the whole-volume window, for any chunking ---------------------------------------
CASES = {
    "same": ({}, (8, 8, 8), None, None),
    "valid": ({"depth": 3, "padding": "valid", "filters": 2}, (52, 52, 52), None, None),
    "anisotropic-bump": ({"depth": 3, "anisotropic": True, "filters": 3}, (4, 16, 16), (1, 6, 5), "bump"),
    "two-channels": ({"channels_out": 2, "residual": True, "norm": "instance"}, (8, 8, 8), (2, 3, 4),
                     "gaussian"),
    "valid-overlap": ({"depth": 2, "padding": "valid", "norm": "group"}, (22, 22, 22), (2, 0, 3),
                      "gaussian"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunks, block", [((4, 5, 6), None), ((4, 5, 6), (4, 5, 6)),
                                           ((3, 7, 9), (6, 14, 9)), ((23, 30, 21), None)])
def test_equals_whole_volume_window(tmp_path, case, chunks, block):
    kw, patch, overlap, blend = CASES[case]
    m = _model(tmp_path, patch=patch, **kw)
    mf = load_model(m)
    a = _raw((23, 30, 21), seed=1)
    v = make_volume(tmp_path / "raw.zarr", a, chunks)
    out = emarray.predict(v, m, tmp_path / "p.zarr", overlap=overlap, blend=blend, block=block,
                          batch=3)
    cfg = mf.config
    ov = overlap if overlap is not None else tuple(
        0 if cfg.padding == "valid" else o // 4 for o in cfg.output_size(patch))
    want, _ = reference(a, mf, patch, ov, blend or ("constant" if cfg.padding == "valid" else "gaussian"))
    got = out.read()
    assert got.shape == want.shape and got.dtype == np.float32
    assert_close(got, want)
    if cfg.out_channels > 1:
        assert out.axes == ("c", "z", "y", "x") and out.chunks[0] == 2


def test_volume_smaller_than_a_tile_and_float_input(tmp_path):
    m = _model(tmp_path, patch=(8, 16, 16), normalize="0.5,0.25")
    mf = load_model(m)
    a = _raw((5, 9, 30), seed=2, dtype=np.float32)
    v = make_volume(tmp_path / "raw.zarr", a, (2, 4, 7))
    got = emarray.predict(v, m, tmp_path / "p.zarr", block=(2, 4, 14)).read()
    want, _ = reference(a, mf, (8, 16, 16), (2, 4, 4), "gaussian")
    assert_close(got, want)


def test_channels_selection_and_quantised_outputs(tmp_path):
    m = _model(tmp_path, channels_out=3, activation="softmax", patch=(8, 8, 8))
    mf = load_model(m)
    a = _raw((12, 17, 10), seed=3)
    v = make_volume(tmp_path / "raw.zarr", a, (6, 6, 5))
    want, _ = reference(a, mf, (8, 8, 8), (2, 2, 2), "gaussian", channels=[2, 0])
    one = emarray.predict(v, m, tmp_path / "c1.zarr", channels=[1])
    assert one.shape == a.shape and one.axes == ("z", "y", "x")
    two = emarray.predict(v, m, tmp_path / "u8.zarr", channels="2,0", dtype="uint8")
    assert two.dtype == np.uint8 and two.shape == (2,) + a.shape
    q = np.clip(np.rint(want * 255), 0, 255).astype(np.int16)
    diff = np.abs(two.read().astype(np.int16) - q)  # round(p * 255): a p on a .5 may round apart
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    half = emarray.predict(v, m, tmp_path / "f16.zarr", channels="2,0", dtype="float16").read()
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), want, atol=1e-3)
    meta = emarray.info(two.url)
    assert tuple(meta["voxel_size"]) == tuple(v.voxel_size)


def test_multichannel_input(tmp_path):
    m = _model(tmp_path, channels_in=2, patch=(8, 8, 8))
    mf = load_model(m)
    a = np.stack([_raw((10, 11, 12), seed=4), _raw((10, 11, 12), seed=5)])
    v = emarray.create_volume(tmp_path / "raw.zarr", a.shape, a.dtype, (2, 5, 6, 6),
                              axes=("c", "z", "y", "x"))
    v.write(tuple(slice(0, s) for s in a.shape), a)
    got = emarray.predict(emarray.open_volume(tmp_path / "raw.zarr"), m, tmp_path / "p.zarr").read()
    want, _ = reference(a, mf, (8, 8, 8), (2, 2, 2), "gaussian")
    assert_close(got, want)


def test_mc_dropout_mean_and_variance(tmp_path):
    m = _model(tmp_path, dropout=0.5, patch=(8, 8, 8), depth=3, filters=4, activation="none")
    mf = load_model(m)
    a = _raw((12, 14, 10), seed=6)
    v = make_volume(tmp_path / "raw.zarr", a, (4, 7, 5))
    outs = []
    for i, block in enumerate([(4, 7, 5), (12, 14, 10)]):
        out = emarray.predict(v, m, tmp_path / f"mc{i}.zarr", mc_samples=4, seed=9, block=block,
                              batch=3)
        var = emarray.open_volume(tmp_path / f"mc{i}.zarr" / "variance")
        outs.append((out.read(), var.read()))
        assert var.attrs["emarray"]["complete"]
    want_mean, want_var = reference(a, mf, (8, 8, 8), (2, 2, 2), "gaussian", samples=4, seed=9)
    for mean, var in outs:
        assert_close(mean, want_mean)
        np.testing.assert_allclose(var, want_var, rtol=1e-3, atol=1e-9)
    assert want_var.max() > 1e-7  # dropout did sample (a random net varies little)
    plain, _ = reference(a, mf, (8, 8, 8), (2, 2, 2), "gaussian")
    assert np.abs(plain - want_mean).max() > 1e-5


# -- resume, schedulers ----------------------------------------------------------------------------
def test_sigkill_then_resume_gives_identical_output(tmp_path):
    """A real process killed (SIGKILL) once 10 of its 144 blocks are saved as done, each write
    a little late so that the kill lands mid-way; --resume finishes only the rest, into the
    output of a run never interrupted. Tiles (8,16,16) span several blocks."""
    m = _model(tmp_path, patch=(8, 16, 16))
    a = _raw((16, 48, 48), seed=7)
    make_volume(tmp_path / "raw.zarr", a, (4, 8, 8))
    dst = tmp_path / "p.zarr"
    args = ["predict", str(tmp_path / "raw.zarr"), str(m), str(dst), "--block", "4,8,8",
            "--workers", "1", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "emarray", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMARRAY_SLOW_WRITES": "0.05"})
    progress = dst / PROGRESS_DIR
    wait_for(lambda: Checkpoint(progress).done_count("predict") >= 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = Checkpoint(progress).done_count("predict")
    assert 10 <= done < 144 and not emarray.open_volume(dst).attrs["emarray"].get("complete")
    r = cli(*args, "--resume", real=True)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {done} of 144 blocks already done" in r.stderr
    # the same command never interrupted, in a fresh process too: this process's PyTorch, after
    # other tests, may sum a convolution in another order (a last-bit difference)
    clean = tmp_path / "clean.zarr"
    assert cli(*args[:3], clean, *args[4:], real=True).returncode == 0
    np.testing.assert_array_equal(emarray.open_volume(dst).read(),
                                  emarray.open_volume(clean).read())
    assert not progress.exists()


@pytest.mark.cluster
def test_real_cluster_equals_threads(tmp_path):
    m = _model(tmp_path, depth=3, padding="valid", filters=2)
    a = _raw((20, 24, 28), seed=8)
    make_volume(tmp_path / "raw.zarr", a, (10, 12, 14))
    here = emarray.predict(tmp_path / "raw.zarr", m, tmp_path / "t.zarr", block=(10, 12, 14)).read()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with real_dask_cluster(tmp_path, workers=2, cwd=elsewhere) as address:
        os.chdir(tmp_path)  # relative paths are the driver's, not the workers'
        r = cli("predict", "raw.zarr", os.path.relpath(m, tmp_path), "c.zarr", "--block",
                "10,12,14", "--scheduler", address, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(emarray.open_volume(tmp_path / "c.zarr").read(), here, atol=1e-6)


def test_processes_equal_threads(tmp_path):
    m = _model(tmp_path, patch=(8, 8, 8))
    a = _raw((10, 12, 14), seed=10)
    v = make_volume(tmp_path / "raw.zarr", a, (5, 6, 7))
    t = emarray.predict(v, m, tmp_path / "t.zarr", block=(5, 6, 7)).read()
    p = emarray.predict(v, m, tmp_path / "p.zarr", block=(5, 6, 7), scheduler="processes",
                        workers=2).read()
    np.testing.assert_allclose(p, t, atol=1e-6)


# -- bad input: one line, before any work ----------------------------------------------------------
@pytest.mark.parametrize("model_kw, args, message", [
    ({"depth": 3, "padding": "valid", "patch": None}, ["--patch", "45,44,44"],
     "not an input size this valid"),
    ({"channels_in": 2}, [], "the model expects 2 input channel(s)"),
    ({}, ["--overlap", "8,2,2"], "overlap must be >= 0 and less than the output tile"),
    ({"activation": "none"}, ["--dtype", "uint8"], "activation none"),
    ({}, ["--mc-samples", "3"], "needs a model with dropout"),
    ({}, ["--channels", "1"], "channels must be distinct output channels"),
    ({}, ["--block", "5,4,4"], "straddle"),
    ({}, ["--batch", "0"], "batch must be a whole number >= 1"),
    (None, [], "no model file"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, model_kw, args, message):
    a = _raw((8, 8, 8))
    make_volume(tmp_path / "raw.zarr", a, 4)
    m = _model(tmp_path, **{"patch": (8, 8, 8), **model_kw}) if model_kw is not None \
        else tmp_path / "x.pt"
    line = one_error_line(cli("predict", tmp_path / "raw.zarr", m, tmp_path / "out.zarr", *args))
    assert message in line
    assert not (tmp_path / "out.zarr").exists()


def test_torchscript_predicts_and_refuses_another_patch(tmp_path):
    m = _model(tmp_path, patch=(8, 8, 8))
    ts = emarray.models.export_torchscript(m, tmp_path / "m.ts")
    a = _raw((10, 9, 11), seed=11)
    v = make_volume(tmp_path / "raw.zarr", a, (5, 9, 11))
    got = emarray.predict(v, ts, tmp_path / "ts.zarr").read()
    want = emarray.predict(v, m, tmp_path / "pt.zarr").read()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert "traced at patch 8,8,8" in one_error_line(
        cli("predict", tmp_path / "raw.zarr", ts, tmp_path / "o.zarr", "--patch", "16,16,16"))


def test_cli_reports_patches(tmp_path):
    m = _model(tmp_path, patch=(8, 8, 8))
    make_volume(tmp_path / "raw.zarr", _raw((8, 16, 16)), (8, 8, 8))
    r = cli("predict", tmp_path / "raw.zarr", m, tmp_path / "p.zarr", "--overlap", "0")
    assert r.returncode == 0, r.stderr
    assert "(4 patches of a whole-volume sliding window)" in r.stdout
    assert "4/4 patches (100%)" in r.stderr


# -- on a CUDA device ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("precision, atol", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_cuda_equals_cpu(tmp_path, precision, atol):
    if not torch.cuda.is_available():
        pytest.skip("needs PyTorch with a CUDA device")
    m = _model(tmp_path, depth=3, filters=8, patch=(8, 32, 32), anisotropic=True, channels_out=2)
    a = _raw((20, 70, 66), seed=12)
    v = make_volume(tmp_path / "raw.zarr", a, (10, 35, 33))
    cpu = emarray.predict(v, m, tmp_path / "cpu.zarr", backend="cpu").read()
    gpu = emarray.predict(v, m, tmp_path / "gpu.zarr", backend="cuda", precision=precision,
                          batch=8).read()
    np.testing.assert_allclose(gpu, cpu, atol=atol)


@pytest.mark.gpu
def test_cuda_scheduler_one_worker_per_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs PyTorch with a CUDA device")
    pytest.importorskip("dask_cuda")
    m = _model(tmp_path, patch=(8, 8, 8))
    a = _raw((16, 16, 16), seed=13)
    v = make_volume(tmp_path / "raw.zarr", a, 8)
    want = emarray.predict(v, m, tmp_path / "cpu.zarr", backend="cpu").read()
    got = emarray.predict(v, m, tmp_path / "cuda.zarr", scheduler="cuda", precision="float32").read()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_model_file_with_damaged_weights_is_refused(tmp_path):
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


def test_predict_warns_of_nan_in_the_raw_volume(tmp_path):
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
