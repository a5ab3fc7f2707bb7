"""emarray mesh: closed meshes of every object, the same for any chunking, their volume the
object's, written as .ply/.obj (trimesh reads them back) or a neuroglancer precomputed source."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
from skimage.measure import marching_cubes

import emarray
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.engine.files import MANIFEST

from .conftest import make_volume
from .helpers import cli, one_error_line


def staging(out):
    return out.with_name(f".{out.name}.emarray-new")


trimesh = pytest.importorskip("trimesh")
zmesh = pytest.importorskip("zmesh")

VOXEL = (8.0, 4.0, 5.0)  # z, y, x: anisotropic, as EM is


def blobs(shape, seed=1, frac=70, dtype=np.uint32):
    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.random(shape), 2.5)
    lab, n = ndi.label(f > np.percentile(f, frac))
    return lab.astype(dtype), n


def triangles(m) -> set:
    """A mesh as a set of triangles (each a sorted triple of rounded x,y,z): the same
    surface whatever the order of its vertices and faces."""
    tri = np.round(m.vertices[m.faces], 3)
    return {tuple(sorted(map(tuple, t))) for t in tri}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint64, np.int32])
def test_every_object_closed_its_volume_the_voxels_and_the_same_for_any_chunking(tmp_path,
                                                                                 dtype):
    shape = (30, 37, 41)  # odd: ragged last blocks
    lab, n = blobs(shape, dtype=dtype)
    assert 4 <= n < 255
    meshes = {}
    for chunks in [(30, 37, 41), (16, 16, 16), (7, 9, 11)]:
        v = make_volume(tmp_path / f"l{chunks[0]}.zarr", lab, chunks, voxel_size=VOXEL)
        out = tmp_path / f"m{chunks[0]}"
        assert emarray.mesh(v, out, format="ply") == n
        assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == \
            sorted(f"{i}.ply" for i in range(1, n + 1))
        assert not (out / PROGRESS_DIR).exists() and not staging(out).exists()
        meshes[chunks] = {i: trimesh.load(out / f"{i}.ply") for i in range(1, n + 1)}
    for i in range(1, n + 1):
        voxels = int((lab == i).sum())
        whole = meshes[(30, 37, 41)][i]
        assert whole.is_watertight and whole.is_winding_consistent, i
        # the volume scikit-image's marching cubes encloses on the whole object (padded so
        # that it closes), a little under the voxels' own volume (corners are cut)
        ref_v, ref_f, _, _ = marching_cubes(np.pad(lab == i, 1).astype(np.float32), 0.5,
                                            spacing=VOXEL)
        ref = abs(trimesh.Trimesh(ref_v, ref_f, process=False).volume)
        assert abs(whole.volume - ref) <= 1e-3 * ref, (i, whole.volume, ref)
        ratio = whole.volume / (voxels * np.prod(VOXEL))
        assert ratio <= 1.0 and (voxels < 1000 or ratio > 0.95), (i, voxels, ratio)
        # x, y, z inside the object's voxel box (voxel corners, physical units)
        zz, yy, xx = np.nonzero(lab == i)
        lo = np.array([xx.min(), yy.min(), zz.min()]) * np.array(VOXEL[::-1])
        hi = (np.array([xx.max(), yy.max(), zz.max()]) + 1) * np.array(VOXEL[::-1])
        assert np.all(whole.bounds[0] >= lo - 1e-3) and np.all(whole.bounds[1] <= hi + 1e-3)
        for chunks in [(16, 16, 16), (7, 9, 11)]:
            other = meshes[chunks][i]
            assert other.is_watertight, (chunks, i)
            assert triangles(other) == triangles(whole), (chunks, i)


def test_objects_at_the_volume_edges_are_closed_and_translation_is_applied(tmp_path):
    lab = np.zeros((10, 12, 14), np.uint32)
    lab[0:4, 0:5, 0:6] = 3       # at the low corner
    lab[6:, 7:, 9:] = 9          # at the high corner
    v = emarray.create_volume(tmp_path / "l.zarr", lab.shape, "uint32", (4, 5, 6),
                              voxel_size=(2, 1, 1), translation=(100, 10, 1))
    v.write(tuple(slice(0, s) for s in lab.shape), lab)
    assert emarray.mesh(v, tmp_path / "m", format="obj") == 2
    a = trimesh.load(tmp_path / "m" / "3.obj")
    b = trimesh.load(tmp_path / "m" / "9.obj")
    assert a.is_watertight and b.is_watertight
    # a box's faces lie on its voxels' outer corners (x, y, z; translation added)
    np.testing.assert_allclose(a.bounds, [[1, 10, 100], [1 + 6, 10 + 5, 100 + 8]])
    np.testing.assert_allclose(b.bounds, [[1 + 9, 10 + 7, 100 + 12], [1 + 14, 10 + 12, 100 + 20]])
    assert a.volume == pytest.approx(6 * 5 * 8, rel=0.2)


def test_precomputed_source_in_nanometres_and_ids_chosen(tmp_path):
    lab, n = blobs((24, 24, 24), seed=3)
    v = emarray.create_volume(tmp_path / "l.zarr", lab.shape, "uint32", 8,
                              voxel_size=(0.04, 0.008, 0.008), unit="micrometer")
    v.write(tuple(slice(0, s) for s in lab.shape), lab)
    out = tmp_path / "l.meshes"
    assert emarray.mesh(v, out) == n
    info = json.loads((out / "info").read_text())
    assert info["@type"] == "neuroglancer_legacy_mesh"
    assert info["emarray"]["labels"] == os.path.realpath(tmp_path / "l.zarr")
    ply = tmp_path / "ply"
    assert emarray.mesh(v, ply, format="ply", ids=[2, 1]) == 2
    assert sorted(p.name for p in ply.iterdir()) == [MANIFEST, "1.ply", "2.ply"]
    for i in (1, 2):
        assert json.loads((out / f"{i}:0").read_text()) == {"fragments": [str(i)]}
        pre = zmesh.Mesh.from_precomputed((out / str(i)).read_bytes())
        um = trimesh.load(ply / f"{i}.ply")
        assert triangles(trimesh.Trimesh(pre.vertices / 1000, pre.faces, process=False)) == \
            triangles(um)


def test_reduction_simplifies_and_keeps_the_shape(tmp_path):
    lab, _ = blobs((32, 32, 32), seed=4, frac=60)
    big = np.bincount(lab.ravel())[1:].argmax() + 1
    v = make_volume(tmp_path / "l.zarr", lab, (16, 16, 16))
    full = emarray.mesh(v, tmp_path / "a", format="ply", ids=[big])
    assert full == 1
    emarray.mesh(v, tmp_path / "b", format="ply", ids=[big], reduction=10)
    a = trimesh.load(tmp_path / "a" / f"{big}.ply")
    b = trimesh.load(tmp_path / "b" / f"{big}.ply")
    assert len(b.faces) < len(a.faces) / 5
    assert abs(b.volume - a.volume) / a.volume < 0.05


def test_cli_refusals_touch_nothing(tmp_path):
    lab, _ = blobs((16, 16, 16), seed=5)
    make_volume(tmp_path / "l.zarr", lab, 8)
    make_volume(tmp_path / "f.zarr", lab.astype(np.float32), 8)
    out = tmp_path / "m"
    r = cli("mesh", tmp_path / "f.zarr", out)
    assert r.returncode == 2 and "integer ids" in one_error_line(r)
    r = cli("mesh", tmp_path / "l.zarr", out, "--reduction", "0.5")
    assert r.returncode == 2 and "reduction" in one_error_line(r)
    r = cli("mesh", tmp_path / "l.zarr", out, "--ids", "3,x")
    assert r.returncode == 2 and "'x'" in one_error_line(r)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file: the meshes go beside it
    r = cli("mesh", tmp_path / "l.zarr", out, "-q")
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = cli("mesh", tmp_path / "l.zarr", out)
    assert r.returncode == 2 and "--overwrite" in one_error_line(r)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = cli("mesh", tmp_path / "l.zarr", tmp_path / "l.zarr" / "meshes")
    assert r.returncode == 2
    r = cli("mesh", tmp_path / "l.zarr", out, "--overwrite", "--ids", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "1", "1:0", "info", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_killed_then_resumed_gives_the_same_meshes(tmp_path):
    lab, n = blobs((48, 48, 48), seed=6)
    make_volume(tmp_path / "l.zarr", lab, 6)  # 512 blocks
    r = cli("mesh", tmp_path / "l.zarr", tmp_path / "clean", "--format", "ply", "-q")
    assert r.returncode == 0, r.stderr
    trace = tmp_path / "trace"
    proc = subprocess.Popen([sys.executable, "-m", "emarray", "mesh", str(tmp_path / "l.zarr"),
                             str(tmp_path / "m"), "--format", "ply", "-q"],
                            env={**os.environ, "EMARRAY_TRACE": str(trace),
                                 "EMARRAY_CHECKPOINT_SECONDS": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while proc.poll() is None and (not trace.exists() or
                                   len(trace.read_text().splitlines()) < 100):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (staging(tmp_path / "m") / PROGRESS_DIR).exists() and not (tmp_path / "m").exists()
    r = cli("mesh", tmp_path / "l.zarr", tmp_path / "m", "--format", "ply", "--resume", "-q")
    assert r.returncode == 0, r.stderr
    for i in range(1, n + 1):
        assert triangles(trimesh.load(tmp_path / "m" / f"{i}.ply")) == \
            triangles(trimesh.load(tmp_path / "clean" / f"{i}.ply"))
