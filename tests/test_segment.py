"""From a boundary map to a segmentation: distance, watershed, agglomerate, each against an
independent whole-array computation on several chunkings."""
from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import emarray
from emarray.ops.agglomerate import (agglomerate_graph, block_edges, reference_agglomeration,
                                     sequential)
from emarray.ops.watershed import boundary_of, flood

from .conftest import make_volume
from .helpers import cli, one_error_line, wait_for

PY = sys.executable


def cells(shape=(12, 40, 44), n=14, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Truth labels of Voronoi-like cells and a boundary map (1 on their walls, smoothed)."""
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1)
    d = ((grid[..., None, :] - pts) ** 2 * np.array([4, 1, 1])).sum(-1)
    truth = (np.argmin(d, axis=-1) + 1).astype(np.uint32)
    wall = np.zeros(shape, bool)
    for axis in range(3):
        diff = np.diff(truth, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        wall[tuple(sl)] |= diff
    b = ndimage.gaussian_filter(wall.astype(np.float32), 0.7)
    b = (b / b.max() + rng.random(shape).astype(np.float32) * 0.05).clip(0, 1).astype(np.float32)
    return truth, b


# -- distance -----------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 17), st.integers(1, 17)),
       chunks=st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9)),
       voxel=st.sampled_from([(1, 1, 1), (3.0, 1.0, 1.0), (2.5, 0.5, 1.5)]),
       cap=st.sampled_from([1.0, 2.5, 6.0]), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       seed=st.integers(0, 3))
def test_distance_equals_scipy_clipped_for_any_chunking(tmp_path_factory, shape, chunks, voxel,
                                                        cap, density, seed):
    d = tmp_path_factory.mktemp("d")
    mask = (np.random.default_rng(seed).random(shape) >= density).astype(np.uint8)
    v = make_volume(d / "m.zarr", mask, chunks, voxel_size=voxel)
    diagonal = float(np.sqrt(sum((n * x) ** 2 for n, x in zip(shape, voxel))))
    if not min(voxel) <= cap <= diagonal:  # a D that means nothing here is refused
        with pytest.raises(emarray.errors.InvalidArgumentError, match="max_distance"):
            emarray.distance(v, d / "d.zarr", max_distance=cap)
        return
    got = emarray.distance(v, d / "d.zarr", max_distance=cap).read()
    want = np.minimum(ndimage.distance_transform_edt(mask, sampling=voxel), cap)
    if not (mask == 0).any():
        want[:] = cap  # no background at all: every voxel is at least D from one
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_distance_units_threshold_below_and_signed(tmp_path):
    b = np.random.default_rng(1).random((6, 20, 24)).astype(np.float32)
    v = make_volume(tmp_path / "b.zarr", b, (3, 8, 8), voxel_size=(40, 4, 4))
    got = emarray.distance(v, tmp_path / "d.zarr", threshold=0.7, below=True,
                           max_distance="0.03um").read()
    mask = b < 0.7
    want = np.minimum(ndimage.distance_transform_edt(mask, sampling=(40, 4, 4)), 30)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    s = emarray.distance(v, tmp_path / "s.zarr", threshold=0.7, below=True, max_distance=30,
                         signed=True).read()
    out = np.minimum(ndimage.distance_transform_edt(~mask, sampling=(40, 4, 4)), 30)
    np.testing.assert_allclose(s, want - out, rtol=1e-6, atol=1e-4)
    assert emarray.open_volume(tmp_path / "s.zarr").attrs["emarray"]["distance"]["unit"] == \
        "nanometer"


def test_distance_bad_input_is_one_line(tmp_path):
    make_volume(tmp_path / "m.zarr", np.ones((4, 8, 8), np.uint8), 4)
    for args, says in ((("--max-distance", "-3"), "max_distance must be > 0"),
                       (("--max-distance", "3 parsecs"), "max_distance has an unknown unit"),
                       (("--max-distance", "far"), "max_distance must be a length"),
                       (("--below",), "below needs a threshold")):
        line = one_error_line(cli("distance", tmp_path / "m.zarr", tmp_path / "d.zarr", *args))
        assert says in line
    assert not (tmp_path / "d.zarr").exists()


# -- watershed ----------------------------------------------------------------------------------
def whole_seeds(b: np.ndarray, method: str, threshold: float, core: float = 1.0,
                cap: float | None = None) -> np.ndarray:
    """The seeds of the whole array, from SciPy alone: the interior ``b < threshold``, its
    exact distance transform (clipped at ``cap``), cores farther than ``core`` and maxima
    (3x3x3), labelled by ``ndimage.label`` (ids in C order of first voxel)."""
    inside = b < threshold
    if method == "components":
        return ndimage.label(inside)[0]
    d = ndimage.distance_transform_edt(inside)
    if cap is not None:
        d = np.minimum(d, cap)
    peak = (d == ndimage.maximum_filter(d, size=3, mode="nearest")) & inside & (d > 0)
    if method == "maxima":
        return ndimage.label(peak, np.ones((3, 3, 3)))[0]
    return ndimage.label((d > core) | (peak & (d <= core)))[0]


@pytest.mark.parametrize("method", ["cores", "components", "maxima"])
def test_watershed_floods_each_grown_block_from_the_seeds_of_the_whole_array(tmp_path, method):
    from skimage.segmentation import watershed as sk_watershed
    _, b = cells()
    chunks, halo = (6, 16, 16), (2, 6, 6)
    v = make_volume(tmp_path / "b.zarr", b, chunks)
    extra = {}
    if method == "maxima":  # maxima are the whole array's with an exact distance volume
        extra["distance"] = emarray.distance(v, tmp_path / "d.zarr", threshold=0.3, below=True,
                                             max_distance=5)
    frag = emarray.watershed(v, tmp_path / "f.zarr", threshold=0.3, seed_method=method,
                             halo=halo, **extra).read()
    seeds = whole_seeds(b, method, 0.3, cap=5 if method == "maxima" else None)
    assert frag.max() == seeds.max() and set(np.unique(frag)) == set(range(1, seeds.max() + 1))
    for index in [(0, 0, 0), (1, 1, 2), (0, 2, 1), (1, 2, 2)]:
        own = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, b.shape))
        grown = tuple(slice(max(s.start - h, 0), min(s.stop + h, n))
                      for s, h, n in zip(own, halo, b.shape))
        ref = sk_watershed(b[grown], seeds[grown])
        crop = ref[tuple(slice(o.start - r.start, o.stop - r.start) for o, r in zip(own, grown))]
        np.testing.assert_array_equal(frag[own], crop)  # the same ids: the seeds' own


@pytest.mark.parametrize("method", ["cores", "components"])
def test_fragments_do_not_depend_on_the_chunking(tmp_path, method):
    _, b = cells(shape=(12, 48, 52), n=30, seed=21)
    got = []
    for k, chunks in enumerate([(12, 48, 52), (6, 24, 26), (5, 13, 11), (1, 7, 40)]):
        make_volume(tmp_path / f"b{k}.zarr", b, chunks)
        got.append(emarray.watershed(tmp_path / f"b{k}.zarr", tmp_path / f"f{k}.zarr",
                                     threshold=0.3, seed_method=method, halo=(2, 8, 8)).read())
    for other in got[1:]:  # one seed, one id: the same ids; a voxel differs only where its
        # flooding path leaves the halo (a tie on a plateau, a membrane wider than the halo)
        assert set(np.unique(other)) == set(np.unique(got[0]))
        assert np.count_nonzero(other != got[0]) <= 1e-3 * b.size


def test_flyem_segmentation_does_not_depend_on_the_chunking(tmp_path, shared_data):
    """On a crop of the FlyEM crop: the segmentation at three chunkings (one block, a fine
    one) within 0.02 VOI of each other, and small segments no likelier on block faces."""
    import h5py
    from skimage.metrics import variation_of_information
    with h5py.File(shared_data / "gala-flyem" / "train-p1.lzf.h5") as f:
        b = f["stack"][:24, :64, :96]
    segs = {}
    for chunks in [(24, 64, 96), (12, 32, 48), (8, 32, 32)]:
        d = tmp_path / "x".join(map(str, chunks))
        v = make_volume(d / "b.zarr", b, chunks)
        f = emarray.watershed(v, d / "f.zarr", threshold=0.5)
        s = emarray.agglomerate(f, v, d / "s.zarr", threshold=0.5, thresholds=[0.9])
        segs[chunks] = (s.read(), emarray.open_volume(d / "s.zarr" / "t0.9").read())
    one = segs[(24, 64, 96)]
    for chunks in [(12, 32, 48), (8, 32, 32)]:
        faces = block_faces(b.shape, chunks)
        for k in range(2):
            assert sum(variation_of_information(one[k], segs[chunks][k])) <= 0.02, chunks
            small_here = small_touching(segs[chunks][k], faces)
            small_one = small_touching(one[k], faces)
            assert small_here <= small_one + 2, (chunks, small_here, small_one)


def block_faces(shape, chunks) -> np.ndarray:
    """The voxels on a face between two blocks."""
    out = np.zeros(shape, bool)
    for axis, (n, c) in enumerate(zip(shape, chunks)):
        i = np.arange(n)
        plane = ((i % c == 0) & (i > 0)) | ((i % c == c - 1) & (i < n - 1))
        out |= plane.reshape([-1 if a == axis else 1 for a in range(3)])
    return out


def small_touching(seg: np.ndarray, faces: np.ndarray, small: int = 50) -> int:
    ids, n = np.unique(seg, return_counts=True)
    return int(np.unique(seg[faces & np.isin(seg, ids[n < small])]).size)


def test_watershed_seeds_from_a_volume_a_distance_and_relabel(tmp_path):
    from skimage.segmentation import watershed as sk_watershed
    truth, b = cells(seed=2)
    make_volume(tmp_path / "b.zarr", b, (6, 20, 22))
    seeds = np.where(ndimage.binary_erosion(b < 0.2, iterations=2), truth, 0).astype(np.uint32)
    seeds[seeds > 0] += 1000  # ids of the user's: fragments are numbered by their rank
    make_volume(tmp_path / "s.zarr", seeds, (6, 20, 22))
    f = emarray.watershed(tmp_path / "b.zarr", tmp_path / "f.zarr", seeds=tmp_path / "s.zarr",
                          relabel=True, halo=b.shape).read()
    assert f.min() >= 1 and f.dtype == np.uint32
    ranks = np.searchsorted(np.unique(seeds[seeds > 0]), seeds) + 1
    np.testing.assert_array_equal(f, sk_watershed(b, np.where(seeds > 0, ranks, 0)))
    # min_size drops the seeds of fewer voxels before the flood
    n = np.bincount(seeds.ravel())
    small = int(np.median(n[n > 0]))
    g = emarray.watershed(tmp_path / "b.zarr", tmp_path / "g.zarr", seeds=tmp_path / "s.zarr",
                          min_size=small, halo=b.shape).read()
    kept = np.flatnonzero(n >= small)
    kept = kept[kept > 0]
    markers = np.where(np.isin(seeds, kept), np.searchsorted(kept, seeds) + 1, 0)
    np.testing.assert_array_equal(g, sk_watershed(b, markers))
    emarray.distance(tmp_path / "b.zarr", tmp_path / "d.zarr", threshold=0.3, below=True,
                     max_distance=8)
    g = emarray.watershed(tmp_path / "b.zarr", tmp_path / "g2.zarr",
                          distance=tmp_path / "d.zarr", threshold=0.3)
    w = emarray.watershed(tmp_path / "b.zarr", tmp_path / "w.zarr", threshold=0.3)
    np.testing.assert_array_equal(g.read(), w.read())  # the same cores as computed in blocks


def test_watershed_bad_input_is_one_line(tmp_path):
    make_volume(tmp_path / "u8.zarr", np.zeros((4, 8, 8), np.uint8), 4)
    make_volume(tmp_path / "aff.zarr", np.zeros((2, 4, 8, 8), np.float32), (2, 4, 4, 4))
    make_volume(tmp_path / "b.zarr", np.zeros((4, 8, 8), np.float32), 4)
    for args, says in (((tmp_path / "u8.zarr",), "float boundary map"),
                       ((tmp_path / "aff.zarr", "--affinities"), "3 channels"),
                       ((tmp_path / "b.zarr", "--threshold", "5"), "threshold must be in (0, 1]")):
        line = one_error_line(cli("watershed", args[0], tmp_path / "f.zarr", *args[1:]))
        assert says in line
    assert not (tmp_path / "f.zarr").exists()
    d = emarray.distance(tmp_path / "b.zarr", tmp_path / "d.zarr", threshold=0.5, below=True,
                         max_distance=1)
    for args, says in ((("--core", "far"), "core must be a length"),
                       (("--core", "-2nm"), "core must be > 0"),
                       (("--seed-method", "components", "--distance", d.url),
                        "components seeds need none"),
                       (("--core", "2", "--distance", d.url), "is clipped at 1")):
        assert says in refused("watershed", tmp_path / "b.zarr", tmp_path / "f.zarr", *args)
    assert not (tmp_path / "f.zarr").exists()


# -- agglomerate --------------------------------------------------------------------------------
def whole_graph(frag: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], tuple[int, float]]:
    """Every pair of face-adjacent voxels of two fragments, over the whole array (NumPy)."""
    out: dict[tuple[int, int], list] = {}
    for axis in range(3):
        a = np.moveaxis(frag, axis, 0)
        bb = np.moveaxis(b, axis, 0)
        x, y = a[1:], a[:-1]
        t = (x != y) & (x > 0) & (y > 0)
        vals = ((bb[1:] + bb[:-1]) / 2)[t]
        for u, v, val in zip(np.minimum(x, y)[t], np.maximum(x, y)[t], vals):
            e = out.setdefault((int(u), int(v)), [0, 0.0])
            e[0] += 1
            e[1] += float(val)
    return {k: (c, s) for k, (c, s) in out.items()}


@pytest.mark.parametrize("chunks", [(12, 40, 44), (5, 13, 11), (1, 7, 40)])
def test_the_graph_equals_a_whole_array_computation(tmp_path, chunks):
    truth, b = cells(shape=(10, 30, 32), seed=3)
    make_volume(tmp_path / "f.zarr", truth.astype(np.uint64), chunks)
    make_volume(tmp_path / "b.zarr", b, chunks)
    emarray.agglomerate(tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "s.zarr",
                        threshold=0.0)
    with np.load(tmp_path / "s.zarr" / "graph.npz") as z:
        got = {(int(u), int(v)): (int(c), float(s)) for u, v, c, s in
               zip(z["u"], z["v"], z["size"], z["sum"])}
    want = whole_graph(truth, b.astype(np.float64))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0]
        assert got[k][1] == pytest.approx(want[k][1], rel=1e-9)


def test_agglomeration_equals_a_python_heap_of_merges():
    rng = np.random.default_rng(4)
    for trial in range(20):
        n = int(rng.integers(2, 30))
        pairs = {(int(a), int(b)) for a, b in rng.integers(0, n, (n * 2, 2)) if a != b}
        edges = [(min(a, b), max(a, b), float(rng.random() * c), c) for a, b in pairs
                 for c in [int(rng.integers(1, 5))]]
        edges = list({(u, v): (u, v, s, c) for u, v, s, c in edges}.values())
        for t in (0.0, 0.2, 0.5, 0.9, 1.0):
            want = reference_agglomeration(edges, n, t)
            u = np.array([e[0] for e in edges]), np.array([e[1] for e in edges])
            roots = agglomerate_graph(n, u[0], u[1], np.array([e[2] for e in edges]),
                                      np.array([e[3] for e in edges]), [t])[0]
            assert sequential(roots).tolist() == sequential(np.array(want)).tolist(), (trial, t)


def test_threshold_0_keeps_the_fragments_and_above_every_edge_merges_each_piece(tmp_path):
    frag = np.zeros((1, 6, 9), np.uint64)
    frag[0, :, 0:3], frag[0, :, 3:5], frag[0, :3, 5:] = 5, 7, 9
    frag[0, 3:, 6:] = 11  # 11 touches 9 only; 5-7-9 a chain
    b = np.full(frag.shape, 0.4, np.float32)
    make_volume(tmp_path / "f.zarr", frag, (1, 3, 4))
    make_volume(tmp_path / "b.zarr", b, (1, 3, 4))
    s0 = emarray.agglomerate(tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "s0.zarr",
                             threshold=0.0, thresholds=[1.0]).read()
    pairs = np.unique(np.stack([s0.ravel(), frag.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(frag))  # one segment per fragment (and 0 for 0)
    s1 = emarray.open_volume(tmp_path / "s0.zarr" / "t1").read()
    assert set(np.unique(s1)) == {0, 1} and (s1[frag > 0] == 1).all()


def test_a_recut_reuses_the_graph_and_bad_input_is_one_line(tmp_path):
    truth, b = cells(seed=5)
    make_volume(tmp_path / "f.zarr", truth.astype(np.uint64), (6, 20, 22))
    make_volume(tmp_path / "b.zarr", b, (6, 20, 22))
    a = emarray.agglomerate(tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "a.zarr",
                            threshold=0.4, thresholds=[0.2])
    r = emarray.agglomerate(tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "r.zarr",
                            threshold=0.2, graph=tmp_path / "a.zarr")
    np.testing.assert_array_equal(r.read(), emarray.open_volume(a.url + "/t0.2").read())
    lookup = np.loadtxt(tmp_path / "a.zarr" / "lookup.csv", delimiter=",", skiprows=1,
                        dtype=np.uint64)
    assert lookup.shape == (len(np.unique(truth)), 3)
    make_volume(tmp_path / "u.zarr", np.zeros(truth.shape, np.uint8), 8)
    for args, says in (((tmp_path / "f.zarr", tmp_path / "u.zarr", "--threshold", "0.3"),
                        "must be a float map"),
                       ((tmp_path / "f.zarr", tmp_path / "b.zarr", "--threshold", "1.5"),
                        "within the boundary map's range")):
        assert says in one_error_line(cli("agglomerate", *args[:2], tmp_path / "x.zarr",
                                          *args[2:]))
    assert not (tmp_path / "x.zarr").exists()
    # the side files are the store's own: --overwrite replaces it
    r = cli("-q", "agglomerate", tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "a.zarr",
            "--threshold", "0.3", "--overwrite")
    assert r.returncode == 0, r.stderr


def test_a_killed_watershed_and_agglomeration_resume_identically(tmp_path):
    truth, b = cells(shape=(16, 48, 48), seed=6)
    make_volume(tmp_path / "b.zarr", b, (2, 8, 8))  # 288 blocks (twice the halo each)
    clean = emarray.watershed(tmp_path / "b.zarr", tmp_path / "clean.zarr", threshold=0.3,
                              halo=(1, 4, 4))
    proc = subprocess.Popen([PY, "-m", "emarray", "-q", "watershed", str(tmp_path / "b.zarr"),
                             str(tmp_path / "f.zarr"), "--threshold", "0.3", "--halo", "1,4,4",
                             "--scheduler", "synchronous"],
                            env={**__import__("os").environ, "EMARRAY_CHECKPOINT_SECONDS": "0",
                                 "EMARRAY_SLOW_WRITES": "0.005"}, stderr=subprocess.PIPE,
                            text=True)
    from emarray.engine.checkpoint import PROGRESS_DIR, Checkpoint
    wait_for(lambda: (tmp_path / "f.zarr" / PROGRESS_DIR).exists() and Checkpoint(
        tmp_path / "f.zarr" / PROGRESS_DIR).done_count("watershed") > 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = cli("-q", "watershed", tmp_path / "b.zarr", tmp_path / "f.zarr", "--threshold", "0.3",
            "--halo", "1,4,4", "--resume")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "f.zarr").read(), clean.read())
    s1 = emarray.agglomerate(tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "s1.zarr",
                             threshold=0.3)
    s2 = emarray.agglomerate(clean, tmp_path / "b.zarr", tmp_path / "s2.zarr", threshold=0.3)
    np.testing.assert_array_equal(s1.read(), s2.read())


def test_block_edges_count_each_contact_once_across_block_faces():
    frag = np.array([[[1, 2], [1, 2]]], np.uint64)
    b = np.zeros(frag.shape, np.float32)
    e = block_edges(frag, b, (0, 0, 0), (1, 2, 2), False)
    assert e["u"].tolist() == [1] and e["size"].tolist() == [2]
    assert boundary_of(np.ones((3, 1, 2, 2), np.float32), True, "mean").max() == 0
    assert flood(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.uint32)).min() == 1


# -- round three: NaN, names, a graph's source, lengths, seeds, tiny chunks -------------------
def run_cli(*args):
    """The CLI in this process: (exit code, stdout, stderr lines)."""
    from click.testing import CliRunner

    from emarray.cli import cli as group
    r = CliRunner().invoke(group, [str(a) for a in args])
    return r.exit_code, r.stdout, [ln for ln in r.stderr.splitlines() if ln.strip()]


def refused(*args) -> str:
    """The CLI refused in one line, exit 2; that line."""
    code, _, err = run_cli(*args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def nan_map(shape=(10, 30, 32), seed=7, frac=0.03) -> tuple[np.ndarray, np.ndarray]:
    """Cells and their boundary map, with walls at exactly 1.0 and NaN voxels on and off them."""
    truth, b = cells(shape=shape, seed=seed)
    rng = np.random.default_rng(seed)
    b[b > 0.7] = 1.0
    b[rng.random(shape) < frac] = np.nan
    return truth, b


def nan_as_highest(b: np.ndarray) -> np.ndarray:
    """The rule, independently: NaN above every finite value of the map."""
    return np.where(np.isnan(b), np.nanmax(b) + 1.0, b)


@pytest.mark.parametrize("affinities", [False, True])
def test_watershed_floods_nan_last_as_scikit_image_does_the_highest_value(tmp_path, affinities):
    from skimage.segmentation import watershed as sk_watershed
    _, b = nan_map(seed=8, frac=0.2)  # NaN beside walls of 1.0: as 1.0, 25 voxels differ
    if affinities:
        a = np.stack([1 - b, 1 - np.roll(b, 1, 1), 1 - np.roll(b, 1, 2)]).astype(np.float32)
        make_volume(tmp_path / "b.zarr", a, (3, 10, 30, 32))
        ref = nan_as_highest(1 - a.mean(axis=0))  # NaN in any channel: NaN
    else:
        make_volume(tmp_path / "b.zarr", b, b.shape)
        ref = nan_as_highest(b)
    with pytest.warns(emarray.errors.EmarrayWarning, match="NaN voxels"):
        got = emarray.watershed(tmp_path / "b.zarr", tmp_path / "f.zarr", threshold=0.3,
                                seed_method="components", affinities=affinities).read()
    markers, _ = ndimage.label(ref < 0.3)  # 6-connected, as the components seeds
    want = sk_watershed(ref, markers)
    pairs = np.unique(np.stack([got.ravel(), want.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_agglomeration_never_merges_across_nan_as_a_whole_array_reference(tmp_path):
    truth, b = nan_map(seed=8, frac=0.002)
    for k, chunks in enumerate([(10, 30, 32), (4, 11, 13)]):
        make_volume(tmp_path / f"f{k}.zarr", truth, chunks)
        make_volume(tmp_path / f"b{k}.zarr", b, chunks)
        cuts = [0.3, 0.6, 1.0]
        with pytest.warns(emarray.errors.EmarrayWarning, match="11 NaN voxels"):
            s = emarray.agglomerate(tmp_path / f"f{k}.zarr", tmp_path / f"b{k}.zarr",
                                    tmp_path / f"s{k}.zarr", threshold=0.3,
                                    thresholds=cuts[1:])
        ids = np.unique(truth)
        index = {int(i): k for k, i in enumerate(ids)}
        graph = whole_graph(truth, b.astype(np.float64))  # NaN contacts: sum NaN
        edges = [(index[u], index[v], (s_ if np.isfinite(s_) else np.inf), c)
                 for (u, v), (c, s_) in graph.items()]
        assert any(e[2] == np.inf for e in edges) and any(e[2] < np.inf for e in edges)
        for t in cuts:
            got = s.read() if t == 0.3 else emarray.open_volume(s.url + f"/t{t:g}").read()
            root = np.array(reference_agglomeration(edges, len(ids), t))
            want = root[np.searchsorted(ids, truth)]
            pairs = np.unique(np.stack([got.ravel(), want.ravel()]), axis=1)
            assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], t
        with np.load(tmp_path / f"s{k}.zarr" / "graph.npz") as z:
            assert not np.isnan(z["sum"]).any() and np.isinf(z["sum"]).any()


def test_nan_is_warned_once_per_job_with_its_count(tmp_path):
    truth, b = nan_map(shape=(6, 20, 22), seed=9, frac=0.01)
    n = int(np.isnan(b).sum())
    make_volume(tmp_path / "b.zarr", b, (3, 10, 11))
    make_volume(tmp_path / "f.zarr", truth, (3, 10, 11))
    for args, says in ((("distance", tmp_path / "b.zarr", tmp_path / "d.zarr", "--threshold", "0.5",
                         "--below", "--max-distance", "3"), "counts them as background"),
                       (("watershed", tmp_path / "b.zarr", tmp_path / "w.zarr"),
                        "never a seed, flooded after every finite value"),
                       (("agglomerate", tmp_path / "f.zarr", tmp_path / "b.zarr",
                         tmp_path / "a.zarr"), "never merge, at any threshold")):
        code, _, err = run_cli("-q", *args)
        assert code == 0, err
        assert len(err) == 1 and err[0].startswith("warning: ") and f"{n:,} NaN voxels" in err[0] \
            and says in err[0], err
    # distance: NaN is never foreground (NumPy's comparisons), the same as SciPy on that mask
    want = np.minimum(ndimage.distance_transform_edt(b < 0.5), 3)
    np.testing.assert_allclose(emarray.open_volume(tmp_path / "d.zarr").read(), want, atol=1e-5)
    code, _, err = run_cli("-q", "watershed", tmp_path / "f.zarr", tmp_path / "x.zarr")
    assert code == 2  # (integer map refused) and a map without NaN warns of nothing:
    make_volume(tmp_path / "c.zarr", np.nan_to_num(b, nan=1.0), (3, 10, 11))
    code, _, err = run_cli("-q", "watershed", tmp_path / "c.zarr", tmp_path / "y.zarr")
    assert code == 0 and err == []


def test_thresholds_that_print_alike_get_names_of_their_own(tmp_path):
    frag = np.array([[[1, 1, 2, 2, 3, 3]]], np.uint64)
    b = np.array([[[0.3000002] * 4 + [0.3000007] * 2]], np.float32)  # means between the cuts
    make_volume(tmp_path / "f.zarr", frag, (1, 1, 2))
    make_volume(tmp_path / "b.zarr", b, (1, 1, 2))
    code, out, err = run_cli("agglomerate", tmp_path / "f.zarr", tmp_path / "b.zarr",
                             tmp_path / "s.zarr", "--threshold", "0.3000001", "--thresholds",
                             "0.3000004,0.3000006,0.3")
    assert code == 0, err
    s = tmp_path / "s.zarr"
    names = sorted(p.name for p in s.iterdir() if p.name.startswith("t"))
    assert names == ["t0.3", "t0.3000004", "t0.3000006"]
    got = {t: emarray.open_volume(s / f"t{t}").read().ravel().tolist()
           for t in ("0.3", "0.3000004", "0.3000006")}
    assert got == {"0.3": [1, 1, 2, 2, 3, 3], "0.3000004": [1, 1, 1, 1, 2, 2],
                   "0.3000006": [1, 1, 1, 1, 1, 1]}
    assert emarray.open_volume(s).read().ravel().tolist() == [1, 1, 2, 2, 3, 3]
    header = (s / "lookup.csv").read_text().splitlines()[0].split(",")
    assert header == ["fragment", "segment_t0.3", "segment_t0.3000001", "segment_t0.3000004",
                      "segment_t0.3000006"]
    assert "t0.3000004" in out and "t0.3000006" in out
    from emarray.ops.agglomerate import cut_name
    rng = np.random.default_rng(0)
    ts = np.unique(np.r_[rng.random(2000), np.nextafter(0.3, 1), 0.3, 1.0, 0.0, 1e-9])
    assert len({cut_name(t) for t in ts}) == ts.size
    assert all(float(cut_name(t)[1:]) == t for t in ts)


def test_a_graph_from_other_fragments_is_refused_before_any_work(tmp_path):
    truth, b = cells(shape=(6, 20, 22), seed=10)
    make_volume(tmp_path / "f.zarr", truth, (3, 10, 11))
    make_volume(tmp_path / "b.zarr", b, (3, 10, 11))
    emarray.agglomerate(tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "a.zarr",
                        threshold=0.4)
    other, _ = cells(shape=(6, 20, 22), seed=11)
    make_volume(tmp_path / "g.zarr", other, (3, 10, 11))
    line = refused("agglomerate", tmp_path / "g.zarr", tmp_path / "b.zarr", tmp_path / "x.zarr",
                   "--graph", tmp_path / "a.zarr")
    assert "built from fragments" in line and "g.zarr" in line and "without --graph" in line
    make_volume(tmp_path / "c.zarr", b * 0.5, (3, 10, 11))
    line = refused("agglomerate", tmp_path / "f.zarr", tmp_path / "c.zarr", tmp_path / "x.zarr",
                   "--graph", tmp_path / "a.zarr")
    assert "built from boundary" in line
    line = refused("agglomerate", tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "x.zarr",
                   "--graph", tmp_path / "a.zarr", "--affinities")
    assert "affinities" in line
    # the same fragments rewritten in place since: refused too
    import time
    time.sleep(0.01)
    v = emarray.open_volume(tmp_path / "f.zarr")
    v.write((slice(0, 3), slice(0, 10), slice(0, 11)), other[:3, :10, :11])
    line = refused("agglomerate", tmp_path / "f.zarr", tmp_path / "b.zarr", tmp_path / "x.zarr",
                   "--graph", tmp_path / "a.zarr")
    assert "changed since" in line and "chunks stored" in line
    assert not (tmp_path / "x.zarr").exists()
    # a graph that records no source (an earlier emarray's) cannot be checked: refused
    make_volume(tmp_path / "f2.zarr", truth, (3, 10, 11))
    emarray.agglomerate(tmp_path / "f2.zarr", tmp_path / "b.zarr", tmp_path / "o.zarr",
                        threshold=0.4)
    with np.load(tmp_path / "o.zarr" / "graph.npz") as z:
        kept = {k: z[k] for k in z.files if k != "source"}
    np.savez(tmp_path / "o.zarr" / "graph.npz", **kept)
    assert "records no fragments volume" in refused(
        "agglomerate", tmp_path / "f2.zarr", tmp_path / "b.zarr", tmp_path / "x.zarr",
        "--graph", tmp_path / "o.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_max_distance_is_refused_outside_the_voxel_and_the_volume(tmp_path):
    mask = np.ones((6, 12, 14), np.uint8)
    mask[3, 5, 6] = 0
    make_volume(tmp_path / "m.zarr", mask, (3, 6, 7), voxel_size=(4, 1, 2))
    diagonal = float(np.sqrt(24 ** 2 + 12 ** 2 + 28 ** 2))  # 38.7814 nm
    for length, says in (("1e300", "beyond the volume's diagonal, 38.7814 nanometer"),
                         ("1e-300", "below the smallest voxel size, 1 nanometer"),
                         ("0.5", "below the smallest voxel size"),
                         ("1e300nm", "beyond"), ("39", "beyond")):
        line = refused("distance", tmp_path / "m.zarr", tmp_path / "d.zarr", "--max-distance",
                       length)
        assert says in line and "give a length from 1 to 38.7814 nanometer" in line, line
    assert not (tmp_path / "d.zarr").exists()
    for cap in (1.0, diagonal):  # both ends are meaningful, and exact
        got = emarray.distance(tmp_path / "m.zarr", tmp_path / f"d{cap:g}.zarr",
                               max_distance=cap).read()
        want = np.minimum(ndimage.distance_transform_edt(mask, sampling=(4, 1, 2)), cap)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
        assert np.isfinite(got).all()


def test_seeds_are_integer_labels(tmp_path):
    _, b = cells(shape=(4, 12, 12), seed=12)
    make_volume(tmp_path / "b.zarr", b, 4)
    make_volume(tmp_path / "s.zarr", b.astype(np.float32), 4)
    make_volume(tmp_path / "m.zarr", b.astype(np.float64), 4)
    for seeds in ("s.zarr", "m.zarr"):
        line = refused("watershed", tmp_path / "b.zarr", tmp_path / "f.zarr", "--seeds",
                       tmp_path / seeds)
        assert "seeds are integer labels" in line and "emarray label" in line
    assert not (tmp_path / "f.zarr").exists()


def test_tiny_chunks_are_processed_in_blocks_of_many_and_give_the_same_result(tmp_path):
    # 1,600 voxels in 1-voxel chunks: blocks of (4, 16, 16), 1,024 voxels at least, and 2 x 2
    # of them with the edge ones cut short
    truth, b = cells(shape=(4, 20, 20), seed=13)
    make_volume(tmp_path / "tiny.zarr", b, (1, 1, 1))
    make_volume(tmp_path / "big.zarr", b, (4, 16, 16))
    make_volume(tmp_path / "ft.zarr", truth, (1, 1, 1))
    make_volume(tmp_path / "fb.zarr", truth, (4, 16, 16))
    halo = (1, 4, 4)
    w = {k: emarray.watershed(tmp_path / f"{k}.zarr", tmp_path / f"w{k}.zarr", threshold=0.3,
                              halo=halo) for k in ("tiny", "big")}
    assert w["tiny"].attrs["emarray"]["job"]["block"] == [4, 16, 16]
    assert w["big"].attrs["emarray"]["job"]["block"] == [4, 16, 16]
    np.testing.assert_array_equal(w["tiny"].read(), w["big"].read())
    assert w["tiny"].chunks == (1, 1, 1)  # written in the user's chunks all the same
    r = {k: emarray.watershed(tmp_path / f"{k}.zarr", tmp_path / f"r{k}.zarr", threshold=0.3,
                              halo=halo, relabel=True).read() for k in ("tiny", "big")}
    np.testing.assert_array_equal(r["tiny"], r["big"])
    d = {k: emarray.distance(tmp_path / f"{k}.zarr", tmp_path / f"d{k}.zarr", threshold=0.5,
                             below=True, max_distance=3).read() for k in ("tiny", "big")}
    np.testing.assert_array_equal(d["tiny"], d["big"])
    np.testing.assert_allclose(d["tiny"], np.minimum(ndimage.distance_transform_edt(b < 0.5), 3),
                               atol=1e-5)
    a = {k: emarray.agglomerate(tmp_path / f"f{k[0]}.zarr", tmp_path / f"{k}.zarr",
                                tmp_path / f"a{k}.zarr", threshold=0.5).read()
         for k in ("tiny", "big")}
    np.testing.assert_array_equal(a["tiny"], a["big"])
    # an output chunk larger than the input's is no longer refused: blocks are its multiples
    o = emarray.watershed(tmp_path / "tiny.zarr", tmp_path / "o.zarr", threshold=0.3, halo=halo,
                          chunks=(4, 16, 16))
    np.testing.assert_array_equal(o.read(), w["big"].read())


# -- agglomerate --min-size -------------------------------------------------------------------
def reference_size_merge(partition: list[int], edges, voxels, min_size: int) -> list[int]:
    """Plain Python: segments (keyed by their smallest node) under ``min_size`` voxels, the
    smallest first (then the lowest key), merged into the neighbour of lowest mean contact
    (then the largest contact, then the lowest key), never across +inf; each node's segment."""
    import math
    seg = {i: p for i, p in enumerate(partition)}
    size: dict[int, float] = {}
    for i, p in seg.items():
        size[p] = size.get(p, 0) + voxels[i]
    contact: dict[int, dict[int, list[float]]] = {p: {} for p in size}
    for u, v, s, c in edges:
        a, b = seg[u], seg[v]
        if a == b:
            continue
        e = contact[a].setdefault(b, [0.0, 0.0])
        e[0] += s
        e[1] += c
        contact[b][a] = e
    parent = {p: p for p in size}
    while True:
        small = [p for p in size if parent[p] == p and size[p] < min_size and any(
            math.isfinite(s / c) for s, c in contact[p].values())]
        if not small:
            break
        a = min(small, key=lambda p: (size[p], p))
        b = min((q for q, (s, c) in contact[a].items() if math.isfinite(s / c)),
                key=lambda q: (contact[a][q][0] / contact[a][q][1], -contact[a][q][1], q))
        del contact[a][b], contact[b][a]
        for q, (s, c) in contact[a].items():
            del contact[q][a]
            if q in contact[b]:
                contact[b][q][0] += s
                contact[b][q][1] += c
            else:
                contact[b][q] = contact[q][b] = [s, c]
        contact[a] = {}
        parent[a] = b
        size[b] += size[a]

    def find(p: int) -> int:
        while parent[p] != p:
            p = parent[p]
        return p
    return [find(seg[i]) for i in range(len(partition))]


def test_small_segments_merge_as_a_python_reference_does():
    from emarray.ops.agglomerate import merge_small_segments
    rng = np.random.default_rng(14)
    for trial in range(40):
        n = int(rng.integers(2, 40))
        pairs = {(min(a, b), max(a, b)) for a, b in rng.integers(0, n, (n * 2, 2)) if a != b}
        edges = [(u, v, float(rng.integers(0, 4) / 4 * c), c) for u, v in sorted(pairs)
                 for c in [int(rng.integers(1, 4))]]  # quarter means: ties are common
        if edges and trial % 3 == 0:
            u, v, _, c = edges[0]
            edges[0] = (u, v, np.inf, c)  # a NaN contact: never merged across
        voxels = rng.integers(1, 12, n)
        partition = [int(p) for p in rng.integers(0, max(n // 2, 1), n)]
        partition = [min(i for i in range(n) if partition[i] == partition[j]) for j in range(n)]
        for min_size in (0, 5, 15, 100):
            want = sequential(np.array(reference_size_merge(partition, edges, voxels, min_size)))
            u = np.array([e[0] for e in edges], np.int64)
            v = np.array([e[1] for e in edges], np.int64)
            got = merge_small_segments(np.array(partition), u, v,
                                       np.array([e[2] for e in edges]),
                                       np.array([e[3] for e in edges], np.float64), voxels,
                                       min_size)
            assert sequential(got).tolist() == want.tolist(), (trial, min_size)


def test_min_size_equals_a_whole_array_reference_for_any_chunking(tmp_path):
    truth, b = cells(shape=(10, 30, 32), n=12, seed=15)
    rng = np.random.default_rng(15)
    frag = truth.astype(np.uint64) * 100  # cells cut into fragments, small ones among them
    for _ in range(60):
        z, y, x = (int(rng.integers(0, s)) for s in truth.shape)
        frag[z:z + int(rng.integers(1, 4)), y:y + int(rng.integers(1, 6)),
             x:x + int(rng.integers(1, 6))] += int(rng.integers(1, 99))
    ids = np.unique(frag)
    index = {int(i): k for k, i in enumerate(ids)}
    graph = whole_graph(frag, b.astype(np.float64))
    edges = [(index[u], index[v], s, c) for (u, v), (c, s) in graph.items()]
    voxels = np.bincount(np.searchsorted(ids, frag).ravel(), minlength=ids.size)
    for t in (0.3, 0.6):
        part = reference_agglomeration(edges, ids.size, t)
        for min_size in (20, 200):
            want = sequential(np.array(reference_size_merge(part, edges, voxels, min_size)))
            want_volume = want[np.searchsorted(ids, frag)]
            for k, chunks in enumerate([(10, 30, 32), (5, 13, 11), (2, 7, 9)]):
                d = tmp_path / f"{t}-{min_size}-{k}"
                make_volume(d / "f.zarr", frag, chunks)
                make_volume(d / "b.zarr", b, chunks)
                got = emarray.agglomerate(d / "f.zarr", d / "b.zarr", d / "s.zarr", threshold=t,
                                          min_size=min_size).read()
                np.testing.assert_array_equal(got, want_volume)
            sizes = np.bincount(want_volume.ravel())[1:]
            before = np.bincount(sequential(np.array(part))[np.searchsorted(ids, frag)].ravel())
            assert (before[1:] < min_size).any() and sizes.size < before.size - 1  # it merged
            assert not ((sizes < min_size) & (sizes > 0)).all()


def test_a_block_without_a_seed_in_reach_reads_farther(tmp_path):
    """A block whose halo holds no seed floods from the nearest seeds beyond it; a volume
    without any seed is one fragment."""
    from skimage.segmentation import watershed as sk_watershed
    b = np.ones((8, 40, 40), np.float32)
    b[2:6, 2:6, 2:6] = 0.0  # one cell far from most blocks
    b[2:6, 30:36, 33:38] = 0.0  # another
    rng = np.random.default_rng(16)
    b[b == 1] -= rng.random(int((b == 1).sum())).astype(np.float32) * 0.01  # no plateau ties
    make_volume(tmp_path / "b.zarr", b, (4, 8, 8))
    got = emarray.watershed(tmp_path / "b.zarr", tmp_path / "f.zarr", threshold=0.5,
                            seed_method="components", halo=(1, 2, 2)).read()
    want = sk_watershed(b, ndimage.label(b < 0.5)[0])
    assert set(np.unique(got)) == {1, 2}  # every voxel flooded from a seed it reached
    np.testing.assert_array_equal(got[b < 0.5], want[b < 0.5])  # the seeds' own ids
    for fragment in (1, 2):  # each fragment one piece, holding its seed
        assert ndimage.label(got == fragment)[1] == 1
    make_volume(tmp_path / "n.zarr", np.ones((8, 40, 40), np.float32), (4, 8, 8))
    none = emarray.watershed(tmp_path / "n.zarr", tmp_path / "g.zarr", threshold=0.5)
    assert (none.read() == 1).all() and none.attrs["emarray"]["fragments"] == 1
