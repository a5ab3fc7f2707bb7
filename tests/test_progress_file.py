"""The machine-readable progress channel (EMARRAY_PROGRESS_FILE): what ``emarray gui`` shows
for a running job, written by the engine's one progress display."""
from __future__ import annotations

import json

import numpy as np

import emarray
from emarray.engine import progress as P

from .conftest import make_volume


def test_a_job_reports_each_block_and_ends_with_every_block_done(tmp_path, monkeypatch):
    src = make_volume(tmp_path / "a.zarr", np.arange(16 * 32 * 32, dtype=np.float32)
                      .reshape(16, 32, 32), (8, 16, 16))
    path = tmp_path / "progress.json"
    monkeypatch.setenv(P.FILE_VAR, str(path))
    monkeypatch.setattr(P, "FILE_INTERVAL", 0.0)
    seen: list[dict] = []
    write = P.write_progress_file

    def spy(p, state):
        seen.append(state)
        write(p, state)

    monkeypatch.setattr(P, "write_progress_file", spy)
    emarray.threshold(src, tmp_path / "b.zarr", value=100, workers=1)
    blocks = 2 * 2 * 2
    assert [s["done"] for s in seen if s["stage"] == "threshold"][-1] == blocks
    dones = [s["done"] for s in seen]
    assert dones == sorted(dones) and dones[0] == 0
    assert {s["total"] for s in seen} == {blocks}
    last = json.loads(path.read_text())
    assert last == seen[-1] and last["left_s"] == 0 and last["unit"] == "block"
    assert P.read_progress_file(path) == last
    # the output is what it would be without the channel
    want = (np.arange(16 * 32 * 32).reshape(16, 32, 32) > 100).astype(np.uint8)
    assert np.array_equal(emarray.open_volume(tmp_path / "b.zarr").read(), want)


def test_at_most_one_write_a_second_and_none_without_the_variable(tmp_path, monkeypatch):
    writes: list[dict] = []
    monkeypatch.setattr(P, "write_progress_file", lambda p, s: writes.append(s))
    monkeypatch.delenv(P.FILE_VAR, raising=False)
    with P.Progress(100, "x", enabled=False) as bar:
        bar.update(5)
    assert writes == []
    monkeypatch.setenv(P.FILE_VAR, str(tmp_path / "p.json"))
    with P.Progress(100, "x", enabled=False, initial=20) as bar:
        for _ in range(50):
            bar.update(1)
    # the start, the end, and no update within the same second in between
    assert [w["done"] for w in writes] == [20, 70]
    assert writes[0]["left_s"] is None  # nothing done in this run yet: no estimate


def test_an_unwritable_progress_file_never_stops_a_job(tmp_path, monkeypatch):
    src = make_volume(tmp_path / "a.zarr", np.ones((8, 16, 16), np.float32), (8, 8, 8))
    monkeypatch.setenv(P.FILE_VAR, str(tmp_path / "missing-folder" / "p.json"))
    emarray.threshold(src, tmp_path / "b.zarr", value=0.5)
    assert emarray.open_volume(tmp_path / "b.zarr").read().all()
    assert P.read_progress_file(tmp_path / "missing-folder" / "p.json") is None
    (tmp_path / "bad.json").write_text("[1, 2")
    assert P.read_progress_file(tmp_path / "bad.json") is None
