"""Every output where the data lives (issue 38): meshes, skeletons, precomputed exports, tables,
watershed and agglomerate side files on S3 (moto's server on 127.0.0.1, the fixtures of
tests/test_remote.py), each compared with the same run on local disk; kills are real SIGKILLs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray import storage
from emarray.engine import remote_files
from emarray.engine import stages as engine_stages
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.engine.files import MANIFEST
from emarray.engine.remote_output import RemoteLock
from emarray.errors import (InvalidArgumentError, JobFailedError, OutputExistsError,
                            OutputLockedError)

from . import test_remote
from .conftest import make_volume
from .helpers import cli
from .test_remote import _keys

s3_server, s3 = test_remote.s3_server, test_remote.s3  # its fixtures: moto's server, a bucket

SYNC = {"scheduler": "synchronous", "progress": False}


def _labels(shape=(16, 24, 20), ids=(3, 17, 42), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, np.uint32)
    for i in ids:
        z, y, x = (int(rng.integers(1, s - 6)) for s in shape)
        a[z:z + 5, y:y + 6, x:x + 5] = i
    return a


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(MANIFEST)}


def _remote_files(url: str, names=None) -> dict[str, bytes]:
    keys = names if names is not None else [k for k in _keys(url) if not k.endswith(MANIFEST)]
    return {k: storage.read_bytes(f"{url}/{k}") for k in keys}


def _nothing_staged(s3: str) -> None:
    """No staging prefix, progress or lock of any job is left in the bucket."""
    left = [k for k in _keys(s3) if ".emarray-new" in k or PROGRESS_DIR in k
            or k.endswith(".emarray-lock")]
    assert not left, left


def test_files_outputs_on_s3_equal_local_and_leave_a_users_objects(tmp_path, s3):
    a = _labels()
    make_volume(tmp_path / "l.zarr", a, 8)
    p = np.random.default_rng(1).random(a.shape).astype(np.float32)
    make_volume(tmp_path / "p.zarr", p, 8)
    make_volume(tmp_path / "t.zarr", (a > 0).astype(np.uint8), 8)
    long = np.random.default_rng(2).integers(0, 9, (2, 3, 8300)).astype(np.uint8)
    make_volume(tmp_path / "long.zarr", long, (2, 3, 1000))  # 130 chunks: 3 shards
    storage.write_bytes(f"{s3}/m/notes.txt", b"a user's notes")  # beside the outputs
    storage.write_bytes(f"{s3}/tab/mine.csv", b"a user's table")
    lab, here = os.fspath(tmp_path / "l.zarr"), tmp_path / "local"
    here.mkdir()

    def both(fn, *args, name, key="dst", **kw):
        fn(*args, **{key: f"{s3}/{name}"}, **kw, **SYNC)
        fn(*args, **{key: here / name}, **kw, **SYNC)
        return _remote_files(f"{s3}/{name}"), _local_files(here / name)

    got, ref = both(emarray.mesh, lab, name="m")
    assert got.pop("notes.txt") == b"a user's notes"
    assert got == ref and {"info", "3", "3:0", "17:0", "42"} <= set(got)
    got, ref = both(emarray.skeleton, lab, name="s", format="swc", dust=0)
    assert got == ref and {"info", "3.swc", "17.swc", "42.swc"} == set(got)
    got, ref = both(emarray.erl, lab, here / "s", name="erl", key="out")
    assert got == ref and set(got) == {"erl.json", "runs.csv"}
    syn = emarray.synthetic(f"{s3}/syn", (8, 16, 16), chunks=8, **SYNC)
    for kind, v in emarray.synthetic(here / "syn", (8, 16, 16), chunks=8, **SYNC).items():
        np.testing.assert_array_equal(syn[kind].read(), v.read())
    got, ref = both(emarray.export, tmp_path / "long.zarr", name="ng", format="precomputed")
    assert got == ref and len([k for k in got if k.endswith(".shard")]) > 1
    np.testing.assert_array_equal(emarray.open_volume(f"precomputed://{here / 'ng'}").read(),
                                  long)
    # tables, their summaries and figures (a named table: its files beside it)
    emarray.objects(lab, out=f"{s3}/tab/o.csv", **SYNC)
    emarray.objects(lab, out=here / "o.csv", **SYNC)
    assert _remote_files(f"{s3}/tab", ["o.csv", "o.json", "o.png"]) == {
        k: (here / k).read_bytes() for k in ("o.csv", "o.json", "o.png")}
    got, ref = both(emarray.sweep, tmp_path / "p.zarr", tmp_path / "t.zarr", name="sw",
                    key="out", values="0.2,0.5,0.8")
    assert got == ref and set(got) == {"sweep.csv", "sweep.json", "sweep.png"}

    # --overwrite replaces only what the manifest lists: the user's objects stay
    emarray.mesh(lab, f"{s3}/m", ids=[17], overwrite=True, **SYNC)
    assert sorted(_keys(f"{s3}/m")) == sorted([MANIFEST, "17", "17:0", "info", "notes.txt"])
    assert storage.read_bytes(f"{s3}/tab/mine.csv") == b"a user's table"
    # a job whose file would land on a user's object is refused before any work, naming it
    storage.write_bytes(f"{s3}/t2/o.json", b"a user's summary")
    with pytest.raises(OutputExistsError, match=r"o\.json.*emarray did not write"):
        emarray.objects(lab, out=f"{s3}/t2/o.csv", **SYNC)
    assert _keys(f"{s3}/t2") == ["o.json"]
    # the lock: a second job is refused while another holds the output
    lock = RemoteLock(f"{s3}/m", "m")
    lock.acquire()
    try:
        with pytest.raises(OutputLockedError, match="being written by another emarray job"):
            emarray.mesh(lab, f"{s3}/m", overwrite=True, **SYNC)
    finally:
        lock.release()
    # where emarray cannot lock (gs://: conditional writes untested), one line before any work
    with pytest.raises(InvalidArgumentError, match="conditional writes"):
        emarray.mesh(lab, "gs://bucket/m", **SYNC)
    with pytest.raises(InvalidArgumentError, match="TIFF and HDF5 files to local disk only"):
        emarray.export(lab, f"{s3}/l.tif")
    _nothing_staged(s3)


def test_watershed_and_agglomerate_on_s3_equal_local(tmp_path, s3):
    from scipy import ndimage
    b = ndimage.gaussian_filter(np.random.default_rng(3).random((16, 32, 32)), 2)
    b = ((b - b.min()) / (b.max() - b.min())).astype(np.float32)
    make_volume(tmp_path / "b.zarr", b, (8, 16, 16))
    bnd = os.fspath(tmp_path / "b.zarr")
    ws = {"threshold": 0.5, "halo": (2, 4, 4)}
    for relabel in (False, True):  # relabel keeps its scratch volume and offsets in the version
        got = emarray.watershed(bnd, f"{s3}/f{relabel}.zarr", relabel=relabel, **ws, **SYNC)
        ref = emarray.watershed(bnd, tmp_path / f"f{relabel}.zarr", relabel=relabel, **ws,
                                **SYNC)
        np.testing.assert_array_equal(got.read(), ref.read())
    cut = {"threshold": 0.4, "thresholds": [0.6]}
    got = emarray.agglomerate(f"{s3}/fFalse.zarr", bnd, f"{s3}/s.zarr", **cut, **SYNC)
    ref = emarray.agglomerate(tmp_path / "fFalse.zarr", bnd, tmp_path / "s.zarr", **cut, **SYNC)
    np.testing.assert_array_equal(got.read(), ref.read())
    # the other threshold, by the path the report names (inside the version the group points at)
    np.testing.assert_array_equal(emarray.open_volume(f"{s3}/s.zarr/t0.6").read(),
                                  emarray.open_volume(tmp_path / "s.zarr" / "t0.6").read())
    version = got.array_path.split("/")[0]
    assert storage.read_bytes(f"{s3}/s.zarr/{version}/lookup.csv") == \
        (tmp_path / "s.zarr" / "lookup.csv").read_bytes()
    # the graph kept in the bucket is reused, replacing the output it lies in
    again = emarray.agglomerate(f"{s3}/fFalse.zarr", bnd, f"{s3}/s.zarr", threshold=0.6,
                                graph=f"{s3}/s.zarr", overwrite=True, **SYNC)
    np.testing.assert_array_equal(again.read(), emarray.open_volume(tmp_path / "s.zarr" /
                                                                    "t0.6").read())
    tops = {k.split("/")[0] for k in _keys(f"{s3}/s.zarr")} - {"zarr.json"}
    assert len(tops) == 1  # the old version, its graph and its t0.6 are gone
    _nothing_staged(s3)


def _mesh_cmd(lab, dst, *extra):
    return [sys.executable, "-m", "emarray", "-q", "mesh", str(lab), dst, "--format", "ply",
            "--per-task", "1", "--scheduler", "synchronous", *extra]


def test_mesh_killed_mid_overwrite_on_s3_keeps_the_old_then_resumes(tmp_path, s3):
    a = _labels((24, 24, 24), ids=tuple(range(1, 31)), seed=4)
    make_volume(tmp_path / "l.zarr", a, 8)
    emarray.mesh(tmp_path / "l.zarr", tmp_path / "ref", format="ply", **SYNC)
    dst = f"{s3}/m"
    emarray.mesh(tmp_path / "l.zarr", dst, format="ply", ids=[1, 2], **SYNC)
    storage.write_bytes(f"{dst}/notes.txt", b"mine")
    old = _remote_files(dst)
    trace = tmp_path / "trace"
    proc = subprocess.Popen(_mesh_cmd(tmp_path / "l.zarr", dst, "--overwrite"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMARRAY_TRACE": str(trace),
                                 "EMARRAY_CHECKPOINT_SECONDS": "0"})
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120 and not (
            trace.exists() and trace.read_text().count("\tstitch\t") >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # killed mid-stitch: the old output is whole, the new one staged beside it
    assert _remote_files(dst) == old
    assert any(k.startswith(".m.emarray-new/") for k in _keys(s3))
    r = cli(*_mesh_cmd(tmp_path / "l.zarr", dst, "--resume")[3:])  # in this process
    assert r.returncode == 0, r.stderr
    assert "taking over the lock" in r.stderr
    got = _remote_files(dst)
    assert got.pop("notes.txt") == b"mine"
    assert got == _local_files(tmp_path / "ref") and len(got) == 30
    _nothing_staged(s3)


def test_a_commit_cut_short_on_s3_is_finished_by_the_next_job(tmp_path, s3, monkeypatch,
                                                              capsys):
    a = _labels()
    make_volume(tmp_path / "l.zarr", a, 8)
    lab, dst = tmp_path / "l.zarr", f"{s3}/m"
    emarray.mesh(lab, tmp_path / "new", format="ply", ids=[42, 17], **SYNC)
    emarray.mesh(lab, dst, format="ply", ids=[3, 17], **SYNC)
    storage.write_bytes(f"{dst}/notes.txt", b"mine")
    old = _remote_files(dst)
    # a job that fails says where its staged work is kept, and changes nothing at the output
    run_block = engine_stages.run_block

    def fail(st, index):
        if st.name == "stitch":
            raise RuntimeError("disk on fire")
        return run_block(st, index)
    with monkeypatch.context() as m:
        m.setattr(engine_stages, "run_block", fail)
        with pytest.raises(JobFailedError, match=r"disk on fire.*is as it was.*kept at "
                                                 r"s3://.*\.m\.emarray-new.*--resume"):
            emarray.mesh(lab, dst, format="ply", ids=[42, 17], overwrite=True, retries=0,
                         **SYNC)
    assert _remote_files(dst) == old
    real = remote_files.RemoteTree.move_in

    def cut(self, staging, final, names):
        # killed after the server copied the files, before their staged objects were deleted
        fs, _ = storage.filesystem(staging.url)
        fs.copy([fs._strip_protocol((staging / n).url) for n in names],
                [fs._strip_protocol((final / n).url) for n in names])
        raise KeyboardInterrupt
    monkeypatch.setattr(remote_files.RemoteTree, "move_in", cut)
    with pytest.raises(KeyboardInterrupt):
        emarray.mesh(lab, dst, format="ply", ids=[42, 17], overwrite=True, **SYNC)
    monkeypatch.setattr(remote_files.RemoteTree, "move_in", real)
    # every object whole, old or new; the old manifest still says what is emarray's
    now = _remote_files(dst)
    assert set(now) == set(old) | {"42.ply"} and now["notes.txt"] == b"mine"
    assert storage.read_json(f"{dst}/{MANIFEST}")["files"] == ["17.ply", "3.ply"]
    # any next job on the output finishes the replacement first (here a resume: a no-op)
    capsys.readouterr()
    assert emarray.mesh(lab, dst, format="ply", ids=[42, 17], resume=True, **SYNC) == 2
    assert "finished an interrupted replacement" in capsys.readouterr().err
    got = _remote_files(dst)
    assert got.pop("notes.txt") == b"mine"
    assert got == _local_files(tmp_path / "new")
    _nothing_staged(s3)


RECIPE = """
steps:
  mask: {{op: threshold, src: {src}, value: 0.5}}
  cells: {{op: label, src: mask}}
  table: {{op: objects, labels: cells}}
  meshes: {{op: mesh, labels: cells, format: ply, per_task: 1}}
"""


def test_a_recipes_work_folder_in_a_bucket_killed_then_resumed_equals_local(tmp_path, s3):
    from scipy import ndimage
    p = ndimage.gaussian_filter(np.random.default_rng(5).random((16, 16, 16)), 2)  # 8 blocks a step
    p = ((p - p.min()) / (p.max() - p.min())).astype(np.float32)
    make_volume(tmp_path / "p.zarr", p, 8)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(src=tmp_path / "p.zarr"))
    emarray.run_pipeline(recipe, workdir=tmp_path / "wd", echo=lambda line: None,
                         scheduler="synchronous")
    wd = f"{s3}/wd"
    storage.write_bytes(f"{wd}/notes.txt", b"mine")
    trace = tmp_path / "trace"
    cmd = [sys.executable, "-m", "emarray", "-q", "run", str(recipe), "--workdir", wd,
           "--scheduler", "synchronous"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EMARRAY_TRACE": str(trace),
                                 "EMARRAY_CHECKPOINT_SECONDS": "0"})
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120 and not (
            trace.exists() and "\tstitch\t" in trace.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed in the last step
    state = storage.read_json(f"{wd}/.emarray-pipeline.json")
    assert state["steps"]["meshes"]["status"] == "running"
    said: list[str] = []
    with pytest.raises(InvalidArgumentError, match="interrupted.*--resume"):
        emarray.run_pipeline(recipe, workdir=wd, echo=said.append, **SYNC)
    emarray.run_pipeline(recipe, workdir=wd, resume=True, echo=said.append, **SYNC)
    assert sum("finished in an earlier run" in line for line in said) == 3, said
    for step in ("mask.zarr", "cells.zarr"):
        np.testing.assert_array_equal(emarray.open_volume(f"{wd}/{step}").read(),
                                      emarray.open_volume(tmp_path / "wd" / step).read())
    assert _remote_files(f"{wd}/meshes") == _local_files(tmp_path / "wd" / "meshes")
    assert storage.read_bytes(f"{wd}/table.csv") == (tmp_path / "wd" / "table.csv").read_bytes()
    assert storage.read_bytes(f"{wd}/notes.txt") == b"mine"
    # its page is in the bucket too, naming the bucket's volumes for emarray view
    page = storage.read_bytes(f"{wd}/report.html")
    assert b"<img" in page and f"emarray view {wd}/".encode() in page
    assert b"testing" not in page  # no credential
    _nothing_staged(s3)


def test_view_serves_a_volume_in_a_bucket_without_its_credentials(tmp_path, s3):
    import json
    import urllib.request

    import neuroglancer
    from emarray import view as V
    a = _labels()
    cells = emarray.create_volume(f"{s3}/cells.zarr", a.shape, "uint32", 8,
                                  attrs={"labels": True})
    cells.write(tuple(slice(0, n) for n in a.shape), a)
    emarray.threshold(cells, f"{s3}/mask.zarr", 0.5, **SYNC)  # a group pointing at a version
    lines: list[str] = []
    viewer = V.view([f"{s3}/mask.zarr", f"{s3}/cells.zarr"], layout="xy", echo=lines.append,
                    wait=False)
    try:
        state = json.dumps(viewer.state.to_json())
        assert "s3://" not in state and "testing" not in state
        sources = {ly.name: ly.source[0].url for ly in viewer.state.layers}
        assert set(sources) == {"mask", "cells"}
        for name, key in (("mask", "mask.zarr"), ("cells", "cells.zarr")):
            base = sources[name].removeprefix("zarr3://")
            assert base.startswith("http://127.0.0.1:")
            meta = json.loads(urllib.request.urlopen(f"{base}/zarr.json").read())
            assert meta == storage.read_json(f"{s3}/{key}/zarr.json")
            chunk = emarray.open_volume(f"{s3}/{key}").chunk_key((1, 0, 1))
            want = storage.read_bytes(f"{s3}/{key}/{chunk}")
            req = urllib.request.Request(f"{base}/{chunk}", headers={"Range": "bytes=2-9"})
            with urllib.request.urlopen(req) as r:
                assert r.status == 206 and r.read() == want[2:10]
            for bad in ("../cells.zarr/zarr.json", "%2e%2e/x", "", "a//b"):
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(f"{base}/{bad}")
                assert e.value.code == 404
    finally:
        neuroglancer.stop()
