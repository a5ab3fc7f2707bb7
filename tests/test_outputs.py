"""Outputs are never lost: --overwrite replaces only what emarray made (through links, after
kills mid-job or mid-swap), two jobs never write one output or read one being replaced, and
an unfinished output is refused as input, resumed, or named in one line."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

import emarray
from emarray.engine.checkpoint import PROGRESS_DIR, Checkpoint
from emarray.errors import IncompleteVolumeError, JobFailedError

from .conftest import make_volume, tree_digest
from .helpers import PY, cli, markers_in, one_error_line, prob_map, slow_job, unfinished, wait_for


def test_input_through_a_symlink_is_never_overwritten(tmp_path):
    a, _ = prob_map(tmp_path / "in.zarr")
    d = tmp_path / "d"
    d.mkdir()
    (d / "link.zarr").symlink_to(tmp_path / "in.zarr")
    (d / "in.zarr").symlink_to(tmp_path / "in.zarr")
    before = tree_digest(tmp_path / "in.zarr")
    for dst in (d / "in.zarr", tmp_path / "in.zarr", tmp_path / "in.zarr" / "0"):
        line = one_error_line(cli("threshold", d / "link.zarr", dst, "--value", "0.5",
                                  "--overwrite"))
        assert "overlaps the input" in line
    assert tree_digest(tmp_path / "in.zarr") == before
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "in.zarr").read(), a)


def test_an_output_reached_through_a_link_is_replaced_at_its_target(tmp_path):
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "real.zarr", 0.5)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "link.zarr", "--value", "0.8",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "link.zarr").is_symlink()  # the user's link stays a link
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "real.zarr").read(),
                                  (a > 0.8).astype(np.uint8))


def test_overwrite_killed_mid_job_keeps_the_old_output(tmp_path, many_chunks):
    a, src = many_chunks
    old = emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    before = tree_digest(tmp_path / "m.zarr")
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr", "--overwrite")
    new = tmp_path / ".m.zarr.emarray-new"
    wait_for(lambda: markers_in(new) >= 50, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the old output is whole and still answers
    assert tree_digest(tmp_path / "m.zarr") == before
    np.testing.assert_array_equal(old.read(), (a > 0.9).astype(np.uint8))
    # a plain rerun says it exists; the same --overwrite command finishes the job
    assert "already exists" in one_error_line(cli("threshold", tmp_path / "p.zarr",
                                                  tmp_path / "m.zarr", "--value", "0.3"))
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.3).astype(np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "p.zarr"]


def test_overwrite_killed_mid_job_can_be_resumed(tmp_path, many_chunks):
    a, src = many_chunks
    emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr", "--overwrite")
    new = tmp_path / ".m.zarr.emarray-new"
    wait_for(lambda: markers_in(new) >= 50, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3", "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming:" in r.stderr and " of 768 blocks already done" in r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.3).astype(np.uint8))


@pytest.mark.parametrize("state", ["old-set-aside-new-done", "old-set-aside-new-unfinished",
                                   "old-half-deleted"])
def test_a_replace_killed_during_the_swap_is_recovered_by_the_same_command(tmp_path, state):
    """The three states a kill between the renames or during the delete can leave."""
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    emarray.threshold(src, tmp_path / "n.zarr", 0.6)
    old, new = tmp_path / ".m.zarr.emarray-old", tmp_path / ".m.zarr.emarray-new"
    if state == "old-half-deleted":
        os.rename(tmp_path / "n.zarr", new)
        shutil.copytree(tmp_path / "m.zarr", old)
        (old / "zarr.json").unlink()
        os.rename(new, tmp_path / "m.zarr.tmp")
        shutil.rmtree(tmp_path / "m.zarr")
        os.rename(tmp_path / "m.zarr.tmp", tmp_path / "m.zarr")
        want = (a > 0.6)
    else:
        os.rename(tmp_path / "m.zarr", old)
        os.rename(tmp_path / "n.zarr", new)
        if state == "old-set-aside-new-unfinished":
            meta = json.loads((new / "zarr.json").read_text())
            meta["attributes"]["emarray"]["complete"] = False
            (new / "zarr.json").write_text(json.dumps(meta))
        want = (a > 0.6) if state == "old-set-aside-new-done" else (a > 0.9)
    # the user runs the same command again; first the interrupted swap is settled
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "x.zarr", "--value", "0.1")
    assert r.returncode == 0  # unrelated outputs are unaffected
    r = cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3", "--resume")
    assert r.returncode == 2 and "another job" in r.stderr  # settled, and the job named
    assert not old.exists()
    # an unfinished new output stays beside, for its own command's --resume
    assert new.exists() == (state == "old-set-aside-new-unfinished")
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  want.astype(np.uint8))
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr", "p.zarr", "x.zarr"]


def test_overwrite_never_deletes_what_emarray_did_not_make(tmp_path):
    import zarr
    _, src = prob_map(tmp_path / "p.zarr")
    # a folder holding a zarr.json beside a user's work
    thesis = tmp_path / "thesis"
    (thesis / "images").mkdir(parents=True)
    (thesis / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                  "attributes": {}}))
    (thesis / "thesis.tex").write_text("\\chapter{Results}")
    # a store another tool made, with a README beside its arrays
    other = tmp_path / "other.zarr"
    zarr.create_array(str(other / "raw"), shape=(4, 4), dtype="u1", chunks=(2, 2))
    zarr.open_group(str(other), mode="a")
    (other / "README.md").write_text("our raw data")
    # an emarray output into which a user put a file
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    (tmp_path / "m.zarr" / "notes.txt").write_text("mine")
    for dst, why in ((thesis, "not made by emarray"), (other, "not made by emarray"),
                     (tmp_path / "m.zarr", "notes.txt")):
        before = tree_digest(dst)
        line = one_error_line(cli("threshold", tmp_path / "p.zarr", dst, "--value", "0.5",
                                  "--overwrite"))
        assert "refusing to overwrite" in line and why in line
        assert tree_digest(dst) == before


def test_demo_rerun_keeps_the_users_files(tmp_path):
    out = tmp_path / "demo"
    r = cli("-q", "demo", "--size", "16,32,32", "--out", out)
    assert r.returncode == 0, r.stderr
    (out / "notes.txt").write_text("my notes")
    r = cli("-q", "demo", "--size", "16,32,32", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "mask.zarr").is_dir() and (out / "sweep" / "sweep.png").is_file()


@contextlib.contextmanager
def stopped(proc: subprocess.Popen):
    """``proc`` stopped (SIGSTOP) while the block runs, then going on (SIGCONT): it holds what
    it held (its locks) however long the block takes on a loaded machine."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def test_two_jobs_into_one_output_the_second_names_the_first(tmp_path):
    a = np.random.default_rng(7).random((16, 48, 64)).astype(np.float32)
    make_volume(tmp_path / "p.zarr", a, (4, 4, 8))  # 384 tiny chunks: 2 s at least
    first = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr")
    wait_for(lambda: markers_in(tmp_path / "m.zarr") >= 5, first)
    with stopped(first):
        for flag in ((), ("--overwrite",), ("--resume",)):
            line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr",
                                      "--value", "0.3", *flag))
            assert "being written by another emarray job" in line and f"pid {first.pid}" in line
    assert first.wait(120) == 0, first.stderr.read()
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(),
                                  (a > 0.3).astype(np.uint8))
    assert not (tmp_path / ".m.zarr.emarray-lock").exists()


def test_an_unfinished_output_is_refused_as_input(tmp_path, many_chunks):
    proc = slow_job(tmp_path / "p.zarr", tmp_path / "m.zarr")
    wait_for(lambda: markers_in(tmp_path / "m.zarr") >= 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = tmp_path / "m.zarr"
    for args in (("threshold", m, tmp_path / "t.zarr", "--value", "0.5"),
                 ("rescale", m, tmp_path / "r.zarr", "--range", "0,1"),
                 ("export", m, tmp_path / "m.tif"),
                 ("sweep", m, m, "--out", tmp_path / "s")):
        line = one_error_line(cli(*args))
        assert "unfinished output of an interrupted emarray threshold job" in line
        assert "--resume" in line and "--allow-incomplete" in line
    assert not (tmp_path / "t.zarr").exists() and not (tmp_path / "m.tif").exists()
    r = cli("info", m)
    assert r.returncode == 0 and "UNFINISHED" in r.stdout and "--resume" in r.stdout
    r = cli("-q", "export", m, tmp_path / "m.tif", "--allow-incomplete")
    assert r.returncode == 0, r.stderr
    with pytest.raises(IncompleteVolumeError):
        emarray.threshold(m, tmp_path / "t.zarr", 0.5)


def test_a_kill_while_creating_leaves_nothing_at_the_output(tmp_path):
    """Creation happens beside the output: a leftover half-made store never blocks a rerun."""
    _, src = prob_map(tmp_path / "p.zarr")
    half = tmp_path / ".m.zarr.emarray-new"
    half.mkdir()
    (half / "zarr.json").write_text("{}")  # what a kill between group and array leaves
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.5",
            "--resume")
    assert r.returncode == 0, r.stderr
    assert not half.exists() and emarray.open_volume(tmp_path / "m.zarr").shape == src.shape


def test_a_kill_after_the_job_was_recorded_but_before_the_array_is_resumed(tmp_path):
    """Killed between the group's attributes (the job) and the array's metadata: --resume
    finds its own half-made store, makes it again and finishes equal to a fresh run (a whole
    recipe killed at random moments met this)."""
    a, _ = prob_map(tmp_path / "p.zarr")
    args = ("-q", "threshold", tmp_path / "p.zarr", "--value", "0.5")
    assert cli(*args[:3], tmp_path / "ref.zarr", *args[3:]).returncode == 0
    half = tmp_path / ".m.zarr.emarray-new"
    shutil.copytree(tmp_path / "ref.zarr", half)
    for array_meta in half.glob("*/zarr.json"):
        array_meta.unlink()
    shutil.rmtree(half / PROGRESS_DIR, ignore_errors=True)
    r = cli(*args[:3], tmp_path / "m.zarr", *args[3:], "--resume")
    assert r.returncode == 0, r.stderr
    assert not half.exists()
    assert np.array_equal(emarray.open_volume(tmp_path / "m.zarr").read(), a > 0.5)


def _in_own_mounts(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a private mount namespace (real mounts, gone when it ends)."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the read-only and disk-full tests")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          cwd=cwd)


def test_read_only_output_folder_and_full_disk_are_one_line(tmp_path):
    prob_map(tmp_path / "p.zarr", shape=(40, 64, 64), chunks=(8, 32, 32))
    (tmp_path / "ro").mkdir()
    (tmp_path / "full").mkdir()
    em = f"{PY} -m emarray -q"
    script = (f"mount --bind ro ro && mount -o remount,ro,bind ro && "
              f"{em} threshold p.zarr ro/m.zarr --value 0.5; echo rc=$?; "
              f"mount -t tmpfs -o size=64k tmpfs full && "
              f"{em} threshold p.zarr full/m.zarr --value 0.5 --compression none; echo rc=$?; "
              f"{em} export p.zarr full/p.tif; echo rc=$?; ls -a full")
    r = _in_own_mounts(script, tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.stdout.count("rc=2") == 3, (r.stdout, r.stderr)
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors), r.stderr
    assert "not writable" in errors[0] or "Read-only" in errors[0]
    assert "No space left on device" in errors[1] and "No space left on device" in errors[2]
    assert "p.tif" not in r.stdout  # no half-written export left behind


@pytest.mark.parametrize("planted", ["0/c/x/notes.txt", ".emarray-progress/mine.txt",
                                     "0/c/0/0/99", "0/c/0/0/0.bak", "figures/plot.png"])
def test_overwrite_refuses_what_the_metadata_does_not_account_for(tmp_path, planted):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    f = tmp_path / "m.zarr" / planted
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("the user's")
    before = tree_digest(tmp_path / "m.zarr")
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value",
                              "0.3", "--overwrite"))
    assert "files emarray did not write" in line
    assert planted.split("/")[-1] in line or planted.split("/")[0] + "/" in line
    assert tree_digest(tmp_path / "m.zarr") == before


def test_overwrite_still_replaces_an_output_with_its_levels_and_progress(tmp_path):
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    emarray.pyramid(tmp_path / "m.zarr", levels=1)
    r = cli("-q", "threshold", tmp_path / "p.zarr", tmp_path / "m.zarr", "--value", "0.3",
            "--overwrite")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(tmp_path / "m.zarr").read(), a > 0.3)


def test_pyramid_overwrite_keeps_a_users_file_inside_a_level(tmp_path):
    _, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    emarray.pyramid(tmp_path / "m.zarr", levels=1)
    (tmp_path / "m.zarr" / "1" / "keep.txt").write_text("mine")
    line = one_error_line(cli("pyramid", tmp_path / "m.zarr", "--levels", "1", "--overwrite"))
    assert "keep.txt" in line
    assert (tmp_path / "m.zarr" / "1" / "keep.txt").read_text() == "mine"


def _emarray_made(tmp_path: Path, name: str) -> tuple[np.ndarray, Path]:
    """A volume emarray made (so that --overwrite may replace it), of many tiny chunks."""
    a = np.random.default_rng(6).random((16, 48, 64)).astype(np.float32)
    make_volume(tmp_path / "src.zarr", a, (4, 4, 8))  # 384 chunks: a slow job takes 2 s at least
    emarray.rescale(tmp_path / "src.zarr", tmp_path / name, (0, 1))
    return a, tmp_path / name


def test_a_job_never_reads_an_input_that_another_job_replaces(tmp_path):
    _, x = _emarray_made(tmp_path, "x.zarr")
    reader = slow_job(x, tmp_path / "y.zarr")
    wait_for(lambda: (tmp_path / "y.zarr" / PROGRESS_DIR).exists()
             and Checkpoint(tmp_path / "y.zarr" / PROGRESS_DIR).done_count("threshold") > 5,
             reader)
    with stopped(reader):
        line = one_error_line(cli("rescale", tmp_path / "src.zarr", x, "--range", "0,2",
                                  "--overwrite"))
    assert "being read by another emarray job" in line
    reader.wait(120)
    assert reader.returncode == 0, reader.stderr.read()


def test_a_job_never_starts_reading_an_input_being_replaced(tmp_path):
    _, x = _emarray_made(tmp_path, "x.zarr")
    writer = subprocess.Popen([PY, "-m", "emarray", "-q", "rescale", str(tmp_path / "src.zarr"),
                               str(x), "--range", "0,2", "--overwrite", "--scheduler",
                               "synchronous"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "EMARRAY_CHECKPOINT_SECONDS": "0",
                                              "EMARRAY_SLOW_WRITES": "0.005"})
    new = tmp_path / ".x.zarr.emarray-new"
    wait_for(lambda: (new / PROGRESS_DIR).exists()
             and Checkpoint(new / PROGRESS_DIR).done_count("rescale") > 5, writer)
    with stopped(writer):
        line = one_error_line(cli("threshold", x, tmp_path / "y.zarr", "--value", "100"))
    assert "being written by another emarray job" in line and "rescale" in line
    assert not (tmp_path / "y.zarr").exists()
    writer.wait(120)
    assert writer.returncode == 0, writer.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zarr", "x.zarr"]  # no lock left


def test_a_failed_replacement_says_where_its_unfinished_output_is(tmp_path, monkeypatch):
    a, src = prob_map(tmp_path / "p.zarr")
    emarray.threshold(src, tmp_path / "m.zarr", 0.9)
    before = tree_digest(tmp_path / "m.zarr")
    real_write = emarray.Volume.write
    calls = {"n": 0}

    def full_disk(self, region, block):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.url)
        return real_write(self, region, block)

    monkeypatch.setattr(emarray.Volume, "write", full_disk)
    with pytest.raises(JobFailedError) as e:
        emarray.threshold(src, tmp_path / "m.zarr", 0.3, overwrite=True, retries=0,
                          scheduler="synchronous")
    msg = str(e.value)
    new = tmp_path / ".m.zarr.emarray-new"
    assert "No space left on device" in msg and str(new) in msg and "rm -r" in msg
    assert "--resume" in msg and new.exists()
    assert tree_digest(tmp_path / "m.zarr") == before
    monkeypatch.setattr(emarray.Volume, "write", real_write)
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.3, resume=True)
    np.testing.assert_array_equal(m.read(), a > 0.3)


def test_overwrite_replaces_an_interrupted_output_with_its_progress(tmp_path, monkeypatch):
    """What an interrupted job keeps (its bitmap, its record of the inputs' chunks) is the
    output's own: --overwrite replaces it."""
    a, out = unfinished(tmp_path, monkeypatch)
    assert (out / PROGRESS_DIR / "inputs.npz").is_file()
    r = cli("-q", "threshold", tmp_path / "p.zarr", out, "--value", "0.2", "--overwrite")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(out).read(), a > 0.2)


def test_resume_removes_the_partial_files_a_killed_write_leaves(tmp_path):
    src = make_volume(tmp_path / "p.zarr", np.ones((4, 4, 4), np.float32), 2)
    m = emarray.threshold(src, tmp_path / "m.zarr", 0.5)
    meta_path = tmp_path / "m.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["emarray"]["complete"] = False  # as a killed job leaves it
    meta_path.write_text(json.dumps(meta))
    junk = tmp_path / "m.zarr" / "0" / "c" / "0" / "0" / "1.0123abcd.partial"
    junk.write_bytes(b"half a chunk")
    emarray.threshold(src, tmp_path / "m.zarr", 0.5, resume=True)
    assert not junk.exists()
    np.testing.assert_array_equal(m.read(), 1)
