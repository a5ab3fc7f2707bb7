"""Every id of every integer label dtype, extremes included, exact through every operator that
reads labels: each against NumPy on several chunkings. The ids probe the float64 round trip
(2**53 and 2**53 + 1 are one float), the int64/uint64 mix (NumPy makes it float64), the sign
(-1, the least int64) and the top of uint64."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

import emarray

from .conftest import make_volume
from .helpers import cli, one_error_line

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
PROBES = [2**53 + 1, 2**53, 2**63, 2**64 - 1, 2**63 - 1, -1, -(2**63), 1]
SHAPE = (6, 10, 12)
CHUNKINGS = [(6, 10, 12), (2, 3, 5)]


def extreme_ids(dtype: str) -> list[int]:
    """The probes this dtype holds, and its own extremes (0 is the background)."""
    info = np.iinfo(dtype)
    ids = [i for i in PROBES + [info.min, info.max, info.max - 1, info.min + 1]
           if info.min <= i <= info.max and i != 0]
    return sorted(set(ids))


def boxes(dtype: str) -> tuple[np.ndarray, list[int]]:
    """One box per id, face to face (so an id merged with another would show), some 0."""
    ids = extreme_ids(dtype)
    a = np.zeros(SHAPE, dtype)
    cells = [(z, y, x) for z in range(2) for y in range(2) for x in range(3)]
    for i, (z, y, x) in zip(ids, cells):
        a[z * 3:(z + 1) * 3, y * 5:(y + 1) * 5, x * 4:x * 4 + 4] = np.array(i).astype(dtype)
    a[:, 4, :] = 0  # a background plane: 0 is in the volume too
    assert set(np.unique(a).tolist()) - {0} == set(ids)
    return a, ids


def first_order(a: np.ndarray) -> dict[int, int]:
    """Each nonzero value's rank by its first voxel in C order (1..K)."""
    flat = a.ravel()
    vals, first = np.unique(flat, return_index=True)
    keep = vals != 0
    order = np.argsort(first[keep], kind="stable")
    return {int(v): k + 1 for k, v in enumerate(vals[keep][order])}


def same_partition(got: np.ndarray, want: np.ndarray) -> bool:
    """The two label arrays split the voxels alike (a bijection between their values)."""
    pairs = np.unique(np.stack([got.ravel().astype(str), want.ravel().astype(str)]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


@pytest.fixture(params=[(d, c) for d in DTYPES for c in CHUNKINGS],
                ids=[f"{d}-{c[2]}" for d in DTYPES for c in CHUNKINGS])
def labels(request, tmp_path):
    dtype, chunks = request.param
    a, ids = boxes(dtype)
    return a, ids, label_volume(tmp_path / "l.zarr", a, chunks), tmp_path


def label_volume(path, a: np.ndarray, chunks) -> emarray.Volume:
    """``a`` written as a volume marked as labels (8/16-bit ones too)."""
    v = emarray.create_volume(path, a.shape, a.dtype, chunks, attrs={"labels": True})
    v.write(tuple(slice(0, s) for s in a.shape), a)
    return emarray.open_volume(path)


def test_label_multilabel_and_an_extreme_background(labels):
    a, ids, v, d = labels
    got = emarray.label(v, d / "c.zarr", mode="multilabel", connectivity=6).read()
    rank = first_order(a)  # each box is one component: numbered in C order of first voxel
    want = np.vectorize(lambda x: rank.get(int(x), 0), otypes=[np.int64])(a)
    np.testing.assert_array_equal(got, want)
    bg = ids[-1]  # binary, the background an extreme id: everything else is foreground
    got = emarray.label(v, d / "b.zarr", mode="binary", background=bg, connectivity=6).read()
    assert ((got == 0) == (a == np.array(bg).astype(a.dtype))).all()


def test_objects_counts_each_id_exactly(labels):
    a, ids, v, d = labels
    df = emarray.objects(v)
    vals, counts = np.unique(a[a != 0], return_counts=True)
    got = {int(i): int(n) for i, n in zip(df["id"], df["voxels"])}
    assert got == {int(i): int(n) for i, n in zip(vals, counts)}


def test_match_of_a_volume_with_its_renumbering_is_perfect(labels):
    a, ids, v, d = labels
    rank = first_order(a)
    t = np.vectorize(lambda x: rank.get(int(x), 0), otypes=[np.uint32])(a)
    tv = make_volume(d / "t.zarr", t, v.chunks)
    r = emarray.match(v, tv)
    assert r["n_true"] == r["n_pred"] == len(ids)
    row = r["matching"].set_index("threshold").loc[0.5]
    assert row["tp"] == len(ids) and row["fp"] == 0 and row["fn"] == 0


def test_agglomerate_keeps_every_fragment_id(labels):
    a, ids, v, d = labels
    b = make_volume(d / "b.zarr", np.full(SHAPE, 0.4, np.float32), v.chunks)
    s = emarray.agglomerate(v, b, d / "s.zarr", threshold=0.0, thresholds=[1.0])
    lines = (d / "s.zarr" / "lookup.csv").read_text().splitlines()
    table = {int(r.split(",")[0]): int(r.split(",")[1]) for r in lines[1:]}
    assert sorted(table) == ids  # exact, signed as stored
    seg = s.read()
    rank = {i: k + 1 for k, i in enumerate(ids)}  # segments numbered by smallest fragment
    want = np.vectorize(lambda x: rank.get(int(x), 0), otypes=[np.int64])(a)
    np.testing.assert_array_equal(seg, want)
    assert table == rank
    # at 1.0 every touching fragment merges: each connected piece of nonzero voxels is one
    from scipy import ndimage
    pieces, _ = ndimage.label(a != 0)
    assert same_partition(emarray.open_volume(d / "s.zarr" / "t1").read(), pieces)


def test_watershed_keeps_every_seed_apart(labels):
    from skimage.segmentation import watershed
    a, ids, v, d = labels
    rng = np.random.default_rng(0)
    b = rng.random(SHAPE).astype(np.float32)
    bv = make_volume(d / "b.zarr", b, v.chunks)
    seeds = np.zeros(SHAPE, a.dtype)
    seeds[1::3, 2::5, 2::4] = a[1::3, 2::5, 2::4]  # one voxel of each box
    sv = make_volume(d / "s.zarr", seeds, v.chunks)
    # a halo the size of the volume: one block of it all, whatever the chunks, so the
    # result is scikit-image's on the whole array
    got = emarray.watershed(bv, d / "f.zarr", seeds=sv, relabel=True, halo=SHAPE).read()
    markers = np.unique(seeds, return_inverse=True)[1].reshape(SHAPE) + 1
    markers[seeds == 0] = 0
    want = watershed(b, markers)
    assert len(np.unique(want)) == len(ids)
    assert same_partition(got, want)


def test_pyramid_mode_pools_ids_exactly(labels):
    a, ids, v, d = labels
    emarray.pyramid(v, levels=1, factors=(2, 2, 2))
    got = emarray.open_volume(d / "l.zarr" / "1").read() if (d / "l.zarr" / "1").exists() \
        else emarray.open_volume(str(d / "l.zarr") + "/s1").read()
    want = np.zeros(tuple(-(-s // 2) for s in SHAPE), a.dtype)
    for z, y, x in np.ndindex(want.shape):
        window = a[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel().tolist()
        counts = Counter(window)
        top = max(counts.values())
        want[z, y, x] = next(w for w in window if counts[w] == top)  # first met wins a tie
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, want)


def test_clip_at_extreme_ids_is_exact(labels):
    a, ids, v, d = labels
    lo, hi = ids[1], ids[-2]
    got = emarray.clip(v, d / "c.zarr", lo, hi).read()
    np.testing.assert_array_equal(got, np.clip(a, np.array(lo).astype(a.dtype),
                                               np.array(hi).astype(a.dtype)))


def test_export_precomputed_keeps_unsigned_ids_and_refuses_negative_ones(labels):
    a, ids, v, d = labels
    if a.dtype.kind == "i" and a.min() < 0:
        line = one_error_line(cli("-q", "export", v.url, d / "p", "--format", "precomputed"))
        assert "negative" in line and str(int(a.min())) in line
        assert not (d / "p").exists()
        return
    emarray.export(v, d / "p", format="precomputed")
    back = emarray.open_volume(d / "p").read()
    np.testing.assert_array_equal(back.astype(np.uint64), a.astype(np.uint64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mesh_names_each_object_by_its_exact_id(tmp_path, dtype):
    a, ids = boxes(dtype)
    counts = {}
    for chunks in CHUNKINGS:
        v = label_volume(tmp_path / f"l{chunks[2]}.zarr", a, chunks)
        out = tmp_path / f"m{chunks[2]}"
        assert emarray.mesh(v, out, format="ply") == len(ids)
        names = sorted(p.name for p in out.iterdir() if p.suffix == ".ply")
        assert names == sorted(f"{i}.ply" for i in ids)
        counts[chunks] = {i: (out / f"{i}.ply").stat().st_size for i in ids}
        some = [ids[0], ids[-1]]
        assert emarray.mesh(v, tmp_path / f"o{chunks[2]}", format="obj", ids=some) == 2
    assert counts[CHUNKINGS[0]].keys() == counts[CHUNKINGS[1]].keys()


def test_mesh_ids_on_the_command_line_are_exact_or_one_line(tmp_path):
    a, ids = boxes("uint64")
    label_volume(tmp_path / "l.zarr", a, (3, 5, 4))
    r = cli("-q", "mesh", tmp_path / "l.zarr", tmp_path / "m", "--format", "ply", "--ids",
            f"{2**53 + 1},{2**64 - 1}")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.name[0] != ".") == sorted([
        f"{2**53 + 1}.ply", f"{2**64 - 1}.ply"])
    for bad, says in ((str(2**64), "ids must be a whole number >= -9223372036854775808 and <= "
                                   "18446744073709551615"),
                      ("1.5", "ids must be a whole number"),
                      ("-1", "-1 cannot occur in"),
                      ("0", "0 is the background")):
        line = one_error_line(cli("mesh", tmp_path / "l.zarr", tmp_path / "x", "--ids", bad))
        assert says in line, line
    assert not (tmp_path / "x").exists()
    s = label_volume(tmp_path / "s.zarr", boxes("int64")[0], (6, 10, 12))
    # found by the mesh pass (no pass over the labels before it), before any mesh is written
    line = one_error_line(cli("-q", "mesh", s.url, tmp_path / "p"))
    assert "negative label ids" in line and "--format ply" in line
    assert not (tmp_path / "p").exists()  # the staged job beside it holds no mesh either
    staged = tmp_path / ".p.emarray-new"
    assert not [p for p in staged.iterdir() if not p.name.startswith(".")]
    r = cli("-q", "mesh", s.url, tmp_path / "q", "--format", "obj", "--ids", f"-1,{-(2**63)}")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "q").iterdir() if p.name[0] != ".") == sorted(
        [f"{-(2**63)}.obj", "-1.obj"])


def test_whole_numbers_are_read_exactly():
    from emarray._normalize import whole_number
    from emarray.errors import InvalidArgumentError
    for text, want in (("9007199254740993", 2**53 + 1), ("18446744073709551615", 2**64 - 1),
                       ("-9223372036854775808", -(2**63)), ("1e3", 1000), (" 7 ", 7),
                       ("3.0", 3), (np.uint64(2**64 - 1), 2**64 - 1), (2.0, 2)):
        assert whole_number(text, "n", None) == want
    for bad in ("2.5", "abc", "inf", "nan", float("inf"), None, "1e-3"):
        with pytest.raises(InvalidArgumentError):
            whole_number(bad, "n", None)
    assert json.loads(json.dumps(2**64 - 1)) == 2**64 - 1


def test_integer_values_stay_integers(tmp_path):
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
