"""emarray skeleton: one skeleton per object, joined across block faces, equal to kimimaro's
on the whole array in RAM (cable length within 2 %, end and branch points within two voxels)
for three chunkings, on synthetic neurites with known centre lines and on the FlyEM crop's
ground truth; read back with osteoid's own readers (precomputed and SWC); resumable."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import emarray
from emarray.cli import cli
from emarray.engine.files import MANIFEST

from .conftest import kill_when, make_volume
from .skeleton_shapes import NEURITES, RADIUS, VOXEL, centre_distance, neurites

kimimaro = pytest.importorskip("kimimaro")
osteoid = pytest.importorskip("osteoid")
DEFAULTS = kimimaro.intake.DEFAULT_TEASAR_PARAMS  # kimimaro's own (lengths in nm)


def whole_array(lab: np.ndarray, voxel, const: float = 300.0, dust: int = 1000) -> dict:
    """kimimaro on the whole array in RAM: {id: (vertices as voxel indices z,y,x, edges)}."""
    sk = kimimaro.skeletonize(np.asfortranarray(lab.T), anisotropy=tuple(voxel[::-1]),
                              teasar_params={**DEFAULTS, "scale": 1.5, "const": const},
                              dust_threshold=dust, fix_borders=False, progress=False,
                              parallel=1)
    return {int(i): (np.asarray(s.vertices, float)[:, ::-1] / np.asarray(voxel), s.edges)
            for i, s in sk.items()}


def read_precomputed(folder, obj, voxel) -> tuple[np.ndarray, np.ndarray]:
    """A precomputed skeleton read by osteoid, as voxel indices z, y, x (the file holds voxel
    centres in nanometres)."""
    s = osteoid.Skeleton.from_precomputed((folder / str(obj)).read_bytes(),
                                          vertex_attributes=[{"id": "radius",
                                                              "data_type": "float32",
                                                              "num_components": 1}])
    return np.asarray(s.vertices, float)[:, ::-1] / np.asarray(voxel) - 0.5, s.edges


def blocks(out) -> int:
    """How many blocks the job that wrote ``out`` ran (its manifest records its block)."""
    job = json.loads((out / MANIFEST).read_text())["job"]
    return int(np.prod([-(-n // b) for n, b in zip(job["input"]["shape"], job["block"])]))


def cable(v, e, voxel) -> float:
    return float(np.linalg.norm((v[e[:, 0]] - v[e[:, 1]]) * np.asarray(voxel), axis=1).sum())


def special(v, e):
    """End points (one edge) and branch points (three or more)."""
    deg = np.bincount(np.asarray(e).ravel(), minlength=len(v))
    return v[deg == 1], v[deg >= 3]


def apart(a, b) -> float:
    """The farthest any point of ``a`` is from the nearest of ``b`` and back, in voxels along
    the worst axis."""
    if len(a) == 0 and len(b) == 0:
        return 0.0
    if len(a) == 0 or len(b) == 0:
        return np.inf
    d = np.abs(a[:, None, :] - b[None, :, :]).max(-1)
    return float(max(d.min(1).max(), d.min(0).max()))


def on_face(points, shape) -> np.ndarray:
    return ((points <= 0) | (points >= np.asarray(shape) - 1)).any(1)


def pieces(v, e) -> int:
    """Connected components of a skeleton."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(v)
    e = np.asarray(e, np.int64)
    return connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])),
                                           shape=(n, n)), directed=False)[0]


def assert_like_kimimaro(ours, ref, voxel, what, shape):
    """As many connected pieces; cable length within 2 %; as many end and branch points,
    each within two voxels of one of the other's; but an end on a face of the volume, where
    the object is cut rather than ended, is TEASAR's farthest point of the cut (any of its
    points may be): within eight voxels of the other's on that face."""
    v, e = ours
    rv, re_ = ref
    assert len(e) == len(v) - pieces(v, e), what  # a forest: no cycles
    assert pieces(v, e) == pieces(rv, re_), (what, pieces(v, e), pieces(rv, re_))
    got, want = cable(v, e, voxel), cable(rv, re_, voxel)
    assert abs(got - want) <= 0.02 * want, (what, got, want)
    (ends, branches), (rends, rbranches) = special(v, e), special(rv, re_)
    assert len(ends) == len(rends) and len(branches) == len(rbranches), \
        (what, len(ends), len(rends), len(branches), len(rbranches))
    assert apart(branches, rbranches) <= 2, what
    inner, rinner = ends[~on_face(ends, shape)], rends[~on_face(rends, shape)]
    assert len(inner) == len(rinner) and apart(inner, rinner) <= 2, what
    assert apart(ends[on_face(ends, shape)], rends[on_face(rends, shape)]) <= 8, what


def test_neurites_equal_kimimaro_on_the_whole_array_for_three_chunkings(tmp_path):
    lab = neurites()
    ref = whole_array(lab, VOXEL)
    assert sorted(ref) == [1, 2, 3, 4]  # the speck (id 9) is dust
    for chunks in [(48, 96, 96), (16, 32, 32), (12, 40, 48)]:
        v = make_volume(tmp_path / f"l{chunks[1]}.zarr", lab, chunks, voxel_size=VOXEL)
        out = tmp_path / f"s{chunks[1]}"
        # a halo of 300 nm (const; the default is twice that) keeps blocks small here
        assert emarray.skeleton(v, out, halo="300nm") == 4
        assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "1", "2", "3", "4", "info"]
        assert blocks(out) == {(48, 96, 96): 1, (16, 32, 32): 8, (12, 40, 48): 12}[chunks]
        for i in ref:
            ours = read_precomputed(out, i, VOXEL)
            assert_like_kimimaro(ours, ref[i], VOXEL, (chunks, i), lab.shape)
            # and the known centre line: every vertex inside the tube, every point of the
            # line (away from its ends) within two voxels of the skeleton
            assert centre_distance(ours[0], NEURITES[i]).max() <= RADIUS
            for line in NEURITES[i]:
                a, b = np.asarray(line[0], float), np.asarray(line[-1], float)
                for t in np.linspace(0.2, 0.8, 7):
                    p = a + t * (b - a) if len(line) == 2 else None
                    if p is not None:
                        assert np.abs(ours[0] - p).max(1).min() <= 2.5, (chunks, i, p)


def test_flyem_ground_truth_equal_kimimaro_for_three_chunkings(tmp_path, shared_data):
    import h5py
    with h5py.File(shared_data / "gala-flyem" / "train-gt.lzf.h5") as f:
        lab = f["stack"][:, :, :100].astype(np.uint32)  # (50, 100, 100): 25 neurons kept
    voxel = (8.0, 8.0, 8.0)  # the crop records none; FIB-SEM of this kind is about 8 nm
    ref = whole_array(lab, voxel)
    assert len(ref) >= 20
    for chunks in [(50, 100, 100), (25, 40, 40), (16, 48, 24)]:
        v = make_volume(tmp_path / f"l{chunks[1]}.zarr", lab, chunks, voxel_size=voxel)
        out = tmp_path / f"s{chunks[1]}"
        assert emarray.skeleton(v, out) == len(ref)
        assert blocks(out) == {(50, 100, 100): 1, (25, 40, 40): 4, (16, 48, 24): 4}[chunks]
        for i in ref:
            assert_like_kimimaro(read_precomputed(out, i, voxel), ref[i], voxel, (chunks, i),
                                 lab.shape)


def test_swc_and_precomputed_agree_in_physical_units_and_ids_chosen(tmp_path):
    lab = neurites()
    v = emarray.create_volume(tmp_path / "l.zarr", lab.shape, "uint32", (16, 32, 32),
                              voxel_size=tuple(s / 1000 for s in VOXEL), unit="micrometer",
                              translation=(1.0, 2.0, 3.0))
    v.write(tuple(slice(0, s) for s in lab.shape), lab)
    pre = tmp_path / "l.skeletons"
    assert emarray.skeleton(v, pre, const="0.3um") == 4
    info = json.loads((pre / "info").read_text())
    assert info["@type"] == "neuroglancer_skeletons"
    assert info["emarray"]["labels"] == os.path.realpath(tmp_path / "l.zarr")
    swc = tmp_path / "swc"
    assert emarray.skeleton(v, swc, format="swc", ids="3,1", const="0.3um") == 2
    assert sorted(p.name for p in swc.iterdir()) == sorted([MANIFEST, "1.swc", "3.swc", "info"])
    for i in (1, 3):
        text = (swc / f"{i}.swc").read_text()
        assert "# unit: micrometer" in text
        s = osteoid.Skeleton.from_swc(text)
        nm = osteoid.Skeleton.from_precomputed((pre / str(i)).read_bytes())
        # the same vertices: x, y, z of voxel centres plus the translation, um against nm
        a = np.unique(np.round(np.asarray(s.vertices) * 1000, 2), axis=0)
        b = np.unique(np.round(np.asarray(nm.vertices, float), 2), axis=0)
        np.testing.assert_allclose(a, b, atol=0.02)
        zyx = np.asarray(nm.vertices, float)[:, ::-1] / 1000
        idx = (zyx - (1.0, 2.0, 3.0)) / (np.asarray(VOXEL) / 1000) - 0.5
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-3)
        assert (lab[tuple(np.round(idx).astype(int).T)] == i).all()
        assert len(s.edges) == len(s.vertices) - 1  # one tree: the neurite is connected
        # radius: each vertex's distance to the boundary, below the tube's radius
        assert 0 < np.asarray(s.radius).max() <= RADIUS / 1000 + 0.01


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_bad_input_is_one_line_and_touches_nothing(tmp_path):
    lab = neurites()
    make_volume(tmp_path / "l.zarr", lab, 32)
    make_volume(tmp_path / "f.zarr", lab.astype(np.float32), 32)
    make_volume(tmp_path / "s.zarr", lab.astype(np.int16) * -1, 32)
    out = tmp_path / "out"
    assert "integer ids" in one_line(run("skeleton", tmp_path / "f.zarr", out))
    assert "'x'" in one_line(run("skeleton", tmp_path / "l.zarr", out, "--ids", "3,x"))
    assert "const" in one_line(run("skeleton", tmp_path / "l.zarr", out, "--const", "3parsecs"))
    assert "swc" in one_line(run("skeleton", tmp_path / "l.zarr", out, "--format", "stl"))
    assert "70000 cannot occur" in one_line(run("skeleton", tmp_path / "s.zarr", out, "--ids",
                                                "70000", "--format", "swc"))
    assert "negative" in one_line(run("-q", "skeleton", tmp_path / "s.zarr", out))
    assert not out.exists()
    r = run("-q", "skeleton", tmp_path / "s.zarr", out, "--format", "swc")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, "info", "-1.swc", "-2.swc", "-3.swc", "-4.swc"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "--overwrite" in one_line(run("skeleton", tmp_path / "s.zarr", out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_killed_then_resumed_gives_the_same_skeletons(tmp_path):
    lab = neurites()
    make_volume(tmp_path / "l.zarr", lab, (8, 16, 16), voxel_size=VOXEL)
    args = [tmp_path / "l.zarr", "--halo", "40nm", "--format", "swc"]
    r = run("-q", "skeleton", args[0], tmp_path / "clean", *args[1:])
    assert r.exit_code == 0, r.output
    trace = tmp_path / "trace"
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "-q", "skeleton", str(args[0]),
                             str(tmp_path / "s"), *map(str, args[1:])],
                            env={**os.environ, "EMARRAY_TRACE": str(trace),
                                 "EMARRAY_CHECKPOINT_SECONDS": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(proc, lambda: len(trace.read_text().splitlines()) if trace.exists() else 0, 20)
    assert not (tmp_path / "s").exists()
    r = run("-q", "skeleton", args[0], tmp_path / "s", *args[1:], "--resume")
    assert r.exit_code == 0, r.output
    for i in (1, 2, 3, 4):
        assert (tmp_path / "s" / f"{i}.swc").read_text() == \
            (tmp_path / "clean" / f"{i}.swc").read_text()


def test_pieces_ending_on_one_cross_section_of_a_face_are_joined_and_dust_spans_faces():
    """Two blocks that trace a neurite through their shared face (z = 4) but cross it at
    neighbouring voxels: their pieces share no vertex; both ends lie on the same cross-section
    (the same key), so they are joined there by the shortest link. The object's voxels are
    counted over both blocks (its read pieces linked through that cross-section)."""
    from emarray.ops.skeleton import join_pieces
    key, empty = 4 * 3 + 0, np.empty(0, np.int64)

    def piece(vertices, edges, block, voxels, ends):
        v = np.asarray(vertices, np.int64)
        return {"vertices": v, "radius": np.ones(len(v)), "edges": np.asarray(edges, np.int64),
                "dust": np.full(len(v), block << 32), "key_vertex": np.asarray(ends, np.int64),
                "key": np.full(len(ends), key), "pieces": np.array([block << 32]),
                "voxels": np.array([voxels]), "link_piece": np.array([block << 32]),
                "link_key": np.array([key])}
    a = piece([(2, 0, 0), (3, 0, 0), (4, 0, 0)], [(0, 1), (1, 2)], 0, 600, [2])
    b = piece([(4, 0, 1), (5, 0, 1), (6, 0, 1)], [(0, 1), (1, 2)], 1, 500, [0])
    v, e, _ = join_pieces([a, b], dust=1000)
    assert v.tolist() == [[2, 0, 0], [3, 0, 0], [4, 0, 0], [4, 0, 1], [5, 0, 1], [6, 0, 1]]
    assert sorted(map(sorted, e.tolist())) == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]
    # 600 + 500 voxels, over 1000: kept; the same pieces not linked by the face: each is dust
    for p in (a, b):
        p["link_key"] = p["key"] = np.full(len(p["key"]), key + 3 * (1 + p["pieces"][0]))
    assert len(join_pieces([a, b], dust=1000)[0]) == 0
    assert len(join_pieces([a, b], dust=500)[0]) == 3  # a alone (600) is kept
    # a block that holds voxels of the object but none of its skeleton counts too
    c = {**piece([], [], 2, 400, []), "vertices": np.empty((0, 3), np.int64),
         "edges": np.empty((0, 2), np.int64), "key_vertex": empty, "key": empty}
    c["link_key"] = a["link_key"][:1]
    assert len(join_pieces([a, b, c], dust=999)[0]) == 3  # a + c: 1000
