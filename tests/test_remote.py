"""Volumes on object storage, against a real S3 server (moto's) on 127.0.0.1.

Every operator run through it is compared with the same run on local disk; kills are real
SIGKILLs of the command line; the cluster test's workers run in another folder and get the
credentials only through ``--storage-option`` (their environment has none).
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray import storage
from emarray.engine.checkpoint import PROGRESS_DIR, Checkpoint
from emarray.storage import RemotePath

from .conftest import kill_when, make_volume, real_dask_cluster
from .helpers import cli

PY = sys.executable
MOTO = Path(sys.executable).parent / "moto_server"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _moto(env: dict[str, str] | None = None):
    port = _free_port()
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while time.time() - t0 < 30:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def s3_server():
    if not MOTO.exists():
        pytest.fail("moto_server is not installed (pip install 'moto[server]')")
    with _moto() as url:
        yield url


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the server, the environment pointing at it; yields ``s3://bucket``."""
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setattr(storage, "_OPTIONS", {})
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    fs, _ = storage.filesystem(f"s3://{bucket}")
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return f"s3://{bucket}"


def _keys(url: str) -> list[str]:
    return sorted(storage.objects(url))


def _cli(*args, env=None, check=True, drop=()):
    """``emarray -q ARGS``: in this process, or a real one where the credentials in its
    environment differ from this one's (``env``, ``drop``)."""
    r = cli("-q", *args, env=env, drop=drop, real=bool(env or drop))
    if check:
        assert r.returncode == 0, r.stderr
    return r


# -- reading and writing ----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["local->s3", "s3->s3", "s3->local"])
def test_threshold_through_s3_equals_local(tmp_path, s3, where):
    a = np.random.default_rng(1).random((21, 34, 27)).astype(np.float32)
    local = make_volume(tmp_path / "p.zarr", a, (8, 16, 9))
    ref = emarray.threshold(local, tmp_path / "ref.zarr", 0.4, progress=False).read()
    src = os.fspath(tmp_path / "p.zarr")
    if where.startswith("s3"):
        src = f"{s3}/p.zarr"
        emarray.threshold(local, f"{s3}/copy.zarr", -1.0, progress=False)  # just to make one
        v = emarray.create_volume(src, a.shape, "float32", (8, 16, 9))
        v.write(tuple(slice(0, n) for n in a.shape), a)
    dst = f"{s3}/m.zarr" if where.endswith("s3") else os.fspath(tmp_path / "m.zarr")
    out = emarray.threshold(src, dst, 0.4, progress=False)
    again = emarray.open_volume(dst)
    np.testing.assert_array_equal(again.read(), ref)
    assert again.every_chunk and out.shape == a.shape
    if where.endswith("s3"):  # the group and one version: nothing else left (no lock, no progress)
        keys = _keys(dst)
        assert "zarr.json" in keys
        assert {k.split("/")[0] for k in keys} - {"zarr.json"} == {out.array_path.split("/")[0]}
        assert not any(PROGRESS_DIR in k for k in keys)
        assert not storage.exists(f"{s3}/.m.zarr.emarray-lock")


def test_label_smooth_and_pyramid_on_s3_equal_local(tmp_path, s3):
    import cc3d
    from scipy import ndimage
    rng = np.random.default_rng(2)
    mask = (ndimage.gaussian_filter(rng.random((26, 40, 33)), 2) > 0.5).astype(np.uint8)
    v = emarray.create_volume(f"{s3}/mask.zarr", mask.shape, "uint8", (9, 13, 11))
    v.write(tuple(slice(0, n) for n in mask.shape), mask)
    make_volume(tmp_path / "mask.zarr", mask, (9, 13, 11))

    lab = emarray.label(f"{s3}/mask.zarr", f"{s3}/cells.zarr", progress=False).read()
    ref = cc3d.connected_components(mask, connectivity=26)
    # the same partition as cc3d (ids may be numbered differently)
    pairs = set(zip(lab.ravel().tolist(), ref.ravel().tolist()))
    assert len(pairs) == len(np.unique(ref)) == len(np.unique(lab))
    np.testing.assert_array_equal(
        lab, emarray.label(tmp_path / "mask.zarr", tmp_path / "cells.zarr", progress=False).read())

    sm = emarray.smooth(f"{s3}/mask.zarr", f"{s3}/sm.zarr", sigma=1.5, progress=False).read()
    np.testing.assert_array_equal(
        sm, emarray.smooth(tmp_path / "mask.zarr", tmp_path / "sm.zarr", sigma=1.5,
                           progress=False).read())

    # levels added to an emarray output on S3 (its version) and to a local copy: equal
    emarray.pyramid(f"{s3}/cells.zarr", levels=2, progress=False)
    emarray.pyramid(tmp_path / "cells.zarr", levels=2, progress=False)
    for k in (1, 2):
        r = emarray.open_volume(f"{s3}/cells.zarr", level=k)
        loc = emarray.open_volume(tmp_path / "cells.zarr", level=k)
        assert r.shape == loc.shape and r.voxel_size == loc.voxel_size
        np.testing.assert_array_equal(r.read(), loc.read())
    assert not any(PROGRESS_DIR in k for k in _keys(f"{s3}/cells.zarr"))
    # resuming the finished label job leaves it, and the levels added to it, as they are
    emarray.label(f"{s3}/mask.zarr", f"{s3}/cells.zarr", progress=False, resume=True)
    assert len(emarray.open_volume(f"{s3}/cells.zarr").levels) == 3


def test_predict_to_s3_equals_local(tmp_path, s3):
    pytest.importorskip("torch")
    from emarray.models import new_model
    raw = (np.random.default_rng(3).random((20, 40, 36)) * 255).astype(np.uint8)
    make_volume(tmp_path / "raw.zarr", raw, (10, 20, 18))
    model = new_model(tmp_path / "m.pt", depth=2, filters=4, seed=3, normalize="128,16")
    ref = emarray.predict(tmp_path / "raw.zarr", model, tmp_path / "p.zarr", patch=(8, 16, 16),
                          progress=False).read()
    got = emarray.predict(tmp_path / "raw.zarr", model, f"{s3}/p.zarr", patch=(8, 16, 16),
                          progress=False).read()
    np.testing.assert_array_equal(got, ref)


def test_recipe_with_s3_steps_and_storage_options(tmp_path, s3, s3_server, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the recipe's storage_options give the endpoint
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    a = np.random.default_rng(4).random((16, 30, 30)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (8, 15, 15))
    secret = "testing"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
storage_options: {{endpoint_url: "{s3_server}", key: "{secret}", secret: "{secret}"}}
steps:
  mask: {{op: threshold, src: {tmp_path / 'p.zarr'}, value: 0.5, out: "{s3}/mask.zarr"}}
  cells: {{op: label, src: mask, out: "{s3}/cells.zarr"}}
  local: {{op: threshold, src: cells, value: 0}}
""")
    r = _cli("run", recipe, "--workdir", tmp_path / "wd", check=False)
    assert r.returncode == 0, r.stderr
    mask = (a > 0.5)
    storage.configure({"endpoint_url": s3_server, "key": secret, "secret": secret})
    np.testing.assert_array_equal(emarray.open_volume(f"{s3}/mask.zarr").read(), mask)
    local = emarray.open_volume(tmp_path / "wd" / "local.zarr").read()
    np.testing.assert_array_equal(local, mask)
    # the credentials are nowhere in what the run kept (state, progress, metadata)
    for f in (tmp_path / "wd").rglob("*"):
        if f.is_file():
            assert b"secret: testing" not in f.read_bytes() and b"'testing'" not in f.read_bytes()
    for key in _keys(s3):
        assert b"testing" not in storage.read_bytes(f"{s3}/{key}"), key
    # a second run finds every step done (the remote inputs' ETags unchanged)
    r2 = _cli("run", recipe, "--workdir", tmp_path / "wd", check=False)
    assert r2.returncode == 0 and "0 steps run, 3 finished before" in r2.stdout, r2.stdout


# -- kills, resume, overwrite ------------------------------------------------------------------
def _version_progress(url: str) -> RemotePath | None:
    from emarray.engine.remote_output import VERSION
    for key in storage.objects(url):
        top = key.split("/")[0]
        if VERSION.fullmatch(top) and f"{top}/{PROGRESS_DIR}/" in key:
            return RemotePath(f"{url}/{top}/{PROGRESS_DIR}")
    return None


def _remote_done(url: str) -> int:
    root = _version_progress(url)
    if root is None:
        return 0
    try:
        return Checkpoint(root).done_count("threshold")
    except Exception:  # written while read: look again
        return 0


def _kill_when_done(proc, url: str, at_least: int) -> int:
    return kill_when(proc, lambda: _remote_done(url), at_least)


def _slow_threshold(tmp_path, src, dst, value, *extra):
    return subprocess.Popen(
        [PY, "-m", "emarray", "-q", "threshold", str(src), dst, "--value", str(value),
         "--scheduler", "synchronous", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0"})


def test_sigkill_then_resume_equals_a_clean_run(tmp_path, s3):
    a = np.random.default_rng(6).random((24, 40, 48)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 5, 12))  # 192 small chunks
    dst = f"{s3}/m.zarr"
    proc = _slow_threshold(tmp_path, tmp_path / "p.zarr", dst, 0.3)
    done = _kill_when_done(proc, dst, 40)
    assert proc.returncode == -signal.SIGKILL and done >= 40
    # killed: nothing at the output's path yet, its lock left behind by the dead process
    assert not storage.exists(f"{dst}/zarr.json")
    assert storage.exists(f"{s3}/.m.zarr.emarray-lock")
    with pytest.raises(emarray.errors.VolumeNotFoundError):
        emarray.open_volume(dst)
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.3", "--resume",
             check=False)
    assert r.returncode == 0, r.stderr
    assert "taking over the lock" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.3)
    assert len({k.split("/")[0] for k in _keys(dst)} - {"zarr.json"}) == 1


def test_resume_computes_again_the_blocks_of_an_input_chunk_rewritten_in_the_bucket(tmp_path,
                                                                                     s3):
    a = np.random.default_rng(16).random((24, 40, 48)).astype(np.float32)
    src = f"{s3}/p.zarr"
    # uncompressed: the rewritten chunk keeps its size, only its ETag tells it changed
    v = emarray.create_volume(src, a.shape, "float32", (4, 5, 12), compression="none")
    v.write(tuple(slice(0, n) for n in a.shape), a)
    dst = f"{s3}/m.zarr"
    proc = _slow_threshold(tmp_path, src, dst, 0.3)
    _kill_when_done(proc, dst, 40)
    # the first block (done before the kill) changes in the bucket: a new ETag, same size
    b = a.copy()
    b[0:4, 0:5, 0:12] = 1 - b[0:4, 0:5, 0:12]
    emarray.open_volume(src).write((slice(0, 4), slice(0, 5), slice(0, 12)), b[0:4, 0:5, 0:12])
    r = _cli("threshold", src, dst, "--value", "0.3", "--resume", check=False)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), b > 0.3)


def test_overwrite_interrupted_keeps_the_old_output(tmp_path, s3):
    a = np.random.default_rng(7).random((24, 40, 48)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 5, 12))
    dst = f"{s3}/m.zarr"
    emarray.threshold(tmp_path / "p.zarr", dst, 0.3, progress=False)
    old_keys = _keys(dst)
    proc = _slow_threshold(tmp_path, tmp_path / "p.zarr", dst, 0.6, "--overwrite")
    _kill_when_done(proc, dst, 30)
    # the old output is whole and readable, every chunk checked
    v = emarray.open_volume(dst)
    np.testing.assert_array_equal(v.read(), a > 0.3)
    assert set(old_keys) < set(_keys(dst))  # the unfinished new version sits beside it
    # another job refuses to take the dead job's place only while it lives: this one goes on
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.6", "--overwrite",
             check=False)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.6)
    tops = {k.split("/")[0] for k in _keys(dst)} - {"zarr.json"}
    assert len(tops) == 1  # the old version and the killed one are gone


def test_a_switch_cut_short_is_finished_by_the_next_run(tmp_path, s3, monkeypatch):
    from emarray.engine import remote_output
    a = np.random.default_rng(8).random((10, 12, 14)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (5, 6, 7))
    dst = f"{s3}/m.zarr"
    emarray.threshold(tmp_path / "p.zarr", dst, 0.3, progress=False)

    def cut(self):
        raise KeyboardInterrupt  # killed between the new version's completion and the switch
    with monkeypatch.context() as m:
        m.setattr(remote_output.RemoteOutput, "commit", cut)
        with pytest.raises(KeyboardInterrupt):
            emarray.threshold(tmp_path / "p.zarr", dst, 0.7, progress=False, overwrite=True)
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.3)  # still the old
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.7", "--resume", check=False)
    assert r.returncode == 0, r.stderr
    assert "finished an interrupted replacement" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.7)


@pytest.mark.parametrize("clock", [0, -3600])
def test_a_switch_cut_short_within_the_same_second_or_behind_is_finished(tmp_path, s3,
                                                                        monkeypatch, clock):
    """The race behind the test above failing once: a version's name is its creation time to
    the second and a random tag, and which of two complete versions is newer was read from
    the names. Two runs within one second (a fast job on a warm machine) ordered their
    versions by the random tags, half of the time the wrong way; a machine whose clock is
    behind always did. Here every run's clock reads one second (or an hour less), and each
    random tag is smaller than the one before."""
    import types
    import uuid as _uuid
    from emarray.engine import remote_output
    a = np.random.default_rng(21).random((10, 12, 14)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (5, 6, 7))
    dst = f"{s3}/m.zarr"
    now = time.time()
    tags = iter(range(0xFFFFFFFF, 0, -1))
    fake_uuid = types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(
        hex=f"{next(tags):08x}" + _uuid.uuid4().hex[8:]))
    frozen = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time)
                                      if not k.startswith("_")})
    monkeypatch.setattr(remote_output, "uuid", fake_uuid)
    monkeypatch.setattr(remote_output, "time", frozen)
    frozen.time = lambda: now
    emarray.threshold(tmp_path / "p.zarr", dst, 0.3, progress=False)
    frozen.time = lambda: now + clock  # the next run: the same second, or a clock behind

    def cut(self):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(remote_output.RemoteOutput, "commit", cut)
        with pytest.raises(KeyboardInterrupt):
            emarray.threshold(tmp_path / "p.zarr", dst, 0.7, progress=False, overwrite=True)
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.7", "--resume", check=False)
    assert r.returncode == 0, r.stderr
    assert "finished an interrupted replacement" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.7)


def test_overwrite_refuses_what_emarray_did_not_write(tmp_path, s3):
    a = np.random.default_rng(9).random((10, 12, 14)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (5, 6, 7))
    dst = f"{s3}/m.zarr"
    out = emarray.threshold(tmp_path / "p.zarr", dst, 0.3, progress=False)
    version = out.array_path.split("/")[0]
    storage.write_bytes(f"{dst}/{version}/notes/mine.txt", b"a user's file")
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.5", "--overwrite", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "notes/mine.txt" in r.stderr
    assert storage.read_bytes(f"{dst}/{version}/notes/mine.txt") == b"a user's file"
    # a prefix of someone else's objects is not written into either
    storage.write_bytes(f"{s3}/theirs.zarr/data.bin", b"x")
    r = _cli("threshold", tmp_path / "p.zarr", f"{s3}/theirs.zarr", "--value", "0.5",
             check=False)
    assert r.returncode == 2 and "data.bin" in r.stderr
    assert _keys(f"{s3}/theirs.zarr") == ["data.bin"]


def test_a_second_job_on_the_same_output_is_refused(tmp_path, s3):
    a = np.random.default_rng(10).random((24, 40, 48)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 5, 12))
    dst = f"{s3}/m.zarr"
    proc = _slow_threshold(tmp_path, tmp_path / "p.zarr", dst, 0.3)
    try:
        t0 = time.time()
        while not storage.exists(f"{s3}/.m.zarr.emarray-lock") and time.time() - t0 < 60:
            time.sleep(0.05)
        r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.3", "--resume",
                 check=False)
        assert r.returncode == 2 and "being written by another emarray job" in r.stderr
    finally:
        proc.wait(300)
    assert proc.returncode == 0
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.3)


def test_a_deleted_chunk_is_named_not_read_as_zeros(tmp_path, s3):
    a = np.random.default_rng(11).random((10, 12, 14)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (5, 6, 7))
    out = emarray.threshold(tmp_path / "p.zarr", f"{s3}/m.zarr", 0.99, progress=False)
    key = out.chunk_key((1, 1, 1))
    storage.remove(f"{s3}/m.zarr/{key}")
    with pytest.raises(emarray.errors.ChunkReadError, match=key.replace("/", ".")):
        emarray.open_volume(f"{s3}/m.zarr").read()


def test_cluster_worker_in_another_folder_with_storage_options(tmp_path, s3, s3_server,
                                                               monkeypatch):
    a = np.random.default_rng(12).random((20, 30, 30)).astype(np.float32)
    v = emarray.create_volume(f"{s3}/p.zarr", a.shape, "float32", (10, 15, 15))
    v.write(tuple(slice(0, n) for n in a.shape), a)
    for k in (*CREDS, "AWS_ENDPOINT_URL"):  # the workers get nothing from their environment
        monkeypatch.delenv(k)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with real_dask_cluster(tmp_path, workers=2, cwd=elsewhere) as address:
        r = subprocess.run(
            [PY, "-m", "emarray", "-q", "--storage-option", f"endpoint_url={s3_server}",
             "--storage-option", "key=testing", "--storage-option", "secret=testing",
             "smooth", f"{s3}/p.zarr", f"{s3}/s.zarr", "--sigma", "1", "--scheduler", address],
            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert "testing" not in r.stdout + r.stderr
    storage.configure({"endpoint_url": s3_server, "key": "testing", "secret": "testing"})
    make_volume(tmp_path / "p.zarr", a, (10, 15, 15))
    ref = emarray.smooth(tmp_path / "p.zarr", tmp_path / "s.zarr", sigma=1, progress=False)
    np.testing.assert_array_equal(emarray.open_volume(f"{s3}/s.zarr").read(), ref.read())


# -- errors: one line each, before any work ----------------------------------------------------
def test_missing_bucket_and_bad_path_are_one_line(tmp_path, s3):
    a = np.random.default_rng(13).random((6, 8, 8)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (3, 4, 4))
    cases = [
        (["threshold", "s3://no-such-bucket-x/p.zarr", tmp_path / "o.zarr"],
         "bucket 'no-such-bucket-x'"),
        (["threshold", tmp_path / "p.zarr", "s3://no-such-bucket-x/o.zarr"],
         "bucket 'no-such-bucket-x'"),
        (["threshold", f"{s3}/nothing.zarr", tmp_path / "o.zarr"], "found no zarr.json"),
        (["threshold", tmp_path / "p.zarr", "https://127.0.0.1:9/o.zarr"], "read-only"),
        (["export", tmp_path / "p.zarr", "gs://some-bucket/ng", "--format", "precomputed"],
         "conditional writes"),
        (["export", tmp_path / "p.zarr", f"{s3}/p.tif"], "TIFF and HDF5 files to local disk"),
    ]
    for args, message in cases:
        more = {"threshold": ["--value", "0.5"]}.get(str(args[0]), [])
        r = _cli(*args, *more, check=False)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "o.zarr").exists()
    for args, message in [(["--storage-option", "endpoint_url", "threshold", f"{s3}/x.zarr",
                            tmp_path / "o.zarr", "--value", "1"], "takes KEY=VALUE"),
                          (["view", f"{s3}/x.zarr"], "found no zarr.json"),
                          (["report", f"{s3}/wd"], "is not a pipeline's work folder")]:
        r = _cli(*args, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_bad_credentials_and_no_permission_are_one_line(tmp_path):
    """A second server that checks signatures and IAM policies (moto's auth mode)."""
    import boto3
    with _moto({"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as url:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="a", aws_secret_access_key="b")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        s3c = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="a", aws_secret_access_key="b")
        s3c.create_bucket(Bucket="lab")
        env = {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1"}
        wrong = {**env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                 "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        denied = {**env, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                  "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        for e in (wrong, denied):
            r = _cli("threshold", "s3://lab/p.zarr", tmp_path / "o.zarr", "--value", "0.5",
                     env=e, check=False)
            assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
            assert "no permission to access s3://lab" in r.stderr, r.stderr
            assert "not-the-secret" not in r.stderr and key["SecretAccessKey"] not in r.stderr
        assert not (tmp_path / "o.zarr").exists()


# -- https -------------------------------------------------------------------------------------
def test_http_read_of_a_served_volume(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_OPTIONS", {})
    a = np.random.default_rng(14).random((12, 20, 18)).astype(np.float32)
    make_volume(tmp_path / "srv" / "p.zarr", a, (6, 10, 9))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "srv"))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/p.zarr"
        storage.configure({"endpoint_url": "http://127.0.0.1:9"})  # a bucket's: not for HTTP
        v = emarray.open_volume(url)
        assert v.shape == a.shape and v.remote
        out = emarray.threshold(url, tmp_path / "m.zarr", 0.5, progress=False)
        np.testing.assert_array_equal(out.read(), a > 0.5)
        with pytest.raises(emarray.errors.InvalidArgumentError, match="read-only"):
            emarray.threshold(tmp_path / "m.zarr", url + "x", 0.5, progress=False)
    finally:
        server.shutdown()


# -- training ----------------------------------------------------------------------------------
def test_training_reads_its_volumes_from_s3_as_from_disk(tmp_path, s3):
    pytest.importorskip("torch")
    from tests.test_train import _config
    d = tmp_path / "d"
    emarray.datasets.synthetic(d, (32, 64, 64), chunks=(16, 32, 32), seed=3)
    fs, path = storage.filesystem(s3)
    for name in ("raw.zarr", "truth.zarr"):  # the very same stores, uploaded
        fs.put(str(d / name), f"{path}/d/{name}", recursive=True)
    local = emarray.train(_config(d, tmp_path / "local", steps=10, validation={}))
    cfg = _config(d, tmp_path / "remote", steps=10, validation={})
    cfg["data"] = {"raw": f"{s3}/d/raw.zarr", "labels": f"{s3}/d/truth.zarr"}
    remote = emarray.train(cfg)
    assert remote.steps == local.steps == 10
    assert [h["loss"] for h in remote.history] == [h["loss"] for h in local.history]
    assert local.history


def test_a_lock_held_on_another_host_is_respected_until_its_lease_runs_out(tmp_path, s3):
    import json as _json
    a = np.random.default_rng(17).random((6, 8, 8)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (3, 4, 4))
    dst, lock = f"{s3}/m.zarr", f"{s3}/.m.zarr.emarray-lock"

    def plant(age: float) -> None:
        storage.remove(lock)
        storage.write_bytes(lock, _json.dumps({
            "pid": 1, "host": "another-machine", "started": "2026-11-26 10:00:00",
            "command": "emarray threshold ...", "token": "theirs",
            "heartbeat": time.time() - age}).encode())

    storage.write_bytes(lock, b'{"note": "a file of mine"}')  # not a lock: never removed
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.5", check=False)
    assert r.returncode == 2 and "is not an emarray lock" in r.stderr, r.stderr
    assert storage.read_bytes(lock) == b'{"note": "a file of mine"}'
    plant(age=1)
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.5", check=False,
             env={"EMARRAY_LOCK_LEASE_SECONDS": "30"})
    assert r.returncode == 2 and "pid 1 on another-machine" in r.stderr, r.stderr
    assert not storage.exists(f"{dst}/zarr.json")
    plant(age=60)  # its holder stopped refreshing it a minute ago
    r = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.5", check=False,
             env={"EMARRAY_LOCK_LEASE_SECONDS": "30"})
    assert r.returncode == 0 and "stopped refreshing it" in r.stderr, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(dst).read(), a > 0.5)
    assert not storage.exists(lock)


# -- a flaky server: throttled requests and dropped connections are retried -----------------------
class _FlakyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the S3 server, but answers every 7th request ``503 SlowDown`` and drops the
    connection of every 11th without an answer."""

    target = ""
    count = 0
    lock = threading.Lock()
    throttled = 0
    dropped = 0
    throttle_every, drop_every = 7, 11
    one_at_a_time: threading.Lock | None = None  # a lock: forward one request at a time
    jitter = 0.0  # wait up to this many seconds (at random) before forwarding
    protocol_version = "HTTP/1.1"

    def log_message(self, *args, **kwargs):
        pass

    def _forward(self):
        import http.client
        import urllib.parse
        cls = type(self)
        with cls.lock:
            cls.count += 1
            n = cls.count
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if cls.drop_every and n % cls.drop_every == 0:
            cls.dropped += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if cls.throttle_every and n % cls.throttle_every == 0:
            cls.throttled += 1
            msg = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                   b"<Message>Please reduce your request rate.</Message></Error>")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        u = urllib.parse.urlsplit(cls.target)
        if cls.jitter:  # requests sent at once reach the server in any order
            time.sleep(cls.jitter * (hash((n, threading.get_ident())) % 1000) / 1000)
        with cls.one_at_a_time or contextlib.nullcontext():
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def test_throttled_requests_and_dropped_connections_are_retried(tmp_path, s3, s3_server,
                                                              monkeypatch):
    a = np.random.default_rng(18).random((16, 20, 24)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 5, 12))
    handler = type("Flaky", (_FlakyProxy,), {"target": s3_server, "count": 0,
                                             "lock": threading.Lock()})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        r = _cli("threshold", tmp_path / "p.zarr", f"{s3}/m.zarr", "--value", "0.5",
                 env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_address[1]}"},
                 check=False)
    finally:
        proxy.shutdown()
    assert r.returncode == 0, r.stderr
    assert handler.throttled >= 3 and handler.dropped >= 2
    np.testing.assert_array_equal(emarray.open_volume(f"{s3}/m.zarr").read(), a > 0.5)


# -- the lock: conditional writes ----------------------------------------------------------------
def _plant_stale_lock(lock: str, token: str = "theirs") -> None:
    import json as _json
    storage.write_bytes(lock, _json.dumps({
        "pid": 1, "host": "another-machine", "started": "2026-11-26 10:00:00",
        "command": "emarray threshold ...", "token": token,
        "heartbeat": time.time() - 3600}).encode())


@pytest.fixture
def atomic_s3(s3, s3_server, monkeypatch):
    """The bucket of ``s3`` through a proxy that passes one request at a time, in a random
    order: S3 checks a conditional write's condition and stores the object as one step,
    moto's threaded server does not (two puts may both pass the check), so a race between
    clients is tested against a server that keeps S3's promise, with the clients' requests
    interleaved every way."""
    handler = type("OneAtATime", (_FlakyProxy,), {
        "target": s3_server, "count": 0, "lock": threading.Lock(), "throttle_every": 0,
        "drop_every": 0, "one_at_a_time": threading.Lock(), "jitter": 0.03})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.server_address[1]}")
    yield s3
    proxy.shutdown()


def test_two_takers_racing_for_one_stale_lock_one_wins(atomic_s3):
    from emarray.engine.remote_output import RemoteLock
    from emarray.errors import OutputLockedError
    s3 = atomic_s3
    dst, lock = f"{s3}/m.zarr", f"{s3}/.m.zarr.emarray-lock"
    takers = 4
    for rnd in range(25):
        _plant_stale_lock(lock, token=f"dead-{rnd}")
        start = threading.Barrier(takers)
        won: list = []
        refused: list = []

        def take(won=won, refused=refused, start=start):
            me = RemoteLock(dst, dst)
            start.wait()
            try:
                me.acquire()
                won.append(me)
            except OutputLockedError as exc:
                refused.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - counted: the assertion shows it
                refused.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=take) for _ in range(takers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1 and len(refused) == takers - 1, (rnd, len(won), refused)
        assert all("being written by another emarray job" in r for r in refused), refused
        held = storage.read_json(lock)
        assert held["token"] == won[0].token  # the lock object is the winner's
        won[0].release()
        assert not storage.exists(lock)


def test_a_job_whose_lock_is_taken_stops_in_one_line(tmp_path, s3):
    import json as _json
    a = np.random.default_rng(19).random((24, 40, 48)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 5, 12))  # 192 blocks, each written slowly
    dst, lock = f"{s3}/m.zarr", f"{s3}/.m.zarr.emarray-lock"
    proc = subprocess.Popen(
        [PY, "-m", "emarray", "-q", "threshold", str(tmp_path / "p.zarr"), dst, "--value",
         "0.3", "--scheduler", "synchronous"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0",
                        "EMARRAY_SLOW_WRITES": "0.05", "EMARRAY_LOCK_LEASE_SECONDS": "2"})
    try:
        t0 = time.time()
        while _remote_done(dst) < 10 and time.time() - t0 < 120:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        # another job takes the lock over (as one that judged it stale would): If-Match
        body, etag = storage.read_tagged(lock)
        theirs = {**_json.loads(body), "pid": 1, "host": "another-machine", "token": "theirs",
                  "command": "emarray threshold p.zarr m.zarr --value 0.3"}
        storage.put_tagged(lock, _json.dumps(theirs).encode(), match=etag)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("error: lost the lock"), err
    assert ".m.zarr.emarray-lock" in err and "pid 1 on another-machine" in err, err
    assert _remote_done(dst) < 192  # it stopped part way
    assert not storage.exists(f"{dst}/zarr.json")  # it never switched the output
    assert storage.read_json(lock)["token"] == "theirs"  # and left the new holder's lock


# -- store options are never written nor printed ---------------------------------------------------
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzEXAMPLE"
SECRET_OPTIONS = ("--storage-option", "key=AKIAIOSFODNN7EXAMPLE",
                  "--storage-option", f"secret={SECRET}")


def _started_slowly(*args, env=None, drop=()):
    full = {k: v for k, v in {**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0",
                              "EMARRAY_SLOW_WRITES": "0.05", **(env or {})}.items()
            if k not in drop}
    return subprocess.Popen([PY, "-m", "emarray", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)


def _nowhere(texts, files) -> None:
    """Neither secret (the option values) is in any of ``texts`` or ``files`` (path -> bytes)."""
    for value in (SECRET, "AKIAIOSFODNN7EXAMPLE"):
        for t in texts:
            assert value not in t, t
        for name, data in files.items():
            assert value.encode() not in data, name


@pytest.mark.parametrize("where", ["local", "s3"])
def test_store_options_are_in_no_lock_message_or_file_after_a_kill(tmp_path, s3, where):
    a = np.random.default_rng(20).random((24, 40, 48)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 5, 12))
    dst = f"{s3}/m.zarr" if where == "s3" else os.fspath(tmp_path / "m.zarr")
    lock = (f"{s3}/.m.zarr.emarray-lock" if where == "s3"
            else os.fspath(tmp_path / ".m.zarr.emarray-lock"))
    creds = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # the options give them
    argv = (*SECRET_OPTIONS, "threshold", tmp_path / "p.zarr", dst, "--value", "0.3",
            "--scheduler", "synchronous")
    first = _started_slowly(*argv, drop=creds)
    try:
        t0 = time.time()
        while (not (storage.exists(lock) if where == "s3" else os.path.exists(lock))
               or (where == "s3" and _remote_done(dst) < 5)) and time.time() - t0 < 120:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        time.sleep(0.5)
        # a second job on the same output, with the same options, and another without them
        second = _cli(*argv, check=False, drop=creds)
        third = _cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.3", check=False)
        for r in (second, third):
            assert r.returncode == 2 and "being written by another emarray job" in r.stderr, \
                r.stderr
            assert "secret=***" in r.stderr and "key=***" in r.stderr, r.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        out, err = first.communicate(timeout=60)
    texts = [out, err, second.stdout, second.stderr, third.stdout, third.stderr]
    if where == "s3":  # the lock stays after the kill: in it, the command with *** for values
        assert "secret=***" in storage.read_json(lock)["command"]
        files = {k: storage.read_bytes(f"{s3}/{k}") for k in _keys(s3)}
        assert any(k.endswith("emarray-lock") for k in files)
        # the next run takes the lock over and finishes: nothing of the options in its output
        again = _cli(*argv[:-2], "--resume", check=False, drop=creds)
        assert again.returncode == 0 and "taking over the lock" in again.stderr, again.stderr
        texts += [again.stdout, again.stderr]
        files.update({k: storage.read_bytes(f"{s3}/{k}") for k in _keys(s3)})
    else:
        assert "secret=***" in open(lock).read()
        files = {os.fspath(f): f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
        assert lock in files
    _nowhere(texts, files)


def test_store_options_through_recipe_vars_and_set_are_kept_nowhere(tmp_path, s3, s3_server):
    a = np.random.default_rng(22).random((8, 12, 12)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 6, 6))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
vars: {{key: none, secret: none}}
storage_options: {{endpoint_url: "{s3_server}", key: "${{key}}", secret: "${{secret}}"}}
steps:
  mask: {{op: threshold, src: {tmp_path / 'p.zarr'}, value: 0.5, out: "{s3}/mask.zarr"}}
""")
    r = _cli("run", recipe, "--workdir", tmp_path / "wd", "--set", f"secret={SECRET}",
             "--set", "key=AKIAIOSFODNN7EXAMPLE", check=False,
             drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(f"{s3}/mask.zarr").read(), a > 0.5)
    files = {os.fspath(f): f.read_bytes() for f in (tmp_path / "wd").rglob("*") if f.is_file()}
    assert any(b"secret=***" in data for data in files.values()), list(files)  # --set kept
    files.update({k: storage.read_bytes(f"{s3}/{k}") for k in _keys(s3)})
    _nowhere([r.stdout, r.stderr], files)
