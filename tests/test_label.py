"""emarray.label against cc3d and scipy.ndimage.label on the whole array."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import cc3d
import fastremap
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

import emarray
from emarray.engine import Checkpoint
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.errors import InvalidArgumentError
from emarray.ops import label as label_mod

from .conftest import make_volume, real_dask_cluster

PY = sys.executable
RANK = {6: 1, 18: 2, 26: 3}


def reference(a, connectivity, *, binary=True, background=0, min_size=0):
    """cc3d on the whole array, small components removed, renumbered in C order of first voxel."""
    fg = (a != background).astype(np.uint8) if binary else a.copy()
    if not binary and background != 0:
        fg[a == background], fg[a == 0] = 0, background
    ref = cc3d.connected_components(fg, connectivity=connectivity, out_dtype=np.uint64)
    if min_size:
        ref = cc3d.dust(ref, min_size, connectivity=connectivity)
    return fastremap.renumber(ref, preserve_zero=True)[0].astype(np.uint64)


def same_partition(a, b) -> bool:
    """Two labellings name the same sets of voxels (up to renaming), background included."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and bool(np.all((a == 0) == (b == 0))))


def blobs(shape, density, seed, smooth=1.0):
    rng = np.random.default_rng(seed)
    return (ndimage.gaussian_filter(rng.random(shape), smooth) > 1 - density * 0.6).astype(np.uint8)


def run_label(tmp_path, a, chunks, name="l", shards=None, **kw):
    src = make_volume(tmp_path / f"{name}-in.zarr", a, chunks, shards=shards)
    kw.setdefault("scheduler", "synchronous")
    return emarray.label(src, tmp_path / f"{name}.zarr", **kw)


# -- equal to the whole-array references -------------------------------------------------------
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("chunks", [(4, 5, 6), (13, 3, 17), (3, 2, 4)])
def test_binary_equals_scipy_and_cc3d_for_each_chunking(tmp_path, connectivity, chunks):
    a = (np.random.default_rng(connectivity).random((13, 17, 19)) > 0.72).astype(np.uint8)
    got = run_label(tmp_path, a, chunks, connectivity=connectivity).read()
    s, n = ndimage.label(a, structure=ndimage.generate_binary_structure(3, RANK[connectivity]))
    assert got.max() == n and same_partition(got, s)
    np.testing.assert_array_equal(got, s)  # scipy numbers in C order of first voxel too
    np.testing.assert_array_equal(got, reference(a, connectivity))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(*[st.integers(1, 12)] * 3), data=st.data(),
       connectivity=st.sampled_from([6, 18, 26]), density=st.floats(0.05, 0.9),
       multilabel=st.booleans())
def test_any_chunking_gives_the_same_ids(tmp_path_factory, shape, data, connectivity, density,
                                         multilabel):
    tmp = tmp_path_factory.mktemp("h")
    chunks = data.draw(st.tuples(*[st.integers(1, s) for s in shape]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    if multilabel:
        a = rng.integers(0, 4, shape).astype(np.uint16) * (rng.random(shape) < density)
    else:
        a = (rng.random(shape) < density).astype(np.uint8)
    mode = "multilabel" if multilabel else "binary"
    got = run_label(tmp, a.astype(a.dtype), chunks, connectivity=connectivity, mode=mode).read()
    np.testing.assert_array_equal(got, reference(a, connectivity, binary=not multilabel))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "uint64"])
def test_multilabel_each_value_has_its_own_components(tmp_path, dtype):
    rng = np.random.default_rng(3)
    a = (ndimage.zoom(rng.integers(0, 5, (4, 5, 5)), 3, order=0)[:11, :14, :13]).astype(dtype)
    a[rng.random(a.shape) < 0.1] = 0
    for conn in (6, 26):
        got = run_label(tmp_path, a, (4, 6, 5), name=f"m{conn}", connectivity=conn,
                        mode="multilabel").read()
        np.testing.assert_array_equal(got, reference(a, conn, binary=False))
        ref = cc3d.connected_components(a, connectivity=conn)
        assert same_partition(got, ref)


def test_auto_mode_is_multilabel_for_label_volumes_and_binary_for_masks(tmp_path):
    a = np.zeros((4, 6, 6), np.uint32)
    a[:, :, :3], a[:, :, 3:] = 7, 9  # two touching ids: two components as labels, one as a mask
    assert run_label(tmp_path, a, (2, 3, 3), name="ids").read().max() == 2
    assert run_label(tmp_path, a.astype(np.uint8), (2, 3, 3), name="mask").read().max() == 1


def test_background_value(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 3, (9, 10, 11)).astype(np.uint8)
    got = run_label(tmp_path, a, (4, 4, 4), connectivity=6, background=2).read()
    np.testing.assert_array_equal(got, reference(a, 6, background=2))
    got = run_label(tmp_path, a, (4, 4, 4), name="ml", connectivity=6, background=2,
                    mode="multilabel").read()
    np.testing.assert_array_equal(got, reference(a, 6, binary=False, background=2))


def test_float_masks_label_their_nonzero_voxels(tmp_path):
    a = np.random.default_rng(5).random((8, 9, 10)).astype(np.float32)
    a[a < 0.6] = 0
    with pytest.warns(emarray.errors.EmarrayWarning, match="holds float32"):
        got = run_label(tmp_path, a, (3, 4, 5), connectivity=18).read()
    np.testing.assert_array_equal(got, reference(a, 18))


def test_a_float_map_is_labelled_with_a_one_line_warning_before_any_work(tmp_path):
    from click.testing import CliRunner

    from emarray.cli import cli
    a = np.random.default_rng(6).random((6, 10, 12)).astype(np.float32)  # a probability map
    for dtype in (np.float32, np.float64):
        make_volume(tmp_path / f"p{dtype.__name__}.zarr", a.astype(dtype), (3, 5, 6))
        r = CliRunner().invoke(cli, ["-q", "label", str(tmp_path / f"p{dtype.__name__}.zarr"),
                                     str(tmp_path / f"l{dtype.__name__}.zarr")])
        assert r.exit_code == 0, r.output
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("warning: "), err
        assert f"holds {dtype.__name__}" in err[0] and "emarray threshold" in err[0]
        assert "--mode binary" in err[0]
        # what it warned of: every nonzero voxel foreground, so one component
        got = emarray.open_volume(tmp_path / f"l{dtype.__name__}.zarr").read()
        np.testing.assert_array_equal(got, reference(a, 26))
        assert got.max() == 1
    # said outright (--mode binary: a 0/1 float mask), or an integer mask: no warning
    r = CliRunner().invoke(cli, ["-q", "label", str(tmp_path / "pfloat32.zarr"),
                                 str(tmp_path / "b.zarr"), "--mode", "binary"])
    assert r.exit_code == 0 and not r.stderr.strip(), r.stderr
    make_volume(tmp_path / "m.zarr", (a > 0.5).astype(np.uint8), (3, 5, 6))
    r = CliRunner().invoke(cli, ["-q", "label", str(tmp_path / "m.zarr"), str(tmp_path / "c.zarr")])
    assert r.exit_code == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.parametrize("min_size", [1, 2, 5, 40])
def test_min_size_removes_small_components_before_numbering(tmp_path, min_size):
    a = blobs((12, 20, 20), 0.5, 7)
    got = run_label(tmp_path, a, (5, 6, 7), connectivity=26, min_size=min_size).read()
    np.testing.assert_array_equal(got, reference(a, 26, min_size=min_size))


def test_objects_meeting_only_at_block_corners_and_edges(tmp_path):
    a = np.zeros((8, 8, 8), np.uint8)
    a[3, 3, 3] = a[4, 4, 4] = 1  # corner of four blocks of 4
    a[3, 3, 6] = a[4, 4, 6] = 1  # edge
    a[6, 3, 1] = a[6, 4, 1] = 1  # face
    for conn, n in ((6, 5), (18, 4), (26, 3)):
        got = run_label(tmp_path, a, (4, 4, 4), name=f"c{conn}", connectivity=conn).read()
        assert got.max() == n
        np.testing.assert_array_equal(got, reference(a, conn))


def test_single_voxel_blocks_and_shards(tmp_path):
    a = blobs((5, 6, 7), 0.5, 8, smooth=0.7)
    got = run_label(tmp_path, a, (1, 1, 1), connectivity=26).read()
    np.testing.assert_array_equal(got, reference(a, 26))
    b = blobs((16, 24, 24), 0.5, 9)
    got = run_label(tmp_path, b, (4, 4, 4), name="sh", shards=(8, 8, 12), connectivity=18)
    assert got.shards == (8, 8, 12)
    np.testing.assert_array_equal(got.read(), reference(b, 18))


def test_uint64_output_past_the_uint32_range(tmp_path, monkeypatch):
    monkeypatch.setattr(label_mod, "UINT32_MAX_IDS", 3)
    a = (np.random.default_rng(10).random((6, 7, 8)) > 0.8).astype(np.uint8)
    out = run_label(tmp_path, a, (3, 3, 4), connectivity=6)
    assert out.dtype == np.uint64
    np.testing.assert_array_equal(out.read(), reference(a, 6))
    assert out.attrs["emarray"]["components"] == int(reference(a, 6).max())
    assert out.attrs["emarray"]["labels"] is True


def test_threads_and_processes_agree_with_the_whole_array(tmp_path):
    """(A real dask cluster is the next test.)"""
    a = blobs((16, 20, 24), 0.45, 11)
    ref = reference(a, 26)
    for sched in ("threads", "processes"):
        got = run_label(tmp_path, a, (5, 8, 8), name=sched, scheduler=sched, workers=2).read()
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("keep_mib", [None, "0", "0.0005"])
def test_local_labels_kept_between_stages_give_the_same_ids(tmp_path, monkeypatch, keep_mib):
    """The last stage takes each block's labels kept since the first (each block labelled once);
    with nothing kept (budget 0) or only some blocks kept (a budget that fills up), the blocks
    not kept are labelled again: the same ids every way, and nothing stays kept after the job."""
    from emarray.ops import local_labels
    if keep_mib is not None:
        monkeypatch.setenv("EMARRAY_LABEL_KEEP_MIB", keep_mib)
    calls = []
    real = label_mod.block_components
    monkeypatch.setattr(label_mod, "block_components",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    a = blobs((18, 40, 44), 0.45, 13)
    chunks = (6, 10, 11)
    nblocks = 3 * 4 * 4
    got = run_label(tmp_path, a, chunks, scheduler="threads", workers=2, min_size=3).read()
    np.testing.assert_array_equal(got, reference(a, 26, min_size=3))
    if keep_mib is None:
        assert len(calls) == nblocks
    elif keep_mib == "0":
        assert len(calls) == 2 * nblocks
    else:
        assert nblocks < len(calls) < 2 * nblocks
    assert local_labels.kept_bytes() == 0


def test_a_bad_keep_budget_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("EMARRAY_LABEL_KEEP_MIB", "lots")
    with pytest.raises(InvalidArgumentError, match="EMARRAY_LABEL_KEEP_MIB.*'lots'"):
        run_label(tmp_path, blobs((6, 8, 8), 0.4, 1), (3, 4, 4))
    assert not (tmp_path / "l.zarr").exists()


@pytest.mark.cluster
def test_a_real_dask_cluster_with_a_worker_elsewhere(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    a = blobs((12, 16, 16), 0.45, 12)
    with real_dask_cluster(tmp_path, workers=2, cwd=elsewhere) as address:
        got = run_label(tmp_path, a, (4, 8, 8), scheduler=address, connectivity=18).read()
    np.testing.assert_array_equal(got, reference(a, 18))
    assert not list(elsewhere.iterdir())


# -- real data ---------------------------------------------------------------------------------
def test_drosophila_mitochondria_are_47_components(tmp_path, shared_data):
    """47 with every slice read as PIL converts it. The data README's 99 counts slices 1, 7 and
    18 (1-bit PNGs, read as 0/1 before) as empty, which cuts objects apart there."""
    from PIL import Image
    folder = shared_data / "drosophila-vnc-stack1/stack1/mitochondria"
    mito = emarray.ingest(folder, tmp_path / "mito.zarr", chunks=(8, 256, 256), progress=False)
    mask = emarray.threshold(mito, tmp_path / "mask.zarr", 127, progress=False)
    out = emarray.label(mask, tmp_path / "lab.zarr", connectivity=26)
    got = out.read()
    pil = np.stack([np.asarray(Image.open(folder / f"{i:02d}.png").convert("L")) for i in range(20)])
    np.testing.assert_array_equal(got, reference(pil > 127, 26))
    assert got.max() == 47 == out.attrs["emarray"]["components"]


def test_gala_truth_ids_are_each_one_component(tmp_path, shared_data):
    gt = emarray.ingest(shared_data / "gala-flyem/train-gt.lzf.h5", tmp_path / "gt.zarr",
                        chunks=(16, 32, 64), progress=False)
    got = emarray.label(gt, tmp_path / "lab.zarr", connectivity=26).read()
    truth = gt.read()
    assert len(np.unique(truth[truth > 0])) == 87 == got.max()
    assert same_partition(got, truth)
    np.testing.assert_array_equal(got, reference(truth, 26, binary=False))


# -- faults and bad input ------------------------------------------------------------------------
def test_killed_after_the_first_stages_resumes_without_redoing_them(tmp_path):
    a = blobs((16, 24, 24), 0.5, 13)
    src = make_volume(tmp_path / "in.zarr", a, (2, 4, 4))  # 288 blocks
    dst = tmp_path / "lab.zarr"
    env = {**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0"}
    cmd = [PY, "-m", "emarray", "-q", "label", str(src.url), str(dst), "--scheduler",
           "synchronous", "--connectivity", "26"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = dst / PROGRESS_DIR
    from .helpers import cli, wait_for
    wait_for(lambda: Checkpoint(progress).finished("offsets")[0]
             and Checkpoint(progress).done_count("faces") > 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not emarray.open_volume(dst).attrs["emarray"].get("complete")
    trace = tmp_path / "trace.tsv"  # a line per block the resumed job computes
    r = cli(*cmd[3:], "--resume", env={"EMARRAY_TRACE": trace})  # in process
    assert r.returncode == 0, r.stderr
    stages = {ln.split("\t")[1] for ln in trace.read_text().splitlines()}
    assert not stages & {"label", "offsets"}, stages  # (faces, relabel: what was left)
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), reference(a, 26))
    assert not progress.exists()


@pytest.mark.parametrize("args, message", [
    (["--connectivity", "8"], "connectivity must be one of 6, 18, 26"),
    (["--min-size", "-1"], "min_size must be a whole number"),
    (["--background", "300"], "background 300"),
    (["--mode", "multilabel"], "multilabel needs integer labels"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, args, message):
    from .helpers import cli, one_error_line
    a = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    if "--background" in args:
        a = (a * 10).astype(np.uint8)
    make_volume(tmp_path / "in.zarr", a, 2)
    line = one_error_line(cli("label", tmp_path / "in.zarr", tmp_path / "out.zarr", *args))
    assert message in line
    assert not (tmp_path / "out.zarr").exists()


def test_python_api_refuses_bad_parameters(tmp_path):
    src = make_volume(tmp_path / "in.zarr", np.zeros((3, 4, 5), np.uint8), 2)
    with pytest.raises(InvalidArgumentError, match="mode must be"):
        emarray.label(src, tmp_path / "o.zarr", mode="instances")
    with pytest.raises(InvalidArgumentError, match="connectivity"):
        emarray.label(src, tmp_path / "o.zarr", connectivity=4)
    assert not (tmp_path / "o.zarr").exists()


def test_cli_label(tmp_path):
    from .helpers import cli
    a = blobs((8, 10, 12), 0.5, 14)
    make_volume(tmp_path / "in.zarr", a, (4, 5, 6))
    r = cli("label", tmp_path / "in.zarr", tmp_path / "l.zarr", "--connectivity", "6",
            "--min-size", "3", "-q")
    assert r.returncode == 0, r.stderr
    n = int(reference(a, 6, min_size=3).max())
    assert f"{n} components" in r.stdout
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "l.zarr").read(),
                                  reference(a, 6, min_size=3))


# -- the CUDA kernel ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cuda_labels_equal_cc3d(connectivity):
    from emarray.backends import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA device")
    from emarray.cuda.label import label_block_cuda
    from emarray.ops.components import label_block_cpu
    rng = np.random.default_rng(connectivity)
    for shape in [(1, 1, 1), (1, 3, 1), (5, 7, 9), (33, 64, 65), (64, 128, 128)]:
        for dtype in ["uint8", "int16", "uint32", "uint64", "int64"]:
            a = (rng.integers(0, 3, shape) * (rng.random(shape) < 0.6)).astype(dtype)
            for binary in (True, False):
                kw = dict(connectivity=connectivity, binary=binary, background=0)
                np.testing.assert_array_equal(label_block_cuda(a, **kw), label_block_cpu(a, **kw))


@pytest.mark.gpu
def test_label_with_the_cuda_backend_equals_cc3d(tmp_path):
    from emarray.backends import cuda_available
    if not cuda_available():
        pytest.skip("needs CuPy and a CUDA device")
    a = blobs((20, 40, 40), 0.5, 15)
    got = run_label(tmp_path, a, (8, 16, 16), backend="cuda", connectivity=26).read()
    np.testing.assert_array_equal(got, reference(a, 26))


def emulate_label_cu(v, connectivity):
    """kernels/label.cu's three kernels run one thread after another (in reverse voxel order,
    so that links are not simply made in scan order), then the host's numbering of the roots."""
    n, (_, ny, nx) = v.size, v.shape
    flat = v.reshape(-1)
    parent = np.where(flat != 0, np.arange(n), -1)

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    order = RANK[connectivity]
    for i in range(n - 1, -1, -1):
        if flat[i] == 0:
            continue
        z, y, x = np.unravel_index(i, v.shape)
        for dz in (-1, 0):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if dz == 0 and (dy > 0 or (dy == 0 and dx >= 0)):
                        continue
                    if (dz != 0) + (dy != 0) + (dx != 0) > order:
                        continue
                    zz, yy, xx = z + dz, y + dy, x + dx
                    if zz < 0 or not (0 <= yy < ny and 0 <= xx < nx):
                        continue
                    j = (zz * ny + yy) * nx + xx
                    if flat[j] == flat[i]:
                        a, b = root(i), root(j)
                        while a != b:
                            a, b = min(a, b), max(a, b)
                            old = parent[b]
                            parent[b] = min(old, a)
                            if old == b:
                                break
                            a, b = root(a), root(old)
    for i in range(n):
        if parent[i] >= 0:
            parent[i] = root(i)
    fg = parent >= 0
    rank = np.cumsum(fg & (parent == np.arange(n)))
    return np.where(fg, rank[np.where(fg, parent, 0)], 0).reshape(v.shape)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_the_cuda_kernels_algorithm_numbers_as_cc3d(connectivity):
    """The kernel's union-find and numbering, emulated on the CPU, equal cc3d (the GPU runs
    the kernel itself in the gpu-marked tests above)."""
    from emarray.ops.components import label_block_cpu
    rng = np.random.default_rng(20 + connectivity)
    for shape in [(1, 3, 1), (4, 5, 6), (6, 7, 5)]:
        a = (rng.integers(1, 3, shape) * (rng.random(shape) < 0.55)).astype(np.uint8)
        for binary in (True, False):
            fg = (a != 0).astype(np.uint8) if binary else a
            np.testing.assert_array_equal(
                emulate_label_cu(fg, connectivity),
                label_block_cpu(a, connectivity=connectivity, binary=binary, background=0))


def test_every_stage_declares_the_volumes_its_blocks_read(tmp_path):
    """The relabel stage reads ``src`` again where a block's labels were not kept: it declares
    it (read lazily), so a change of ``src`` reaches its blocks (resume invalidation)."""
    from emarray.engine import LaterStage, RunOptions
    from emarray.engine.invalidate import affected_blocks, volume_key
    from emarray.volume import create_volume
    src = make_volume(tmp_path / "m.zarr", (np.arange(8 * 8 * 8).reshape(8, 8, 8) % 3 == 0)
                      .astype(np.uint8), 4)
    out = create_volume(tmp_path / "o.zarr", src.shape, "uint32", 4)
    p = label_mod.label_plan(src, label_mod.check_params(src, 26, "binary", 0, 0), RunOptions())
    stages = label_mod.label_stages(src, out, p, {}, tmp_path / "scratch")
    relabel = stages[-1]
    assert isinstance(relabel, LaterStage)
    st = relabel.build({"dtype": "uint32", "components": 1})
    assert any(r.volume is src and r.lazy for r in st.reads)
    changed = {volume_key(src): [(slice(4, 8), slice(0, 4), slice(0, 4))]}
    assert affected_blocks(st, changed).tolist() == [4]  # block (1, 0, 0)
