"""Outputs made of files (mesh folders, precomputed exports, sweep/match folders, tables and
exported stacks) go through one engine path (:mod:`emarray.engine.files`): locked, staged,
listed in a manifest, swapped in when complete; ``--overwrite`` replaces only what a manifest
lists; a user's files are never deleted or written over (issue 34, "data loss")."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

import emarray
from emarray.engine import files as engine_files
from emarray.engine import stages as engine_stages
from emarray.engine.files import MANIFEST, open_files, read_manifest
from emarray.engine.output import OutputLock, real_path
from emarray.errors import (
    BlockFailedError,
    InputChangedError,
    JobFailedError,
    OutputExistsError,
    OutputLockedError,
)

from .conftest import make_volume, tree_digest
from .helpers import cli, one_error_line, prob_map

SYNC = {"scheduler": "synchronous"}


def labels(shape=(16, 16, 16), seed=0, ids=(3, 17, 42)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, np.uint32)
    for i in ids:
        z, y, x = (int(rng.integers(1, s - 6)) for s in shape)
        a[z:z + 5, y:y + 5, x:x + 5] = i
    return a


def staging(out) -> os.PathLike:
    return out.with_name(f".{out.name}.emarray-new")


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def lab(tmp_path):
    a = labels()
    make_volume(tmp_path / "l.zarr", a, 8)
    return a


def test_mesh_overwrite_keeps_files_it_never_made_and_refuses_to_write_over_them(tmp_path, lab):
    out = tmp_path / "m"
    out.mkdir()
    (out / "77.ply").write_text("a user's mesh")          # named like one of ours
    (out / "cube.stl").write_text("another tool's mesh")
    (out / "12:0").write_text("a user's fragment list")
    emarray.mesh(tmp_path / "l.zarr", out, format="ply", **SYNC)
    assert listing(out) == sorted([MANIFEST, "12:0", "17.ply", "3.ply", "42.ply", "77.ply",
                                   "cube.stl"])
    emarray.mesh(tmp_path / "l.zarr", out, format="ply", ids=[3], overwrite=True, **SYNC)
    assert listing(out) == sorted([MANIFEST, "12:0", "3.ply", "77.ply", "cube.stl"])
    assert (out / "77.ply").read_text() == "a user's mesh"
    assert (out / "cube.stl").read_text() == "another tool's mesh"
    # a job whose meshes would land on a user's file: refused, naming it, nothing changed
    (out / "17.ply").write_text("mine now")
    before = tree_digest(out)
    with pytest.raises(OutputExistsError, match=r"17\.ply.*emarray did not write"):
        emarray.mesh(tmp_path / "l.zarr", out, format="ply", overwrite=True, **SYNC)
    assert tree_digest(out) == before
    # --resume into a folder of the user's files (nothing to resume: a new job) neither
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "17.ply").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"17\.ply"):
        emarray.mesh(tmp_path / "l.zarr", mine, format="ply", resume=True, **SYNC)
    assert listing(mine) == ["17.ply"] and (mine / "17.ply").read_text() == "mine"


def test_mesh_overwrite_that_fails_leaves_the_old_meshes_whole(tmp_path, lab, monkeypatch):
    out = tmp_path / "m"
    emarray.mesh(tmp_path / "l.zarr", out, **SYNC)
    before = tree_digest(out)
    real = engine_stages.run_block

    def fail_in_stitch(st, index):
        if st.name == "stitch":
            raise RuntimeError("disk on fire")
        return real(st, index)
    monkeypatch.setattr(engine_stages, "run_block", fail_in_stitch)
    with pytest.raises(JobFailedError, match="disk on fire.*is as it was.*--resume"):
        emarray.mesh(tmp_path / "l.zarr", out, overwrite=True, reduction=4, retries=0, **SYNC)
    assert tree_digest(out) == before  # nothing deleted before the new job had done anything
    monkeypatch.undo()
    # and the unfinished replacement resumes, or is started again by another overwrite
    emarray.mesh(tmp_path / "l.zarr", out, overwrite=True, reduction=4, **SYNC)
    assert not staging(out).exists()
    assert read_manifest(out / MANIFEST)["job"]["reduction"] == 4.0


def test_mesh_killed_mid_stitch_then_resume_or_overwrite(tmp_path):
    a = labels((24, 24, 24), seed=1, ids=tuple(range(1, 40)))
    make_volume(tmp_path / "l.zarr", a, 6)
    trace = tmp_path / "trace"
    cmd = [sys.executable, "-m", "emarray", "-q", "mesh", str(tmp_path / "l.zarr"),
           str(tmp_path / "m"), "--format", "ply", "--per-task", "1", "--scheduler",
           "synchronous"]
    for how in ("--resume", "--overwrite"):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "EMARRAY_TRACE": str(trace),
                                     "EMARRAY_CHECKPOINT_SECONDS": "0"})
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < 120 and not (
                trace.exists() and "\tstitch\t" in trace.read_text()):
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert staging(tmp_path / "m").exists()
        r = cli(*cmd[3:], how)  # in process
        assert r.returncode == 0, r.stderr
        assert listing(tmp_path / "m") == sorted([MANIFEST] + [f"{i}.ply" for i in
                                                                range(1, 40)])
        assert not staging(tmp_path / "m").exists()
        (tmp_path / "m" / MANIFEST).unlink()
        for p in (tmp_path / "m").iterdir():
            p.unlink()
        (tmp_path / "m").rmdir()
        trace.unlink()


def test_a_commit_cut_short_is_finished_by_the_next_job(tmp_path, lab, monkeypatch):
    out = tmp_path / "m"
    emarray.mesh(tmp_path / "l.zarr", out, format="ply", ids=[3, 17], **SYNC)
    (out / "notes.txt").write_text("mine")
    real = os.replace
    calls = {"n": 0}

    def cut(a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed between two moves
        return real(a, b)
    monkeypatch.setattr(engine_files.os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        emarray.mesh(tmp_path / "l.zarr", out, format="ply", ids=[42, 17], overwrite=True,
                     **SYNC)
    monkeypatch.undo()
    assert staging(out).exists()
    # any next job on the output finishes the replacement first (here: a resume, a no-op)
    assert emarray.mesh(tmp_path / "l.zarr", out, format="ply", ids=[42, 17], resume=True,
                        **SYNC) == 2
    assert listing(out) == sorted([MANIFEST, "17.ply", "42.ply", "notes.txt"])
    assert not staging(out).exists()


def test_resume_of_a_finished_mesh_whose_labels_changed_is_refused(tmp_path, lab):
    out = tmp_path / "m"
    assert emarray.mesh(tmp_path / "l.zarr", out, format="ply", **SYNC) == 3
    assert emarray.mesh(tmp_path / "l.zarr", out, format="ply", resume=True, **SYNC) == 3
    v = emarray.open_volume(tmp_path / "l.zarr")
    v.write((slice(0, 8),) * 3, np.zeros((8, 8, 8), np.uint32))
    with pytest.raises(InputChangedError, match="l.zarr changed since"):
        emarray.mesh(tmp_path / "l.zarr", out, format="ply", resume=True, **SYNC)


def test_mesh_resumed_after_its_labels_changed_has_no_mesh_of_a_gone_object(tmp_path,
                                                                            monkeypatch):
    a = labels((16, 16, 16), seed=2, ids=(5, 6, 7, 8))
    make_volume(tmp_path / "l.zarr", a, 8)
    real = engine_stages.run_block
    seen = {"n": 0}

    def stop(st, index):
        if st.name == "stitch":
            seen["n"] += 1
            if seen["n"] == 4:
                raise RuntimeError("killed")
        return real(st, index)
    monkeypatch.setattr(engine_stages, "run_block", stop)
    with pytest.raises(JobFailedError):
        emarray.mesh(tmp_path / "l.zarr", tmp_path / "m", format="ply", per_task=1, retries=0,
                     **SYNC)
    monkeypatch.undo()
    b = np.where(np.isin(a, [5, 6]), 0, a)  # objects 5 and 6 are gone
    b[0:2, 0:2, 0:2] = 9
    emarray.open_volume(tmp_path / "l.zarr").write((slice(0, 16),) * 3, b)
    assert emarray.mesh(tmp_path / "l.zarr", tmp_path / "m", format="ply", resume=True,
                        **SYNC) == 3
    assert listing(tmp_path / "m") == sorted([MANIFEST, "7.ply", "8.ply", "9.ply"])


def test_two_precomputed_exports_into_one_folder_one_is_refused_by_the_lock(tmp_path):
    make_volume(tmp_path / "u.zarr", np.ones((8, 8, 8), np.uint8), 4)
    ng = tmp_path / "ng"
    lock = OutputLock(real_path(ng), os.fspath(ng))
    lock.acquire()  # another job holds the output
    try:
        with pytest.raises(OutputLockedError, match="being written by another emarray job"):
            emarray.export(tmp_path / "u.zarr", ng, format="precomputed", progress=False)
        with pytest.raises(OutputLockedError):
            emarray.export(tmp_path / "u.zarr", tmp_path / "ng", format="precomputed",
                           overwrite=True, progress=False)
    finally:
        lock.release()
    assert not ng.exists() and not staging(ng).exists()
    # two real processes started 0.3 s apart: one writes, the other is refused (or, if the first
    # finished already, refused as existing); never both
    cmd = [sys.executable, "-m", "emarray", "-q", "export", str(tmp_path / "u.zarr"), str(ng),
           "--format", "precomputed"]
    env = {**os.environ, "EMARRAY_SLOW_WRITES": "0.05"}
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.3)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    _, first_err = first.communicate()
    # under load the second may start first: exactly one writes, the other is refused
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first_err, second.stderr)
    refused = first_err if first.returncode else second.stderr
    assert "another emarray job" in refused or "already exists" in refused, refused


def test_tables_keep_user_files_and_their_own_names_are_checked(tmp_path):
    rng = np.random.default_rng(0)
    make_volume(tmp_path / "p.zarr", rng.random((8, 8, 8)).astype(np.float32), 4)
    make_volume(tmp_path / "t.zarr", (rng.random((8, 8, 8)) > 0.5).astype(np.uint8), 4)
    lab = labels((8, 8, 8), ids=(1, 2))
    make_volume(tmp_path / "l.zarr", lab, 4)
    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.png").write_text("my own plot")
    (out / "notes.md").write_text("keep")
    before = tree_digest(out)
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(OutputExistsError, match=r"sweep\.png"):
            emarray.sweep(tmp_path / "p.zarr", tmp_path / "t.zarr", out=out, **kw)
        assert tree_digest(out) == before
    (out / "sweep.png").unlink()
    emarray.sweep(tmp_path / "p.zarr", tmp_path / "t.zarr", out=out)
    emarray.sweep(tmp_path / "p.zarr", tmp_path / "t.zarr", out=out, values=[0.5],
                  overwrite=True)
    assert listing(out) == sorted([MANIFEST, "notes.md", "sweep.csv", "sweep.json", "sweep.png"])
    assert (out / "notes.md").read_text() == "keep"
    # match into the same folder writes beside the sweep and replaces nothing of it
    emarray.match(tmp_path / "l.zarr", tmp_path / "l.zarr", out=tmp_path / "mt")
    # objects: a table and the files beside it; a user's png beside it is not ours
    (tmp_path / "o.png").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"o\.png"):
        emarray.objects(tmp_path / "l.zarr", out=tmp_path / "o.csv", overwrite=True)
    assert not (tmp_path / "o.csv").exists() and (tmp_path / "o.png").read_text() == "mine"
    (tmp_path / "o.png").unlink()
    emarray.objects(tmp_path / "l.zarr", out=tmp_path / "o.csv")
    m = read_manifest(tmp_path / f".o.csv{MANIFEST}")
    assert m["files"] == ["o.csv", "o.json", "o.png"] and m["complete"]
    with pytest.raises(OutputExistsError):
        emarray.objects(tmp_path / "l.zarr", out=tmp_path / "o.csv")
    emarray.objects(tmp_path / "l.zarr", out=tmp_path / "o.csv", overwrite=True)


def test_exported_stack_replaced_only_on_overwrite_and_a_user_partial_is_kept(tmp_path):
    a = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    make_volume(tmp_path / "v.zarr", a, 2)
    (tmp_path / ".s.tif.partial").write_text("a user's file with the old temporary name")
    emarray.export(tmp_path / "v.zarr", tmp_path / "s.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), a)
    with pytest.raises(OutputExistsError):
        emarray.export(tmp_path / "v.zarr", tmp_path / "s.tif", region="0:2,,")
    emarray.export(tmp_path / "v.zarr", tmp_path / "s.tif", region="0:2,,", overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), a[:2])
    assert (tmp_path / ".s.tif.partial").read_text().startswith("a user's")
    # a stack someone else wrote may be replaced when the user names it with --overwrite
    tifffile.imwrite(tmp_path / "theirs.tif", a[:1])
    with pytest.raises(OutputExistsError):
        emarray.export(tmp_path / "v.zarr", tmp_path / "theirs.tif")
    emarray.export(tmp_path / "v.zarr", tmp_path / "theirs.tif", overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "theirs.tif"), a)


def test_open_files_refuses_a_folder_on_the_way_that_is_a_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    with pytest.raises(OutputExistsError, match="link"):
        with open_files(out, job={"x": 1}, names=("sub/a.txt",)):
            pass
    assert list(elsewhere.iterdir()) == []


def test_pyramid_overwrite_keeps_the_old_levels_until_the_new_ones_are_complete(tmp_path,
                                                                              monkeypatch):
    a = np.random.default_rng(0).integers(0, 255, (16, 16, 16)).astype(np.uint8)
    make_volume(tmp_path / "r.zarr", a, 4)
    v = emarray.pyramid(tmp_path / "r.zarr", levels=2, **SYNC)
    assert v.levels == ("0", "1", "2")
    old = [emarray.open_volume(tmp_path / "r.zarr", level=k).read() for k in (1, 2)]
    real = engine_stages.run_block

    def fail(st, index):
        raise RuntimeError("killed")
    monkeypatch.setattr(engine_stages, "run_block", fail)
    with pytest.raises(BlockFailedError):
        emarray.pyramid(tmp_path / "r.zarr", levels=2, mode="max", overwrite=True, retries=0,
                        **SYNC)
    monkeypatch.setattr(engine_stages, "run_block", real)
    # the old levels are still listed, whole and readable (missing chunks still named)
    v = emarray.open_volume(tmp_path / "r.zarr")
    assert v.levels == ("0", "1", "2")
    for k in (1, 2):
        lv = emarray.open_volume(tmp_path / "r.zarr", level=k)
        assert lv.every_chunk
        np.testing.assert_array_equal(lv.read(), old[k - 1])
    # the replacement is built beside them, then listed, then the old arrays go
    v = emarray.pyramid(tmp_path / "r.zarr", levels=2, mode="max", overwrite=True, **SYNC)
    assert v.levels[0] == "0" and all(p.startswith(f"{k}-") for k, p in enumerate(v.levels[1:], 1))
    assert sorted(p.name for p in (tmp_path / "r.zarr").iterdir()
                  if not p.name.startswith(".")) == sorted(["0", *v.levels[1:], "zarr.json"])
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "r.zarr", level=1).read(),
                                  a.reshape(8, 2, 8, 2, 8, 2).max(axis=(1, 3, 5)))
    # the next replacement takes the plain names again
    v = emarray.pyramid(tmp_path / "r.zarr", levels=1, overwrite=True, **SYNC)
    assert v.levels == ("0", "1")
    assert sorted(p.name for p in (tmp_path / "r.zarr").iterdir()) == ["0", "1", "zarr.json"]


# One Python in the namespace runs the commands in turn, in process (tests.helpers.cli): each
# command's stderr, then "rc=N" on stdout. A process per command took 1.5-3 s to start.
IN_PROCESS = """import sys
from tests.helpers import cli
for command in sys.argv[1:]:
    r = cli("-q", *command.split())
    sys.stderr.write(r.stderr)
    print(f"rc={r.returncode}", flush=True)
"""


def in_own_mounts(mounts: str, commands: list[str], then: str, cwd) -> subprocess.CompletedProcess:
    """``mounts`` (shell) in a private mount namespace (real mounts, gone when it ends), then
    the emarray ``commands`` there, then ``then`` (shell)."""
    import shlex
    import shutil
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the read-only and disk-full tests")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = shlex.join([sys.executable, "-c", IN_PROCESS, *commands])
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"{mounts} && {run} ; {then}"],
                          capture_output=True, text=True, cwd=cwd, env=env)


def test_every_files_output_into_a_read_only_folder_or_a_full_disk_is_one_line(tmp_path):
    """Real mounts in a private namespace: a read-only bind mount and a 64 KiB tmpfs."""
    rng = np.random.default_rng(0)
    make_volume(tmp_path / "p.zarr", rng.random((32, 64, 64)).astype(np.float32), (8, 32, 32))
    make_volume(tmp_path / "q.zarr", rng.random((32, 32, 32)).astype(np.float32), 16)
    make_volume(tmp_path / "l.zarr", labels((32, 32, 32), ids=tuple(range(1, 30))), 16)
    (tmp_path / "ro").mkdir()
    (tmp_path / "full").mkdir()
    jobs = ["export p.zarr {d}/p.tif", "export p.zarr {d}/ng --format precomputed",
            "mesh l.zarr {d}/m --format ply", "sweep q.zarr l.zarr --out {d}/sw",
            "objects l.zarr --raw q.zarr --out {d}/o.csv", "match l.zarr l.zarr --out {d}/mt"]
    r = in_own_mounts("mount --bind ro ro && mount -o remount,ro,bind ro && "
                      "mount -t tmpfs -o size=64k tmpfs full",
                      [j.format(d=d) for d in ("ro", "full") for j in jobs], "ls -A ro full",
                      tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    codes = [ln for ln in r.stdout.splitlines() if ln.startswith("rc=")]
    assert codes == ["rc=2"] * 2 * len(jobs), (r.stdout, r.stderr)
    assert len(errors) == 2 * len(jobs) and all(e.startswith("error: ") for e in errors), \
        r.stderr
    assert all("Read-only" in e or "not writable" in e for e in errors[:len(jobs)]), errors
    # nothing half-written where the user looks; jobs that resume keep their staged work
    # beside the output (the message says where and how to go on); exports keep nothing
    full = r.stdout.split("full:")[1].split("ro:")[0].split()
    assert all(n.startswith(".") and n.endswith(".emarray-new") for n in full), full
    assert not any(n.startswith((".p.tif", ".ng")) for n in full), full
    assert all("--resume" in e for e in errors[len(jobs):] if "mesh" in e or "sw" in e), errors


def test_a_table_named_through_a_link_replaces_the_link_not_what_it_points_to(tmp_path):
    make_volume(tmp_path / "l.zarr", labels((8, 8, 8), ids=(1, 2)), 4)
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.csv").write_text("precious")
    (tmp_path / "link.csv").symlink_to(data / "x.csv")
    with pytest.raises(OutputExistsError):
        emarray.objects(tmp_path / "l.zarr", out=tmp_path / "link.csv")
    emarray.objects(tmp_path / "l.zarr", out=tmp_path / "link.csv", overwrite=True)
    assert (data / "x.csv").read_text() == "precious" and listing(data) == ["x.csv"]
    assert not (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "link.csv").read_text().startswith("id,")


def test_export_destinations_are_checked_first(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    (tmp_path / "dir.tif").mkdir()
    cases = [((tmp_path / "missing" / "x.tif",), "does not exist"),
             ((tmp_path / "x.h5", "--dataset", ""), "dataset must name"),
             ((tmp_path / "dir.tif",), "is a folder"),
             ((tmp_path / "p.zarr" / "x.tif",), "overlaps the input")]
    before = tree_digest(tmp_path)
    for args, msg in cases:
        assert msg in one_error_line(cli("export", tmp_path / "p.zarr", *args))
    assert tree_digest(tmp_path) == before


def test_objects_never_writes_its_side_files_into_an_input(tmp_path):
    lab = np.zeros((4, 8, 8), np.uint32)
    lab[1:3, 2:5, 2:5] = 7
    make_volume(tmp_path / "L.zarr", lab, (2, 4, 4))
    before = tree_digest(tmp_path / "L.zarr")
    line = one_error_line(cli("objects", tmp_path / "L.zarr", "--out",
                              tmp_path / "L.zarr" / "zarr.csv"))
    assert "overlaps the input" in line
    assert tree_digest(tmp_path / "L.zarr") == before
    assert int(emarray.open_volume(tmp_path / "L.zarr").read().max()) == 7


def test_a_side_file_that_exists_is_refused_without_overwrite(tmp_path):
    lab = np.zeros((4, 8, 8), np.uint32)
    lab[0, 0, 0] = 3
    make_volume(tmp_path / "L.zarr", lab, 4)
    (tmp_path / "T.json").write_text("my notes")
    # a side file that no manifest lists is the user's: refused by name, even with --overwrite
    for extra in ((), ("--overwrite",)):
        line = one_error_line(cli("objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv",
                                  *extra))
        assert "T.json" in line and "emarray did not write" in line
        assert (tmp_path / "T.json").read_text() == "my notes"
        assert not (tmp_path / "T.csv").exists()
    (tmp_path / "T.json").unlink()
    r = cli("-q", "objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv")
    assert r.returncode == 0, r.stderr
    line = one_error_line(cli("objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv"))
    assert "--overwrite" in line
    r = cli("-q", "objects", tmp_path / "L.zarr", "--out", tmp_path / "T.csv", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "T.json").read_text())["count"] == 1


def test_sweep_and_match_folders_inside_an_input_are_refused(tmp_path):
    a, _ = prob_map(tmp_path / "p.zarr")
    make_volume(tmp_path / "t.zarr", (a > 0.5).astype(np.uint8), 4)
    before = tree_digest(tmp_path / "p.zarr")
    line = one_error_line(cli("sweep", tmp_path / "p.zarr", tmp_path / "t.zarr", "--out",
                              tmp_path / "p.zarr" / "sweep"))
    assert "overlaps the input" in line
    line = one_error_line(cli("match", tmp_path / "t.zarr", tmp_path / "t.zarr", "--out",
                              tmp_path / "t.zarr"))
    assert "overlaps the input" in line
    assert tree_digest(tmp_path / "p.zarr") == before
