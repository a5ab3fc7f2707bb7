"""A job's saved progress (the .emarray-progress folder): its files never run code, a damaged
one is named in one line, and every summary the operators fold round-trips."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import emarray
from emarray.engine.checkpoint import PROGRESS_DIR
from emarray.errors import CorruptStateError

from .helpers import cli, one_error_line, unfinished


class _Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("part", ["progress", "result"])
def test_a_planted_pickle_in_the_progress_folder_never_runs(tmp_path, monkeypatch, part):
    _, out = unfinished(tmp_path, monkeypatch)
    marker = tmp_path / "PWNED"
    assert pickle.loads(pickle.dumps(_Planted(str(tmp_path / "probe")))) == 0  # it would run
    assert (tmp_path / "probe").exists()
    (out / PROGRESS_DIR / f"threshold.{part}").write_bytes(pickle.dumps(_Planted(str(marker))))
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", out, "--value", "0.5",
                              "--resume"))
    assert f"threshold.{part}" in line and "not an emarray progress file" in line
    assert not marker.exists()


def test_a_damaged_progress_file_is_one_line_naming_it(tmp_path, monkeypatch):
    a, out = unfinished(tmp_path, monkeypatch)
    f = out / PROGRESS_DIR / "threshold.progress"
    f.write_bytes(f.read_bytes()[:40])  # a zip cut short
    line = one_error_line(cli("threshold", tmp_path / "p.zarr", out, "--value", "0.5",
                              "--resume"))
    assert str(f) in line and "damaged" in line
    f.unlink()  # as the line says: without it the job starts that stage again
    r = cli("-q", "threshold", tmp_path / "p.zarr", out, "--value", "0.5", "--resume")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(emarray.open_volume(out).read(), a > 0.5)


def test_progress_round_trips_every_summary_the_operators_fold():
    from emarray.engine.serialize import dumps, loads
    from emarray.ops.components import PIECE
    pieces = np.zeros(3, PIECE)
    pieces["node"] = [1, 2, 3]
    value = [(0, ([((0, 1, 2), np.arange(3))], pieces)), (1, {"id": np.arange(4, dtype=np.uint64),
                                                               "x": np.float64(np.nan)}),
             (2, (np.zeros((2, 3)), {"k": None, "big": 2**70, "f": float("-inf")}))]
    back = loads(dumps(value))
    assert back[0][1][0][0][0] == (0, 1, 2) and back[0][1][1].dtype == PIECE
    np.testing.assert_array_equal(back[0][1][1], pieces)
    assert np.isnan(back[1][1]["x"]) and back[2][1][1]["big"] == 2**70
    assert back[2][1][1]["f"] == float("-inf") and back[2][1][1]["k"] is None
    with pytest.raises(TypeError):
        dumps(np.array([object()]))
    with pytest.raises(CorruptStateError):
        loads(b"not a zip")
